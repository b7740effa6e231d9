"""Text of `info qom-tree` and `info qtree` (QEMU's qom/qom-hmp-cmds.c and
softmmu/qdev-monitor.c), as pure functions of the object and bus trees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pemu.hw.core.qdev import TYPE_DEVICE, BusClass, BusState, DeviceClass, DeviceState, Property
from pemu.hw.core.sysbus import SysBusDevice
from pemu.hw.pci.pci import PCIBus, PCIDevice
from pemu.qom.object import Object, ObjectClass, object_get_root
from pemu.util.cutils import size_to_str

_INT_KINDS = frozenset({"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "int"})

# Descriptions of PCI class codes, for the "class ..." line of `info qtree`.
PCI_CLASS_NAMES: dict[int, str] = {
    0x0100: "SCSI controller",
    0x0101: "IDE controller",
    0x0106: "SATA controller",
    0x0108: "NVMe controller",
    0x0200: "Ethernet controller",
    0x0300: "VGA controller",
    0x0380: "Display controller",
    0x0403: "Audio controller",
    0x0600: "Host bridge",
    0x0601: "ISA bridge",
    0x0604: "PCI bridge",
    0x0780: "Communication controller",
    0x0C03: "USB controller",
    0x0C05: "SMBus",
}


# --- info qom-tree ----------------------------------------------------------------


def qom_children(obj: Object) -> Iterator[tuple[str, Object]]:
    """The ``child<>`` properties of ``obj``, read from its property table.

    ``Object.children()`` is not used: a qdev bus keeps its devices in an
    attribute of that same name, which hides the method.
    """
    for prop in list(obj.properties.values()):
        if prop.is_child and prop.get is not None:
            child = prop.get(obj)
            if isinstance(child, Object):
                yield prop.name, child


def qom_composition_lines(obj: Object, indent: int = 0, name: str | None = None) -> Iterator[str]:
    """"/name (type)" for ``obj``, then its children sorted by name, each
    level indented by two more spaces (print_qom_composition)."""
    if name is None:
        name = "" if obj is object_get_root() else (obj.name_in_parent() or "")
    yield f"{' ' * indent}/{name} ({obj.typename})"
    for child_name, child in sorted(qom_children(obj), key=lambda item: item[0]):
        yield from qom_composition_lines(child, indent + 2, child_name)


def format_qom_tree(obj: Object) -> str:
    return "".join(line + "\n" for line in qom_composition_lines(obj))


# --- qom-get --------------------------------------------------------------------------


def qom_value_to_json(value: Any) -> str:
    """A property value as qom-get shows it: JSON, objects by their path."""
    if isinstance(value, Object):
        return json.dumps(value.canonical_path() or "")
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(qom_value_to_json(v) for v in value) + "]"
    return json.dumps(str(value))


# --- info qtree -----------------------------------------------------------------------


def qdev_prop_human(kind: str, value: Any) -> str:
    """A qdev property value the way QEMU's human string output prints it:
    integers as "1016 (0x3f8)", sizes as "536870912 (512 MiB)", strings quoted,
    a missing string as "<null>"."""
    if isinstance(value, Object):
        return f'"{value.canonical_path() or ""}"'
    if kind == "bool" or isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<null>"
    if kind == "size" and isinstance(value, int) and value >= 0:
        return f"{value} ({size_to_str(value)})"
    if kind in _INT_KINDS and isinstance(value, int):
        shown = value if value >= 0 else value & ((1 << 64) - 1)
        return f"{value} (0x{shown:x})"
    if isinstance(value, int):
        return str(value)
    return f'"{value}"'


def _device_class_chain(dev: DeviceState) -> Iterator[DeviceClass]:
    """The device's class, then its ancestors' classes, down to TYPE_DEVICE."""
    klass: ObjectClass | None = dev.klass
    while klass is not None and klass.type.name != TYPE_DEVICE:
        if isinstance(klass, DeviceClass):
            yield klass
        klass = klass.parent_class


def device_props_in_qtree_order(dev: DeviceState) -> list[Property]:
    """qdev properties, the device's own class first, then each parent's."""
    ordered: list[Property] = []
    seen: set[str] = set()
    for klass in _device_class_chain(dev):
        parent = klass.parent_class
        inherited = {p.name for p in parent.props} if isinstance(parent, DeviceClass) else set()
        for prop in klass.props:
            if prop.name not in inherited and prop.name not in seen:
                seen.add(prop.name)
                ordered.append(prop)
    return ordered


def _pci_devfn(dev: DeviceState) -> int | None:
    return dev.devfn if isinstance(dev, PCIDevice) else None


def _prop_value_text(dev: DeviceState, prop: Property) -> str | None:
    devfn = _pci_devfn(dev)
    if prop.name == "addr" and devfn is not None:
        # QEMU shows a PCI function's address as "slot.fn" (the pci-devfn property).
        return "<unset>" if devfn < 0 else f"{(devfn >> 3) & 0x1F:02x}.{devfn & 7:x}"
    try:
        value = dev.property_get(prop.name)
    except Exception:  # a property that cannot be read is skipped, as in QEMU
        return None
    return qdev_prop_human(prop.kind, value)


def _pci_dev_lines(dev: DeviceState) -> list[str]:
    """The "class ..., addr ..., pci id ..." and BAR lines of a PCI function."""
    if not isinstance(dev, PCIDevice) or dev.devfn < 0:
        return []
    config = dev.config
    devfn = dev.devfn

    def word(off: int) -> int:
        return int.from_bytes(config[off:off + 2], "little")

    class_id = word(0x0A)
    desc = PCI_CLASS_NAMES.get(class_id, f"Class {class_id:04x}")
    bus = dev.parent_bus
    bus_num = bus.bus_num if isinstance(bus, PCIBus) else 0
    lines = [f"class {desc}, addr {bus_num & 0xFF:02x}:{(devfn >> 3) & 0x1F:02x}.{devfn & 7:x}, "
             f"pci id {word(0x00):04x}:{word(0x02):04x} (sub {word(0x2C):04x}:{word(0x2E):04x})"]
    for n, region in enumerate(dev.io_regions):
        if region is None or not region.size:
            continue
        size, addr = region.size, region.addr
        space = "i/o" if region.is_io else "mem"
        last = addr + size - 1 if addr >= 0 else -1
        lines.append(f"bar {n}: {space} at 0x{addr & ((1 << 64) - 1):x} [0x{last & ((1 << 64) - 1):x}]")
    return lines


def _sysbus_dev_lines(dev: DeviceState) -> list[str]:
    lines: list[str] = []
    if not isinstance(dev, SysBusDevice):
        return lines
    for mr, addr in dev.mmio:
        shown = (1 << 64) - 1 if addr is None else addr
        lines.append(f"mmio {shown:016x}/{mr.size:016x}")
    return lines


def _bus_dev_lines(bus: BusState | None, dev: DeviceState, indent: int) -> list[str]:
    """Extra lines the device's bus adds about it (bus_print_dev)."""
    if bus is None:
        return []
    klass = bus.klass
    hook = klass.print_dev if isinstance(klass, BusClass) else None
    if hook is not None:
        return list(hook(bus, dev, indent))  # lines already indented by the hook
    pad = " " * indent
    extra = _pci_dev_lines(dev) if _pci_devfn(dev) is not None else _sysbus_dev_lines(dev)
    return [pad + line for line in extra]


