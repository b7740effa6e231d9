"""Multiboot v1 loader: header search, ELF and a.out-kludge loading, the
information structure, modules, and one clear error per bad header."""

from __future__ import annotations

import struct

import pytest

from pemu.hw.i386.e820 import E820Table, E820Type
from pemu.hw.i386.multiboot import (
    MBI_ADDR,
    MULTIBOOT_BOOTLOADER_MAGIC,
    MULTIBOOT_HEADER_MAGIC,
    MultibootError,
    MultibootModule,
    find_multiboot_header,
    parse_module_list,
    plan_multiboot,
)
from pemu.hw.i386.pvh import ElfError


def e820_64m() -> E820Table:
    t = E820Table()
    t.add(0, 0x9FC00, E820Type.RAM)
    t.add(0x9FC00, 0x400, E820Type.RESERVED)
    t.add(0x100000, 0x3F00000, E820Type.RAM)
    return t


def header(flags: int, *aout: int, checksum: int | None = None) -> bytes:
    csum = (-(MULTIBOOT_HEADER_MAGIC + flags)) & 0xFFFFFFFF if checksum is None else checksum
    return struct.pack("<III", MULTIBOOT_HEADER_MAGIC, flags, csum) + struct.pack(f"<{len(aout)}I", *aout)


def aout_kernel(code: bytes = b"\xf4" * 16, bss: int = 0x100) -> bytes:
    # header at file offset 0x10, image loaded at 1 MiB from file offset 0.
    load = 0x100000
    end = load + 0x40 + len(code)
    hdr = header(1 << 16, load + 0x10, load, end, end + bss, load + 0x40)
    image = bytes(0x10) + hdr
    return image + bytes(0x40 - len(image)) + code


def elf32_kernel(paddr: int = 0x100000, entry: int = 0x100000, payload: bytes = b"\x90" * 32,
                 memsz: int | None = None) -> bytes:
    ehdr_size, phdr_size = 52, 32
    data_off = ehdr_size + phdr_size
    body = header(0) + payload
    ehdr = (b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
            + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 40, 0, 0))
    phdr = struct.pack("<IIIIIIII", 1, data_off, paddr, paddr, len(body), memsz or len(body) + 0x20, 5, 0x1000)
    return ehdr + phdr + body


def test_header_needs_magic_checksum_and_alignment() -> None:
    assert find_multiboot_header(bytes(4) + header(0)).offset == 4
    assert find_multiboot_header(bytes(2) + header(0)) is None  # not 4-byte aligned
    assert find_multiboot_header(header(0, checksum=1)) is None
    assert find_multiboot_header(bytes(8192) + header(0)) is None  # beyond the first 8 KiB


def test_aout_kludge_loads_at_load_addr_with_bss() -> None:
    plan = plan_multiboot(aout_kernel(), "k", "", [], e820_64m())
    kernel = next(b for b in plan.blobs if b.name == "kernel")
    assert kernel.addr == 0x100000 and len(kernel.data) == 0x50 + 0x100
    assert kernel.data[0x40:0x50] == b"\xf4" * 16 and kernel.data[0x50:] == bytes(0x100)
    assert plan.entry.eip == 0x100040
    assert plan.entry.eax == MULTIBOOT_BOOTLOADER_MAGIC and plan.entry.ebx == MBI_ADDR


def test_info_structure_has_memory_cmdline_map_and_modules() -> None:
    mods = [MultibootModule("a.bin", "a.bin x=1", b"A" * 10), MultibootModule("b", "b", b"B" * 0x1001)]
    plan = plan_multiboot(elf32_kernel(), "/boot/k", "console=1", mods, e820_64m())
    mem = {b.addr: b.data for b in plan.blobs}
    info = mem[MBI_ADDR]
    flags, lower, upper, _, cmdline, count, mods_addr = struct.unpack_from("<7I", info)
    assert flags & 0x24F == 0x24F
    assert (lower, upper) == (639, 0x3F00000 >> 10)

    def cstr(addr: int) -> bytes:
        off = addr - MBI_ADDR
        return info[off:info.index(b"\0", off)]

    assert cstr(cmdline) == b"/boot/k console=1"
    assert count == 2
    (s0, e0, str0, _), (s1, e1, _, _) = (struct.unpack_from("<4I", info, mods_addr - MBI_ADDR + 16 * i)
                                         for i in range(2))
    assert s0 % 0x1000 == 0 and e0 == s0 + 10 and s1 == s0 + 0x1000 and e1 == s1 + 0x1001
    assert cstr(str0) == b"a.bin x=1" and mem[s0] == b"A" * 10
    mmap_len, mmap_addr = struct.unpack_from("<II", info, 44)
    assert mmap_len == 3 * 24
    assert struct.unpack_from("<IQQI", info, mmap_addr - MBI_ADDR) == (20, 0, 0x9FC00, 1)


