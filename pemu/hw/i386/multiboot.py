"""Multiboot (version 1) kernels for -kernel (QEMU's hw/i386/multiboot.c).

A multiboot kernel carries, in its first 8 KiB and 4-byte aligned, the
header ``{magic 0x1BADB002, flags, checksum}``.  It is loaded either as an
ELF file (by physical address) or, when flag 16 is set, through the header's
own load addresses (the "a.out kludge").  pemu then writes the multiboot
information structure: memory sizes, the command line ("<kernel file>
<-append>"), the modules of ``-initrd "mod1 arg,mod2"`` (a comma inside a
module's text is written ",,") and the e820 memory map; the boot CPU starts
at the entry in 32-bit protected mode with EAX=0x2BADB002, EBX=&info.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntFlag

from pemu.hw.i386.e820 import E820Table, E820Type
from pemu.hw.i386.linux_boot import BOOT_GDT, BOOT_GDT_ADDR, EntryState, LoadBlob
from pemu.hw.i386.pvh import check_no_overlap, elf_load_blobs, is_elf, parse_elf
from pemu.util.error import UserError

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MULTIBOOT_SEARCH = 8192
MULTIBOOT_HEADER = struct.Struct("<III")
MULTIBOOT_AOUT_FIELDS = struct.Struct("<IIIII")  # header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr

# Where the information structure and what it points to go: free low RAM
# above the boot GDT and below the EBDA.
MBI_ADDR = 0x9000
MBI_AREA_END = 0x9F000
MBI_SIZE = 88
MODULE_ALIGN = 0x1000
BOOT_LOADER_NAME = b"pemu\0"


class MultibootHeaderFlags(IntFlag):
    PAGE_ALIGN = 1 << 0
    MEMORY_INFO = 1 << 1
    VIDEO_MODE = 1 << 2
    AOUT_KLUDGE = 1 << 16


# Bits 0-15 are requirements: the loader must refuse what it does not know.
SUPPORTED_REQUIRED = (MultibootHeaderFlags.PAGE_ALIGN | MultibootHeaderFlags.MEMORY_INFO
                      | MultibootHeaderFlags.VIDEO_MODE)


class MultibootInfoFlags(IntFlag):
    MEMORY = 1 << 0
    BOOT_DEVICE = 1 << 1
    CMDLINE = 1 << 2
    MODS = 1 << 3
    MEM_MAP = 1 << 6
    BOOT_LOADER_NAME = 1 << 9


class MultibootError(UserError):
    """A -kernel image with a multiboot header that cannot be loaded."""


# Is [addr, addr + length) guest memory (RAM or ROM) that a loader can write?
# The board answers from its address space; without one, RAM in the e820 map.
MemoryProbe = Callable[[int, int], bool]


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


@dataclass(frozen=True)
class MultibootModule:
    path: str
    cmdline: str
    data: bytes


@dataclass(frozen=True)
class MultibootPlan:
    blobs: list[LoadBlob]
    entry: EntryState
    info_addr: int
    kernel_end: int
    modules: list[tuple[int, int]]  # (start, end) of each module


def find_multiboot_header(image: bytes) -> MultibootHeader | None:
    """The first valid header (magic and checksum) in the first 8 KiB, or None."""
    limit = min(len(image), MULTIBOOT_SEARCH) - MULTIBOOT_HEADER.size
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = MULTIBOOT_HEADER.unpack_from(image, off)
        if magic != MULTIBOOT_HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if flags & MultibootHeaderFlags.AOUT_KLUDGE:
            if off + 12 + MULTIBOOT_AOUT_FIELDS.size > len(image):
                raise MultibootError("multiboot header with address fields is truncated")
            return MultibootHeader(off, flags, *MULTIBOOT_AOUT_FIELDS.unpack_from(image, off + 12))
        return MultibootHeader(off, flags)
    return None


def parse_module_list(spec: str) -> list[tuple[str, str]]:
    """``-initrd "mod1 arg,mod2"`` to [(path, cmdline)]; ",," is a literal comma."""
    items: list[str] = []
    current = ""
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == ",":
            if spec[i + 1:i + 2] == ",":
                current += ","
                i += 2
                continue
            items.append(current)
            current = ""
        else:
            current += c
        i += 1
    items.append(current)
    out = []
    for item in items:
        text = item.strip()
        if not text:
            raise MultibootError("multiboot: empty module in -initrd")
        out.append((text.split()[0], text))
    return out


def _check_memory(addr: int, size: int, is_memory: MemoryProbe, what: str) -> None:
    """A kernel-chosen span must land in guest memory; checked before anything
    is allocated for it, so a huge size costs nothing."""
    if size and not is_memory(addr, size):
        raise MultibootError(f"multiboot: {what} at {addr:#x}-{addr + size - 1:#x} is not in guest memory")


def _load_aout(image: bytes, hdr: MultibootHeader, is_memory: MemoryProbe) -> tuple[list[LoadBlob], int, int]:
    if hdr.load_addr > hdr.header_addr:
        raise MultibootError("multiboot: load_addr is above header_addr")
    file_offset = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if file_offset < 0:
        raise MultibootError("multiboot: header_addr and load_addr put the image before the file start")
    if hdr.load_end_addr:
        if hdr.load_end_addr < hdr.load_addr:
            raise MultibootError("multiboot: load_end_addr is below load_addr")
        size = hdr.load_end_addr - hdr.load_addr
    else:
        size = len(image) - file_offset
    if file_offset + size > len(image):
        raise MultibootError("multiboot: load_end_addr runs past the end of the kernel file")
    end = hdr.load_addr + size
    bss_end = hdr.bss_end_addr or end
    if bss_end < end:
        raise MultibootError("multiboot: bss_end_addr is below load_end_addr")
    if bss_end > 1 << 32:
        raise MultibootError("multiboot: kernel does not fit below 4 GiB")
    _check_memory(hdr.load_addr, bss_end - hdr.load_addr, is_memory, "kernel")
    data = image[file_offset:file_offset + size] + bytes(bss_end - end)
    if not hdr.load_addr <= hdr.entry_addr < max(bss_end, hdr.load_addr + 1):
        raise MultibootError(f"multiboot: entry_addr {hdr.entry_addr:#x} is outside the loaded image")
    return [LoadBlob(hdr.load_addr, data, "kernel")], hdr.entry_addr, bss_end


def _load_elf(image: bytes, is_memory: MemoryProbe) -> tuple[list[LoadBlob], int, int]:
    elf = parse_elf(image)
    # A segment goes wherever the machine has memory, not only into RAM the
    # e820 map offers: `ld -Ttext=0x100000` puts the ELF headers in a
    # segment of their own at 0xff000, in the BIOS area, as QEMU accepts.
    for segment in elf.segments:
        _check_memory(segment.paddr, segment.memsz, is_memory, "kernel segment")
    entry = elf.vaddr_to_paddr(elf.entry)
    if entry >= 1 << 32:
        raise MultibootError(f"multiboot: ELF entry point {elf.entry:#x} is above 4 GiB")
    return elf_load_blobs(elf, "kernel"), entry, elf.high


def _mem_sizes(e820: E820Table) -> tuple[int, int]:
    """mem_lower and mem_upper in KiB: RAM from 0, and contiguous RAM from 1 MiB."""
    lower = upper = 0
    for entry in e820:
        if entry.type != E820Type.RAM:
            continue
        if entry.addr == 0:
            lower = min(entry.length, 640 << 10) >> 10
        if entry.addr <= 0x100000 < entry.end:
            upper = min(entry.end - 0x100000, 0xFFFFFFFF << 10) >> 10
    return lower, upper


def plan_multiboot(image: bytes, kernel_name: str, cmdline: str, modules: list[MultibootModule],
                   e820: E820Table, is_memory: MemoryProbe | None = None) -> MultibootPlan:
    """The blobs and entry state for a multiboot kernel.  ``e820`` is the
    memory map given to the kernel; ``is_memory`` says where the machine has
    memory to load into (RAM of the e820 map when not given)."""
    if is_memory is None:
        is_memory = e820.contains
    hdr = find_multiboot_header(image)
    if hdr is None:
        raise MultibootError("not a multiboot kernel (no valid header in the first 8 KiB)")
    unknown = hdr.flags & 0xFFFF & ~SUPPORTED_REQUIRED
    if unknown:
        raise MultibootError(f"multiboot: unsupported required header flags {unknown:#x}")
    if hdr.flags & MultibootHeaderFlags.AOUT_KLUDGE:
        blobs, entry, kernel_end = _load_aout(image, hdr, is_memory)
    elif is_elf(image):
        blobs, entry, kernel_end = _load_elf(image, is_memory)
    else:
        raise MultibootError("multiboot: the kernel is not ELF and its header has no address fields (flag 16)")

    # Modules, page-aligned after the kernel.
    cursor = (kernel_end + MODULE_ALIGN - 1) & ~(MODULE_ALIGN - 1)
    placed: list[tuple[int, int]] = []
    for i, mod in enumerate(modules):
        blobs.append(LoadBlob(cursor, mod.data, f"module {i} ({mod.path})"))
        placed.append((cursor, cursor + len(mod.data)))
        cursor = (cursor + len(mod.data) + MODULE_ALIGN - 1) & ~(MODULE_ALIGN - 1)

    # The information structure, then the memory map, module list and strings.
    area = bytearray(MBI_SIZE)
    mmap = b"".join(struct.pack("<IQQI", 20, e.addr, e.length, int(e.type)) for e in e820)
    mmap_addr = MBI_ADDR + len(area)
    area += mmap
    mods_addr = MBI_ADDR + len(area)
    area += bytes(16 * len(modules))

    def put_string(text: bytes) -> int:
        addr = MBI_ADDR + len(area)
        area.extend(text)
        return addr

    full_cmdline = f"{kernel_name} {cmdline}".rstrip() if cmdline else kernel_name
    cmdline_addr = put_string(full_cmdline.encode() + b"\0")
    name_addr = put_string(BOOT_LOADER_NAME)
    for i, (mod, (start, end)) in enumerate(zip(modules, placed, strict=True)):
        string_addr = put_string(mod.cmdline.encode() + b"\0")
        struct.pack_into("<IIII", area, mods_addr - MBI_ADDR + 16 * i, start, end, string_addr, 0)
    if MBI_ADDR + len(area) > MBI_AREA_END:
        raise MultibootError("multiboot: command lines and memory map do not fit in the boot information area")
    lower, upper = _mem_sizes(e820)
    flags = (MultibootInfoFlags.MEMORY | MultibootInfoFlags.BOOT_DEVICE | MultibootInfoFlags.CMDLINE
             | MultibootInfoFlags.MODS | MultibootInfoFlags.MEM_MAP | MultibootInfoFlags.BOOT_LOADER_NAME)
    struct.pack_into("<IIIIIII", area, 0, flags, lower, upper, 0x8000FFFF, cmdline_addr, len(modules),
                     mods_addr if modules else 0)
    struct.pack_into("<II", area, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", area, 64, name_addr)
    blobs.append(LoadBlob(MBI_ADDR, bytes(area), "multiboot information"))
    blobs.append(LoadBlob(BOOT_GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT), "boot GDT"))
    check_no_overlap(blobs, "multiboot")
    for blob in blobs:
        _check_memory(blob.addr, len(blob.data), is_memory, blob.name)
    state = EntryState(eip=entry, esi=0, eax=MULTIBOOT_BOOTLOADER_MAGIC, ebx=MBI_ADDR)
    return MultibootPlan(blobs, state, MBI_ADDR, kernel_end, placed)


def load_multiboot_modules(spec: str | None) -> list[MultibootModule]:
    """Read the files of ``-initrd "mod1 arg,mod2"``."""
    if not spec:
        return []
    modules = []
    for path, cmdline in parse_module_list(spec):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MultibootError(f"could not load multiboot module '{path}': {e.strerror}") from None
        modules.append(MultibootModule(path, cmdline, data))
    return modules


def is_multiboot(image: bytes) -> bool:
    try:
        return find_multiboot_header(image) is not None
    except MultibootError:
        return True  # a header is there; loading it will report what is wrong
