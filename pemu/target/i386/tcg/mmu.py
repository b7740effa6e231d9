"""Linear → physical translation for the accesses the host makes for the guest.

Unicorn walks the page tables itself for the instructions it runs; the host
needs its own walk for what it does on the guest's behalf (pushing an
interrupt frame, reading the IDT/GDT/TSS, fetching the byte before RIP).
Supervisor-mode implicit accesses only: the U/S bit is checked when ``user``.
"""

from __future__ import annotations

import struct
from typing import Protocol

from pemu.target.i386.cpu_state import CR0_PG_MASK, CR0_WP_MASK, CR4_PAE_MASK, CR4_PSE_MASK

PG_PRESENT = 1 << 0
PG_RW = 1 << 1
PG_USER = 1 << 2
PG_PSE = 1 << 7
PG_ADDR_MASK = 0x000FFFFFFFFFF000

PF_ERROR_P = 1 << 0
PF_ERROR_W = 1 << 1
PF_ERROR_U = 1 << 2

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class PhysMemory(Protocol):
    """Guest-physical RAM as the host sees it."""

    def read(self, paddr: int, size: int) -> bytes | None: ...

    def write(self, paddr: int, data: bytes) -> bool: ...


class PageFault(Exception):
    def __init__(self, laddr: int, error_code: int) -> None:
        super().__init__(f"#PF at {laddr:#x} ({error_code:#x})")
        self.laddr = laddr
        self.error_code = error_code


class PhysAccessError(Exception):
    """A page-table or target address that is not RAM."""


def _entry(mem: PhysMemory, paddr: int, wide: bool) -> int:
    data = mem.read(paddr, 8 if wide else 4)
    if data is None:
        raise PhysAccessError(f"page table entry at {paddr:#x} is not in RAM")
    return (_U64 if wide else _U32).unpack(data)[0]


def translate(mem: PhysMemory, laddr: int, *, cr0: int, cr3: int, cr4: int, long_mode: bool,
              write: bool = False, user: bool = False) -> int:
    """The physical address of ``laddr``; raises :class:`PageFault`."""
    if not cr0 & CR0_PG_MASK:
        return laddr & 0xFFFFFFFF if not long_mode else laddr
    err = (PF_ERROR_W if write else 0) | (PF_ERROR_U if user else 0)
    rw = us = True
    if cr4 & CR4_PAE_MASK:
        if long_mode:
            top = laddr >> 47
            if top not in (0, 0x1FFFF):
                # Non-canonical: the caller treats it as #GP; report as a fault here.
                raise PageFault(laddr, err)
            table = cr3 & PG_ADDR_MASK
            levels: tuple[int, ...] = (39, 30, 21, 12)
        else:
            laddr &= 0xFFFFFFFF
            pdpte = _entry(mem, (cr3 & 0xFFFFFFE0) + ((laddr >> 30) & 3) * 8, True)
            if not pdpte & PG_PRESENT:
                raise PageFault(laddr, err)
            table = pdpte & PG_ADDR_MASK
            levels = (21, 12)
        for shift in levels:
            entry = _entry(mem, table + ((laddr >> shift) & 0x1FF) * 8, True)
            if not entry & PG_PRESENT:
                raise PageFault(laddr, err)
            rw &= bool(entry & PG_RW)
            us &= bool(entry & PG_USER)
            if shift in (30, 21) and entry & PG_PSE:
                page_mask = (1 << shift) - 1
                phys = (entry & PG_ADDR_MASK & ~page_mask) | (laddr & page_mask)
                break
            table = entry & PG_ADDR_MASK
        else:
            phys = table | (laddr & 0xFFF)
    else:
        laddr &= 0xFFFFFFFF
        pde = _entry(mem, (cr3 & 0xFFFFF000) + (laddr >> 22) * 4, False)
        if not pde & PG_PRESENT:
            raise PageFault(laddr, err)
        rw = bool(pde & PG_RW)
        us = bool(pde & PG_USER)
        if pde & PG_PSE and cr4 & CR4_PSE_MASK:
            phys = (pde & 0xFFC00000) | (((pde >> 13) & 0xFF) << 32) | (laddr & 0x3FFFFF)
        else:
            pte = _entry(mem, (pde & 0xFFFFF000) + ((laddr >> 12) & 0x3FF) * 4, False)
            if not pte & PG_PRESENT:
                raise PageFault(laddr, err)
            rw &= bool(pte & PG_RW)
            us &= bool(pte & PG_USER)
            phys = (pte & 0xFFFFF000) | (laddr & 0xFFF)
    if user and not us:
        raise PageFault(laddr, err | PF_ERROR_P)
    if write and not rw and (user or cr0 & CR0_WP_MASK):
        raise PageFault(laddr, err | PF_ERROR_P)
    return phys
