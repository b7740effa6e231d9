"""The monitor commands, each written once (QEMU's qmp_* functions across
monitor/qmp-cmds.c, qom/qom-qmp-commands.c, softmmu/, block/ and net/).

Every command is a typed function in :data:`QMP_COMMANDS`; the QMP server
(:mod:`pemu.monitor.qmp`) dispatches JSON requests to it and the human
monitor (:mod:`pemu.monitor.hmp_cmds`) calls the same function and formats
its result.  The result types are ``TypedDict``s named as QEMU's QAPI
schema names them; :data:`QMP_EVENTS` lists the events pemu sends.

Commands run on the main-loop thread with the VM of the monitor that runs
them as the current VM.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from pemu.qapi.commands import CommandTable, EventInfo
from pemu.qapi.error import ErrorClass, QMPError, device_not_found
from pemu.qom.object import Object, object_get_root, object_resolve_path
from pemu.system import cpus, runstate
from pemu.system.runstate import RunState, ShutdownCause
from pemu.util.error import UserError
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.monitor.qmp import MonitorQMP

QMP_COMMANDS = CommandTable()
command = QMP_COMMANDS.command

# QMP's negotiation mode knows one command (qmp_cap_negotiation_commands).
QMP_CAP_NEGOTIATION_COMMANDS = CommandTable()


# --- capabilities --------------------------------------------------------------------------------


class QMPCapability(Enum):
    OOB = "oob"


def _qmp_capabilities(mon: MonitorQMP, *, enable: list[QMPCapability] | None = None) -> None:
    """Leave capabilities negotiation (qmp_qmp_capabilities)."""
    mon.negotiate(enable or [])


QMP_CAP_NEGOTIATION_COMMANDS.command("qmp_capabilities")(_qmp_capabilities)
command("qmp_capabilities")(_qmp_capabilities)


# --- version, commands, schema -------------------------------------------------------------------


class VersionTriple(TypedDict):
    major: int
    minor: int
    micro: int


class VersionInfo(TypedDict):
    qemu: VersionTriple
    package: str


def pemu_version() -> str:
    import pemu

    return pemu.__version__


@command("query-version")
def qmp_query_version() -> VersionInfo:
    """pemu's own version (the "qemu" member holds pemu's numbers)."""
    parts = [int(p) if p.isdigit() else 0 for p in pemu_version().split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return {"qemu": {"major": parts[0], "minor": parts[1], "micro": parts[2]}, "package": ""}


class CommandInfo(TypedDict):
    name: str


@command("query-commands")
def qmp_query_commands() -> list[CommandInfo]:
    return [{"name": cmd.name} for cmd in QMP_COMMANDS]


@command("query-qmp-schema")
def qmp_query_qmp_schema() -> list[Any]:
    from pemu.qapi.introspect import qmp_schema

    return qmp_schema(QMP_COMMANDS, QMP_EVENTS)


# --- run state -----------------------------------------------------------------------------------


class StatusInfo(TypedDict):
    running: bool
    singlestep: bool
    status: RunState


@command("query-status")
def qmp_query_status() -> StatusInfo:
    return {"running": runstate.runstate_is_running(), "singlestep": False, "status": runstate.runstate_get()}


@command("stop")
def qmp_stop() -> None:
    cpus.vm_stop(RunState.PAUSED)


@command("cont")
def qmp_cont() -> None:
    if runstate.runstate_get() in (RunState.SHUTDOWN, RunState.INTERNAL_ERROR):
        raise QMPError("Resetting the Virtual Machine is required")
    cpus.vm_start()


@command("quit")
def qmp_quit() -> None:
    runstate.qemu_system_shutdown_request(ShutdownCause.HOST_QMP_QUIT)


@command("system_reset")
def qmp_system_reset() -> None:
    runstate.qemu_system_reset_request(ShutdownCause.HOST_QMP_SYSTEM_RESET)


@command("system_powerdown")
def qmp_system_powerdown() -> None:
    if not runstate.qemu_system_powerdown_request():
        raise QMPError("this machine has no power button (no ACPI power button handler)")


# --- the machine ---------------------------------------------------------------------------------


class NameInfo(TypedDict):
    name: NotRequired[str]


def vm_name() -> str | None:
    """The -name of the VM, when the command line set one (kept on the machine)."""
    machine = current_vm().machine
    name = machine.name_ if machine is not None else None
    return name or None


@command("query-name")
def qmp_query_name() -> NameInfo:
    name = vm_name()
    return {"name": name} if name is not None else {}


class UuidInfo(TypedDict):
    UUID: str


@command("query-uuid")
def qmp_query_uuid() -> UuidInfo:
    return {"UUID": "00000000-0000-0000-0000-000000000000"}  # pemu has no -uuid: QEMU's default


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


class PciBusRange(TypedDict):
    base: int
    limit: int


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


# --- block ------------------------------------------------------------------------------------------


BlockdevCacheInfo = TypedDict("BlockdevCacheInfo", {"writeback": bool, "direct": bool, "no-flush": bool})

ImageInfo = TypedDict("ImageInfo", {
    "filename": str, "format": str, "virtual-size": int, "backing-filename": NotRequired[str],
})

BlockDeviceInfo = TypedDict("BlockDeviceInfo", {
    "file": str, "node-name": NotRequired[str], "ro": bool, "drv": str, "backing_file": NotRequired[str],
    "backing_file_depth": int, "encrypted": bool, "cache": BlockdevCacheInfo, "image": ImageInfo,
})

class BlockInfo(TypedDict):
    device: str
    qdev: NotRequired[str]
    type: str
    removable: bool
    locked: bool
    inserted: NotRequired[BlockDeviceInfo]
    tray_open: NotRequired[bool]


def block_devices() -> Any:
    from pemu.hw.core.machine import MachineState

    machine = object_get_root().child("machine")
    if not isinstance(machine, MachineState):
        raise QMPError("no machine")
    return machine.block_devices


@command("query-block")
def qmp_query_block() -> list[BlockInfo]:
    result: list[BlockInfo] = []
    for drive in block_devices().drives:
        blk = drive.blk
        info: BlockInfo = {"device": drive.id, "type": "unknown", "removable": drive.media_cd, "locked": False}
        if drive.claimed_by is not None:
            info["qdev"] = drive.claimed_by
        if drive.media_cd:
            info["tray_open"] = False
        bs = blk.root
        if bs is not None:
            chain = bs.chain()
            inserted: BlockDeviceInfo = {
                "file": bs.filename, "node-name": bs.node_name, "ro": bool(bs.read_only), "drv": bs.format_name,
                "backing_file_depth": len(chain) - 1, "encrypted": False,
                "cache": {"writeback": bool(blk.enable_write_cache), "direct": bool(bs.cache.direct),
                          "no-flush": bool(bs.cache.no_flush)},
                "image": {"filename": bs.filename, "format": bs.format_name, "virtual-size": blk.getlength()},
            }
            if len(chain) > 1:
                inserted["backing_file"] = bs.backing_file or chain[1].filename
                inserted["image"]["backing-filename"] = inserted["backing_file"]
            info["inserted"] = inserted
        result.append(info)
    return result


class BlockDeviceStats(TypedDict):
    rd_bytes: int
    wr_bytes: int
    rd_operations: int
    wr_operations: int
    flush_operations: int
    rd_total_time_ns: int
    wr_total_time_ns: int
    flush_total_time_ns: int
    rd_merged: int
    wr_merged: int
    idle_time_ns: NotRequired[int]


BlockStats = TypedDict("BlockStats", {
    "device": NotRequired[str], "node-name": NotRequired[str], "qdev": NotRequired[str], "stats": BlockDeviceStats,
})


@command("query-blockstats")
def qmp_query_blockstats() -> list[BlockStats]:
    result: list[BlockStats] = []
    for drive in block_devices().drives:
        s = drive.blk.stats
        entry: BlockStats = {"device": drive.id, "stats": {
            "rd_bytes": s.rd_bytes, "wr_bytes": s.wr_bytes, "rd_operations": s.rd_operations,
            "wr_operations": s.wr_operations, "flush_operations": s.flush_operations,
            "rd_total_time_ns": s.rd_total_time_ns, "wr_total_time_ns": s.wr_total_time_ns,
            "flush_total_time_ns": s.flush_total_time_ns, "rd_merged": 0, "wr_merged": 0, "idle_time_ns": 0}}
        if drive.blk.root is not None:
            entry["node-name"] = drive.blk.root.node_name
        if drive.claimed_by is not None:
            entry["qdev"] = drive.claimed_by
        result.append(entry)
    return result


# --- chardevs ---------------------------------------------------------------------------------------


ChardevInfo = TypedDict("ChardevInfo", {"label": str, "filename": str, "frontend-open": bool})


@command("query-chardev")
def qmp_query_chardev() -> list[ChardevInfo]:
    from pemu.chardev.registry import qemu_chr_list

    return [{"label": chr_.label, "filename": chr_.filename, "frontend-open": chr_.be is not None}
            for chr_ in qemu_chr_list()]


class ChardevBackend(TypedDict):
    type: str
    data: Any  # the back-end's options (QEMU's flat union, by "type")


class ChardevReturn(TypedDict):
    pty: NotRequired[str]


def _chardev_opts(ident: str, backend: dict[str, Any]) -> dict[str, str]:
    """-chardev options for a QMP ChardevBackend ({"type": ..., "data": {...}})."""
    kind = backend["type"]
    data = backend.get("data") or {}
    if not isinstance(data, dict):
        raise QMPError("Invalid parameter type for 'backend.data', expected: object")
    opts: dict[str, str] = {"id": ident, "backend": kind}

    def flag(key: str, value: object) -> None:
        if value is not None:
            opts[key] = "on" if value else "off"

    if kind == "null":
        pass
    elif kind == "file":
        if "out" not in data:
            raise QMPError("Parameter 'backend.data.out' is missing")
        opts["path"] = str(data["out"])
        flag("append", data.get("append"))
    elif kind == "pipe":
        opts["path"] = str(data.get("device", ""))
    elif kind == "socket":
        addr = data.get("addr") or {}
        addr_data = addr.get("data") or {}
        if addr.get("type") == "unix":
            opts["path"] = str(addr_data.get("path", ""))
        elif addr.get("type") == "inet":
            opts["host"] = str(addr_data.get("host", ""))
            opts["port"] = str(addr_data.get("port", ""))
        else:
            raise QMPError(f"socket address type '{addr.get('type')}' is not supported by pemu")
        flag("server", data.get("server"))
        flag("wait", data.get("wait"))
        flag("nodelay", data.get("nodelay"))
    else:
        raise QMPError(f"chardev backend '{kind}' cannot be added at run time by pemu")
    return opts


@command("chardev-add")
def qmp_chardev_add(*, id: str, backend: ChardevBackend) -> ChardevReturn:
    from pemu.chardev.registry import qemu_chr_new_from_opts

    try:
        qemu_chr_new_from_opts(_chardev_opts(id, dict(backend)))
    except UserError as e:
        raise QMPError(e.message) from None
    return {}


@command("chardev-remove")
def qmp_chardev_remove(*, id: str) -> None:
    from pemu.chardev.registry import qemu_chr_delete, qemu_chr_find

    chr_ = qemu_chr_find(id)
    if chr_ is None:
        raise QMPError(f"Chardev '{id}' not found")
    if chr_.be is not None:
        raise QMPError(f"Chardev '{id}' is busy")
    qemu_chr_delete(id)


# --- fd sets ----------------------------------------------------------------------------------------


class FdsetFdInfo(TypedDict):
    fd: int
    opaque: NotRequired[str]


FdsetInfo = TypedDict("FdsetInfo", {"fdset-id": int, "fds": list[FdsetFdInfo]})


@command("query-fdsets")
def qmp_query_fdsets() -> list[FdsetInfo]:
    fdsets = current_vm().fdsets
    result: list[FdsetInfo] = []
    for fdset_id, entries in sorted(fdsets.sets.items()) if fdsets is not None else []:
        fds: list[FdsetFdInfo] = []
        for entry in entries:
            info: FdsetFdInfo = {"fd": entry.fd}
            if entry.opaque is not None:
                info["opaque"] = entry.opaque
            fds.append(info)
        result.append({"fdset-id": fdset_id, "fds": fds})
    return result


@command("remove-fd")
def qmp_remove_fd(*, fdset_id: int, fd: int | None = None) -> None:
    fdsets = current_vm().fdsets
    if fdsets is None or not fdsets.remove_fd(fdset_id, fd):
        name = f"fdset-id:{fdset_id}" + (f", fd:{fd}" if fd is not None else "")
        raise QMPError(f"File descriptor named '{name}' not found")


# --- network ----------------------------------------------------------------------------------------


@command("set_link")
def qmp_set_link(*, name: str, up: bool) -> None:
    from pemu.net.net import net_state, qemu_set_link

    try:
        qemu_set_link(net_state(), name, up)
    except UserError as e:
        raise QMPError(e.message, ErrorClass.DEVICE_NOT_FOUND) from None


def flatten_arguments(args: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested QMP arguments as the command line's dotted keys ({"addr": {"type": "unix"}} is addr.type)."""
    flat: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, dict):
            flat.update(flatten_arguments(value, f"{prefix}{key}."))
        elif isinstance(value, bool):
            flat[prefix + key] = "on" if value else "off"
        else:
            flat[prefix + key] = value
    return flat


