"""Guest-physical memory for the Unicorn engine, kept in sync with a FlatView.

RAM is mapped zero-copy (``mem_map_ptr`` on the RAMBlock's host memory); ROM
is mapped read/execute only.  Everything else the CPU can reach below 4 GiB,
and every non-RAM range above it, is mapped as MMIO whose callbacks dispatch
through the AddressSpace (devices, sub-page pieces of RAM, unassigned space).
Unicorn maps whole 4 KiB pages, so a page only partly covered by RAM is MMIO.

On each topology change only the pieces that differ are unmapped and mapped.
The map starts following its AddressSpace at the vCPU's first run, so the
engine's first mappings are the machine's real ones: Unicorn unmaps page by
page, and replacing a 4 GiB placeholder mapping would cost a million TLB
flushes.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from unicorn import UC_PROT_ALL, UC_PROT_EXEC, UC_PROT_READ, Uc, UcError

from pemu.util.log import guest_error
from pemu.util.main_loop import bql

PAGE_SIZE = 0x1000
PAGE_MASK = ~(PAGE_SIZE - 1)
LOW_MMIO_END = 1 << 32
PHYS_ADDR_END = 1 << 40
# RAM and ROM mappings are cut here: the chipset remaps pieces below 1 MiB
# (PAM, SMRAM) while the guest runs, and a mapping that also held the RAM
# above would be unmapped and mapped again whole, page by page.
LEGACY_END = 1 << 20


class MapKind(Enum):
    RAM = "ram"
    ROM = "rom"
    MMIO = "mmio"


@dataclass(frozen=True, order=True)
class Mapping:
    start: int
    size: int
    kind: MapKind
    host_addr: int = 0

    @property
    def end(self) -> int:
        return self.start + self.size


def plan_mappings(ranges: Any) -> list[Mapping]:
    """The page-granular mappings that show ``ranges`` (FlatRanges) to the engine."""
    ram: list[Mapping] = []
    mmio_wanted: list[tuple[int, int]] = [(0, LOW_MMIO_END)]
    for fr in ranges:
        start, end = fr.start, min(fr.start + fr.size, PHYS_ADDR_END)
        if start >= end:
            continue
        block = fr.mr.ram_block
        if block is not None:
            a = (start + PAGE_SIZE - 1) & PAGE_MASK
            b = end & PAGE_MASK
            kind = MapKind.ROM if fr.readonly else MapKind.RAM
            host = block.host_addr + fr.offset_in_region - start
            for lo, hi in ((a, min(b, LEGACY_END)), (max(a, LEGACY_END), b)):
                if lo < hi:
                    ram.append(Mapping(lo, hi - lo, kind, host + lo))
        mmio_wanted.append((start & PAGE_MASK, (end + PAGE_SIZE - 1) & PAGE_MASK))
    ram.sort()
    # Merge the wanted MMIO space, then cut out the RAM runs.
    mmio_wanted.sort()
    merged: list[list[int]] = []
    for s, e in mmio_wanted:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out = list(ram)
    for s, e in merged:
        cursor = s
        for m in ram:
            if m.end <= cursor or m.start >= e:
                continue
            if m.start > cursor:
                out.append(Mapping(cursor, m.start - cursor, MapKind.MMIO))
            cursor = max(cursor, m.end)
        if cursor < e:
            out.append(Mapping(cursor, e - cursor, MapKind.MMIO))
    out.sort()
    return out


class UnicornMemoryMap:
    """A MemoryListener that mirrors one AddressSpace into one Unicorn instance.

    ``flatview_changed`` may run on any thread (under the big lock); the
    engine is touched only from the vCPU thread, so the newest view is kept
    and turned into mappings by :meth:`apply_pending` before the next
    ``emu_start``.  ``on_pending`` asks the vCPU to come out of the guest.
    The first :meth:`apply_pending` starts listening.
    """

    def __init__(self, uc: Uc, space: Any, on_pending: Callable[[], None]) -> None:
        self.uc = uc
        self.space = space
        self.on_pending = on_pending
        self.current: set[Mapping] = set()
        self.listening = False
        self._lock = threading.Lock()
        self._pending: Any = None  # the newest FlatView not applied yet

    def flatview_changed(self, old: Any, new: Any) -> None:
        with self._lock:
            self._pending = new
        if old is not None:  # not the first view, which the vCPU thread asked for itself
            self.on_pending()

    def apply_pending(self) -> bool:
        """Apply the latest topology; True if anything changed."""
        if not self.listening:
            with bql:
                self.space.add_listener(self)
            self.listening = True
        with self._lock:
            view, self._pending = self._pending, None
        if view is None:
            return False
        wanted = set(plan_mappings(view.ranges))
        removed = self.current - wanted
        added = sorted(wanted - self.current)
        for m in sorted(removed):
            try:
                self.uc.mem_unmap(m.start, m.size)
            except UcError as e:
                guest_error(f"tcg: unmap {m.start:#x}+{m.size:#x}: {e}")
        for m in added:
            self._map(m)
        self.current = wanted
        return bool(removed or added)

    def run_dropping_rom_writes(self, run: Callable[[], None]) -> None:
        """Call ``run`` (one guest instruction) with the ROM mappings writable,
        then put their bytes back and protect them again: the guest's writes
        to ROM are dropped, as hardware and QEMU drop them, while the rest of
        the instruction takes effect.  (The engine maps ROM read/execute only,
        so that code runs from it at full speed; a write ends ``emu_start``
        with a write-protection error and the vCPU comes here.)"""
        roms = sorted(m for m in self.current if m.kind is MapKind.ROM)
        saved: dict[tuple[int, int], bytes] = {}
        for m in roms:
            if (m.host_addr, m.size) not in saved:  # an alias shares its host memory
                saved[(m.host_addr, m.size)] = ctypes.string_at(m.host_addr, m.size)
            self.uc.mem_protect(m.start, m.size, UC_PROT_ALL)
        try:
            run()
        finally:
            for (host_addr, size), data in saved.items():
                ctypes.memmove(host_addr, data, size)
            for m in roms:
                self.uc.mem_protect(m.start, m.size, UC_PROT_READ | UC_PROT_EXEC)

    def _map(self, m: Mapping) -> None:
        if m.kind is MapKind.RAM:
            self.uc.mem_map_ptr(m.start, m.size, UC_PROT_ALL, m.host_addr)
        elif m.kind is MapKind.ROM:
            self.uc.mem_map_ptr(m.start, m.size, UC_PROT_READ | UC_PROT_EXEC, m.host_addr)
        else:
            base = m.start
            space = self.space

            def read(uc: Uc, offset: int, size: int, _: object) -> int:
                try:
                    with bql:
                        return space.dispatch_read(base + offset, size)
                except Exception as e:  # a device bug must not kill the vCPU
                    guest_error(f"tcg: MMIO read {base + offset:#x}/{size}: {e!r}")
                    return (1 << (8 * size)) - 1

            def write(uc: Uc, offset: int, size: int, value: int, _: object) -> None:
                try:
                    with bql:
                        space.dispatch_write(base + offset, value, size)
                except Exception as e:
                    guest_error(f"tcg: MMIO write {base + offset:#x}/{size}={value:#x}: {e!r}")

            self.uc.mmio_map(m.start, m.size, read, None, write, None)
