"""VMSTATE_ACPI_PM on the plain register model (fake clock, recorded SCI
and timer arming): a PM block saved with the timer's overflow event armed
and a GPE pending is loaded into a fresh block sharing the clock (the
migrated virtual clock); the timer reads on, the overflow one-shot is armed
for the same instant and raises TMR_STS and the SCI when it fires."""

from __future__ import annotations

import pytest

from pemu.hw.acpi.core import PM_TIMER_FREQUENCY, VMSTATE_ACPI_PM, AcpiPmRegs, Pm1Enable, Pm1Status
from pemu.migration.vmstate import VMStateError, vmstate_load_bytes, vmstate_save_bytes
from tests.unit.vmstate_helpers import roundtrip


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class Line:
    def __init__(self) -> None:
        self.levels: list[int] = []

    def set(self, level: int) -> None:
        self.levels.append(level)


def make(clock: Clock) -> tuple[AcpiPmRegs, Line, list[int | None]]:
    sci, armed = Line(), []
    regs = AcpiPmRegs(sci, lambda state: None, clock_ns=clock, arm_timer=armed.append)
    return regs, sci, armed


def test_timer_overflow_and_sci_carry_over() -> None:
    clock = Clock()
    src, _, src_armed = make(clock)
    clock.ns = 3_000_000_000                                           # tick 0xA3DA51: the top bit set
    src.evt.write(2, Pm1Enable.TMR_EN | Pm1Enable.PWRBTN_EN, 2)
    src.evt.write(0, Pm1Status.TMR_STS, 2)                             # the overflow at 0x800000 seen
    src.gpe0.write(8, 0x04, 1)                                         # GPE0_EN bit 2
    src.gpe_raise(2)
    dst, dst_sci, dst_armed = make(clock)
    dst_armed.clear()
    roundtrip(VMSTATE_ACPI_PM, src, dst)
    assert dst.tmr.read(0, 4) == src.tmr.read(0, 4) == 3 * PM_TIMER_FREQUENCY & 0xFFFFFF
    assert dst.evt.read(0, 4) == src.evt.read(0, 4) and dst.gpe0.read(0, 16) == src.gpe0.read(0, 16)
    # Armed for the source's next overflow (the source's own one-shot, armed
    # before it noticed the previous one, would fire and re-arm for it).
    assert dst_armed == [-(-(1 << 24) * 10**9 // PM_TIMER_FREQUENCY)] and src_armed
    assert dst.sci_level == 1 and dst_sci.levels == [0]                # the level is loaded, not driven
    # Run on: the GPE is acknowledged (SCI down), then the overflow comes (SCI up, TMR_STS).
    dst.gpe0.write(0, 0x04, 1)
    assert dst_sci.levels[-1] == 0 and dst.sci_level == 0
    deadline = dst_armed[-1]
    assert deadline is not None
    clock.ns = deadline
    dst.timer_expired()
    assert dst.evt.read(0, 2) & Pm1Status.TMR_STS and dst.sci_level == 1 and dst_sci.levels[-1] == 1
    assert dst.tmr.read(0, 4) < 2                                      # wrapped: 2^24 ticks
    assert dst_armed[-1] is not None and dst_armed[-1] > deadline


@pytest.mark.parametrize("offset, value, match", [
    (0, b"\x00\x02", "pm1_sts: invalid value 2"),
    (2, b"\x00\x02", "pm1_en: invalid value 2"),
    (4, b"\x00\x00", "pm1_cnt: invalid value 0"),
    (4, b"\x20\x01", "pm1_cnt: invalid value"),                        # SLP_EN is never stored
    (6 + 4 + 8 + 4 + 8, (0x1234).to_bytes(8, "big"), "PM timer overflow at tick 0x1234"),
    (6 + 4 + 8 + 4 + 8, (1 << 24).to_bytes(8, "big"), "PM timer overflow at tick 0x1000000"),
])
def test_bad_values_are_refused(offset: int, value: bytes, match: str) -> None:
    clock = Clock()
    src, _, _ = make(clock)
    data = vmstate_save_bytes(VMSTATE_ACPI_PM, src)
    bad = data[:offset] + value + data[offset + len(value):]
    dst, _, _ = make(clock)
    with pytest.raises(VMStateError, match=match):
        vmstate_load_bytes(VMSTATE_ACPI_PM, dst, bad)
