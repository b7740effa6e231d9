"""The i8042 PS/2 keyboard controller (QEMU's hw/input/pckbd.c and ps2.c, reduced).

Data port 0x60, status/command port 0x64, IRQ 1 (keyboard) and 12 (AUX).
Enough for firmware and Linux's i8042/atkbd probes: the controller
self-test, the command byte, the AUX and keyboard interface tests, the AUX
loopback Linux uses to check IRQ 12, a keyboard answering reset, identify
and the usual configuration commands.  No mouse is attached: commands sent
to the AUX device are answered with a timeout NAK, so psmouse gives up.

Bytes the controller itself produces (replies to its commands, and bytes
written back with 0xD2/0xD3) go out even while the keyboard or AUX
interface is disabled, as in QEMU; only the devices' own data is held.
Reading the data port lowers the IRQ line, so each further queued byte
raises a new edge for the (edge-triggered) 8259.

Pulsing output-port bit 0 (command 0xFE, or 0xF0-0xFF with bit 0 clear),
or writing the output port with bit 0 clear, resets the machine through the
``reset_request`` callable; output-port bit 1 is the A20 gate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.migration.vmstate import (
    BOOL,
    U8,
    Buffer,
    Enum,
    Optional,
    Struct,
    VarList,
    VMStateDescription,
    VMStateField,
)
from pemu.util.log import guest_error

if TYPE_CHECKING:
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter

I8042_DATA_PORT = 0x60
I8042_COMMAND_PORT = 0x64
I8042_KBD_IRQ = 1
I8042_AUX_IRQ = 12
QUEUE_LIMIT = 16

# Status register.
STAT_OBF = 0x01
STAT_IBF = 0x02
STAT_SELFTEST = 0x04   # "system flag": set once the self-test passed
STAT_CMD = 0x08        # last input byte went to the command port
STAT_UNLOCKED = 0x10
STAT_AUX_OBF = 0x20
STAT_TIMEOUT = 0x40

# Command byte (controller RAM byte 0).
MODE_KBD_INT = 0x01
MODE_AUX_INT = 0x02
MODE_SYS = 0x04
MODE_DISABLE_KBD = 0x10
MODE_DISABLE_AUX = 0x20
MODE_XLATE = 0x40

# Output port.
OUT_RESET = 0x01       # active low
OUT_A20 = 0x02
OUT_KBD_OBF = 0x10
OUT_AUX_OBF = 0x20

# Keyboard replies.
KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_SELFTEST_OK = 0xAA
KBD_ECHO = 0xEE
KBD_ID = (0xAB, 0x83)
KBD_ID_TRANSLATED = (0xAB, 0x41)


class Command(IntEnum):
    READ_MODE = 0x20
    WRITE_MODE = 0x60
    AUX_DISABLE = 0xA7
    AUX_ENABLE = 0xA8
    AUX_TEST = 0xA9
    SELF_TEST = 0xAA
    KBD_TEST = 0xAB
    KBD_DISABLE = 0xAD
    KBD_ENABLE = 0xAE
    READ_INPUT_PORT = 0xC0
    READ_OUTPUT_PORT = 0xD0
    WRITE_OUTPUT_PORT = 0xD1
    WRITE_KBD_OBUF = 0xD2
    WRITE_AUX_OBUF = 0xD3
    WRITE_AUX = 0xD4
    DISABLE_A20 = 0xDD
    ENABLE_A20 = 0xDF
    READ_TEST_INPUTS = 0xE0
    PULSE_RESET = 0xFE


class KbdCommand(IntEnum):
    SET_LEDS = 0xED
    ECHO = 0xEE
    SCANCODE_SET = 0xF0
    GET_ID = 0xF2
    SET_RATE = 0xF3
    ENABLE = 0xF4
    RESET_DISABLE = 0xF5
    RESET_ENABLE = 0xF6
    RESEND = 0xFE
    RESET = 0xFF


class PS2Keyboard:
    """The keyboard's side of the PS/2 link: commands in, replies queued."""

    def __init__(self) -> None:
        self.queue: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        self.queue.clear()
        self.scan_enabled = True
        self.scancode_set = 2
        self.leds = 0
        self.expecting: KbdCommand | None = None
        self.last_reply = KBD_ACK

    def _reply(self, *data: int) -> None:
        for byte in data:
            if len(self.queue) >= QUEUE_LIMIT:
                guest_error("i8042: keyboard queue full, reply dropped")
                return
            self.queue.append(byte)
        if data:
            self.last_reply = data[-1]

    def write(self, byte: int, translated: bool) -> None:
        if self.expecting is not None:
            command, self.expecting = self.expecting, None
            if command == KbdCommand.SET_LEDS:
                self.leds = byte & 0x07
            elif command == KbdCommand.SCANCODE_SET:
                if byte == 0:
                    self._reply(KBD_ACK, self.scancode_set)
                    return
                if byte in (1, 2, 3):
                    self.scancode_set = byte
            self._reply(KBD_ACK)
            return
        try:
            command = KbdCommand(byte)
        except ValueError:
            if 0xF7 <= byte <= 0xFD:
                self._reply(KBD_ACK)  # set-3 key type commands: accepted, ignored
            else:
                guest_error(f"i8042: unknown keyboard command {byte:#04x}")
                self._reply(KBD_RESEND)
            return
        match command:
            case KbdCommand.SET_LEDS | KbdCommand.SCANCODE_SET | KbdCommand.SET_RATE:
                self.expecting = command
                self._reply(KBD_ACK)
            case KbdCommand.ECHO:
                self._reply(KBD_ECHO)
            case KbdCommand.GET_ID:
                self._reply(KBD_ACK, *(KBD_ID_TRANSLATED if translated else KBD_ID))
            case KbdCommand.ENABLE:
                self.scan_enabled = True
                self._reply(KBD_ACK)
            case KbdCommand.RESET_DISABLE:
                self.scan_enabled = False
                self.scancode_set = 2
                self._reply(KBD_ACK)
            case KbdCommand.RESET_ENABLE:
                self.scan_enabled = True
                self.scancode_set = 2
                self._reply(KBD_ACK)
            case KbdCommand.RESEND:
                self._reply(self.last_reply)
            case KbdCommand.RESET:
                self.reset()
                self._reply(KBD_ACK, KBD_SELFTEST_OK)


