"""Guest RAM in the migration stream (QEMU's migration/ram.c).

RAM travels in pages of 4 KiB (``TARGET_PAGE_SIZE``), block by block, each
:class:`~pemu.system.memory.RAMBlock` of the VM named by its ``idstr``.

**Setup** (the "ram" section's START part) lists every block with its size;
the destination refuses a stream whose list or sizes differ from its own
(``Length mismatch: pc.ram: 0x20000000 in != 0x10000000``).  With the
mapped-ram layout it also gives each block's page-aligned offset in the file
and the offset where the rest of the stream goes on after the RAM area.

**Pages** (PART parts while the VM runs, the END part once it is stopped) are
records, each a big-endian 64-bit word holding a page-aligned offset in the
block and flags in its low bits (``RAM_SAVE_FLAG_*``), then:

* unless ``CONTINUE`` (same block as the previous record): the block's idstr;
* ``ZERO``: a 32-bit page count: those pages are all zeros, nothing else is
  sent (the destination discards them, so fresh RAM stays untouched);
* ``PAGE``: a 32-bit page count, then the pages' bytes (a block whose size is
  not a multiple of the page size sends only its own bytes of its last page);
* ``EOS``: the end of this part.

A :class:`RAMState` keeps the migration bitmap, one bit per page (page i is
bit i % 8 of byte i // 8, as the dirty log gives it): all ones at setup,
cleared as pages are sent, and ORed with the pages the guest wrote whenever
:meth:`RAMState.pending_bytes` syncs the dirty log
(:mod:`pemu.system.dirty_log`).  Pages are taken a window of
``WINDOW_PAGES`` at a time: one copy of the window, whose zero pages are found
with a comparison per page, and one record per run of zero or data pages.

**mapped-ram** (the ``file:`` transport, QEMU's ``mapped-ram`` capability):
the RAM of each block has a fixed place in the file, so no page records are
sent at all: pages are written with ``pwrite`` at their place (zero pages are
left as holes, so the file is sparse), pages the guest dirties again are
written again at the same place, and the device state follows the RAM area.
The destination does not read that RAM: it maps each block's range of the
file over the block's memory, privately (:meth:`RAMBlock.map_file`), so a page
is read only when the guest touches it.  The RAM area is not covered by the
stream's checksum (checking it would read it all).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pemu.migration.qemu_file import MigrationStreamError, QEMUFileReader, QEMUFileWriter

if TYPE_CHECKING:
    from pemu.system.memory import RAMBlock
    from pemu.system.vm import VirtualMachine

TARGET_PAGE_BITS = 12
TARGET_PAGE_SIZE = 1 << TARGET_PAGE_BITS
WINDOW_PAGES = 256  # pages looked at (and copied) at a time: 1 MiB, 32 bytes of bitmap
_WINDOW_BYTES = WINDOW_PAGES // 8
_WINDOW_FULL = (1 << WINDOW_PAGES) - 1
_ZERO_PAGE = bytes(TARGET_PAGE_SIZE)
_ZERO_WINDOW = bytes(WINDOW_PAGES * TARGET_PAGE_SIZE)
MAPPED_RAM_ALIGN = 1 << 20  # each block's area in a mapped-ram file starts on a MiB
MAX_BLOCKS = 4096


# The flags in the low bits of a page record's offset (QEMU's RAM_SAVE_FLAG_*);
# plain ints: they are or'ed once a run of pages.
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
_RECORD = struct.Struct(">QI")  # offset | flags, page count

_FLAG_MASK = TARGET_PAGE_SIZE - 1


class RAMLoadError(Exception):
    """The RAM part of a stream does not fit this VM (one line)."""


def block_pages(block: RAMBlock) -> int:
    return -(-block.size // TARGET_PAGE_SIZE)


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


# --- the dirty log (pemu.system.dirty_log, reached through one function) ---------------


class DirtyLog:
    """The three calls of :mod:`pemu.system.dirty_log` for one VM."""

    def __init__(self, vm: VirtualMachine) -> None:
        self.vm = vm

    def start(self) -> bool:
        from pemu.system.dirty_log import memory_global_dirty_log_start

        return memory_global_dirty_log_start(self.vm)

    def sync(self) -> dict[RAMBlock, bytearray]:
        from pemu.system.dirty_log import memory_global_dirty_log_sync

        return memory_global_dirty_log_sync(self.vm)

    def stop(self) -> None:
        from pemu.system.dirty_log import memory_global_dirty_log_stop

        memory_global_dirty_log_stop(self.vm)


# Tests replace this to give a VM without an accelerator a dirty log they drive.
dirty_log_for: Callable[[VirtualMachine], DirtyLog] = DirtyLog


def ram_mapped_from(vm: VirtualMachine, fd: int) -> bool:
    """Whether some RAM of ``vm`` is mapped from the file open as ``fd`` (it
    was restored from it with mapped-ram): that file must not be cut or
    rewritten while the VM lives (a page of it gone faults the VMM), so a
    new snapshot goes to a new file (a new inode: unlink or rename first)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return any(block.file_mapped == (st.st_dev, st.st_ino) for block in vm.memory.ram_blocks)


