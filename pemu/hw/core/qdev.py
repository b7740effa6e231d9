"""qdev: devices and buses on top of QOM (QEMU's hw/core/qdev.c, bus.c,
qdev-properties.c), and the machine-init phases.

A device is created with :func:`qdev_new`, configured through its
properties (``-device DRIVER,prop=value``, ``-global DRIVER.prop=value``),
then *realized* on a bus: realize is where it claims its resources (memory
regions, interrupt lines).  Properties can no longer be set once realized.
Reset walks the bus tree from the main system bus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from pemu.hw.core.irq import IRQ, IRQLine, NoIRQ
from pemu.qom.object import (
    TYPE_OBJECT,
    Object,
    ObjectClass,
    ObjectProperty,
    QOMError,
    TypeInfo,
    container_get,
    object_check,
    object_class_check,
    object_get_root,
    object_new,
    type_register,
)
from pemu.system.memory import MemReentrancyGuard
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.migration.vmstate import VMStateDescription

TYPE_DEVICE = "device"
TYPE_BUS = "bus"


# --- machine-init phases ----------------------------------------------------------------


class MachineInitPhase(IntEnum):
    NO_MACHINE = 0
    MACHINE_CREATED = 1
    ACCEL_CREATED = 2
    MACHINE_INITIALIZED = 3
    MACHINE_READY = 4


def phase_get() -> MachineInitPhase:
    """How far the current VM's machine is built."""
    return current_vm().phase


def phase_check(phase: MachineInitPhase) -> bool:
    return current_vm().phase >= phase


def phase_advance(phase: MachineInitPhase) -> None:
    vm = current_vm()
    if phase != vm.phase + 1:
        raise AssertionError(f"machine phase {vm.phase.name} cannot advance to {phase.name}")
    vm.phase = phase


# --- static properties ---------------------------------------------------------------


class Property(NamedTuple):
    """A qdev property declared by a device class (DEFINE_PROP_*): stored in
    the instance attribute ``attr`` (default: name with '-' as '_')."""

    name: str
    kind: str  # "bool", "str", "uint8".."uint64", "int32", "size", "link<T>", or an enum name
    default: Any = None
    attr: str | None = None
    enum_values: tuple[str, ...] | None = None
    description: str = ""


def device_class_set_props(dc: DeviceClass, props: list[Property]) -> None:
    for p in props:
        attr = p.attr or p.name.replace("-", "_")

        def getter(obj: Object, attr: str = attr) -> Any:
            return getattr(obj, attr)

        def setter(obj: Object, value: Any, attr: str = attr, name: str = p.name) -> None:
            dev = object_check(obj, DeviceState)
            if dev.realized:
                raise QOMError(
                    f"Attempt to set property '{name}' on device '{dev.id or ''}' "
                    f"(type '{dev.typename}') after it was realized")
            setattr(dev, attr, value)

        dc.property_add(ObjectProperty(p.name, p.kind, getter, setter, None, p.description,
                                       p.default, p.enum_values, attr))
        dc.props.append(p)


# --- -global ------------------------------------------------------------------------


class GlobalProperty:
    """One ``-global DRIVER.PROP=VALUE``: applied to every new device of the driver."""

    def __init__(self, driver: str, property: str, value: str, used: bool = False) -> None:
        self.driver = driver
        self.property = property
        self.value = value
        self.used = used


def qdev_prop_register_global(prop: GlobalProperty) -> None:
    """A -global setting for the devices of the VM being built (QEMU keeps
    them in a process-wide table, which is the same thing with one VM a
    process; here a second VM does not inherit the first one's)."""
    current_vm().global_props.append(prop)


def qdev_prop_set_globals(dev: DeviceState) -> None:
    """Apply the -global settings whose driver is the device's type or one of
    its ancestors (object_apply_global_props)."""
    for g in current_vm().global_props:
        if dev.is_a(g.driver):
            if dev.property_find(g.property) is None:
                raise QOMError(f"can't apply global {g.driver}.{g.property}={g.value}: "
                               f"Property '{dev.typename}.{g.property}' not found")
            g.used = True
            try:
                dev.property_parse(g.property, g.value)
            except QOMError as e:
                raise QOMError(f"can't apply global {g.driver}.{g.property}={g.value}: {e}") from None


# --- devices ---------------------------------------------------------------------------


