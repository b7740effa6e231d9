"""The ISA bus (QEMU's hw/isa/isa-bus.c): legacy devices with port I/O and
the 16 ISA interrupt lines.

:class:`ISADevice` subclasses hold a plain register model (the rust-vmm
style device) and map its ``read``/``write`` into the I/O address space with
:meth:`ISADevice.register_ioport`.  The machine gives the bus its IRQ lines
(on q35 they end at the 8259 pair, and with an IOAPIC at its pins too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.hw.core.qdev import TYPE_BUS, TYPE_DEVICE, BusState, DeviceClass, DeviceState, qbus_new
from pemu.qom.object import Object, ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps

TYPE_ISA_BUS = "ISA"
TYPE_ISA_DEVICE = "isa-device"
ISA_NUM_IRQS = 16


class ISABus(BusState):
    address_space_io: MemoryRegion
    irqs: list[IRQLine]


class ISADevice(DeviceState):
    isa_irqs: list[int]
    ioports: list[tuple[int, MemoryRegion]]

    @property
    def isa_bus(self) -> ISABus:
        bus = self.parent_bus
        if not isinstance(bus, ISABus):
            raise QOMError(f"device '{self.typename}' is not on an ISA bus")
        return bus

    def get_irq(self, isairq: int) -> IRQLine:
        """The ISA interrupt line ``isairq`` (isa_get_irq)."""
        if not 0 <= isairq < ISA_NUM_IRQS:
            raise QOMError(f"Invalid ISA IRQ {isairq}")
        self.isa_irqs.append(isairq)
        return self.isa_bus.irqs[isairq]

    def register_ioport(self, start: int, mr: MemoryRegion) -> None:
        self.isa_bus.address_space_io.add_subregion(start, mr)
        self.ioports.append((start, mr))

    def register_model(self, name: str, start: int, size: int, read: Callable[[int, int], int],
                       write: Callable[[int, int, int], None], max_access: int = 1) -> MemoryRegion:
        """Map a plain model's register window at ``start`` in port I/O."""
        ops = MemoryRegionOps(read, write, 1, 4, True, 1, max_access)
        mr = MemoryRegion.io(name, size, ops, owner=self)
        self.register_ioport(start, mr)
        return mr


def _isa_device_init(obj: Object) -> None:
    dev = object_check(obj, ISADevice)
    dev.isa_irqs = []
    dev.ioports = []


def _isa_device_unrealize(obj: Any) -> None:
    for _, mr in obj.ioports:
        if mr.parent_container is not None:
            mr.parent_container.del_subregion(mr)
    obj.ioports = []


def _isa_device_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.bus_type = TYPE_ISA_BUS
    dc.unrealize = _isa_device_unrealize


def _isa_bus_init(obj: Object) -> None:
    bus = object_check(obj, ISABus)
    bus.irqs = [NoIRQ() for _ in range(ISA_NUM_IRQS)]


type_register(TypeInfo(TYPE_ISA_BUS, parent=TYPE_BUS, instance_type=ISABus, instance_init=_isa_bus_init))
type_register(TypeInfo(TYPE_ISA_DEVICE, parent=TYPE_DEVICE, abstract=True, instance_type=ISADevice,
                       instance_init=_isa_device_init, class_init=_isa_device_class_init))


def isa_bus_new(parent: DeviceState | None, address_space_io: MemoryRegion, name: str = "isa.0") -> ISABus:
    bus = qbus_new(TYPE_ISA_BUS, parent, name)
    assert isinstance(bus, ISABus)
    bus.address_space_io = address_space_io
    return bus


def isa_bus_irqs(bus: ISABus, irqs: list[IRQLine]) -> None:
    if len(irqs) != ISA_NUM_IRQS:
        raise ValueError("an ISA bus has 16 interrupt lines")
    bus.irqs = list(irqs)
