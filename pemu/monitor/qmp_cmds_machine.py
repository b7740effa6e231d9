"""Machine, CPU, QOM, device and PCI commands (QEMU's hw/core/machine-qmp-cmds.c,
qom/qom-qmp-cmds.c, softmmu/qdev-monitor.c, hw/pci/pci.c's query-pci)."""

# No postponed annotations: see pemu.monitor.qmp_cmds.
import os
from enum import Enum
from typing import Any, NotRequired, TypedDict

from pemu.qapi.commands import CommandTable
from pemu.qapi.error import QMPError, device_not_found
from pemu.qom.object import Object, object_get_root, object_resolve_path
from pemu.util.error import UserError
from pemu.util.vm_context import current_vm

COMMANDS = CommandTable()
command = COMMANDS.command


MachineInfo = TypedDict("MachineInfo", {
    "name": str, "alias": NotRequired[str], "is-default": NotRequired[bool], "cpu-max": int,
    "hotpluggable-cpus": bool, "numa-mem-supported": bool, "deprecated": bool,
    "default-cpu-type": NotRequired[str], "default-ram-id": NotRequired[str],
})


@command("query-machines")
def qmp_query_machines() -> list[MachineInfo]:
    from pemu.hw.core.machine import TYPE_MACHINE, MachineClass
    from pemu.qom.object import object_class_check, object_class_get_list_sorted

    result: list[MachineInfo] = []
    for klass in object_class_get_list_sorted(TYPE_MACHINE, False):
        mc = object_class_check(klass, MachineClass)
        info: MachineInfo = {"name": mc.name, "cpu-max": mc.max_cpus, "hotpluggable-cpus": False,
                                 "numa-mem-supported": False, "deprecated": mc.deprecation_reason is not None}
        if mc.alias:
            info["alias"] = mc.alias
        if mc.is_default:
            info["is-default"] = True
        if mc.default_cpu_type:
            info["default-cpu-type"] = mc.default_cpu_type
        if mc.default_ram_id:
            info["default-ram-id"] = mc.default_ram_id
        result.append(info)
    return result


class KvmInfo(TypedDict):
    enabled: bool
    present: bool


@command("query-kvm")
def qmp_query_kvm() -> KvmInfo:
    accel = current_vm().accel
    present = os.access("/dev/kvm", os.R_OK | os.W_OK)
    return {"enabled": accel is not None and accel.name == "kvm", "present": present}


# --- CPUs -----------------------------------------------------------------------------------------


class SysEmuTarget(Enum):
    X86_64 = "x86_64"


CpuInstanceProperties = TypedDict("CpuInstanceProperties", {
    "node-id": NotRequired[int], "socket-id": NotRequired[int], "die-id": NotRequired[int],
    "core-id": NotRequired[int], "thread-id": NotRequired[int],
})

CpuInfoFast = TypedDict("CpuInfoFast", {
    "cpu-index": int, "qom-path": str, "thread-id": int, "props": NotRequired[CpuInstanceProperties],
    "target": SysEmuTarget,
})


def machine_cpus() -> list[Any]:
    """The CPU objects of the machine, by cpu_index: the CPUs, or objects of
    a type named like one that have its fields (the monitor's tests use such)."""
    from pemu.monitor.qom_info import qom_children

    found: list[Any] = []

    def walk(obj: Object) -> None:
        for _, child in qom_children(obj):
            if child.typename.endswith("-x86_64-cpu") or child.is_a("cpu"):
                found.append(child)
            else:
                walk(child)

    walk(object_get_root())
    return sorted(found, key=lambda cpu: cpu.cpu_index)


def cpu_thread_id(cpu: Any) -> int:
    thread = cpu.run.thread
    native = thread.native_id if thread is not None else None
    return native if isinstance(native, int) else os.getpid()


def _cpu_topology_props(index: int) -> CpuInstanceProperties | None:
    from pemu.hw.core.machine import MachineState

    machine = current_vm().machine
    if not isinstance(machine, MachineState):
        return None
    smp = machine.smp
    threads, cores = max(1, smp.threads), max(1, smp.cores)
    return {"socket-id": index // (cores * threads), "core-id": (index // threads) % cores,
            "thread-id": index % threads}


@command("query-cpus-fast")
def qmp_query_cpus_fast() -> list[CpuInfoFast]:
    result: list[CpuInfoFast] = []
    for cpu in machine_cpus():
        info: CpuInfoFast = {"cpu-index": cpu.cpu_index, "qom-path": cpu.canonical_path() or "",
                             "thread-id": cpu_thread_id(cpu), "target": SysEmuTarget.X86_64}
        props = _cpu_topology_props(cpu.cpu_index)
        if props is not None:
            info["props"] = props
        result.append(info)
    return result


