"""The local APIC model without a CPU: registers, priorities, the timer on a
fake clock, IPIs between APICs on one bus, IA32_APIC_BASE and x2APIC."""

from __future__ import annotations

import pytest

from pemu.hw.intc.apic import (
    APIC,
    MIN_TIMER_PERIOD_NS,
    APICMemory,
)
from pemu.hw.intc.apic_common import (
    APIC_DEFAULT_ADDRESS,
    MSR_IA32_APICBASE_BSP,
    MSR_IA32_APICBASE_ENABLE,
    MSR_IA32_APICBASE_EXTD,
    APICBus,
)
from tests.unit.fakes import FakeClock

ID, VER, TPR, APR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR, ICR_LO, ICR_HI = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TMICT, TMCCT, TDCR = 0x380, 0x390, 0x3E0


class FakeCPU:
    """Records what the APIC asks of its processor; INIT resets the APIC as a CPU would."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.pending = False
        self.apic: APIC | None = None

    def apic_irq_changed(self, pending: bool) -> None:
        self.pending = pending

    def apic_extint(self) -> None:
        self.events.append(("extint", 0))

    def apic_nmi(self) -> None:
        self.events.append(("nmi", 0))

    def apic_smi(self) -> None:
        self.events.append(("smi", 0))

    def apic_init(self) -> None:
        self.events.append(("init", 0))
        assert self.apic is not None
        self.apic.init_reset()

    def apic_sipi(self, vector: int) -> None:
        self.events.append(("sipi", vector))


def make(n: int = 1, clock: FakeClock | None = None) -> tuple[list[APIC], list[FakeCPU], APICBus, FakeClock]:
    clock = clock or FakeClock(max_fires=1000)
    bus = APICBus()
    apics, cpus = [], []
    for i in range(n):
        cpu = FakeCPU()
        apic = APIC(i, bsp=i == 0, cpu=cpu, clock=clock, timer_factory=clock.timer)
        apic.reset()
        cpu.apic = apic
        bus.attach(apic)
        apics.append(apic)
        cpus.append(cpu)
    return apics, cpus, bus, clock


def enable(apic: APIC, svr: int = 0x1FF) -> None:
    apic.write(SVR, svr, 4)


# --- registers ---------------------------------------------------------------------


@pytest.mark.parametrize("offset,value", [
    (ID, 0x00000000),
    (VER, 0x00050014),
    (TPR, 0),
    (PPR, 0),
    (LDR, 0),
    (DFR, 0xFFFFFFFF),
    (SVR, 0xFF),
    (ESR, 0),
    (ICR_LO, 0),
    (ICR_HI, 0),
    (LVT_TIMER, 0x10000),
    (LVT_THERMAL, 0x10000),
    (LVT_PERF, 0x10000),
    (LVT_LINT0, 0x10000),
    (LVT_LINT1, 0x10000),
    (LVT_ERROR, 0x10000),
    (TMICT, 0),
    (TMCCT, 0),
    (TDCR, 0),
])
def test_reset_values(offset: int, value: int) -> None:
    (apic,), *_ = make()
    assert apic.read(offset, 4) == value


def test_ap_reset_and_firmware_virtual_wire() -> None:
    apics, *_ = make(2)
    assert not apics[0].accept_pic_intr()      # masked LINT0: the 8259 cannot reach the CPU
    apics[0].firmware_virtual_wire()
    assert apics[0].read(LVT_LINT0, 4) == 0x700 and apics[0].read(LVT_LINT1, 4) == 0x400
    assert apics[0].accept_pic_intr()
    assert apics[1].read(ID, 4) == 1 << 24
    assert apics[1].wait_for_sipi and not apics[0].wait_for_sipi


@pytest.mark.parametrize("offset,write,read", [
    (ID, 0x05000000, 0x05000000),
    (VER, 0xFFFFFFFF, 0x00050014),        # read-only
    (TPR, 0xFFFFFFFF, 0xFF),              # bits 31:8 reserved
    (PPR, 0xFF, 0),                       # read-only
    (LDR, 0xFFFFFFFF, 0xFF000000),
    (DFR, 0x0FFFFFFF, 0x0FFFFFFF),        # cluster model
    (SVR, 0xFFFFFFFF, 0x3FF),             # vector, enable, focus
    (ISR, 0xFFFFFFFF, 0),                 # read-only
    (TMR, 0xFFFFFFFF, 0),
    (IRR, 0xFFFFFFFF, 0),
    (ICR_HI, 0xFFFFFFFF, 0xFF000000),
    (LVT_TIMER, 0xFFFFFFFF, 0x100FF),     # vector, mask; mode 3 is reserved and taken as one-shot
    (LVT_THERMAL, 0xFFFFFFFF, 0x107FF),
    (LVT_PERF, 0xFFFFFFFF, 0x107FF),
    (LVT_LINT0, 0xFFFFFFFF, 0x1A7FF),     # remote IRR and delivery status are read-only
    (LVT_LINT1, 0xFFFFFFFF, 0x1A7FF),
    (LVT_ERROR, 0xFFFFFFFF, 0x100FF),
    (TDCR, 0xFFFFFFFF, 0xB),
    (TMCCT, 0x1234, 0),
])
def test_register_write_masks(offset: int, write: int, read: int) -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.write(offset, write, 4)
    assert apic.read(offset, 4) == read


def test_lvt_timer_mode_3_is_reserved() -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.write(LVT_TIMER, 0x60030, 4)
    assert apic.read(LVT_TIMER, 4) == 0x00030


def test_software_disable_masks_every_lvt() -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.write(LVT_ERROR, 0xFE, 4)
    assert apic.read(LVT_ERROR, 4) == 0xFE
    apic.write(SVR, 0xFF, 4)
    for reg in (LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR):
        assert apic.read(reg, 4) & 0x10000
    apic.write(LVT_ERROR, 0xFE, 4)             # cannot be unmasked while disabled
    assert apic.read(LVT_ERROR, 4) == 0x100FE


def test_esr_is_latched_by_a_write() -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.write(LVT_ERROR, 0xFE, 4)
    apic.read(0x0, 4)                          # reserved register: illegal address
    assert apic.read(ESR, 4) == 0              # not visible before a write
    assert apic.irr >> 0xFE & 1                # but the error LVT fired
    apic.write(ESR, 0, 4)
    assert apic.read(ESR, 4) == 0x80
    apic.write(ESR, 0, 4)
    assert apic.read(ESR, 4) == 0


def test_bad_access_sizes() -> None:
    (apic,), *_ = make()
    apic.write(TPR, 0x20, 2)
    assert apic.read(TPR, 4) == 0
    apic.write(TPR, 0x20, 4)
    assert apic.read(TPR, 1) == 0
    assert apic.read(TPR + 4, 4) == 0


# --- acceptance and priorities --------------------------------------------------------


def test_irr_isr_eoi_and_nesting() -> None:
    (apic,), (cpu,), *_ = make()
    enable(apic)
    apic.set_irq(0x31, 0)
    assert cpu.pending and apic.has_interrupt()
    assert apic.read(IRR + 0x10, 4) == 1 << 0x11
    assert apic.get_interrupt() == 0x31
    assert not cpu.pending
    assert apic.read(ISR + 0x10, 4) == 1 << 0x11
    assert apic.read(PPR, 4) == 0x30
    apic.set_irq(0x35, 0)                      # same class: waits
    assert not apic.has_interrupt() and apic.get_interrupt() == -1
    apic.set_irq(0x41, 0)                      # higher class: nests
    assert apic.get_interrupt() == 0x41
    apic.write(EOI, 0, 4)                      # EOI ends the highest in service
    assert apic.isr == 1 << 0x31
    apic.write(EOI, 0, 4)
    assert apic.get_interrupt() == 0x35
    apic.write(EOI, 0, 4)
    assert apic.isr == 0 and apic.read(PPR, 4) == 0


@pytest.mark.parametrize("tpr,vector,deliverable", [
    (0x00, 0x20, True),
    (0x20, 0x2F, False),      # same class as TPR
    (0x2F, 0x30, True),       # TPR's low bits do not matter
    (0x30, 0x2F, False),
    (0xF0, 0xFF, False),
])
def test_tpr_masks_by_class(tpr: int, vector: int, deliverable: bool) -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.write(TPR, tpr, 4)
    apic.set_irq(vector, 0)
    assert apic.has_interrupt() is deliverable
    assert apic.read(PPR, 4) == tpr


def test_ppr_and_apr() -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.write(TPR, 0x25, 4)
    apic.set_irq(0x51, 0)
    apic.get_interrupt()
    assert apic.read(PPR, 4) == 0x50
    apic.write(TPR, 0x65, 4)
    assert apic.read(PPR, 4) == 0x65
    assert apic.read(APR, 4) == 0x65
    apic.write(TPR, 0x10, 4)
    apic.set_irq(0x71, 0)
    assert apic.read(APR, 4) == 0x70


def test_disabled_apic_takes_no_fixed_interrupts() -> None:
    (apic,), *_ = make()
    apic.accept_message(0, 0x40, 0)
    assert apic.irr == 0
    enable(apic)
    apic.accept_message(0, 0x40, 0)
    assert apic.irr == 1 << 0x40


def test_illegal_vector_is_an_error() -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.set_irq(0x0E, 0)
    assert apic.irr == 0
    apic.write(ESR, 0, 4)
    assert apic.read(ESR, 4) == 0x40


def test_level_eoi_broadcasts_to_ioapic() -> None:
    (apic,), _, bus, _ = make()
    seen: list[int] = []

    class IOAPICStub:
        def eoi(self, vector: int) -> None:
            seen.append(vector)

    bus.ioapics.append(IOAPICStub())  # type: ignore[arg-type]
    enable(apic)
    apic.set_irq(0x61, 1)
    apic.set_irq(0x62, 0)
    assert apic.read(TMR + 0x30, 4) == 1 << 1
    assert apic.get_interrupt() == 0x62
    apic.write(EOI, 0, 4)
    assert seen == []                          # edge: no broadcast
    assert apic.get_interrupt() == 0x61
    apic.write(EOI, 0, 4)
    assert seen == [0x61]


def test_lint0_extint_and_lint1_nmi() -> None:
    (apic,), (cpu,), *_ = make()
    apic.firmware_virtual_wire()
    apic.deliver_pic_intr(1)
    apic.deliver_nmi()
    assert cpu.events == [("extint", 0), ("nmi", 0)]
    enable(apic)
    apic.write(LVT_LINT0, 0x10700, 4)          # masked: the 8259 no longer reaches the CPU
    assert not apic.accept_pic_intr()
    apic.deliver_pic_intr(1)
    assert cpu.events == [("extint", 0), ("nmi", 0)]


def test_unmasking_lint0_while_the_pic_is_asserted() -> None:
    (apic,), (cpu,), *_ = make()
    enable(apic)
    apic.deliver_pic_intr(1)                   # LINT0 masked: nothing
    assert cpu.events == []
    apic.write(LVT_LINT0, 0x700, 4)
    assert cpu.events == [("extint", 0)]
    apic.write(LVT_LINT0, 0x10700, 4)
    apic.deliver_pic_intr(0)
    apic.write(LVT_LINT0, 0x700, 4)
    assert cpu.events == [("extint", 0)]


def test_lint0_fixed_level() -> None:
    (apic,), *_ = make()
    enable(apic)
    apic.write(LVT_LINT0, 0x8000 | 0x45, 4)
    apic.deliver_pic_intr(1)
    assert apic.irr == 1 << 0x45 and apic.tmr == 1 << 0x45
    assert apic.read(LVT_LINT0, 4) & 0x4000                # remote IRR
    apic.deliver_pic_intr(0)                               # withdrawn before service
    assert apic.irr == 0 and not apic.read(LVT_LINT0, 4) & 0x4000
    apic.deliver_pic_intr(1)
    assert apic.get_interrupt() == 0x45
    apic.write(LVT_LINT0, 0x8000 | 0x45, 4)               # remote IRR is read-only
    assert apic.read(LVT_LINT0, 4) & 0x4000
    apic.deliver_pic_intr(0)
    apic.deliver_pic_intr(1)                               # not re-accepted before the EOI
    assert apic.irr == 0
    apic.write(EOI, 0, 4)                                  # still asserted: delivered again
    assert apic.irr == 1 << 0x45 and apic.read(LVT_LINT0, 4) & 0x4000
    apic.deliver_pic_intr(0)
    assert apic.irr == 0 and not apic.read(LVT_LINT0, 4) & 0x4000


def test_globally_disabled_apic_passes_the_pic_through() -> None:
    (apic,), (cpu,), *_ = make()
    assert apic.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_BSP)
    assert not apic.hw_enabled and apic.accept_pic_intr()
    apic.write(LVT_LINT0, 0x10000, 4)
    apic.deliver_pic_intr(1)
    assert cpu.events == [("extint", 0)]


# --- the timer -----------------------------------------------------------------------


@pytest.mark.parametrize("tdcr,shift", [
    (0x0, 1), (0x1, 2), (0x2, 3), (0x3, 4), (0x8, 5), (0x9, 6), (0xA, 7), (0xB, 0),
])
def test_timer_divide(tdcr: int, shift: int) -> None:
    (apic,), _, _, clock = make()
    enable(apic)
    apic.write(TDCR, tdcr, 4)
    apic.write(LVT_TIMER, 0x30, 4)
    apic.write(TMICT, 1000, 4)
    clock.advance(100 << shift)
    assert apic.read(TMCCT, 4) == 900
    clock.advance((900 << shift) - 1)
    assert apic.irr == 0
    clock.advance(1)
    assert apic.irr == 1 << 0x30
    assert apic.read(TMCCT, 4) == 0


def test_timer_one_shot_fires_once() -> None:
    (apic,), (cpu,), _, clock = make()
    enable(apic)
    apic.write(TDCR, 0xB, 4)
    apic.write(LVT_TIMER, 0x30, 4)
    apic.write(TMICT, 500_000, 4)
    clock.advance(10_000_000)
    assert clock.fired == 1
    assert apic.get_interrupt() == 0x30
    assert apic.read(TMCCT, 4) == 0


def test_timer_periodic_reloads() -> None:
    (apic,), _, _, clock = make()
    enable(apic)
    apic.write(TDCR, 0xB, 4)
    apic.write(LVT_TIMER, 0x20030, 4)
    apic.write(TMICT, 1_000_000, 4)
    clock.advance(250_000)
    assert apic.read(TMCCT, 4) == 750_000
    fired = 0
    for _ in range(5):
        clock.advance(1_000_000)
        if apic.get_interrupt() == 0x30:
            fired += 1
            apic.write(EOI, 0, 4)
    assert fired == 5 and clock.fired == 5
    assert apic.read(TMCCT, 4) == 750_000


def test_timer_masked_counts_but_does_not_interrupt() -> None:
    (apic,), _, _, clock = make()
    enable(apic)
    apic.write(TDCR, 0xB, 4)
    apic.write(LVT_TIMER, 0x30030, 4)
    apic.write(TMICT, 1_000_000, 4)
    clock.advance(3_500_000)
    assert clock.fired == 3 and apic.irr == 0
    assert apic.read(TMCCT, 4) == 500_000


def test_tiny_periodic_timer_is_rate_limited() -> None:
    (apic,), _, _, clock = make(clock=FakeClock(max_fires=100_000))
    enable(apic)
    apic.write(TDCR, 0xB, 4)
    apic.write(LVT_TIMER, 0x20030, 4)
    apic.write(TMICT, 1, 4)
    clock.advance(10 * MIN_TIMER_PERIOD_NS)
    assert clock.fired <= 11


def test_timer_stop_and_divide_change_keeps_count() -> None:
    (apic,), _, _, clock = make()
    enable(apic)
    apic.write(TDCR, 0xB, 4)
    apic.write(LVT_TIMER, 0x30, 4)
    apic.write(TMICT, 1000, 4)
    clock.advance(400)
    apic.write(TDCR, 0x0, 4)                   # divide by 2 from here on
    assert apic.read(TMCCT, 4) == 600
    clock.advance(400)
    assert apic.read(TMCCT, 4) == 400
    apic.write(TMICT, 0, 4)                    # writing 0 stops it
    clock.advance(10_000)
    assert apic.irr == 0 and apic.read(TMCCT, 4) == 0


def test_tsc_deadline_mode() -> None:
    (apic,), _, _, clock = make()
    enable(apic)
    apic.write(LVT_TIMER, 0x40030, 4)
    apic.write(TMICT, 1000, 4)                 # ignored in this mode
    assert apic.read(TMICT, 4) == 0 and apic.read(TMCCT, 4) == 0
    apic.set_tsc_deadline(clock.ns + 5000)
    clock.advance(4999)
    assert apic.irr == 0
    clock.advance(1)
    assert apic.irr == 1 << 0x30 and apic.get_tsc_deadline() == 0
    apic.set_tsc_deadline(clock.ns + 5000)
    apic.write(LVT_TIMER, 0x00030, 4)          # leaving the mode disarms
    clock.advance(10_000)
    assert clock.fired == 1


def test_tsc_deadline_mode_hidden_without_the_feature() -> None:
    clock = FakeClock()
    apic = APIC(0, bsp=True, clock=clock, timer_factory=clock.timer, tsc_deadline=False)
    apic.reset()
    enable(apic)
    apic.write(LVT_TIMER, 0x40030, 4)
    assert apic.read(LVT_TIMER, 4) == 0x30


# --- IPIs ----------------------------------------------------------------------------


def ipi(apic: APIC, low: int, dest: int = 0) -> None:
    apic.write(ICR_HI, dest << 24, 4)
    apic.write(ICR_LO, low, 4)


def test_fixed_ipi_physical() -> None:
    apics, *_ = make(3)
    for a in apics:
        enable(a)
    ipi(apics[0], 0x41, dest=2)
    assert [a.irr for a in apics] == [0, 0, 1 << 0x41]
    assert apics[0].read(ICR_LO, 4) == 0x41 and apics[0].read(ICR_HI, 4) == 2 << 24


@pytest.mark.parametrize("shorthand,expect", [
    (1, [1, 0, 0]),    # self
    (2, [1, 1, 1]),    # all including self
    (3, [0, 1, 1]),    # all excluding self
])
def test_ipi_shorthands(shorthand: int, expect: list[int]) -> None:
    apics, *_ = make(3)
    for a in apics:
        enable(a)
    ipi(apics[0], 0x50 | shorthand << 18, dest=7)
    assert [a.irr >> 0x50 & 1 for a in apics] == expect


def test_physical_broadcast() -> None:
    apics, *_ = make(3)
    for a in apics:
        enable(a)
    ipi(apics[1], 0x50, dest=0xFF)
    assert all(a.irr == 1 << 0x50 for a in apics)


def test_logical_flat_and_cluster() -> None:
    apics, *_ = make(4)
    for i, a in enumerate(apics):
        enable(a)
        a.write(LDR, (1 << i) << 24, 4)
    ipi(apics[0], 0x60 | 1 << 11, dest=0b1010)
    assert [a.irr >> 0x60 & 1 for a in apics] == [0, 1, 0, 1]
    for i, a in enumerate(apics):
        a.write(DFR, 0x0FFFFFFF, 4)
        a.write(LDR, ((i // 2) << 4 | 1 << (i % 2)) << 24, 4)  # clusters 0 and 1, two members each
    ipi(apics[0], 0x70 | 1 << 11, dest=0x12)
    assert [a.irr >> 0x70 & 1 for a in apics] == [0, 0, 0, 1]


def test_lowest_priority_arbitration() -> None:
    apics, *_ = make(3)
    for i, a in enumerate(apics):
        enable(a, 0x3FF)                       # focus checking off
        a.write(LDR, 1 << 24, 4)
        a.write(TPR, [0x40, 0x20, 0x30][i], 4)
    ipi(apics[0], 0x81 | 1 << 8 | 1 << 11, dest=1)
    assert [a.irr >> 0x81 & 1 for a in apics] == [0, 1, 0]
    apics[1].write(TPR, 0x50, 4)
    ipi(apics[0], 0x82 | 1 << 8 | 1 << 11, dest=1)
    assert [a.irr >> 0x82 & 1 for a in apics] == [0, 0, 1]


def test_lowest_priority_focus() -> None:
    apics, *_ = make(2)
    for a in apics:
        enable(a)                              # focus checking on
        a.write(LDR, 1 << 24, 4)
    apics[0].write(TPR, 0x10, 4)
    apics[0].set_irq(0x90, 0)
    ipi(apics[1], 0x90 | 1 << 8 | 1 << 11, dest=1)
    assert apics[1].irr == 0                   # the focus processor took it


def test_illegal_ipi_vector_sets_send_error() -> None:
    apics, *_ = make(2)
    for a in apics:
        enable(a)
    ipi(apics[0], 0x05, dest=1)
    assert apics[1].irr == 0
    apics[0].write(ESR, 0, 4)
    assert apics[0].read(ESR, 4) == 0x20


def test_init_sipi_nmi_smi() -> None:
    apics, cpus, *_ = make(2)
    enable(apics[0])
    enable(apics[1])
    apics[1].set_irq(0x40, 0)
    ipi(apics[0], 0x500 | 1 << 14, dest=1)     # INIT assert
    assert cpus[1].events == [("init", 0)]
    assert apics[1].irr == 0 and apics[1].wait_for_sipi
    ipi(apics[0], 0x500 | 1 << 15, dest=1)     # INIT level de-assert: nothing
    assert cpus[1].events == [("init", 0)]
    ipi(apics[0], 0x69F, dest=1)               # start-up at 0x9F000
    ipi(apics[0], 0x69F, dest=1)               # a second SIPI is ignored once running
    assert cpus[1].events == [("init", 0), ("sipi", 0x9F)]
    ipi(apics[0], 0x400, dest=1)
    ipi(apics[0], 0x200, dest=1)
    assert cpus[1].events[2:] == [("nmi", 0), ("smi", 0)]
    assert cpus[0].events == []


def test_sipi_to_the_bsp_is_ignored() -> None:
    apics, cpus, *_ = make(2)
    ipi(apics[1], 0x610, dest=0)
    assert cpus[0].events == []


# --- IA32_APIC_BASE and x2APIC ------------------------------------------------------


def test_apic_base_msr() -> None:
    apics, *_ = make(2)
    bsp, ap = apics
    assert bsp.get_base() == APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_BSP
    assert ap.get_base() == APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE
    assert bsp.set_base(0xFED00000 | MSR_IA32_APICBASE_ENABLE)     # BSP bit is read-only
    assert bsp.base_addr == 0xFED00000 and bsp.is_bsp
    assert not bsp.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | 1)         # reserved bit
    assert not bsp.set_base(1 << 45 | MSR_IA32_APICBASE_ENABLE)                         # beyond phys bits
    assert bsp.set_base(1 << 39 | APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE)      # within 40 bits
    assert bsp.base_addr == 1 << 39 | APIC_DEFAULT_ADDRESS
    assert not bsp.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_EXTD)              # x2APIC while disabled
    assert bsp.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD)
    assert not bsp.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE)            # x2APIC → xAPIC
    assert bsp.set_base(APIC_DEFAULT_ADDRESS)                                           # → disabled
    assert not bsp.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD)
    assert not ap.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD,
                           x2apic_supported=False)


def test_global_disable_resets_and_stops_acceptance() -> None:
    (apic,), _, bus, clock = make()
    enable(apic)
    apic.write(LVT_TIMER, 0x30, 4)
    apic.write(TMICT, 1000, 4)
    apic.set_irq(0x40, 0)
    assert apic.set_base(APIC_DEFAULT_ADDRESS)
    assert apic.irr == 0 and not apic.sw_enabled
    clock.advance(10_000)
    assert clock.fired == 0
    bus.deliver(0, 0, 0, 0x41, 0)
    assert apic.irr == 0


def x2(apic: APIC) -> None:
    assert apic.set_base(APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD)


def test_x2apic_registers_as_msrs() -> None:
    clock = FakeClock()
    bus = APICBus()
    apic = APIC(0x23, clock=clock, timer_factory=clock.timer)
    bus.attach(apic)
    assert apic.read_msr(0x802) is None                      # not in x2APIC mode: #GP
    x2(apic)
    assert apic.read_msr(0x802) == 0x23
    assert apic.read_msr(0x803) == 0x50014
    assert apic.read_msr(0x80D) == (2 << 16) | (1 << 3)      # cluster 2, member 3
    assert apic.read(ID, 4) == 0                             # MMIO is off
    assert apic.write_msr(0x80F, 0x1FF)
    assert apic.read_msr(0x80F) == 0x1FF
    assert apic.write_msr(0x808, 0x20) and apic.read_msr(0x808) == 0x20
    for msr in (0x80B, 0x83F, 0x80E, 0x831):                  # write-only or absent
        assert apic.read_msr(msr) is None
    for msr in (0x802, 0x803, 0x80A, 0x80D, 0x839, 0x810):    # read-only
        assert not apic.write_msr(msr, 0)
    assert not apic.write_msr(0x80B, 1)                      # EOI takes only 0
    assert not apic.write_msr(0x808, 1 << 32)
    assert apic.write_msr(0x83F, 0x55)                       # self IPI
    assert apic.irr == 1 << 0x55
    assert apic.get_interrupt() == 0x55 and apic.read_msr(0x812) == 1 << 0x15
    assert apic.write_msr(0x80B, 0)
    assert apic.isr == 0
    assert apic.read_msr(0x830) == 0


def test_x2apic_ipi_with_32_bit_destination() -> None:
    clock = FakeClock()
    bus = APICBus()
    apics = [APIC(i, bsp=i == 0, clock=clock, timer_factory=clock.timer) for i in (0, 0x101)]
    for a in apics:
        bus.attach(a)
        x2(a)
        assert a.write_msr(0x80F, 0x1FF)
    assert apics[0].write_msr(0x830, (0x101 << 32) | 0x44)
    assert apics[1].irr == 1 << 0x44
    # Logical: cluster 0x10, member bit 1.
    assert apics[0].write_msr(0x830, (0x10_0002 << 32) | 0x800 | 0x45)
    assert apics[1].irr >> 0x45 & 1
    assert apics[0].write_msr(0x830, (0xFFFFFFFF << 32) | 0x46)
    assert all(a.irr >> 0x46 & 1 for a in apics)


# --- the MMIO window -------------------------------------------------------------------


def test_apic_memory_routes_cpu_accesses_and_msis() -> None:
    apics, *_ = make(2)
    for a in apics:
        enable(a)
    bus = apics[0].bus
    assert bus is not None
    current: list[APIC | None] = [apics[1]]
    mem = APICMemory(bus, lambda: current[0])
    assert mem.read(ID, 4) == 1 << 24
    mem.write(TPR, 0x30, 4)
    assert apics[1].tpr == 0x30 and apics[0].tpr == 0
    current[0] = None                                          # a device's write: MSI
    mem.write(0x0000, 0x4041, 4)                                # dest 0, vector 0x41... fixed
    assert apics[0].irr == 1 << 0x41
    mem.write(0x1000, 0x42, 4)                                  # dest ID 1
    assert apics[1].irr == 1 << 0x42
    mem.write(0x1000, 0x43, 2)                                  # not a 32-bit write: dropped
    assert not apics[1].irr >> 0x43 & 1
    assert mem.read(0x1000, 4) == 0
    assert mem.region().size == 0x100000


# --- QOM ---------------------------------------------------------------------------


def test_qom_types() -> None:
    from pemu.hw.core.qdev import device_cold_reset, qdev_new, qdev_realize
    from pemu.qom.object import QOMError, object_class_by_name

    assert object_class_by_name("apic-common").abstract  # type: ignore[union-attr]
    dev = qdev_new("apic")
    dev.property_set("id", 3)
    qdev_realize(dev, None)
    apic = dev.model  # type: ignore[attr-defined]
    assert isinstance(apic, APIC)
    apic.designate_bsp()
    device_cold_reset(dev)
    assert apic.read(ID, 4) == 3 << 24 and apic.read(VER, 4) == 0x50014
    assert apic.is_bsp and not apic.wait_for_sipi
    bad = qdev_new("apic")
    bad.property_set("id", 0xFFFFFFFF)
    with pytest.raises(QOMError):
        qdev_realize(bad, None)
