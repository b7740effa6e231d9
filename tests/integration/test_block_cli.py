"""Drives on the command line through the real pemu binary: image errors, locks, -snapshot,
-blockdev, and the monitor's block commands.  Images are made by qemu-img (Debian qemu-utils)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

QEMU_IMG = shutil.which("qemu-img")
pytestmark = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img (Debian package qemu-utils) is not installed")

BASE = [sys.executable, "-m", "pemu", "-machine", "q35", "-display", "none", "-serial", "none", "-S"]


def pemu(*args: str, stdin: str = "quit\n", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BASE, "-monitor", "stdio", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout)


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=60)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "16M").check_returncode()
    return path


def patched(path: Path, offset: int, value: bytes) -> Path:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value)
    return path


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_bad_images_get_one_error_line_and_status_1(image: Path, tmp_path: Path) -> None:
    spec = f"file={image},format=qcow2,if=none"
    cases = {
        "Unsupported qcow2 feature(s): Unknown incompatible feature: 100": (72, struct.pack(">Q", 1 << 8)),
        "Use of AES-CBC encrypted qcow2 images is no longer supported in system emulators":
            (32, struct.pack(">I", 1)),
        "Unsupported cluster size: 2^30": (20, struct.pack(">I", 30)),
        "qcow2: Image is corrupt; cannot be opened read/write": (72, struct.pack(">Q", 2)),
        "Invalid L1 table offset": (40, struct.pack(">Q", 0x30001)),
    }
    original = image.read_bytes()
    for message, (offset, value) in cases.items():
        image.write_bytes(original)
        patched(image, offset, value)
        assert one_error_line(pemu("-drive", spec)) == f"pemu: -drive {spec}: {message}"
    image.write_bytes(original[:40])  # truncated inside the header
    assert one_error_line(pemu("-drive", spec)) == f"pemu: -drive {spec}: qcow2 header too short"
    # (qemu-img cannot make a LUKS image here: its key-derivation benchmark fails in this sandbox)
    image.write_bytes(original)
    patched(image, 32, struct.pack(">I", 2))
    line = one_error_line(pemu("-drive", f"file={image},if=none"))
    assert line == f"pemu: -drive file={image},if=none: qcow2: LUKS-encrypted images are not supported by pemu"


def test_backing_file_loop_is_one_error_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(a), "1M").check_returncode()
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(a), "-F", "qcow2", str(b)).check_returncode()
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(b), "-F", "qcow2", str(a)).check_returncode()
    line = one_error_line(pemu("-drive", f"file={b},format=qcow2,if=none"))
    assert line.startswith(f"pemu: -drive file={b},format=qcow2,if=none: Could not open backing file: ")
    assert "loops back" in line


def test_option_errors(image: Path) -> None:
    cases = {
        f"file={image},if=virtio": "-drive if=virtio is not supported by pemu yet (no virtio-blk device)",
        f"file={image},if=floppy2": "unsupported bus type 'floppy2'",
        f"file={image},if=none,cache=fast": "invalid cache option",
        f"file={image},if=none,werror=panic": "'panic' invalid write error action",
        f"file={image},if=none,rerror=enospc": "'enospc' invalid read error action",
        f"file={image},if=none,media=tape": "'tape' invalid media",
        f"file={image},format=qcow2,if=none,colour=blue": "Block format 'qcow2' does not support the option 'colour'",
        f"file={image},format=vmdk,if=none": "Driver 'vmdk' is not supported by pemu (raw and qcow2 are)",
        f"file={image},format=nosuch,if=none": "Unknown driver 'nosuch'",
        f"file={image}.missing,if=none": f"Could not open '{image}.missing': No such file or directory",
    }
    for spec, message in cases.items():
        assert one_error_line(pemu("-drive", spec)) == f"pemu: -drive {spec}: {message}"
    # No AHCI controller yet: an if=ide drive is refused as QEMU refuses drives no device takes.
    assert one_error_line(pemu("-drive", f"file={image},format=qcow2")) == \
        f"pemu: -drive file={image},format=qcow2: machine type does not support if=ide,bus=0,unit=0"
    assert one_error_line(pemu("-hda", str(image))) == \
        f"pemu: -hda {image}: machine type does not support if=ide,bus=0,unit=0"
    r = pemu("-drive", f"file={image},format=qcow2,if=none,id=a", "-drive", f"file={image},if=none,id=a,"
             "file.locking=off")
    assert one_error_line(r).endswith("Duplicate ID 'a' for drive")
    r = pemu("-blockdev", f"driver=qcow2,file.driver=file,file.filename={image}")
    assert one_error_line(r).endswith("'node-name' must be specified for the root node")


def test_probed_raw_warns_as_qemu(tmp_path: Path) -> None:
    raw = tmp_path / "d.img"
    raw.write_bytes(bytes(1 << 20))
    r = pemu("-drive", f"file={raw},if=none")
    assert r.returncode == 0, r.stderr
    assert r.stderr == (
        f"WARNING: Image format was not specified for '{raw}' and probing guessed raw.\n"
        "         Automatically detecting the format is dangerous for raw images, write operations on block 0 "
        "will be restricted.\n"
        "         Specify the 'raw' format explicitly to remove the restrictions.\n")
    r = pemu("-drive", f"file={raw},if=none,format=raw")
    assert r.returncode == 0 and r.stderr == ""


class Running:
    """A pemu holding an image until stopped."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*BASE, "-monitor", "stdio", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("info block\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 60
        self.banner = ""
        while not ("Cache mode" in self.banner and self.banner.endswith("\n\n")) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.banner += line
        assert "Cache mode" in self.banner, self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self) -> tuple[int, str]:
        assert self.proc.stdin is not None
        _, err = self.proc.communicate("quit\n", timeout=60)
        return self.proc.returncode, err