HotpluggableCPU = TypedDict("HotpluggableCPU", {
    "type": str, "vcpus-count": int, "props": CpuInstanceProperties, "qom-path": NotRequired[str],
})


@command("query-hotpluggable-cpus")
def qmp_query_hotpluggable_cpus() -> list[HotpluggableCPU]:
    """Every possible CPU slot (-smp maxcpus), with the present CPU's path."""
    from pemu.hw.core.machine import MachineState

    machine = current_vm().machine
    if not isinstance(machine, MachineState):
        raise QMPError("machine does not support hot-plugging CPUs")
    present = {cpu.cpu_index: cpu for cpu in machine_cpus()}
    result: list[HotpluggableCPU] = []
    for index in range(machine.smp.max_cpus - 1, -1, -1):  # QEMU lists them last first
        props = _cpu_topology_props(index)
        assert props is not None
        entry: HotpluggableCPU = {"type": machine.cpu_type or "", "vcpus-count": 1, "props": props}
        cpu = present.get(index)
        if cpu is not None:
            entry["qom-path"] = cpu.canonical_path() or ""
        result.append(entry)
    return result


# --- QOM ------------------------------------------------------------------------------------------


ObjectPropertyInfo = TypedDict("ObjectPropertyInfo", {
    "name": str, "type": str, "description": NotRequired[str], "default-value": NotRequired[Any],
})


def _resolve(path: str) -> Object:
    obj = object_resolve_path(path)
    if obj is None:
        raise device_not_found(f"Device '{path}' not found")
    return obj


@command("qom-list")
def qmp_qom_list(*, path: str) -> list[ObjectPropertyInfo]:
    obj = _resolve(path)
    return [{"name": prop.name, "type": prop.type} for prop in obj.property_iter()]


@command("qom-get")
def qmp_qom_get(*, path: str, property: str) -> Any:
    """The property's value as JSON (objects by their canonical path)."""
    obj = _resolve(path)
    return qom_value_json(obj.property_get(property))


def qom_value_json(value: Any) -> Any:
    if isinstance(value, Object):
        return value.canonical_path() or ""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [qom_value_json(v) for v in value]
    return str(value)


@command("qom-set")
def qmp_qom_set(*, path: str, property: str, value: Any) -> None:
    obj = _resolve(path)
    if isinstance(value, str):
        obj.property_parse(property, value)
    else:
        obj.property_set(property, value)


class ObjectTypeInfo(TypedDict):
    name: str
    abstract: NotRequired[bool]
    parent: NotRequired[str]


@command("qom-list-types")
def qmp_qom_list_types(*, implements: str | None = None, abstract: bool = False) -> list[ObjectTypeInfo]:
    from pemu.qom.object import object_class_get_list

    result: list[ObjectTypeInfo] = []
    for klass in object_class_get_list(implements, abstract):
        # By the type's name: a machine class's `name` field is its -machine name.
        info: ObjectTypeInfo = {"name": klass.type.name}
        if klass.abstract:
            info["abstract"] = True
        parent = klass.type.parent_type
        if parent is not None:
            info["parent"] = parent.name
        result.append(info)
    return result


@command("device-list-properties")
def qmp_device_list_properties(*, typename: str) -> list[ObjectPropertyInfo]:
    from pemu.hw.core.qdev import TYPE_DEVICE, DeviceClass
    from pemu.qom.object import object_class_by_name

    klass = object_class_by_name(typename)
    if klass is None:
        raise device_not_found(f"Device '{typename}' not found")
    if not klass.dynamic_cast(TYPE_DEVICE) or not isinstance(klass, DeviceClass):
        raise QMPError("Parameter 'typename' expects device type")
    if klass.abstract:
        raise QMPError("Parameter 'typename' expects non-abstract device type")
    result: list[ObjectPropertyInfo] = []
    seen: set[str] = set()
    k: Any = klass
    while isinstance(k, DeviceClass):
        for prop in k.props:
            if prop.name in seen:
                continue
            seen.add(prop.name)
            info: ObjectPropertyInfo = {"name": prop.name, "type": prop.kind}
            if prop.default is not None:
                info["default-value"] = qom_value_json(prop.default)
            result.append(info)
        k = k.parent_class
    return result


# --- devices ----------------------------------------------------------------------------------------


