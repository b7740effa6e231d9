"""The 16550A UART (QEMU's hw/char/serial.c), as a plain device model.

Eight byte registers; the board places it (COM1: 0x3F8, IRQ 4).  Output
goes to the character back-end at once, so the transmitter is always empty
and the THRE interrupt is re-raised right after each write, as the chip does
when its shift register drains.  Input arrives through :meth:`SerialUART.receive`
(never more than :meth:`SerialUART.can_receive` bytes); when the guest empties
the receive FIFO the optional ``on_can_receive`` hook tells the back-end to
feed more.

As on every PC, the interrupt output only reaches the PIC while MCR.OUT2 is
set (the board's tri-state buffer is enabled by that pin); in loopback mode
the pin is disconnected, so no interrupt leaves the chip.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.migration.vmstate import (
    BOOL,
    TIMER,
    U8,
    U16,
    Struct,
    VarList,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.util.log import guest_error
from pemu.util.timer import (
    NANOSECONDS_PER_SECOND,
    TimerLike,
)
from pemu.util.timer import virtual_clock_ns as _virtual_clock_ns
from pemu.util.timer import virtual_timer as _virtual_timer

COM1_BASE = 0x3F8
COM1_IRQ = 4
WINDOW_SIZE = 8
FIFO_SIZE = 16
BASE_BAUD = 115200

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01   # received data available
IER_THRI = 0x02  # transmitter holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08   # modem status
IER_MASK = 0x0F

IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_CTI = 0x0C   # character timeout
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FCR_TRIGGER_SHIFT = 6
RX_TRIGGER_LEVELS = (1, 4, 8, 14)

LCR_WORD_LENGTH = 0x03
LCR_STOP_BITS = 0x04
LCR_PARITY = 0x08
LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_DELTAS = 0x0F
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80

# Modem lines seen from a back-end that is always "connected".
DEFAULT_MODEM_LINES = MSR_DCD | MSR_DSR | MSR_CTS

# Character times before the receive timeout interrupt (16550A datasheet).
RX_TIMEOUT_CHARS = 4


class CharBackend(Protocol):
    """What the UART needs of its chardev front-end (pemu.chardev.CharBackend)."""

    def write(self, data: bytes) -> object: ...  # the count written, unused: the UART has no flow control




def _modem_lines_from_mcr(mcr: int) -> int:
    """Loopback wiring: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD."""
    lines = 0
    if mcr & MCR_RTS:
        lines |= MSR_CTS
    if mcr & MCR_DTR:
        lines |= MSR_DSR
    if mcr & MCR_OUT1:
        lines |= MSR_RI
    if mcr & MCR_OUT2:
        lines |= MSR_DCD
    return lines


class _Regs:
    """The UART's registers that hold state."""

    def __init__(self) -> None:
        self.divisor = 0
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = DEFAULT_MODEM_LINES
        self.scr = 0
        self.fcr = 0


