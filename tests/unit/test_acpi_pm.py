"""ACPI PM register blocks with a fake clock and recorders for SCI and sleep."""

from __future__ import annotations

import pytest

from pemu.hw.acpi.core import (
    PM_TIMER_FREQUENCY,
    AcpiPmRegs,
    Pm1Control,
    Pm1Enable,
    Pm1Status,
)
from pemu.util import log


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class Line:
    def __init__(self) -> None:
        self.levels: list[int] = []

    def set(self, level: int) -> None:
        self.levels.append(level)

    @property
    def level(self) -> int:
        return self.levels[-1] if self.levels else 0


@pytest.fixture
def pm():
    clock = FakeClock()
    sci = Line()
    sleeps: list[int] = []
    armed: list[int | None] = []
    regs = AcpiPmRegs(sci, sleeps.append, clock_ns=clock, arm_timer=armed.append)
    return regs, clock, sci, sleeps, armed


@pytest.fixture
def guest_errors(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(log, "_mask", log.LOG_GUEST_ERROR)
    monkeypatch.setattr(log, "qemu_log", seen.append)
    return seen


def test_timer_frequency(pm):
    regs, clock, *_ = pm
    assert regs.tmr.read(0, 4) == 0
    clock.ns = 1_000_000_000
    assert regs.tmr.read(0, 4) == PM_TIMER_FREQUENCY
    clock.ns = 1_000_000                        # 1 ms = 3579.545 ticks
    assert regs.tmr.read(0, 4) == 3579
    # 24-bit: wraps after 2^24 ticks (about 4.69 s).
    clock.ns = (1 << 24) * 1_000_000_000 // PM_TIMER_FREQUENCY + 1000
    assert regs.tmr.read(0, 4) < 10
    assert regs.tmr.read(0, 4) >> 24 == 0


def test_timer_32bit():
    clock = FakeClock()
    regs = AcpiPmRegs(Line(), lambda s: None, clock_ns=clock, timer_32bit=True)
    clock.ns = 10 * 1_000_000_000
    assert regs.tmr.read(0, 4) == 10 * PM_TIMER_FREQUENCY > 1 << 24


def test_timer_is_read_only(pm, guest_errors):
    regs, clock, *_ = pm
    clock.ns = 5000
    regs.tmr.write(0, 0x12345678, 4)
    assert regs.tmr.read(0, 4) == 5000 * PM_TIMER_FREQUENCY // 10**9
    assert any("read-only" in m for m in guest_errors)


def test_sci_en_always_set(pm):
    regs, *_ = pm
    assert regs.cnt.read(0, 2) & Pm1Control.SCI_EN
    regs.cnt.write(0, 0, 2)
    assert regs.cnt.read(0, 2) == Pm1Control.SCI_EN


def test_slp_en_with_s5_calls_on_sleep(pm):
    regs, _, _, sleeps, _ = pm
    regs.cnt.write(0, (0 << 10) | Pm1Control.SLP_EN | Pm1Control.SCI_EN, 2)
    assert sleeps == [5]
    # SLP_EN is write-only; SLP_TYP keeps its value.
    assert not regs.cnt.read(0, 2) & Pm1Control.SLP_EN


def test_slp_en_through_high_byte(pm):
    # Linux may write the high byte alone; SLP_TYP = 0 -> S5.
    regs, _, _, sleeps, _ = pm
    regs.cnt.write(1, 0x20, 1)
    assert sleeps == [5]


def test_slp_typ_without_slp_en_does_nothing(pm):
    regs, _, _, sleeps, _ = pm
    regs.cnt.write(0, 5 << 10, 2)
    assert sleeps == []
    assert (regs.cnt.read(0, 2) >> 10) & 7 == 5


def test_unsupported_sleep_type_is_a_guest_error(pm, guest_errors):
    regs, _, _, sleeps, _ = pm
    regs.cnt.write(0, (3 << 10) | Pm1Control.SLP_EN, 2)
    assert sleeps == []
    assert any("SLP_TYP 3" in m for m in guest_errors)


def test_status_write_one_to_clear_and_sci(pm):
    regs, _, sci, _, _ = pm
    regs.power_button()
    assert regs.evt.read(0, 2) & Pm1Status.PWRBTN_STS
    assert sci.level == 0                      # not enabled
    regs.evt.write(2, Pm1Enable.PWRBTN_EN, 2)
    assert sci.level == 1
    regs.evt.write(0, 0, 2)                     # writing 0 clears nothing
    assert regs.evt.read(0, 2) & Pm1Status.PWRBTN_STS and sci.level == 1
    regs.evt.write(0, Pm1Status.PWRBTN_STS, 2)
    assert not regs.evt.read(0, 2) & Pm1Status.PWRBTN_STS
    assert sci.level == 0


def test_dword_access_covers_status_and_enable(pm):
    regs, *_ = pm
    regs.power_button()
    regs.evt.write(0, (Pm1Enable.PWRBTN_EN << 16), 4)   # status half 0: nothing cleared
    assert regs.evt.read(0, 4) == (Pm1Enable.PWRBTN_EN << 16) | Pm1Status.PWRBTN_STS
    assert regs.evt.read(3, 1) == Pm1Enable.PWRBTN_EN >> 8


def test_enable_reserved_bits_not_writable(pm):
    regs, *_ = pm
    regs.evt.write(2, 0xFFFF, 2)
    assert regs.evt.read(2, 2) == 0x4721


def test_timer_overflow_sets_tmr_sts(pm):
    regs, clock, sci, _, armed = pm
    regs.evt.write(2, Pm1Enable.TMR_EN, 2)
    # The board is asked to fire at the first change of bit 23: 2^23 ticks.
    assert armed[-1] == -(-(1 << 23) * 10**9 // PM_TIMER_FREQUENCY)
    clock.ns = armed[-1] - 1
    regs.timer_expired()
    assert not regs.evt.read(0, 2) & Pm1Status.TMR_STS
    clock.ns = armed[-1]
    regs.timer_expired()
    assert regs.evt.read(0, 2) & Pm1Status.TMR_STS
    assert sci.level == 1
    assert armed[-1] == -(-(1 << 24) * 10**9 // PM_TIMER_FREQUENCY)
    regs.evt.write(0, Pm1Status.TMR_STS, 2)
    assert sci.level == 0
    regs.evt.write(2, 0, 2)
    assert armed[-1] is None


def test_gpe0_w1c_and_enable(pm):
    regs, _, sci, _, _ = pm
    assert regs.gpe0.length == 16
    regs.gpe_raise(1)
    assert regs.gpe0.read(0, 1) == 0x02 and sci.level == 0
    regs.gpe0.write(8, 0x02, 1)                 # enable half starts at 8
    assert sci.level == 1
    assert regs.gpe0.read(8, 1) == 0x02
    regs.gpe0.write(0, 0x01, 1)                 # other bit: nothing cleared
    assert regs.gpe0.read(0, 1) == 0x02
    regs.gpe0.write(0, 0x02, 1)
    assert regs.gpe0.read(0, 4) == 0 and sci.level == 0
    with pytest.raises(ValueError):
        regs.gpe_raise(64)


@pytest.mark.parametrize("block, offset, size", [
    ("evt", 3, 2), ("evt", 4, 1), ("evt", 0, 3), ("cnt", 1, 2), ("tmr", 0, 8),
    ("gpe0", 15, 2), ("evt", -1, 1),
])
def test_bad_accesses_are_guest_errors(pm, guest_errors, block, offset, size):
    regs, _, _, sleeps, _ = pm
    blk = getattr(regs, block)
    assert blk.read(offset, size) == 0
    blk.write(offset, 0xFFFFFFFF, size)
    assert sleeps == []
    assert len(guest_errors) == 2


def test_reset(pm):
    regs, _, sci, _, _ = pm
    regs.power_button()
    regs.evt.write(2, Pm1Enable.PWRBTN_EN, 2)
    regs.cnt.write(0, 5 << 10, 2)
    regs.reset()
    assert regs.evt.read(0, 4) == 0
    assert regs.cnt.read(0, 2) == Pm1Control.SCI_EN
    assert sci.level == 0


def test_default_clock_uses_qemu_timer():
    regs = AcpiPmRegs(Line(), lambda s: None)
    regs.evt.write(2, Pm1Enable.TMR_EN, 2)
    assert regs._timer is not None and regs._timer.pending()
    regs.evt.write(2, 0, 2)
    assert not regs._timer.pending()
