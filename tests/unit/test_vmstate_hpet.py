"""Migratable state of the HPET: the counter reads on from the restored
virtual clock, the comparators fire at the same instants, legacy replacement
stays as it was; streams with impossible values are refused."""

from __future__ import annotations

import pytest

from pemu.hw.timer.hpet import (
    HPET,
    HPET_CFG,
    HPET_CFG_ENABLE,
    HPET_CFG_LEGACY,
    HPET_COUNTER,
    HPET_STATUS,
    HPET_TN_32BIT,
    HPET_TN_ENABLE,
    HPET_TN_PERIODIC,
    HPET_TN_TYPE_LEVEL,
    VMSTATE_HPET_MODEL,
)
from tests.unit.fakes import EdgeCounter, FakeClock
from tests.unit.test_hpet import timer_reg
from tests.unit.vmstate_helpers import assert_refused, roundtrip, saved_with


class Rig:
    def __init__(self, start_ns: int = 5_000_000_000, num_timers: int = 3) -> None:
        self.clock = FakeClock(start_ns, max_fires=10_000)
        self.lines = [EdgeCounter() for _ in range(24)]
        self.pit: list[bool] = []
        self.hpet = HPET(self.lines, clock=self.clock, timer_factory=self.clock.timer,
                         pit_enabled=self.pit.append, num_timers=num_timers)
        self.pit.clear()

    def registers(self) -> list[int]:
        h = self.hpet
        regs = [h.read(HPET_CFG, 8), h.read(HPET_STATUS, 8), h.read(HPET_COUNTER, 8)]
        for n in range(h.num_timers):
            regs += [h.read(timer_reg(n, 0), 8), h.read(timer_reg(n, 8), 8), h.read(timer_reg(n, 0x10), 8)]
        return regs


def _busy() -> Rig:
    rig = Rig()
    h = rig.hpet
    h.write(timer_reg(0, 0), HPET_TN_ENABLE | HPET_TN_PERIODIC, 4)
    h.write(timer_reg(0, 8), 100_000, 4)                   # 1 ms period
    h.write(timer_reg(2, 0), HPET_TN_ENABLE | HPET_TN_TYPE_LEVEL | (20 << 9), 4)
    h.write(timer_reg(2, 8), 50, 4)                        # fires 500 ns after enable
    h.write(timer_reg(1, 0), HPET_TN_ENABLE | HPET_TN_32BIT, 4)
    h.write(timer_reg(1, 8), 0x7000_0000, 4)
    h.write(HPET_CFG, HPET_CFG_ENABLE | HPET_CFG_LEGACY, 4)
    rig.clock.advance(2_500_000)                           # 2.5 periods of timer 0
    return rig


def test_hpet_roundtrip_counter_and_comparators_go_on_after_load() -> None:
    src = _busy()
    assert src.hpet.isr == 0b100 and src.lines[20].level == 1
    dst = Rig(start_ns=src.clock.ns)        # the virtual clock is restored before the devices
    roundtrip(VMSTATE_HPET_MODEL, src.hpet, dst.hpet)
    assert dst.registers() == src.registers()
    assert [t.expire_time for t in dst.clock.timers] == [t.expire_time for t in src.clock.timers]
    assert dst.pit == []                    # legacy routing is not redone: the PIT saved its own cut-off
    # Run on: the counter reads on from the loaded value ...
    src_edges = src.lines[0].rising
    for rig in (src, dst):
        rig.clock.advance(1_000_000)
    assert dst.hpet.read(HPET_COUNTER, 8) == src.hpet.read(HPET_COUNTER, 8) == 350_000
    # ... timer 0 drove IRQ 0 (legacy route) once more, at the same instant as on the source ...
    assert dst.lines[0].rising == src.lines[0].rising - src_edges == 1
    assert [t.expire_time for t in dst.clock.timers] == [t.expire_time for t in src.clock.timers]
    # ... and the level-triggered timer 2 stays asserted until its status bit is cleared.
    dst.hpet.write(HPET_STATUS, 0b100, 4)
    assert dst.hpet.isr == 0 and dst.lines[20].level == 0


@pytest.mark.parametrize(("path", "value", "match"), [
    ("config", 0x4, "reserved bits"),
    ("isr", 0b1000, "does not have"),
    ("timers.0.config", HPET_TN_ENABLE, "capabilities"),
    ("timers.1.cmp", 1 << 40, "32-bit mode"),
])
def test_hpet_refuses_impossible_state(path: str, value: int, match: str) -> None:
    data = saved_with(VMSTATE_HPET_MODEL, _busy().hpet, path, value)
    assert_refused(VMSTATE_HPET_MODEL, Rig().hpet, data, match)


def test_hpet_refuses_a_stream_with_another_number_of_timers() -> None:
    data = saved_with(VMSTATE_HPET_MODEL, Rig().hpet, "config", 0)
    assert_refused(VMSTATE_HPET_MODEL, Rig(num_timers=4).hpet, data, "3 timers in the stream, this HPET has 4")
