"""Migratable state of the 8259 pair, the 8254 PIT and port 0x61: save, load
into a fresh device, compare, run on; and refusal of values the chips never hold."""

from __future__ import annotations

import pytest

from pemu.hw.audio.pcspk import VMSTATE_PCSPK, PCSpeaker
from pemu.hw.intc.i8259 import VMSTATE_PIC_PAIR, InitState, PICPair
from pemu.hw.timer.i8254 import PIT, VMSTATE_PIT, Access, ByteState, ticks_to_ns
from tests.unit.fakes import EdgeCounter, FakeClock
from tests.unit.test_i8259 import LevelRecorder, linux_init
from tests.unit.vmstate_helpers import assert_refused, roundtrip, saved_with

# --- 8259 ------------------------------------------------------------------------------


def _pic_registers(pic: PICPair) -> list[int]:
    """IMR, IRR and ISR of both chips and the ELCR, read through the ports."""
    values = []
    for chip in (pic.master, pic.slave):
        values.append(chip.read(1))
        chip.write(0, 0x0A)   # OCW3: read IRR
        values.append(chip.read(0))
        chip.write(0, 0x0B)   # OCW3: read ISR
        values.append(chip.read(0))
        chip.write(0, 0x0A)
    values.append(pic.elcr.read(0, 2))
    return values


def _busy_pic() -> PICPair:
    pic = PICPair(LevelRecorder())
    linux_init(pic)
    pic.elcr.write(0, 0x0A00, 2)       # IRQ 9 and 11 level-triggered
    pic.master.write(1, 0x08)          # mask IRQ 3
    pic.irq_lines[0].set(1)
    assert pic.read_irq() == 0x30      # timer in service
    pic.irq_lines[1].set(1)            # keyboard pending behind it
    pic.irq_lines[11].set(1)           # a level line on the slave
    return pic


def test_pic_roundtrip_and_pending_irr_is_delivered_after_load() -> None:
    src = _busy_pic()
    cpu = LevelRecorder()
    dst = PICPair(cpu)
    roundtrip(VMSTATE_PIC_PAIR, src, dst)
    assert _pic_registers(dst) == _pic_registers(src)
    # Run on: EOI the timer, then the pending keyboard and the slave's level line come.
    dst.master.write(0, 0x20)
    assert cpu.level == 1 and dst.has_interrupt()
    assert dst.read_irq() == 0x31
    dst.master.write(0, 0x20)
    assert dst.read_irq() == 0x38 + 3          # IRQ 11 through the cascade
    dst.slave.write(0, 0x20)
    dst.master.write(0, 0x20)
    # Level-triggered: still asserted, so it is requested again; lowering it ends it.
    assert dst.slave.irr & 0x08
    dst.irq_lines[11].set(0)
    assert dst.slave.irr == 0
    # A line held high before the save does not make a new edge (last_irr was loaded).
    dst.irq_lines[1].set(1)
    assert not dst.master.irr & 0x02


@pytest.mark.parametrize(("path", "value", "match"), [
    ("master.priority_add", 8, "priority_add"),
    ("slave.irq_base", 0x31, "irq_base"),
    ("master.init_state", 7, "InitState"),
    ("master.elcr", 0x01, "ELCR"),
    ("slave.elcr", 0x01, "ELCR"),
])
def test_pic_refuses_impossible_state(path: str, value: int, match: str) -> None:
    data = saved_with(VMSTATE_PIC_PAIR, _busy_pic(), path, value)
    assert_refused(VMSTATE_PIC_PAIR, PICPair(), data, match)


def test_pic_init_state_enum_roundtrips() -> None:
    src = PICPair()
    src.master.write(0, 0x11)   # ICW1: waiting for ICW2
    dst = PICPair()
    roundtrip(VMSTATE_PIC_PAIR, src, dst)
    assert dst.master.init_state is InitState.ICW2
    dst.master.write(1, 0x20)
    assert dst.master.init_state is InitState.ICW3


# --- 8254 ------------------------------------------------------------------------------


def _program(pit: PIT, channel: int, mode: int, count: int) -> None:
    pit.write(3, (channel << 6) | 0x30 | (mode << 1))
    pit.write(channel, count & 0xFF)
    pit.write(channel, count >> 8)


def _latched_count(pit: PIT, channel: int) -> int:
    pit.write(3, channel << 6)
    return pit.read(channel) | (pit.read(channel) << 8)


def _busy_pit(clock: FakeClock, irq0: EdgeCounter) -> PIT:
    pit = PIT(irq0, clock=clock, timer_factory=clock.timer)
    _program(pit, 0, 2, 11932)            # 100 Hz
    pit.set_gate(2, 1)
    _program(pit, 2, 0, 0x8000)           # one-shot on channel 2
    clock.advance(ticks_to_ns(11932 * 3 + 500))
    pit.write(3, 0x80)                    # latch channel 2 and leave it unread
    pit.write(3, 0x40 | 0x10 | (3 << 1))  # channel 1: LSB only, mode 3 (waits for a count)
    return pit


