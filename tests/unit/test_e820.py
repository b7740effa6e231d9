"""e820 map: ordering, merging, carve-outs and the two binary encodings."""

from __future__ import annotations

import struct

import pytest

from pemu.hw.i386.e820 import E820Entry, E820Table, E820Type
from pemu.util.error import UserError


def rows(t: E820Table) -> list[tuple[int, int, int]]:
    return [(e.addr, e.length, int(e.type)) for e in t]


def test_sorted_and_merged():
    t = E820Table()
    t.add(0x100000, 0x100000, E820Type.RAM)
    t.add(0, 0x9FC00, E820Type.RAM)
    t.add(0x200000, 0x100000, E820Type.RAM)          # adjacent, same type: merged
    t.add(0x9FC00, 0x400, E820Type.RESERVED)
    assert rows(t) == [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0x100000, 0x200000, 1)]


def test_adjacent_different_types_not_merged():
    t = E820Table()
    t.add(0, 0x1000, E820Type.RAM)
    t.add(0x1000, 0x1000, E820Type.ACPI)
    assert rows(t) == [(0, 0x1000, 1), (0x1000, 0x1000, 3)]


def test_later_range_carves_out_of_earlier():
    t = E820Table()
    t.add(0, 0x20000000, E820Type.RAM)
    t.add(0x1FFDF000, 0x21000, E820Type.RESERVED)    # at the top
    t.add(0x9FC00, 0x60400, E820Type.RESERVED)       # in the middle
    assert rows(t) == [
        (0, 0x9FC00, 1),
        (0x9FC00, 0x60400, 2),
        (0x100000, 0x1FFDF000 - 0x100000, 1),
        (0x1FFDF000, 0x21000, 2),
    ]
    # Adding RAM back over the middle hole re-merges everything below the top.
    t.add(0x9FC00, 0x60400, E820Type.RAM)
    assert rows(t) == [(0, 0x1FFDF000, 1), (0x1FFDF000, 0x21000, 2)]


def test_overlap_covering_several_entries():
    t = E820Table()
    t.add(0, 0x1000, E820Type.RAM)
    t.add(0x2000, 0x1000, E820Type.NVS)
    t.add(0x4000, 0x1000, E820Type.RAM)
    t.add(0x800, 0x4000, E820Type.UNUSABLE)
    assert rows(t) == [(0, 0x800, 1), (0x800, 0x4000, 5), (0x4800, 0x800, 1)]


@pytest.mark.parametrize("addr, length", [(0, 0), (0x1000, -1), (-1, 10), ((1 << 64) - 4, 8)])
def test_bad_ranges(addr, length):
    with pytest.raises(ValueError):
        E820Table().add(addr, length, E820Type.RAM)


def test_bad_type():
    with pytest.raises(ValueError):
        E820Table().add(0, 0x1000, 9)


def test_find_and_contains():
    t = E820Table()
    t.add(0, 0x9FC00, E820Type.RAM)
    t.add(0x9FC00, 0x400, E820Type.RESERVED)
    assert t.find(0x9FBFF) == E820Entry(0, 0x9FC00, E820Type.RAM)
    assert t.find(0xA0000) is None
    assert t.contains(0x7000, 0x1000)
    assert not t.contains(0x9F000, 0x1000)            # runs into reserved
    assert t.contains(0x9FC00, 0x400, E820Type.RESERVED)


def test_encodings():
    t = E820Table()
    t.add(0, 0x9FC00, E820Type.RAM)
    t.add(0x100000000, 0x40000000, E820Type.RAM)
    expected = struct.pack("<QQI", 0, 0x9FC00, 1) + struct.pack("<QQI", 1 << 32, 1 << 30, 1)
    assert t.to_fw_cfg_bytes() == expected
    assert t.to_boot_params_bytes() == expected
    assert len(expected) == 40
    # The byte layout, spelled out for the first entry: u64 addr, u64 length, u32 type.
    assert expected[:20] == bytes(8) + bytes.fromhex("00fc090000000000") + b"\x01\0\0\0"


def test_boot_params_limit():
    t = E820Table()
    for i in range(129):
        t.add(i * 0x2000, 0x1000, E820Type.RAM)
    assert len(t) == 129
    assert len(t.to_fw_cfg_bytes()) == 129 * 20       # fw_cfg has no such limit
    with pytest.raises(UserError, match="at most 128"):
        t.to_boot_params_bytes()
