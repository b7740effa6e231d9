"""IDE buses and the ide-hd / ide-cd devices as qdev sees them (QEMU's hw/ide/qdev.c).

A disk or CD-ROM device sits on an IDE bus ("ide.0"... on q35, one per AHCI
port) and names its drive (``-device ide-hd,drive=d0,bus=ide.0``).  The
controller makes the buses, each with its units (:class:`IDEState`, one per
AHCI port); realizing a device claims its drive and makes the unit that
drive (QEMU's ide_dev_initfn and ide_init_drive).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pemu.hw.core.qdev import (
    TYPE_BUS,
    TYPE_DEVICE,
    BusState,
    DeviceClass,
    DeviceState,
    Property,
    device_class_set_props,
)
from pemu.migration.vmstate import U64, SameAsHere, VMStateDescription, VMStateField, vmstate_no_state
from pemu.qom.object import (
    Object,
    ObjectClass,
    QOMError,
    TypeInfo,
    object_check,
    object_class_check,
    object_get_root,
    type_register,
)

if TYPE_CHECKING:
    from pemu.hw.ide.core import IDEState

TYPE_IDE_BUS = "IDE"
TYPE_IDE_DEVICE = "ide-device"
TYPE_IDE_HD = "ide-hd"
TYPE_IDE_CD = "ide-cd"


class IDEBus(BusState):
    units: list[IDEState]  # set by the controller; an AHCI port has one


def _ide_bus_init(obj: Object) -> None:
    object_check(obj, IDEBus).units = []


class IDEDevice(DeviceState):
    drive: str | None
    unit: int
    serial: str | None
    model: str | None

    @property
    def drive_state(self) -> IDEState:
        """The unit this device made its drive (realized devices only)."""
        bus = self.parent_bus
        assert isinstance(bus, IDEBus)
        return bus.units[self.unit]


def _ide_device_realize(dev: DeviceState) -> None:
    import pemu
    from pemu.hw.core.machine import MachineState
    from pemu.hw.ide.atapi import ATAPIState
    from pemu.hw.ide.core import DriveKind

    ide = object_check(dev, IDEDevice)
    bus = dev.parent_bus
    if not isinstance(bus, IDEBus):
        raise QOMError(f"{dev.typename} is not on an IDE bus")
    machine = object_get_root().child("machine")
    if not isinstance(machine, MachineState):
        raise QOMError("no machine")
    is_cd = dev.typename == TYPE_IDE_CD
    blk = None
    drive = None
    if ide.drive is None:
        if not is_cd:
            raise QOMError("No drive specified")
    else:
        drive = next((d for d in machine.block_devices.drives if d.id == ide.drive), None)
        if drive is None:
            raise QOMError(f"Property '{dev.typename}.drive' can't find value '{ide.drive}'")
        if drive.claimed_by is not None:
            raise QOMError(f"Property '{dev.typename}.drive' can't take value '{ide.drive}', it's in use")
        blk = drive.blk
    unit = ide.unit
    if unit == 0xFFFFFFFF:
        unit = 0 if not bus.units or not bus.units[0].present else 1
    if unit >= len(bus.units):
        raise QOMError(f"Can't create IDE unit {unit}, bus supports only {len(bus.units)} units")
    state = bus.units[unit]
    if state.present:
        raise QOMError(f"IDE unit {unit} is in use")
    if blk is not None and not is_cd and not blk.is_inserted():
        raise QOMError("Device needs media, but drive is empty")
    if blk is not None and not is_cd and blk.is_read_only():
        raise QOMError("Can't use a read-only drive")
    model = ide.model or ("PEMU DVD-ROM" if is_cd else "PEMU HARDDISK")
    serial = ide.serial or _default_serial(bus, unit)
    if drive is not None:
        drive.claimed_by = dev.id or dev.typename
        drive.blk.dev = drive.claimed_by
    ide.unit = unit
    atapi = ATAPIState(state) if is_cd else None
    state.attach(DriveKind.CD if is_cd else DriveKind.HD, blk, model, serial, pemu.__version__, atapi)
    if blk is not None and state.atapi is None:
        blk.resize_cb = state.medium_changed  # block_resize: IDENTIFY shows the new size
    if blk is not None and state.atapi is not None:
        blk.dev_ops = state.atapi  # removable: the monitor's change and eject reach the drive


def _default_serial(bus: IDEBus, unit: int) -> str:
    """QEMU numbers its drives "QM00001"...; pemu's are "PM" and the port: ide.0 unit 0 is PM00001."""
    number = bus.name.rsplit(".", 1)[-1]
    index = int(number) if number.isdigit() else 0
    return f"PM{index * max(len(bus.units), 1) + unit + 1:05d}"


def _ide_device_class_init(klass: ObjectClass, data: object) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.bus_type = TYPE_IDE_BUS
    dc.realize = _ide_device_realize
    device_class_set_props(dc, [
        Property("drive", "str", None, description="Node name or ID of a block device to use as a backend"),
        Property("unit", "uint32", 0xFFFFFFFF),
        Property("serial", "str", None),
        Property("model", "str", None),
    ])


# The drive's state lives with its port (the controller's description); the
# disk device carries its medium's size, so that a destination whose image has
# another size refuses the stream instead of running on a different disk.
VMSTATE_IDE_HD = VMStateDescription(
    "ide-hd", version_id=1,
    fields=[VMStateField("drive_state.nb_sectors", SameAsHere(U64, lambda v: f"a disk of {v} sectors"))])
# A CD-ROM's medium may be changed at any time (its tray and media events are in its port's state).
VMSTATE_IDE_CD = vmstate_no_state("ide-cd")


def _ide_hd_class_init(klass: ObjectClass, data: object) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.desc = "virtual IDE disk"
    dc.categories = ("storage",)
    dc.vmsd = VMSTATE_IDE_HD


def _ide_cd_class_init(klass: ObjectClass, data: object) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.desc = "virtual IDE CD-ROM"
    dc.categories = ("storage",)
    dc.vmsd = VMSTATE_IDE_CD


type_register(TypeInfo(TYPE_IDE_BUS, parent=TYPE_BUS, instance_type=IDEBus, instance_init=_ide_bus_init))
type_register(TypeInfo(TYPE_IDE_DEVICE, parent=TYPE_DEVICE, abstract=True, instance_type=IDEDevice,
                       class_init=_ide_device_class_init))
type_register(TypeInfo(TYPE_IDE_HD, parent=TYPE_IDE_DEVICE, instance_type=IDEDevice, class_init=_ide_hd_class_init))
type_register(TypeInfo(TYPE_IDE_CD, parent=TYPE_IDE_DEVICE, instance_type=IDEDevice, class_init=_ide_cd_class_init))
