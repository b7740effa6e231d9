"""The "file" protocol driver (QEMU's block/file-posix.c).

Reads beyond the end of the file return zeros, as QEMU's do.  With
``cache.direct`` the file is opened with O_DIRECT and every transfer goes
through page-aligned bounce buffers (anonymous mmaps), whole aligned blocks
at a time.  Flush is fdatasync.

Locking follows QEMU's raw_apply_lock_bytes/raw_check_lock_bytes, so pemu and
QEMU exclude each other: with open file description (OFD) locks, byte
``100 + i`` is held shared while this user holds permission bit i, and byte
``200 + i`` while it refuses to share permission i with anybody else.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct

from pemu.block.block_int import (
    BLK_PERM_ALL,
    PERM_NAMES,
    BlockDriver,
    BlockDriverState,
    BlockOpenError,
    BlockPerm,
)

RAW_LOCK_PERM_BASE = 100
RAW_LOCK_SHARED_BASE = 200
# O_DIRECT transfers are aligned to this (covers 512-byte and 4 KiB sectors).
DIRECT_ALIGNMENT = 4096

_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def _flock(lock_type: int, start: int) -> bytes:
    # struct flock on Linux: short l_type, short l_whence, off_t l_start,
    # off_t l_len, pid_t l_pid (0 for OFD locks), native alignment.
    return struct.pack("@hhqqi4x", lock_type, os.SEEK_SET, start, 1, 0)


def _lock_byte(fd: int, offset: int, lock_type: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _flock(lock_type, offset))


def _lock_byte_conflicts(fd: int, offset: int) -> bool:
    """qemu_lock_fd_test(exclusive): does another open file hold a lock on the byte?"""
    result = fcntl.fcntl(fd, _F_OFD_GETLK, _flock(fcntl.F_WRLCK, offset))
    lock_type = struct.unpack("@hhqqi4x", result)[0]
    return lock_type != fcntl.F_UNLCK


def _perm_bits(mask: int) -> list[BlockPerm]:
    return [perm for perm in BlockPerm if mask & perm]


class FileDriver(BlockDriver):
    format_name = "file"
    is_format = False

    def __init__(self, bs: BlockDriverState, locking: bool) -> None:
        super().__init__(bs)
        self.locking = locking
        self.direct = False
        flags = os.O_RDONLY if bs.read_only else os.O_RDWR
        flags |= os.O_CLOEXEC
        try:
            if bs.cache.direct:
                try:
                    self.fd = os.open(bs.filename, flags | os.O_DIRECT)
                    self.direct = True
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    from pemu.util.error import warn_report

                    warn_report(f"'{bs.filename}': the file system refuses O_DIRECT; cache.direct is off")
                    self.fd = os.open(bs.filename, flags)
            else:
                self.fd = os.open(bs.filename, flags)
        except OSError as exc:
            raise BlockOpenError(f"Could not open '{bs.filename}': {os.strerror(exc.errno or errno.EIO)}") from None
        if os.path.isdir(bs.filename):
            os.close(self.fd)
            raise BlockOpenError(f"'{bs.filename}' is a directory")  # QEMU: "is not a file"
        self.perm = 0
        self.shared = int(BLK_PERM_ALL)

    # -- locking ---------------------------------------------------------------
    def set_perm(self, perm: int, shared: int) -> None:
        """Take the lock bytes for ``perm``/``shared`` and check nobody conflicts."""
        if not self.locking:
            self.perm, self.shared = perm, shared
            return
        try:
            self._apply_lock_bytes(perm, ~shared & BLK_PERM_ALL)
            self._check_lock_bytes(perm, shared)
        except BlockOpenError:
            self._apply_lock_bytes(self.perm, ~self.shared & BLK_PERM_ALL)
            raise
        self.perm, self.shared = perm, shared

    def _apply_lock_bytes(self, perm: int, refused: int) -> None:
        for perm_bit in BlockPerm:
            index = perm_bit.bit_length() - 1
            for base, held in ((RAW_LOCK_PERM_BASE, perm), (RAW_LOCK_SHARED_BASE, refused)):
                lock_type = fcntl.F_RDLCK if held & perm_bit else fcntl.F_UNLCK
                try:
                    _lock_byte(self.fd, base + index, lock_type)
                except OSError as exc:
                    raise BlockOpenError(
                        f"Failed to lock byte {base + index}: {os.strerror(exc.errno or errno.EIO)}"
                    ) from None

    def _check_lock_bytes(self, perm: int, shared: int) -> None:
        hint = f"Is another process using the image [{self.bs.filename}]?"
        for perm_bit in _perm_bits(perm):
            if _lock_byte_conflicts(self.fd, RAW_LOCK_SHARED_BASE + perm_bit.bit_length() - 1):
                raise BlockOpenError(f'Failed to get "{PERM_NAMES[perm_bit]}" lock', hint)
        for perm_bit in _perm_bits(~shared & BLK_PERM_ALL):
            if _lock_byte_conflicts(self.fd, RAW_LOCK_PERM_BASE + perm_bit.bit_length() - 1):
                raise BlockOpenError(f'Failed to get shared "{PERM_NAMES[perm_bit]}" lock', hint)

    def reopen(self, perm: int, shared: int) -> None:
        """Reopen the file with the access ``perm`` needs and take its locks."""
        flags = (os.O_RDWR if perm & BlockPerm.WRITE else os.O_RDONLY) | os.O_CLOEXEC
        if self.direct:
            flags |= os.O_DIRECT
        os.close(self.fd)  # our old lock bytes go with it: they would conflict with the new ones
        self.fd = os.open(self.bs.filename, flags)
        self.perm, self.shared = 0, int(BLK_PERM_ALL)
        try:
            self.set_perm(perm, shared)
        except BlockOpenError as exc:
            raise OSError(errno.EBUSY, exc.message) from None

    # -- I/O ---------------------------------------------------------------------
    def getlength(self) -> int:
        return os.fstat(self.fd).st_size

    def allocated_file_size(self) -> int:
        return os.fstat(self.fd).st_blocks * 512

    def pread(self, offset: int, nbytes: int) -> bytes:
        if nbytes == 0:
            return b""
        if self.direct:
            return self._direct_read(offset, nbytes)
        data = os.pread(self.fd, nbytes, offset)
        while len(data) < nbytes:
            more = os.pread(self.fd, nbytes - len(data), offset + len(data))
            if not more:
                return data + bytes(nbytes - len(data))  # past the end: zeros
            data += more
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if len(data) == 0:
            return
        if self.direct:
            self._direct_write(offset, data)
            return
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view = view[done:]
            offset += done

    def _aligned(self, offset: int, nbytes: int) -> tuple[int, int]:
        start = offset - offset % DIRECT_ALIGNMENT
        end = -(-(offset + nbytes) // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
        return start, end

    def _direct_read(self, offset: int, nbytes: int) -> bytes:
        start, end = self._aligned(offset, nbytes)
        with mmap.mmap(-1, end - start) as buf:
            got = os.preadv(self.fd, [buf], start)
            if got < end - start:
                buf[got:] = bytes(end - start - got)  # past the end: zeros
            return bytes(buf[offset - start : offset - start + nbytes])

    def _direct_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        start, end = self._aligned(offset, len(data))
        size = self.getlength()
        with mmap.mmap(-1, end - start) as buf:
            if start != offset or end != offset + len(data):
                got = os.preadv(self.fd, [buf], start) if start < size else 0
                if got < end - start:
                    buf[got:] = bytes(end - start - got)
            buf[offset - start : offset - start + len(data)] = bytes(data)
            done = os.pwritev(self.fd, [buf], start)
            if done != end - start:
                raise OSError(errno.EIO, "short O_DIRECT write")
        if end > offset + len(data) and offset + len(data) > size:
            os.ftruncate(self.fd, offset + len(data))  # no growth past what was written

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the OFD locks
            self.fd = -1