def qdev_lines(dev: DeviceState, indent: int, brief: bool = False) -> Iterator[str]:
    pad = " " * indent
    yield f'{pad}dev: {dev.typename}, id "{dev.id or ""}"'
    indent += 2
    pad = " " * indent
    names = list(dict.fromkeys([*dev.gpio_in, *dev.gpio_out]))
    for name in names:
        n_in = len(dev.gpio_in.get(name, ()))
        n_out = len(dev.gpio_out.get(name, ()))
        if n_in:
            yield f'{pad}gpio-in "{name}" {n_in}'
        if n_out:
            yield f'{pad}gpio-out "{name}" {n_out}'
    if not brief:
        for prop in device_props_in_qtree_order(dev):
            text = _prop_value_text(dev, prop)
            if text is not None:
                yield f"{pad}{prop.name} = {text or '<null>'}"
        yield from _bus_dev_lines(dev.parent_bus, dev, indent)
    for bus in dev.child_buses:
        yield from qbus_lines(bus, indent, brief)


def qbus_lines(bus: BusState, indent: int = 0, brief: bool = False) -> Iterator[str]:
    yield f"{' ' * indent}bus: {bus.name}"
    indent += 2
    yield f"{' ' * indent}type {bus.typename}"
    for dev in list(bus.devices_on_bus):
        yield from qdev_lines(dev, indent, brief)


def format_qtree(bus: BusState, brief: bool = False) -> str:
    return "".join(line + "\n" for line in qbus_lines(bus, 0, brief))
