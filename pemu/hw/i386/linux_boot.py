"""Direct Linux boot: where everything goes, and the CPU state at entry.

Linux's 32-bit boot protocol (Documentation/arch/x86/boot.rst) lets the VMM
skip the real-mode setup code entirely: it loads the protected-mode kernel,
writes a boot_params page and a command line, and starts the CPU in flat
32-bit protected mode at the kernel's first byte with ESI pointing at
boot_params.  :func:`plan_linux_boot` computes all of it as data; the
machine glue writes the blobs into guest RAM and loads the entry state
into the vCPU.

When the bzImage's payload is in a format the host can unpack (xz, gzip,
bzip2, lzma) and holds an x86-64 ELF vmlinux, pemu unpacks it itself and
uses the 64-bit boot protocol instead: the ELF's loadable segments go to
their physical addresses, the CPU starts in long mode on identity page
tables at the vmlinux entry (startup_64) with RSI at boot_params.  That is
what the kernel's own decompressor does last; running that decompressor
under the TCG vCPU costs tens of seconds (every guest memory access is a
helper call in Unicorn), the host does it in well under one.  Nothing is
randomized then (no KASLR), as with any loader of an uncompressed vmlinux.

Guest-physical layout (below 1 MiB only what the kernel reads once):

====================  ==========================================
0x0000_0500           boot GDT (null, null, __BOOT_CS, __BOOT_DS)
0x0000_7000           boot_params (4 KiB)
0x0000_9000           64-bit entry only: identity page tables
                      (PML4, PDPT, 4 PDs of 2 MiB pages: 0-4 GiB)
0x0002_0000           kernel command line, NUL-terminated
0x0010_0000           32-bit entry: the bzImage after its setup
0x0100_0000           64-bit entry: vmlinux segments (their p_paddr)
top of low RAM        initrd, 4 KiB aligned, as high as allowed
====================  ==========================================
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from enum import Enum

from pemu.hw.i386.bootparams import BOOT_PARAMS_SIZE, build_boot_params
from pemu.hw.i386.bzimage import (
    LinuxBootError,
    SetupHeader,
    parse_bzimage,
    setup_header_bytes,
)
from pemu.hw.i386.e820 import E820Table, E820Type

BOOT_GDT_ADDR = 0x500
BOOT_PARAMS_ADDR = 0x7000
CMDLINE_ADDR = 0x20000
CMDLINE_AREA_SIZE = 0x10000
"""Room reserved for the command line (its NUL included)."""
KERNEL_LOAD_ADDR = 0x100000

BOOT_CS = 0x10
"""__BOOT_CS: the 32-bit protocol wants CS from GDT entry 2 ..."""
BOOT_DS = 0x18
"""... and DS/ES/SS from GDT entry 3."""

INITRD_ALIGN = 0x1000
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
"""What boot.rst says to assume when the header gives no initrd_addr_max."""

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFLAGS_RESERVED = 1 << 1  # bit 1 always reads as 1; IF (bit 9) stays clear

PAGE_TABLES_ADDR = 0x9000
IDENTITY_MAP_GIB = 4
PAGE_TABLES_SIZE = (2 + IDENTITY_MAP_GIB) * 0x1000
BOOT_STACK_TOP = PAGE_TABLES_ADDR
"""The 64-bit entry's RSP (startup_64 switches to its own stack at once)."""
MAX_VMLINUX_SIZE = 512 << 20
"""Refuse to unpack a payload to more than this (a compressed bomb)."""


@dataclass(frozen=True)
class LoadBlob:
    """Bytes to copy into guest RAM at a guest-physical address."""

    addr: int
    data: bytes
    name: str

    @property
    def end(self) -> int:
        return self.addr + len(self.data)


