"""The 8254 PIT with an injected clock: periodic IRQ0, calibration on channel 2, latches."""

from __future__ import annotations

import pytest

from pemu.hw.audio.pcspk import PCSpeaker
from pemu.hw.timer.i8254 import MIN_IRQ_INTERVAL_NS, PIT, PIT_FREQ, ticks_to_ns
from tests.unit.fakes import EdgeCounter, FakeClock

NS_PER_S = 1_000_000_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def irq0() -> EdgeCounter:
    return EdgeCounter()


@pytest.fixture
def pit(clock: FakeClock, irq0: EdgeCounter) -> PIT:
    return PIT(irq0, clock=clock, timer_factory=clock.timer)


def program(pit: PIT, channel: int, mode: int, count: int, bcd: bool = False) -> None:
    pit.write(3, (channel << 6) | 0x30 | (mode << 1) | int(bcd))
    pit.write(channel, count & 0xFF)
    pit.write(channel, (count >> 8) & 0xFF)


def read_count(pit: PIT, channel: int) -> int:
    pit.write(3, channel << 6)  # latch
    return pit.read(channel) | (pit.read(channel) << 8)


@pytest.mark.parametrize("mode", [2, 3, 6, 7])
def test_periodic_irq0_at_hz_without_drift(pit: PIT, clock: FakeClock, irq0: EdgeCounter, mode: int) -> None:
    latch = (PIT_FREQ + 125) // 250  # Linux's LATCH for HZ=250
    program(pit, 0, mode, latch)
    start = irq0.rising
    clock.advance(10 * NS_PER_S)
    assert irq0.rising - start == pytest.approx(2500, abs=1)
    # The 2500th period ends exactly where the count grid says: no drift.
    assert pit.channels[0].rising_edges(pit.channels[0].elapsed(clock.ns)) == 10 * PIT_FREQ // latch


def test_mode2_counter_reloads(pit: PIT, clock: FakeClock) -> None:
    program(pit, 0, 2, 1000)
    assert read_count(pit, 0) == 1000
    clock.advance(ticks_to_ns(250))
    assert read_count(pit, 0) == 750
    clock.advance(ticks_to_ns(1000))
    assert read_count(pit, 0) == 750


