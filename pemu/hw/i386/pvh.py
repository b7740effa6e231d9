"""ELF kernels with a PVH entry point (QEMU's hw/i386/x86.c PVH path and
include/hw/xen/start_info.h).

An ELF image whose notes carry XEN_ELFNOTE_PHYS32_ENTRY can be started
directly in 32-bit protected mode, paging off, with EBX pointing at an
``hvm_start_info``: the command line, the initrd as module 0, the memory map
and the ACPI RSDP.  Linux's uncompressed vmlinux has this note, so it boots
without its decompressor or real-mode setup.

The ELF reader here (:func:`parse_elf`) is also what the multiboot loader
uses.  Every offset and size in the file is checked before use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import pairwise

from pemu.hw.i386.e820 import E820Table, E820Type
from pemu.hw.i386.linux_boot import (
    _FLAT_CODE32,
    _FLAT_DATA32,
    BOOT_GDT,
    BOOT_GDT_ADDR,
    EntryState,
    LoadBlob,
)
from pemu.util.error import UserError

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_NOTE = 4
EM_386 = 3
EM_X86_64 = 62
XEN_ELFNOTE_PHYS32_ENTRY = 18
XEN_NOTE_NAME = b"Xen"
# Segments may not be larger than this (a corrupt file must not make us allocate gigabytes).
MAX_SEGMENT_SIZE = 1 << 31

HVM_START_MAGIC = 0x336EC578
HVM_START_INFO = struct.Struct("<IIIIQQQQII")
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")
HVM_MEMMAP_ENTRY = struct.Struct("<QQII")
assert HVM_START_INFO.size == 56 and HVM_MODLIST_ENTRY.size == 32 and HVM_MEMMAP_ENTRY.size == 24

# Where the start info, module list and memory map go, and the command line.
PVH_START_INFO_ADDR = 0x6000
PVH_START_INFO_AREA = 0x1000
PVH_CMDLINE_ADDR = 0x20000
PVH_CMDLINE_MAX = 0x10000
INITRD_ALIGN = 0x1000


class ElfError(UserError):
    """A kernel image that is not a loadable ELF file."""


class PVHError(UserError):
    """A PVH kernel that cannot be booted as asked."""


class HvmMemmapType(IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5


@dataclass(frozen=True)
class ElfSegment:
    paddr: int
    vaddr: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class ElfNote:
    name: bytes
    type: int
    desc: bytes


@dataclass
class ElfImage:
    is64: bool
    machine: int
    entry: int
    segments: list[ElfSegment] = field(default_factory=list)
    notes: list[ElfNote] = field(default_factory=list)

    @property
    def low(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.end for s in self.segments)

    def find_note(self, name: bytes, note_type: int) -> ElfNote | None:
        for note in self.notes:
            if note.name == name and note.type == note_type:
                return note
        return None

    def vaddr_to_paddr(self, addr: int) -> int:
        """An address inside a segment's virtual range, moved to its physical one."""
        for s in self.segments:
            if s.vaddr <= addr < s.vaddr + s.memsz:
                return addr - s.vaddr + s.paddr
        return addr


def is_elf(image: bytes) -> bool:
    return image[:4] == ELF_MAGIC


def _parse_notes(blob: bytes) -> list[ElfNote]:
    notes: list[ElfNote] = []
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, note_type = struct.unpack_from("<III", blob, pos)
        pos += 12
        name_end = pos + namesz
        desc_start = pos + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if name_end > len(blob) or desc_end > len(blob):
            raise ElfError("ELF note runs past the end of its segment")
        notes.append(ElfNote(blob[pos:name_end].rstrip(b"\0"), note_type, blob[desc_start:desc_end]))
        pos = desc_start + ((descsz + 3) & ~3)
    return notes