@dataclass(frozen=True)
class SegmentState:
    """A loaded segment register: selector plus its hidden descriptor cache."""

    selector: int
    base: int
    limit: int
    """Byte-granular limit as the CPU sees it (0xFFFFFFFF for flat)."""
    access: int
    """Descriptor byte 5: type, S, DPL, P (0x9B code, 0x93 data)."""
    flags: int
    """Descriptor high nibble of byte 6: G (8), D/B (4), L (2), AVL (1)."""

    @property
    def descriptor(self) -> int:
        """The 8-byte GDT entry describing this segment."""
        raw_limit = self.limit >> 12 if self.flags & 0x8 else self.limit
        return ((raw_limit & 0xFFFF)
                | (self.base & 0xFFFFFF) << 16
                | (self.access & 0xFF) << 40
                | ((raw_limit >> 16) & 0xF) << 48
                | (self.flags & 0xF) << 52
                | ((self.base >> 24) & 0xFF) << 56)

    @property
    def qemu_flags(self) -> int:
        """G, D/B, L, AVL, P, DPL, S and type at their SegmentCache.flags positions (QEMU)."""
        return (self.descriptor >> 32) & 0x00F0FF00


_FLAT_CODE32 = SegmentState(BOOT_CS, 0, 0xFFFFFFFF, access=0x9B, flags=0xC)
_FLAT_DATA32 = SegmentState(BOOT_DS, 0, 0xFFFFFFFF, access=0x93, flags=0xC)
_CODE64 = SegmentState(BOOT_CS, 0, 0xFFFFFFFF, access=0x9B, flags=0xA)
BOOT_GDT: tuple[int, ...] = (0, 0, _FLAT_CODE32.descriptor, _FLAT_DATA32.descriptor)
BOOT_GDT64: tuple[int, ...] = (0, 0, _CODE64.descriptor, _FLAT_DATA32.descriptor)


@dataclass(frozen=True)
class EntryState:
    """The vCPU state at the kernel's 32-bit entry (paging off, IF clear)."""

    eip: int
    esi: int
    esp: int = 0
    ebp: int = 0
    edi: int = 0
    ebx: int = 0
    eax: int = 0
    ecx: int = 0
    edx: int = 0
    eflags: int = EFLAGS_RESERVED
    cr0: int = CR0_PE | CR0_ET
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    cs: SegmentState = _FLAT_CODE32
    ds: SegmentState = _FLAT_DATA32
    es: SegmentState = _FLAT_DATA32
    ss: SegmentState = _FLAT_DATA32
    fs: SegmentState = _FLAT_DATA32
    gs: SegmentState = _FLAT_DATA32
    gdt_base: int = BOOT_GDT_ADDR
    gdt_limit: int = len(BOOT_GDT) * 8 - 1
    idt_base: int = 0
    idt_limit: int = 0


def entry_state_64(entry: int, boot_params_addr: int) -> EntryState:
    """The 64-bit boot protocol's entry: long mode, identity paging, RSI at boot_params."""
    return EntryState(eip=entry, esi=boot_params_addr, esp=BOOT_STACK_TOP,
                      cr0=CR0_PE | CR0_ET | CR0_PG, cr3=PAGE_TABLES_ADDR, cr4=CR4_PAE,
                      efer=EFER_LME | EFER_LMA, cs=_CODE64)


def identity_page_tables(base: int = PAGE_TABLES_ADDR, gib: int = IDENTITY_MAP_GIB) -> bytes:
    """PML4, one PDPT and ``gib`` page directories mapping 0..gib GiB 1:1 with 2 MiB pages."""
    present_rw = 0x3
    large = 0x80
    pml4 = struct.pack("<Q", (base + 0x1000) | present_rw).ljust(0x1000, b"\0")
    pdpt = struct.pack(f"<{gib}Q", *((base + 0x2000 + 0x1000 * i) | present_rw for i in range(gib)))
    pds = struct.pack(f"<{512 * gib}Q", *((i << 21) | present_rw | large for i in range(512 * gib)))
    return pml4 + pdpt.ljust(0x1000, b"\0") + pds


@dataclass(frozen=True)
class ElfSegment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class Vmlinux:
    """The loadable part of an uncompressed x86-64 kernel ELF."""

    entry: int
    """Physical address of startup_64 (e_entry of a vmlinux is physical)."""
    segments: list[ElfSegment]

    @property
    def start(self) -> int:
        return min(seg.paddr for seg in self.segments)

    @property
    def end(self) -> int:
        return max(seg.paddr + seg.memsz for seg in self.segments)


