"""VMSTATE_PCI_DEVICE, VMSTATE_MSI and VMSTATE_MSIX on a stub function with
every kind of BAR, MSI with per-vector masking, MSI-X and INTx: saved in one
VM, loaded into a fresh function of a second VM (no CPU), compared and run
on; streams from another device, or with values the guest could not have
produced, are refused."""

from __future__ import annotations

import struct
from typing import Any

import pytest

import pemu.hw.pci_host.q35  # noqa: F401  (registers the host types)
from pemu.hw.core.qdev import Property, device_class_set_props, qdev_new, qdev_realize
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.pci.msi import VMSTATE_MSI_FIELD, MSICapability, msi_init
from pemu.hw.pci.msix import VMSTATE_MSIX_FIELD, MSIXState, msix_init
from pemu.hw.pci.pci import (
    PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_BASE_ADDRESS_SPACE_IO,
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIDevice,
    PCIDeviceClass,
    pci_bus_irqs,
    pci_config_set_interrupt_pin,
    pci_get_bar_addr,
    pci_register_bar,
    pci_set_irq,
)
from pemu.migration.vmstate import (
    VMStateDescription,
    VMStateError,
    vmstate_load_bytes,
    vmstate_save_bytes,
)
from pemu.qom.object import ObjectClass, TypeInfo, type_register
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion, MemoryRegionOps
from pemu.system.physmem import address_space_io, address_space_memory, cpu_exec_init_all, get_system_memory
from tests.unit.vmstate_helpers import roundtrip
from tests.unit.vmstate_pci_helpers import current, destination_vm, flat_map

TYPE_STUB = "test-vmstate-pci-stub"


class StubFunction(PCIDevice):
    big: bool
    vectors: int
    sent: list[tuple[int, int]]
    lines: dict[int, int]
    msi: MSICapability | None
    msix: MSIXState | None

    def config_write(self, addr: int, value: int, size: int) -> None:
        super().config_write(addr, value, size)
        if self.msi is not None:
            self.msi.write_config(addr, size)
        if self.msix is not None:
            self.msix.write_config(addr, size)


def _send(dev: StubFunction) -> Any:
    return lambda address, data: dev.sent.append((address, data))


def _stub_realize(obj: Any) -> None:
    dev: StubFunction = obj
    dev.sent = []
    ops = MemoryRegionOps(lambda off, size: 0, lambda off, value, size: None, 1, 4)
    bar0 = MemoryRegion.container("stub-bar0", 0x2000 if dev.big else 0x1000, owner=dev)
    pci_register_bar(dev, 0, 0, bar0)
    pci_register_bar(dev, 1, PCI_BASE_ADDRESS_SPACE_IO, MemoryRegion.io("stub-io", 0x20, ops, owner=dev))
    pci_register_bar(dev, 2, PCI_BASE_ADDRESS_MEM_TYPE_64 | PCI_BASE_ADDRESS_MEM_PREFETCH,
                     MemoryRegion.io("stub-mmio64", 0x4000, ops, owner=dev))
    pci_register_bar(dev, 6, 0, MemoryRegion.io("stub-rom", 0x800, ops, owner=dev))
    pci_config_set_interrupt_pin(dev, 1)
    dev.msi = msi_init(dev, 0, 4, True, True, _send(dev), msi_nonbroken=True)
    dev.msix = msix_init(dev, dev.vectors, _send(dev), table_bar_nr=0, table_offset=0, pba_bar_nr=0,
                         pba_offset=0x800, msi_nonbroken=True)
    bar0.add_subregion(0, dev.msix.table_region)
    bar0.add_subregion(0x800, dev.msix.pba_region)


VMSTATE_STUB = VMStateDescription("test-stub", version_id=1, fields=[
    VMSTATE_PCI_DEVICE_FIELD,
    VMSTATE_MSI_FIELD,
    VMSTATE_MSIX_FIELD,
])


def _stub_class_init(klass: ObjectClass, data: Any) -> None:
    assert isinstance(klass, PCIDeviceClass)
    klass.vendor_id, klass.device_id, klass.class_id = 0x1234, 0x5A5A, 0xFF00
    klass.pci_realize = _stub_realize
    klass.vmsd = VMSTATE_STUB
    device_class_set_props(klass, [Property("big", "bool", False), Property("vectors", "uint32", 3)])


type_register(TypeInfo(TYPE_STUB, parent=TYPE_PCI_DEVICE, instance_type=StubFunction,
                       class_init=_stub_class_init, interfaces=("conventional-pci-device",)))


