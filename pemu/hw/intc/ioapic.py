"""The I/O APIC (QEMU's hw/intc/ioapic.c; Intel 82093AA datasheet, ICH9 datasheet 13.5).

24 input pins, each with a 64-bit redirection entry, reached through an
index register (IOREGSEL at +0x00) and a data window (IOWIN at +0x10);
version 0x20, as QEMU's default, adds the EOI register at +0x40.  A pin's
interrupt becomes a message on the machine's :class:`APICBus`.  Edge pins
latch a rising edge (ignored while masked); level pins deliver while high
and set remote IRR until the local APIC's EOI broadcast (or the EOI
register) clears it, and then deliver again if the line is still high.

:class:`IOAPIC` is the model with its pins as IRQ lines (``irqs[n]``);
"ioapic" is the sysbus QOM type.
"""

from __future__ import annotations

from typing import Any

from pemu.hw.core.irq import IRQ, qemu_allocate_irqs
from pemu.hw.core.qdev import DeviceClass, DeviceState, Property, device_class_set_props
from pemu.hw.core.sysbus import TYPE_SYS_BUS_DEVICE, SysBusDevice
from pemu.hw.intc.apic_common import APIC_DESTMODE_LOGICAL, APIC_DESTMODE_PHYSICAL, APICBus
from pemu.migration import vmstate as vms
from pemu.migration.vmstate import Array, Struct, VMStateDescription, VMStateError, VMStateField
from pemu.qom.object import ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps
from pemu.util.log import guest_error

IOAPIC_DEFAULT_ADDRESS = 0xFEC00000
IOAPIC_REGION_SIZE = 0x1000
IOAPIC_NUM_PINS = 24
IOAPIC_VER_DEF = 0x20
IOAPIC_VERSIONS = (0x11, 0x20)

IOAPIC_IOREGSEL = 0x00
IOAPIC_IOWIN = 0x10
IOAPIC_EOI = 0x40

IOAPIC_REG_ID = 0x00
IOAPIC_REG_VER = 0x01
IOAPIC_REG_ARB = 0x02
IOAPIC_REG_REDTBL_BASE = 0x10

IOAPIC_ID_SHIFT = 24
IOAPIC_ID_MASK = 0xF

IOAPIC_LVT_VECTOR = 0xFF
IOAPIC_LVT_DELIV_MODE_SHIFT = 8
IOAPIC_LVT_DEST_MODE = 1 << 11
IOAPIC_LVT_DELIV_STATUS = 1 << 12
IOAPIC_LVT_POLARITY = 1 << 13
IOAPIC_LVT_REMOTE_IRR = 1 << 14
IOAPIC_LVT_TRIGGER_MODE = 1 << 15
IOAPIC_LVT_MASKED = 1 << 16
IOAPIC_LVT_DEST_SHIFT = 56
# What a guest may write in an entry's low dword: all but delivery status and remote IRR.
IOAPIC_RW_BITS = 0x1FFFF & ~(IOAPIC_LVT_DELIV_STATUS | IOAPIC_LVT_REMOTE_IRR)

IOAPIC_DM_EXTINT = 7
U32 = 0xFFFFFFFF


