"""The 8259 pair driven through its ports, as Linux's init_8259A programs it."""

from __future__ import annotations

import pytest

from pemu.hw.intc.i8259 import PICPair


class LevelRecorder:
    def __init__(self) -> None:
        self.level = 0
        self.history: list[int] = []

    def set(self, level: int) -> None:
        self.level = level
        self.history.append(level)


def linux_init(pic: PICPair, auto_eoi: bool = False) -> None:
    """The sequence of arch/x86/kernel/i8259.c: init_8259A()."""
    m, s = pic.master, pic.slave
    m.write(1, 0xFF)
    s.write(1, 0xFF)
    m.write(0, 0x11)                      # ICW1: edge, cascade, ICW4
    m.write(1, 0x30)                      # ICW2: vectors 0x30-0x37
    m.write(1, 1 << 2)                    # ICW3: slave on IR2
    m.write(1, 0x03 if auto_eoi else 0x01)  # ICW4
    s.write(0, 0x11)
    s.write(1, 0x38)
    s.write(1, 0x02)
    s.write(1, 0x01)
    m.write(1, 0x00)
    s.write(1, 0x00)


@pytest.fixture
def cpu() -> LevelRecorder:
    return LevelRecorder()


@pytest.fixture
def pic(cpu: LevelRecorder) -> PICPair:
    p = PICPair(cpu)
    linux_init(p)
    return p


def test_edge_irq_gives_vector_and_eoi(pic: PICPair, cpu: LevelRecorder) -> None:
    assert not pic.has_interrupt() and cpu.level == 0
    pic.irq_lines[0].set(1)
    assert cpu.level == 1 and pic.has_interrupt()
    assert pic.read_irq() == 0x30
    assert cpu.level == 0
    assert pic.master.isr == 0x01 and pic.master.irr == 0
    # A held edge line does not retrigger.
    pic.irq_lines[0].set(1)
    assert pic.master.irr == 0
    pic.irq_lines[0].set(0)
    pic.irq_lines[0].set(1)
    assert pic.master.irr == 0x01
    assert cpu.level == 0  # IRQ0 in service blocks itself
    pic.master.write(0, 0x20)  # non-specific EOI
    assert pic.master.isr == 0 and cpu.level == 1


def test_priority_and_nesting(pic: PICPair, cpu: LevelRecorder) -> None:
    pic.set_irq(4, 1)
    pic.set_irq(1, 1)
    assert pic.read_irq() == 0x31
    # IRQ4 is lower priority than the in-service IRQ1.
    assert not pic.has_interrupt()
    pic.set_irq(0, 1)
    assert pic.read_irq() == 0x30  # higher priority nests
    assert pic.master.isr == 0x03
    pic.master.write(0, 0x20)  # EOI clears the highest in service: IRQ0
    assert pic.master.isr == 0x02
    pic.master.write(0, 0x61)  # specific EOI IRQ1
    assert pic.master.isr == 0
    assert pic.read_irq() == 0x34


def test_mask_blocks_and_irr_imr_isr_reads(pic: PICPair, cpu: LevelRecorder) -> None:
    pic.master.write(1, 0x08)
    pic.set_irq(3, 1)
    assert cpu.level == 0
    assert pic.master.read(0) == 0x08  # IRR by default
    assert pic.master.read(1) == 0x08  # IMR
    pic.master.write(1, 0x00)
    assert cpu.level == 1
    assert pic.read_irq() == 0x33
    pic.master.write(0, 0x0B)  # OCW3: read ISR
    assert pic.master.read(0) == 0x08
    pic.master.write(0, 0x0A)  # OCW3: read IRR
    assert pic.master.read(0) == 0x00


def test_cascade_through_irq2(pic: PICPair, cpu: LevelRecorder) -> None:
    pic.set_irq(12, 1)
    assert cpu.level == 1
    assert pic.read_irq() == 0x38 + 4
    assert pic.slave.isr == 0x10 and pic.master.isr == 0x04
    pic.set_irq(3, 1)  # lower than IRQ2 on the master: waits
    assert not pic.has_interrupt()
    pic.slave.write(0, 0x20)
    pic.master.write(0, 0x20)
    assert pic.master.isr == 0 and pic.slave.isr == 0
    assert pic.read_irq() == 0x33


