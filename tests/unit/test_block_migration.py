"""Handing images over between two processes, as a migration does (QEMU's
bdrv_inactivate_all / bdrv_activate_all and BDRV_O_INACTIVE), on real files
with real OFD locks, and qemu-io (Debian qemu-utils) as the other process."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pemu.block.block_backend import BlockBackend
from pemu.block.block_int import BlockOpenError
from pemu.block.blockdev import BlockDevices
from pemu.block.qcow2_create import qcow2_create
from pemu.util.error import UserError

SIZE = 4 << 20
QEMU_IO = shutil.which("qemu-io")
needs_qemu_io = pytest.mark.skipif(QEMU_IO is None, reason="qemu-io (Debian package qemu-utils) is not installed")


def make_image(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"disk.{fmt}"
    if fmt == "qcow2":
        qcow2_create(str(path), SIZE)
    else:
        path.write_bytes(bytes(SIZE))
    return path


class Devices:
    """One VM's block devices; completions queue until the test (its "main loop") runs them."""

    def __init__(self, path: Path, fmt: str, inactive: bool = False) -> None:
        self.pending: list[Callable[[], None]] = []
        self.block = BlockDevices()
        self.block.inactive = inactive
        drive = self.block.drive_new({"file": str(path), "format": fmt, "if": "none", "id": "d0"}, "-drive",
                                     default_snapshot=False)
        self.blk = drive.blk
        self.blk._schedule = self.pending.append  # the test is the main loop

    def close(self) -> None:
        self.block.close_all()


