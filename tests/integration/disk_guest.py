"""Boot a disk guest and talk to it over ssh through ``-netdev user,hostfwd=``.

The disk images of tests/fixtures/build_disk.py answer ssh as root with the
key cached next to them.  A guest counts as up only when a real ``ssh ...
true`` succeeds: user-mode networking accepts the host's TCP connection before
the guest listens, so a TCP connect proves nothing::

    port = free_tcp_port()
    disk = disk_copy(debian_disk, tmp_path)
    with GuestProcess(disk_boot_args(disk, kernel=kernel.bzimage, port=port)) as vm:
        ssh = SshTarget(port, debian_disk.key)
        ssh.wait_until_up(vm, timeout=300)
        assert ssh.run("findmnt -no SOURCE,FSTYPE /").stdout.split() == ["/dev/sda2", "ext4"]
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.build_disk import DiskImage
from tests.integration.harness import GuestExited, GuestProcess, GuestTimeout

__all__ = ["SSH_OPTIONS", "SshTarget", "disk_boot_args", "disk_copy", "free_tcp_port"]

# No host key checks (every image has new host keys), no prompts, no agent keys.
SSH_OPTIONS: tuple[str, ...] = (
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for hostfwd)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def disk_copy(disk: DiskImage, directory: Path) -> DiskImage:
    """A private, writable copy of a cached image (sparse; a reflink where possible).

    Tests that boot read-write must not change the cached image.
    """
    target = directory / f"{disk.flavour}.img"
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(disk.image), str(target)],
                   check=True)
    return DiskImage(flavour=disk.flavour, image=target, key=disk.key,
                     root_offset=disk.root_offset, root_size=disk.root_size,
                     release=disk.release, uuid=disk.uuid)


def disk_boot_args(disk: DiskImage, *, kernel: Path, port: int, initrd: Path | None = None,
                   append: str = "root=/dev/sda2 console=ttyS0", memory: str = "1024",
                   nic: str = "e1000e", hda: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The seed's command line with a disk: q35, the NIC on user networking
    with ssh forwarded from 127.0.0.1:port, the image as ``-hda`` (QEMU warns
    that it probed the raw format), or with hda=False as the same disk spelled
    ``-drive file=IMAGE,format=raw,if=ide`` (no warning).  Both land on the
    ICH9 AHCI's port 0, /dev/sda in the guest."""
    args = ["-machine", "q35", "-m", memory, "-nographic", "-kernel", str(kernel)]
    if initrd is not None:
        args += ["-initrd", str(initrd)]
    drive = ["-hda", str(disk.image)] if hda else [
        "-drive", f"file={disk.image},format=raw,if=ide"]
    return [*args, "-append", append,
            "-device", f"{nic},netdev=net0",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
            *drive, *extra]


@dataclass(frozen=True)
class SshTarget:
    """root@host:port with the image's key."""

    port: int
    key: Path
    host: str = "127.0.0.1"
    user: str = "root"

    def argv(self, command: str) -> list[str]:
        ssh = shutil.which("ssh")
        if ssh is None:
            raise FileNotFoundError("ssh is not installed (apt-get install openssh-client)")
        return [ssh, "-p", str(self.port), "-i", str(self.key), *SSH_OPTIONS,
                f"{self.user}@{self.host}", command]

    def run(self, command: str, *, timeout: float = 120.0, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the guest; its output as text.

        check=True raises AssertionError (with stderr) on a non-zero status.
        """
        result = subprocess.run(self.argv(command), input=input, capture_output=True,
                                timeout=timeout)
        completed = subprocess.CompletedProcess(
            result.args, result.returncode,
            result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"))
        if check and completed.returncode != 0:
            raise AssertionError(f"ssh {command!r} exited with {completed.returncode}: "
                                 f"{completed.stderr.strip()}")
        return completed

    def run_bytes(self, command: str, *, input: bytes | None = None,
                  timeout: float = 300.0) -> bytes:
        """Run a command and return its raw stdout (e.g. ``cat`` of a binary file)."""
        result = subprocess.run(self.argv(command), input=input, capture_output=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"ssh {command!r} exited with {result.returncode}: "
                                 f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def answers(self, timeout: float = 30.0) -> bool:
        """True when ``ssh ... true`` succeeds now."""
        try:
            return subprocess.run(self.argv("true"), capture_output=True,
                                  timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_until_up(self, vm: GuestProcess | None = None, *, timeout: float = 300.0,
                      interval: float = 1.0) -> float:
        """Loop on ``ssh ... true`` until it succeeds; the seconds it took.

        Raises GuestTimeout (with the console's tail when vm is given) after
        timeout seconds, GuestExited as soon as vm's process has exited.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if vm is not None and vm.returncode is not None:
                raise GuestExited(f"the emulator exited (status {vm.returncode}) before ssh "
                                  f"answered on port {self.port}\n{vm.tail()}")
            if self.answers(timeout=max(5.0, min(30.0, deadline - time.monotonic()))):
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                tail = vm.tail() if vm is not None else ""
                raise GuestTimeout(f"ssh on port {self.port} did not answer within "
                                   f"{timeout:g} s\n{tail}")
            time.sleep(interval)