@command("netdev_add")
def qmp_netdev_add(*, type: str, id: str, **props: Any) -> None:
    from pemu.net.net import net_state
    from pemu.net.netdev import net_client_init
    from pemu.util.main_loop import main_loop
    from pemu.util.qemu_opts import QemuOptsList

    net = net_state()
    if net.find_netdev(id) is not None:
        raise QMPError(f"Duplicate ID '{id}' for netdev")
    try:
        opts = QemuOptsList("netdev").create(id)
        opts.set("type", type)
        for key, value in flatten_arguments(props).items():
            for item in value if isinstance(value, list) else [value]:
                opts.set(key, item if isinstance(item, (str, bool, int)) else str(item))
        net_client_init(net, main_loop(), opts, id)
    except UserError as e:
        raise QMPError(e.message) from None


@command("netdev_del")
def qmp_netdev_del(*, id: str) -> None:
    from pemu.net.net import net_state

    nc = net_state().find_netdev(id)
    if nc is None:
        raise device_not_found(f"Device '{id}' not found")
    nc.delete()


# --- the human monitor, from QMP ------------------------------------------------------------------


@command("human-monitor-command")
def qmp_human_monitor_command(mon: MonitorQMP, *, command_line: str, cpu_index: int | None = None) -> str:
    """Run one HMP command line and return what it printed (QEMU's qmp_human_monitor_command)."""
    if cpu_index is not None and cpu_index not in {cpu.cpu_index for cpu in machine_cpus()}:
        raise QMPError("Parameter 'cpu-index' expects a CPU index")
    return mon.run_hmp_line(command_line)


# --- events -----------------------------------------------------------------------------------------


class ShutdownEvent(TypedDict):
    guest: bool
    reason: ShutdownCause


class ResetEvent(TypedDict):
    guest: bool
    reason: ShutdownCause


QMP_EVENTS: tuple[EventInfo, ...] = (
    EventInfo("SHUTDOWN", ShutdownEvent),
    EventInfo("POWERDOWN"),
    EventInfo("RESET", ResetEvent),
    EventInfo("STOP"),
    EventInfo("RESUME"),
)