def parse_elf(image: bytes) -> ElfImage:
    """The PT_LOAD segments (by physical address) and notes of a little-endian x86 ELF file."""
    if len(image) < 52 or not is_elf(image):
        raise ElfError("not an ELF file")
    ei_class, ei_data = image[4], image[5]
    if ei_class not in (1, 2):
        raise ElfError(f"invalid ELF class {ei_class}")
    if ei_data != 1:
        raise ElfError("ELF file is not little-endian")
    is64 = ei_class == 2
    if is64:
        if len(image) < 64:
            raise ElfError("ELF header is truncated")
        (_, machine, _, entry, phoff, _, _, _, phentsize, phnum) = struct.unpack_from("<HHIQQQIHHH", image, 16)
        ph = struct.Struct("<IIQQQQQQ")
    else:
        (_, machine, _, entry, phoff, _, _, _, phentsize, phnum) = struct.unpack_from("<HHIIIIIHHH", image, 16)
        ph = struct.Struct("<IIIIIIII")
    if machine not in (EM_386, EM_X86_64):
        raise ElfError(f"ELF machine {machine} is not x86")
    if phnum == 0:
        raise ElfError("ELF file has no program headers")
    if phentsize < ph.size or phoff + phnum * phentsize > len(image):
        raise ElfError("ELF program headers lie outside the file")
    elf = ElfImage(is64, machine, entry)
    for i in range(phnum):
        fields = ph.unpack_from(image, phoff + i * phentsize)
        if is64:
            p_type, _, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _ = fields
        else:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _, _ = fields
        if p_type not in (PT_LOAD, PT_NOTE):
            continue
        if p_offset + p_filesz > len(image):
            raise ElfError(f"ELF segment {i} lies outside the file")
        data = image[p_offset:p_offset + p_filesz]
        if p_type == PT_NOTE:
            elf.notes.extend(_parse_notes(data))
            continue
        if p_memsz < p_filesz or p_memsz > MAX_SEGMENT_SIZE:
            raise ElfError(f"ELF segment {i} has a bad size ({p_filesz:#x} in file, {p_memsz:#x} in memory)")
        if p_memsz == 0:
            continue
        if p_paddr + p_memsz > 1 << 32:
            raise ElfError(f"ELF segment {i} at {p_paddr:#x} does not fit below 4 GiB")
        elf.segments.append(ElfSegment(p_paddr, p_vaddr, data, p_memsz))
    if not elf.segments:
        raise ElfError("ELF file has no loadable segments")
    return elf


def elf_load_blobs(elf: ElfImage, name: str) -> list[LoadBlob]:
    """The segments as blobs, the part beyond the file data (.bss) zeroed."""
    return [LoadBlob(s.paddr, s.data + bytes(s.memsz - len(s.data)), f"{name} segment {i}")
            for i, s in enumerate(elf.segments)]


def check_fits_in_ram(blobs: list[LoadBlob], e820: E820Table, what: str) -> None:
    for blob in blobs:
        if blob.data and not e820.contains(blob.addr, len(blob.data)):
            raise UserError(f"{what}: {blob.name} at {blob.addr:#x}-{blob.end - 1:#x} is not in guest RAM")


def check_no_overlap(blobs: list[LoadBlob], what: str) -> None:
    ordered = sorted((b for b in blobs if b.data), key=lambda b: b.addr)
    for a, b in pairwise(ordered):
        if b.addr < a.end:
            raise UserError(f"{what}: {a.name} and {b.name} overlap")


def pvh_entry_point(elf: ElfImage) -> int | None:
    """The 32-bit entry of XEN_ELFNOTE_PHYS32_ENTRY, or None when there is no such note."""
    note = elf.find_note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY)
    if note is None:
        return None
    if len(note.desc) == 4:
        return struct.unpack("<I", note.desc)[0]
    if len(note.desc) == 8:
        entry = struct.unpack("<Q", note.desc)[0]
        if entry >= 1 << 32:
            raise PVHError(f"PVH entry point {entry:#x} is above 4 GiB")
        return entry
    raise PVHError(f"PVH entry note has a {len(note.desc)}-byte descriptor")


def has_pvh_note(image: bytes) -> bool:
    if not is_elf(image):
        return False
    try:
        return pvh_entry_point(parse_elf(image)) is not None
    except UserError:
        return False


