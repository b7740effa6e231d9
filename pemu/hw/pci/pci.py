"""PCI buses and devices (QEMU's hw/pci/pci.c), the part every PCI device
shares: configuration space with its read-only and write-1-to-clear masks,
device/function addressing and the PCI/PCIe bus types."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from pemu.migration.vmstate import (
    I64,
    U64,
    Array,
    Struct,
    UInt,
    VarBuffer,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.qom.object import Object, ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.dma import (
    DMADirection,
    dma_memory_map,
    dma_memory_read,
    dma_memory_set,
    dma_memory_unmap,
    dma_memory_write,
)
from pemu.system.memory import (
    MEMORY_SIZE_UNLIMITED,
    AddressSpace,
    MemoryRegion,
    MemTxResult,
    RAMMapping,
    memory_transaction,
)
from pemu.util.log import guest_error

if TYPE_CHECKING:
    pass

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

PCI_BASE_ADDRESS_0 = 0x10
PCI_ROM_ADDRESS = 0x30
PCI_CONFIG_HEADER_SIZE = 0x40

PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80
PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_INTX_DISABLE = 0x400

# BAR type bits (the low bits of a base address register, read-only).
PCI_BASE_ADDRESS_SPACE_MEMORY = 0x0
PCI_BASE_ADDRESS_SPACE_IO = 0x1
PCI_BASE_ADDRESS_MEM_TYPE_32 = 0x0
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8
PCI_ROM_ADDRESS_ENABLE = 0x1

PCI_NUM_REGIONS = 7  # six BARs and the expansion ROM
PCI_ROM_SLOT = 6
PCI_NUM_PINS = 4  # INTA..INTD
PCI_BAR_UNMAPPED = -1

# Capability IDs (PCI Local Bus 3.0, appendix H).
PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11


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


MapIRQ = Callable[["PCIDevice", int], int]  # (device, INTx pin 0-3) -> the bus's IRQ number
SetIRQ = Callable[[int, int], None]  # (the bus's IRQ number, level)


class PCIBus(BusState):
    """A PCI bus.  The host bridge gives it the address spaces BARs map into
    (``address_space_mem``/``address_space_io``), the memory its devices
    reach by DMA (``dma_root``: the system memory, there being no IOMMU)
    and, through
    :func:`pci_bus_irqs`, where INTx goes: ``map_irq`` turns a device's pin
    into one of the bus's ``nirq`` lines, ``set_irq`` drives that line with
    the OR of every pin mapped onto it."""

    devices: list[PCIDevice | None]
    bus_num: int
    address_space_mem: MemoryRegion | None
    address_space_io: MemoryRegion | None
    dma_root: MemoryRegion | None
    map_irq: MapIRQ | None
    set_irq: SetIRQ | None
    irq_count: list[int]

    def find_device(self, devfn: int) -> PCIDevice | None:
        return self.devices[devfn & 0xFF]


class PCIIORegion:
    """One registered BAR: its type bits, size, the region it shows, and
    where it is mapped now (``addr``, or PCI_BAR_UNMAPPED)."""

    def __init__(self, type: int, size: int, memory: MemoryRegion, addr: int = PCI_BAR_UNMAPPED) -> None:
        self.type = type
        self.size = size
        self.memory = memory
        self.addr = addr

    @property
    def is_io(self) -> bool:
        return bool(self.type & PCI_BASE_ADDRESS_SPACE_IO)

    @property
    def is_64bit(self) -> bool:
        return not self.is_io and bool(self.type & PCI_BASE_ADDRESS_MEM_TYPE_64)


class PCIDeviceClass(DeviceClass):
    vendor_id: int = 0xFFFF
    device_id: int = 0xFFFF
    revision: int = 0
    class_id: int = 0xFF00
    subsystem_vendor_id: int = 0
    subsystem_id: int = 0
    is_express: bool = False
    # Run after the generic PCI realize and reset, for the function's own registers.
    pci_realize: Callable[[PCIDevice], None] | None = None
    pci_reset: Callable[[PCIDevice], None] | None = None


class PCIDevice(DeviceState):
    """A PCI function.  ``config`` is its configuration space; ``wmask``
    marks the bits the guest may write, ``w1cmask`` the write-1-to-clear
    ones; everything else is read-only to the guest."""

    config: bytearray
    wmask: bytearray
    w1cmask: bytearray
    # The bits a migration stream must agree on (QEMU's cmask): identification,
    # BAR type/size bits, capability pointers and contents; where they are also
    # read-only to the guest, a stream that differs is from another device.
    cmask: bytearray
    devfn: int
    addr: str
    multifunction: bool
    io_regions: list[PCIIORegion | None]
    irq_state: int  # bit n: INTx pin n asserted by the device
    cap_used: bytearray  # 1 where a capability (or the header) sits
    pci_vmstate: PCIDeviceVMState  # what VMSTATE_PCI_DEVICE saves and loads
    # What the function masters (QEMU's bus_master_as): a container holding
    # an alias of the bus's DMA root, enabled only while COMMAND.MASTER is set.
    bus_master_container_region: MemoryRegion | None
    bus_master_enable_region: MemoryRegion | None
    bus_master_as: AddressSpace | None

    @property
    def pci_class(self) -> PCIDeviceClass:
        return object_class_check(self.klass, PCIDeviceClass)

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
        intx_was_disabled = self.intx_disabled
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            off = addr + i
            wm, w1c = self.wmask[off], self.w1cmask[off]
            self.config[off] = (self.config[off] & ~wm) | (byte & wm)
            self.config[off] &= ~(byte & w1c) & 0xFF
        end = addr + size
        if (addr < PCI_BASE_ADDRESS_0 + 24 and end > PCI_BASE_ADDRESS_0) or \
                (addr < PCI_ROM_ADDRESS + 4 and end > PCI_ROM_ADDRESS) or \
                (addr < PCI_COMMAND + 2 and end > PCI_COMMAND):
            pci_update_mappings(self)
        if addr < PCI_COMMAND + 2 and end > PCI_COMMAND:
            pci_update_bus_master(self)
            if intx_was_disabled != self.intx_disabled:
                pci_update_irq_disabled(self, intx_was_disabled)

    @property
    def intx_disabled(self) -> bool:
        return bool(self.get_word(PCI_COMMAND) & PCI_COMMAND_INTX_DISABLE)


def _pci_device_init(obj: Object) -> None:
    dev = object_check(obj, PCIDevice)
    dev.devfn = -1
    dev.config = bytearray()
    dev.wmask = bytearray()
    dev.w1cmask = bytearray()
    dev.cmask = bytearray()
    dev.io_regions = [None] * PCI_NUM_REGIONS
    dev.irq_state = 0
    dev.cap_used = bytearray()
    dev.bus_master_container_region = None
    dev.bus_master_enable_region = None
    dev.bus_master_as = None
    dev.pci_vmstate = PCIDeviceVMState(dev)


def _pci_qdev_realize(obj: Any) -> None:
    dev: PCIDevice = obj
    pc = object_class_check(dev.klass, PCIDeviceClass)
    bus = dev.pci_bus
    size = PCIE_CONFIG_SPACE_SIZE if pc.is_express and bus.is_a(TYPE_PCIE_BUS) else PCI_CONFIG_SPACE_SIZE
    dev.config = bytearray(size)
    dev.wmask = bytearray(size)
    dev.w1cmask = bytearray(size)
    dev.cmask = bytearray(size)
    dev.cap_used = bytearray(size)
    dev.cap_used[:PCI_CONFIG_HEADER_SIZE] = b"\x01" * PCI_CONFIG_HEADER_SIZE
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
    _pci_init_cmask(dev)
    pci_init_bus_master(dev)
    realize = dev.pci_class.pci_realize
    if realize is not None:
        realize(dev)


def _pci_init_cmask(dev: PCIDevice) -> None:
    """What identifies the function (pci_init_cmask): IDs, revision, class,
    header type, and whether and where its capability list starts; unlike
    QEMU, also the subsystem IDs and the interrupt pin, which pemu's devices
    fix at realize as well."""
    for off, width in ((PCI_VENDOR_ID, 2), (PCI_DEVICE_ID, 2), (PCI_REVISION_ID, 1), (PCI_CLASS_PROG, 1),
                       (PCI_CLASS_DEVICE, 2), (PCI_HEADER_TYPE, 1), (PCI_CAPABILITY_LIST, 1),
                       (PCI_SUBSYSTEM_VENDOR_ID, 2), (PCI_SUBSYSTEM_ID, 2), (PCI_INTERRUPT_PIN, 1)):
        dev.cmask[off:off + width] = b"\xff" * width
    dev.cmask[PCI_STATUS] = PCI_STATUS_CAP_LIST


def _pci_qdev_unrealize(obj: Any) -> None:
    dev: PCIDevice = obj
    pci_device_deassert_intx(dev)
    with memory_transaction():
        for region in dev.io_regions:
            if region is not None and region.addr != PCI_BAR_UNMAPPED:
                _bar_space_unmap(region)
    if dev.devfn >= 0 and dev.parent_bus is not None:
        dev.pci_bus.devices[dev.devfn] = None
    dev.devfn = -1
    pci_destroy_bus_master(dev)


def _pci_device_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, PCIDeviceClass)
    dc.bus_type = TYPE_PCI_BUS
    dc.realize = _pci_qdev_realize
    dc.unrealize = _pci_qdev_unrealize
    dc.reset = _pci_qdev_reset
    device_class_set_props(dc, [
        Property("addr", "str", "", description="Slot and optional function number, example: 06.0 or 06"),
        Property("multifunction", "bool", False, description="on/off"),
    ])


def _pci_bus_init(obj: Object) -> None:
    bus = object_check(obj, PCIBus)
    bus.devices = [None] * 256
    bus.bus_num = 0
    bus.address_space_mem = None
    bus.address_space_io = None
    bus.dma_root = None
    bus.map_irq = None
    bus.set_irq = None
    bus.irq_count = []


type_register(TypeInfo(TYPE_PCI_BUS, parent=TYPE_BUS, instance_type=PCIBus, class_type=BusClass,
                       instance_init=_pci_bus_init))
type_register(TypeInfo(TYPE_PCIE_BUS, parent=TYPE_PCI_BUS))
type_register(TypeInfo(INTERFACE_PCIE_DEVICE, parent="interface"))
type_register(TypeInfo(INTERFACE_CONVENTIONAL_PCI_DEVICE, parent="interface"))
type_register(TypeInfo(TYPE_PCI_DEVICE, parent=TYPE_DEVICE, abstract=True, instance_type=PCIDevice,
                       class_type=PCIDeviceClass, instance_init=_pci_device_init,
                       class_init=_pci_device_class_init))


def pci_root_bus_new(parent: DeviceState, name: str, express: bool,
                     address_space_mem: MemoryRegion | None = None,
                     address_space_io: MemoryRegion | None = None,
                     dma_root: MemoryRegion | None = None) -> PCIBus:
    """A root bus; BARs of its devices map into the two address spaces
    (the host bridge's PCI memory window and the system I/O space); its
    devices' DMA reaches ``dma_root`` (without one, DMA reaches nothing)."""
    bus = qbus_new(TYPE_PCIE_BUS if express else TYPE_PCI_BUS, parent, name)
    assert isinstance(bus, PCIBus)
    bus.address_space_mem = address_space_mem
    bus.address_space_io = address_space_io
    bus.dma_root = dma_root
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


# --- reset ------------------------------------------------------------------------------------


def _pci_qdev_reset(obj: Any) -> None:
    """The class reset of every PCI function: the generic part, then the
    device's own ``pci_reset`` hook (a subclass sets ``k.pci_reset`` instead
    of ``k.reset``, or calls :func:`pci_device_reset` from its own reset)."""
    dev: PCIDevice = obj
    pci_device_reset(dev)
    hook = dev.pci_class.pci_reset
    if hook is not None:
        hook(dev)


def pci_device_reset(dev: PCIDevice) -> None:
    """What a PCI reset does to the standard header (pci_do_device_reset):
    INTx deasserted, the writable COMMAND/STATUS bits cleared, the
    interrupt line zeroed, every BAR back to its type bits and unmapped."""
    if not dev.config:
        return
    pci_device_deassert_intx(dev)
    for off in (PCI_COMMAND, PCI_STATUS):
        clear = dev.get_word(off) & ~(int.from_bytes(dev.wmask[off:off + 2], "little")
                                      | int.from_bytes(dev.w1cmask[off:off + 2], "little"))
        dev.set_word(off, clear)
    dev.set_byte(PCI_INTERRUPT_LINE, 0)
    pci_update_bus_master(dev)
    for n, region in enumerate(dev.io_regions):
        if region is None:
            continue
        off = pci_bar_offset(n)
        if region.is_64bit:
            dev.config[off:off + 8] = region.type.to_bytes(8, "little")
        else:
            dev.set_long(off, 0 if n == PCI_ROM_SLOT else region.type)
    pci_update_mappings(dev)


# --- bus mastering (DMA) ----------------------------------------------------------------------


def pci_init_bus_master(dev: PCIDevice) -> None:
    """Give the function its bus-master address space (pci_init_bus_master):
    a container named after the device holding the alias "bus master" of
    the bus's DMA root, disabled until the guest sets COMMAND.MASTER."""
    name = dev.typename
    container = MemoryRegion.container("bus master container", MEMORY_SIZE_UNLIMITED, owner=dev)
    with memory_transaction():
        root = dev.pci_bus.dma_root
        if root is not None:
            enable = MemoryRegion.alias("bus master", root, 0, root.size, owner=dev)
            enable.set_enabled(False)
            container.add_subregion(0, enable)
            dev.bus_master_enable_region = enable
        dev.bus_master_container_region = container
        dev.bus_master_as = AddressSpace(container, name)


def pci_destroy_bus_master(dev: PCIDevice) -> None:
    if dev.bus_master_as is not None:
        dev.bus_master_as.destroy()
    container, enable = dev.bus_master_container_region, dev.bus_master_enable_region
    if container is not None and enable is not None:
        container.del_subregion(enable)
    dev.bus_master_as = dev.bus_master_container_region = dev.bus_master_enable_region = None


def pci_update_bus_master(dev: PCIDevice) -> None:
    """DMA reaches memory only while COMMAND.MASTER is set (QEMU's
    pci_default_write_config): otherwise the bus-master space is empty, so
    reads give all-ones, writes are dropped and both report DECODE_ERROR."""
    if dev.bus_master_enable_region is not None:
        dev.bus_master_enable_region.set_enabled(bool(dev.get_word(PCI_COMMAND) & PCI_COMMAND_MASTER))


def pci_get_address_space(dev: PCIDevice) -> AddressSpace:
    """The address space the function's DMA goes through."""
    space = dev.bus_master_as
    if space is None:
        raise QOMError(f"{dev.typename}: not realized on a PCI bus, so it has no bus-master address space")
    return space


def pci_dma_read(dev: PCIDevice, addr: int, length: int) -> tuple[bytes, MemTxResult]:
    return dma_memory_read(pci_get_address_space(dev), addr, length)


def pci_dma_write(dev: PCIDevice, addr: int, data: bytes | bytearray | memoryview) -> MemTxResult:
    return dma_memory_write(pci_get_address_space(dev), addr, data)


def pci_dma_set(dev: PCIDevice, addr: int, byte: int, length: int) -> MemTxResult:
    return dma_memory_set(pci_get_address_space(dev), addr, byte, length)


def pci_dma_map(dev: PCIDevice, addr: int, length: int, direction: DMADirection) -> RAMMapping | None:
    return dma_memory_map(pci_get_address_space(dev), addr, length, direction)


def pci_dma_unmap(dev: PCIDevice, mapping: RAMMapping, access_len: int) -> None:
    dma_memory_unmap(pci_get_address_space(dev), mapping, access_len)


# --- BARs -------------------------------------------------------------------------------------


def pci_bar_offset(region_num: int) -> int:
    """The config-space offset of BAR ``region_num`` (6 is the expansion ROM)."""
    return PCI_ROM_ADDRESS if region_num == PCI_ROM_SLOT else PCI_BASE_ADDRESS_0 + 4 * region_num


def pci_register_bar(dev: PCIDevice, region_num: int, bar_type: int, memory: MemoryRegion) -> None:
    """Give BAR ``region_num`` the region ``memory`` (pci_register_bar).

    ``bar_type`` is PCI_BASE_ADDRESS_SPACE_IO, or a memory BAR's type bits
    (PCI_BASE_ADDRESS_MEM_TYPE_64, PCI_BASE_ADDRESS_MEM_PREFETCH).  The
    size is the region's; it must be a power of two (at least 4 bytes of
    I/O or 16 of memory).  The BAR is unmapped until the guest programs an
    address and enables decoding in COMMAND.
    """
    if not 0 <= region_num < PCI_NUM_REGIONS:
        raise QOMError(f"{dev.typename}: BAR {region_num} does not exist")
    size = memory.size
    is_io = bool(bar_type & PCI_BASE_ADDRESS_SPACE_IO)
    if size & (size - 1) or size < (4 if is_io else 16) or (is_io and size > 0x10000):
        raise QOMError(f"{dev.typename}: BAR {region_num} size {size:#x} is not valid")
    if is_io:
        bar_type = PCI_BASE_ADDRESS_SPACE_IO
        if region_num == PCI_ROM_SLOT:
            raise QOMError(f"{dev.typename}: the expansion ROM cannot be an I/O BAR")
    else:
        bar_type &= PCI_BASE_ADDRESS_MEM_TYPE_64 | PCI_BASE_ADDRESS_MEM_PREFETCH
        if region_num == PCI_ROM_SLOT:
            bar_type = 0
    is_64 = bool(bar_type & PCI_BASE_ADDRESS_MEM_TYPE_64)
    if is_64 and region_num >= 5:
        raise QOMError(f"{dev.typename}: a 64-bit BAR needs two slots; BAR {region_num} has none after it")
    taken = [region_num] + ([region_num + 1] if is_64 else [])
    for n in taken:
        if dev.io_regions[n] is not None or (n > 0 and n != PCI_ROM_SLOT and (r := dev.io_regions[n - 1])
                                             is not None and r.is_64bit):
            raise QOMError(f"{dev.typename}: BAR {n} is already registered")
    region = PCIIORegion(bar_type, size, memory)
    dev.io_regions[region_num] = region
    off = pci_bar_offset(region_num)
    wmask = ~(size - 1)
    if region_num == PCI_ROM_SLOT:
        wmask |= PCI_ROM_ADDRESS_ENABLE
    if is_64:
        dev.config[off:off + 8] = bar_type.to_bytes(8, "little")
        dev.wmask[off:off + 8] = (wmask & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        dev.cmask[off:off + 8] = b"\xff" * 8
    else:
        dev.set_long(off, bar_type)
        dev.wmask[off:off + 4] = (wmask & 0xFFFFFFFF).to_bytes(4, "little")
        dev.cmask[off:off + 4] = b"\xff" * 4


def pci_bar_space(dev: PCIDevice, region: PCIIORegion) -> MemoryRegion | None:
    bus = dev.pci_bus
    return bus.address_space_io if region.is_io else bus.address_space_mem


def pci_bar_address(dev: PCIDevice, region_num: int) -> int:
    """Where BAR ``region_num`` decodes now, or PCI_BAR_UNMAPPED: decoding
    off in COMMAND, address zero, a window that wraps or does not fit its
    address space (pci_bar_address)."""
    region = dev.io_regions[region_num]
    if region is None:
        return PCI_BAR_UNMAPPED
    cmd = dev.get_word(PCI_COMMAND)
    off = pci_bar_offset(region_num)
    size = region.size
    if region.is_io:
        if not cmd & PCI_COMMAND_IO:
            return PCI_BAR_UNMAPPED
        limit = 0x10000
        new_addr = dev.get_long(off) & ~(size - 1) & 0xFFFFFFFF
    else:
        if not cmd & PCI_COMMAND_MEMORY:
            return PCI_BAR_UNMAPPED
        if region.is_64bit:
            raw = int.from_bytes(dev.config[off:off + 8], "little")
            limit = 1 << 64
        else:
            raw = dev.get_long(off)
            limit = 1 << 32
        if region_num == PCI_ROM_SLOT and not raw & PCI_ROM_ADDRESS_ENABLE:
            return PCI_BAR_UNMAPPED
        new_addr = raw & ~(size - 1) & (limit - 1)
    last = new_addr + size - 1
    # A memory BAR ending at the very top is what sizing leaves behind (all-ones).
    if new_addr == 0 or last >= (limit if region.is_io else limit - 1):
        return PCI_BAR_UNMAPPED
    space = pci_bar_space(dev, region)
    if space is not None and last >= space.size:
        return PCI_BAR_UNMAPPED
    return new_addr


def _bar_space_unmap(region: PCIIORegion) -> None:
    container = region.memory.parent_container
    if container is not None:
        container.del_subregion(region.memory)
    region.addr = PCI_BAR_UNMAPPED


def pci_update_mappings(dev: PCIDevice) -> None:
    """Map, move or unmap every BAR after COMMAND or a BAR changed
    (pci_update_mappings).  BARs overlay the bus address space at priority 1."""
    with memory_transaction():
        for n, region in enumerate(dev.io_regions):
            if region is None:
                continue
            new_addr = pci_bar_address(dev, n)
            if new_addr == region.addr:
                continue
            if region.addr != PCI_BAR_UNMAPPED:
                _bar_space_unmap(region)
            if new_addr == PCI_BAR_UNMAPPED:
                continue
            space = pci_bar_space(dev, region)
            if space is None:
                guest_error(f"{dev.typename}: BAR {n} programmed but the bus has no address space for it")
                continue
            space.add_subregion_overlap(new_addr, region.memory, 1)
            region.addr = new_addr


def pci_get_bar_addr(dev: PCIDevice, region_num: int) -> int:
    region = dev.io_regions[region_num] if 0 <= region_num < PCI_NUM_REGIONS else None
    return PCI_BAR_UNMAPPED if region is None else region.addr


# --- INTx ------------------------------------------------------------------------------------


def pci_config_set_interrupt_pin(dev: PCIDevice, pin: int) -> None:
    """Declare the function's interrupt pin (1 = INTA .. 4 = INTD; 0 = none)."""
    if not 0 <= pin <= PCI_NUM_PINS:
        raise QOMError(f"{dev.typename}: interrupt pin {pin} does not exist")
    dev.set_byte(PCI_INTERRUPT_PIN, pin)


def pci_bus_irqs(bus: PCIBus, set_irq: SetIRQ, map_irq: MapIRQ, nirq: int) -> None:
    """Route the bus's INTx (pci_bus_irqs): ``map_irq(dev, pin)`` picks one
    of ``nirq`` lines, ``set_irq(line, level)`` drives it."""
    bus.set_irq, bus.map_irq = set_irq, map_irq
    bus.irq_count = [0] * nirq


def pci_bus_get_irq_level(bus: PCIBus, irq_num: int) -> int:
    """1 while any INTx mapped onto the bus's line ``irq_num`` is asserted."""
    if not 0 <= irq_num < len(bus.irq_count):
        return 0
    return 1 if bus.irq_count[irq_num] else 0


def _pci_change_irq_level(dev: PCIDevice, intx: int, change: int) -> None:
    bus = dev.pci_bus
    if bus.map_irq is None or bus.set_irq is None:
        return
    irq_num = bus.map_irq(dev, intx)
    if not 0 <= irq_num < len(bus.irq_count):
        guest_error(f"{dev.typename}: INTx {intx} maps to line {irq_num}, which the bus lacks")
        return
    bus.irq_count[irq_num] += change
    bus.set_irq(irq_num, 1 if bus.irq_count[irq_num] else 0)


def pci_set_irq(dev: PCIDevice, level: int) -> None:
    """Drive the function's interrupt pin (pci_set_irq): reflected in the
    STATUS interrupt bit always, passed to the bus unless COMMAND disables INTx."""
    intx = dev.config[PCI_INTERRUPT_PIN] - 1 if dev.config else -1
    if not 0 <= intx < PCI_NUM_PINS:
        guest_error(f"{dev.typename}: pci_set_irq without an interrupt pin")
        return
    level = 1 if level else 0
    bit = 1 << intx
    if bool(dev.irq_state & bit) == bool(level):
        return
    dev.irq_state ^= bit
    _pci_update_irq_status(dev)
    if not dev.intx_disabled:
        _pci_change_irq_level(dev, intx, 1 if level else -1)


def _pci_update_irq_status(dev: PCIDevice) -> None:
    status = dev.config[PCI_STATUS]
    dev.config[PCI_STATUS] = (status | PCI_STATUS_INTERRUPT) if dev.irq_state else (status & ~PCI_STATUS_INTERRUPT)


def pci_update_irq_disabled(dev: PCIDevice, was_disabled: bool) -> None:
    """COMMAND.INTX_DISABLE toggled: withdraw or reassert the pins that are up."""
    change = 1 if was_disabled else -1
    for intx in range(PCI_NUM_PINS):
        if dev.irq_state & (1 << intx):
            _pci_change_irq_level(dev, intx, change)


def pci_device_deassert_intx(dev: PCIDevice) -> None:
    for intx in range(PCI_NUM_PINS):
        if dev.irq_state & (1 << intx):
            dev.irq_state &= ~(1 << intx)
            if not dev.intx_disabled:
                _pci_change_irq_level(dev, intx, -1)
    if dev.config:
        _pci_update_irq_status(dev)


# --- capability lists ----------------------------------------------------------------------


def pci_add_capability(dev: PCIDevice, cap_id: int, offset: int, size: int) -> int:
    """Link a capability of ``size`` bytes into the list (pci_add_capability):
    at ``offset``, or at the first free dword-aligned place when ``offset``
    is 0.  The new entry goes first in the list; STATUS.CAP_LIST is set.
    Returns the offset."""
    limit = PCI_CONFIG_SPACE_SIZE
    if size < 2 or size > limit - PCI_CONFIG_HEADER_SIZE:
        raise QOMError(f"{dev.typename}: capability {cap_id:#x} size {size} is not valid")
    if offset == 0:
        for candidate in range(PCI_CONFIG_HEADER_SIZE, limit - size + 1, 4):
            if not any(dev.cap_used[candidate:candidate + size]):
                offset = candidate
                break
        else:
            raise QOMError(f"{dev.typename}: no space for capability {cap_id:#x} of {size} bytes")
    if offset & 3 or offset < PCI_CONFIG_HEADER_SIZE or offset + size > limit:
        raise QOMError(f"{dev.typename}: capability {cap_id:#x} at {offset:#x} is outside the capability area")
    if any(dev.cap_used[offset:offset + size]):
        raise QOMError(f"{dev.typename}: capability {cap_id:#x} at {offset:#x}+{size} overlaps another")
    dev.config[offset] = cap_id & 0xFF
    dev.config[offset + 1] = dev.config[PCI_CAPABILITY_LIST]
    dev.config[PCI_CAPABILITY_LIST] = offset
    dev.config[PCI_STATUS] |= PCI_STATUS_CAP_LIST
    dev.wmask[offset:offset + 2] = b"\0\0"
    dev.cmask[offset:offset + size] = b"\xff" * size  # checked on load unless writable
    dev.cap_used[offset:offset + size] = b"\x01" * size
    return offset


def pci_capabilities(dev: PCIDevice) -> list[tuple[int, int]]:
    """(offset, id) of each capability in list order, as a guest walks it:
    pointers masked to dwords, a loop or a pointer into the header ends the walk."""
    found: list[tuple[int, int]] = []
    if not dev.config or not dev.config[PCI_STATUS] & PCI_STATUS_CAP_LIST:
        return found
    ptr = dev.config[PCI_CAPABILITY_LIST] & ~3
    seen: set[int] = set()
    while ptr >= PCI_CONFIG_HEADER_SIZE and ptr not in seen:
        seen.add(ptr)
        found.append((ptr, dev.config[ptr]))
        ptr = dev.config[ptr + 1] & ~3
    return found


def pci_find_capability(dev: PCIDevice, cap_id: int) -> int:
    """The offset of the first capability ``cap_id``, or 0."""
    for offset, found in pci_capabilities(dev):
        if found == cap_id:
            return offset
    return 0


def pci_del_capability(dev: PCIDevice, cap_id: int, size: int) -> None:
    """Unlink the capability ``cap_id`` and free its ``size`` bytes."""
    prev = PCI_CAPABILITY_LIST
    for offset, found in pci_capabilities(dev):
        if found == cap_id:
            dev.config[prev] = dev.config[offset + 1]
            dev.cap_used[offset:offset + size] = bytes(size)
            dev.config[offset:offset + size] = bytes(size)
            dev.wmask[offset:offset + size] = bytes(size)
            dev.cmask[offset:offset + size] = bytes(size)
            if dev.config[PCI_CAPABILITY_LIST] == 0:
                dev.config[PCI_STATUS] &= ~PCI_STATUS_CAP_LIST
            return
        prev = offset + 1


# --- migration (QEMU's vmstate_pci_device / vmstate_pcie_device) --------------------------------


class PCIDeviceVMState:
    """What :data:`VMSTATE_PCI_DEVICE` puts on the wire for one function:
    its configuration space (a copy taken at save, so that loading can
    compare the stream with the function before anything changes) and the
    INTx pins it asserts, plus each region's size and where it was mapped.
    The mappings, the bus-master window and the bus's INTx counts are rebuilt
    from config space by :func:`pci_device_post_load`; the saved sizes and
    addresses only check that the destination's function and bus are the
    source's (same BAR sizes; every BAR decodes at the same address)."""

    def __init__(self, dev: PCIDevice) -> None:
        self.dev = dev
        self.config = bytearray()
        self.irq_state = 0
        # Per region (six BARs and the ROM): its size (0: none) and where it
        # is mapped (PCI_BAR_UNMAPPED), both checked against the destination.
        self.bar_sizes = [0] * PCI_NUM_REGIONS
        self.bar_addrs = [PCI_BAR_UNMAPPED] * PCI_NUM_REGIONS


def _pci_bar_sizes(dev: PCIDevice) -> list[int]:
    return [0 if region is None else region.size for region in dev.io_regions]


def _pci_device_pre_save(state: PCIDeviceVMState) -> None:
    dev = state.dev
    state.config = bytearray(dev.config)
    state.irq_state = dev.irq_state
    state.bar_sizes = _pci_bar_sizes(dev)
    state.bar_addrs = [pci_get_bar_addr(dev, n) for n in range(PCI_NUM_REGIONS)]


def pci_config_check(dev: PCIDevice, config: bytes | bytearray) -> None:
    """Refuse a configuration space that is not this function's (QEMU's
    get_pci_config_device): its size, and every bit the function fixes
    (``cmask``) that the guest cannot write, must be the same: the IDs and
    class, the BARs' type and size bits, the capability list and the
    capabilities' read-only fields.  A stream from another device at this
    address, or from one with other properties, fails here."""
    if len(config) != len(dev.config):
        raise VMStateError(f"configuration space of {len(config)} bytes, {dev.typename} has {len(dev.config)}")
    for i, (new, cur) in enumerate(zip(config, dev.config, strict=True)):
        fixed = dev.cmask[i] & ~dev.wmask[i] & ~dev.w1cmask[i]
        if (new ^ cur) & fixed:
            raise VMStateError(f"Bad config data for {dev.typename}: offset {i:#x} reads {new:#04x} in the "
                               f"stream, {cur:#04x} in the device (read-only bits {fixed:#04x})")


def _pci_intx_silent_change(dev: PCIDevice, irq_state: int, change: int) -> None:
    """Count ``irq_state``'s pins in the bus's INTx lines without driving the
    lines: after a load the interrupt controllers' own state already holds
    the levels (QEMU migrates the bus's irq_count for the same reason)."""
    bus = dev.pci_bus
    if dev.intx_disabled or bus.map_irq is None:
        return
    for intx in range(PCI_NUM_PINS):
        if irq_state & (1 << intx):
            irq_num = bus.map_irq(dev, intx)
            if 0 <= irq_num < len(bus.irq_count):
                bus.irq_count[irq_num] += change


def pci_device_post_load(state: PCIDeviceVMState, version_id: int) -> None:
    """Check the loaded function and make it live: the config space is
    copied in, then the BARs, the memory and I/O decode and bus mastering are
    applied by the code a guest's config write runs, so the mappings are
    exactly those the source had; the INTx pins are counted on the bus."""
    dev = state.dev
    pci_config_check(dev, state.config)
    for n, (theirs, ours) in enumerate(zip(state.bar_sizes, _pci_bar_sizes(dev), strict=True)):
        if theirs != ours:
            raise VMStateError(f"{dev.typename}: region {n} is {theirs:#x} bytes in the stream, {ours:#x} here")
    pin = state.config[PCI_INTERRUPT_PIN]
    allowed = (1 << (pin - 1)) if 1 <= pin <= PCI_NUM_PINS else 0
    if state.irq_state & ~allowed:
        raise VMStateError(f"INTx state {state.irq_state:#x} but {dev.typename}'s interrupt pin is {pin}")
    _pci_intx_silent_change(dev, dev.irq_state, -1)
    dev.config[:] = state.config
    dev.irq_state = state.irq_state
    _pci_update_irq_status(dev)
    _pci_intx_silent_change(dev, dev.irq_state, 1)
    pci_update_mappings(dev)
    pci_update_bus_master(dev)
    for n, addr in enumerate(state.bar_addrs):
        if addr != pci_get_bar_addr(dev, n):
            raise VMStateError(f"{dev.typename}: region {n} was mapped at {addr:#x} on the source, "
                               f"{pci_get_bar_addr(dev, n):#x} here")


VMSTATE_PCI_DEVICE = VMStateDescription(
    "PCIDevice", version_id=1,
    fields=[
        VMStateField("config", VarBuffer(PCIE_CONFIG_SPACE_SIZE)),
        VMStateField("irq_state", UInt(PCI_NUM_PINS)),
        VMStateField("bar_sizes", Array(U64, PCI_NUM_REGIONS)),
        VMStateField("bar_addrs", Array(I64, PCI_NUM_REGIONS), check=lambda v: all(a >= -1 for a in v)),
    ],
    pre_save=_pci_device_pre_save, post_load=pci_device_post_load)

# The field a PCI device's own description starts with (QEMU's
# VMSTATE_PCI_DEVICE(parent_obj, ...) / VMSTATE_PCIE_DEVICE): the function's
# configuration space and INTx, loaded (and checked) before the device's own
# registers, so a device's post_load sees its BARs mapped as the source had them.
VMSTATE_PCI_DEVICE_FIELD = VMStateField("pci_vmstate", Struct(VMSTATE_PCI_DEVICE))