_ELF_HEADER = struct.Struct("<4sBBBBB7xHHIQQQIHHHHHH")
_ELF_PHDR = struct.Struct("<IIQQQQQQ")
_PT_LOAD = 1
_EM_X86_64 = 62


def parse_vmlinux(elf: bytes) -> Vmlinux | None:
    """The PT_LOAD segments and entry of an x86-64 ELF, or None if ``elf`` is not one."""
    if len(elf) < _ELF_HEADER.size:
        return None
    (magic, ei_class, ei_data, _ver, _abi, _abiver, _type, machine, _version, entry, phoff, _shoff,
     _flags, _ehsize, phentsize, phnum, *_rest) = _ELF_HEADER.unpack_from(elf)
    if magic != b"\x7fELF" or ei_class != 2 or ei_data != 1 or machine != _EM_X86_64:
        return None
    if phentsize != _ELF_PHDR.size or phoff + phnum * phentsize > len(elf):
        return None
    segments = []
    for i in range(phnum):
        p_type, _pf, offset, _vaddr, paddr, filesz, memsz, _align = _ELF_PHDR.unpack_from(elf, phoff + i * phentsize)
        if p_type != _PT_LOAD or memsz == 0:
            continue
        if offset + filesz > len(elf) or filesz > memsz or paddr + memsz > 1 << 32:
            return None
        segments.append(ElfSegment(paddr, elf[offset:offset + filesz], memsz))
    if not segments:
        return None
    return Vmlinux(entry, segments)


def _unpack(payload: bytes, limit: int) -> bytes | None:
    """Decompress a kernel payload with what the host has; None if it cannot."""
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            xz = lzma.LZMADecompressor(lzma.FORMAT_XZ)
            out = xz.decompress(payload, max_length=limit + 1)
        elif payload.startswith(b"\x5d\x00\x00"):
            alone = lzma.LZMADecompressor(lzma.FORMAT_ALONE)
            out = alone.decompress(payload, max_length=limit + 1)
        elif payload.startswith(b"\x1f\x8b"):
            gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = gz.decompress(payload, limit + 1)
        elif payload.startswith(b"BZh"):
            bz = bz2.BZ2Decompressor()
            out = bz.decompress(payload, max_length=limit + 1)
        else:
            return None
    except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError):
        return None
    return out if len(out) <= limit else None


def extract_vmlinux(kernel: bytes, hdr: SetupHeader) -> Vmlinux | None:
    """Unpack the bzImage's payload into a Vmlinux, or None (then boot the bzImage as is)."""
    if hdr.version < 0x0208 or not hdr.payload_length:
        return None
    start = hdr.setup_size + hdr.payload_offset
    elf = _unpack(bytes(kernel[start:start + hdr.payload_length]), MAX_VMLINUX_SIZE)
    return parse_vmlinux(elf) if elf is not None else None


class InitrdFormat(Enum):
    CPIO = "cpio"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    LZMA = "lzma"
    XZ = "xz"
    LZO = "lzo"
    LZ4 = "lz4"
    ZSTD = "zstd"
    UNKNOWN = "unknown"


_INITRD_MAGICS: tuple[tuple[bytes, InitrdFormat], ...] = (
    (b"070701", InitrdFormat.CPIO),
    (b"070702", InitrdFormat.CPIO),
    (b"070707", InitrdFormat.CPIO),
    (b"\x1f\x8b", InitrdFormat.GZIP),
    (b"\x1f\x9e", InitrdFormat.GZIP),
    (b"BZh", InitrdFormat.BZIP2),
    (b"\x5d\x00\x00", InitrdFormat.LZMA),
    (b"\xfd7zXZ\x00", InitrdFormat.XZ),
    (b"\x89LZO", InitrdFormat.LZO),
    (b"\x02\x21\x4c\x18", InitrdFormat.LZ4),
    (b"\x28\xb5\x2f\xfd", InitrdFormat.ZSTD),
)


