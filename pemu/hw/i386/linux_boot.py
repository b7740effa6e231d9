"""Direct Linux boot: where everything goes, and the CPU state at entry.

Linux's 32-bit boot protocol (Documentation/arch/x86/boot.rst) lets the VMM
skip the real-mode setup code entirely: it loads the protected-mode kernel,
writes a boot_params page and a command line, and starts the CPU in flat
32-bit protected mode at the kernel's first byte with ESI pointing at
boot_params.  :func:`plan_linux_boot` computes all of it as data; the
machine glue writes the blobs into guest RAM and loads the entry state
into the vCPU.

Guest-physical layout (below 1 MiB only what the kernel reads once):

====================  ==========================================
0x0000_0500           boot GDT (null, null, __BOOT_CS, __BOOT_DS)
0x0000_7000           boot_params (4 KiB)
0x0002_0000           kernel command line, NUL-terminated
0x0010_0000           protected-mode kernel (the bzImage after its setup)
top of low RAM        initrd, 4 KiB aligned, as high as allowed
====================  ==========================================
"""

from __future__ import annotations

import struct
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
EFLAGS_RESERVED = 1 << 1  # bit 1 always reads as 1; IF (bit 9) stays clear


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
BOOT_GDT: tuple[int, ...] = (0, 0, _FLAT_CODE32.descriptor, _FLAT_DATA32.descriptor)


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
                    rsdp_addr: int | None) -> LinuxBootPlan:
    """Lay out a direct 32-bit Linux boot.  Raises LinuxBootError for bad input."""
    hdr = parse_bzimage(kernel)

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
    usable_end = min(_ram_entry_end(e820, KERNEL_LOAD_ADDR), ram_size_below_4g)
    if kernel_end > usable_end:
        raise LinuxBootError(
            f"not enough RAM for the kernel: it needs memory up to "
            f"{kernel_end:#x} ({-(-kernel_end // (1 << 20))} MiB), "
            f"usable RAM ends at {usable_end:#x}")

    blobs = [
        LoadBlob(BOOT_GDT_ADDR, struct.pack(f"<{len(BOOT_GDT)}Q", *BOOT_GDT), "boot GDT"),
        LoadBlob(CMDLINE_ADDR, cmdline_bytes + b"\0", "command line"),
        LoadBlob(KERNEL_LOAD_ADDR, bytes(kernel[hdr.setup_size:]), "kernel"),
    ]

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
        entry=EntryState(eip=KERNEL_LOAD_ADDR, esi=BOOT_PARAMS_ADDR),
        boot_params_addr=BOOT_PARAMS_ADDR,
        cmdline_addr=CMDLINE_ADDR,
        kernel_addr=KERNEL_LOAD_ADDR,
        kernel_end=kernel_end,
        initrd_addr=initrd_addr,
        initrd_size=initrd_size,
        initrd_format=initrd_format,
        notes=notes,
    )
