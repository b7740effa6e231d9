"""The device state description layer: round trips, versions, and refusal
of bad streams (table-tested; no CPU, no board)."""

from __future__ import annotations

import io
from collections import deque
from enum import IntEnum
from typing import Any

import pytest

from pemu.migration.qemu_file import MigrationStreamError, QEMUFileReader, QEMUFileWriter
from pemu.migration.vmstate import (
    BOOL,
    I32,
    TIMER,
    U8,
    U16,
    U32,
    Array,
    Buffer,
    DeviceOptional,
    Enum,
    Optional,
    SameAsHere,
    Struct,
    StructList,
    UInt,
    VarBuffer,
    VarList,
    VMStateDescription,
    VMStateError,
    VMStateField,
    vmstate_load_bytes,
    vmstate_save_bytes,
)


class Mode(IntEnum):
    IDLE = 0
    BUSY = 3


class Inner:
    def __init__(self) -> None:
        self.a = 0
        self.b = False


VMSTATE_INNER = VMStateDescription("inner", 1, [VMStateField("a", U16), VMStateField("b", BOOL)])


class FakeTimer:
    def __init__(self) -> None:
        self.expire_time = -1

    def mod_ns(self, ns: int) -> None:
        self.expire_time = ns

    def delete(self) -> None:
        self.expire_time = -1


class Dev:
    def __init__(self) -> None:
        self.reg = 0
        self.wide = 0
        self.signed = 0
        self.mode = Mode.IDLE
        self.latch: int | None = None
        self.regs = bytearray(4)
        self.fifo = deque(maxlen=16)
        self.pending = b""
        self.table = [0, 0, 0]
        self.inner = Inner()
        self.ports = [Inner(), Inner()]
        self.timer = FakeTimer()
        self.index = 0
        self.loaded_version = 0


def _check_index(dev: Any, version_id: int) -> None:
    if dev.index >= len(dev.fifo) + 1:
        raise VMStateError(f"index {dev.index} past the FIFO's {len(dev.fifo)} entries")
    dev.loaded_version = version_id


VMSTATE_DEV = VMStateDescription(
    "dev", version_id=2, minimum_version_id=1,
    fields=[
        VMStateField("reg", U8),
        VMStateField("wide", UInt(40)),
        VMStateField("signed", I32),
        VMStateField("mode", Enum(Mode)),
        VMStateField("latch", Optional(U16)),
        VMStateField("regs", Buffer(4)),
        VMStateField("fifo", VarList(U8, 16)),
        VMStateField("pending", VarBuffer(64)),
        VMStateField("table", Array(U32, 3)),
        VMStateField("inner", Struct(VMSTATE_INNER)),
        VMStateField("ports", StructList(VMSTATE_INNER, 2)),
        VMStateField("timer", TIMER),
        VMStateField("index", U8, check=range(0, 17)),
        VMStateField("inner.a", U16, since=2),
    ],
    post_load=_check_index)


def _busy_dev() -> Dev:
    dev = Dev()
    dev.reg = 0xAB
    dev.wide = 0x12_3456_789A
    dev.signed = -5
    dev.mode = Mode.BUSY
    dev.latch = 0x1234
    dev.regs[:] = b"\x01\x02\x03\x04"
    dev.fifo.extend([1, 2, 3])
    dev.pending = b"frame"
    dev.table = [7, 8, 9]
    dev.inner.a, dev.inner.b = 0x55, True
    dev.ports[1].a = 9
    dev.timer.mod_ns(123_456)
    dev.index = 2
    return dev


def test_round_trip_restores_every_field_and_keeps_objects() -> None:
    src = _busy_dev()
    data = vmstate_save_bytes(VMSTATE_DEV, src)
    dst = Dev()
    regs, fifo, inner = dst.regs, dst.fifo, dst.inner
    vmstate_load_bytes(VMSTATE_DEV, dst, data)
    assert vmstate_save_bytes(VMSTATE_DEV, dst) == data
    assert (dst.reg, dst.wide, dst.signed, dst.mode, dst.latch) == (0xAB, 0x12_3456_789A, -5, Mode.BUSY, 0x1234)
    assert isinstance(dst.mode, Mode)
    assert dst.regs is regs and bytes(regs) == b"\x01\x02\x03\x04"
    assert dst.fifo is fifo and list(fifo) == [1, 2, 3] and fifo.maxlen == 16
    assert dst.inner is inner and (inner.a, inner.b) == (0x55, True)
    assert dst.ports[1].a == 9 and dst.timer.expire_time == 123_456
    assert dst.loaded_version == 2


def test_none_and_unarmed_timer_round_trip() -> None:
    src = Dev()
    dst = _busy_dev()
    dst.index = 0
    vmstate_load_bytes(VMSTATE_DEV, dst, vmstate_save_bytes(VMSTATE_DEV, src))
    assert dst.latch is None and dst.timer.expire_time == -1 and list(dst.fifo) == []


def _corrupt(offset: int, value: bytes) -> bytes:
    data = bytearray(vmstate_save_bytes(VMSTATE_DEV, _busy_dev()))
    data[offset:offset + len(value)] = value
    return bytes(data)