def check_initrd(initrd: bytes) -> InitrdFormat:
    """Refuse an empty initrd and name the format of a non-empty one.

    An UNKNOWN format is not an error here (Linux decides what it can
    unpack); the caller may warn about it.
    """
    if not initrd:
        raise LinuxBootError("initrd is empty")
    for magic, fmt in _INITRD_MAGICS:
        if initrd.startswith(magic):
            return fmt
    return InitrdFormat.UNKNOWN


@dataclass(frozen=True)
class LinuxBootPlan:
    header: SetupHeader
    blobs: list[LoadBlob]
    entry: EntryState
    boot_params_addr: int
    cmdline_addr: int
    kernel_addr: int
    kernel_end: int
    """First byte after all the memory the kernel uses while it unpacks itself."""
    initrd_addr: int = 0
    initrd_size: int = 0
    initrd_format: InitrdFormat | None = None
    notes: list[str] = field(default_factory=list)


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def kernel_footprint_end(hdr: SetupHeader, load_addr: int = KERNEL_LOAD_ADDR) -> int:
    """The end of the memory the kernel needs when loaded at ``load_addr``.

    The decompressor runs where it was loaded but unpacks to the first
    kernel_alignment boundary at or above max(load_addr, pref_address)
    (pref_address is LOAD_PHYSICAL_ADDR), using init_size bytes from
    there; a non-relocatable kernel unpacks exactly at pref_address.
    """
    image_end = load_addr + hdr.kernel_size
    if not hdr.init_size:
        return image_end  # protocol < 2.10: nothing better is known
    if hdr.relocatable:
        run_base = max(_align_up(load_addr, max(hdr.kernel_alignment, 1)), hdr.pref_address)
    else:
        run_base = hdr.pref_address or load_addr
    return max(image_end, run_base + hdr.init_size)


def _ram_entry_end(e820: E820Table, addr: int) -> int:
    e = e820.find(addr)
    if e is None or e.type != E820Type.RAM:
        return addr
    return e.end


def place_initrd(size: int, hdr: SetupHeader, ram_size_below_4g: int,
                 e820: E820Table, kernel_end: int) -> int:
    """The highest 4 KiB-aligned address for the initrd (QEMU's rule).

    It ends at or below min(initrd_addr_max + 1, ram_size_below_4g), lies
    in one RAM range of the e820 map and starts after the kernel.
    """
    addr_max = hdr.initrd_addr_max or DEFAULT_INITRD_ADDR_MAX
    limit = min(addr_max + 1, ram_size_below_4g)
    best_room = 0
    for e in sorted(e820, key=lambda e: e.addr, reverse=True):
        if e.type != E820Type.RAM:
            continue
        top = min(e.end, limit)
        low = max(e.addr, kernel_end)
        if top <= low:
            continue
        room = (top - low) // INITRD_ALIGN * INITRD_ALIGN
        best_room = max(best_room, room)
        if size > top:
            continue
        base = (top - size) // INITRD_ALIGN * INITRD_ALIGN
        if base >= low:
            return base
    raise LinuxBootError(
        f"initrd is too large: it does not fit in guest RAM between the kernel "
        f"(ending at {kernel_end:#x}) and {limit:#x} (max: {best_room} bytes, need {size})")