# --- saving ---------------------------------------------------------------------------


class MappedRamLayout:
    """Where each block's pages are in a mapped-ram file, and where the
    stream goes on after them."""

    def __init__(self, offsets: dict[str, int], tail_offset: int) -> None:
        self.offsets = offsets
        self.tail_offset = tail_offset


class RAMState:
    """One outgoing copy of a VM's RAM (QEMU's RAMState); see the module's description."""

    def __init__(self, vm: VirtualMachine, f: QEMUFileWriter, mapped_ram: bool = False) -> None:
        self.vm = vm
        self.f = f
        self.mapped_ram = mapped_ram
        self.blocks: list[RAMBlock] = list(vm.memory.ram_blocks)
        self.bitmaps: dict[RAMBlock, bytearray] = {}
        self.dirty_pages = 0
        self.live = False
        self.log: DirtyLog | None = None
        self.layout: MappedRamLayout | None = None
        self._fd = -1
        self._file_data: dict[RAMBlock, bytearray] = {}  # mapped-ram: pages that are not holes
        self._cursor = (0, 0)  # (block index, window index) where the next iteration starts
        self._last_block: RAMBlock | None = None  # for CONTINUE
        self.transferred = 0  # RAM bytes sent (page data and records; pwrite'n pages with mapped-ram)
        self.zero_pages = 0
        self.normal_pages = 0

    # setup ------------------------------------------------------------------------------

    def setup_payload_size(self) -> int:
        """The size of :meth:`save_setup`'s output (it is fixed by the block list)."""
        size = 8 + 4
        for block in self.blocks:
            size += 1 + len(block.idstr.encode()) + 8 + (8 if self.mapped_ram else 0)
        return size + (8 if self.mapped_ram else 0) + 8

    def plan_mapped_ram(self, start: int) -> MappedRamLayout:
        """Place each block from file offset ``start`` on."""
        offsets: dict[str, int] = {}
        pos = _align_up(start, MAPPED_RAM_ALIGN)
        for block in self.blocks:
            offsets[block.idstr] = pos
            pos = _align_up(pos + _align_up(block.size, TARGET_PAGE_SIZE), MAPPED_RAM_ALIGN)
        self.layout = MappedRamLayout(offsets, pos)
        return self.layout

    def save_setup(self) -> None:
        """The block list (and the mapped-ram layout), every page dirty, the dirty log on."""
        f = self.f
        if len(self.blocks) > MAX_BLOCKS:
            raise MigrationStreamError(f"too many RAM blocks to migrate ({len(self.blocks)})")
        f.put_be64(sum(_align_up(block.size, TARGET_PAGE_SIZE) for block in self.blocks) | RAM_SAVE_FLAG_MEM_SIZE)
        f.put_be32(len(self.blocks))
        for block in self.blocks:
            f.put_counted_string(block.idstr)
            f.put_be64(block.size)
            if self.layout is not None:
                f.put_be64(self.layout.offsets[block.idstr])
        if self.layout is not None:
            f.put_be64(self.layout.tail_offset)
        f.put_be64(RAM_SAVE_FLAG_EOS)
        for block in self.blocks:
            pages = block_pages(block)
            bitmap = bytearray(b"\xff" * (pages // 8))
            if pages % 8:
                bitmap.append((1 << (pages % 8)) - 1)
            self.bitmaps[block] = bitmap
            self._file_data[block] = bytearray(len(bitmap))
            self.dirty_pages += pages
        self.log = dirty_log_for(self.vm)
        self.live = self.log.start()

    def open_mapped_ram_file(self) -> None:
        """The sink's file: cut to the stream written so far, then sized to
        hold the RAM area as a hole (so a page not written reads as zeros)."""
        assert self.layout is not None
        self.f.flush()
        sink: Any = self.f.sink
        try:
            self._fd = sink.fileno()
            sink.flush()
            written = sink.tell()
        except (OSError, AttributeError, io.UnsupportedOperation) as e:
            raise MigrationStreamError(f"mapped-ram needs a regular file to write to: {e}") from None
        first_area = min(self.layout.offsets.values(), default=self.layout.tail_offset)
        assert written <= first_area, "the RAM setup is longer than planned"
        try:
            os.ftruncate(self._fd, written)
            os.ftruncate(self._fd, self.layout.tail_offset)
        except OSError as e:
            raise MigrationStreamError(f"mapped-ram needs a regular file to write to: {e.strerror or e}") from None

    def seek_to_tail(self) -> None:
        """Go on with the stream after the RAM area (mapped-ram)."""
        assert self.layout is not None
        self.f.flush()
        sink: Any = self.f.sink
        try:
            sink.seek(self.layout.tail_offset)
        except OSError as e:
            raise MigrationStreamError(f"failed to write the migration stream: {e.strerror or e}") from None

    # dirty pages -------------------------------------------------------------------------

    def sync_dirty_log(self) -> None:
        """Add the pages written since the last sync to the migration bitmap."""
        if not self.live or self.log is None:
            return
        for block, dirty in self.log.sync().items():
            bitmap = self.bitmaps.get(block)
            if bitmap is None:
                continue  # a block added after setup is not migrated (hotplug is refused meanwhile)
            valid = (1 << block_pages(block)) - 1
            merged = int.from_bytes(bitmap, "little") | (int.from_bytes(dirty, "little") & valid)
            before = int.from_bytes(bitmap, "little").bit_count()
            bitmap[:] = merged.to_bytes(len(bitmap), "little")
            self.dirty_pages += merged.bit_count() - before

    def pending_bytes(self) -> int:
        self.sync_dirty_log()
        return self.dirty_pages * TARGET_PAGE_SIZE

    def _dirty_windows(self) -> Iterator[tuple[RAMBlock, int, int]]:
        """(block, window, bits) of every window with dirty pages, from the
        cursor on and round once; the caller clears what it sends."""
        start_block, start_window = self._cursor
        count = len(self.blocks)
        for step in range(count + 1):
            index = (start_block + step) % count
            block = self.blocks[index]
            bitmap = self.bitmaps[block]
            windows = -(-len(bitmap) // _WINDOW_BYTES)
            first = start_window if step == 0 else 0
            last = windows if step < count else start_window
            window = first
            while window < last:
                pos = _next_nonzero(bitmap, window * _WINDOW_BYTES)
                if pos < 0:
                    break
                window = pos // _WINDOW_BYTES
                if window >= last:
                    break
                bits = int.from_bytes(bitmap[window * _WINDOW_BYTES:(window + 1) * _WINDOW_BYTES], "little")
                self._cursor = (index, window)
                yield block, window, bits
                window += 1

    def save_pages(self, max_bytes: int | None) -> int:
        """Send dirty pages until about ``max_bytes`` went (all of them for
        None); the bytes sent."""
        if not self.blocks:
            return 0
        sent = 0
        for block, window, bits in self._dirty_windows():
            sent += self._save_window(block, window, bits)
            bitmap = self.bitmaps[block]
            at = window * _WINDOW_BYTES
            bitmap[at:at + _WINDOW_BYTES] = bytes(len(bitmap[at:at + _WINDOW_BYTES]))
            self.dirty_pages -= bits.bit_count()
            if max_bytes is not None and sent >= max_bytes:
                break
        self.transferred += sent
        return sent

    def _save_window(self, block: RAMBlock, window: int, bits: int) -> int:
        base = window * WINDOW_PAGES
        end_page = min(base + WINDOW_PAGES, block_pages(block))
        start = base * TARGET_PAGE_SIZE
        data = bytes(block.view[start:min(end_page * TARGET_PAGE_SIZE, block.size)])
        sent = 0
        if bits == _WINDOW_FULL and data == _ZERO_WINDOW:
            return self._send_run(block, base, WINDOW_PAGES, True, data, 0)
        for first, count in _runs(bits):
            zero = data.startswith(_ZERO_PAGE, first * TARGET_PAGE_SIZE)
            run_start = first
            for page in range(first + 1, first + count):
                page_zero = data.startswith(_ZERO_PAGE, page * TARGET_PAGE_SIZE)
                if page_zero != zero:
                    sent += self._send_run(block, base + run_start, page - run_start, zero, data,
                                           run_start * TARGET_PAGE_SIZE)
                    run_start, zero = page, page_zero
            sent += self._send_run(block, base + run_start, first + count - run_start, zero, data,
                                   run_start * TARGET_PAGE_SIZE)
        return sent

    def _send_run(self, block: RAMBlock, page: int, count: int, zero: bool, data: bytes, at: int) -> int:
        offset = page * TARGET_PAGE_SIZE
        length = min(count * TARGET_PAGE_SIZE, block.size - offset)
        if self.layout is not None:
            return self._write_mapped(block, page, count, zero, memoryview(data)[at:at + length])
        if zero:
            self.zero_pages += count
        else:
            self.normal_pages += count
        f = self.f
        before = f.bytes_put
        flags = RAM_SAVE_FLAG_ZERO if zero else RAM_SAVE_FLAG_PAGE
        if block is self._last_block:
            f.put_buffer(_RECORD.pack(offset | flags | RAM_SAVE_FLAG_CONTINUE, count))
        else:
            f.put_be64(offset | flags)
            f.put_counted_string(block.idstr)
            f.put_be32(count)
            self._last_block = block
        if not zero:
            f.put_buffer(memoryview(data)[at:at + length])
        return f.bytes_put - before

    def _write_mapped(self, block: RAMBlock, page: int, count: int, zero: bool, data: memoryview) -> int:
        assert self.layout is not None
        where = self.layout.offsets[block.idstr] + page * TARGET_PAGE_SIZE
        # A run lies within one window: its bits of the file's map are in that window's bytes.
        written = self._file_data[block]
        at = page // WINDOW_PAGES * _WINDOW_BYTES
        window_bits = int.from_bytes(written[at:at + _WINDOW_BYTES], "little")
        mask = ((1 << count) - 1) << (page % WINDOW_PAGES)
        if zero:
            self.zero_pages += count
            if not window_bits & mask:
                return 0  # a hole already reads as zeros
            window_bits &= ~mask
        else:
            self.normal_pages += count
            window_bits |= mask
        done = 0
        while done < len(data):  # zeros too where the file had data
            try:
                taken = os.pwrite(self._fd, data[done:], where + done)
            except OSError as e:
                raise MigrationStreamError(f"failed to write the migration stream: {e.strerror or e}") from None
            if taken <= 0:
                raise MigrationStreamError("failed to write the migration stream: nothing was written")
            done += taken
        piece = written[at:at + _WINDOW_BYTES]
        written[at:at + len(piece)] = window_bits.to_bytes(len(piece), "little")
        return len(data)

    def end_part(self) -> None:
        self.f.put_be64(RAM_SAVE_FLAG_EOS)
        self._last_block = None

    def cleanup(self) -> None:
        if self.log is not None:
            self.log.stop()
            self.log = None


def _skip(f: QEMUFileReader, count: int) -> None:
    while count > 0:
        count -= len(f.get_buffer(min(count, 1 << 20)))


def _next_nonzero(data: bytearray, pos: int) -> int:
    """The index of the first nonzero byte of ``data`` from ``pos``, or -1."""
    length = len(data)
    while pos < length:
        chunk = data[pos:pos + 4096]
        stripped = len(chunk) - len(chunk.lstrip(b"\0"))
        if stripped < len(chunk):
            return pos + stripped
        pos += len(chunk)
    return -1


def _runs(bits: int) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of set bits, lowest first."""
    pos = 0
    while bits:
        low = (bits & -bits).bit_length() - 1
        bits >>= low
        pos += low
        ones = (~bits & (bits + 1)).bit_length() - 1  # the length of the run of ones at bit 0
        yield pos, ones
        bits >>= ones
        pos += ones


# --- loading --------------------------------------------------------------------------


class RAMLoadState:
    """The destination's side of the "ram" section."""

    def __init__(self, vm: VirtualMachine) -> None:
        self.blocks: dict[str, RAMBlock] = {block.idstr: block for block in vm.memory.ram_blocks}
        self.layout: MappedRamLayout | None = None
        self._last_block: RAMBlock | None = None
        self.setup_done = False

    def load_setup(self, f: QEMUFileReader, mapped_ram: bool, stream_start: int) -> None:
        """Check the block list against this VM's (and the mapped-ram layout)."""
        total = f.get_be64()
        if total & _FLAG_MASK != RAM_SAVE_FLAG_MEM_SIZE:
            raise RAMLoadError("the RAM setup is corrupt")
        count = f.get_be32()
        if count > MAX_BLOCKS:
            raise RAMLoadError(f"too many RAM blocks in the stream ({count})")
        seen: dict[str, int] = {}
        offsets: dict[str, int] = {}
        for _ in range(count):
            idstr = f.get_counted_string()
            size = f.get_be64()
            if mapped_ram:
                offsets[idstr] = f.get_be64()
            block = self.blocks.get(idstr)
            if block is None:
                raise RAMLoadError(f'Unknown ramblock "{idstr}", cannot accept migration')
            if idstr in seen:
                raise RAMLoadError(f'RAM block "{idstr}" appears twice in the stream')
            if size != block.size:
                raise RAMLoadError(f"Length mismatch: {idstr}: {size:#x} in != {block.size:#x}")
            seen[idstr] = size
        for idstr in self.blocks:
            if idstr not in seen:
                raise RAMLoadError(f'RAM block "{idstr}" is missing from the stream')
        if total & ~_FLAG_MASK != sum(_align_up(size, TARGET_PAGE_SIZE) for size in seen.values()):
            raise RAMLoadError("the RAM setup's total size does not match its blocks")
        if mapped_ram:
            tail = f.get_be64()
            self.layout = self._check_layout(offsets, tail, stream_start)
        if f.get_be64() != RAM_SAVE_FLAG_EOS:
            raise RAMLoadError("the RAM setup is corrupt (no end marker)")
        self.setup_done = True

    def _check_layout(self, offsets: dict[str, int], tail: int, stream_start: int) -> MappedRamLayout:
        """Every block's area page-aligned, after the header, inside the RAM
        area and apart from the others."""
        areas = sorted((offset, _align_up(self.blocks[idstr].size, TARGET_PAGE_SIZE), idstr)
                       for idstr, offset in offsets.items())
        pos = stream_start
        for offset, size, idstr in areas:
            if offset % TARGET_PAGE_SIZE or offset < pos or offset + size > tail:
                raise RAMLoadError(f"mapped-ram: RAM block \"{idstr}\" has a bad place in the file "
                                   f"({offset:#x})")
            pos = offset + size
        if tail % TARGET_PAGE_SIZE:
            raise RAMLoadError(f"mapped-ram: the device state has a bad place in the file ({tail:#x})")
        return MappedRamLayout(offsets, tail)

    def map_file(self, fd: int) -> None:
        """Map each block's area of the file over its memory (mapped-ram):
        nothing of the RAM is read now."""
        assert self.layout is not None
        size = os.fstat(fd).st_size
        if size < self.layout.tail_offset:
            raise RAMLoadError(f"mapped-ram: the file ends at {size:#x}, before its RAM area "
                               f"({self.layout.tail_offset:#x})")
        for idstr, offset in self.layout.offsets.items():
            try:
                self.blocks[idstr].map_file(fd, offset)
            except OSError as e:
                raise RAMLoadError(f"mapped-ram: cannot map RAM block \"{idstr}\": {e.strerror or e}") from None

    def read_areas(self, f: QEMUFileReader) -> None:
        """mapped-ram from a source that cannot seek or map (a pipe, ``exec:cat
        FILE``): read the RAM area in order into the blocks, up to the rest of
        the stream.  The stream's position is what ``f`` has read (the stream
        starts the source); the RAM area stays out of the checksum."""
        assert self.layout is not None
        crc = f.crc
        position = f.bytes_read
        for offset, idstr in sorted((offset, idstr) for idstr, offset in self.layout.offsets.items()):
            _skip(f, offset - position)
            block = self.blocks[idstr]
            chunk = len(_ZERO_WINDOW)
            for at in range(0, block.size, chunk):
                length = min(chunk, block.size - at)
                data = f.get_buffer(length)
                if data == (_ZERO_WINDOW if length == chunk else bytes(length)):
                    block.fill(at, 0, length)
                else:
                    block.view[at:at + length] = data
            position = offset + block.size
        _skip(f, self.layout.tail_offset - position)
        f.crc = crc

    def load_pages(self, f: QEMUFileReader) -> None:
        """Page records until EOS."""
        while True:
            header = f.get_be64()
            flags = header & _FLAG_MASK
            offset = header & ~_FLAG_MASK
            if flags == RAM_SAVE_FLAG_EOS and offset == 0:
                self._last_block = None
                return
            kind = flags & ~RAM_SAVE_FLAG_CONTINUE
            if kind not in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
                raise RAMLoadError(f"Unknown RAM record flags {flags:#x}")
            if flags & RAM_SAVE_FLAG_CONTINUE:
                block = self._last_block
                if block is None:
                    raise RAMLoadError("a RAM record continues a block that was never named")
            else:
                idstr = f.get_counted_string()
                found = self.blocks.get(idstr)
                if found is None:
                    raise RAMLoadError(f'Unknown ramblock "{idstr}", cannot accept migration')
                block = self._last_block = found
            count = f.get_be32()
            if count == 0 or count > WINDOW_PAGES or offset >= block.size or \
                    offset + (count - 1) * TARGET_PAGE_SIZE >= block.size:
                raise RAMLoadError(f"RAM record out of range: {block.idstr} {offset:#x} + {count} pages")
            length = min(count * TARGET_PAGE_SIZE, block.size - offset)
            if kind == RAM_SAVE_FLAG_PAGE:
                block.view[offset:offset + length] = f.get_buffer(length)
            else:
                block.fill(offset, 0, length)
