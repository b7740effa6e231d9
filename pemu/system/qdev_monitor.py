"""-device: creating user devices (QEMU's system/qdev-monitor.c), and the
-device help texts."""

from __future__ import annotations

import sys

from pemu.hw.core.qdev import (
    TYPE_DEVICE,
    BusClass,
    BusState,
    DeviceClass,
    DeviceState,
    MachineInitPhase,
    phase_check,
    qbus_iter,
    qdev_new,
    qdev_realize,
)
from pemu.qom.object import (
    QOMError,
    container_get,
    object_class_by_name,
    object_class_check,
    object_class_get_list_sorted,
    object_get_root,
)
from pemu.util.error import EarlyExit
from pemu.util.qemu_opts import QemuOpts

CATEGORY_NAMES = {
    "bridge": "Controller/Bridge/Hub devices",
    "usb": "USB devices",
    "storage": "Storage devices",
    "network": "Network devices",
    "input": "Input devices",
    "display": "Display devices",
    "sound": "Sound devices",
    "misc": "Misc devices",
    "cpu": "CPU devices",
    "watchdog": "Watchdog devices",
}


def _bus_name(dc: DeviceClass) -> str:
    return dc.bus_type or "System"


def device_help_list(show_internal: bool = False) -> str:
    """The text of `-device help`: user-creatable devices by category."""
    groups: dict[str, list[str]] = {}
    for klass in object_class_get_list_sorted(TYPE_DEVICE, False):
        dc = object_class_check(klass, DeviceClass)
        if not dc.user_creatable and not show_internal:
            continue
        line = f'name "{dc.name}", bus {_bus_name(dc)}'
        if dc.desc:
            line += f', desc "{dc.desc}"'
        cats = dc.categories or ("uncategorized",)
        for cat in cats:
            groups.setdefault(cat, []).append(line)
    out: list[str] = []
    order = list(CATEGORY_NAMES) + ["uncategorized"]
    for cat in order + sorted(set(groups) - set(order)):
        if cat in groups:
            out.append(f"{CATEGORY_NAMES.get(cat, 'Uncategorized devices')}:")
            out.extend(groups[cat])
            out.append("")
    return "\n".join(out)


def device_help_props(driver: str) -> str:
    klass = object_class_by_name(driver)
    if klass is None:
        from pemu.net.netdev import PLANNED_NIC_MODELS

        if driver in PLANNED_NIC_MODELS:
            raise QOMError(f"NIC model '{driver}' is not supported by pemu yet")
    if klass is None or not klass.dynamic_cast(TYPE_DEVICE):
        raise QOMError(f"'{driver}' is not a valid device model name")
    lines = [f"{driver} options:"]
    for prop in sorted(klass.property_iter(), key=lambda p: p.name):
        if prop.name == "realized":
            continue
        text = f"  {prop.name}=<{prop.type}>"
        extra = prop.description
        if prop.default is not None:
            extra = f"{extra} (default: {prop.default})" if extra else f"(default: {prop.default})"
        lines.append(f"{text:<24} - {extra}" if extra else text)
    if len(lines) == 1:
        lines.append("There are no options for " + driver + ".")
    return "\n".join(lines) + "\n"


def _find_bus_for(dc: DeviceClass) -> BusState | None:
    """The first bus of the device's bus type, breadth-first from the main
    system bus (qbus_find_recursive)."""
    from pemu.hw.core.sysbus import sysbus_get_default

    if dc.bus_type is None:
        return None
    for bus in qbus_iter(sysbus_get_default()):
        if bus.is_a(dc.bus_type):
            bc = object_class_check(bus.klass, BusClass)
            max_dev = bc.max_dev
            if max_dev and len(bus.devices_on_bus) >= max_dev:
                continue
            return bus
    return None


def qdev_device_add(opts: QemuOpts) -> DeviceState:
    """Create, configure and realize one -device (qdev_device_add)."""
    from pemu.hw.core.sysbus import sysbus_get_default

    driver = opts.get("driver")
    if driver is None:
        raise QOMError("Parameter 'driver' is missing")
    if opts.help_wanted or driver in ("help", "?"):
        if driver in ("help", "?"):
            sys.stdout.write(device_help_list())
        else:
            sys.stdout.write(device_help_props(driver))
        raise EarlyExit(0)
    klass = object_class_by_name(driver)
    if klass is None:
        from pemu.net.netdev import PLANNED_NIC_MODELS

        if driver in PLANNED_NIC_MODELS:
            raise QOMError(f"NIC model '{driver}' is not supported by pemu yet")
    if klass is None or not klass.dynamic_cast(TYPE_DEVICE):
        raise QOMError(f"'{driver}' is not a valid device model name")
    dc = object_class_check(klass, DeviceClass)
    if klass.abstract:
        raise QOMError("Parameter 'driver' expects a non-abstract device type")
    if not dc.user_creatable:
        raise QOMError("Parameter 'driver' expects a pluggable device type")

    bus_name = opts.get("bus")
    bus: BusState | None
    if bus_name is not None:
        bus = next((b for b in qbus_iter(sysbus_get_default()) if b.name == bus_name), None)
        if bus is None:
            raise QOMError(f"Bus '{bus_name}' not found")
        if dc.bus_type is not None and not bus.is_a(dc.bus_type):
            raise QOMError(f"Device '{driver}' can't go on {bus.typename} bus")
    else:
        bus = _find_bus_for(dc)
        if bus is None and dc.bus_type is not None:
            raise QOMError(f"No '{dc.bus_type}' bus found for device '{driver}'")

    if phase_check(MachineInitPhase.MACHINE_READY) and bus is not None and not dc.hotpluggable:
        raise QOMError(f"Device '{driver}' does not support hotplugging")

    dev = qdev_new(driver)
    try:
        machine = object_get_root().child("machine")
        assert machine is not None
        if opts.id is not None:
            dev.id = opts.id
            parent = container_get(machine, "peripheral")
            if parent.child(opts.id) is not None:
                raise QOMError(f"Duplicate device ID '{opts.id}'")
            parent.add_child(opts.id, dev)
        else:
            parent = container_get(machine, "peripheral-anon")
            n = sum(1 for _ in parent.children())
            while parent.child(f"device[{n}]") is not None:
                n += 1
            parent.add_child(f"device[{n}]", dev)
        for key, value in opts.items():
            if key in ("driver", "bus", "id"):
                continue
            dev.property_parse(key, value)
        qdev_realize(dev, bus)
    except Exception:
        dev.unparent()
        raise
    finally:
        dev.unref()
    return dev
