"""Migratable state of fw_cfg: the selected item and the offset into it (the
items are rebuilt by the destination's command line), checked against the
destination's items."""

from __future__ import annotations

import pytest

from pemu.hw.nvram.fw_cfg import FW_CFG_FILE_FIRST, VMSTATE_FW_CFG, FWCfgKey, FWCfgState
from tests.unit.test_fw_cfg import read_item
from tests.unit.vmstate_helpers import assert_refused, roundtrip, saved_with

PAYLOAD = bytes(range(200))


def _machine_fw_cfg() -> FWCfgState:
    """The same items on both sides, as the same command line makes them."""
    fw = FWCfgState()
    fw.add_i64(FWCfgKey.RAM_SIZE, 0x2000_0000)
    fw.add_file("etc/zeta", b"last")
    fw.add_file("opt/payload", PAYLOAD)
    return fw


def test_fw_cfg_roundtrip_and_the_read_goes_on_at_the_same_offset() -> None:
    src = _machine_fw_cfg()
    key = src.file_key("opt/payload")
    assert key is not None
    assert read_item(src, key, 50) == PAYLOAD[:50]
    src.dma_write(0, 0x0000_0012, 4)           # the high half of a DMA address, written
    dst = _machine_fw_cfg()
    roundtrip(VMSTATE_FW_CFG, src, dst)
    assert (dst.cur_entry, dst.cur_offset, dst.dma_addr) == (key, 50, 0x1200_0000 << 32)
    # Run on: the next bytes are the same item's, from offset 50, on both sides.
    assert bytes(dst.comb_read(1, 1) for _ in range(150)) == PAYLOAD[50:] \
        == bytes(src.comb_read(1, 1) for _ in range(150))
    assert dst.comb_read(1, 1) == 0
    assert read_item(dst, FWCfgKey.RAM_SIZE, 8) == (0x2000_0000).to_bytes(8, "little")


def test_fw_cfg_roundtrip_at_the_end_of_an_item_and_with_nothing_selected() -> None:
    src = _machine_fw_cfg()
    read_item(src, FWCfgKey.SIGNATURE, 4)
    roundtrip(VMSTATE_FW_CFG, src, dst := _machine_fw_cfg())
    assert dst.comb_read(1, 1) == 0
    src.comb_write(0, 0x3FFF, 2)                  # beyond the last slot: nothing selected
    roundtrip(VMSTATE_FW_CFG, src, dst)
    assert dst.comb_read(1, 1) == 0


@pytest.mark.parametrize(("path", "value", "match"), [
    ("cur_entry", FW_CFG_FILE_FIRST + 0x20, "no item key"),   # past the file slots
    ("cur_entry", 0x4000 | 3, "no item key"),                 # the write channel bit is never kept
    ("cur_offset", 201, "has 200 bytes"),
])
def test_fw_cfg_refuses_a_position_outside_the_destinations_items(path: str, value: int, match: str) -> None:
    src = _machine_fw_cfg()
    key = src.file_key("opt/payload")
    assert key is not None
    read_item(src, key, 10)
    data = saved_with(VMSTATE_FW_CFG, src, path, value)
    assert_refused(VMSTATE_FW_CFG, _machine_fw_cfg(), data, match)


def test_fw_cfg_refuses_an_offset_into_an_item_the_destination_lacks() -> None:
    src = _machine_fw_cfg()
    src.add_file("opt/only-on-the-source", b"x" * 64)   # moves opt/payload one key up
    key = src.file_key("opt/payload")
    assert key is not None
    read_item(src, key, 100)
    for dst in (_machine_fw_cfg(), FWCfgState()):       # a shorter item at that key, or none
        data = saved_with(VMSTATE_FW_CFG, src, "cur_offset", 100)
        assert_refused(VMSTATE_FW_CFG, dst, data, "bytes here")