class SerialUART:
    def __init__(self, irq: IRQLine | None = None, chr: CharBackend | None = None, *,
                 on_can_receive: Callable[[], None] | None = None,
                 clock: Callable[[], int] = _virtual_clock_ns,
                 timer_factory: Callable[[Callable[[], None]], TimerLike] = _virtual_timer,
                 name: str = "serial") -> None:
        self.irq: IRQLine = irq if irq is not None else NoIRQ()
        self.chr = chr
        self.on_can_receive = on_can_receive
        self.clock = clock
        self.name = name
        self.timeout_timer = timer_factory(self._rx_timeout)
        self.regs = _Regs()
        self.rx_fifo: deque[int] = deque()
        self.thr_ipending = False
        self.timeout_ipending = False
        self._irq_level = 0
        self.reset()

    # -- state -------------------------------------------------------------------
    def reset(self) -> None:
        self.regs = _Regs()
        self.rx_fifo.clear()
        self.thr_ipending = False
        self.timeout_ipending = False
        self.timeout_timer.delete()
        self._irq_level = 0
        self.irq.set(0)
        self._notify_can_receive()

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.regs.fcr & FCR_ENABLE)

    @property
    def rx_trigger_level(self) -> int:
        return RX_TRIGGER_LEVELS[(self.regs.fcr >> FCR_TRIGGER_SHIFT) & 3]

    @property
    def baud(self) -> float:
        return BASE_BAUD / self.regs.divisor if self.regs.divisor else 0.0

    def char_time_ns(self) -> int:
        """Time one character takes on the wire at the programmed speed and framing."""
        bits = 1 + 5 + (self.regs.lcr & LCR_WORD_LENGTH) + (1 if self.regs.lcr & LCR_PARITY else 0) \
            + (2 if self.regs.lcr & LCR_STOP_BITS else 1)
        divisor = self.regs.divisor or 1
        return bits * divisor * NANOSECONDS_PER_SECOND // BASE_BAUD

    # -- interrupt logic -----------------------------------------------------------
    def _pending_iir(self) -> int:
        r = self.regs
        if r.ier & IER_RLSI and r.lsr & LSR_ERRORS:
            return IIR_RLSI
        if r.ier & IER_RDI and self.timeout_ipending:
            return IIR_CTI
        if r.ier & IER_RDI and r.lsr & LSR_DR and (
                not self.fifo_enabled or len(self.rx_fifo) >= self.rx_trigger_level):
            return IIR_RDI
        if r.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if r.ier & IER_MSI and r.msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        pending = self._pending_iir() != IIR_NO_INT
        connected = (self.regs.mcr & (MCR_OUT2 | MCR_LOOP)) == MCR_OUT2
        level = int(pending and connected)
        if level != self._irq_level:
            self._irq_level = level
            self.irq.set(level)

    # -- back-end side -------------------------------------------------------------
    def can_receive(self) -> int:
        if self.regs.mcr & MCR_LOOP:
            return 0  # in loopback the receiver hears only the transmitter
        if self.fifo_enabled:
            return FIFO_SIZE - len(self.rx_fifo)
        return 0 if self.regs.lsr & LSR_DR else 1

    def receive(self, data: bytes) -> None:
        if self.regs.mcr & MCR_LOOP:
            return
        for byte in data:
            self._receive_byte(byte)
        self._update_irq()

    def _receive_byte(self, byte: int) -> None:
        capacity = FIFO_SIZE if self.fifo_enabled else 1
        if len(self.rx_fifo) >= capacity:
            self.regs.lsr |= LSR_OE  # the new character is lost
            return
        self.rx_fifo.append(byte & 0xFF)
        self.regs.lsr |= LSR_DR
        if self.fifo_enabled:
            self.timeout_ipending = False
            self.timeout_timer.mod_ns(self.clock() + RX_TIMEOUT_CHARS * self.char_time_ns())

    def _rx_timeout(self) -> None:
        if self.rx_fifo:
            self.timeout_ipending = True
            self._update_irq()

    def _notify_can_receive(self) -> None:
        if self.on_can_receive is not None:
            self.on_can_receive()

    def set_modem_lines(self, lines: int) -> None:
        """The back-end's CTS/DSR/RI/DCD (MSR bits 4-7), as when a terminal hangs up."""
        if self.regs.mcr & MCR_LOOP:
            return
        self._set_msr_lines(lines & 0xF0)

    def _set_msr_lines(self, lines: int) -> None:
        old = self.regs.msr & 0xF0
        changed = old ^ lines
        delta = 0
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        if old & MSR_RI and not lines & MSR_RI:
            delta |= MSR_TERI
        self.regs.msr = lines | (self.regs.msr & MSR_DELTAS) | delta
        self._update_irq()

    # -- register window -------------------------------------------------------------
    def read(self, offset: int, size: int = 1) -> int:
        if size != 1 or not 0 <= offset < WINDOW_SIZE:
            guest_error(f"{self.name}: read of size {size} at offset {offset:#x}")
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0xFF
        r = self.regs
        match offset:
            case 0:
                if r.lcr & LCR_DLAB:
                    return r.divisor & 0xFF
                return self._read_rbr()
            case 1:
                if r.lcr & LCR_DLAB:
                    return (r.divisor >> 8) & 0xFF
                return r.ier
            case 2:
                iir = self._pending_iir()
                if iir == IIR_THRI:
                    self.thr_ipending = False  # reading IIR acknowledges THRE
                    self._update_irq()
                return iir | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
            case 3:
                return r.lcr
            case 4:
                return r.mcr
            case 5:
                lsr = r.lsr
                if lsr & LSR_ERRORS:
                    r.lsr &= ~LSR_ERRORS
                    self._update_irq()
                return lsr
            case 6:
                msr = r.msr
                if msr & MSR_DELTAS:
                    r.msr &= ~MSR_DELTAS
                    self._update_irq()
                return msr
            case _:
                return r.scr

    def _read_rbr(self) -> int:
        if not self.rx_fifo:
            return 0
        value = self.rx_fifo.popleft()
        self.timeout_ipending = False
        if self.rx_fifo:
            if self.fifo_enabled:
                self.timeout_timer.mod_ns(self.clock() + RX_TIMEOUT_CHARS * self.char_time_ns())
        else:
            self.regs.lsr &= ~LSR_DR
            self.timeout_timer.delete()
        self._update_irq()
        if not self.rx_fifo:
            self._notify_can_receive()
        return value

    def write(self, offset: int, value: int, size: int = 1) -> None:
        if size != 1 or not 0 <= offset < WINDOW_SIZE:
            guest_error(f"{self.name}: write of size {size} at offset {offset:#x}")
            return
        value &= 0xFF
        r = self.regs
        match offset:
            case 0:
                if r.lcr & LCR_DLAB:
                    r.divisor = (r.divisor & 0xFF00) | value
                else:
                    self._transmit(value)
            case 1:
                if r.lcr & LCR_DLAB:
                    r.divisor = (r.divisor & 0x00FF) | (value << 8)
                    return
                old = r.ier
                r.ier = value & IER_MASK
                if r.ier & IER_THRI and not old & IER_THRI and r.lsr & LSR_THRE:
                    self.thr_ipending = True  # enabling THRI with THR empty interrupts at once
                self._update_irq()
            case 2:
                self._write_fcr(value)
            case 3:
                r.lcr = value
            case 4:
                self._write_mcr(value)
            case 5 | 6:
                guest_error(f"{self.name}: write {value:#04x} to read-only {'LSR' if offset == 5 else 'MSR'}")
            case _:
                r.scr = value

    def _transmit(self, value: int) -> None:
        self.thr_ipending = False
        self._update_irq()
        if self.regs.mcr & MCR_LOOP:
            self._receive_byte(value)
        elif self.chr is not None:
            self.chr.write(bytes((value,)))
        # The transmitter drained at once: THR and shift register empty again.
        self.regs.lsr |= LSR_THRE | LSR_TEMT
        self.thr_ipending = True
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        r = self.regs
        was_enabled = self.fifo_enabled
        if bool(value & FCR_ENABLE) != was_enabled:
            value |= FCR_CLEAR_RX | FCR_CLEAR_TX  # toggling the FIFOs empties them
        if value & FCR_CLEAR_RX:
            self.rx_fifo.clear()
            r.lsr &= ~(LSR_DR | LSR_BI)
            self.timeout_ipending = False
            self.timeout_timer.delete()
        if value & FCR_CLEAR_TX:
            r.lsr |= LSR_THRE | LSR_TEMT
        r.fcr = value & (FCR_ENABLE | (3 << FCR_TRIGGER_SHIFT))
        if not r.fcr & FCR_ENABLE:
            r.fcr = 0
        self._update_irq()
        if value & FCR_CLEAR_RX:
            self._notify_can_receive()

    def _write_mcr(self, value: int) -> None:
        r = self.regs
        old = r.mcr
        r.mcr = value & MCR_MASK
        if r.mcr & MCR_LOOP:
            self._set_msr_lines(_modem_lines_from_mcr(r.mcr))
        elif old & MCR_LOOP:
            self._set_msr_lines(DEFAULT_MODEM_LINES)
            self._notify_can_receive()
        self._update_irq()