def test_a_second_pemu_is_refused_with_qemus_lock_message(image: Path) -> None:
    first = Running("-drive", f"file={image},format=qcow2,if=none,id=d0")
    try:
        spec = f"file={image},format=qcow2,if=none"
        r = pemu("-drive", spec)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr == (f'pemu: -drive {spec}: Failed to get "write" lock\n'
                            f"Is another process using the image [{image}]?\n")
        # qemu-img respects pemu's lock (and -U overrides it)
        info = qemu_img("info", str(image))
        assert info.returncode == 1 and 'Failed to get shared "write" lock' in info.stderr
        assert qemu_img("info", "-U", str(image)).returncode == 0
        # -blockdev takes the same lock; file.locking=off does not
        r = pemu("-blockdev", f"driver=qcow2,node-name=n0,file.driver=file,file.filename={image}")
        assert 'Failed to get "write" lock' in r.stderr and r.returncode == 1
        r = pemu("-drive", f"{spec},file.locking=off")
        assert r.returncode == 0, r.stderr
    finally:
        status, err = first.stop()
    assert status == 0 and err == ""
    assert qemu_img("check", str(image)).returncode == 0


def test_snapshot_opens_the_image_read_only_and_leaves_it_untouched(image: Path) -> None:
    before = digest(image)
    running = Running("-drive", f"file={image},format=qcow2,if=none,id=d0", "-snapshot")
    try:
        overlay = running.banner.split("d0 (#block001): ")[1].split(" (qcow2)")[0]
        assert overlay.startswith("/var/tmp/vl.") and not os.path.exists(overlay)  # deleted once open
        assert f"Backing file:     {image} (chain depth: 1)" in running.banner
        # only a reader: qemu-img may look at it without -U
        assert qemu_img("info", str(image)).returncode == 0
    finally:
        status, _ = running.stop()
    assert status == 0
    assert digest(image) == before


def test_blockdev_keyval_and_json_forms(image: Path, tmp_path: Path) -> None:
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(1 << 20))
    json_form = ('{"driver": "raw", "node-name": "r0", "file": {"driver": "file", "filename": "' + str(raw) + '"}}')
    other = tmp_path / "other.raw"
    other.write_bytes(bytes(1 << 20))
    running = Running("-blockdev", f"driver=qcow2,node-name=q0,file.driver=file,file.filename={image}",
                      "-blockdev", json_form, "-drive", f"file={other},if=none,id=x,format=raw")
    try:
        for path in (raw, image):  # both nodes were opened read-write and locked
            r = pemu("-blockdev", f"driver=raw,node-name=z,file.driver=file,file.filename={path}")
            assert r.returncode == 1 and 'Failed to get "write" lock' in r.stderr
        r = pemu("-blockdev", f"driver=raw,node-name=z,read-only=on,file.driver=file,file.filename={raw}")
        assert r.returncode == 1 and 'Failed to get shared "write" lock' in r.stderr
    finally:
        status, err = running.stop()
    assert status == 0 and err == ""
    r = pemu("-blockdev", '{"driver": "raw", "node-name": "r0", "file": {"driver": "file"}}')
    assert one_error_line(r).endswith("Parameter 'filename' is missing")
    r = pemu("-blockdev", f"driver=qcow2,node-name=q,file.driver=file,file.filename={image},discard=unmap")
    assert one_error_line(r).endswith("-blockdev option 'discard' is not supported by pemu")
    r = pemu("-blockdev", f"driver=qcow2,node-name=q,file.driver=file,file.filename={image},bogus=1")
    assert one_error_line(r).endswith("Parameter 'bogus' is unexpected")


def test_info_block_and_blockstats(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(1 << 20))
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top)).check_returncode()
    r = pemu("-drive", f"file={top},if=none,id=disk0,cache=writethrough",
             "-drive", f"file={base},if=none,id=ro,format=raw,readonly=on,cache=unsafe",
             "-drive", "if=none,id=cd,media=cdrom",
             stdin="info block\ninfo blockstats\ncommit nosuch\nquit\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.replace("\r\n", "\n")
    assert (f"disk0 (#block001): {top} (qcow2)\n"
            "    Cache mode:       writethrough\n"
            f"    Backing file:     {base} (chain depth: 1)\n\n") in out
    assert f"ro (#block002): {base} (raw), read-only\n    Cache mode:       writeback, ignore flushes\n" in out
    assert "cd: [not inserted]\n    Removable device: not locked, tray closed\n" in out
    assert ("disk0: rd_bytes=0 wr_bytes=0 rd_operations=0 wr_operations=0 flush_operations=0 "
            "wr_total_time_ns=0 rd_total_time_ns=0 flush_total_time_ns=0 rd_merged=0 wr_merged=0 "
            "idle_time_ns=0\n") in out
    assert "Device 'nosuch' not found" in out


def test_ide_devices_exist_but_have_no_bus_until_the_ahci_controller(image: Path) -> None:
    drive = f"file={image},format=qcow2,if=none,id=d0"
    r = pemu("-drive", drive, "-device", "ide-hd,drive=d0,bus=ide.0")
    assert one_error_line(r) == "pemu: -device ide-hd,drive=d0,bus=ide.0: Bus 'ide.0' not found"
    r = pemu("-drive", drive, "-device", "ide-cd,drive=d0")
    assert one_error_line(r) == "pemu: -device ide-cd,drive=d0: No 'IDE' bus found for device 'ide-cd'"
