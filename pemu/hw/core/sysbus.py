"""The system bus (QEMU's hw/core/sysbus.c): devices with MMIO regions and
interrupt lines that the board maps and wires by number."""

from __future__ import annotations

from typing import Any

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.hw.core.qdev import TYPE_BUS, TYPE_DEVICE, BusState, DeviceClass, DeviceState, qbus_new, qdev_realize
from pemu.qom.object import Object, ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion
from pemu.util.vm_context import current_vm

TYPE_SYSTEM_BUS = "System"
TYPE_SYS_BUS_DEVICE = "sys-bus-device"


class SysBusDevice(DeviceState):
    mmio: list[tuple[MemoryRegion, int | None]]  # (region, mapped address)
    irqs: list[IRQLine]
    pio: list[int]

    def init_mmio(self, mr: MemoryRegion) -> int:
        self.mmio.append((mr, None))
        return len(self.mmio) - 1

    def init_irq(self) -> int:
        self.irqs.append(NoIRQ())
        return len(self.irqs) - 1

    def connect_irq(self, n: int, line: IRQLine) -> None:
        self.irqs[n] = line

    def mmio_map(self, n: int, addr: int, priority: int | None = None) -> None:
        from pemu.system.physmem import get_system_memory

        mr, old = self.mmio[n]
        system = get_system_memory()
        if old is not None:
            system.del_subregion(mr)
        if priority is None:
            system.add_subregion(addr, mr)
        else:
            system.add_subregion_overlap(addr, mr, priority)
        self.mmio[n] = (mr, addr)


def _sysbus_dev_init(obj: Object) -> None:
    dev = object_check(obj, SysBusDevice)
    dev.mmio = []
    dev.irqs = []
    dev.pio = []


def _sysbus_dev_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.bus_type = TYPE_SYSTEM_BUS


type_register(TypeInfo(TYPE_SYSTEM_BUS, parent=TYPE_BUS))
type_register(TypeInfo(TYPE_SYS_BUS_DEVICE, parent=TYPE_DEVICE, abstract=True, instance_type=SysBusDevice,
                       instance_init=_sysbus_dev_init, class_init=_sysbus_dev_class_init))

def sysbus_get_default() -> BusState:
    """The current VM's main system bus, made on first use (as
    /machine/unattached/sysbus once the machine exists)."""
    vm = current_vm()
    if vm.main_system_bus is None:
        bus = qbus_new(TYPE_SYSTEM_BUS, None, "main-system-bus")
        bus.realized = True
        vm.main_system_bus = bus
    return vm.main_system_bus


def sysbus_realize(dev: SysBusDevice) -> None:
    qdev_realize(dev, sysbus_get_default())