@pytest.fixture(params=["raw", "qcow2"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cleanup() -> Iterator[list[Devices]]:
    opened: list[Devices] = []
    yield opened
    for devices in opened:
        devices.close()


def second_writer(path: Path, fmt: str) -> Devices:
    return Devices(path, fmt)


def qemu_io(path: Path, fmt: str, command: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IO is not None
    return subprocess.run([QEMU_IO, "-f", fmt, "-c", command, str(path)], capture_output=True, text=True,
                          timeout=60)


def read(blk: BlockBackend, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    assert blk.pread(offset, buf) == 0
    return bytes(buf)


def test_inactivate_releases_the_lock_refuses_writes_and_activate_takes_it_back(
        tmp_path: Path, fmt: str, cleanup: list[Devices]) -> None:
    path = make_image(tmp_path, fmt)
    source = Devices(path, fmt)
    cleanup.append(source)
    with pytest.raises(UserError, match='Failed to get "write" lock'):
        second_writer(path, fmt)
    assert source.blk.pwrite(0, b"A" * 4096) == 0

    source.block.inactivate_all()
    assert source.block.inactive and source.blk.inactive
    # Nothing reaches the image any more: synchronous and queued writes fail with EPERM.
    assert source.blk.pwrite(0, b"B" * 4096) == -errno.EPERM
    results: list[int] = []
    source.blk.aio_pwritev(4096, b"C" * 4096, results.append)
    source.blk.drain_and_complete()
    assert results == [-errno.EPERM]
    # Another process may now open it for writing, and sees what the source wrote.
    other = second_writer(path, fmt)
    assert read(other.blk, 0, 4096) == b"A" * 4096 and read(other.blk, 4096, 4096) == bytes(4096)
    assert other.blk.pwrite(8192, b"D" * 4096) == 0
    with pytest.raises(BlockOpenError, match="^Could not reopen 'd0' for writing: Failed to get \"write\" lock$"):
        source.block.activate_all()
    assert source.blk.inactive and source.blk.pwrite(0, b"B" * 4096) == -errno.EPERM
    other.close()

    source.block.activate_all()
    assert not source.block.inactive and not source.blk.inactive
    assert source.blk.pwrite(0, b"E" * 4096) == 0
    assert read(source.blk, 8192, 4096) == b"D" * 4096  # the other writer's data, metadata re-read
    with pytest.raises(UserError, match='Failed to get "write" lock'):
        second_writer(path, fmt)


def test_inactivate_flushes_the_image(tmp_path: Path, fmt: str, cleanup: list[Devices],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path, fmt)
    source = Devices(path, fmt)
    cleanup.append(source)
    assert source.blk.pwrite(65536, b"F" * 4096) == 0
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    source.block.inactivate_all()
    assert path.stat().st_ino in synced


def test_requests_in_flight_finish_and_complete_before_the_images_go_inactive(
        tmp_path: Path, cleanup: list[Devices]) -> None:
    """A completion that submits the next request (as a device's multi-chunk
    command does) is followed to the end; nothing is left for the main loop."""
    path = make_image(tmp_path, "raw")
    source = Devices(path, "raw")
    cleanup.append(source)
    done: list[int] = []

    def chunk(n: int) -> None:
        def completed(ret: int) -> None:
            done.append(ret)
            if n < 7:
                chunk(n + 1)
        source.blk.aio_pwritev(n * 4096, bytes([n + 1]) * 4096, completed)

    chunk(0)
    source.blk.drain()
    assert len(done) == 0  # drain alone leaves the completions to the main loop
    source.block.inactivate_all()
    assert done == [0] * 8
    for queued in source.pending:  # the main loop's later turns find nothing left to do
        queued()
    assert done == [0] * 8
    assert path.read_bytes()[:8 * 4096] == b"".join(bytes([n + 1]) * 4096 for n in range(8))


def test_an_incoming_vm_opens_inactive_and_takes_over(tmp_path: Path, fmt: str, cleanup: list[Devices]) -> None:
    path = make_image(tmp_path, fmt)
    source = Devices(path, fmt)
    cleanup.append(source)
    assert source.blk.pwrite(0, b"S" * 4096) == 0
    before = path.read_bytes()
    incoming = Devices(path, fmt, inactive=True)  # the source holds the write lock: no conflict
    cleanup.append(incoming)
    assert path.read_bytes() == before  # opening wrote nothing (no header update either)
    assert incoming.blk.inactive and incoming.blk.pwrite(0, b"X" * 4096) == -errno.EPERM
    with pytest.raises(BlockOpenError, match='Failed to get "write" lock'):
        incoming.block.activate_all()  # the source still owns it
    assert source.blk.pwrite(4096, b"T" * 4096) == 0  # the source runs on meanwhile

    source.block.inactivate_all()
    incoming.block.activate_all()
    assert read(incoming.blk, 0, 8192) == b"S" * 4096 + b"T" * 4096
    assert incoming.blk.pwrite(8192, b"I" * 4096) == 0
    with pytest.raises(BlockOpenError, match='Failed to get "write" lock'):
        source.block.activate_all()  # a cancelled source cannot take it back from the new owner


@needs_qemu_io
def test_another_process_writes_while_inactive_and_activate_rereads_the_qcow2(
        tmp_path: Path, cleanup: list[Devices]) -> None:
    """qemu-io (QEMU's block layer, another process) allocates clusters while
    pemu is inactive; after activate pemu reads them and its own allocations
    do not land on them."""
    path = make_image(tmp_path, "qcow2")
    devices = Devices(path, "qcow2")
    cleanup.append(devices)
    assert devices.blk.pwrite(0, b"P" * 65536) == 0
    assert read(devices.blk, 1 << 20, 4096) == bytes(4096)  # cached: unallocated
    refused = qemu_io(path, "qcow2", "write -P 0x51 1M 64k")
    assert refused.returncode != 0 or "lock" in refused.stderr + refused.stdout

    devices.block.inactivate_all()
    written = qemu_io(path, "qcow2", "write -P 0x51 1M 64k")
    assert written.returncode == 0 and "wrote 65536" in written.stdout, written.stderr
    devices.block.activate_all()
    assert read(devices.blk, 1 << 20, 65536) == b"\x51" * 65536
    assert devices.blk.pwrite(2 << 20, b"N" * 65536) == 0
    assert read(devices.blk, 1 << 20, 65536) == b"\x51" * 65536
    devices.close()
    cleanup.clear()
    check = subprocess.run([shutil.which("qemu-img") or "qemu-img", "check", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    verify = qemu_io(path, "qcow2", "read -P 0x4e 2M 64k")
    assert verify.returncode == 0 and "Pattern verification failed" not in verify.stdout


def test_a_second_pemu_may_write_the_image_only_after_inactivate(tmp_path: Path, cleanup: list[Devices]) -> None:
    """A real second pemu process opens the image for writing: refused while
    this one owns it, started once this one has handed it over."""
    import sys

    path = make_image(tmp_path, "raw")
    source = Devices(path, "raw")
    cleanup.append(source)
    argv = [sys.executable, "-m", "pemu", "-machine", "q35", "-S", "-display", "none", "-monitor", "stdio",
            "-drive", f"file={path},format=raw,if=none,id=d0"]

    def second_pemu() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, input="quit\n", capture_output=True, text=True, timeout=120)

    refused = second_pemu()
    assert refused.returncode == 1 and 'Failed to get "write" lock' in refused.stderr
    source.block.inactivate_all()
    started = second_pemu()
    assert started.returncode == 0, started.stderr


def test_commit_is_refused_while_inactive(tmp_path: Path, cleanup: list[Devices]) -> None:
    """HMP commit writes the backing image: not while the images are handed over."""
    from pemu.block.blockdev import CommitError

    base = make_image(tmp_path, "raw")
    top = tmp_path / "top.qcow2"
    qcow2_create(str(top), SIZE, str(base), "raw")
    devices = Devices(top, "qcow2")
    cleanup.append(devices)
    assert devices.blk.pwrite(0, b"O" * 4096) == 0
    devices.block.inactivate_all()
    with pytest.raises(CommitError, match="^'commit' error for 'd0': the image is inactive"):
        devices.block.commit("d0")
    assert base.read_bytes()[:4096] == bytes(4096)
    devices.block.activate_all()
    devices.block.commit("d0")
    assert base.read_bytes()[:4096] == b"O" * 4096