@command("device_add")
def qmp_device_add(*, driver: str, bus: str | None = None, id: str | None = None, **props: Any) -> None:
    """Hot-plug a device: pemu's buses take none once the machine runs, so
    this reports QEMU's reason (the device or the bus is not hot-pluggable)."""
    from pemu.qom.object import QOMError
    from pemu.system.qdev_monitor import qdev_device_add
    from pemu.util.qemu_opts import QemuOptsList

    opts = QemuOptsList("device").create(id)
    opts.set("driver", driver)
    if bus is not None:
        opts.set("bus", bus)
    for key, value in props.items():
        opts.set(key, value if isinstance(value, (str, bool, int)) else str(value))
    try:
        qdev_device_add(opts)
    except UserError as e:
        raise QMPError(e.message) from None
    except QOMError as e:
        raise QMPError(str(e)) from None


@command("device_del")
def qmp_device_del(*, id: str) -> None:
    from pemu.hw.core.qdev import DeviceState

    obj = object_resolve_path(id) if id.startswith("/") else None
    if obj is None:
        machine = object_get_root().child("machine")
        peripheral = machine.child("peripheral") if machine is not None else None
        obj = peripheral.child(id) if peripheral is not None else None
    if not isinstance(obj, DeviceState):
        raise device_not_found(f"Device '{id}' not found")
    bus = obj.parent_bus
    name = bus.name if bus is not None else "main-system-bus"
    raise QMPError(f"Bus '{name}' does not support hotplugging")


@command("screendump")
def qmp_screendump(*, filename: str, device: str | None = None, head: int | None = None,
                   format: str | None = None) -> None:
    raise QMPError("There is no console to take a screendump from")  # pemu has no display


# --- PCI --------------------------------------------------------------------------------------------


class PciMemoryRegion(TypedDict):
    bar: int
    type: str
    address: int
    size: int
    prefetch: NotRequired[bool]
    mem_type_64: NotRequired[bool]

PciDeviceClass = TypedDict("PciDeviceClass", {"desc": NotRequired[str], "class": int})

PciDeviceId = TypedDict("PciDeviceId", {
    "device": int, "vendor": int, "subsystem": NotRequired[int], "subsystem-vendor": NotRequired[int],
})


class PciDeviceInfo(TypedDict):
    bus: int
    slot: int
    function: int
    class_info: PciDeviceClass
    id: PciDeviceId
    irq: NotRequired[int]
    irq_pin: int
    qdev_id: str
    regions: list[PciMemoryRegion]


class PciInfo(TypedDict):
    bus: int
    devices: list[PciDeviceInfo]


def _pci_buses() -> list[Any]:
    from pemu.hw.core.qdev import qbus_iter
    from pemu.hw.core.sysbus import sysbus_get_default
    from pemu.hw.pci.pci import PCIBus

    return [bus for bus in qbus_iter(sysbus_get_default()) if isinstance(bus, PCIBus)]


def _pci_device_info(dev: Any, bus_num: int) -> PciDeviceInfo:
    from pemu.monitor.qom_info import PCI_CLASS_NAMES

    config = dev.config

    def word(off: int) -> int:
        return int.from_bytes(config[off:off + 2], "little")

    class_id = word(0x0A)
    class_info: PciDeviceClass = {"class": class_id}
    if class_id in PCI_CLASS_NAMES:
        class_info["desc"] = PCI_CLASS_NAMES[class_id]
    regions: list[PciMemoryRegion] = []
    for n, region in enumerate(dev.io_regions):
        if region is None or not region.size:
            continue
        entry: PciMemoryRegion = {"bar": n, "type": "io" if region.is_io else "memory",
                                  "address": region.addr & ((1 << 64) - 1), "size": region.size}
        if not region.is_io:
            entry["prefetch"] = bool(region.type & 0x08)
            entry["mem_type_64"] = region.is_64bit
        regions.append(entry)
    info: PciDeviceInfo = {
        "bus": bus_num, "slot": (dev.devfn >> 3) & 0x1F, "function": dev.devfn & 7,
        "class_info": class_info,
        "id": {"device": word(0x02), "vendor": word(0x00), "subsystem": word(0x2E),
               "subsystem-vendor": word(0x2C)},
        "irq_pin": config[0x3D], "qdev_id": dev.id or "", "regions": regions,
    }
    if config[0x3D]:
        info["irq"] = config[0x3C]
    return info


@command("query-pci")
def qmp_query_pci() -> list[PciInfo]:
    from pemu.hw.pci.pci import PCIDevice

    result: list[PciInfo] = []
    for bus in _pci_buses():
        devices = [_pci_device_info(dev, bus.bus_num) for dev in bus.devices_on_bus
                   if isinstance(dev, PCIDevice) and dev.devfn >= 0]
        devices.sort(key=lambda d: (d["slot"], d["function"]))
        result.append({"bus": bus.bus_num, "devices": devices})
    return result