class _Port:
    """A one-byte register window bound to a read and a write function."""

    def __init__(self, name: str, read: Callable[[], int], write: Callable[[int], None]) -> None:
        self.name = name
        self._read = read
        self._write = write

    def read(self, offset: int, size: int = 1) -> int:
        if offset != 0 or size != 1:
            guest_error(f"i8042: {self.name} read of size {size} at offset {offset:#x}")
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0xFF
        return self._read()

    def write(self, offset: int, value: int, size: int = 1) -> None:
        if offset != 0 or size != 1:
            guest_error(f"i8042: {self.name} write of size {size} at offset {offset:#x}")
            return
        self._write(value & 0xFF)


class I8042:
    """The controller.  Map ``data_port`` at 0x60 and ``command_port`` at 0x64."""

    def __init__(self, kbd_irq: IRQLine | None = None, aux_irq: IRQLine | None = None, *,
                 reset_request: Callable[[], None] | None = None,
                 a20_out: IRQLine | None = None) -> None:
        self.kbd_irq: IRQLine = kbd_irq if kbd_irq is not None else NoIRQ()
        self.aux_irq: IRQLine = aux_irq if aux_irq is not None else NoIRQ()
        self.reset_request = reset_request
        self.a20_out: IRQLine = a20_out if a20_out is not None else NoIRQ()
        self.keyboard = PS2Keyboard()
        self.data_port = _Port("data", self.read_data, self.write_data)
        self.command_port = _Port("command", self.read_status, self.write_command)
        # Controller-generated bytes with the port they appear to come from
        # (True: AUX, i.e. status bit 5 and IRQ 12).
        self.controller_queue: deque[tuple[int, bool]] = deque()
        self.aux_queue: deque[int] = deque()
        self.ram = bytearray(32)
        self.reset()

    def reset(self) -> None:
        self.keyboard.reset()
        self.controller_queue.clear()
        self.aux_queue.clear()
        self.ram[:] = bytes(32)
        self.ram[0] = MODE_KBD_INT | MODE_AUX_INT
        self.status = STAT_CMD | STAT_UNLOCKED
        self.outport = OUT_RESET | OUT_A20
        self.expecting: int | None = None
        self.obuf: int | None = None
        self.obuf_aux = False
        self.last_read = 0x00
        self._kbd_level = self._aux_level = 0
        self.kbd_irq.set(0)
        self.aux_irq.set(0)
        self.a20_out.set(1)

    def firmware_setup(self) -> None:
        """Leave the controller as SeaBIOS does before it boots an OS (for a
        direct boot, where no firmware runs): keyboard reset and scanning in
        set 2, translation to set 1 on, keyboard interrupt on, AUX disabled."""
        self.keyboard.reset()
        self.mode = MODE_KBD_INT | MODE_DISABLE_AUX | MODE_XLATE
        self.status &= ~STAT_SELFTEST  # the command byte's system flag, mirrored
        self._update()

    @property
    def mode(self) -> int:
        return self.ram[0]

    @mode.setter
    def mode(self, value: int) -> None:
        self.ram[0] = value & 0xFF

    @property
    def a20_enabled(self) -> bool:
        return bool(self.outport & OUT_A20)

    # -- output buffer and interrupts -----------------------------------------------
    def _queue_controller(self, byte: int, aux: bool = False) -> None:
        if len(self.controller_queue) < QUEUE_LIMIT:
            self.controller_queue.append((byte & 0xFF, aux))
        self._update()

    def _queue_aux(self, byte: int) -> None:
        if len(self.aux_queue) < QUEUE_LIMIT:
            self.aux_queue.append(byte & 0xFF)
        self._update()

    def _update(self) -> None:
        """Load the output buffer if empty, then drive IRQ 1 and 12."""
        if self.obuf is None:
            if self.controller_queue:
                self.obuf, self.obuf_aux = self.controller_queue.popleft()
            elif self.keyboard.queue and not self.mode & MODE_DISABLE_KBD:
                self.obuf, self.obuf_aux = self.keyboard.queue.popleft(), False
            elif self.aux_queue and not self.mode & MODE_DISABLE_AUX:
                self.obuf, self.obuf_aux = self.aux_queue.popleft(), True
        full = self.obuf is not None
        kbd = int(full and not self.obuf_aux and bool(self.mode & MODE_KBD_INT))
        aux = int(full and self.obuf_aux and bool(self.mode & MODE_AUX_INT))
        self._set_irqs(kbd, aux)

    def _set_irqs(self, kbd: int, aux: int) -> None:
        if kbd != self._kbd_level:
            self._kbd_level = kbd
            self.kbd_irq.set(kbd)
        if aux != self._aux_level:
            self._aux_level = aux
            self.aux_irq.set(aux)

    # -- ports -------------------------------------------------------------------------
    def read_status(self) -> int:
        status = self.status & ~(STAT_OBF | STAT_AUX_OBF)
        if self.obuf is not None:
            status |= STAT_OBF | (STAT_AUX_OBF if self.obuf_aux else 0)
        return status

    def read_data(self) -> int:
        if self.obuf is None:
            return self.last_read  # an empty buffer reads as its last byte
        value = self.last_read = self.obuf
        self.obuf = None
        self.status &= ~STAT_TIMEOUT
        # The read takes the line down; a byte loaded next raises it again.
        self._set_irqs(0, 0)
        self._update()
        return value

    def write_data(self, value: int) -> None:
        self.status &= ~STAT_CMD
        command, self.expecting = self.expecting, None
        if command is None:
            # Sending to the keyboard re-enables its interface.
            self.mode = self.mode & ~MODE_DISABLE_KBD
            self.keyboard.write(value, translated=bool(self.mode & MODE_XLATE))
        elif Command.WRITE_MODE <= command < Command.WRITE_MODE + len(self.ram):
            self.ram[command - Command.WRITE_MODE] = value
            if command == Command.WRITE_MODE:
                self.status = (self.status & ~STAT_SELFTEST) | (value & MODE_SYS)
        elif command == Command.WRITE_OUTPUT_PORT:
            self._write_outport(value)
        elif command == Command.WRITE_KBD_OBUF:
            self._queue_controller(value)
        elif command == Command.WRITE_AUX_OBUF:
            self._queue_controller(value, aux=True)
        elif command == Command.WRITE_AUX:
            # No AUX device: the transfer times out.
            self.status |= STAT_TIMEOUT
            self._queue_aux(KBD_RESEND)
        self._update()

    def _write_outport(self, value: int) -> None:
        old = self.outport
        self.outport = value
        if (old ^ value) & OUT_A20:
            self.a20_out.set(1 if value & OUT_A20 else 0)
        if not value & OUT_RESET:
            self._request_reset()

    def _request_reset(self) -> None:
        if self.reset_request is not None:
            self.reset_request()

    def write_command(self, value: int) -> None:
        self.status |= STAT_CMD
        self.expecting = None
        if Command.READ_MODE <= value < Command.READ_MODE + len(self.ram):
            self._queue_controller(self.ram[value - Command.READ_MODE])
            return
        if Command.WRITE_MODE <= value < Command.WRITE_MODE + len(self.ram):
            self.expecting = value
            return
        if value >= 0xF0:
            if not value & OUT_RESET:  # pulse of output-port bit 0 (active low)
                self._request_reset()
            return
        match value:
            case Command.AUX_DISABLE:
                self.mode = self.mode | MODE_DISABLE_AUX
            case Command.AUX_ENABLE:
                self.mode = self.mode & ~MODE_DISABLE_AUX
            case Command.AUX_TEST | Command.KBD_TEST | Command.READ_TEST_INPUTS:
                self._queue_controller(0x00)
            case Command.SELF_TEST:
                self.status |= STAT_SELFTEST
                self._queue_controller(0x55)
            case Command.KBD_DISABLE:
                self.mode = self.mode | MODE_DISABLE_KBD
            case Command.KBD_ENABLE:
                self.mode = self.mode & ~MODE_DISABLE_KBD
            case Command.READ_INPUT_PORT:
                self._queue_controller(0x80)  # keyboard not inhibited
            case Command.READ_OUTPUT_PORT:
                port = self.outport & ~(OUT_KBD_OBF | OUT_AUX_OBF)
                if self.obuf is not None:
                    port |= OUT_AUX_OBF if self.obuf_aux else OUT_KBD_OBF
                self._queue_controller(port)
            case Command.WRITE_OUTPUT_PORT | Command.WRITE_KBD_OBUF | Command.WRITE_AUX_OBUF \
                    | Command.WRITE_AUX:
                self.expecting = value
            case Command.DISABLE_A20:
                self._write_outport(self.outport & ~OUT_A20)
            case Command.ENABLE_A20:
                self._write_outport(self.outport | OUT_A20)
            case _:
                guest_error(f"i8042: unknown controller command {value:#04x}")
        self._update()


