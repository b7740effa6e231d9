"""The 16550A UART without a CPU: registers, FIFO, interrupts, loopback."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pemu.hw.char import serial as s
from pemu.hw.char.serial import SerialUART
from tests.unit.fakes import EdgeCounter as Line
from tests.unit.fakes import ManualTimer


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


class Rig:
    def __init__(self) -> None:
        self.now = 0
        self.irq = Line()
        self.out = Sink()
        self.can_receive_calls = 0
        self.timer: ManualTimer | None = None
        self.uart = SerialUART(self.irq, self.out, on_can_receive=self._resume,
                               clock=lambda: self.now, timer_factory=self._timer)

    def _timer(self, cb: Callable[[], None]) -> ManualTimer:
        self.timer = ManualTimer(cb)
        return self.timer

    def _resume(self) -> None:
        self.can_receive_calls += 1

    def advance(self, ns: int) -> None:
        self.now += ns
        assert self.timer is not None
        if 0 <= self.timer.expire <= self.now:
            self.timer.expire = -1
            self.timer.cb()


@pytest.fixture
def rig() -> Rig:
    return Rig()


def linux_setup(u: SerialUART, fcr: int = 0xC7) -> None:
    u.write(s.LCR, 0x80)
    u.write(s.DLL, 0x01)
    u.write(s.DLM, 0x00)
    u.write(s.LCR, 0x03)  # 8N1
    u.write(s.FCR, fcr)
    u.write(s.MCR, s.MCR_DTR | s.MCR_RTS | s.MCR_OUT2)


def test_reset_values(rig: Rig) -> None:
    u = rig.uart
    assert [u.read(i) for i in range(8)] == [0, 0, 0x01, 0, 0, 0x60, 0xB0, 0]


def test_divisor_latch_behind_dlab(rig: Rig) -> None:
    u = rig.uart
    u.write(s.LCR, 0x83)
    u.write(s.DLL, 0x0C)
    u.write(s.DLM, 0x00)
    assert u.read(s.DLL) == 0x0C and u.read(s.DLM) == 0
    assert u.baud == 9600
    u.write(s.LCR, 0x03)
    u.write(s.IER, 0x05)
    assert u.read(s.IER) == 0x05
    assert u.regs.divisor == 0x0C
    assert rig.out.data == b""  # DLL writes are not transmitted


def test_tx_goes_out_and_thre_interrupt_is_re_raised(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u)
    u.write(s.IER, s.IER_THRI)
    assert rig.irq.level == 1
    assert u.read(s.IIR) == 0xC2  # THRE, FIFOs enabled
    assert rig.irq.level == 0  # reading IIR acknowledged THRE
    assert u.read(s.IIR) == 0xC1
    before = rig.irq.rising
    u.write(s.THR, ord("A"))
    assert rig.out.data == b"A"
    assert u.read(s.LSR) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT
    assert rig.irq.rising == before + 1
    assert u.read(s.IIR) == 0xC2


def test_out2_gates_the_irq(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u)
    u.write(s.MCR, s.MCR_DTR | s.MCR_RTS)
    u.write(s.IER, s.IER_THRI)
    assert rig.irq.level == 0
    assert u.read(s.IIR) & 0x0F == s.IIR_THRI  # pending inside the chip
    u.write(s.IER, 0)
    u.write(s.IER, s.IER_THRI)
    u.write(s.MCR, s.MCR_OUT2)
    assert rig.irq.level == 1


def test_rx_trigger_level_and_timeout(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u, fcr=0x81)  # FIFO, trigger 8
    u.write(s.IER, s.IER_RDI)
    u.receive(b"abc")
    assert u.read(s.LSR) & s.LSR_DR
    assert rig.irq.level == 0  # below the trigger level: wait for the timeout
    rig.advance(4 * u.char_time_ns() - 1)
    assert rig.irq.level == 0
    rig.advance(1)
    assert rig.irq.level == 1
    assert u.read(s.IIR) == 0xCC
    assert bytes(u.read(s.RBR) for _ in range(3)) == b"abc"
    assert rig.irq.level == 0 and not u.read(s.LSR) & s.LSR_DR
    assert rig.can_receive_calls >= 1
    u.receive(b"0123456")
    assert rig.irq.level == 0
    u.receive(b"7")
    assert rig.irq.level == 1 and u.read(s.IIR) == 0xC4


@pytest.mark.parametrize("fcr,level", [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)])
def test_trigger_levels(rig: Rig, fcr: int, level: int) -> None:
    u = rig.uart
    linux_setup(u, fcr=fcr)
    u.write(s.IER, s.IER_RDI)
    u.receive(b"x" * (level - 1))
    assert rig.irq.level == 0
    u.receive(b"x")
    assert u.read(s.IIR) == 0xC4


def test_fifo_capacity_and_overrun(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u)
    assert u.can_receive() == 16
    u.receive(bytes(range(16)))
    assert u.can_receive() == 0
    u.receive(b"!")
    lsr = u.read(s.LSR)
    assert lsr & s.LSR_OE and lsr & s.LSR_DR
    assert not u.read(s.LSR) & s.LSR_OE  # cleared by the read
    assert bytes(u.read(s.RBR) for _ in range(16)) == bytes(range(16))


def test_iir_priority(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u, fcr=0x01)
    u.write(s.IER, s.IER_MASK)
    u.receive(b"q" * 17)  # data plus an overrun
    u.write(s.MCR, s.MCR_OUT2 | s.MCR_LOOP)  # changes modem lines: MSI pending too
    u.write(s.MCR, s.MCR_OUT2)
    assert u.read(s.IIR) == 0xC6  # line status first
    u.read(s.LSR)
    assert u.read(s.IIR) == 0xC4  # then received data
    while u.read(s.LSR) & s.LSR_DR:
        u.read(s.RBR)
    assert u.read(s.IIR) == 0xC2  # then THRE
    assert u.read(s.IIR) == 0xC0  # then modem status
    u.read(s.MSR)
    assert u.read(s.IIR) == 0xC1


def test_loopback_feeds_tx_into_rx_and_msr_from_mcr(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u)
    # Linux's autoconfig: MCR = LOOP | OUT2 | RTS must show DCD | CTS.
    u.write(s.MCR, s.MCR_LOOP | 0x0A)
    assert u.read(s.MSR) & 0xF0 == 0x90
    u.write(s.THR, 0x5A)
    assert rig.out.data == b""
    assert u.read(s.LSR) & s.LSR_DR and u.read(s.RBR) == 0x5A
    assert u.can_receive() == 0
    u.write(s.MCR, s.MCR_LOOP | s.MCR_OUT1)  # RI on
    u.read(s.MSR)
    u.write(s.MCR, s.MCR_LOOP)  # RI off: trailing edge
    assert u.read(s.MSR) == s.MSR_TERI
    u.write(s.MCR, s.MCR_OUT2)
    assert u.read(s.MSR) & 0xF0 == s.DEFAULT_MODEM_LINES
    u.write(s.THR, 0x41)
    assert rig.out.data == b"A"


def test_non_fifo_mode_holds_one_byte(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u, fcr=0)
    assert u.read(s.IIR) & 0xC0 == 0
    assert u.can_receive() == 1
    u.receive(b"z")
    assert u.can_receive() == 0
    u.write(s.IER, s.IER_RDI)
    assert u.read(s.IIR) == s.IIR_RDI
    assert u.read(s.RBR) == ord("z") and u.can_receive() == 1


def test_fcr_clears_rx(rig: Rig) -> None:
    u = rig.uart
    linux_setup(u)
    u.receive(b"hello")
    calls = rig.can_receive_calls
    u.write(s.FCR, 0xC7)
    assert not u.read(s.LSR) & s.LSR_DR and u.can_receive() == 16
    assert rig.can_receive_calls == calls + 1


def test_scratch_and_bad_accesses(rig: Rig) -> None:
    u = rig.uart
    u.write(s.SCR, 0x1A5)
    assert u.read(s.SCR) == 0xA5
    assert u.read(8) == 0xFF
    assert u.read(0, 2) == 0xFFFF
    u.write(9, 1)
    u.write(s.LSR, 0)
    assert u.read(s.LSR) == 0x60
