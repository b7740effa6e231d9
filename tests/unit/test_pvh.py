"""PVH loader: the entry note, hvm_start_info, memory map, command line and initrd module."""

from __future__ import annotations

import struct

import pytest

from pemu.hw.i386.e820 import E820Table, E820Type
from pemu.hw.i386.pvh import (
    HVM_START_MAGIC,
    PVH_CMDLINE_ADDR,
    PVH_START_INFO_ADDR,
    ElfError,
    PVHError,
    has_pvh_note,
    plan_pvh_boot,
)


def e820_64m() -> E820Table:
    t = E820Table()
    t.add(0, 0x9FC00, E820Type.RAM)
    t.add(0x100000, 0x3F00000, E820Type.RAM)
    t.add(0xFFFF0000, 0x10000, E820Type.RESERVED)
    return t


def elf64(entry_note: bytes | None, paddr: int = 0x1000000, memsz: int = 0x2000) -> bytes:
    """An ELF64 with one PT_LOAD and a PT_NOTE holding the Xen PHYS32_ENTRY note."""
    note = b""
    if entry_note is not None:
        note = struct.pack("<III", 4, len(entry_note), 18) + b"Xen\0" + entry_note
    code = b"\xf4" * 16
    ehdr_size, phdr_size = 64, 56
    note_off = ehdr_size + 2 * phdr_size
    code_off = note_off + len(note)
    ehdr = (b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
            + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0xFFFFFFFF81000000, ehdr_size, 0, 0, ehdr_size, phdr_size,
                          2, 64, 0, 0))
    load = struct.pack("<IIQQQQQQ", 1, 7, code_off, 0xFFFFFFFF81000000, paddr, len(code), memsz, 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return ehdr + load + pnote + note + code


def test_start_info_describes_cmdline_initrd_memmap_and_rsdp() -> None:
    kernel = elf64(struct.pack("<I", 0x1000010))
    assert has_pvh_note(kernel)
    plan = plan_pvh_boot(kernel, b"I" * 5000, "console=ttyS0", e820_64m(), rsdp_addr=0x3FE0000)
    mem = {b.addr: b.data for b in plan.blobs}
    assert plan.entry.eip == 0x1000010 and plan.entry.ebx == PVH_START_INFO_ADDR
    assert plan.entry.cs.selector == 0x10 and plan.entry.cr0 & 1
    info = mem[PVH_START_INFO_ADDR]
    magic, version, _, nr_modules, modlist, cmdline, rsdp, memmap, entries, _ = struct.unpack_from(
        "<IIIIQQQQII", info)
    assert (magic, version, nr_modules, rsdp, entries) == (HVM_START_MAGIC, 1, 1, 0x3FE0000, 3)
    assert cmdline == PVH_CMDLINE_ADDR and mem[PVH_CMDLINE_ADDR] == b"console=ttyS0\0"
    paddr, size, _, _ = struct.unpack_from("<QQQQ", info, modlist - PVH_START_INFO_ADDR)
    assert size == 5000 and paddr % 0x1000 == 0 and paddr + size <= 0x4000000 and mem[paddr] == b"I" * 5000
    assert paddr >= 0x1002000  # above the kernel image
    assert struct.unpack_from("<QQII", info, memmap - PVH_START_INFO_ADDR) == (0, 0x9FC00, 1, 0)
    kernel_blob = mem[0x1000000]
    assert kernel_blob[:16] == b"\xf4" * 16 and len(kernel_blob) == 0x2000


def test_eight_byte_entry_note_is_accepted() -> None:
    plan = plan_pvh_boot(elf64(struct.pack("<Q", 0x1000000)), None, "", e820_64m())
    assert plan.entry.eip == 0x1000000 and plan.initrd_size == 0


@pytest.mark.parametrize("kernel, error, message", [
    (elf64(None), PVHError, "no PVH entry note"),
    (elf64(b"\x01\x02"), PVHError, "2-byte descriptor"),
    (elf64(struct.pack("<Q", 1 << 33)), PVHError, "above 4 GiB"),
    (elf64(struct.pack("<I", 0x1000000), paddr=0x8000000), PVHError, "not in guest RAM"),
    (b"\x7fELF" + bytes([3]) + bytes(60), ElfError, "invalid ELF class"),
])
def test_bad_kernels_give_one_clear_error(kernel: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        plan_pvh_boot(kernel, None, "", e820_64m())


def test_initrd_too_big_for_ram() -> None:
    with pytest.raises(PVHError, match="does not fit"):
        plan_pvh_boot(elf64(struct.pack("<I", 0x1000000)), bytes(0x4000000), "", e820_64m())