class DeviceClass(ObjectClass):
    realize: Callable[[DeviceState], None] | None = None
    unrealize: Callable[[DeviceState], None] | None = None
    reset: Callable[[DeviceState], None] | None = None
    props: list[Property] = []
    desc: str = ""
    user_creatable: bool = True
    hotpluggable: bool = True
    bus_type: str | None = None
    categories: tuple[str, ...] = ()
    # Why a device the user cannot create is internal (shown by -device help).
    fw_name: str | None = None
    # What the device saves and loads when the VM is migrated (pemu.migration.vmstate).
    # None blocks saving the VM ("non-migratable"); a device with nothing to
    # save declares an empty description (vmstate_no_state).
    vmsd: VMStateDescription | None = None


class DeviceState(Object):
    id: str | None
    realized: bool = False  # property defaults are set before instance_init runs
    hotplugged: bool
    parent_bus: BusState | None
    child_buses: list[BusState]
    gpio_in: dict[str, list[IRQ]]
    gpio_out: dict[str, list[IRQLine]]
    # Set while one of the device's register handlers runs (see MemReentrancyGuard).
    mem_reentrancy_guard: MemReentrancyGuard

    # -- realize ---------------------------------------------------------------
    def set_realized(self, value: bool) -> None:
        if value == self.realized:
            return
        dc = object_class_check(self.klass, DeviceClass)
        if value:
            if self.parent is None:
                # Devices nobody adopted go under /machine/unattached.
                unattached = container_get(object_get_root(), "/machine/unattached")
                n = sum(1 for name, _ in unattached.children() if name.startswith("device["))
                while unattached.child(f"device[{n}]") is not None:
                    n += 1
                unattached.add_child(f"device[{n}]", self)
            if dc.realize is not None:
                dc.realize(self)
            self.realized = True
            for bus in self.child_buses:
                bus.realized = True
            if phase_check(MachineInitPhase.MACHINE_READY):
                self.hotplugged = True
                device_cold_reset(self)
        else:
            for bus in self.child_buses:
                for child in list(bus.devices_on_bus):
                    child.set_realized(False)
                bus.realized = False
            if dc.unrealize is not None:
                dc.unrealize(self)
            self.realized = False

    def _before_unparent(self) -> None:
        if self.realized:
            self.set_realized(False)
        if self.parent_bus is not None:
            self.parent_bus.remove_device(self)

    # -- GPIO lines (qdev_init_gpio_in/out) ----------------------------------------
    def init_gpio_in(self, handler: Callable[[int, int], None], count: int, name: str = "") -> None:
        lines = self.gpio_in.setdefault(name, [])
        base = len(lines)
        lines.extend(IRQ(handler, base + i) for i in range(count))

    def init_gpio_out(self, count: int, name: str = "") -> list[IRQLine]:
        lines = self.gpio_out.setdefault(name, [])
        lines.extend(NoIRQ() for _ in range(count))
        return lines

    def get_gpio_in(self, n: int, name: str = "") -> IRQ:
        return self.gpio_in[name][n]

    def connect_gpio_out(self, n: int, line: IRQLine, name: str = "") -> None:
        self.gpio_out[name][n] = line

    def get_gpio_out(self, n: int, name: str = "") -> IRQLine:
        return self.gpio_out[name][n]


def _device_initfn(obj: Object) -> None:
    dev = object_check(obj, DeviceState)
    dev.id = None
    dev.realized = False
    dev.hotplugged = False
    dev.parent_bus = None
    dev.child_buses = []
    dev.gpio_in = {}
    dev.gpio_out = {}
    dev.mem_reentrancy_guard = MemReentrancyGuard()
    if phase_check(MachineInitPhase.MACHINE_READY):
        dev.hotplugged = True


def _device_post_init(obj: Object) -> None:
    qdev_prop_set_globals(object_check(obj, DeviceState))


def _device_finalize(obj: Object) -> None:
    dev = object_check(obj, DeviceState)
    if dev.realized:
        dev.set_realized(False)


def _device_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.props = []
    dc.property_add(ObjectProperty(
        "realized", "bool",
        get=lambda o: object_check(o, DeviceState).realized,
        set=lambda o, v: object_check(o, DeviceState).set_realized(v),
    ))


type_register(TypeInfo(
    TYPE_DEVICE, parent=TYPE_OBJECT, abstract=True,
    instance_type=DeviceState, class_type=DeviceClass,
    class_init=_device_class_init, instance_init=_device_initfn,
    instance_post_init=_device_post_init, instance_finalize=_device_finalize,
))


def qdev_new(typename: str) -> DeviceState:
    obj = object_new(typename)
    if not isinstance(obj, DeviceState):
        raise QOMError(f"'{typename}' is not a device")
    return obj