# --- migration (QEMU's vmstate_kbd and vmstate_ps2_keyboard) ------------------------------

_KBD_ARGUMENT_COMMANDS = (KbdCommand.SET_LEDS, KbdCommand.SCANCODE_SET, KbdCommand.SET_RATE)

VMSTATE_PS2_KEYBOARD = VMStateDescription(
    "ps2kbd", version_id=1,
    fields=[
        VMStateField("queue", VarList(U8, QUEUE_LIMIT)),
        VMStateField("scan_enabled", BOOL),
        VMStateField("scancode_set", U8, check=(1, 2, 3)),
        VMStateField("leds", U8, check=range(8)),
        VMStateField("expecting", Optional(Enum(KbdCommand)),
                     check=lambda v: v is None or v in _KBD_ARGUMENT_COMMANDS),
        VMStateField("last_reply", U8),
    ])


class _ControllerByte:
    """A field kind: one controller-generated byte and whether it comes from the AUX side."""

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        byte, aux = value
        U8.save(f, byte)
        BOOL.save(f, aux)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> tuple[int, bool]:
        return U8.load(f, None, where), BOOL.load(f, None, where)


def _expects_data(command: int | None) -> bool:
    """A command the controller may be waiting for the data byte of."""
    return command is None or Command.WRITE_MODE <= command < Command.WRITE_MODE + 32 or command in (
        Command.WRITE_OUTPUT_PORT, Command.WRITE_KBD_OBUF, Command.WRITE_AUX_OBUF, Command.WRITE_AUX)


VMSTATE_I8042 = VMStateDescription(
    "pckbd", version_id=1,
    fields=[
        VMStateField("keyboard", Struct(VMSTATE_PS2_KEYBOARD)),
        VMStateField("controller_queue", VarList(_ControllerByte(), QUEUE_LIMIT)),
        VMStateField("aux_queue", VarList(U8, QUEUE_LIMIT)),
        VMStateField("ram", Buffer(32)),
        VMStateField("status", U8),
        VMStateField("outport", U8),
        VMStateField("expecting", Optional(U8), check=_expects_data),
        VMStateField("obuf", Optional(U8)),
        VMStateField("obuf_aux", BOOL),
        VMStateField("last_read", U8),
        VMStateField("_kbd_level", U8, check=(0, 1)),
        VMStateField("_aux_level", U8, check=(0, 1)),
    ])
"""The interrupt levels are loaded, not re-driven: the PIC's and I/O APIC's
saved state hold what the lines did.  The A20 output is the output port's bit."""
