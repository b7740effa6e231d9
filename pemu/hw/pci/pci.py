"""PCI buses and devices (QEMU's hw/pci/pci.c), the part every PCI device
shares: configuration space with its read-only and write-1-to-clear masks,
device/function addressing and the PCI/PCIe bus types."""

from __future__ import annotations

from typing import Any

from pemu.hw.core.qdev import (
    TYPE_BUS,
    TYPE_DEVICE,
    BusClass,
    BusState,
    DeviceClass,
    DeviceState,
    Property,
    device_class_set_props,
    qbus_new,
)
from pemu.qom.object import Object, ObjectClass, QOMError, TypeInfo, type_register
from pemu.util.log import guest_error

TYPE_PCI_BUS = "PCI"
TYPE_PCIE_BUS = "PCIE"
TYPE_PCI_DEVICE = "pci-device"
INTERFACE_PCIE_DEVICE = "pci-express-device"
INTERFACE_CONVENTIONAL_PCI_DEVICE = "conventional-pci-device"

PCI_CONFIG_SPACE_SIZE = 0x100
PCIE_CONFIG_SPACE_SIZE = 0x1000

# Configuration header offsets (type 0).
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A
PCI_HEADER_TYPE = 0x0E
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80
PCI_STATUS_CAP_LIST = 0x10
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_INTX_DISABLE = 0x400


def pci_devfn(slot: int, func: int) -> int:
    return ((slot & 0x1F) << 3) | (func & 0x7)


def parse_pci_addr(text: str) -> int:
    """"slot[.func]" in hex, as -device ...,addr= takes it, to a devfn."""
    try:
        if "." in text:
            slot_s, func_s = text.split(".", 1)
            slot, func = int(slot_s, 16), int(func_s, 16)
        else:
            slot, func = int(text, 16), 0
    except ValueError:
        raise QOMError(f"Property 'addr' doesn't take value '{text}'") from None
    if not (0 <= slot < 32 and 0 <= func < 8):
        raise QOMError(f"Property 'addr' doesn't take value '{text}'")
    return pci_devfn(slot, func)


class PCIBus(BusState):
    devices: list[PCIDevice | None]
    bus_num: int

    def find_device(self, devfn: int) -> PCIDevice | None:
        return self.devices[devfn & 0xFF]


class PCIDeviceClass(DeviceClass):
    vendor_id: int = 0xFFFF
    device_id: int = 0xFFFF
    revision: int = 0
    class_id: int = 0xFF00
    subsystem_vendor_id: int = 0
    subsystem_id: int = 0
    is_express: bool = False


class PCIDevice(DeviceState):
    """A PCI function.  ``config`` is its configuration space; ``wmask``
    marks the bits the guest may write, ``w1cmask`` the write-1-to-clear
    ones; everything else is read-only to the guest."""

    config: bytearray
    wmask: bytearray
    w1cmask: bytearray
    devfn: int
    addr: str
    multifunction: bool

    @property
    def pci_bus(self) -> PCIBus:
        bus = self.parent_bus
        assert isinstance(bus, PCIBus)
        return bus

    # -- config space as the device model sees it ------------------------------------
    def set_byte(self, off: int, v: int) -> None:
        self.config[off] = v & 0xFF

    def set_word(self, off: int, v: int) -> None:
        self.config[off:off + 2] = (v & 0xFFFF).to_bytes(2, "little")

    def set_long(self, off: int, v: int) -> None:
        self.config[off:off + 4] = (v & 0xFFFFFFFF).to_bytes(4, "little")

    def get_word(self, off: int) -> int:
        return int.from_bytes(self.config[off:off + 2], "little")

    def get_long(self, off: int) -> int:
        return int.from_bytes(self.config[off:off + 4], "little")

    # -- config space as the guest sees it --------------------------------------------
    def config_read(self, addr: int, size: int) -> int:
        """pci_default_read_config; subclasses may override."""
        if size not in (1, 2, 4) or addr < 0 or addr + size > len(self.config):
            guest_error(f"{self.typename}: bad config read at {addr:#x} size {size}")
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.config[addr:addr + size], "little")

    def config_write(self, addr: int, value: int, size: int) -> None:
        """pci_default_write_config: only writable bits change; W1C bits clear."""
        if size not in (1, 2, 4) or addr < 0 or addr + size > len(self.config):
            guest_error(f"{self.typename}: bad config write at {addr:#x} size {size}")
            return
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            off = addr + i
            wm, w1c = self.wmask[off], self.w1cmask[off]
            self.config[off] = (self.config[off] & ~wm) | (byte & wm)
            self.config[off] &= ~(byte & w1c) & 0xFF


def _pci_device_init(obj: Object) -> None:
    dev: PCIDevice = obj  # type: ignore[assignment]
    dev.devfn = -1
    dev.config = bytearray()
    dev.wmask = bytearray()
    dev.w1cmask = bytearray()