def test_module_list_parsing() -> None:
    assert parse_module_list("mod1 arg,mod2") == [("mod1", "mod1 arg"), ("mod2", "mod2")]
    assert parse_module_list("m a,,b") == [("m", "m a,b")]
    with pytest.raises(MultibootError):
        parse_module_list("a,,,")


@pytest.mark.parametrize("image, message", [
    (header(1 << 3), "unsupported required header flags 0x8"),
    (header(0) + b"no elf", "not ELF and its header has no address fields"),
    (header(1 << 16, 0x100000, 0x200000, 0, 0, 0x100000), "load_addr is above header_addr"),
    (header(1 << 16, 0x100000, 0x100000, 0x100400, 0, 0x100000), "runs past the end"),
    (header(1 << 16, 0x100000, 0x100000, 0x100010, 0x100008, 0x100000), "bss_end_addr is below"),
    (header(1 << 16, 0x100000, 0x100000, 0, 0, 0x900000), "entry_addr 0x900000 is outside"),
    (header(1 << 16, 0x100000, 0x100000, 0, 0x80000000, 0x100000), "is not in guest memory"),
    (b"\x00" * 16, "no valid header"),
])
def test_bad_headers_give_one_clear_error(image: bytes, message: str) -> None:
    with pytest.raises(MultibootError, match=message):
        plan_multiboot(image, "k", "", [], e820_64m())


def test_bad_elf_is_reported() -> None:
    image = bytearray(elf32_kernel())
    struct.pack_into("<I", image, 52 + 4, 0x10000)  # p_offset past the end
    with pytest.raises(ElfError, match="outside the file"):
        plan_multiboot(bytes(image), "k", "", [], e820_64m())
    with pytest.raises(ElfError, match="bad size"):
        plan_multiboot(elf32_kernel(memsz=1), "k", "", [], e820_64m())


def elf32_two_segments(low_paddr: int) -> bytes:
    """As `ld -Ttext=0x100000` links: a first LOAD segment holding only the
    ELF headers at ``low_paddr``, then the code with the header at 1 MiB."""
    ehdr_size, phdr_size = 52, 32
    headers_size = ehdr_size + 2 * phdr_size
    code = header(0) + b"\xf4" * 16
    ehdr = (b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
            + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x10000C, ehdr_size, 0, 0, ehdr_size, phdr_size, 2, 40, 0, 0))
    phdrs = (struct.pack("<IIIIIIII", 1, 0, low_paddr, low_paddr, headers_size, headers_size, 4, 0x1000)
             + struct.pack("<IIIIIIII", 1, 0x1000, 0x100000, 0x100000, len(code), len(code), 5, 0x1000))
    image = ehdr + phdrs
    return image + bytes(0x1000 - len(image)) + code


def q35_memory(addr: int, length: int) -> bool:
    """Where a 64 MiB q35 machine has RAM or ROM: low RAM, the BIOS area
    from 0xc0000, RAM from 1 MiB on (the VGA window 0xa0000-0xbffff is not)."""
    spans = [(0, 0xA0000), (0xC0000, 0x4000000)]
    return any(start <= addr and addr + length <= end for start, end in spans)


def test_elf_headers_segment_in_the_bios_area_is_loaded() -> None:
    plan = plan_multiboot(elf32_two_segments(0xFF000), "k", "", [], e820_64m(), q35_memory)
    headers = next(b for b in plan.blobs if b.name == "kernel segment 0")
    assert headers.addr == 0xFF000 and headers.data[:4] == b"\x7fELF"
    assert plan.entry.eip == 0x10000C


def test_elf_segment_outside_guest_memory_is_refused() -> None:
    with pytest.raises(MultibootError, match="kernel segment at 0xa0000-0xa0073 is not in guest memory"):
        plan_multiboot(elf32_two_segments(0xA0000), "k", "", [], e820_64m(), q35_memory)
    with pytest.raises(MultibootError, match="kernel segment at 0x8000000-0x8000073 is not in guest memory"):
        plan_multiboot(elf32_two_segments(0x8000000), "k", "", [], e820_64m(), q35_memory)


def test_kernel_overlapping_the_info_area_is_refused() -> None:
    with pytest.raises(UserError_, match="overlap"):
        plan_multiboot(elf32_kernel(paddr=0x9000, entry=0x9000), "k", "", [], e820_64m())


from pemu.util.error import UserError as UserError_  # noqa: E402