class IOAPIC:
    """One I/O APIC.  ``bus`` is set when the machine's APIC bus attaches it."""

    def __init__(self, *, version: int = IOAPIC_VER_DEF, num_pins: int = IOAPIC_NUM_PINS) -> None:
        if version not in IOAPIC_VERSIONS:
            raise ValueError(f"ioapic: version {version:#x} (must be 0x11 or 0x20)")
        self.version = version
        self.num_pins = num_pins
        self.bus: APICBus | None = None
        self.irqs: list[IRQ] = qemu_allocate_irqs(self.set_irq, num_pins)
        self.reset()

    def reset(self) -> None:
        self.id = 0
        self.ioregsel = 0
        self.irr = 0          # pins with a pending (edge) or asserted (level) request
        self.levels = 0       # the input lines' levels, to find rising edges
        self.ioredtbl = [IOAPIC_LVT_MASKED] * self.num_pins

    # -- input pins ---------------------------------------------------------------------
    def set_irq(self, pin: int, level: int) -> None:
        """Input line ``pin`` (GSI n for the machine's first I/O APIC).  As in
        QEMU, line 0 (the PIT's ISA IRQ 0) reaches pin 2: the MADT's interrupt
        source override IRQ0 → GSI 2 describes this wiring."""
        if not 0 <= pin < self.num_pins:
            return
        if pin == 0:
            pin = 2
        entry = self.ioredtbl[pin]
        bit = 1 << pin
        rising = level and not self.levels & bit
        self.levels = self.levels | bit if level else self.levels & ~bit
        if entry & IOAPIC_LVT_TRIGGER_MODE:
            if level:
                self.irr |= bit
                if not entry & IOAPIC_LVT_REMOTE_IRR:
                    self.service()
            else:
                self.irr &= ~bit
        elif rising and not entry & IOAPIC_LVT_MASKED:
            # The 82093AA ignores edges on a masked pin.
            self.irr |= bit
            self.service()

    def service(self) -> None:
        """Send a message for every unmasked pin with a request."""
        pending = self.irr
        while pending:
            pin = (pending & -pending).bit_length() - 1
            pending &= pending - 1
            entry = self.ioredtbl[pin]
            if entry & IOAPIC_LVT_MASKED:
                continue
            if entry & IOAPIC_LVT_TRIGGER_MODE:
                if entry & IOAPIC_LVT_REMOTE_IRR:
                    continue
                self.ioredtbl[pin] = entry | IOAPIC_LVT_REMOTE_IRR
            else:
                self.irr &= ~(1 << pin)
            self._deliver(entry)

    def _deliver(self, entry: int) -> None:
        if self.bus is None:
            return
        dest_mode = APIC_DESTMODE_LOGICAL if entry & IOAPIC_LVT_DEST_MODE else APIC_DESTMODE_PHYSICAL
        delivery_mode = (entry >> IOAPIC_LVT_DELIV_MODE_SHIFT) & 7
        if delivery_mode in (3, 6):
            guest_error(f"ioapic: redirection entry {entry:#x} has a reserved delivery mode")
            return
        trigger = 1 if entry & IOAPIC_LVT_TRIGGER_MODE else 0
        self.bus.deliver((entry >> IOAPIC_LVT_DEST_SHIFT) & 0xFF, dest_mode, delivery_mode,
                         entry & IOAPIC_LVT_VECTOR, trigger)

    def eoi(self, vector: int) -> None:
        """A local APIC EOIed a level-triggered ``vector`` (or the guest wrote
        the EOI register): clear remote IRR on its pins and re-deliver the
        lines that are still asserted."""
        redeliver = False
        for pin, entry in enumerate(self.ioredtbl):
            if (entry & IOAPIC_LVT_VECTOR) != vector or not entry & IOAPIC_LVT_TRIGGER_MODE:
                continue
            if not entry & IOAPIC_LVT_REMOTE_IRR:
                continue
            self.ioredtbl[pin] = entry & ~IOAPIC_LVT_REMOTE_IRR
            if not entry & IOAPIC_LVT_MASKED and self.irr & (1 << pin):
                redeliver = True
        if redeliver:
            self.service()

    # -- registers ----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        offset &= 0xFF
        if offset == IOAPIC_IOREGSEL:
            return self.ioregsel
        if offset != IOAPIC_IOWIN:
            return 0
        if size != 4:
            guest_error(f"ioapic: {size}-byte read of IOWIN returns 0")
            return 0
        return self._read_indexed(self.ioregsel)

    def _read_indexed(self, index: int) -> int:
        if index == IOAPIC_REG_ID:
            return (self.id & IOAPIC_ID_MASK) << IOAPIC_ID_SHIFT
        if index == IOAPIC_REG_VER:
            return self.version | ((self.num_pins - 1) << 16)
        if index == IOAPIC_REG_ARB:
            return (self.id & IOAPIC_ID_MASK) << IOAPIC_ID_SHIFT if self.version == 0x11 else 0
        pin, high = divmod(index - IOAPIC_REG_REDTBL_BASE, 2)
        if index >= IOAPIC_REG_REDTBL_BASE and pin < self.num_pins:
            return (self.ioredtbl[pin] >> (32 if high else 0)) & U32
        guest_error(f"ioapic: read of register index {index:#x}, which does not exist")
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        offset &= 0xFF
        if offset == IOAPIC_IOREGSEL:
            self.ioregsel = value & 0xFF
        elif offset == IOAPIC_IOWIN:
            if size != 4:
                guest_error(f"ioapic: {size}-byte write of IOWIN ignored")
                return
            self._write_indexed(self.ioregsel, value & U32)
        elif offset == IOAPIC_EOI and self.version == 0x20:
            self.eoi(value & 0xFF)
        else:
            guest_error(f"ioapic: write to offset {offset:#x}, which is no register")

    def _write_indexed(self, index: int, value: int) -> None:
        if index == IOAPIC_REG_ID:
            self.id = (value >> IOAPIC_ID_SHIFT) & IOAPIC_ID_MASK
            return
        if index in (IOAPIC_REG_VER, IOAPIC_REG_ARB):
            return   # read-only
        pin, high = divmod(index - IOAPIC_REG_REDTBL_BASE, 2)
        if index < IOAPIC_REG_REDTBL_BASE or pin >= self.num_pins:
            guest_error(f"ioapic: write to register index {index:#x}, which does not exist")
            return
        entry = self.ioredtbl[pin]
        if high:
            self.ioredtbl[pin] = (entry & U32) | (value << 32)
            return
        new = (entry & ~U32) | (entry & ~IOAPIC_RW_BITS & U32) | (value & IOAPIC_RW_BITS)
        if not new & IOAPIC_LVT_TRIGGER_MODE:
            new &= ~IOAPIC_LVT_REMOTE_IRR   # an edge pin has no remote IRR
        self.ioredtbl[pin] = new
        self.service()

    def ops(self) -> MemoryRegionOps:
        return MemoryRegionOps(self.read, self.write, 1, 4, False, 1, 4)