def _pci_qdev_realize(obj: Any) -> None:
    dev: PCIDevice = obj
    pc: PCIDeviceClass = dev.klass  # type: ignore[assignment]
    bus = dev.pci_bus
    size = PCIE_CONFIG_SPACE_SIZE if pc.is_express and bus.is_a(TYPE_PCIE_BUS) else PCI_CONFIG_SPACE_SIZE
    dev.config = bytearray(size)
    dev.wmask = bytearray(size)
    dev.w1cmask = bytearray(size)
    devfn = parse_pci_addr(dev.addr) if dev.addr else -1
    if devfn < 0:
        for candidate in range(0, 256, 8):
            if bus.devices[candidate] is None:
                devfn = candidate
                break
        else:
            raise QOMError(f"PCI: no slot/function available for {dev.typename}, all in use")
    elif bus.devices[devfn] is not None:
        other = bus.devices[devfn]
        assert other is not None
        raise QOMError(f"PCI: slot {devfn >> 3} function {devfn & 7} not available for "
                       f"{dev.typename}, in use by {other.typename},id={other.id or ''}")
    dev.devfn = devfn
    bus.devices[devfn] = dev
    dev.set_word(PCI_VENDOR_ID, pc.vendor_id)
    dev.set_word(PCI_DEVICE_ID, pc.device_id)
    dev.set_byte(PCI_REVISION_ID, pc.revision)
    dev.set_word(PCI_CLASS_DEVICE, pc.class_id)
    dev.set_word(PCI_SUBSYSTEM_VENDOR_ID, pc.subsystem_vendor_id)
    dev.set_word(PCI_SUBSYSTEM_ID, pc.subsystem_id)
    if dev.multifunction:
        dev.set_byte(PCI_HEADER_TYPE, PCI_HEADER_TYPE_MULTI_FUNCTION)
    dev.wmask[PCI_COMMAND] = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
    dev.wmask[PCI_COMMAND + 1] = PCI_COMMAND_INTX_DISABLE >> 8
    dev.wmask[PCI_INTERRUPT_LINE] = 0xFF
    dev.w1cmask[PCI_STATUS + 1] = 0xF9  # the error bits of the status register
    realize = getattr(dev.klass, "pci_realize", None)
    if realize is not None:
        realize(dev)


def _pci_qdev_unrealize(obj: Any) -> None:
    dev: PCIDevice = obj
    if dev.devfn >= 0 and dev.parent_bus is not None:
        dev.pci_bus.devices[dev.devfn] = None
    dev.devfn = -1


def _pci_device_class_init(klass: ObjectClass, data: Any) -> None:
    dc: PCIDeviceClass = klass  # type: ignore[assignment]
    dc.bus_type = TYPE_PCI_BUS
    dc.realize = _pci_qdev_realize
    dc.unrealize = _pci_qdev_unrealize
    device_class_set_props(dc, [
        Property("addr", "str", "", description="Slot and optional function number, example: 06.0 or 06"),
        Property("multifunction", "bool", False, description="on/off"),
    ])


def _pci_bus_init(obj: Object) -> None:
    bus: PCIBus = obj  # type: ignore[assignment]
    bus.devices = [None] * 256
    bus.bus_num = 0


type_register(TypeInfo(TYPE_PCI_BUS, parent=TYPE_BUS, instance_type=PCIBus, class_type=BusClass,
                       instance_init=_pci_bus_init))
type_register(TypeInfo(TYPE_PCIE_BUS, parent=TYPE_PCI_BUS))
type_register(TypeInfo(INTERFACE_PCIE_DEVICE, parent="interface"))
type_register(TypeInfo(INTERFACE_CONVENTIONAL_PCI_DEVICE, parent="interface"))
type_register(TypeInfo(TYPE_PCI_DEVICE, parent=TYPE_DEVICE, abstract=True, instance_type=PCIDevice,
                       class_type=PCIDeviceClass, instance_init=_pci_device_init,
                       class_init=_pci_device_class_init))


def pci_root_bus_new(parent: DeviceState, name: str, express: bool) -> PCIBus:
    bus = qbus_new(TYPE_PCIE_BUS if express else TYPE_PCI_BUS, parent, name)
    assert isinstance(bus, PCIBus)
    return bus


def pci_bus_config_read(bus: PCIBus, bus_num: int, devfn: int, offset: int, size: int) -> int:
    """A configuration read routed by bus/device/function; nothing there reads all-ones."""
    if bus_num != bus.bus_num:
        return (1 << (8 * size)) - 1
    dev = bus.devices[devfn & 0xFF]
    if dev is None or offset + size > len(dev.config):
        return (1 << (8 * size)) - 1
    return dev.config_read(offset, size)


def pci_bus_config_write(bus: PCIBus, bus_num: int, devfn: int, offset: int, value: int, size: int) -> None:
    if bus_num != bus.bus_num:
        return
    dev = bus.devices[devfn & 0xFF]
    if dev is None or offset + size > len(dev.config):
        return
    dev.config_write(offset, value, size)