def test_tiny_count_is_clamped_not_a_storm(pit: PIT, clock: FakeClock, irq0: EdgeCounter) -> None:
    program(pit, 0, 2, 2)
    fired_before = clock.fired
    clock.advance(NS_PER_S // 10)
    fired = clock.fired - fired_before
    assert fired <= NS_PER_S // 10 // MIN_IRQ_INTERVAL_NS + 1
    assert irq0.rising >= fired - 1  # every callback still delivers an interrupt


def test_mode0_one_shot_irq(pit: PIT, clock: FakeClock, irq0: EdgeCounter) -> None:
    pit.write(3, 0x30)  # channel 0, word, mode 0
    assert irq0.level == 0
    pit.write(0, 0x00)
    pit.write(0, 0x10)  # 4096 ticks
    start = irq0.rising
    clock.advance(ticks_to_ns(4095))
    assert irq0.rising == start and pit.get_out(0) == 0
    clock.advance(ticks_to_ns(4096) - ticks_to_ns(4095))
    assert irq0.rising == start + 1 and irq0.level == 1
    clock.advance(NS_PER_S)
    assert irq0.rising == start + 1
    # Reloading the count re-arms it (Linux's oneshot clockevent writes only the count).
    pit.write(0, 0x20)
    pit.write(0, 0x00)
    assert irq0.level == 0
    clock.advance(ticks_to_ns(0x20))
    assert irq0.rising == start + 2


def test_channel2_calibration_with_gate_through_port61(pit: PIT, clock: FakeClock) -> None:
    """arch/x86/kernel/tsc.c: pit_calibrate_tsc()."""
    spk = PCSpeaker(pit)
    latch = PIT_FREQ // (1000 // 50)  # 50 ms
    spk.write(0, (spk.read(0) & ~0x02) | 0x01)
    pit.write(3, 0xB0)
    pit.write(2, latch & 0xFF)
    pit.write(2, latch >> 8)
    polls = 0
    while not spk.read(0) & 0x20:
        clock.advance(1_000_000)
        polls += 1
    assert polls == 50
    assert pit.get_out(2) == 1


def test_mode0_gate_low_pauses_counting(pit: PIT, clock: FakeClock) -> None:
    program(pit, 2, 0, 1000)  # gate of channel 2 is low after reset
    clock.advance(ticks_to_ns(500))
    assert read_count(pit, 2) == 1000
    pit.set_gate(2, 1)
    clock.advance(ticks_to_ns(300))
    assert read_count(pit, 2) == 700
    pit.set_gate(2, 0)
    clock.advance(ticks_to_ns(5000))
    assert read_count(pit, 2) == 700 and pit.get_out(2) == 0
    pit.set_gate(2, 1)
    clock.advance(ticks_to_ns(700))
    assert pit.get_out(2) == 1


def test_mode1_waits_for_gate_trigger(pit: PIT, clock: FakeClock) -> None:
    program(pit, 2, 1, 100)
    clock.advance(ticks_to_ns(1000))
    assert pit.get_out(2) == 1
    pit.set_gate(2, 1)
    assert pit.get_out(2) == 0
    clock.advance(ticks_to_ns(100))
    assert pit.get_out(2) == 1


def test_mode3_square_wave_and_mode4_strobe(pit: PIT, clock: FakeClock) -> None:
    pit.set_gate(2, 1)
    program(pit, 2, 3, 100)
    base = clock.ns
    assert [pit.get_out(2, base + ticks_to_ns(t)) for t in (0, 49, 50, 99, 100)] == [1, 1, 0, 0, 1]
    program(pit, 2, 4, 10)
    base = clock.ns
    assert [pit.get_out(2, base + ticks_to_ns(t)) for t in (0, 9, 10, 11)] == [1, 1, 0, 1]


def test_latch_freezes_value_until_read(pit: PIT, clock: FakeClock) -> None:
    program(pit, 0, 2, 0x1234)
    pit.write(3, 0x00)
    clock.advance(ticks_to_ns(0x34))
    pit.write(3, 0x00)  # second latch ignored
    assert pit.read(0) == 0x34 and pit.read(0) == 0x12
    assert read_count(pit, 0) == 0x1234 - 0x34


def test_lobyte_and_hibyte_access(pit: PIT, clock: FakeClock) -> None:
    pit.write(3, 0x14)  # ch0, lobyte only, mode 2
    pit.write(0, 0x80)
    assert pit.channels[0].count == 0x80
    pit.write(3, 0x24)  # ch0, hibyte only
    pit.write(0, 0x02)
    assert pit.channels[0].count == 0x200
    assert pit.read(0) == 0x02 and pit.read(0) == 0x02


def test_read_back_status_and_count(pit: PIT, clock: FakeClock) -> None:
    pit.write(3, 0xB0)  # ch2, word, mode 0
    pit.write(3, 0xE8)  # read-back status only, ch2
    assert pit.read(2) == 0x40 | 0x30  # null count, word access, mode 0, OUT low
    pit.write(2, 0x10)
    pit.write(2, 0x00)
    pit.set_gate(2, 1)
    clock.advance(ticks_to_ns(0x10))
    pit.write(3, 0xC8)  # read-back status and count, ch2
    assert pit.read(2) == 0x80 | 0x30
    assert pit.read(2) == 0x00 and pit.read(2) == 0x00


def test_bcd_count(pit: PIT, clock: FakeClock) -> None:
    program(pit, 0, 2, 0x1000, bcd=True)  # 1000 decimal
    assert pit.channels[0].count == 1000
    clock.advance(ticks_to_ns(1))
    assert read_count(pit, 0) == 0x0999
    program(pit, 0, 2, 0, bcd=True)
    assert pit.channels[0].count == 10000


def test_control_port_reads_zero_and_bad_offsets_are_logged(pit: PIT) -> None:
    assert pit.read(3) == 0
    assert pit.read(9) == 0xFF
    pit.write(9, 0x55)
    for value in range(256):
        pit.write(3, value)
        pit.write(0, value)
        pit.read(0)
        pit.read(1)


def test_late_timer_coalesces_missed_periods(pit: PIT, clock: FakeClock, irq0: EdgeCounter) -> None:
    program(pit, 0, 2, 1193)  # 1 kHz
    timer = clock.timers[0]
    clock.ns += 5 * NS_PER_S  # the host stalled: the timer is 5000 periods late
    start_fired, start_rising = clock.fired, irq0.rising
    clock.advance(0)
    assert clock.fired - start_fired == 1
    assert irq0.rising - start_rising == 1
    assert timer.expire > clock.ns  # re-armed in the future, not in the past


def test_irq0_through_the_pic(clock: FakeClock) -> None:
    from pemu.hw.intc.i8259 import PICPair

    class Cpu:
        level = 0

        def set(self, level: int) -> None:
            self.level = level

    cpu = Cpu()
    pic = PICPair(cpu)
    for port, value in ((0, 0x11), (1, 0x30), (1, 0x04), (1, 0x01)):
        pic.master.write(port, value)
    pit = PIT(pic.irq_lines[0], clock=clock, timer_factory=clock.timer)
    program(pit, 0, 2, 11932)  # 100 Hz
    taken = 0
    for _ in range(100):
        clock.advance(NS_PER_S // 100)
        while cpu.level:
            assert pic.read_irq() == 0x30
            pic.master.write(0, 0x20)
            taken += 1
    assert taken == pytest.approx(100, abs=1)


def test_irq_control_cuts_channel0_off_irq0(pit: PIT, clock: FakeClock, irq0: EdgeCounter) -> None:
    """The HPET's legacy replacement route takes IRQ 0: while cut off the PIT
    raises nothing and keeps no timer armed; reconnected, it resumes."""
    program(pit, 0, 2, PIT_FREQ // 100)
    pit.irq_control(False)
    start = irq0.rising
    clock.advance(NS_PER_S // 10)
    assert irq0.rising == start
    assert all(t.expire < 0 for t in clock.timers)
    pit.irq_control(True)
    clock.advance(NS_PER_S // 10)
    assert irq0.rising - start == pytest.approx(10, abs=1)