def build(window: int = MEMORY_SIZE_UNLIMITED, **props: Any) -> StubFunction:
    """A q35 root bus in the current VM with the stub at 3.0 (BARs map into
    a PCI window of ``window`` bytes); INTx lines recorded in ``lines``."""
    cpu_exec_init_all()
    pci = MemoryRegion.container("pci", window)
    get_system_memory().add_subregion_overlap(0, pci, -1)
    host = qdev_new("q35-pcihost")
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    dev = qdev_new(TYPE_STUB)
    dev.property_set("addr", "3.0")
    for name, value in props.items():
        dev.property_set(name, value)
    qdev_realize(dev, host.bus)  # type: ignore[attr-defined]
    assert isinstance(dev, StubFunction)
    dev.lines = {}
    pci_bus_irqs(dev.pci_bus, lambda n, level: dev.lines.__setitem__(n, level), lambda d, pin: pin, 4)
    return dev


def program(dev: StubFunction) -> None:
    """What a driver leaves behind: BARs placed and decoding, bus master on,
    MSI enabled with a masked vector pending, MSI-X enabled with vector 1
    live and vector 2 masked and pending, INTA asserted."""
    w = dev.config_write
    w(0x10, 0xFE000000, 4)
    w(0x14, 0xC040, 4)
    w(0x18, 0x00010000, 4)
    w(0x1C, 0x8, 4)                                        # BAR 2 at 0x8_0001_0000
    w(0x30, 0xFD000001, 4)
    w(0x04, 0x0007, 2)                                     # IO | MEMORY | MASTER
    m = dev.msi
    assert m is not None
    w(m.offset + 4, 0xFEE01000, 4)
    w(m.offset + 12, 0x0040, 2)
    w(m.offset + 16, 0x2, 4)                               # vector 1 masked
    w(m.offset + 2, 0x0021, 2)                             # enabled, 4 vectors
    m.notify(1)
    x = dev.msix
    assert x is not None
    mem = address_space_memory()
    for vector, (address, data) in ((1, (0xFEE02000, 0x51)), (2, (0xFEE03000, 0x52))):
        mem.dispatch_write(0xFE000000 + 16 * vector, address, 4)
        mem.dispatch_write(0xFE000000 + 16 * vector + 8, data, 4)
    mem.dispatch_write(0xFE000000 + 16 + 12, 0, 4)         # unmask vector 1
    w(x.offset + 2, 0x8000, 2)                             # MSI-X enable
    x.notify(2)                                            # masked: pending
    pci_set_irq(dev, 1)
    dev.sent.clear()


def test_round_trip_rebuilds_mappings_and_keeps_working() -> None:
    src = build()
    program(src)
    src_mem, src_io = flat_map(address_space_memory()), flat_map(address_space_io())
    with destination_vm() as vm, current(vm):
        dst = build()
        assert flat_map(address_space_memory()) != src_mem
        roundtrip(VMSTATE_STUB, src, dst)
        assert dst.config == src.config
        assert flat_map(address_space_memory()) == src_mem and flat_map(address_space_io()) == src_io
        assert [pci_get_bar_addr(dst, n) for n in (0, 1, 2, 6)] == [0xFE000000, 0xC040, 0x800010000, 0xFD000000]
        assert dst.bus_master_enable_region is not None and dst.bus_master_enable_region.enabled
        assert dst.irq_state == 1 and dst.pci_bus.irq_count == [1, 0, 0, 0]
        assert dst.config_read(0x06, 2) & 0x08                          # STATUS.INTERRUPT
        mem = address_space_memory()
        assert mem.dispatch_read(0xFE000000 + 16 * 2, 4) == 0xFEE03000   # the table through the BAR
        assert mem.dispatch_read(0xFE000800, 4) == 0x4                   # vector 2 pending
        # Run on: a live vector fires at the same address/data, unmasking
        # sends what is pending, INTx goes down through the bus.
        assert dst.msix is not None and dst.msi is not None
        dst.msix.notify(1)
        mem.dispatch_write(0xFE000000 + 16 * 2 + 12, 0, 4)
        dst.config_write(dst.msi.offset + 16, 0, 4)                      # MSI vector 1 unmasked
        assert dst.sent == [(0xFEE02000, 0x51), (0xFEE03000, 0x52), (0xFEE01000, 0x41)]
        pci_set_irq(dst, 0)
        assert dst.lines == {0: 0} and dst.pci_bus.irq_count == [0, 0, 0, 0]


