"""The local APIC's migratable state (VMSTATE_APIC), without a CPU: saved,
loaded into a fresh APIC on a clock at the same virtual time, compared
(the same bytes again, every register reads the same), then run on: a
pending interrupt is signalled to the CPU and delivered, the timer fires at
the same virtual instant as on the source.  Bad values are refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pemu.hw.intc.apic import APIC, VMSTATE_APIC
from pemu.hw.intc.apic_common import MSR_IA32_APICBASE_ENABLE, MSR_IA32_APICBASE_EXTD
from pemu.migration.vmstate import VMStateError, vmstate_load_bytes, vmstate_save_bytes
from tests.unit.fakes import FakeClock
from tests.unit.test_apic import (
    DFR,
    EOI,
    ICR_HI,
    ICR_LO,
    LDR,
    LVT_LINT0,
    LVT_TIMER,
    SVR,
    TDCR,
    TMCCT,
    TMICT,
    TPR,
    FakeCPU,
)

REGISTERS = range(0x20, 0x400, 0x10)


def fresh(clock: FakeClock, apic_id: int = 1, **kw: bool) -> tuple[APIC, FakeCPU]:
    cpu = FakeCPU()
    apic = APIC(apic_id, cpu=cpu, clock=clock, timer_factory=clock.timer, **kw)
    apic.reset()
    cpu.apic = apic
    return apic, cpu


def busy_apic() -> tuple[APIC, FakeCPU, FakeClock]:
    """An APIC with a periodic timer a quarter through its period, one
    vector in service and a higher one pending."""
    clock = FakeClock()
    apic, cpu = fresh(clock)
    apic.write(SVR, 0x1FF, 4)
    apic.write(TPR, 0x20, 4)
    apic.write(LDR, 0x04000000, 4)
    apic.write(DFR, 0x0FFFFFFF, 4)
    apic.write(ICR_HI, 0x03000000, 4)
    apic.write(ICR_LO, 0x000040F0, 4)   # an IPI to APIC 3 (no bus: dropped) leaves the ICR as written
    apic.write(LVT_LINT0, 0x700, 4)
    apic.write(TDCR, 0xB, 4)
    apic.write(LVT_TIMER, 0x20030, 4)   # periodic, vector 0x30
    apic.write(TMICT, 1_000_000, 4)
    clock.advance(250_000)
    apic.set_irq(0x51, 0)
    assert apic.get_interrupt() == 0x51   # in service
    apic.set_irq(0x61, 1)                 # pending, level
    return apic, cpu, clock


def test_apic_state_moves_to_a_fresh_apic_and_runs_on() -> None:
    source, source_cpu, source_clock = busy_apic()
    data = vmstate_save_bytes(VMSTATE_APIC, source)

    clock = FakeClock(start_ns=source_clock.ns)   # the virtual clock is restored before devices
    dest, cpu = fresh(clock)
    assert not cpu.pending
    vmstate_load_bytes(VMSTATE_APIC, dest, data)
    assert vmstate_save_bytes(VMSTATE_APIC, dest) == data
    for offset in REGISTERS:
        assert dest.read(offset, 4) == source.read(offset, 4), hex(offset)
    assert dest.read(TMCCT, 4) == 750_000
    assert cpu.pending   # the pending vector is signalled to the CPU again

    # Run on: the pending interrupt is delivered, then the one in service ends.
    assert dest.get_interrupt() == 0x61
    dest.write(EOI, 0, 4)
    dest.write(EOI, 0, 4)
    assert dest.isr == 0
    # The timer fires where the source's does: 750 us of virtual time later.
    for apic, c in ((dest, clock), (source, source_clock)):
        c.advance(749_999)
        assert not apic.irr & 1 << 0x30
        c.advance(1)
        assert apic.irr & 1 << 0x30
    assert dest.get_interrupt() == 0x30


def test_x2apic_mode_and_an_armed_one_shot_timer_survive() -> None:
    clock = FakeClock()
    source, _ = fresh(clock)
    source.write(SVR, 0x1FF, 4)
    assert source.set_base(source.get_base() | MSR_IA32_APICBASE_EXTD)
    assert source.write_msr(0x832, 0x40)        # LVT timer: one-shot, vector 0x40
    assert source.write_msr(0x83E, 0x3)         # divide by 16
    assert source.write_msr(0x838, 1000)        # 16000 ns
    data = vmstate_save_bytes(VMSTATE_APIC, source)
    dest, _ = fresh(FakeClock(start_ns=clock.ns))
    vmstate_load_bytes(VMSTATE_APIC, dest, data)
    assert dest.x2apic_mode and dest.read_msr(0x802) == 1 and dest.read_msr(0x80D) == source.read_msr(0x80D)
    assert dest.timer_expiry == clock.ns + 16_000
    dest.clock.advance(16_000)   # type: ignore[attr-defined]
    assert dest.get_interrupt() == 0x40


def _set(attr: str, value: object) -> Callable[[APIC], None]:
    return lambda apic: setattr(apic, attr, value)


def _lvt(n: int, value: int) -> Callable[[APIC], None]:
    def change(apic: APIC) -> None:
        apic.lvt[n] = value

    return change


@pytest.mark.parametrize("change, field", [
    (_set("irr", 1 << 5), "irr"),                            # vector 5 is not an interrupt
    (_set("isr", 1 << 15), "isr"),
    (_lvt(0, 0x60030), "lvt"),                               # timer mode 3 (reserved)
    (_lvt(3, 0x300), "lvt"),                                 # LINT0 with reserved delivery mode 3
    (_lvt(5, 0x1000000), "lvt"),                             # a bit outside the register
    (_set("divide_conf", 0x4), "divide_conf"),
    (_set("dest_mode", 0x5), "dest_mode"),
    (_set("icr_low", 1 << 13), "icr_low"),
    (_set("apicbase", 0xFEE00000 | MSR_IA32_APICBASE_EXTD), "apicbase"),   # x2APIC while disabled
    (_set("apicbase", 0xFEE00000 | MSR_IA32_APICBASE_ENABLE | 1 << 50), "apicbase"),
    (_set("saved_initial_apic_id", 7), "initial_apic_id"),   # another CPU's APIC
    (_set("timer_expiry", -5), "timer_expiry"),
    (lambda apic: (setattr(apic, "initial_count", 0), setattr(apic, "timer_expiry", 123)), "timer_expiry"),
])
def test_bad_values_are_refused(change: Callable[[APIC], None], field: str) -> None:
    source, _, clock = busy_apic()
    change(source)
    data = vmstate_save_bytes(VMSTATE_APIC, source)
    dest, _ = fresh(FakeClock(start_ns=clock.ns))
    with pytest.raises(VMStateError, match=field):
        vmstate_load_bytes(VMSTATE_APIC, dest, data)


def test_tsc_deadline_mode_is_refused_by_an_apic_without_it() -> None:
    clock = FakeClock()
    source, _ = fresh(clock)
    source.write(SVR, 0x1FF, 4)
    source.write(LVT_TIMER, 0x40030, 4)
    source.set_tsc_deadline(clock.ns + 5000)
    data = vmstate_save_bytes(VMSTATE_APIC, source)
    with_it, _ = fresh(FakeClock(start_ns=clock.ns))
    vmstate_load_bytes(VMSTATE_APIC, with_it, data)
    assert with_it.timer_expiry == clock.ns + 5000
    without, _ = fresh(FakeClock(start_ns=clock.ns), tsc_deadline=False)
    with pytest.raises(VMStateError, match="TSC-deadline"):
        vmstate_load_bytes(VMSTATE_APIC, without, data)