def test_pit_roundtrip_and_channel0_fires_on_time_after_load() -> None:
    clock, irq0 = FakeClock(), EdgeCounter()
    src = _busy_pit(clock, irq0)
    # The destination's virtual clock was restored to the source's before the devices.
    clock2, irq0b = FakeClock(start_ns=clock.ns), EdgeCounter()
    dst = PIT(irq0b, clock=clock2, timer_factory=clock2.timer)
    roundtrip(VMSTATE_PIT, src, dst)
    irq0b.rising = 0   # (the fresh PIT's own reset raised the line once)
    assert dst.irq_timer.expire_time == src.irq_timer.expire_time > clock.ns
    assert [dst.read(2), dst.read(2)] == [src.read(2), src.read(2)]   # the pending latch
    assert _latched_count(dst, 0) == _latched_count(src, 0)
    assert [dst.get_out(ch) for ch in range(3)] == [src.get_out(ch) for ch in range(3)]
    # Run on: the fourth period ends at load time + 4 * 11932 ticks, on the grid of the load.
    ch = dst.channels[0]
    fourth = ch.load_ns + ticks_to_ns(4 * 11932)
    clock2.advance(fourth - 1 - clock2.ns)
    assert irq0b.rising == 0
    clock2.advance(1)
    assert irq0b.rising == 1
    clock2.advance(ticks_to_ns(11932) * 10)
    assert irq0b.rising == 11


def test_pit_load_rearms_nothing_while_the_hpet_owns_irq0() -> None:
    clock, irq0 = FakeClock(), EdgeCounter()
    src = _busy_pit(clock, irq0)
    src.irq_control(False)
    clock2, irq0b = FakeClock(start_ns=clock.ns), EdgeCounter()
    dst = PIT(irq0b, clock=clock2, timer_factory=clock2.timer)
    roundtrip(VMSTATE_PIT, src, dst)
    irq0b.rising = 0
    assert dst.irq_disabled and dst.irq_timer.expire_time == -1
    clock2.advance(10**9)
    assert irq0b.rising == 0


@pytest.mark.parametrize(("path", "value", "match"), [
    ("channels.0.mode", 6, "mode"),
    ("channels.1.count", 0, "count"),
    ("channels.2.access", Access.LATCH, "LATCH"),
    ("channels.0.read_state", ByteState.LOBYTE, "byte states"),
    ("channels.1.write_state", ByteState.WORD_HIGH, "byte states"),
])
def test_pit_refuses_impossible_state(path: str, value: object, match: str) -> None:
    clock = FakeClock()
    data = saved_with(VMSTATE_PIT, _busy_pit(clock, EdgeCounter()), path, value)
    assert_refused(VMSTATE_PIT, PIT(None, clock=clock, timer_factory=clock.timer), data, match)


def test_pit_refuses_a_bcd_count_above_10000() -> None:
    clock = FakeClock()
    src = PIT(None, clock=clock, timer_factory=clock.timer)
    src.channels[1].bcd = True
    data = saved_with(VMSTATE_PIT, src, "channels.1.count", 20000)
    assert_refused(VMSTATE_PIT, PIT(None, clock=clock, timer_factory=clock.timer), data, "BCD")


# --- port 0x61 -------------------------------------------------------------------------


def test_pcspk_roundtrip_and_gate_keeps_working() -> None:
    clock = FakeClock()
    pit = PIT(None, clock=clock, timer_factory=clock.timer)
    spk = PCSpeaker(pit)
    spk.write(0, 0x03)
    spk.read(0)                     # refresh bit toggled once
    pit_data = roundtrip(VMSTATE_PIT, pit, pit2 := PIT(None, clock=clock, timer_factory=clock.timer))
    assert pit_data
    spk2 = PCSpeaker(pit2)
    roundtrip(VMSTATE_PCSPK, spk, spk2)
    assert spk2.read(0) == spk.read(0)
    assert pit2.get_gate(2) == 1
    # Run on: the restored port still gates channel 2.
    spk2.write(0, 0x00)
    assert pit2.get_gate(2) == 0


@pytest.mark.parametrize(("path", "value"), [("control", 0x10), ("refresh", 0x20)])
def test_pcspk_refuses_bits_the_port_does_not_keep(path: str, value: int) -> None:
    clock = FakeClock()
    pit = PIT(None, clock=clock, timer_factory=clock.timer)
    data = saved_with(VMSTATE_PCSPK, PCSpeaker(pit), path, value)
    assert_refused(VMSTATE_PCSPK, PCSpeaker(pit), data, path)
