"""The "raw" format driver (QEMU's block/raw-format.c): the file as it is.

When the format was guessed by probing, a write to the first sector must not
turn the image into something that probes as another format (a guest could
otherwise make the host read its disk as a qcow2 with a backing file of the
guest's choosing): such a write fails with EPERM, as in QEMU.
"""

from __future__ import annotations

import errno

from pemu.block.block_int import BLOCK_PROBE_BUF_SIZE, BlockDriver, BlockDriverState, io_error, probe_format


class RawDriver(BlockDriver):
    format_name = "raw"

    def __init__(self, bs: BlockDriverState) -> None:
        super().__init__(bs)
        assert bs.file is not None
        self.file = bs.file

    def getlength(self) -> int:
        return self.file.getlength()

    def allocated_file_size(self) -> int:
        assert self.file.drv is not None
        return self.file.drv.allocated_file_size()

    def truncate(self, size: int) -> None:
        self.file.truncate(size)

    def pread(self, offset: int, nbytes: int) -> bytes:
        return self.file.pread(offset, nbytes)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.bs.probed and offset < BLOCK_PROBE_BUF_SIZE:
            self._check_probe_safe(offset, data)
        self.file.pwrite(offset, data)

    def _check_probe_safe(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        head = bytearray(self.file.pread(0, BLOCK_PROBE_BUF_SIZE))
        part = bytes(data[: BLOCK_PROBE_BUF_SIZE - offset])
        head[offset : offset + len(part)] = part
        if probe_format(bytes(head)) != "raw":
            raise io_error(errno.EPERM)
