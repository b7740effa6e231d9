"""The memory API (QEMU's system/memory.c): regions, address spaces, flat views.

A machine's memory map is a tree of :class:`MemoryRegion` objects: containers
holding subregions at offsets (with priorities deciding overlaps), RAM and ROM
regions backed by host memory, I/O regions whose accesses call a device's
read/write handlers, and aliases that show a window of another region
elsewhere.  An :class:`AddressSpace` is a root region seen from one master
(the CPU, a DMA engine, port I/O).  Accelerators and the dispatch code never
walk the tree: they use the space's :class:`FlatView`, the tree rendered into
a sorted list of non-overlapping :class:`FlatRange` pieces by the pure
function :func:`render_flatview`.

Changes to the tree are grouped in transactions; when the outermost one
commits, every address space with listeners (an accelerator remapping guest
RAM, for instance) re-renders its view and tells them; the others render
theirs when it is next looked at, so building a machine, which commits at
every step, renders little.
"""

from __future__ import annotations

import bisect
import mmap
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum, IntEnum
from functools import cached_property
from typing import Protocol, runtime_checkable

from pemu.system.cpus import contain_fault
from pemu.util.log import guest_error
from pemu.util.vm_context import current_vm

UINT64_MAX = (1 << 64) - 1
MEMORY_SIZE_UNLIMITED = 1 << 64  # a region spanning the whole 64-bit space
_FILL_CHUNK = 64 * 1024  # RAMBlock.fill writes RAM in pieces of this size
# The dirty log's page: 4 KiB (x86's TARGET_PAGE_SIZE), one bit per page.
DIRTY_PAGE_BITS = 12
DIRTY_PAGE_SIZE = 1 << DIRTY_PAGE_BITS


class MemTxResult(IntEnum):
    OK = 0
    ERROR = 1
    DECODE_ERROR = 2


class MemReentrancyGuard:
    """Set while one of its device's register handlers runs (QEMU's
    MemReentrancyGuard).  An access that reaches the same device meanwhile,
    typically the device DMA-ing into its own registers, is refused and
    logged as a guest error instead of re-entering a handler that is half
    way through (and, in Python, recursing without end)."""

    __slots__ = ("engaged_in_io",)

    def __init__(self) -> None:
        self.engaged_in_io = False


@runtime_checkable
class GuardedOwner(Protocol):
    """An owner of I/O regions that keeps a re-entrancy guard (every qdev device does)."""

    mem_reentrancy_guard: MemReentrancyGuard


class BlockedReentrantIO(Exception):
    """An access refused by a :class:`MemReentrancyGuard` (already logged)."""


ReadHandler = Callable[[int, int], int]  # (offset, size) -> value
WriteHandler = Callable[[int, int, int], None]  # (offset, value, size)


class MemoryRegionOps:
    """A device's handlers and the access rules of its register window.

    ``valid_*`` says which accesses the device accepts at all (others are
    guest errors); ``impl_*`` says which sizes the handlers implement: wider
    accesses are split, narrower ones widened, little-endian.  Read at every
    MMIO/PIO access, hence a slotted class; not changed once made.
    """

    __slots__ = ("read", "write", "valid_min_access_size", "valid_max_access_size", "valid_unaligned",
                 "impl_min_access_size", "impl_max_access_size")

    def __init__(self, read: ReadHandler, write: WriteHandler, valid_min_access_size: int = 1,
                 valid_max_access_size: int = 4, valid_unaligned: bool = False, impl_min_access_size: int = 1,
                 impl_max_access_size: int = 4) -> None:
        self.read = read
        self.write = write
        self.valid_min_access_size = valid_min_access_size
        self.valid_max_access_size = valid_max_access_size
        self.valid_unaligned = valid_unaligned
        self.impl_min_access_size = impl_min_access_size
        self.impl_max_access_size = impl_max_access_size


class RegionKind(Enum):
    CONTAINER = "container"
    RAM = "ram"
    ROM = "rom"
    IO = "i/o"
    ALIAS = "alias"


# The mmap module names MAP_NORESERVE only from Python 3.13 on; Linux's value
# (include/uapi/asm-generic/mman-common.h) before that.
if sys.version_info >= (3, 13):
    MAP_NORESERVE = mmap.MAP_NORESERVE
else:
    MAP_NORESERVE = 0x4000


def _mmap_fixed(addr: int, length: int, flags: int, fd: int, offset: int) -> None:
    """mmap(2) with MAP_FIXED over host memory pemu already owns (the mmap
    module cannot place a mapping); OSError with the kernel's reason."""
    import ctypes  # only when a snapshot is restored
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    map_fixed = 0x10  # Linux's MAP_FIXED (the mmap module does not name it)
    result = libc.mmap(addr, length, mmap.PROT_READ | mmap.PROT_WRITE, flags | map_fixed, fd, offset)
    if result is None or result == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if result != addr:
        raise OSError(f"mmap placed the mapping at {result:#x}, not at {addr:#x}")


