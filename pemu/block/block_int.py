"""The block layer's internal types (QEMU's include/block/block_int.h).

A :class:`BlockDriverState` (BDS) is one node of an image graph: a format
node (raw, qcow2) over a protocol node (file), with an optional backing node.
Each node is driven by a :class:`BlockDriver`.  Drivers raise
:class:`OSError` with an errno for I/O failures (the BlockBackend turns them
into QEMU's negative error codes) and :class:`BlockOpenError` with QEMU's
wording for images that cannot be opened.

Nodes are not thread safe: the BlockBackend serialises the requests of one
graph (its worker threads take the graph's lock).
"""

from __future__ import annotations

import enum
import errno
import struct
from typing import NamedTuple

BDRV_SECTOR_SIZE = 512
# bdrv_probe_all() looks at this much of the image (BLOCK_PROBE_BUF_SIZE).
BLOCK_PROBE_BUF_SIZE = 512
# The largest request a node accepts in one call (BDRV_REQUEST_MAX_BYTES).
BDRV_REQUEST_MAX_BYTES = 0x7FFFFE00


class BlockOpenError(Exception):
    """An image that cannot be opened; the text is QEMU's message."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BlockPerm(enum.IntFlag):
    """What a user of a node may do to it (BLK_PERM_*); bit i is lock byte base+i."""

    CONSISTENT_READ = 0x01
    WRITE = 0x02
    WRITE_UNCHANGED = 0x04
    RESIZE = 0x08


BLK_PERM_ALL = BlockPerm.CONSISTENT_READ | BlockPerm.WRITE | BlockPerm.WRITE_UNCHANGED | BlockPerm.RESIZE

PERM_NAMES = {
    BlockPerm.CONSISTENT_READ: "consistent read",
    BlockPerm.WRITE: "write",
    BlockPerm.WRITE_UNCHANGED: "write unchanged",
    BlockPerm.RESIZE: "resize",
}


class CacheMode(NamedTuple):
    """What -drive cache= selects (bdrv_parse_cache_mode)."""

    name: str
    direct: bool  # O_DIRECT on the file
    no_flush: bool  # flush is a no-op (unsafe)
    writeback: bool  # the guest sees a volatile write cache; False: flush after each write


CACHE_MODES = {
    "writeback": CacheMode("writeback", direct=False, no_flush=False, writeback=True),
    "writethrough": CacheMode("writethrough", direct=False, no_flush=False, writeback=False),
    "none": CacheMode("none", direct=True, no_flush=False, writeback=True),
    "off": CacheMode("none", direct=True, no_flush=False, writeback=True),
    "directsync": CacheMode("directsync", direct=True, no_flush=False, writeback=False),
    "unsafe": CacheMode("unsafe", direct=False, no_flush=True, writeback=True),
}


def bdrv_parse_cache_mode(mode: str) -> CacheMode:
    try:
        return CACHE_MODES[mode]
    except KeyError:
        raise ValueError(f"invalid cache option: {mode}") from None


def io_error(code: int = errno.EIO) -> OSError:
    import os

    return OSError(code, os.strerror(code))


class BlockDriver:
    """A format or protocol driver; one instance per open node."""

    format_name = ""
    is_format = True

    def __init__(self, bs: BlockDriverState) -> None:
        self.bs = bs

    def getlength(self) -> int:
        raise NotImplementedError

    def pread(self, offset: int, nbytes: int) -> bytes:
        raise NotImplementedError

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def truncate(self, size: int) -> None:
        """Change the image's virtual size (bdrv_co_truncate)."""
        raise BlockOpenError("Image format driver does not support resize")

    def flush(self) -> None:
        """Make what was written stable on the layer below (metadata included)."""

    def close(self) -> None:
        pass

    def allocated_file_size(self) -> int:
        return -1

    def make_empty(self) -> None:
        """Drop all data of this node so reads fall through to the backing image."""
        raise OSError(95, "Operation not supported")

    def is_allocated(self, offset: int, nbytes: int) -> bool:
        """Whether this node (not its backing chain) holds data for the range."""
        return True


class BlockDriverState:
    """One node of the graph: a driver, its children and its open flags."""

    def __init__(self, filename: str, read_only: bool, cache: CacheMode) -> None:
        self.filename = filename
        self.read_only = read_only
        self.cache = cache
        self.drv: BlockDriver | None = None
        self.file: BlockDriverState | None = None  # the protocol child of a format node
        self.backing: BlockDriverState | None = None
        self.backing_file = ""  # as the image names it
        self.backing_format = ""
        self.node_name = ""
        self.probed = False  # format guessed by probing (raw then restricts block 0)
        self.encrypted = False
        self.temporary = False  # a -snapshot overlay, deleted on close
        # BDRV_O_INACTIVE: another process may own the image (an incoming migration not yet
        # loaded, or an outgoing one handed over): no write permission, no write, no metadata update.
        self.inactive = False

    @property
    def writable(self) -> bool:
        """Whether anything may be written to the node now (not read-only, not inactive)."""
        return not self.read_only and not self.inactive

    @property
    def format_name(self) -> str:
        assert self.drv is not None
        return self.drv.format_name

    # The bdrv_* entry points, with bounds already checked by the caller.
    def getlength(self) -> int:
        assert self.drv is not None
        return self.drv.getlength()

    def pread(self, offset: int, nbytes: int) -> bytes:
        assert self.drv is not None
        return self.drv.pread(offset, nbytes)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        assert self.drv is not None
        if not self.writable:
            raise io_error(errno.EPERM)
        self.drv.pwrite(offset, data)

    def truncate(self, size: int) -> None:
        assert self.drv is not None
        if self.read_only:
            raise BlockOpenError("Block node is read-only")
        if self.inactive:
            raise BlockOpenError("Block node is inactive (handed over by a migration)")
        self.drv.truncate(size)

    def flush(self) -> None:
        """bdrv_flush: the format's metadata, then the protocol's stable storage."""
        assert self.drv is not None
        if self.cache.no_flush:
            return
        self.drv.flush()
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.drv is not None:
            self.drv.close()
            self.drv = None
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.backing is not None:
            self.backing.close()
            self.backing = None

    def chain(self) -> list[BlockDriverState]:
        """This node and its backing nodes, top first."""
        nodes: list[BlockDriverState] = []
        bs: BlockDriverState | None = self
        while bs is not None:
            nodes.append(bs)
            bs = bs.backing
        return nodes


# Pure: the image formats' magic numbers (with the block layer and the raw driver both using it).
def probe_format(buf: bytes) -> str:
    """The format QEMU's bdrv_probe_all would pick for the first sector ``buf``."""
    if buf[:4] == b"QFI\xfb" and len(buf) >= 8:
        version = struct.unpack_from(">I", buf, 4)[0]
        return "qcow2" if version >= 2 else "qcow"
    if buf[:4] == b"QED\0":
        return "qed"
    if buf[:4] == b"KDMV" or buf.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if buf[:8] == b"conectix":
        return "vpc"
    if buf[:8] == b"vhdxfile":
        return "vhdx"
    if buf[:6] == b"LUKS\xba\xbe":
        return "luks"
    if len(buf) >= 0x44 and struct.unpack_from("<I", buf, 0x40)[0] == 0xBEDA107F:
        return "vdi"
    return "raw"