# Offsets in the saved VMSTATE_DEV: reg 0, wide 1..9 (40 bits take 8 bytes),
# signed 9..13, mode 13, latch 14..17, regs 17..21, fifo length 21..25.
@pytest.mark.parametrize("data, message", [
    (_corrupt(1, b"\x01"), "does not fit 40 bits"),
    (_corrupt(13, b"\x02"), "not a valid Mode"),
    (_corrupt(14, b"\x05"), "bad presence byte"),
    (_corrupt(21, b"\x00\x00\x00\x11"), "exceeds the maximum 16"),
    (_corrupt(21, b"\xff\xff\xff\xff"), "exceeds the maximum 16"),
], ids=["wide", "enum", "presence", "fifo-len", "fifo-huge"])
def test_bad_values_are_refused_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(VMStateError, match=message):
        vmstate_load_bytes(VMSTATE_DEV, Dev(), data)


def test_check_and_post_load_refuse() -> None:
    dev = _busy_dev()
    dev.index = 17  # outside check=range(0, 17): saved, but refused on load
    with pytest.raises(VMStateError, match=r"dev\.index: invalid value 17"):
        vmstate_load_bytes(VMSTATE_DEV, Dev(), vmstate_save_bytes(VMSTATE_DEV, dev))
    dev.index = 9  # within the range, but past the FIFO: the post_load's cross-check
    with pytest.raises(VMStateError, match="index 9 past the FIFO"):
        vmstate_load_bytes(VMSTATE_DEV, Dev(), vmstate_save_bytes(VMSTATE_DEV, dev))


def test_truncation_anywhere_is_a_stream_error() -> None:
    data = vmstate_save_bytes(VMSTATE_DEV, _busy_dev())
    for cut in range(len(data)):
        with pytest.raises(MigrationStreamError, match="truncated"):
            vmstate_load_bytes(VMSTATE_DEV, Dev(), data[:cut])


def test_trailing_bytes_are_refused() -> None:
    data = vmstate_save_bytes(VMSTATE_DEV, _busy_dev())
    with pytest.raises(VMStateError, match="trailing"):
        vmstate_load_bytes(VMSTATE_DEV, Dev(), data + b"\0")


def test_versions_old_fields_skipped_and_unknown_refused() -> None:
    src = _busy_dev()
    v2 = vmstate_save_bytes(VMSTATE_DEV, src)
    v1 = v2[:-2]  # version 1 had no trailing inner.a copy
    dst = Dev()
    vmstate_load_bytes(VMSTATE_DEV, dst, v1, version_id=1)
    assert dst.loaded_version == 1 and dst.inner.a == 0x55
    with pytest.raises(VMStateError, match="version 3, this pemu reads up to 2"):
        vmstate_load_bytes(VMSTATE_DEV, Dev(), v2, version_id=3)
    with pytest.raises(VMStateError, match="version 0, this pemu reads from 1"):
        vmstate_load_bytes(VMSTATE_DEV, Dev(), v2, version_id=0)


def test_saving_a_value_the_description_cannot_hold_fails_loudly() -> None:
    dev = _busy_dev()
    dev.reg = 0x100
    with pytest.raises(VMStateError, match=r"dev\.reg: value 256 does not fit 8 bits"):
        vmstate_save_bytes(VMSTATE_DEV, dev)
    with pytest.raises(ValueError, match="newer than version"):
        VMStateDescription("x", 1, [VMStateField("a", U8, since=2)])


def test_writer_counts_crc_and_reader_matches() -> None:
    out = io.BytesIO()
    w = QEMUFileWriter(out)
    w.put_be32(0xDEADBEEF)
    w.put_counted_string("ram")
    w.put_buffer(b"x" * 100_000)
    w.flush()
    assert w.bytes_written == len(out.getvalue()) == 4 + 4 + 100_000
    r = QEMUFileReader(io.BytesIO(out.getvalue()))
    assert r.get_be32() == 0xDEADBEEF and r.get_counted_string() == "ram"
    assert r.get_buffer(100_000) == b"x" * 100_000 and r.crc == w.crc


class Parts:
    def __init__(self, eeprom: Inner | None, size: int) -> None:
        self.eeprom = eeprom
        self.size = size


VMSTATE_PARTS = VMStateDescription("parts", 1, [
    VMStateField("eeprom", DeviceOptional(VMSTATE_INNER)),
    VMStateField("size", SameAsHere(U32, lambda v: f"a disk of {v} sectors")),
])


@pytest.mark.parametrize("src, dst, message", [
    (Parts(Inner(), 8), Parts(None, 8), "inner is present in the stream, absent here"),
    (Parts(None, 8), Parts(Inner(), 8), "inner is absent in the stream, present here"),
    (Parts(None, 8), Parts(None, 16), "a disk of 8 sectors in the stream, a disk of 16 sectors in this VM"),
], ids=["extra-part", "missing-part", "other-size"])
def test_parts_and_configuration_must_match_the_destination(src: Parts, dst: Parts, message: str) -> None:
    with pytest.raises(VMStateError, match=message):
        vmstate_load_bytes(VMSTATE_PARTS, dst, vmstate_save_bytes(VMSTATE_PARTS, src))


def test_present_part_loads_in_place() -> None:
    eeprom = Inner()
    eeprom.a = 77
    src = Parts(eeprom, 8)
    dst = Parts(Inner(), 8)
    part = dst.eeprom
    vmstate_load_bytes(VMSTATE_PARTS, dst, vmstate_save_bytes(VMSTATE_PARTS, src))
    assert dst.eeprom is part and part.a == 77