class RAMBlock:
    """Host memory behind a RAM region: an anonymous mapping with MAP_NORESERVE,
    so a large guest costs nothing until it touches its memory, and the host's
    overcommit heuristic does not refuse a guest larger than the host's RAM
    (as QEMU maps it).  OSError when even the address space is lacking."""

    def __init__(self, idstr: str, size: int) -> None:
        # (st_dev, st_ino) of the file mapped privately over the block (a
        # mapped-ram snapshot restored lazily), else None: discarding its pages
        # would bring the file's back, and cutting that file would fault them.
        self.file_mapped: tuple[int, int] | None = None
        self.idstr = idstr
        self.size = size
        self.mmap = mmap.mmap(-1, max(size, mmap.PAGESIZE),
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.mmap)[:size]
        self.vm_memory = current_vm().memory  # the VM being built owns it
        self.vm_memory.ram_blocks.append(self)
        # The pages the VMM wrote (DMA, loaders) since the dirty log's last
        # sync, while it is on (pemu.system.dirty_log); None while it is off.
        # A block made while it is on is all dirty, as in QEMU's ram_block_add.
        self.dirty_bitmap: bytearray | None = None
        if self.vm_memory.global_dirty_log:
            self.dirty_bitmap = bytearray(dirty_bitmap_size(size))
            bitmap_set(self.dirty_bitmap, 0, -(-size // DIRTY_PAGE_SIZE))

    @cached_property
    def host_addr(self) -> int:
        """The mapping's host address, for an accelerator that maps it into the guest."""
        import ctypes  # 2 ms at start-up, for what a vCPU's first run needs

        return ctypes.addressof(ctypes.c_char.from_buffer(self.mmap))

    def release(self) -> bool:
        """Unmap the host memory (the VM is destroyed); False if something
        still holds a view of it, which then keeps it until it lets go."""
        try:
            self.view.release()
            self.mmap.close()
        except BufferError:
            return False
        return True

    def map_file(self, fd: int, offset: int) -> None:
        """Put the bytes of file ``fd`` from ``offset`` (page-aligned) in place
        of the block's memory, privately (MAP_PRIVATE | MAP_FIXED at the same
        host address, so accelerators that point at it see the file's pages):
        a page is read from the file when first touched, and what the guest
        writes stays in memory.  The file must cover the whole range (a page
        past its end would fault with SIGBUS).  OSError if the kernel refuses."""
        import os

        _mmap_fixed(self.host_addr, len(self.mmap), mmap.MAP_PRIVATE, fd, offset)
        st = os.fstat(fd)
        self.file_mapped = (st.st_dev, st.st_ino)

    def fill(self, offset: int, byte: int, length: int) -> None:
        """Set ``length`` bytes from ``offset`` to ``byte``.  Zeroing whole
        pages hands them back to the kernel instead (MADV_DONTNEED: a private
        anonymous mapping reads zeros there afterwards), so zeroing gigabytes
        of guest RAM takes neither seconds of page faults nor host memory."""
        end = offset + length
        if byte == 0:
            first = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
            last = end // mmap.PAGESIZE * mmap.PAGESIZE
            if first < last:
                if self.file_mapped is not None:  # fresh anonymous pages, not the file's again
                    _mmap_fixed(self.host_addr + first, last - first,
                                mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                else:
                    self.mmap.madvise(mmap.MADV_DONTNEED, first, last - first)
                self.fill(offset, 0, first - offset)
                self.fill(last, 0, end - last)
                return
        pattern = bytes([byte]) * min(length, _FILL_CHUNK)
        for start in range(offset, end, _FILL_CHUNK):
            size = min(_FILL_CHUNK, end - start)
            self.view[start:start + size] = pattern[:size]

    def __repr__(self) -> str:
        return f"RAMBlock({self.idstr!r}, {self.size:#x})"


def dirty_bitmap_size(size: int) -> int:
    """Bytes of a dirty bitmap for ``size`` bytes of RAM (a bit per page)."""
    pages = -(-size // DIRTY_PAGE_SIZE)
    return -(-pages // 8)


def bitmap_set(bitmap: bytearray, start: int, count: int) -> None:
    """Set bits [start, start+count) of ``bitmap``, bit i being bit i % 8 of
    byte i // 8 (QEMU's bitmap_set, on bytes)."""
    if count <= 0:
        return
    end = start + count
    first, last = start >> 3, (end - 1) >> 3
    if first == last:
        bitmap[first] |= ((1 << count) - 1) << (start & 7)
        return
    bitmap[first] |= (0xFF << (start & 7)) & 0xFF
    bitmap[first + 1:last] = b"\xff" * (last - first - 1)
    bitmap[last] |= 0xFF >> (7 - ((end - 1) & 7))


def bitmap_or(bitmap: bytearray, src: bytes | bytearray, start: int, count: int) -> None:
    """OR the first ``count`` bits of ``src`` into ``bitmap`` from bit
    ``start`` on (same bit order as :func:`bitmap_set`)."""
    value = int.from_bytes(src, "little") & ((1 << count) - 1)
    if not value:
        return
    shift = start & 7
    first = start >> 3
    n = (shift + count + 7) >> 3
    old = int.from_bytes(bitmap[first:first + n], "little")
    bitmap[first:first + n] = (old | value << shift).to_bytes(n, "little")


def ram_block_set_dirty(block: RAMBlock, offset: int, length: int) -> None:
    """Log [offset, offset+length) of ``block`` as written, if the dirty log
    is on (QEMU's cpu_physical_memory_set_dirty_range).  For writes the VMM
    makes behind the write notifiers' back (the tcg vCPU pushing an
    exception frame); :func:`_ram_written` calls it for the others."""
    if block.dirty_bitmap is None or length <= 0:
        return
    first = offset >> DIRTY_PAGE_BITS
    last = (offset + length - 1) >> DIRTY_PAGE_BITS
    with block.vm_memory.dirty_log_lock:
        bitmap = block.dirty_bitmap
        if bitmap is not None:  # the log may have stopped meanwhile
            bitmap_set(bitmap, first, last - first + 1)


class MemoryRegion:
    """A node of the memory tree.  Build one with the class methods
    (:meth:`container`, :meth:`ram`, :meth:`rom`, :meth:`io`, :meth:`alias`)."""

    def __init__(self, name: str, size: int, owner: object | None = None,
                 kind: RegionKind = RegionKind.CONTAINER) -> None:
        if size < 0 or size > MEMORY_SIZE_UNLIMITED:
            raise ValueError(f"memory region {name}: bad size {size:#x}")
        self.name = name
        self.size = size
        self.owner = owner
        self.kind = kind
        self.ops: MemoryRegionOps | None = None
        self.ram_block: RAMBlock | None = None
        self.alias_target: MemoryRegion | None = None
        self.alias_offset = 0
        self.subregions: list[MemoryRegion] = []
        self.parent_container: MemoryRegion | None = None
        self.addr = 0
        self.priority = 0
        self.may_overlap = False
        self.enabled = True
        self.readonly = kind == RegionKind.ROM
        # Placeholder regions stand for devices that are not implemented yet.
        self.placeholder = False
        # The owner's guard, for I/O regions of an owner that has one.
        self.reentrancy_guard: MemReentrancyGuard | None = None

    # -- constructors ---------------------------------------------------------
    @classmethod
    def container(cls, name: str, size: int, owner: object | None = None) -> MemoryRegion:
        return cls(name, size, owner, RegionKind.CONTAINER)

    @classmethod
    def ram(cls, name: str, size: int, owner: object | None = None) -> MemoryRegion:
        mr = cls(name, size, owner, RegionKind.RAM)
        mr.ram_block = RAMBlock(name, size)
        return mr

    @classmethod
    def ram_from_block(cls, name: str, block: RAMBlock, owner: object | None = None) -> MemoryRegion:
        mr = cls(name, block.size, owner, RegionKind.RAM)
        mr.ram_block = block
        return mr

    @classmethod
    def rom(cls, name: str, size: int, owner: object | None = None) -> MemoryRegion:
        mr = cls(name, size, owner, RegionKind.ROM)
        mr.ram_block = RAMBlock(name, size)
        return mr

    @classmethod
    def io(cls, name: str, size: int, ops: MemoryRegionOps, owner: object | None = None) -> MemoryRegion:
        mr = cls(name, size, owner, RegionKind.IO)
        mr.ops = ops
        if isinstance(owner, GuardedOwner):
            mr.reentrancy_guard = owner.mem_reentrancy_guard
        return mr

    @classmethod
    def alias(cls, name: str, orig: MemoryRegion, offset: int, size: int,
              owner: object | None = None) -> MemoryRegion:
        if offset < 0 or offset + size > orig.size:
            raise ValueError(f"alias {name}: window {offset:#x}+{size:#x} is outside {orig.name}")
        mr = cls(name, size, owner, RegionKind.ALIAS)
        mr.alias_target = orig
        mr.alias_offset = offset
        return mr

    # -- the tree -----------------------------------------------------------
    def add_subregion(self, offset: int, sub: MemoryRegion) -> None:
        self._add_subregion(offset, sub, 0, False)

    def add_subregion_overlap(self, offset: int, sub: MemoryRegion, priority: int) -> None:
        self._add_subregion(offset, sub, priority, True)

    def _add_subregion(self, offset: int, sub: MemoryRegion, priority: int, may_overlap: bool) -> None:
        if sub.parent_container is not None:
            raise ValueError(f"region {sub.name} is already in {sub.parent_container.name}")
        if self.kind != RegionKind.CONTAINER:
            raise ValueError(f"region {self.name} is not a container")
        with memory_transaction():
            sub.parent_container = self
            sub.addr = offset
            sub.priority = priority
            sub.may_overlap = may_overlap
            # Higher priority first; among equals the newest first: it wins.
            pos = 0
            while pos < len(self.subregions) and self.subregions[pos].priority > priority:
                pos += 1
            self.subregions.insert(pos, sub)
            _mark_changed()

    def del_subregion(self, sub: MemoryRegion) -> None:
        if sub.parent_container is not self:
            raise ValueError(f"region {sub.name} is not in {self.name}")
        with memory_transaction():
            self.subregions.remove(sub)
            sub.parent_container = None
            _mark_changed()

    def set_enabled(self, enabled: bool) -> None:
        if enabled != self.enabled:
            with memory_transaction():
                self.enabled = enabled
                _mark_changed()

    def set_address(self, addr: int) -> None:
        if addr == self.addr:
            return
        parent = self.parent_container
        if parent is None:
            self.addr = addr
            return
        with memory_transaction():
            priority, overlap = self.priority, self.may_overlap
            parent.del_subregion(self)
            parent._add_subregion(addr, self, priority, overlap)

    def set_alias_offset(self, offset: int) -> None:
        assert self.alias_target is not None
        if offset < 0 or offset + self.size > self.alias_target.size:
            raise ValueError(f"alias {self.name}: offset {offset:#x} out of range")
        with memory_transaction():
            self.alias_offset = offset
            _mark_changed()

    def set_readonly(self, readonly: bool) -> None:
        if readonly != self.readonly:
            with memory_transaction():
                self.readonly = readonly
                _mark_changed()

    @property
    def is_ram(self) -> bool:
        return self.ram_block is not None

    def kind_name(self) -> str:
        """The type column of `info mtree`."""
        if self.kind == RegionKind.ALIAS:
            assert self.alias_target is not None
            return self.alias_target.kind_name()
        if self.kind == RegionKind.CONTAINER:
            return "i/o"  # QEMU prints containers as i/o
        return self.kind.value

    def __repr__(self) -> str:
        return f"MemoryRegion({self.name!r}, {self.kind.value}, size={self.size:#x})"


# --- flat views ------------------------------------------------------------------


class FlatRange:
    """One piece of an address space: [start, start+size) shows ``mr`` from
    ``offset_in_region`` on.  Looked up at every access, hence a slotted
    class; a value (equal and hashing by its fields), never changed once made."""

    __slots__ = ("start", "size", "mr", "offset_in_region", "readonly")

    def __init__(self, start: int, size: int, mr: MemoryRegion, offset_in_region: int, readonly: bool) -> None:
        self.start = start
        self.size = size
        self.mr = mr
        self.offset_in_region = offset_in_region
        self.readonly = readonly

    @property
    def end(self) -> int:
        return self.start + self.size

    def _key(self) -> tuple[int, int, MemoryRegion, int, bool]:
        return (self.start, self.size, self.mr, self.offset_in_region, self.readonly)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlatRange):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"FlatRange(start={self.start:#x}, size={self.size:#x}, mr={self.mr.name!r}, "
                f"offset_in_region={self.offset_in_region:#x}, readonly={self.readonly})")


class FlatView:
    """An address space rendered flat: sorted, non-overlapping ranges."""

    __slots__ = ("ranges", "_starts", "root")

    def __init__(self, ranges: list[FlatRange], root: MemoryRegion | None = None) -> None:
        self.ranges: tuple[FlatRange, ...] = tuple(ranges)
        self._starts = [fr.start for fr in self.ranges]
        self.root = root

    def lookup(self, addr: int) -> FlatRange | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            fr = self.ranges[i]
            if addr < fr.start + fr.size:
                return fr
        return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlatView):
            return NotImplemented
        return self.ranges == other.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def __iter__(self) -> Iterator[FlatRange]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)


def render_flatview(root: MemoryRegion) -> FlatView:
    """Render a region tree into its flat view (a pure function of the tree).

    Regions are visited in priority order, so a range already covered by a
    higher-priority region is never covered again; disabled regions are
    skipped with everything under them; an alias renders its target through
    a window; adjacent pieces of one region are merged.
    """
    pieces: list[FlatRange] = []  # kept sorted by start

    def insert(start: int, end: int, mr: MemoryRegion, region_base: int, readonly: bool) -> None:
        # Fill only the gaps of [start, end) that nothing rendered earlier covers.
        i = bisect.bisect_left([p.start for p in pieces], start)
        if i > 0 and pieces[i - 1].end > start:
            start = pieces[i - 1].end
        cursor = start
        new: list[FlatRange] = []
        while cursor < end:
            if i < len(pieces) and pieces[i].start < end:
                nxt = pieces[i]
                if nxt.start > cursor:
                    new.append(FlatRange(cursor, nxt.start - cursor, mr, cursor - region_base, readonly))
                cursor = max(cursor, nxt.end)
                i += 1
            else:
                new.append(FlatRange(cursor, end - cursor, mr, cursor - region_base, readonly))
                break
        for fr in new:
            bisect.insort(pieces, fr, key=lambda p: p.start)

    def render(mr: MemoryRegion, base: int, clip_start: int, clip_end: int, readonly: bool) -> None:
        # ``base`` is the absolute address of the region's offset 0.
        if not mr.enabled:
            return
        start = max(base, clip_start)
        end = min(base + mr.size, clip_end)
        if start >= end:
            return
        readonly = readonly or mr.readonly
        if mr.kind == RegionKind.ALIAS:
            assert mr.alias_target is not None
            render(mr.alias_target, base - mr.alias_offset, start, end, readonly)
            return
        if mr.kind == RegionKind.CONTAINER:
            for sub in mr.subregions:
                render(sub, base + sub.addr, start, end, readonly)
            return
        insert(start, end, mr, base, readonly)

    render(root, 0, 0, MEMORY_SIZE_UNLIMITED, False)

    merged: list[FlatRange] = []
    for fr in pieces:
        if merged:
            last = merged[-1]
            if (last.mr is fr.mr and last.end == fr.start and last.readonly == fr.readonly
                    and last.offset_in_region + last.size == fr.offset_in_region):
                merged[-1] = FlatRange(last.start, last.size + fr.size, last.mr, last.offset_in_region, last.readonly)
                continue
        merged.append(fr)
    return FlatView(merged, root)


# --- transactions --------------------------------------------------------------

RAMWriteNotifier = Callable[["RAMBlock", int, int], None]  # (block, offset in it, length)


class VMMemory:
    """One VM's address spaces, its open memory transaction, its RAM blocks,
    and who hears of the VMM's writes to its RAM."""

    def __init__(self) -> None:
        self.transaction_depth = 0
        self.changed = False
        self.address_spaces: list[AddressSpace] = []
        self.ram_blocks: list[RAMBlock] = []
        self.ram_write_notifiers: list[RAMWriteNotifier] = []
        # The dirty log (pemu.system.dirty_log): whether it is on, and the
        # lock under which RAM blocks' dirty_bitmap is set, taken or replaced.
        self.global_dirty_log = False
        self.dirty_log_lock = threading.Lock()


def _mark_changed() -> None:
    current_vm().memory.changed = True


def memory_region_transaction_begin() -> None:
    current_vm().memory.transaction_depth += 1


def memory_region_transaction_commit() -> None:
    memory = current_vm().memory
    assert memory.transaction_depth > 0
    memory.transaction_depth -= 1
    if memory.transaction_depth == 0 and memory.changed:
        memory.changed = False
        for space in list(memory.address_spaces):
            space.update_topology()


@contextmanager
def memory_transaction() -> Iterator[None]:
    memory_region_transaction_begin()
    try:
        yield
    finally:
        memory_region_transaction_commit()


def add_ram_write_notifier(cb: RAMWriteNotifier) -> None:
    """``cb(block, offset, length)`` runs after the VMM writes bytes of a RAM
    block of the current VM (loaders, DMA, a mapping given back by
    :meth:`AddressSpace.unmap`), so an accelerator can drop the code it
    translated from them.  The block and offset say which memory changed
    whatever address space the write went through; the accelerator finds
    where its CPU sees it."""
    current_vm().memory.ram_write_notifiers.append(cb)


def _ram_written(block: RAMBlock, offset: int, length: int) -> None:
    if block.dirty_bitmap is not None:
        ram_block_set_dirty(block, offset, length)
    for cb in block.vm_memory.ram_write_notifiers:
        cb(block, offset, length)


def remove_ram_write_notifier(cb: RAMWriteNotifier) -> None:
    notifiers = current_vm().memory.ram_write_notifiers
    if cb in notifiers:
        notifiers.remove(cb)


# --- address spaces --------------------------------------------------------------


class MemoryListener(Protocol):
    def flatview_changed(self, old: FlatView | None, new: FlatView) -> None: ...


def _access_valid(ops: MemoryRegionOps, addr: int, size: int) -> bool:
    if size < ops.valid_min_access_size or size > ops.valid_max_access_size:
        return False
    if not ops.valid_unaligned and addr & (size - 1):
        return False
    return True


def _blocked_reentrant_io(mr: MemoryRegion, what: str, offset: int, size: int) -> BlockedReentrantIO:
    guest_error(f"Blocked re-entrant IO on MemoryRegion: {mr.name} {what} at offset {offset:#x} size {size}")
    return BlockedReentrantIO(mr.name)


def _io_read(mr: MemoryRegion, offset: int, size: int) -> int:
    """Read through a device's ops, splitting or widening to its impl sizes.
    BlockedReentrantIO if the device is already handling an access."""
    ops = mr.ops
    assert ops is not None
    if not _access_valid(ops, offset, size):
        guest_error(f"invalid read of size {size} at offset {offset:#x} in {mr.name}")
        return (1 << (size * 8)) - 1
    guard = mr.reentrancy_guard
    if guard is not None:
        if guard.engaged_in_io:
            raise _blocked_reentrant_io(mr, "read", offset, size)
        guard.engaged_in_io = True
    try:
        lo, hi = ops.impl_min_access_size, ops.impl_max_access_size
        if lo <= size <= hi:
            return ops.read(offset, size) & ((1 << (size * 8)) - 1)
        if size < lo:
            base = offset & ~(lo - 1)
            shift = (offset - base) * 8
            return (ops.read(base, lo) >> shift) & ((1 << (size * 8)) - 1)
        value = 0
        for i in range(0, size, hi):
            value |= (ops.read(offset + i, hi) & ((1 << (hi * 8)) - 1)) << (i * 8)
        return value
    finally:
        if guard is not None:
            guard.engaged_in_io = False


def _io_write(mr: MemoryRegion, offset: int, value: int, size: int) -> None:
    """Write through a device's ops (as :func:`_io_read`)."""
    ops = mr.ops
    assert ops is not None
    if not _access_valid(ops, offset, size):
        guest_error(f"invalid write of size {size} at offset {offset:#x} in {mr.name}")
        return
    guard = mr.reentrancy_guard
    if guard is not None:
        if guard.engaged_in_io:
            raise _blocked_reentrant_io(mr, "write", offset, size)
        guard.engaged_in_io = True
    try:
        value &= (1 << (size * 8)) - 1
        lo, hi = ops.impl_min_access_size, ops.impl_max_access_size
        if lo <= size <= hi:
            ops.write(offset, value, size)
            return
        if size < lo:
            # A narrow write to a wide register: QEMU passes it widened, with the
            # other bytes zero.  Devices that care declare impl sizes down to 1.
            base = offset & ~(lo - 1)
            ops.write(base, value << ((offset - base) * 8), lo)
            return
        for i in range(0, size, hi):
            ops.write(offset + i, (value >> (i * 8)) & ((1 << (hi * 8)) - 1), hi)
    finally:
        if guard is not None:
            guard.engaged_in_io = False


# --- bulk accesses to device registers (DMA into MMIO) ------------------------------

MMIO_BULK_LIMIT = 64 * 1024
"""Bytes of device registers one bulk access (a DMA transfer, a loader) may
reach.  Each of them is a call of the device's handler, so a guest-chosen
length into an MMIO window (up to 4 GiB for fw_cfg) would hold the big lock
for minutes; no device takes that much data through its registers.  A bulk
access that runs past the limit stops there and reports MEMTX_ERROR, as an
access the target refuses, and the DMA engine reports its error status."""


def _bulk_access_size(ops: MemoryRegionOps, offset: int, remaining: int) -> int:
    """The size of the next access of a bulk transfer to a device: as wide as
    the device accepts, no wider than the alignment of ``offset`` (unless it
    takes unaligned accesses), a power of two (QEMU's memory_access_size)."""
    size = min(ops.valid_max_access_size, remaining)
    if not ops.valid_unaligned:
        alignment = offset & -offset
        if alignment:
            size = min(size, alignment)
    return 1 << (size.bit_length() - 1)


def _io_write_bulk(space_name: str, mr: MemoryRegion, addr: int, offset: int,
                   data: bytes | bytearray | memoryview) -> bool:
    """Write ``data`` into a device's registers from ``offset`` (``addr`` in
    the address space); False if the device faulted (contained: the VM stops)
    or refused a re-entrant access."""
    ops = mr.ops
    assert ops is not None
    pos, end = 0, len(data)
    while pos < end:
        size = _bulk_access_size(ops, offset + pos, end - pos)
        value = int.from_bytes(data[pos:pos + size], "little")
        try:
            _io_write(mr, offset + pos, value, size)
        except BlockedReentrantIO:
            return False
        except Exception as exc:  # as in dispatch_write
            contain_fault(f"device '{mr.name}', {space_name} write at {addr + pos:#x} size {size} "
                          f"value {value:#x}", exc)
            return False
        pos += size
    return True


def _io_read_bulk(space_name: str, mr: MemoryRegion, addr: int, offset: int,
                  length: int) -> bytes | None:
    """Read ``length`` bytes of a device's registers from ``offset``; None if
    the device faulted (contained: the VM stops) or refused a re-entrant access."""
    ops = mr.ops
    assert ops is not None
    out = bytearray()
    while len(out) < length:
        size = _bulk_access_size(ops, offset + len(out), length - len(out))
        try:
            out += _io_read(mr, offset + len(out), size).to_bytes(size, "little")
        except BlockedReentrantIO:
            return None
        except Exception as exc:  # as in dispatch_read
            contain_fault(f"device '{mr.name}', {space_name} read at {addr + len(out):#x} size {size}", exc)
            return None
    return bytes(out)


class RAMMapping:
    """A window of guest RAM lent out by :meth:`AddressSpace.map`: ``view``
    is ``block``'s memory from ``offset`` on (made at every DMA map: a slotted class)."""

    __slots__ = ("view", "block", "offset", "is_write")

    def __init__(self, view: memoryview, block: RAMBlock, offset: int, is_write: bool) -> None:
        self.view = view
        self.block = block
        self.offset = offset
        self.is_write = is_write


class AddressSpace:
    """A root region seen by one master, with its current flat view."""

    def __init__(self, root: MemoryRegion, name: str) -> None:
        self.root = root
        self.name = name
        self.listeners: list[MemoryListener] = []
        # The VM this space belongs to: the one being built.
        self.vm_memory = current_vm().memory
        self.vm_memory.address_spaces.append(self)

    @cached_property
    def flatview(self) -> FlatView:
        """The current view, rendered on first use after a change (a plain
        attribute from then on: lookups on the dispatch path cost nothing more)."""
        return render_flatview(self.root)

    def destroy(self) -> None:
        if self in self.vm_memory.address_spaces:
            self.vm_memory.address_spaces.remove(self)

    def update_topology(self) -> None:
        old: FlatView | None = self.__dict__.pop("flatview", None)
        if not self.listeners:
            return  # rendered when next looked at
        new = self.flatview
        if old is not None and new == old:
            self.flatview = old  # unchanged: keep the object users may have cached
            return
        for listener in list(self.listeners):
            listener.flatview_changed(old, new)

    def add_listener(self, listener: MemoryListener) -> None:
        self.listeners.append(listener)
        listener.flatview_changed(None, self.flatview)

    def remove_listener(self, listener: MemoryListener) -> None:
        self.listeners.remove(listener)

    # -- single accesses (MMIO and port I/O from a CPU) --------------------------
    # A single access goes whole to the region at its first byte, as long as
    # it fits in that region (QEMU dispatches it so even where another region
    # shows through part of it, e.g. 0xCF9 inside the 0xCF8 dword); only an
    # access that runs past the end of its region is split into bytes.
    # An exception out of a device's handler stops here (contain_fault): the
    # VM stops in internal-error and the access reads as all ones.  An access
    # refused by the device's re-entrancy guard reads as all ones too (a
    # write is dropped); the guard has logged it.
    def dispatch_read(self, addr: int, size: int) -> int:
        fr = self.flatview.lookup(addr)
        if fr is None:
            guest_error(f"{self.name}: read of size {size} at {addr:#x}: nothing is there")
            return (1 << (size * 8)) - 1
        offset = addr - fr.start + fr.offset_in_region
        mr = fr.mr
        if offset + size > mr.size or (mr.ram_block is not None and addr + size > fr.end):
            return self._read_split(addr, size)
        block = mr.ram_block
        if block is not None:
            return int.from_bytes(block.view[offset:offset + size], "little")
        try:
            return _io_read(mr, offset, size)
        except BlockedReentrantIO:
            return (1 << (size * 8)) - 1
        except Exception as exc:  # a bug in the device model: contained here, for every accelerator
            contain_fault(f"device '{mr.name}', {self.name} read at {addr:#x} size {size}", exc)
            return (1 << (size * 8)) - 1

    def dispatch_write(self, addr: int, value: int, size: int) -> None:
        fr = self.flatview.lookup(addr)
        if fr is None:
            guest_error(f"{self.name}: write of size {size} at {addr:#x} value {value:#x}: nothing is there")
            return
        offset = addr - fr.start + fr.offset_in_region
        mr = fr.mr
        if offset + size > mr.size or (mr.ram_block is not None and addr + size > fr.end):
            self._write_split(addr, value, size)
            return
        block = mr.ram_block
        if block is not None:
            if not fr.readonly:
                block.view[offset:offset + size] = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")
                if block.dirty_bitmap is not None:  # a CPU's store that reached RAM through here
                    ram_block_set_dirty(block, offset, size)
            return
        try:
            _io_write(mr, offset, value, size)
        except BlockedReentrantIO:
            pass
        except Exception as exc:
            value &= (1 << (size * 8)) - 1
            contain_fault(f"device '{mr.name}', {self.name} write at {addr:#x} size {size} value {value:#x}", exc)

    def _read_split(self, addr: int, size: int) -> int:
        return sum(self.dispatch_read(addr + i, 1) << (8 * i) for i in range(size))

    def _write_split(self, addr: int, value: int, size: int) -> None:
        for i in range(size):
            self.dispatch_write(addr + i, (value >> (8 * i)) & 0xFF, 1)

    # -- buffers (loaders and DMA) ------------------------------------------------
    def _walk(self, addr: int, length: int) -> Iterator[tuple[int, int, FlatRange | None]]:
        """Split [addr, addr+length) into (addr, length, range-or-None) pieces."""
        end = addr + length
        if addr < 0 or end > MEMORY_SIZE_UNLIMITED:
            yield addr, length, None
            return
        while addr < end:
            fr = self.flatview.lookup(addr)
            if fr is None:
                i = bisect.bisect_right(self.flatview._starts, addr)
                nxt = self.flatview.ranges[i].start if i < len(self.flatview.ranges) else end
                chunk = min(end, nxt) - addr
                yield addr, chunk, None
            else:
                chunk = min(end, fr.end) - addr
                yield addr, chunk, fr
            addr += chunk

    def read_result(self, addr: int, length: int) -> tuple[bytes, MemTxResult]:
        out = bytearray()
        result = MemTxResult.OK
        budget = MMIO_BULK_LIMIT
        for piece, n, fr in self._walk(addr, length):
            if fr is None:
                guest_error(f"{self.name}: read of {n} bytes at {piece:#x}: nothing is there")
                out += b"\xff" * n
                result = MemTxResult.DECODE_ERROR
            elif fr.mr.ram_block is not None:
                off = piece - fr.start + fr.offset_in_region
                out += fr.mr.ram_block.view[off:off + n]
            else:
                data = _io_read_bulk(self.name, fr.mr, piece, piece - fr.start + fr.offset_in_region,
                                     min(n, budget))
                if data is None:
                    out += b"\xff" * (length - len(out))
                    return bytes(out), MemTxResult.ERROR
                out += data
                if n > budget:
                    self._bulk_limit_hit("read", piece + budget, fr.mr)
                    out += b"\xff" * (length - len(out))
                    return bytes(out), MemTxResult.ERROR
                budget -= n
        return bytes(out), result

    def read(self, addr: int, length: int) -> bytes:
        return self.read_result(addr, length)[0]

    def write(self, addr: int, data: bytes | bytearray | memoryview, rom: bool = False) -> MemTxResult:
        """Write ``data`` at ``addr``.  ROM is skipped unless ``rom`` (QEMU's
        address_space_write_rom, used by loaders)."""
        result = MemTxResult.OK
        budget = MMIO_BULK_LIMIT
        pos = 0
        for piece, n, fr in self._walk(addr, len(data)):
            chunk = data[pos:pos + n]
            pos += n
            if fr is None:
                guest_error(f"{self.name}: write of {n} bytes at {piece:#x}: nothing is there")
                result = MemTxResult.DECODE_ERROR
            elif fr.mr.ram_block is not None:
                if fr.readonly and not rom:
                    continue
                off = piece - fr.start + fr.offset_in_region
                fr.mr.ram_block.view[off:off + n] = chunk
                _ram_written(fr.mr.ram_block, off, n)
            else:
                if not _io_write_bulk(self.name, fr.mr, piece, piece - fr.start + fr.offset_in_region,
                                      chunk[:budget]):
                    return MemTxResult.ERROR
                if n > budget:
                    self._bulk_limit_hit("write", piece + budget, fr.mr)
                    return MemTxResult.ERROR
                budget -= n
        return result

    def fill(self, addr: int, byte: int, length: int) -> MemTxResult:
        """Write ``length`` copies of ``byte`` at ``addr`` (QEMU's
        address_space_set), without ever holding ``length`` bytes on the host."""
        result = MemTxResult.OK
        budget = MMIO_BULK_LIMIT
        pattern = bytes([byte & 0xFF]) * min(length, MMIO_BULK_LIMIT)
        for piece, n, fr in self._walk(addr, length):
            if fr is None:
                guest_error(f"{self.name}: write of {n} bytes at {piece:#x}: nothing is there")
                result = MemTxResult.DECODE_ERROR
            elif fr.mr.ram_block is not None:
                if fr.readonly:
                    continue
                off = piece - fr.start + fr.offset_in_region
                fr.mr.ram_block.fill(off, byte & 0xFF, n)
                _ram_written(fr.mr.ram_block, off, n)
            else:
                if not _io_write_bulk(self.name, fr.mr, piece, piece - fr.start + fr.offset_in_region,
                                      pattern[:min(n, budget)]):
                    return MemTxResult.ERROR
                if n > budget:
                    self._bulk_limit_hit("write", piece + budget, fr.mr)
                    return MemTxResult.ERROR
                budget -= n
        return result

    def _bulk_limit_hit(self, what: str, addr: int, mr: MemoryRegion) -> None:
        guest_error(f"{self.name}: bulk {what} stopped at {addr:#x} in {mr.name}: "
                    f"{MMIO_BULK_LIMIT} bytes of device registers is the limit")

    def write_rom(self, addr: int, data: bytes | bytearray | memoryview) -> MemTxResult:
        return self.write(addr, data, rom=True)

    def is_memory(self, addr: int, length: int) -> bool:
        """True when every byte of [addr, addr+length) is RAM or ROM, so a
        loader's :meth:`write_rom` lands in memory rather than a device."""
        return all(fr is not None and fr.mr.ram_block is not None for _, _, fr in self._walk(addr, length))

    def map(self, addr: int, length: int, is_write: bool = False) -> RAMMapping | None:
        """Zero-copy access to guest RAM for [addr, addr+length), or None if
        the range is not all in one RAM range (callers then fall back to
        read/write).  The view never reaches outside the RAM block.  A
        writable mapping is given back with :meth:`unmap`, which tells the
        accelerators what was written (QEMU's address_space_map)."""
        fr = self.flatview.lookup(addr)
        if fr is None or fr.mr.ram_block is None or length < 0 or addr + length > fr.end:
            return None
        if is_write and fr.readonly:
            return None
        off = addr - fr.start + fr.offset_in_region
        block = fr.mr.ram_block
        return RAMMapping(block.view[off:off + length], block, off, is_write)

    @staticmethod
    def unmap(mapping: RAMMapping, access_len: int) -> None:
        """Give back a mapping from :meth:`map`.  For a writable one, the first
        ``access_len`` bytes are what the device wrote, and only those are
        reported as changed (QEMU's address_space_unmap)."""
        view = mapping.view
        if mapping.is_write and access_len > 0:
            _ram_written(mapping.block, mapping.offset, min(access_len, len(view)))
        view.release()

    # Little-endian loads and stores of one value, as QEMU's ld*_phys/st*_phys.
    def ldub(self, addr: int) -> int:
        return self.read(addr, 1)[0]

    def lduw_le(self, addr: int) -> int:
        return struct.unpack("<H", self.read(addr, 2))[0]

    def ldl_le(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def ldq_le(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def stb(self, addr: int, value: int) -> MemTxResult:
        return self.write(addr, bytes([value & 0xFF]))

    def stw_le(self, addr: int, value: int) -> MemTxResult:
        return self.write(addr, struct.pack("<H", value & 0xFFFF))

    def stl_le(self, addr: int, value: int) -> MemTxResult:
        return self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    def stq_le(self, addr: int, value: int) -> MemTxResult:
        return self.write(addr, struct.pack("<Q", value & UINT64_MAX))

    def __repr__(self) -> str:
        return f"AddressSpace({self.name!r}, root={self.root.name!r})"


def address_spaces() -> list[AddressSpace]:
    return list(current_vm().memory.address_spaces)


# --- `info mtree` ----------------------------------------------------------------


def _fmt_range(start: int, size: int, width: int) -> str:
    last = (start + size - 1) if size else start
    last = min(last, UINT64_MAX)
    return f"{start:0{width}x}-{last:0{width}x}"


def mtree_info(flatview: bool = False, spaces: list[AddressSpace] | None = None) -> str:
    """The text of the monitor's `info mtree` (and `info mtree -f`)."""
    spaces = address_spaces() if spaces is None else spaces
    lines: list[str] = []
    if flatview:
        # Address spaces sharing a root share one view, as in QEMU.
        groups: dict[int, list[AddressSpace]] = {}
        for space in spaces:
            groups.setdefault(id(space.root), []).append(space)
        for n, group in enumerate(groups.values()):
            view = group[0].flatview
            lines.append(f"FlatView #{n}")
            for space in group:
                lines.append(f' AS "{space.name}", root: {space.root.name}')
            lines.append(f" Root memory region: {group[0].root.name}")
            width = 16 if group[0].root.size > 1 << 32 else 4
            if not view.ranges:
                lines.append("  No rendered FlatView")
            for fr in view.ranges:
                kind = fr.mr.kind_name()
                if fr.readonly and kind == "ram":
                    kind = "rom"
                text = f"  {_fmt_range(fr.start, fr.size, width)} (prio {fr.mr.priority}, {kind}): {fr.mr.name}"
                if fr.offset_in_region:
                    text += f" @{fr.offset_in_region:0{width}x}"
                lines.append(text)
            lines.append("")
        return "\n".join(lines) + "\n"

    aliased: list[MemoryRegion] = []

    def walk(mr: MemoryRegion, base: int, depth: int, width: int) -> None:
        indent = "  " * depth
        rng = _fmt_range(base, mr.size, width)
        flags = "" if mr.enabled else " [disabled]"
        if mr.kind == RegionKind.ALIAS:
            assert mr.alias_target is not None
            target = mr.alias_target
            if target not in aliased:
                aliased.append(target)
            win = _fmt_range(mr.alias_offset, mr.size, width)
            lines.append(f"{indent}{rng} (prio {mr.priority}, {mr.kind_name()}){flags}: "
                         f"alias {mr.name} @{target.name} {win}")
            return
        kind = mr.kind_name()
        if mr.readonly and kind == "ram":
            kind = "rom"
        note = " [placeholder]" if mr.placeholder else ""
        lines.append(f"{indent}{rng} (prio {mr.priority}, {kind}){flags}: {mr.name}{note}")
        for sub in sorted(mr.subregions, key=lambda s: (s.addr, -s.priority)):
            walk(sub, base + sub.addr, depth + 1, width)

    for space in spaces:
        width = 16 if space.root.size > 1 << 32 else 4
        lines.append(f"address-space: {space.name}")
        walk(space.root, 0, 1, width)
        lines.append("")
    done: set[int] = set()
    while aliased:
        target = aliased.pop(0)
        if id(target) in done or any(target is space.root for space in spaces):
            continue
        done.add(id(target))
        lines.append(f"memory-region: {target.name}")
        walk(target, 0, 1, 16 if target.size > 1 << 32 else 4)
        lines.append("")
    return "\n".join(lines) + "\n"