def plan_linux_boot(kernel: bytes, initrd: bytes | None, cmdline: str,
                    ram_size_below_4g: int, e820: E820Table,
                    rsdp_addr: int | None, *, unpack_on_host: bool = True) -> LinuxBootPlan:
    """Lay out a direct Linux boot.  Raises LinuxBootError for bad input.

    With ``unpack_on_host`` the payload is unpacked here when possible
    (64-bit entry into vmlinux); otherwise, or if it cannot be, the CPU
    enters the bzImage's 32-bit code, which unpacks the kernel itself.
    """
    hdr = parse_bzimage(kernel)
    vmlinux = extract_vmlinux(kernel, hdr) if unpack_on_host else None

    for addr, size, what in ((BOOT_GDT_ADDR, len(BOOT_GDT) * 8, "boot GDT"),
                             (BOOT_PARAMS_ADDR, BOOT_PARAMS_SIZE, "boot_params"),
                             (CMDLINE_ADDR, CMDLINE_AREA_SIZE, "command line")):
        if not e820.contains(addr, size):
            raise ValueError(f"the e820 map has no RAM for the {what} at {addr:#x}")

    cmdline_bytes = cmdline.encode("utf-8")
    if b"\0" in cmdline_bytes:
        raise LinuxBootError("kernel command line contains a NUL character")
    max_len = min(hdr.cmdline_size, CMDLINE_AREA_SIZE - 1)
    if len(cmdline_bytes) > max_len:
        raise LinuxBootError(
            f"kernel command line too long ({len(cmdline_bytes)} bytes, "
            f"this kernel accepts at most {max_len})")

    kernel_end = kernel_footprint_end(hdr)
    if vmlinux is not None:
        if vmlinux.start < KERNEL_LOAD_ADDR or not e820.contains(vmlinux.start, vmlinux.end - vmlinux.start):
            vmlinux = None  # not where a decompressor would put it: let the kernel do it
        else:
            kernel_end = max(kernel_end, vmlinux.end)
    usable_end = min(_ram_entry_end(e820, KERNEL_LOAD_ADDR), ram_size_below_4g)
    if kernel_end > usable_end:
        raise LinuxBootError(
            f"not enough RAM for the kernel: it needs memory up to "
            f"{kernel_end:#x} ({-(-kernel_end // (1 << 20))} MiB), "
            f"usable RAM ends at {usable_end:#x}")

    if vmlinux is None:
        entry = EntryState(eip=KERNEL_LOAD_ADDR, esi=BOOT_PARAMS_ADDR)
        blobs = [
            LoadBlob(BOOT_GDT_ADDR, struct.pack(f"<{len(BOOT_GDT)}Q", *BOOT_GDT), "boot GDT"),
            LoadBlob(CMDLINE_ADDR, cmdline_bytes + b"\0", "command line"),
            LoadBlob(KERNEL_LOAD_ADDR, bytes(kernel[hdr.setup_size:]), "kernel"),
        ]
    else:
        if not e820.contains(PAGE_TABLES_ADDR, PAGE_TABLES_SIZE):
            raise ValueError(f"the e820 map has no RAM for the boot page tables at {PAGE_TABLES_ADDR:#x}")
        entry = entry_state_64(vmlinux.entry, BOOT_PARAMS_ADDR)
        blobs = [
            LoadBlob(BOOT_GDT_ADDR, struct.pack(f"<{len(BOOT_GDT64)}Q", *BOOT_GDT64), "boot GDT"),
            LoadBlob(PAGE_TABLES_ADDR, identity_page_tables(), "page tables"),
            LoadBlob(CMDLINE_ADDR, cmdline_bytes + b"\0", "command line"),
        ]
        blobs += [LoadBlob(seg.paddr, seg.data, f"vmlinux segment {i}") for i, seg in enumerate(vmlinux.segments)]

    initrd_addr = initrd_size = 0
    initrd_format: InitrdFormat | None = None
    notes: list[str] = []
    if initrd is not None:
        initrd_format = check_initrd(initrd)
        if initrd_format is InitrdFormat.UNKNOWN:
            notes.append("initrd is neither a cpio archive nor in a compression format Linux knows")
        initrd_size = len(initrd)
        initrd_addr = place_initrd(initrd_size, hdr, ram_size_below_4g, e820, kernel_end)
        blobs.append(LoadBlob(initrd_addr, bytes(initrd), "initrd"))

    boot_params = build_boot_params(setup_header_bytes(kernel, hdr), e820, CMDLINE_ADDR,
                                    initrd_addr, initrd_size, rsdp_addr)
    blobs.insert(1, LoadBlob(BOOT_PARAMS_ADDR, boot_params, "boot_params"))

    return LinuxBootPlan(
        header=hdr,
        blobs=blobs,
        entry=entry,
        boot_params_addr=BOOT_PARAMS_ADDR,
        cmdline_addr=CMDLINE_ADDR,
        kernel_addr=KERNEL_LOAD_ADDR if vmlinux is None else vmlinux.start,
        kernel_end=kernel_end,
        initrd_addr=initrd_addr,
        initrd_size=initrd_size,
        initrd_format=initrd_format,
        notes=notes,
    )