# --- migration (QEMU's vmstate_serial) ---------------------------------------------------
# The chardev back-end is not part of the state: the destination has its own.
# There is no transmit FIFO to save: every byte the guest writes goes to the
# back-end at once.

_FCR_VALUES = (0,) + tuple(FCR_ENABLE | (level << FCR_TRIGGER_SHIFT) for level in range(4))

VMSTATE_SERIAL_REGS = VMStateDescription(
    "serial-regs", version_id=1,
    fields=[
        VMStateField("divisor", U16),
        VMStateField("ier", U8, check=lambda v: not v & ~IER_MASK),
        VMStateField("lcr", U8),
        VMStateField("mcr", U8, check=lambda v: not v & ~MCR_MASK),
        VMStateField("lsr", U8),
        VMStateField("msr", U8),
        VMStateField("scr", U8),
        VMStateField("fcr", U8, check=_FCR_VALUES),
    ])


def _serial_post_load(uart: SerialUART, version_id: int) -> None:
    capacity = FIFO_SIZE if uart.fifo_enabled else 1
    if len(uart.rx_fifo) > capacity:
        raise VMStateError(f"{len(uart.rx_fifo)} received bytes, the receiver holds {capacity}")
    # The back-end may send again when there is room (its own side was not migrated).
    uart._notify_can_receive()


VMSTATE_SERIAL = VMStateDescription(
    "serial", version_id=1,
    fields=[
        VMStateField("regs", Struct(VMSTATE_SERIAL_REGS)),
        VMStateField("rx_fifo", VarList(U8, FIFO_SIZE)),
        VMStateField("thr_ipending", BOOL),
        VMStateField("timeout_ipending", BOOL),
        VMStateField("_irq_level", U8, check=(0, 1)),
        VMStateField("timeout_timer", TIMER),
    ],
    post_load=_serial_post_load)
