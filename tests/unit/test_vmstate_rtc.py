"""Migratable state of the MC146818 RTC: CMOS, time of day and interrupts go
on after a load into a fresh RTC whose host clock says something else."""

from __future__ import annotations

import calendar

import pytest

from pemu.hw.rtc import mc146818rtc as r
from pemu.hw.rtc.mc146818rtc import MC146818RTC, VMSTATE_MC146818RTC
from tests.unit.test_rtc import NS, Rig, clock_regs
from tests.unit.vmstate_helpers import assert_refused, roundtrip, saved_with

# The destination's host believes it is another day entirely.
OTHER_HOST_NS = calendar.timegm((2031, 7, 1, 0, 0, 0, 0, 0, 0)) * NS


class DestRig(Rig):
    def __init__(self, now: int) -> None:
        super().__init__()
        self.now = now
        self.timers.clear()
        self.rtc = MC146818RTC(self.irq, clock=lambda: self.now, host_time_ns=lambda: OTHER_HOST_NS,
                               timer_factory=self._timer)


def _busy(rig: Rig) -> None:
    rig.put(0x40, 0x5A)                             # a CMOS byte of the firmware's
    rig.put(r.RTC_REG_A, 0x26)                      # 1024 Hz periodic
    rig.put(r.RTC_REG_B, r.REG_B_24H | r.REG_B_PIE | r.REG_B_UIE)
    rig.advance(NS // 3)
    rig.get(r.RTC_REG_C)
    rig.rtc.write(0, 0x80 | 0x40)                   # index 0x40, NMI masked


def test_rtc_roundtrip_time_of_day_and_interrupts_continue() -> None:
    src = Rig()
    _busy(src)
    dst = DestRig(src.now)       # the virtual clock is restored before the devices
    roundtrip(VMSTATE_MC146818RTC, src.rtc, dst.rtc)
    assert dst.rtc.read(1) == 0x5A and dst.rtc.nmi_disabled
    assert clock_regs(dst) == clock_regs(src)
    assert dst.rtc.rtc_ns() == src.rtc.rtc_ns()
    assert [t.expire for t in dst.timers] == [t.expire for t in src.timers]
    assert all(t.expire > dst.now for t in dst.timers)
    # Run on: the periodic interrupt keeps its 1024 Hz grid ...
    dst.irq.rising = 0
    for _ in range(1024):
        dst.advance(NS // 1024)
        dst.get(r.RTC_REG_C)
    assert dst.irq.rising == pytest.approx(1024, abs=1)
    # ... and the time of day went on by one second from the source's, not from the host's.
    src.advance(NS)
    assert clock_regs(dst) == clock_regs(src)
    assert dst.rtc.rtc_ns() // NS == calendar.timegm((2024, 2, 27, 13, 45, 59, 0, 0, 0))


def test_rtc_update_interrupt_fires_after_load() -> None:
    src = Rig()
    src.put(r.RTC_REG_B, r.REG_B_24H | r.REG_B_UIE)
    src.get(r.RTC_REG_C)
    dst = DestRig(src.now)
    roundtrip(VMSTATE_MC146818RTC, src.rtc, dst.rtc)
    # Host time was 0.25 s into the second: the update comes 0.75 s later.
    dst.advance(NS * 3 // 4 - 1)
    assert dst.irq.level == 0
    dst.advance(1)
    assert dst.irq.level == 1 and dst.get(r.RTC_REG_C) & r.REG_C_UF


def test_rtc_roundtrip_while_the_guest_sets_the_time() -> None:
    src = Rig()
    src.put(r.RTC_REG_B, r.REG_B_SET | r.REG_B_24H)
    src.put(r.RTC_HOURS, 0x08)
    dst = DestRig(src.now)
    roundtrip(VMSTATE_MC146818RTC, src.rtc, dst.rtc)
    dst.advance(5 * NS)
    assert dst.get(r.RTC_HOURS) == 0x08 and dst.get(r.RTC_SECONDS) == 0x58   # still held
    dst.put(r.RTC_REG_B, r.REG_B_24H)
    dst.advance(2 * NS)
    assert clock_regs(dst)[:3] == [0x00, 0x46, 0x08]


def test_rtc_set_to_year_9999_migrates() -> None:
    src = Rig()
    src.put(r.RTC_REG_B, r.REG_B_SET | r.REG_B_24H)
    src.put(r.RTC_IBM_CENTURY_BYTE, 0x99)
    src.put(r.RTC_YEAR, 0x99)
    src.put(r.RTC_REG_B, r.REG_B_24H)
    dst = DestRig(src.now)
    roundtrip(VMSTATE_MC146818RTC, src.rtc, dst.rtc)
    assert clock_regs(dst)[6:] == [0x99, 0x99]


@pytest.mark.parametrize(("path", "value", "match"), [
    ("index", 0x80, "index"),
    ("_irq_level", 2, "_irq_level"),
    ("_rtc_base_ns", 1 << 70, "outside years"),
    ("_held_ns", -(1 << 70), "outside years"),
])
def test_rtc_refuses_impossible_state(path: str, value: int, match: str) -> None:
    src = Rig()
    data = saved_with(VMSTATE_MC146818RTC, src.rtc, path, value)
    assert_refused(VMSTATE_MC146818RTC, DestRig(src.now).rtc, data, match)
