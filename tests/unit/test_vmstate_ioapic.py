"""Migratable state of the I/O APIC: redirection table, IRR and line levels;
a level-triggered line pending at the save is delivered again at the EOI."""

from __future__ import annotations

import pytest

from pemu.hw.intc.ioapic import IOAPIC, VMSTATE_IOAPIC_MODEL
from tests.unit.test_ioapic import LEVEL, MASKED, REMOTE_IRR, reg_read, reg_write, route
from tests.unit.vmstate_helpers import assert_refused, roundtrip, saved_with


class Bus:
    """The APIC bus as the I/O APIC sees it: records (dest, vector, trigger)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, int]] = []

    def deliver(self, dest: int, dest_mode: int, delivery_mode: int, vector: int, trigger: int) -> None:
        self.sent.append((dest, vector, trigger))


def _ioapic() -> tuple[IOAPIC, Bus]:
    io, bus = IOAPIC(), Bus()
    io.bus = bus  # a stand-in with the one method the I/O APIC calls
    return io, bus


def _busy() -> tuple[IOAPIC, Bus]:
    io, bus = _ioapic()
    reg_write(io, 0x00, 5 << 24)                  # ID 5
    route(io, 9, LEVEL | 0x41, dest=1)            # ACPI SCI style: level, vector 0x41
    route(io, 4, 0x34)                            # an edge pin
    route(io, 7, MASKED | 0x37)
    io.set_irq(9, 1)                              # delivered, remote IRR set, line still high
    io.set_irq(4, 1)
    io.write(0x00, 0x10 + 2 * 9, 4)               # IOREGSEL left on pin 9's entry
    return io, bus


def test_ioapic_roundtrip_and_level_line_redelivers_at_eoi_after_load() -> None:
    src, src_bus = _busy()
    assert src_bus.sent == [(1, 0x41, 1), (0, 0x34, 0)]
    dst, bus = _ioapic()
    roundtrip(VMSTATE_IOAPIC_MODEL, src, dst)
    assert bus.sent == []                         # nothing is delivered by the load itself
    assert dst.read(0x10, 4) & REMOTE_IRR         # IOWIN through the loaded IOREGSEL
    assert [reg_read(dst, i) for i in range(0x40)] == [reg_read(src, i) for i in range(0x40)]
    # Run on: the EOI clears remote IRR and, the line being high, delivers again ...
    dst.write(0x40, 0x41, 4)
    assert bus.sent == [(1, 0x41, 1)]
    # ... the held edge line makes no new edge; lowering then raising it does.
    dst.set_irq(4, 1)
    assert len(bus.sent) == 1
    dst.set_irq(4, 0)
    dst.set_irq(4, 1)
    assert bus.sent[-1] == (0, 0x34, 0)
    # A line lowered before the EOI is not delivered again.
    dst.set_irq(9, 0)
    dst.write(0x40, 0x41, 4)
    assert len(bus.sent) == 2


@pytest.mark.parametrize(("path", "value", "match"), [
    ("id", 0x10, "id"),
    ("irr", 1 << 24, "pins"),
    ("levels", 1 << 31, "pins"),
])
def test_ioapic_refuses_impossible_state(path: str, value: int, match: str) -> None:
    data = saved_with(VMSTATE_IOAPIC_MODEL, _busy()[0], path, value)
    assert_refused(VMSTATE_IOAPIC_MODEL, _ioapic()[0], data, match)
