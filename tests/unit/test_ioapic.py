"""The I/O APIC model: registers, redirection, edge and level pins with
remote IRR and EOI, delivery to local APICs on one bus."""

from __future__ import annotations

import pytest

from pemu.hw.intc.apic import APIC
from pemu.hw.intc.apic_common import APICBus
from pemu.hw.intc.ioapic import IOAPIC, IOAPIC_IOREGSEL, IOAPIC_IOWIN
from tests.unit.fakes import FakeClock

LEVEL = 1 << 15
MASKED = 1 << 16
REMOTE_IRR = 1 << 14
LOGICAL = 1 << 11


def rig(n_apics: int = 2, version: int = 0x20) -> tuple[IOAPIC, list[APIC]]:
    clock = FakeClock()
    bus = APICBus()
    apics = []
    for i in range(n_apics):
        apic = APIC(i, bsp=i == 0, clock=clock, timer_factory=clock.timer)
        apic.reset()
        apic.write(0xF0, 0x1FF, 4)
        bus.attach(apic)
        apics.append(apic)
    ioapic = IOAPIC(version=version)
    bus.attach_ioapic(ioapic)
    return ioapic, apics


def reg_write(io: IOAPIC, index: int, value: int) -> None:
    io.write(IOAPIC_IOREGSEL, index, 4)
    io.write(IOAPIC_IOWIN, value, 4)


def reg_read(io: IOAPIC, index: int) -> int:
    io.write(IOAPIC_IOREGSEL, index, 4)
    return io.read(IOAPIC_IOWIN, 4)


def route(io: IOAPIC, pin: int, low: int, dest: int = 0) -> None:
    reg_write(io, 0x11 + 2 * pin, dest << 24)
    reg_write(io, 0x10 + 2 * pin, low)


@pytest.mark.parametrize("version,index,value", [
    (0x20, 0x00, 0),
    (0x20, 0x01, 0x00170020),       # 24 entries, version 0x20
    (0x11, 0x01, 0x00170011),
    (0x20, 0x02, 0),
    (0x20, 0x10, MASKED),           # every pin masked at reset
    (0x20, 0x11, 0),
    (0x20, 0x3E, MASKED),           # pin 23
    (0x20, 0x40, 0),                # beyond the table
])
def test_reset_registers(version: int, index: int, value: int) -> None:
    io, _ = rig(version=version)
    assert reg_read(io, index) == value


def test_id_and_read_only_registers() -> None:
    io, _ = rig()
    reg_write(io, 0, 0xFFFFFFFF)
    assert reg_read(io, 0) == 0x0F000000
    reg_write(io, 1, 0)
    assert reg_read(io, 1) == 0x00170020
    assert io.read(IOAPIC_IOREGSEL, 4) == 1
    io.write(IOAPIC_IOREGSEL, 0x1FF, 4)
    assert io.read(IOAPIC_IOREGSEL, 4) == 0xFF


def test_entry_read_only_bits() -> None:
    io, _ = rig()
    reg_write(io, 0x12, 0xFFFFFFFF)
    assert reg_read(io, 0x12) == 0x1FFFF & ~(REMOTE_IRR | 1 << 12)
    reg_write(io, 0x13, 0xFFFFFFFF)
    assert reg_read(io, 0x13) == 0xFFFFFFFF


def test_edge_pin_delivers_on_rising_edge() -> None:
    io, apics = rig()
    route(io, 4, 0x34, dest=1)
    io.irqs[4].set(1)
    assert apics[1].irr == 1 << 0x34 and apics[0].irr == 0
    assert apics[1].get_interrupt() == 0x34
    apics[1].write(0xB0, 0, 4)
    io.irqs[4].set(1)                 # still high: no new edge
    assert apics[1].irr == 0
    io.irqs[4].set(0)
    assert apics[1].irr == 0
    io.irqs[4].set(1)
    assert apics[1].irr == 1 << 0x34


def test_masked_edge_pin_ignores_edges() -> None:
    io, apics = rig()
    route(io, 3, MASKED | 0x33)
    io.irqs[3].set(1)
    io.irqs[3].set(0)
    route(io, 3, 0x33)
    assert apics[0].irr == 0


def test_level_pin_remote_irr_and_eoi() -> None:
    io, apics = rig()
    route(io, 10, LEVEL | 0x3A)
    io.irqs[10].set(1)
    assert apics[0].irr == 1 << 0x3A and apics[0].tmr == 1 << 0x3A
    assert reg_read(io, 0x10 + 20) & REMOTE_IRR
    assert apics[0].get_interrupt() == 0x3A
    apics[0].write(0xB0, 0, 4)        # EOI while still asserted: delivered again
    assert apics[0].irr == 1 << 0x3A
    assert reg_read(io, 0x10 + 20) & REMOTE_IRR
    assert apics[0].get_interrupt() == 0x3A
    io.irqs[10].set(0)
    apics[0].write(0xB0, 0, 4)        # EOI after de-assert: remote IRR clears, nothing more
    assert not reg_read(io, 0x10 + 20) & REMOTE_IRR
    assert apics[0].irr == 0