def test_level_triggered_from_elcr(pic: PICPair, cpu: LevelRecorder) -> None:
    pic.elcr.write(1, 0x0E)  # IRQ 9, 10, 11 level
    assert pic.elcr.read(1) == 0x0E
    pic.elcr.write(0, 0xFF)
    assert pic.elcr.read(0) == 0xF8  # IRQ 0-2 cannot be level
    pic.set_irq(10, 1)
    assert pic.read_irq() == 0x3A
    pic.slave.write(0, 0x20)
    pic.master.write(0, 0x20)
    # Still asserted: requested again at once.
    assert cpu.level == 1
    assert pic.read_irq() == 0x3A
    pic.set_irq(10, 0)
    pic.slave.write(0, 0x20)
    pic.master.write(0, 0x20)
    assert cpu.level == 0
    assert pic.read_irq() == 0x37  # nothing pending: spurious IRQ 7


def test_spurious_irq15_when_slave_lost_request(pic: PICPair) -> None:
    pic.elcr.write(1, 0x08)  # IRQ11 level
    pic.set_irq(11, 1)
    pic.set_irq(11, 0)  # dropped before the acknowledge cycle
    assert pic.master.irr & 0x04  # the master latched the cascade edge
    assert pic.read_irq() == 0x3F
    assert pic.slave.isr == 0  # spurious: the slave's ISR stays clear
    assert pic.master.isr == 0x04  # the master did take IRQ2; Linux EOIs it


def test_spurious_irq7_when_nothing_pending(pic: PICPair) -> None:
    assert pic.read_irq() == 0x37
    assert pic.master.isr == 0


def test_auto_eoi(cpu: LevelRecorder) -> None:
    pic = PICPair(cpu)
    linux_init(pic, auto_eoi=True)
    pic.set_irq(5, 1)
    assert pic.read_irq() == 0x35
    assert pic.master.isr == 0


def test_rotate_on_non_specific_eoi(pic: PICPair) -> None:
    pic.set_irq(0, 1)
    pic.set_irq(1, 1)
    assert pic.read_irq() == 0x30
    pic.master.write(0, 0xA0)  # rotate on non-specific EOI: IRQ0 becomes lowest
    assert pic.master.priority_add == 1
    pic.set_irq(0, 0)
    pic.set_irq(0, 1)
    assert pic.read_irq() == 0x31  # IRQ1 now wins over IRQ0


def test_set_priority_command(pic: PICPair) -> None:
    pic.master.write(0, 0xC0 | 4)  # IRQ4 lowest, so IRQ5 highest
    pic.set_irq(0, 1)
    pic.set_irq(6, 1)
    assert pic.read_irq() == 0x36


def test_special_mask_mode_allows_lower_priority(pic: PICPair) -> None:
    pic.set_irq(1, 1)
    assert pic.read_irq() == 0x31
    pic.set_irq(5, 1)
    assert not pic.has_interrupt()
    pic.master.write(1, 0x02)   # mask the in-service IRQ1
    pic.master.write(0, 0x68)   # OCW3: set special mask mode
    assert pic.has_interrupt()
    assert pic.read_irq() == 0x35


def test_poll_mode(pic: PICPair) -> None:
    pic.set_irq(6, 1)
    pic.master.write(0, 0x0C)  # OCW3 poll
    assert pic.master.read(0) == 0x86
    assert pic.master.isr == 0x40
    pic.master.write(0, 0x0C)
    assert pic.master.read(0) == 0x00  # nothing left


def test_reinit_keeps_elcr_and_resets_imr(pic: PICPair) -> None:
    pic.elcr.write(1, 0x0E)
    pic.master.write(1, 0xAA)
    linux_init(pic)
    assert pic.elcr.read(1) == 0x0E
    pic.reset()
    assert pic.elcr.read(1) == 0 and pic.master.read(1) == 0


def test_hostile_accesses_do_not_raise(pic: PICPair) -> None:
    pic.master.write(5, 0x1234, 2)
    assert pic.master.read(7) == 0xFF
    assert pic.elcr.read(3, 2) == 0xFFFF
    for value in range(256):
        pic.slave.write(0, value)
        pic.slave.write(1, value)
        pic.slave.read(0)
    with pytest.raises(ValueError):
        pic.set_irq(16, 1)


def test_word_access_splits_into_bytes(pic: PICPair) -> None:
    pic.master.write(0, 0xFF0B, 2)  # OCW3 read-ISR, then IMR = 0xFF
    assert pic.master.read(1) == 0xFF
    assert pic.master.read(0, 2) == 0xFF00