# --- migration (QEMU's vmstate_ioapic_common) -------------------------------------------------
# Nothing is delivered on load: a level pin with remote IRR set is delivered
# again at the guest's EOI (the line levels and IRR are loaded); an edge that
# was pending was delivered before the save.


def _ioapic_post_load(ioapic: IOAPIC, version_id: int) -> None:
    pins = (1 << ioapic.num_pins) - 1
    if ioapic.irr & ~pins or ioapic.levels & ~pins:
        raise VMStateError(f"IRR {ioapic.irr:#x} or line levels {ioapic.levels:#x} name pins "
                           f"beyond {ioapic.num_pins}")


VMSTATE_IOAPIC_MODEL = VMStateDescription(
    "ioapic-model", version_id=1,
    fields=[
        VMStateField("id", vms.U8, check=range(IOAPIC_ID_MASK + 1)),
        VMStateField("ioregsel", vms.U8),
        VMStateField("irr", vms.U32),
        VMStateField("levels", vms.U32),
        VMStateField("ioredtbl", Array(vms.U64, IOAPIC_NUM_PINS)),
    ],
    post_load=_ioapic_post_load)

VMSTATE_IOAPIC = VMStateDescription(
    "ioapic", version_id=1, fields=[VMStateField("model", Struct(VMSTATE_IOAPIC_MODEL))])


# --- QOM ------------------------------------------------------------------------------


TYPE_IOAPIC = "ioapic"


class IOAPICState(SysBusDevice):
    """The sysbus device: MMIO region 0 is the register window, GPIO inputs
    0-23 are the pins.  The machine attaches ``model`` to its APIC bus."""

    model: IOAPIC
    version: int


def _ioapic_realize(dev: Any) -> None:
    if dev.version not in IOAPIC_VERSIONS:
        raise QOMError(f"ioapic: version {dev.version:#x} is not supported (0x11 or 0x20)")
    dev.model = IOAPIC(version=dev.version)
    dev.init_gpio_in(dev.model.set_irq, IOAPIC_NUM_PINS)
    dev.init_mmio(MemoryRegion.io("ioapic", IOAPIC_REGION_SIZE, dev.model.ops(), owner=dev))


def _ioapic_reset(dev: DeviceState) -> None:
    object_check(dev, IOAPICState).model.reset()


def _ioapic_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = _ioapic_realize
    dc.reset = _ioapic_reset
    dc.vmsd = VMSTATE_IOAPIC
    dc.desc = "I/O APIC"
    dc.user_creatable = False
    device_class_set_props(dc, [Property("version", "uint8", IOAPIC_VER_DEF, attr="version")])


type_register(TypeInfo(TYPE_IOAPIC, parent=TYPE_SYS_BUS_DEVICE, instance_type=IOAPICState,
                       class_init=_ioapic_class_init))