@dataclass(frozen=True)
class PVHBootPlan:
    """What to write into RAM and the boot CPU's entry state (same shape as LinuxBootPlan)."""

    blobs: list[LoadBlob]
    entry: EntryState
    start_info_addr: int
    kernel_end: int
    initrd_addr: int = 0
    initrd_size: int = 0


def _e820_to_hvm(e820: E820Table) -> list[tuple[int, int, int]]:
    return [(e.addr, e.length, int(e.type)) for e in e820]


def place_initrd_top(size: int, e820: E820Table, low_limit: int, below: int) -> int:
    """Highest page-aligned address in one RAM range, above ``low_limit`` and below ``below``."""
    best = None
    for entry in e820:
        if entry.type != E820Type.RAM:
            continue
        end = min(entry.end, below)
        addr = (end - size) & ~(INITRD_ALIGN - 1)
        if addr >= max(entry.addr, low_limit) and (best is None or addr > best):
            best = addr
    if best is None:
        raise PVHError(f"initrd of {size} bytes does not fit in guest RAM")
    return best


def plan_pvh_boot(kernel: bytes, initrd: bytes | None, cmdline: str, e820: E820Table,
                  rsdp_addr: int | None = None) -> PVHBootPlan:
    elf = parse_elf(kernel)
    entry_point = pvh_entry_point(elf)
    if entry_point is None:
        raise PVHError("the ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
    for segment in elf.segments:
        if not e820.contains(segment.paddr, segment.memsz):
            raise PVHError(f"PVH kernel: segment at {segment.paddr:#x}-{segment.end - 1:#x} is not in guest RAM")
    blobs = elf_load_blobs(elf, "kernel")
    cmd = cmdline.encode() + b"\0"
    if len(cmd) > PVH_CMDLINE_MAX:
        raise PVHError(f"kernel command line is too long ({len(cmd) - 1} bytes, at most {PVH_CMDLINE_MAX - 1})")
    blobs.append(LoadBlob(PVH_CMDLINE_ADDR, cmd, "command line"))
    modules = b""
    initrd_addr = 0
    if initrd is not None:
        initrd_addr = place_initrd_top(len(initrd), e820, (elf.high + INITRD_ALIGN - 1) & ~(INITRD_ALIGN - 1),
                                       1 << 32)
        blobs.append(LoadBlob(initrd_addr, initrd, "initrd"))
        modules = HVM_MODLIST_ENTRY.pack(initrd_addr, len(initrd), 0, 0)
    memmap = _e820_to_hvm(e820)
    modlist_addr = PVH_START_INFO_ADDR + HVM_START_INFO.size
    memmap_addr = modlist_addr + len(modules)
    table = b"".join(HVM_MEMMAP_ENTRY.pack(a, n, t, 0) for a, n, t in memmap)
    info = HVM_START_INFO.pack(HVM_START_MAGIC, 1, 0, 1 if modules else 0, modlist_addr if modules else 0,
                               PVH_CMDLINE_ADDR, rsdp_addr or 0, memmap_addr, len(memmap), 0)
    area = info + modules + table
    if len(area) > PVH_START_INFO_AREA:
        raise PVHError(f"memory map has too many entries ({len(memmap)})")
    blobs.append(LoadBlob(PVH_START_INFO_ADDR, area, "start info"))
    blobs.append(LoadBlob(BOOT_GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT), "boot GDT"))
    check_no_overlap(blobs, "PVH kernel")
    check_fits_in_ram(blobs, e820, "PVH kernel")
    entry = EntryState(eip=entry_point, esi=0, ebx=PVH_START_INFO_ADDR, cs=_FLAT_CODE32, ds=_FLAT_DATA32,
                       es=_FLAT_DATA32, ss=_FLAT_DATA32, fs=_FLAT_DATA32, gs=_FLAT_DATA32)
    return PVHBootPlan(blobs, entry, PVH_START_INFO_ADDR, elf.high, initrd_addr, len(initrd or b""))


__all__ = ["parse_elf", "ElfImage", "ElfError", "PVHError", "plan_pvh_boot", "has_pvh_note", "pvh_entry_point",
           "PVHBootPlan", "HVM_START_MAGIC"]