def test_intx_disabled_is_not_counted_on_the_bus() -> None:
    src = build()
    pci_set_irq(src, 1)
    src.config_write(0x04, 0x0400, 2)
    with destination_vm() as vm, current(vm):
        dst = build()
        roundtrip(VMSTATE_STUB, src, dst)
        assert dst.irq_state == 1 and dst.pci_bus.irq_count == [0, 0, 0, 0]
        dst.config_write(0x04, 0, 2)                                     # re-enabled: INTA goes up
        assert dst.lines == {0: 1}


def test_load_unmaps_what_the_destination_had() -> None:
    src = build()
    with destination_vm() as vm, current(vm):
        dst = build()
        program(dst)
        roundtrip(VMSTATE_STUB, src, dst)
        assert pci_get_bar_addr(dst, 0) == -1 and address_space_memory().flatview.lookup(0xFE000000) is None
        assert dst.pci_bus.irq_count == [0, 0, 0, 0] and not dst.config_read(0x06, 2) & 0x08


@pytest.mark.parametrize("props, match", [
    ({"big": True}, "region 0 is 0x1000 bytes in the stream, 0x2000 here"),
    ({"vectors": 4}, r"Bad config data.*offset 0x[0-9a-f]+ reads 0x02 in the stream, 0x03"),   # MSI-X size
    ({"window": 1 << 32}, "region 2 was mapped at 0x800010000 on the source, -0x1 here"),
], ids=["bar-size", "msix-table-size", "pci-window"])
def test_another_device_is_refused(props: dict[str, Any], match: str) -> None:
    src = build()
    program(src)
    data = vmstate_save_bytes(VMSTATE_STUB, src)
    with destination_vm() as vm, current(vm):
        dst = build(**props)
        with pytest.raises(VMStateError, match=match):
            vmstate_load_bytes(VMSTATE_STUB, dst, data)


def _config_len() -> int:
    return 0x100


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def _refused(data: bytes, match: str) -> None:
    with destination_vm() as vm, current(vm):
        dst = build()
        with pytest.raises(VMStateError, match=match):
            vmstate_load_bytes(VMSTATE_STUB, dst, data)


def test_bad_streams_are_refused() -> None:
    src = build()
    program(src)
    data = vmstate_save_bytes(VMSTATE_STUB, src)
    cfg = 4                                                # the config space follows its length
    irq = cfg + _config_len()
    assert src.msi is not None and src.msix is not None
    msi_flags = cfg + src.msi.offset + 2
    bars = irq + 1
    msix_table = bars + 2 * 7 * 8 + 1 + 1 + 4               # BAR sizes and addresses, msi, msix, length
    msix_pba = msix_table + 3 * 16 + 4
    pcie_sized = struct.pack(">I", 0x1000) + bytes(data[cfg:irq]) + bytes(0xF00) + data[irq:]
    _refused(pcie_sized, "configuration space of 4096 bytes, test-vmstate-pci-stub has 256")
    _refused(_corrupt(data, cfg + 0x3D, b"\x02"), "Bad config data.*offset 0x3d")           # another pin
    _refused(_corrupt(data, cfg + 0x34, b"\x80"), "Bad config data.*offset 0x34")           # capability list
    _refused(_corrupt(data, irq, b"\x02"), "INTx state 0x2 but .* interrupt pin is 1")
    _refused(_corrupt(data, irq, b"\x10"), "does not fit 4 bits")
    _refused(_corrupt(data, bars + 8 * 7 + 8, struct.pack(">q", -2)), "bar_addrs: invalid value")
    _refused(_corrupt(data, bars + 8 * 7 + 8, struct.pack(">q", 0xC080)), "region 1 was mapped at 0xc080")
    _refused(_corrupt(data, msi_flags, bytes([src.config[src.msi.offset + 2] | 0x30])), "8 vectors enabled")
    _refused(_corrupt(data, cfg + src.msi.offset + 20, b"\x12"), "MSI: pending bits 0x12 beyond")
    _refused(_corrupt(data, cfg + src.msi.offset + 16, b"\x00"), "MSI: vector 1 pending while unmasked")
    short_table = data[:msix_table - 4] + struct.pack(">I", 32) + data[msix_table:msix_table + 32] \
        + data[msix_table + 48:]
    _refused(short_table, "MSI-X table of 32 bytes and PBA of 8, the function has 48 and 8")
    _refused(_corrupt(data, msix_table + 16 + 12, b"\x03"), "MSI-X vector 1: reserved vector control bits 0x3")
    _refused(_corrupt(data, msix_pba, b"\x0c"), "MSI-X pending bits beyond")
    _refused(_corrupt(data, msix_table + 32 + 12, b"\x00"), "MSI-X vector 2 pending while unmasked")
