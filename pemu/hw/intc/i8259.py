"""The PC's pair of Intel 8259A programmable interrupt controllers (QEMU's hw/intc/i8259.c).

Two chips are cascaded: the master at ports 0x20-0x21 delivers ISA IRQs 0-7
to the CPU, the slave at 0xA0-0xA1 delivers IRQs 8-15 through the master's
input 2.  The ICH9/PIIX edge/level control registers (ELCR, ports
0x4D0-0x4D1) choose, per input, between edge and level triggering.

The models are plain objects: the board wires :meth:`PICPair.get_irq_lines`
to the devices, passes the line toward the CPU's INTR pin as
``int_output``, and maps the three register windows (``master``, ``slave``,
``elcr``) into the I/O space.  The CPU's interrupt-acknowledge cycle is
:meth:`PICPair.read_irq`.
"""

from __future__ import annotations

from enum import IntEnum

from pemu.hw.core.irq import IRQ, IRQLine, NoIRQ, qemu_allocate_irqs
from pemu.migration.vmstate import (
    BOOL,
    U8,
    Enum,
    Struct,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.util.log import guest_error

MASTER_BASE = 0x20
SLAVE_BASE = 0xA0
ELCR_BASE = 0x4D0
WINDOW_SIZE = 2

CASCADE_IRQ = 2
# The ELCR bits that exist: IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge.
MASTER_ELCR_MASK = 0xF8
SLAVE_ELCR_MASK = 0xDE

NO_PRIORITY = 8  # get_priority's answer for "no bit set"

# ICW1 (written to the command port with bit 4 set)
ICW1_IC4 = 0x01    # ICW4 follows
ICW1_SNGL = 0x02   # single chip: no ICW3
ICW1_LTIM = 0x08   # level-triggered inputs
ICW1_INIT = 0x10
# ICW4
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10
# OCW3 (command port, bits 4:3 = 01)
OCW3_SELECT = 0x08
OCW3_RIS = 0x01    # read ISR instead of IRR
OCW3_RR = 0x02     # apply RIS
OCW3_POLL = 0x04
OCW3_SMM = 0x20    # special mask mode value
OCW3_ESMM = 0x40   # apply SMM


class OCW2Command(IntEnum):
    """OCW2 bits 7:5 (R, SL, EOI)."""

    ROTATE_AEOI_CLEAR = 0
    NON_SPECIFIC_EOI = 1
    NOP = 2
    SPECIFIC_EOI = 3
    ROTATE_AEOI_SET = 4
    ROTATE_NON_SPECIFIC_EOI = 5
    SET_PRIORITY = 6
    ROTATE_SPECIFIC_EOI = 7


class InitState(IntEnum):
    """Which initialization word the data port expects next."""

    READY = 0   # OCW1 (IMR)
    ICW2 = 1
    ICW3 = 2
    ICW4 = 3


def _bytes_of(value: int, size: int) -> list[int]:
    return [(value >> (8 * i)) & 0xFF for i in range(size)]


class I8259:
    """One 8259A chip.  ``int_out`` is its INT pin."""

    def __init__(self, name: str, elcr_mask: int, int_out: IRQLine, is_master: bool = False) -> None:
        self.name = name
        self.elcr_mask = elcr_mask
        self.int_out = int_out
        self.is_master = is_master
        self.elcr = 0
        self.irr = 0
        self._int_level = 0
        self._clear_init_registers()

    # -- priority logic -----------------------------------------------------
    def _priority(self, mask: int) -> int:
        """Position (0 = highest) of the highest-priority bit of ``mask``."""
        if mask == 0:
            return NO_PRIORITY
        priority = 0
        while not mask & (1 << ((priority + self.priority_add) & 7)):
            priority += 1
        return priority

    def get_irq(self) -> int:
        """The input to service next, or -1 when nothing may interrupt."""
        requested = self._priority(self.irr & ~self.imr)
        if requested == NO_PRIORITY:
            return -1
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and self.is_master:
            # The slave's own nesting decides; its input on the master never blocks.
            in_service &= ~(1 << CASCADE_IRQ)
        if requested < self._priority(in_service):
            return (requested + self.priority_add) & 7
        return -1

    def update_irq(self) -> None:
        level = 1 if self.get_irq() >= 0 else 0
        self._int_level = level
        self.int_out.set(level)

    def _level_triggered(self, mask: int) -> bool:
        return self.ltim or bool(self.elcr & mask)

    def set_irq(self, irq: int, level: int) -> None:
        mask = 1 << (irq & 7)
        if self._level_triggered(mask):
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask
        self.update_irq()

    def intack(self, irq: int) -> None:
        """Move ``irq`` from IRR to ISR (or just EOI it in auto-EOI mode)."""
        mask = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= mask
        # A level-triggered request stays in IRR while its line is high.
        if not self._level_triggered(mask):
            self.irr &= ~mask
        self.update_irq()

    # -- reset ------------------------------------------------------------------
    def init_reset(self) -> None:
        """What ICW1 resets (the ELCR survives it; pending level requests too)."""
        self.irr &= self.elcr
        self._clear_init_registers()
        self.update_irq()

    def _clear_init_registers(self) -> None:
        self.last_irr = 0
        self.imr = 0
        self.isr = 0
        self.priority_add = 0
        self.irq_base = 0
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.init_state = InitState.READY
        self.auto_eoi: bool = False
        self.rotate_on_auto_eoi: bool = False
        self.special_fully_nested = False
        self.init4 = False
        self.single_mode = False
        self.ltim = False

    def reset(self) -> None:
        self.elcr = 0
        self.irr = 0
        self.init_reset()

    # -- register window (offset 0 = command, 1 = data) ----------------------------
    def write(self, offset: int, value: int, size: int = 1) -> None:
        for i, byte in enumerate(_bytes_of(value, size)):
            if not 0 <= offset + i < WINDOW_SIZE:
                guest_error(f"{self.name}: write of size {size} at offset {offset:#x} outside the window")
                return
            if offset + i == 0:
                self._write_command(byte)
            else:
                self._write_data(byte)

    def read(self, offset: int, size: int = 1) -> int:
        value = 0
        for i in range(size):
            if not 0 <= offset + i < WINDOW_SIZE:
                guest_error(f"{self.name}: read of size {size} at offset {offset:#x} outside the window")
                return value | (((1 << (8 * (size - i))) - 1) << (8 * i))
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def _write_command(self, value: int) -> None:
        if value & ICW1_INIT:
            self.init_reset()
            self.init_state = InitState.ICW2
            self.init4 = bool(value & ICW1_IC4)
            self.single_mode = bool(value & ICW1_SNGL)
            self.ltim = bool(value & ICW1_LTIM)
            return
        if value & OCW3_SELECT:
            if value & OCW3_POLL:
                self.poll = True
            if value & OCW3_RR:
                self.read_isr = bool(value & OCW3_RIS)
            if value & OCW3_ESMM:
                self.special_mask = bool(value & OCW3_SMM)
                self.update_irq()
            return
        command = OCW2Command(value >> 5)
        if command in (OCW2Command.ROTATE_AEOI_CLEAR, OCW2Command.ROTATE_AEOI_SET):
            self.rotate_on_auto_eoi = command == OCW2Command.ROTATE_AEOI_SET
        elif command in (OCW2Command.NON_SPECIFIC_EOI, OCW2Command.ROTATE_NON_SPECIFIC_EOI):
            priority = self._priority(self.isr)
            if priority != NO_PRIORITY:
                irq = (priority + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if command == OCW2Command.ROTATE_NON_SPECIFIC_EOI:
                    self.priority_add = (irq + 1) & 7
                self.update_irq()
        elif command == OCW2Command.SPECIFIC_EOI:
            self.isr &= ~(1 << (value & 7))
            self.update_irq()
        elif command == OCW2Command.SET_PRIORITY:
            self.priority_add = (value + 1) & 7
            self.update_irq()
        elif command == OCW2Command.ROTATE_SPECIFIC_EOI:
            irq = value & 7
            self.isr &= ~(1 << irq)
            self.priority_add = (irq + 1) & 7
            self.update_irq()

    def _write_data(self, value: int) -> None:
        if self.init_state == InitState.READY:
            self.imr = value
            self.update_irq()
        elif self.init_state == InitState.ICW2:
            self.irq_base = value & 0xF8
            if not self.single_mode:
                self.init_state = InitState.ICW3
            else:
                self.init_state = InitState.ICW4 if self.init4 else InitState.READY
        elif self.init_state == InitState.ICW3:
            # The cascade wiring is fixed on a PC: nothing to record.
            self.init_state = InitState.ICW4 if self.init4 else InitState.READY
        else:
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.init_state = InitState.READY

    def _read_byte(self, offset: int) -> int:
        if self.poll:
            self.poll = False
            irq = self.get_irq()
            if irq < 0:
                return 0
            self.intack(irq)
            return 0x80 | irq
        if offset == 0:
            return self.isr if self.read_isr else self.irr
        return self.imr


class ELCRWindow:
    """Ports 0x4D0 (master) and 0x4D1 (slave): edge (0) / level (1) per IRQ."""

    def __init__(self, master: I8259, slave: I8259) -> None:
        self.chips = (master, slave)

    def read(self, offset: int, size: int = 1) -> int:
        value = 0
        for i in range(size):
            if 0 <= offset + i < WINDOW_SIZE:
                value |= self.chips[offset + i].elcr << (8 * i)
            else:
                guest_error(f"elcr: read at offset {offset + i:#x} outside the window")
                value |= 0xFF << (8 * i)
        return value

    def write(self, offset: int, value: int, size: int = 1) -> None:
        for i, byte in enumerate(_bytes_of(value, size)):
            if not 0 <= offset + i < WINDOW_SIZE:
                guest_error(f"elcr: write at offset {offset + i:#x} outside the window")
                return
            chip = self.chips[offset + i]
            chip.elcr = byte & chip.elcr_mask


class PICPair:
    """Master and slave 8259 cascaded as on every PC.

    ``int_output`` is raised while the master has an interrupt for the CPU.
    Devices drive ``irq_lines[n]`` (ISA IRQ n); the CPU calls :meth:`read_irq`
    when it takes the interrupt.
    """

    def __init__(self, int_output: IRQLine | None = None) -> None:
        self.int_output: IRQLine = int_output if int_output is not None else NoIRQ()
        self.master = I8259("pic-master", MASTER_ELCR_MASK, self.int_output, is_master=True)
        self.slave = I8259("pic-slave", SLAVE_ELCR_MASK, IRQ(self._slave_int, CASCADE_IRQ))
        self.elcr = ELCRWindow(self.master, self.slave)
        self.irq_lines: list[IRQ] = qemu_allocate_irqs(self._set_irq_line, 16)

    def _slave_int(self, _n: int, level: int) -> None:
        self.master.set_irq(CASCADE_IRQ, level)

    def _set_irq_line(self, irq: int, level: int) -> None:
        self.set_irq(irq, level)

    def get_irq_lines(self) -> list[IRQ]:
        return self.irq_lines

    def set_irq(self, irq: int, level: int) -> None:
        """Drive ISA IRQ ``irq`` (0-15) to ``level``."""
        if not 0 <= irq < 16:
            raise ValueError(f"ISA IRQ {irq} out of range 0-15")
        level = 1 if level else 0
        if irq < 8:
            self.master.set_irq(irq, level)
        else:
            self.slave.set_irq(irq - 8, level)

    def has_interrupt(self) -> bool:
        return self.master.get_irq() >= 0

    def read_irq(self) -> int:
        """The interrupt-acknowledge cycle: the vector the CPU takes.

        With nothing left to deliver the chips answer with IRQ 7 (or 15 when
        the cascade input won but the slave lost its request): the spurious
        interrupt the guest must recognise by its ISR bit being clear.
        """
        irq = self.master.get_irq()
        if irq < 0:
            return (self.master.irq_base + 7) & 0xFF
        if irq == CASCADE_IRQ:
            slave_irq = self.slave.get_irq()
            if slave_irq >= 0:
                self.slave.intack(slave_irq)
            else:
                slave_irq = 7
            vector = self.slave.irq_base + slave_irq
        else:
            vector = self.master.irq_base + irq
        self.master.intack(irq)
        return vector & 0xFF

    def reset(self) -> None:
        self.slave.reset()
        self.master.reset()


# --- migration (QEMU's vmstate_pic_common) ------------------------------------------------


def _chip_post_load(chip: I8259, version_id: int) -> None:
    if chip.elcr & ~chip.elcr_mask:
        raise VMStateError(f"ELCR {chip.elcr:#04x} sets bits {chip.name} does not have")


VMSTATE_I8259 = VMStateDescription(
    "i8259", version_id=1,
    fields=[
        VMStateField("last_irr", U8),
        VMStateField("irr", U8),
        VMStateField("imr", U8),
        VMStateField("isr", U8),
        VMStateField("priority_add", U8, check=range(8)),
        VMStateField("irq_base", U8, check=lambda v: not v & 7),
        VMStateField("read_isr", BOOL),
        VMStateField("poll", BOOL),
        VMStateField("special_mask", BOOL),
        VMStateField("init_state", Enum(InitState)),
        VMStateField("auto_eoi", BOOL),
        VMStateField("rotate_on_auto_eoi", BOOL),
        VMStateField("special_fully_nested", BOOL),
        VMStateField("init4", BOOL),
        VMStateField("single_mode", BOOL),
        VMStateField("ltim", BOOL),
        VMStateField("elcr", U8),
    ],
    post_load=_chip_post_load)
"""One chip.  Its INT output is not re-driven on load (as in QEMU): what the
master's output did lives in the CPU's state (the local APIC's LINT0 level,
a pending ExtINT or hard interrupt), saved with the CPU, and the slave's is
the master's ``last_irr`` bit 2."""

VMSTATE_PIC_PAIR = VMStateDescription(
    "i8259-pair", version_id=1,
    fields=[VMStateField("master", Struct(VMSTATE_I8259)), VMStateField("slave", Struct(VMSTATE_I8259))])
