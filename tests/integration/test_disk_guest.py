"""Issue 12's acceptance on real disk guests: a Debian root on /dev/sda2 through the AHCI.

- The Debian (systemd) image boots to its login prompt on the serial line with the
  self-built kernel, and with Debian's stock kernel plus the root initramfs, on the
  acceptance's command line (plus a NIC so that ssh can run ``mount``).
- Data integrity on the small (busybox) image with the self-built kernel and the serial
  console's shell: 64 MiB written by the guest reads back on the host with debugfs and in a
  second boot; a flushed write survives a SIGKILL of pemu.
- qcow2 images made by qemu-img (plain, compressed, over a backing file) read in the guest
  like the raw original, and after the same guest writes pass ``qemu-img check`` and
  ``qemu-img compare`` against the raw disk.
- A second pemu on a running guest's image is refused; ``-snapshot`` keeps a guest's writes
  out of the image.

The 64 MiB are pseudo-random bytes from a known seed (``random.Random(SEED)``) that the host
hands the guest as a second raw disk: the small image has no seeded generator (no openssl,
no perl), and a disk is faster than the network; the guest copies them into a file.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.build_disk import DISK_READY_MARKER, DiskImage, RootInitrd
from tests.fixtures.build_guest import PROMPT
from tests.fixtures.build_kernel import Kernel
from tests.integration.disk_guest import SshTarget, disk_boot_args, disk_copy, free_tcp_port
from tests.integration.harness import GuestProcess

pytestmark = pytest.mark.guest

QEMU_IMG = shutil.which("qemu-img")
needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None,
                                    reason="qemu-img (Debian package qemu-utils) is not installed")
needs_debugfs = pytest.mark.skipif(shutil.which("debugfs") is None,
                                   reason="debugfs (Debian package e2fsprogs) is not installed")

DEBIAN_BOOT_TIMEOUT = 900       # systemd under TCG on 2 shared cores
SMALL_BOOT_TIMEOUT = 300
MiB = 1 << 20
SEED = 12
DATA_SIZE = 64 * MiB
LOGIN = re.compile(r"pemu-debian login: ")


def seeded_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=120)


def debugfs_cat(spec: str, path: str) -> bytes:
    result = subprocess.run(["debugfs", "-R", f"cat {path}", spec], capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


# -- the Debian image on the serial line ----------------------------------------------------

@pytest.mark.parametrize("kernel_kind", ["self-built", "stock+initrd"])
def test_debian_boots_to_its_serial_login_with_sda2_as_ext4_root(
        kernel_kind: str, request: pytest.FixtureRequest, debian_disk: DiskImage,
        tmp_path: Path) -> None:
    if kernel_kind == "self-built":
        built: Kernel = request.getfixturevalue("built_kernel")
        kernel, initrd = built.bzimage, None
    else:
        stock: RootInitrd = request.getfixturevalue("root_initrd")
        kernel, initrd = stock.kernel, stock.initrd
    disk = disk_copy(debian_disk, tmp_path)
    port = free_tcp_port()
    # The acceptance's line (-machine q35 -m 4096 -kernel -append -hda), the serial line on
    # stdio, and a NIC so that ssh can ask the guest what it mounted.
    with GuestProcess(disk_boot_args(disk, kernel=kernel, initrd=initrd, port=port,
                                     memory="4096")) as vm:
        vm.expect(LOGIN, DEBIAN_BOOT_TIMEOUT)
        boot_seconds = time.monotonic() - vm.start_time
        print(f"{kernel_kind}: login prompt on ttyS0 after {boot_seconds:.1f} s")
        assert "WARNING: Image format was not specified" in vm.stderr   # -hda probes raw
        ssh = SshTarget(port, disk.key)
        ssh.wait_until_up(vm, timeout=300)
        mounts = ssh.run("mount").stdout.splitlines()
        assert any(re.match(r"/dev/sda2 on / type ext4 \(rw,", line) for line in mounts), mounts
        dmesg = ssh.run("dmesg").stdout
        assert "ahci 0000:00:1f.2: AHCI" in dmesg
        for bad in ("I/O error", "failed command", "hard resetting link", "EXT4-fs error"):
            assert bad not in dmesg, dmesg
        ssh.run("systemctl poweroff", check=False)
        assert vm.wait(300) == 0
    # A clean shutdown leaves a clean file system.
    fsck = subprocess.run(["e2fsck", "-fn", disk.e2fs_spec], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


# -- the small image's serial shell ----------------------------------------------------------

class SmallGuest:
    """The busybox image on the self-built kernel; commands run on the serial console."""

    def __init__(self, kernel: Kernel, drives: list[str], extra: tuple[str, ...] = ()) -> None:
        args = ["-machine", "q35", "-m", "512", "-nographic", "-kernel", str(kernel.bzimage),
                "-append", "root=/dev/sda2 console=ttyS0"]
        for drive in drives:
            args += ["-drive", drive]
        self.vm = GuestProcess([*args, *extra])
        try:
            self.vm.expect(DISK_READY_MARKER, SMALL_BOOT_TIMEOUT)
            self.boot_seconds = time.monotonic() - self.vm.start_time
            # Quiet the kernel on the console; the prompt split so that its echo is no prompt.
            head, tail = PROMPT[:2], PROMPT[2:]
            # A wide terminal, so that the line editor does not wrap long commands' echo.
            self.vm.sendline(f"dmesg -n 1; stty cols 1000; PS1='{head}''{tail}'")
            self.vm.run("true", timeout=60)
        except BaseException:
            self.vm.kill()
            raise

    def run(self, command: str, timeout: float = 120.0) -> str:
        return self.vm.run(command, timeout=timeout)

    def disk_on_port(self, port: int) -> str:
        """The guest's name (``sdb``...) for the disk on AHCI port ``port`` (the drive's index).

        The kernel names SCSI disks in the order their (asynchronous) probes run, and the
        q35's AHCI scans its ports in parallel (no CAP.SSS), so sdX need not follow the
        ports; the port is in the sysfs path (the q35's only libata host, ata1 is port 0).
        """
        name = self.check(f"ls /sys/devices/pci0000:00/0000:00:1f.2/ata{port + 1}/host*/target*/*/block")
        assert re.fullmatch(r"sd[a-z]+", name), name
        return name

    def check(self, command: str, timeout: float = 120.0) -> str:
        """Run command; fail with its output unless it exits 0."""
        out = self.vm.run(f"{command}; echo status=$?", timeout=timeout)
        assert out.endswith("status=0"), out
        return out.removesuffix("status=0").rstrip("\n")

    def poweroff(self) -> None:
        self.vm.sendline("sync; poweroff -f")
        assert self.vm.wait(120) == 0

    def kill(self) -> None:
        self.vm.kill()


def root_drive(disk: DiskImage, *options: str) -> str:
    return ",".join([f"file={disk.image}", "format=raw", "if=ide", "index=0", *options])


@pytest.fixture(scope="module")
def seed_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The 64 MiB of known-seed bytes as a raw disk, and their sha256."""
    data = seeded_bytes(SEED, DATA_SIZE)
    path = tmp_path_factory.mktemp("seed") / "seed.raw"
    path.write_bytes(data)
    return path, sha256(data)


@pytest.fixture
def small_copy(small_disk: DiskImage, tmp_path: Path) -> DiskImage:
    return disk_copy(small_disk, tmp_path)


@needs_debugfs
def test_64_mib_written_by_the_guest_read_back_on_the_host_and_in_a_second_boot(
        built_kernel: Kernel, small_copy: DiskImage, seed_disk: tuple[Path, str]) -> None:
    seed, digest = seed_disk
    guest = SmallGuest(built_kernel, [root_drive(small_copy, "cache=writeback"),
                                      f"file={seed},format=raw,if=ide,index=1"])
    try:
        seed_dev = guest.disk_on_port(1)
        assert guest.check(f"cat /sys/block/{seed_dev}/size") == str(DATA_SIZE // 512)
        guest.check(f"dd if=/dev/{seed_dev} of=/root/random.bin bs=1M 2>/dev/null", timeout=600)
        guest.check("sync")
        assert guest.check("sha256sum /root/random.bin", timeout=600).split()[0] == digest
        # The image is in use: a second pemu is refused with QEMU's message.
        second = subprocess.run(
            [*guest.vm.argv[:3], "-machine", "q35", "-display", "none", "-S",
             "-drive", f"file={small_copy.image},format=raw,if=ide"],
            capture_output=True, text=True, timeout=120, input="")
        assert second.returncode == 1
        assert second.stderr == (f"pemu: -drive file={small_copy.image},format=raw,if=ide: "
                                 f'Failed to get "write" lock\n'
                                 f"Is another process using the image [{small_copy.image}]?\n")
        guest.poweroff()
    finally:
        guest.kill()
    print(f"small image: shell on ttyS0 after {guest.boot_seconds:.1f} s")
    fsck = subprocess.run(["e2fsck", "-fn", small_copy.e2fs_spec], capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert sha256(debugfs_cat(small_copy.e2fs_spec, "/root/random.bin")) == digest

    # A second boot reads the file back; under -snapshot its writes stay out of the image.
    before = sha256(small_copy.image.read_bytes())
    guest = SmallGuest(built_kernel, [root_drive(small_copy)], ("-snapshot",))
    try:
        assert guest.check("sha256sum /root/random.bin", timeout=600).split()[0] == digest
        guest.check("rm /root/random.bin && echo snapshot > /root/scratch && sync")
        guest.poweroff()
    finally:
        guest.kill()
    assert sha256(small_copy.image.read_bytes()) == before


@needs_debugfs
@pytest.mark.parametrize("fmt", ["raw", pytest.param("qcow2", marks=needs_qemu_img)])
def test_flushed_data_survives_a_sigkill_of_pemu(
        fmt: str, built_kernel: Kernel, small_copy: DiskImage, seed_disk: tuple[Path, str],
        tmp_path: Path) -> None:
    seed, _ = seed_disk
    expected = seeded_bytes(SEED, DATA_SIZE)[: 8 * MiB]
    image = small_copy.image
    if fmt == "qcow2":      # qcow2's metadata (L2 tables, refcounts) must be flushed too
        image = tmp_path / "root.qcow2"
        qemu_img("convert", "-O", "qcow2", str(small_copy.image), str(image)).check_returncode()
    guest = SmallGuest(built_kernel, [f"file={image},format={fmt},if=ide,index=0,cache=writeback",
                                      f"file={seed},format=raw,if=ide,index=1"])
    try:
        # fsync'd file data, then sync for its metadata (the journal commit): both are FLUSH
        # CACHE commands the guest waits for before the shell prints the marker.
        guest.vm.sendline(f"dd if=/dev/{guest.disk_on_port(1)} of=/root/flushed.bin bs=1M count=8 conv=fsync "
                          "2>/dev/null && sync && echo FLUSHED-$((40+2))")
        guest.vm.expect("FLUSHED-42", 300)
        guest.vm.proc.kill()                       # SIGKILL, no chance to write anything more
        assert guest.vm.wait(30) == -9
    finally:
        guest.kill()
    raw = image
    if fmt == "qcow2":
        check = qemu_img("check", str(image))       # 0, or 3: clusters leaked by the kill
        assert check.returncode in (0, 3), check.stdout + check.stderr
        raw = tmp_path / "root.raw"
        qemu_img("convert", "-O", "raw", str(image), str(raw)).check_returncode()
    # The journal may not be checkpointed yet: replay it on a copy of the partition (e2fsck
    # re-opens the file system after a replay without the ?offset=), then read the file.
    spec = str(tmp_path / "root.ext4")
    subprocess.run(["dd", f"if={raw}", f"of={spec}", "bs=1M", "status=none",
                    "iflag=skip_bytes,count_bytes", f"skip={small_copy.root_offset}",
                    f"count={small_copy.root_size}"], check=True)
    fsck = subprocess.run(["e2fsck", "-fy", spec], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr    # 1: fixed (the replay)
    assert debugfs_cat(spec, "/root/flushed.bin") == expected


# -- qcow2 images in a guest ------------------------------------------------------------------

DATA_DISK = 8 * MiB
# (dd's bs, seek in blocks of bs, count): the same writes go to every data disk.
GUEST_WRITES: tuple[tuple[int, int, int], ...] = (
    (512, 1, 3), (4096, 17, 5), (65536, 3, 2), (1048576, 5, 1), (512, 16383, 1),
    (4096, 1000, 40), (131072, 20, 3), (512, 777, 129),
)


def data_disk_content() -> bytes:
    """Random clusters, a zero hole and compressible text: qemu-img compresses some."""
    rng = random.Random(SEED + 1)
    data = bytearray(rng.randbytes(DATA_DISK))
    data[2 * MiB: 3 * MiB] = bytes(MiB)
    words = [b"pemu ", b"qcow2 ", b"ahci ", b"cluster\n"]
    text = b"".join(rng.choice(words) for _ in range(MiB))
    data[5 * MiB:] = text[: DATA_DISK - 5 * MiB]
    return bytes(data)


def apply_writes(data: bytes, source: bytes) -> bytes:
    """What GUEST_WRITES make of data, each one copying from source at offset 0."""
    out = bytearray(data)
    for bs, seek, count in GUEST_WRITES:
        n = bs * count
        out[bs * seek: bs * seek + n] = source[:n]
    return bytes(out)


def guest_mib_digests(guest: SmallGuest, dev: str) -> list[str]:
    """Each MiB's sha256 as the guest reads it (where a mismatch is)."""
    out = guest.check(f"for i in $(seq 0 {DATA_DISK // MiB - 1}); do dd if=/dev/{dev} bs=1M "
                      "skip=$i count=1 iflag=direct 2>/dev/null | sha256sum; done", timeout=300)
    return [line.split()[0][:12] for line in out.splitlines() if line.strip()]


def mib_digests(data: bytes) -> list[str]:
    return [sha256(data[i: i + MiB])[:12] for i in range(0, len(data), MiB)]


@needs_qemu_img
def test_qemu_img_images_read_and_write_in_a_guest_like_the_raw_disk(
        built_kernel: Kernel, small_disk: DiskImage, seed_disk: tuple[Path, str],
        tmp_path: Path) -> None:
    seed, _ = seed_disk
    original = data_disk_content()
    base = tmp_path / "base.raw"
    base.write_bytes(original)
    raw = tmp_path / "raw.img"
    raw.write_bytes(original)
    plain, compressed, overlay = (tmp_path / f"{n}.qcow2" for n in ("plain", "compressed",
                                                                     "overlay"))
    qemu_img("convert", "-O", "qcow2", str(base), str(plain)).check_returncode()
    qemu_img("convert", "-c", "-O", "qcow2", str(base), str(compressed)).check_returncode()
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
             str(overlay)).check_returncode()
    # The drives in AHCI port order (a drive's index is its port; the root is on port 0).
    disks = {"raw": (raw, "raw"), "plain": (plain, "qcow2"), "compressed": (compressed, "qcow2"),
             "overlay": (overlay, "qcow2")}
    drives = [root_drive(small_disk, "snapshot=on")]
    drives += [f"file={path},format={fmt},if=ide,index={i}"
               for i, (path, fmt) in enumerate(disks.values(), start=1)]
    seed_port = len(drives)
    drives.append(f"file={seed},format=raw,if=ide,index={seed_port}")
    guest = SmallGuest(built_kernel, drives)
    try:
        # Not sdb..sde: the guest's names need not follow the ports (see disk_on_port).
        devs = {kind: guest.disk_on_port(port) for port, kind in enumerate(disks, start=1)}
        seed_dev = guest.disk_on_port(seed_port)
        expected = sha256(original)
        for kind, dev in devs.items():
            got = guest.check(f"sha256sum /dev/{dev}", timeout=300).split()[0]
            assert got == expected, (kind, dev, guest_mib_digests(guest, dev), mib_digests(original))
        for dev in devs.values():
            for bs, seek, count in GUEST_WRITES:
                guest.check(f"dd if=/dev/{seed_dev} of=/dev/{dev} bs={bs} seek={seek} count={count} "
                            "conv=notrunc 2>/dev/null")
        guest.check("sync; echo 3 > /proc/sys/vm/drop_caches")
        written = sha256(apply_writes(original, seeded_bytes(SEED, DATA_SIZE)))
        for kind, dev in devs.items():
            assert guest.check(f"sha256sum /dev/{dev}", timeout=300).split()[0] == written, (kind, dev)
        guest.poweroff()
    finally:
        guest.kill()
    assert sha256(raw.read_bytes()) == written
    assert base.read_bytes() == original          # copy-on-write left the backing file alone
    for image in (plain, compressed, overlay):
        check = qemu_img("check", str(image))
        assert check.returncode == 0, check.stdout + check.stderr
        compare = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(image), str(raw))
        assert compare.returncode == 0, compare.stdout + compare.stderr
