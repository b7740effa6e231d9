"""The BIOS e820 memory map (QEMU's hw/i386/e820_memory_layout.c).

The board describes guest-physical memory once in an :class:`E820Table`;
direct Linux boot copies it into boot_params, firmware boot reads it from
the fw_cfg file ``etc/e820``.  Both use the same packed 20-byte entry
``{u64 addr; u64 size; u32 type}``.

:meth:`E820Table.add` gives the later range priority: adding a RESERVED
range inside RAM carves it out of the RAM entry, so a board can add "all
RAM" first and its holes after.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from pemu.util.error import UserError

E820_ENTRY = struct.Struct("<QQI")
assert E820_ENTRY.size == 20

E820_MAX_ENTRIES_ZEROPAGE = 128
"""boot_params.e820_table has room for 128 entries."""

_U64_LIMIT = 1 << 64


class E820Type(IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5


E820_RAM = E820Type.RAM
E820_RESERVED = E820Type.RESERVED
E820_ACPI = E820Type.ACPI
E820_NVS = E820Type.NVS
E820_UNUSABLE = E820Type.UNUSABLE


@dataclass(frozen=True)
class E820Entry:
    """One range of the BIOS memory map (e820): address, length, type."""

    addr: int
    length: int
    type: E820Type

    @property
    def end(self) -> int:
        """First address after the range."""
        return self.addr + self.length

    def pack(self) -> bytes:
        return E820_ENTRY.pack(self.addr, self.length, int(self.type))


class E820Table:
    """A sorted, non-overlapping e820 map; equal adjacent ranges are merged."""

    def __init__(self) -> None:
        self._entries: list[E820Entry] = []

    def add(self, addr: int, length: int, type: E820Type | int) -> None:
        """Add a range; it replaces whatever earlier ranges it overlaps."""
        kind = E820Type(type)
        if length <= 0:
            raise ValueError(f"e820 range at {addr:#x} has no length ({length})")
        if addr < 0 or addr + length > _U64_LIMIT:
            raise ValueError(f"e820 range {addr:#x}+{length:#x} is outside the 64-bit space")
        end = addr + length
        kept: list[E820Entry] = []
        for e in self._entries:
            if e.end <= addr or e.addr >= end:
                kept.append(e)
                continue
            if e.addr < addr:
                kept.append(E820Entry(e.addr, addr - e.addr, e.type))
            if e.end > end:
                kept.append(E820Entry(end, e.end - end, e.type))
        kept.append(E820Entry(addr, length, kind))
        kept.sort(key=lambda e: e.addr)
        merged: list[E820Entry] = []
        for e in kept:
            if merged and merged[-1].end == e.addr and merged[-1].type == e.type:
                last = merged.pop()
                e = E820Entry(last.addr, last.length + e.length, e.type)
            merged.append(e)
        self._entries = merged

    @property
    def entries(self) -> tuple[E820Entry, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[E820Entry]:
        return iter(self._entries)

    def find(self, addr: int) -> E820Entry | None:
        """The entry containing ``addr``, if any."""
        for e in self._entries:
            if e.addr <= addr < e.end:
                return e
        return None

    def contains(self, addr: int, length: int, type: E820Type = E820Type.RAM) -> bool:
        """True when [addr, addr+length) lies inside one entry of ``type``."""
        e = self.find(addr)
        return e is not None and e.type == type and addr + length <= e.end

    def to_boot_params_bytes(self) -> bytes:
        """The entries for boot_params.e820_table (at most 128)."""
        if len(self._entries) > E820_MAX_ENTRIES_ZEROPAGE:
            raise UserError(
                f"the memory map has {len(self._entries)} e820 entries, "
                f"Linux's boot_params holds at most {E820_MAX_ENTRIES_ZEROPAGE}")
        return self.to_fw_cfg_bytes()

    def to_fw_cfg_bytes(self) -> bytes:
        """The contents of the fw_cfg file ``etc/e820``."""
        return b"".join(e.pack() for e in self._entries)

    def __repr__(self) -> str:
        rows = ", ".join(f"[{e.addr:#x}-{e.end - 1:#x} {e.type.name}]" for e in self._entries)
        return f"E820Table({rows})"
