"""The zero page: field offsets and what build_boot_params fills in."""

from __future__ import annotations

import struct
from itertools import pairwise

from test_bzimage import make_bzimage

from pemu.hw.i386.bootparams import (
    BOOT_PARAMS_FIELDS,
    BOOT_PARAMS_SIZE,
    build_boot_params,
    get_field,
)
from pemu.hw.i386.bzimage import parse_bzimage, setup_header_bytes
from pemu.hw.i386.e820 import E820Table, E820Type


def header_bytes(**kw) -> bytes:
    data = make_bzimage(**kw)
    return setup_header_bytes(data, parse_bzimage(data))


def small_e820() -> E820Table:
    t = E820Table()
    t.add(0, 0x9FC00, E820Type.RAM)
    t.add(0x9FC00, 0x400, E820Type.RESERVED)
    t.add(0x100000, 0x1FF00000, E820Type.RAM)
    return t


def test_layout_offsets_match_bootparam_h():
    expect = {
        "screen_info": 0x000, "acpi_rsdp_addr": 0x070, "ext_ramdisk_image": 0x0C0,
        "ext_ramdisk_size": 0x0C4, "ext_cmd_line_ptr": 0x0C8, "e820_entries": 0x1E8,
        "sentinel": 0x1EF, "setup_sects": 0x1F1, "vid_mode": 0x1FA, "type_of_loader": 0x210,
        "loadflags": 0x211, "ramdisk_image": 0x218, "ramdisk_size": 0x21C,
        "heap_end_ptr": 0x224, "cmd_line_ptr": 0x228, "e820_table": 0x2D0,
        "edd_mbr_sig_buffer": 0x290, "eddbuf": 0xD00,
    }
    for name, off in expect.items():
        assert BOOT_PARAMS_FIELDS[name].offset == off, name
    # e820_table: 128 entries of 20 bytes, ending where the EDD area starts.
    f = BOOT_PARAMS_FIELDS["e820_table"]
    assert f.size == 2560 and f.offset + f.size == 0xCD0
    # No two fields overlap.
    spans = sorted((f.offset, f.offset + f.size, n) for n, f in BOOT_PARAMS_FIELDS.items())
    for (_, a1, an), (b0, _, bn) in pairwise(spans):
        assert a1 <= b0, (an, bn)
    assert spans[-1][1] <= BOOT_PARAMS_SIZE


def test_build_fills_loader_fields():
    page = build_boot_params(header_bytes(loadflags=0x01 | 0x20 | 0x40), small_e820(),
                             cmdline_addr=0x20000, initrd_addr=0x1F000000,
                             initrd_size=0x123456, rsdp_addr=0x9F000)
    assert len(page) == 4096
    assert get_field(page, "type_of_loader") == 0xFF
    # LOADED_HIGH | CAN_USE_HEAP set, QUIET and KEEP_SEGMENTS cleared.
    assert get_field(page, "loadflags") == 0x81
    assert get_field(page, "heap_end_ptr") == 0xFE00
    assert get_field(page, "vid_mode") == 0xFFFF
    assert get_field(page, "cmd_line_ptr") == 0x20000
    assert get_field(page, "ext_cmd_line_ptr") == 0
    assert get_field(page, "ramdisk_image") == 0x1F000000
    assert get_field(page, "ramdisk_size") == 0x123456
    assert get_field(page, "ext_ramdisk_image") == 0
    assert get_field(page, "acpi_rsdp_addr") == 0x9F000
    assert get_field(page, "sentinel") == 0
    # The kernel's own header fields survive the copy.
    assert page[0x202:0x206] == b"HdrS"
    assert get_field(page, "version") == 0x020F
    assert get_field(page, "init_size") == 0x200000
    # e820 as 20-byte records.
    assert get_field(page, "e820_entries") == 3
    assert struct.unpack_from("<QQI", page, 0x2D0 + 20) == (0x9FC00, 0x400, 2)
    assert struct.unpack_from("<QQI", page, 0x2D0 + 40) == (0x100000, 0x1FF00000, 1)
    assert page[0x2D0 + 60:0xCD0] == bytes(0xCD0 - 0x2D0 - 60)


def test_high_addresses_use_ext_fields():
    page = build_boot_params(header_bytes(), small_e820(), cmdline_addr=0x1_0002_0000,
                             initrd_addr=0x2_4000_0000, initrd_size=0x1_0000_1000,
                             rsdp_addr=None)
    assert get_field(page, "cmd_line_ptr") == 0x0002_0000
    assert get_field(page, "ext_cmd_line_ptr") == 1
    assert get_field(page, "ramdisk_image") == 0x4000_0000
    assert get_field(page, "ext_ramdisk_image") == 2
    assert get_field(page, "ramdisk_size") == 0x1000
    assert get_field(page, "ext_ramdisk_size") == 1
    assert get_field(page, "acpi_rsdp_addr") == 0


def test_no_initrd_leaves_ramdisk_zero():
    page = build_boot_params(header_bytes(), small_e820(), 0x20000, 0, 0, None)
    assert get_field(page, "ramdisk_image") == 0
    assert get_field(page, "ramdisk_size") == 0
