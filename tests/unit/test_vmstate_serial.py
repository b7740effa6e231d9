"""Migratable state of the 16550A UART and of the stateless ISA ports
(isa-debugcon, isa-debug-exit) and pc-testdev: save, load into a fresh
device, compare, run on; refusals of FIFO contents the chip cannot hold."""

from __future__ import annotations

from collections import deque

import pytest

from pemu.hw.char import serial as s
from pemu.hw.char.serial import VMSTATE_SERIAL
from pemu.hw.misc.pc_testdev import VMSTATE_PC_TESTDEV_MODEL, PCTestdev
from tests.unit.test_serial import Rig, linux_setup
from tests.unit.vmstate_helpers import assert_refused, patched, roundtrip, saved_with

STATIC_REGS = (s.IER, s.LCR, s.MCR, s.SCR)


def _busy() -> Rig:
    rig = Rig()
    linux_setup(rig.uart)                       # FIFO on, trigger level 14
    rig.uart.write(s.SCR, 0x5A)
    rig.uart.write(s.IER, s.IER_RDI)
    rig.uart.receive(b"abc")                    # below the trigger: waits for the timeout
    rig.advance(1000)
    return rig


def test_serial_roundtrip_and_rx_fifo_drains_with_its_interrupt_after_load() -> None:
    src = _busy()
    dst = Rig()
    dst.now = src.now                            # the virtual clock is restored first
    calls_before = dst.can_receive_calls
    roundtrip(VMSTATE_SERIAL, src.uart, dst.uart)
    assert dst.can_receive_calls == calls_before + 1   # the back-end was told it may send
    assert [dst.uart.read(r) for r in STATIC_REGS] == [src.uart.read(r) for r in STATIC_REGS]
    assert dst.uart.read(s.LSR) == src.uart.read(s.LSR)
    assert dst.timer is not None and src.timer is not None
    assert dst.timer.expire == src.timer.expire > dst.now
    assert dst.irq.level == 0 and dst.uart.read(s.IIR) & 0x0F == s.IIR_NO_INT
    # Run on: the receive timeout fires at the same instant and raises the interrupt ...
    dst.advance(dst.timer.expire - dst.now)
    assert dst.irq.level == 1 and dst.uart.read(s.IIR) & 0x0F == s.IIR_CTI
    # ... and the guest drains the FIFO, which lowers it.
    assert bytes(dst.uart.read(s.RBR) for _ in range(3)) == b"abc"
    assert dst.irq.level == 0 and not dst.uart.read(s.LSR) & s.LSR_DR
    # More input still arrives and the transmitter still sends.
    dst.uart.receive(b"d")
    dst.uart.write(s.THR, ord("x"))
    assert dst.uart.read(s.RBR) == ord("d") and bytes(dst.out.data) == b"x"


def test_serial_roundtrip_with_the_divisor_latch_open() -> None:
    src = Rig()
    src.uart.write(s.LCR, s.LCR_DLAB)
    src.uart.write(s.DLL, 0x0C)
    dst = Rig()
    roundtrip(VMSTATE_SERIAL, src.uart, dst.uart)
    assert dst.uart.read(s.DLL) == 0x0C and dst.uart.baud == src.uart.baud


@pytest.mark.parametrize(("path", "value", "match"), [
    ("regs.fcr", s.FCR_CLEAR_RX, "fcr"),
    ("regs.ier", 0x10, "ier"),
    ("regs.mcr", 0x20, "mcr"),
    ("_irq_level", 3, "_irq_level"),
])
def test_serial_refuses_impossible_registers(path: str, value: int, match: str) -> None:
    data = saved_with(VMSTATE_SERIAL, _busy().uart, path, value)
    assert_refused(VMSTATE_SERIAL, Rig().uart, data, match)


def test_serial_refuses_two_bytes_without_the_fifo() -> None:
    src = Rig()                                   # FIFO off: the receiver holds one byte
    data = saved_with(VMSTATE_SERIAL, src.uart, "rx_fifo", deque(b"xy"))
    assert_refused(VMSTATE_SERIAL, Rig().uart, data, "holds 1")


def test_serial_refuses_a_fifo_longer_than_16() -> None:
    full = saved_with(VMSTATE_SERIAL, _busy().uart, "rx_fifo", deque(b"\xc3" * s.FIFO_SIZE))
    data = patched(full, (16).to_bytes(4, "big") + b"\xc3" * 16, (17).to_bytes(4, "big") + b"\xc3" * 17)
    assert_refused(VMSTATE_SERIAL, Rig().uart, data, "exceeds the maximum")


def test_pc_testdev_roundtrip() -> None:
    src = PCTestdev([])
    src.ioport_write(0, 0xDEADBEEF, 4)
    src.iomem_write(0x100, 0x1122334455667788, 8)
    dst = PCTestdev([])
    roundtrip(VMSTATE_PC_TESTDEV_MODEL, src, dst)
    assert dst.ioport_read(0, 4) == 0xDEADBEEF and dst.iomem_read(0x100, 8) == 0x1122334455667788
    dst.ioport_write(1, 0x00, 1)
    assert dst.ioport_read(0, 4) == 0xDEAD00EF