def test_level_pin_waits_for_unmask() -> None:
    io, apics = rig()
    route(io, 11, LEVEL | MASKED | 0x3B)
    io.irqs[11].set(1)
    assert apics[0].irr == 0
    route(io, 11, LEVEL | 0x3B)       # unmasking a pin that is asserted delivers
    assert apics[0].irr == 1 << 0x3B


def test_directed_eoi_register() -> None:
    io, apics = rig()
    route(io, 9, LEVEL | 0x39)
    io.irqs[9].set(1)
    io.irqs[9].set(0)
    assert reg_read(io, 0x10 + 18) & REMOTE_IRR
    io.write(0x40, 0x38, 4)           # another vector: no effect
    assert reg_read(io, 0x10 + 18) & REMOTE_IRR
    io.write(0x40, 0x39, 4)
    assert not reg_read(io, 0x10 + 18) & REMOTE_IRR


def test_no_eoi_register_in_version_0x11() -> None:
    io, _ = rig(version=0x11)
    route(io, 9, LEVEL | 0x39)
    io.irqs[9].set(1)
    io.write(0x40, 0x39, 4)
    assert reg_read(io, 0x10 + 18) & REMOTE_IRR


def test_switching_to_edge_clears_remote_irr() -> None:
    io, _ = rig()
    route(io, 5, LEVEL | 0x35)
    io.irqs[5].set(1)
    route(io, 5, 0x35)
    assert not reg_read(io, 0x10 + 10) & REMOTE_IRR


def test_logical_and_lowest_priority_destinations() -> None:
    io, apics = rig(3)
    for i, a in enumerate(apics):
        a.write(0xD0, (1 << i) << 24, 4)
    route(io, 1, LOGICAL | 0x41, dest=0b110)
    io.irqs[1].set(1)
    assert [a.irr >> 0x41 & 1 for a in apics] == [0, 1, 1]
    apics[1].write(0x80, 0x80, 4)
    route(io, 2, LOGICAL | 1 << 8 | 0x42, dest=0b110)
    io.irqs[2].set(1)
    assert [a.irr >> 0x42 & 1 for a in apics] == [0, 0, 1]


def test_nmi_and_extint_entries() -> None:
    io, apics = rig()
    events: list[str] = []

    class CPU:
        def apic_irq_changed(self, pending: bool) -> None:
            pass

        def apic_extint(self) -> None:
            events.append("extint")

        def apic_nmi(self) -> None:
            events.append("nmi")

        def apic_smi(self) -> None:
            events.append("smi")

        def apic_init(self) -> None:
            events.append("init")

        def apic_sipi(self, vector: int) -> None:
            events.append("sipi")

    apics[0].cpu = CPU()
    route(io, 1, 7 << 8)
    route(io, 6, 4 << 8)
    route(io, 7, 6 << 8 | 0x10)      # start-up is reserved here: dropped
    for pin in (1, 6, 7):
        io.irqs[pin].set(1)
    assert events == ["extint", "nmi"]


def test_line_0_reaches_pin_2() -> None:
    io, apics = rig()
    route(io, 0, 0x30)
    route(io, 2, 0x32)
    io.irqs[0].set(1)
    assert apics[0].irr == 1 << 0x32


def test_pins_out_of_range_are_ignored() -> None:
    io, _ = rig()
    io.set_irq(24, 1)
    io.set_irq(-1, 1)
    assert io.irr == 0


def test_qom_type() -> None:
    from pemu.hw.core.qdev import qdev_new
    from pemu.hw.core.sysbus import sysbus_realize
    from pemu.qom.object import QOMError

    dev = qdev_new("ioapic")
    sysbus_realize(dev)  # type: ignore[arg-type]
    io = dev.model  # type: ignore[attr-defined]
    bus = APICBus()
    bus.attach_ioapic(io)
    region = dev.mmio[0][0]  # type: ignore[attr-defined]
    assert region.size == 0x1000
    assert region.ops.read(0x10, 4) == 0 and reg_read(io, 1) == 0x00170020
    dev.get_gpio_in(5).set(1)
    assert io.irr == 0           # masked edge pin: ignored
    bad = qdev_new("ioapic")
    bad.property_set("version", 0x12)
    with pytest.raises(QOMError):
        sysbus_realize(bad)  # type: ignore[arg-type]