def qdev_realize(dev: DeviceState, bus: BusState | None) -> None:
    """Put ``dev`` on ``bus`` and realize it (qdev_realize)."""
    dc = object_class_check(dev.klass, DeviceClass)
    if bus is not None:
        bus.add_device(dev)
    elif dc.bus_type is not None and dev.parent_bus is None:
        raise QOMError(f"device '{dev.typename}' needs a bus of type {dc.bus_type}")
    dev.property_set("realized", True)


def qdev_realize_and_unref(dev: DeviceState, bus: BusState | None) -> None:
    qdev_realize(dev, bus)
    dev.unref()


def qdev_unrealize(dev: DeviceState) -> None:
    dev.property_set("realized", False)


# --- buses ---------------------------------------------------------------------------


class BusClass(ObjectClass):
    max_dev: int = 0  # 0: no limit
    # How a device's path on this bus is named in `info qtree` (extra lines).
    print_dev: Callable[[BusState, DeviceState, int], list[str]] | None = None


class BusState(Object):
    name: str
    realized: bool
    devices_on_bus: list[DeviceState]  # QEMU's BusState.children
    parent_dev: DeviceState | None

    def add_device(self, dev: DeviceState) -> None:
        bc = object_class_check(self.klass, BusClass)
        if bc.max_dev and len(self.devices_on_bus) >= bc.max_dev:
            raise QOMError(f"Bus '{self.name}' does not support hotplugging" if self.realized
                           else f"Bus '{self.name}' is full")
        if dev.parent_bus is not None:
            dev.parent_bus.remove_device(dev)
        self.devices_on_bus.append(dev)
        dev.parent_bus = self

    def remove_device(self, dev: DeviceState) -> None:
        if dev in self.devices_on_bus:
            self.devices_on_bus.remove(dev)
        dev.parent_bus = None


def _bus_initfn(obj: Object) -> None:
    bus = object_check(obj, BusState)
    bus.name = ""
    bus.realized = False
    bus.devices_on_bus = []
    bus.parent_dev = None


type_register(TypeInfo(TYPE_BUS, parent=TYPE_OBJECT, abstract=True, instance_type=BusState,
                       class_type=BusClass, instance_init=_bus_initfn))

def qbus_new(typename: str, parent: DeviceState | None, name: str | None) -> BusState:
    """Make a bus, as a child of ``parent`` (qbus_init): unnamed buses are
    named after their parent's id or their type, with a counter."""
    bus = object_new(typename)
    assert isinstance(bus, BusState)
    if name is None:
        base = (parent.id if parent is not None and parent.id else typename).lower()
        bus_counts = current_vm().bus_counts
        n = bus_counts.get(base, 0)
        bus_counts[base] = n + 1
        name = f"{base}.{n}"
    bus.name = name
    bus.parent_dev = parent
    if parent is not None:
        parent.child_buses.append(bus)
        parent.add_child(name, bus)
        bus.unref()
        bus.realized = parent.realized
    return bus


def qbus_walk_devices(bus: BusState) -> Iterator[DeviceState]:
    for dev in list(bus.devices_on_bus):
        yield dev
        for child_bus in dev.child_buses:
            yield from qbus_walk_devices(child_bus)


def qbus_find(root: BusState, name: str) -> BusState | None:
    if root.name == name:
        return root
    for dev in root.devices_on_bus:
        for child in dev.child_buses:
            found = qbus_find(child, name)
            if found is not None:
                return found
    return None


def qbus_iter(root: BusState) -> Iterator[BusState]:
    yield root
    for dev in root.devices_on_bus:
        for child in dev.child_buses:
            yield from qbus_iter(child)


# --- reset ---------------------------------------------------------------------------


def device_cold_reset(dev: DeviceState) -> None:
    """Reset a device and everything on its buses (children first, as the
    Resettable phases leave devices below before their bridge)."""
    for bus in dev.child_buses:
        for child in list(bus.devices_on_bus):
            device_cold_reset(child)
    dc = object_class_check(dev.klass, DeviceClass)
    if dc.reset is not None:
        dc.reset(dev)


def bus_cold_reset(bus: BusState) -> None:
    for dev in list(bus.devices_on_bus):
        device_cold_reset(dev)


def qemu_register_reset(fn: Callable[[], None]) -> None:
    """``fn()`` runs at every system reset of the VM being built."""
    current_vm().reset_handlers.append(fn)


def qemu_unregister_reset(fn: Callable[[], None]) -> None:
    handlers = current_vm().reset_handlers
    if fn in handlers:
        handlers.remove(fn)


def qemu_run_reset_handlers() -> None:
    for fn in list(current_vm().reset_handlers):
        fn()
