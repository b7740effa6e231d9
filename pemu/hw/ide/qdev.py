"""IDE buses and the ide-hd / ide-cd devices as qdev sees them (QEMU's hw/ide/qdev.c).

A disk or CD-ROM device sits on an IDE bus ("ide.0"... on q35, one per AHCI
port) and names its drive (``-device ide-hd,drive=d0,bus=ide.0``).  pemu has
no IDE or AHCI controller yet, so no IDE bus exists and -device ide-hd gets
QEMU's bus errors ("Bus 'ide.0' not found", "No 'IDE' bus found for device
'ide-hd'").  The controller's work adds the buses and the ATA/ATAPI models;
what realize does today is claim the drive, as QEMU's device realize does.
"""

from __future__ import annotations

from pemu.hw.core.qdev import (
    TYPE_BUS,
    TYPE_DEVICE,
    BusState,
    DeviceClass,
    DeviceState,
    Property,
    device_class_set_props,
)
from pemu.qom.object import (
    ObjectClass,
    QOMError,
    TypeInfo,
    object_check,
    object_class_check,
    object_get_root,
    type_register,
)

TYPE_IDE_BUS = "IDE"
TYPE_IDE_DEVICE = "ide-device"
TYPE_IDE_HD = "ide-hd"
TYPE_IDE_CD = "ide-cd"


class IDEBus(BusState):
    pass


class IDEDevice(DeviceState):
    drive: str | None
    unit: int
    serial: str | None
    model: str | None


def _ide_device_realize(dev: DeviceState) -> None:
    from pemu.hw.core.machine import MachineState

    ide = object_check(dev, IDEDevice)
    machine = object_get_root().child("machine")
    if not isinstance(machine, MachineState):
        raise QOMError("no machine")
    if ide.drive is None:
        if dev.typename == TYPE_IDE_HD:
            raise QOMError("No drive specified")
        return
    drive = next((d for d in machine.block_devices.drives if d.id == ide.drive), None)
    if drive is None:
        raise QOMError(f"Property '{dev.typename}.drive' can't find value '{ide.drive}'")
    if drive.claimed_by is not None:
        raise QOMError(f"Property '{dev.typename}.drive' can't take value '{ide.drive}', it's in use")
    drive.claimed_by = dev.id or dev.typename


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


def _ide_hd_class_init(klass: ObjectClass, data: object) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.desc = "virtual IDE disk"
    dc.categories = ("storage",)


def _ide_cd_class_init(klass: ObjectClass, data: object) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.desc = "virtual IDE CD-ROM"
    dc.categories = ("storage",)


type_register(TypeInfo(TYPE_IDE_BUS, parent=TYPE_BUS, instance_type=IDEBus))
type_register(TypeInfo(TYPE_IDE_DEVICE, parent=TYPE_DEVICE, abstract=True, instance_type=IDEDevice,
                       class_init=_ide_device_class_init))
type_register(TypeInfo(TYPE_IDE_HD, parent=TYPE_IDE_DEVICE, instance_type=IDEDevice, class_init=_ide_hd_class_init))
type_register(TypeInfo(TYPE_IDE_CD, parent=TYPE_IDE_DEVICE, instance_type=IDEDevice, class_init=_ide_cd_class_init))
