"""Direct-boot layout with synthetic kernels."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from itertools import pairwise

import pytest
from test_bzimage import make_bzimage

from pemu.hw.i386.bootparams import get_field
from pemu.hw.i386.bzimage import LinuxBootError
from pemu.hw.i386.e820 import E820Table, E820Type
from pemu.hw.i386.linux_boot import (
    BOOT_CS,
    BOOT_DS,
    InitrdFormat,
    SegmentState,
    check_initrd,
    identity_page_tables,
    kernel_footprint_end,
    parse_vmlinux,
    plan_linux_boot,
)

MiB = 1 << 20


def q35_e820(ram: int, reserved_top: int = 0x21000) -> E820Table:
    t = E820Table()
    t.add(0, 0x9FC00, E820Type.RAM)
    t.add(0x9FC00, 0x400, E820Type.RESERVED)
    t.add(0xF0000, 0x10000, E820Type.RESERVED)
    t.add(0x100000, ram - 0x100000, E820Type.RAM)
    if reserved_top:
        t.add(ram - reserved_top, reserved_top, E820Type.RESERVED)
    return t


def blob(plan, name):
    (b,) = [b for b in plan.blobs if b.name == name]
    return b


def test_layout_without_initrd():
    kernel = make_bzimage(kernel_size=8192)
    plan = plan_linux_boot(kernel, None, "console=ttyS0 quiet", 512 * MiB, q35_e820(512 * MiB), 0x1FFDF000)
    assert blob(plan, "kernel").addr == 0x100000
    assert blob(plan, "kernel").data == kernel[5 * 512:]
    assert blob(plan, "kernel").data[:4] == b"KERN"
    assert blob(plan, "command line").addr == 0x20000
    assert blob(plan, "command line").data == b"console=ttyS0 quiet\0"
    bp = blob(plan, "boot_params")
    assert bp.addr == 0x7000 and len(bp.data) == 4096
    assert get_field(bp.data, "cmd_line_ptr") == 0x20000
    assert get_field(bp.data, "acpi_rsdp_addr") == 0x1FFDF000
    assert get_field(bp.data, "ramdisk_size") == 0
    assert get_field(bp.data, "e820_entries") == 5
    assert plan.initrd_size == 0 and plan.initrd_format is None
    # Blobs do not overlap.
    spans = sorted((b.addr, b.end) for b in plan.blobs)
    assert all(a[1] <= b[0] for a, b in pairwise(spans))


def test_entry_state():
    plan = plan_linux_boot(make_bzimage(), None, "", 64 * MiB, q35_e820(64 * MiB), None)
    e = plan.entry
    assert e.eip == 0x100000 and e.esi == 0x7000
    assert e.ebp == e.edi == e.ebx == 0
    assert not e.eflags & (1 << 9)                    # IF clear
    assert e.cr0 & 1 and not e.cr0 & (1 << 31)        # PE on, PG off
    assert e.cs.selector == BOOT_CS == 0x10
    assert e.ds.selector == e.es.selector == e.ss.selector == BOOT_DS == 0x18
    # The GDT blob has the flat descriptors at the selectors' slots.
    gdt = blob(plan, "boot GDT")
    assert gdt.addr == e.gdt_base and len(gdt.data) == e.gdt_limit + 1
    entries = struct.unpack("<4Q", gdt.data)
    assert entries[2] == 0x00CF9B000000FFFF           # 32-bit code, 4 GiB, G=1 D=1
    assert entries[3] == 0x00CF93000000FFFF           # data, read/write
    assert e.cs.qemu_flags == 0x00C09B00                # G, D/B, P, S, type in place


def test_segment_descriptor_encoding():
    s = SegmentState(0x8, base=0x12345678, limit=0xFFFFF, access=0x93, flags=0x4)
    assert s.descriptor == 0x12_4F_93_345678_FFFF


def test_initrd_placed_high_below_reserved_top():
    ram = 512 * MiB
    initrd = b"070701" + bytes(3 * MiB + 123)
    plan = plan_linux_boot(make_bzimage(), initrd, "", ram, q35_e820(ram), None)
    top = ram - 0x21000                               # the reserved ACPI area is avoided
    size = len(initrd)
    assert plan.initrd_addr == (top - size) & ~0xFFF
    assert plan.initrd_addr + size <= top
    assert plan.initrd_format is InitrdFormat.CPIO
    b = blob(plan, "initrd")
    assert b.addr == plan.initrd_addr and b.data == initrd
    bp = blob(plan, "boot_params").data
    assert get_field(bp, "ramdisk_image") == plan.initrd_addr
    assert get_field(bp, "ramdisk_size") == size


def test_initrd_respects_initrd_addr_max():
    ram = 2048 * MiB
    kernel = make_bzimage(initrd_addr_max=0x37FFFFFF)
    plan = plan_linux_boot(kernel, b"\x1f\x8b" + bytes(5000), "", ram, q35_e820(ram), None)
    assert plan.initrd_addr + 5002 <= 0x38000000
    assert plan.initrd_addr == (0x38000000 - 5002) & ~0xFFF


def test_initrd_too_large():
    ram = 64 * MiB
    # Kernel footprint: 16 MiB + 2 MiB init_size; 64 MiB - 0x21000 left at the top.
    with pytest.raises(LinuxBootError, match="initrd is too large"):
        plan_linux_boot(make_bzimage(), bytes(47 * MiB), "", ram, q35_e820(ram), None)
    # Just fitting: from the kernel's end to the aligned top.
    room = ((ram - 0x21000) & ~0xFFF) - (16 * MiB + 2 * MiB)
    plan = plan_linux_boot(make_bzimage(), b"BZh" + bytes(room - 3), "", ram, q35_e820(ram), None)
    assert plan.initrd_addr == 18 * MiB
    with pytest.raises(LinuxBootError, match="need"):
        plan_linux_boot(make_bzimage(), bytes(room + 1), "", ram, q35_e820(ram), None)


def test_kernel_needs_more_ram():
    # 16 MiB pref_address + 32 MiB init_size does not fit in 32 MiB.
    with pytest.raises(LinuxBootError, match="not enough RAM for the kernel"):
        plan_linux_boot(make_bzimage(init_size=32 * MiB), None, "", 32 * MiB,
                        q35_e820(32 * MiB), None)


@pytest.mark.parametrize("reloc, align, pref, init, expected", [
    (1, 0x200000, 0x1000000, 0x2000000, 0x1000000 + 0x2000000),   # unpack at pref_address
    (1, 0x200000, 0, 0x400000, 0x200000 + 0x400000),              # aligned-up load address
    (0, 0x200000, 0x1000000, 0x100000, 0x1100000),               # fixed at LOAD_PHYSICAL_ADDR
    (1, 0x200000, 0x1000000, 0, 0x100000 + 4096),                # pre-2.10: the image only
    (1, 0, 0, 0x10000, 0x100000 + 0x10000),                      # alignment 0 treated as 1
])
def test_kernel_footprint(reloc, align, pref, init, expected):
    from pemu.hw.i386.bzimage import parse_bzimage
    hdr = parse_bzimage(make_bzimage(relocatable=reloc, kernel_alignment=align,
                                     pref_address=pref, init_size=init))
    assert kernel_footprint_end(hdr) == expected


def test_command_line_limits():
    kernel = make_bzimage(cmdline_size=16)
    e820 = q35_e820(64 * MiB)
    plan = plan_linux_boot(kernel, None, "x" * 16, 64 * MiB, e820, None)
    assert blob(plan, "command line").data == b"x" * 16 + b"\0"
    with pytest.raises(LinuxBootError, match="kernel command line too long"):
        plan_linux_boot(kernel, None, "x" * 17, 64 * MiB, e820, None)
    with pytest.raises(LinuxBootError, match="NUL"):
        plan_linux_boot(make_bzimage(), None, "a\0b", 64 * MiB, e820, None)
    # A hostile cmdline_size cannot make the command line overrun its area.
    with pytest.raises(LinuxBootError, match="at most 65535"):
        plan_linux_boot(make_bzimage(cmdline_size=0xFFFFFFFF), None, "y" * 0x10000,
                        64 * MiB, e820, None)


def test_check_initrd_formats():
    assert check_initrd(b"070701000") is InitrdFormat.CPIO
    assert check_initrd(b"\xfd7zXZ\x00rest") is InitrdFormat.XZ
    assert check_initrd(b"\x28\xb5\x2f\xfdxx") is InitrdFormat.ZSTD
    assert check_initrd(b"hello") is InitrdFormat.UNKNOWN
    with pytest.raises(LinuxBootError, match="initrd is empty"):
        check_initrd(b"")


def test_unknown_initrd_is_noted():
    plan = plan_linux_boot(make_bzimage(), b"garbage", "", 64 * MiB, q35_e820(64 * MiB), None)
    assert plan.initrd_format is InitrdFormat.UNKNOWN and plan.notes


def test_board_without_low_ram_is_a_bug():
    t = E820Table()
    t.add(0x100000, 63 * MiB, E820Type.RAM)
    with pytest.raises(ValueError, match="boot GDT"):
        plan_linux_boot(make_bzimage(), None, "", 64 * MiB, t, None)


def test_bad_kernel_propagates():
    with pytest.raises(LinuxBootError, match="not a Linux bzImage"):
        plan_linux_boot(b"\0" * 8192, None, "", 64 * MiB, q35_e820(64 * MiB), None)


def test_with_acpi_tables_in_reserved_ram():
    from pemu.hw.i386.acpi_build import build_acpi_tables
    ram = 128 * MiB
    acpi = build_acpi_tables(ram - 0x21000, with_apic=False, cpus=1)
    e820 = q35_e820(ram)                              # reserves exactly that top area
    plan = plan_linux_boot(make_bzimage(), b"\x1f\x8b" + bytes(MiB), "", ram, e820, acpi.rsdp_addr)
    assert get_field(blob(plan, "boot_params").data, "acpi_rsdp_addr") == acpi.rsdp_addr
    assert e820.contains(acpi.base_addr, acpi.size, E820Type.RESERVED)
    assert plan.initrd_addr + plan.initrd_size <= acpi.base_addr


def test_real_debian_kernel_header(guest_images):
    data = guest_images.kernel.read_bytes()
    plan = plan_linux_boot(data, None, "console=ttyS0", 512 * MiB, q35_e820(512 * MiB), None,
                           unpack_on_host=False)
    h = plan.header
    assert h.version >= 0x020F and h.relocatable and h.pref_address == 0x1000000
    assert plan.kernel_end == 0x1000000 + h.init_size
    assert blob(plan, "kernel").data == data[h.setup_size:]
    # Unpacked on the host: vmlinux at 16 MiB, entered in long mode at startup_64.
    plan = plan_linux_boot(data, None, "console=ttyS0", 512 * MiB, q35_e820(512 * MiB), None)
    assert plan.entry.eip == 0x1000000 == plan.kernel_addr
    assert plan.entry.efer & 0x100 and plan.entry.cr0 & 0x80000000
    assert blob(plan, "vmlinux segment 0").addr == 0x1000000
    assert plan.kernel_end >= 0x1000000 + h.init_size


def make_elf(entry: int, segments: list[tuple[int, bytes, int]], machine: int = 62) -> bytes:
    """An ELF64 with one PT_LOAD per (paddr, data, memsz)."""
    phoff = 64
    data_off = phoff + 56 * len(segments)
    head = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, machine, 1, entry, phoff, 0,
                       0, 64, 56, len(segments), 64, 0, 0)
    phdrs = b""
    body = b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, data_off + len(body), (0xFFFFFFFF80000000 + paddr) & (2**64 - 1), paddr,
                             len(data), memsz, 0x1000)
        body += data
    return head + phdrs + body


def bzimage_with_payload(payload: bytes, **kw) -> bytes:
    img = bytearray(make_bzimage(kernel_size=0x1000 + len(payload) + 4, payload=(0x1000, len(payload) + 4), **kw))
    start = 5 * 512 + 0x1000
    img[start:start + len(payload) + 4] = payload + struct.pack("<I", 12345)
    return bytes(img)


def test_identity_page_tables_map_4gib_with_2mib_pages():
    pt = identity_page_tables(0x9000, 4)
    assert len(pt) == 6 * 0x1000
    assert struct.unpack_from("<Q", pt, 0)[0] == 0xA003
    assert struct.unpack_from("<4Q", pt, 0x1000) == (0xB003, 0xC003, 0xD003, 0xE003)
    assert struct.unpack_from("<Q", pt, 0x2000)[0] == 0x83
    last = struct.unpack_from("<Q", pt, len(pt) - 8)[0]
    assert last == (0xFFFFFFFF & ~0x1FFFFF) | 0x83


def test_parse_vmlinux_checks_the_elf():
    elf = make_elf(0x1000000, [(0x1000000, b"CODE", 0x2000), (0x1200000, b"DATA", 4)])
    v = parse_vmlinux(elf)
    assert v is not None and v.entry == 0x1000000 and (v.start, v.end) == (0x1000000, 0x1200004)
    assert [s.data for s in v.segments] == [b"CODE", b"DATA"]
    assert parse_vmlinux(make_elf(0x1000000, [(0x1000000, b"x", 1)], machine=3)) is None  # i386
    assert parse_vmlinux(elf[:100]) is None  # program headers cut off
    assert parse_vmlinux(b"\x7fELF") is None
    assert parse_vmlinux(make_elf(0, [(0xFFFFF000, b"x", 0x2000)])) is None  # past 4 GiB


@pytest.mark.parametrize("compress", [
    lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    lambda b: gzip.compress(b),
    lambda b: bz2.compress(b),
])
def test_payload_unpacked_on_host_enters_vmlinux_in_long_mode(compress):
    elf = make_elf(0x1000000, [(0x1000000, b"\x90" * 64, 0x10000), (0x1400000, b"DATA", 0x300000)])
    kernel = bzimage_with_payload(compress(elf))
    ram = 64 * MiB
    plan = plan_linux_boot(kernel, b"\x1f\x8b" + bytes(100), "console=ttyS0", ram, q35_e820(ram), None)
    e = plan.entry
    assert (e.eip, e.esi, e.cr3) == (0x1000000, 0x7000, 0x9000)
    assert e.cr0 & 0x80000001 == 0x80000001 and e.cr4 & 0x20 and e.efer & 0x500 == 0x500
    assert e.cs.selector == BOOT_CS and e.cs.flags & 0x2 and not e.cs.flags & 0x4  # L set, D clear
    assert e.ds.selector == BOOT_DS and not e.eflags & 0x200
    assert blob(plan, "vmlinux segment 0").addr == 0x1000000
    assert blob(plan, "vmlinux segment 1").data == b"DATA"
    assert blob(plan, "page tables").addr == 0x9000
    gdt = blob(plan, "boot GDT").data
    assert struct.unpack_from("<Q", gdt, 16)[0] == SegmentState(BOOT_CS, 0, 0xFFFFFFFF, 0x9B, 0xA).descriptor
    assert plan.kernel_end >= 0x1700000 and plan.initrd_addr >= plan.kernel_end
    assert not any(b.name == "kernel" for b in plan.blobs)
    spans = sorted((b.addr, b.end) for b in plan.blobs)
    assert all(a[1] <= b[0] for a, b in pairwise(spans))


def test_unusable_payload_keeps_the_32bit_entry():
    for payload in (b"\xfd7zXZ\x00garbage", lzma.compress(b"not an elf"),
                    lzma.compress(make_elf(0x1000, [(0x1000, b"low", 3)]))):  # below 1 MiB: not a vmlinux
        plan = plan_linux_boot(bzimage_with_payload(payload), None, "", 64 * MiB, q35_e820(64 * MiB), None)
        assert plan.entry.eip == 0x100000 and plan.entry.cr0 == 0x11
        assert blob(plan, "kernel").addr == 0x100000
