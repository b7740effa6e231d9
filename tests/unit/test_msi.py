"""MSI: the address/data decoder and its delivery through the APIC bus."""

from __future__ import annotations

import pytest

from pemu.hw.intc.apic import APIC
from pemu.hw.intc.apic_common import APICBus
from pemu.hw.pci.msi import MSIMessage, msi_decode, msi_encode
from tests.unit.fakes import FakeClock


@pytest.mark.parametrize("address,data,expect", [
    (0xFEE00000, 0x0031, MSIMessage(0, 0, False, 0x31, 0, False, 0)),
    (0xFEE03000, 0x0041, MSIMessage(3, 0, False, 0x41, 0, False, 0)),
    (0xFEEFF000, 0x00EF, MSIMessage(0xFF, 0, False, 0xEF, 0, False, 0)),
    (0xFEE0100C, 0x0151, MSIMessage(1, 1, True, 0x51, 1, False, 0)),     # logical, RH, lowest priority
    (0xFEE01004, 0x0400, MSIMessage(1, 1, False, 0x00, 4, False, 0)),    # NMI
    (0xFEE00000, 0x0200, MSIMessage(0, 0, False, 0x00, 2, False, 0)),    # SMI
    (0xFEE00000, 0x0500, MSIMessage(0, 0, False, 0x00, 5, False, 0)),    # INIT
    (0xFEE00000, 0x0700, MSIMessage(0, 0, False, 0x00, 7, False, 0)),    # ExtINT
    (0xFEE00000, 0xC061, MSIMessage(0, 0, False, 0x61, 0, True, 1)),     # level, asserted
    (0xFEE00000, 0x8061, MSIMessage(0, 0, False, 0x61, 0, False, 1)),    # level, de-asserted
    (0xFEE00FF0, 0xFFFF00A0, MSIMessage(0, 0, False, 0xA0, 0, False, 0)),  # reserved bits ignored
    (0xFEE00000, 0x0300, None),       # delivery mode 3 is reserved
    (0xFEE00000, 0x0600, None),       # start-up cannot be sent by MSI
    (0xFED00000, 0x0031, None),       # not the APIC window
    (0xFEF00000, 0x0031, None),
    (0x1_FEE00000, 0x0031, None),     # above 4 GiB
])
def test_decode(address: int, data: int, expect: MSIMessage | None) -> None:
    assert msi_decode(address, data) == expect


@pytest.mark.parametrize("msg", [
    MSIMessage(5, 0, False, 0x33, 0, False, 0),
    MSIMessage(0x80, 1, True, 0x99, 1, True, 1),
    MSIMessage(0xFF, 0, False, 0x20, 4, False, 0),
])
def test_encode_round_trip(msg: MSIMessage) -> None:
    address, data = msi_encode(msg.dest_id, msg.vector, dest_mode=msg.dest_mode,
                               redirection_hint=msg.redirection_hint, delivery_mode=msg.delivery_mode,
                               level_assert=msg.level_assert, trigger_mode=msg.trigger_mode)
    assert msi_decode(address, data) == msg


def bus_with(n: int) -> tuple[APICBus, list[APIC]]:
    clock = FakeClock()
    bus = APICBus()
    apics = []
    for i in range(n):
        a = APIC(i, bsp=i == 0, clock=clock, timer_factory=clock.timer)
        a.reset()
        a.write(0xF0, 0x1FF, 4)
        a.write(0xD0, (1 << i) << 24, 4)
        bus.attach(a)
        apics.append(a)
    return bus, apics


@pytest.mark.parametrize("address,data,hits", [
    (0xFEE01000, 0x0045, [0, 1, 0]),          # physical
    (0xFEEFF000, 0x0045, [1, 1, 1]),          # broadcast
    (0xFEE05004, 0x0045, [1, 0, 1]),          # logical, flat: APICs 0 and 2
    (0xFEE06000, 0x0045, [0, 0, 0]),          # no such APIC
    (0xFEE00000, 0x8045, [0, 0, 0]),          # level de-assert: nothing
    (0xFEE00000, 0xC045, [1, 0, 0]),          # level assert
    (0xFEE00000, 0x0345, [0, 0, 0]),          # reserved mode: dropped
])
def test_delivery(address: int, data: int, hits: list[int]) -> None:
    bus, apics = bus_with(3)
    bus.send_msi(address, data)
    assert [a.irr >> 0x45 & 1 for a in apics] == hits


def test_redirection_hint_picks_one_destination() -> None:
    bus, apics = bus_with(3)
    apics[0].write(0x80, 0x50, 4)
    apics[2].write(0x80, 0x30, 4)
    bus.send_msi(0xFEE0700C, 0x0046)          # logical 0b111, RH: lowest priority
    assert [a.irr >> 0x46 & 1 for a in apics] == [0, 1, 0]
