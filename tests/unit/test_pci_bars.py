"""PCI BARs (sizing, mapping into the bus address spaces, 64-bit BARs, the
expansion ROM), capability lists and INTx, on the q35 root bus with a stub
function and no CPU."""

from __future__ import annotations

from typing import Any

import pytest

import pemu.hw.pci_host.q35  # noqa: F401  (registers the host types)
from pemu.hw.core.qdev import qdev_new, qdev_realize
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.pci.pci import (
    PCI_BAR_UNMAPPED,
    PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_PM,
    PCI_CAP_ID_VNDR,
    TYPE_PCI_DEVICE,
    PCIDevice,
    PCIDeviceClass,
    pci_add_capability,
    pci_bus_irqs,
    pci_capabilities,
    pci_config_set_interrupt_pin,
    pci_del_capability,
    pci_find_capability,
    pci_get_bar_addr,
    pci_register_bar,
    pci_set_irq,
)
from pemu.qom.object import ObjectClass, QOMError, TypeInfo, type_register
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion, MemoryRegionOps
from pemu.system.physmem import address_space_io, address_space_memory, cpu_exec_init_all, get_system_memory

TYPE_STUB = "test-pci-bar-stub"


class StubPCI(PCIDevice):
    log: list[tuple[str, int, int]]


def _stub_realize(dev: Any) -> None:
    dev.log = []

    def ops(name: str) -> MemoryRegionOps:
        return MemoryRegionOps(lambda off, size: 0xA5A5A5A5 & ((1 << (8 * size)) - 1),
                               lambda off, value, size: dev.log.append((name, off, value)), 1, 4)

    pci_register_bar(dev, 0, 0, MemoryRegion.io("stub-mmio", 0x1000, ops("mmio"), owner=dev))
    pci_register_bar(dev, 1, PCI_BASE_ADDRESS_SPACE_IO, MemoryRegion.io("stub-io", 0x20, ops("io"), owner=dev))
    pci_register_bar(dev, 2, PCI_BASE_ADDRESS_MEM_TYPE_64 | PCI_BASE_ADDRESS_MEM_PREFETCH,
                     MemoryRegion.io("stub-mmio64", 0x4000, ops("mmio64"), owner=dev))
    pci_register_bar(dev, 6, 0, MemoryRegion.io("stub-rom", 0x800, ops("rom"), owner=dev))
    pci_config_set_interrupt_pin(dev, 1)


def _stub_class_init(klass: ObjectClass, data: Any) -> None:
    k: PCIDeviceClass = klass  # type: ignore[assignment]
    k.vendor_id, k.device_id, k.class_id = 0x1234, 0x5678, 0xFF00
    k.pci_realize = _stub_realize  # type: ignore[attr-defined]


type_register(TypeInfo(TYPE_STUB, parent=TYPE_PCI_DEVICE, instance_type=StubPCI, class_init=_stub_class_init,
                       interfaces=("conventional-pci-device",)))


@pytest.fixture
def board() -> Any:
    cpu_exec_init_all()
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    get_system_memory().add_subregion_overlap(0, pci, -1)
    host = qdev_new("q35-pcihost")
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    dev = qdev_new(TYPE_STUB)
    dev.property_set("addr", "3.0")
    qdev_realize(dev, host.bus)  # type: ignore[attr-defined]
    return host, dev


def cfg_write(dev: PCIDevice, offset: int, value: int, size: int = 4) -> None:
    dev.config_write(offset, value, size)


def cfg_read(dev: PCIDevice, offset: int, size: int = 4) -> int:
    return dev.config_read(offset, size)


def test_sizing_by_writing_all_ones(board: Any) -> None:
    _, dev = board
    cfg_write(dev, 0x10, 0xFFFFFFFF)
    assert cfg_read(dev, 0x10) == 0xFFFFF000                     # 4 KiB, 32-bit memory
    cfg_write(dev, 0x14, 0xFFFFFFFF)
    assert cfg_read(dev, 0x14) == 0xFFFFFFE1                     # 32 bytes of I/O
    cfg_write(dev, 0x18, 0xFFFFFFFF)
    cfg_write(dev, 0x1C, 0xFFFFFFFF)
    assert cfg_read(dev, 0x18) == 0xFFFFC00C                     # 16 KiB, 64-bit, prefetchable
    assert cfg_read(dev, 0x1C) == 0xFFFFFFFF
    cfg_write(dev, 0x30, 0xFFFFFFFF)
    assert cfg_read(dev, 0x30) == 0xFFFFF801                     # 2 KiB ROM, enable bit writable
    cfg_write(dev, 0x20, 0xFFFFFFFF)
    assert cfg_read(dev, 0x20) == 0                              # unregistered BAR stays zero


def test_bars_map_only_with_decoding_enabled(board: Any) -> None:
    _, dev = board
    mem, io = address_space_memory(), address_space_io()
    cfg_write(dev, 0x10, 0xFE000000)
    cfg_write(dev, 0x14, 0xC000)
    assert mem.flatview.lookup(0xFE000000) is None                # COMMAND.MEMORY still clear
    assert pci_get_bar_addr(dev, 0) == PCI_BAR_UNMAPPED
    cfg_write(dev, 0x04, 0x0003, 2)                               # IO | MEMORY
    fr = mem.flatview.lookup(0xFE000800)
    assert fr is not None and fr.mr.name == "stub-mmio" and fr.start == 0xFE000000 and fr.size == 0x1000
    fr = io.flatview.lookup(0xC010)
    assert fr is not None and fr.mr.name == "stub-io"
    assert io.dispatch_read(0xC000, 4) == 0xA5A5A5A5
    io.dispatch_write(0xC004, 0x12, 1)
    assert dev.log[-1] == ("io", 4, 0x12)
    # Moving the BAR moves the window.
    cfg_write(dev, 0x10, 0xFE100000)
    assert mem.flatview.lookup(0xFE000000) is None
    assert mem.flatview.lookup(0xFE100000).mr.name == "stub-mmio"  # type: ignore[union-attr]
    # Turning MEMORY off unmaps the memory BAR but leaves the I/O BAR.
    cfg_write(dev, 0x04, 0x0001, 2)
    assert mem.flatview.lookup(0xFE100000) is None
    assert io.flatview.lookup(0xC000) is not None


def test_sizing_with_decoding_on_leaves_nothing_mapped(board: Any) -> None:
    _, dev = board
    cfg_write(dev, 0x04, 0x0003, 2)
    cfg_write(dev, 0x10, 0xFFFFFFFF)                              # window at 0xFFFFF000 reaching the top
    cfg_write(dev, 0x14, 0xFFFFFFFF)                              # I/O at 0xFFFFFFE0: past 64 KiB
    assert pci_get_bar_addr(dev, 0) == PCI_BAR_UNMAPPED
    assert pci_get_bar_addr(dev, 1) == PCI_BAR_UNMAPPED
    cfg_write(dev, 0x14, 0)                                       # address 0 never decodes
    assert pci_get_bar_addr(dev, 1) == PCI_BAR_UNMAPPED


def test_64bit_bar_above_4g(board: Any) -> None:
    _, dev = board
    cfg_write(dev, 0x18, 0x0000C000)
    cfg_write(dev, 0x1C, 0x00000008)                              # 0x8_0000_C000
    cfg_write(dev, 0x04, 0x0002, 2)
    assert pci_get_bar_addr(dev, 2) == 0x80000C000
    fr = address_space_memory().flatview.lookup(0x80000C000)
    assert fr is not None and fr.mr.name == "stub-mmio64"
    assert cfg_read(dev, 0x18) == 0xC00C


def test_rom_needs_its_enable_bit(board: Any) -> None:
    _, dev = board
    cfg_write(dev, 0x04, 0x0002, 2)
    cfg_write(dev, 0x30, 0xFD000000)
    assert pci_get_bar_addr(dev, 6) == PCI_BAR_UNMAPPED
    cfg_write(dev, 0x30, 0xFD000001)
    assert pci_get_bar_addr(dev, 6) == 0xFD000000


def test_reset_unmaps_and_clears(board: Any) -> None:
    from pemu.hw.core.qdev import device_cold_reset

    _, dev = board
    cfg_write(dev, 0x10, 0xFE000000)
    cfg_write(dev, 0x04, 0x0002, 2)
    cfg_write(dev, 0x3C, 0x0B, 1)
    device_cold_reset(dev)
    assert cfg_read(dev, 0x04, 2) == 0 and cfg_read(dev, 0x10) == 0 and cfg_read(dev, 0x3C, 1) == 0
    assert cfg_read(dev, 0x18) == 0xC                             # type bits survive
    assert address_space_memory().flatview.lookup(0xFE000000) is None


def test_bad_bar_registrations_are_refused(board: Any) -> None:
    _, dev = board
    ops = MemoryRegionOps(lambda o, s: 0, lambda o, v, s: None)
    with pytest.raises(QOMError):
        pci_register_bar(dev, 4, 0, MemoryRegion.io("odd", 0x3000, ops))            # not a power of two
    with pytest.raises(QOMError):
        pci_register_bar(dev, 3, 0, MemoryRegion.io("in-64", 0x1000, ops))          # upper half of BAR 2
    with pytest.raises(QOMError):
        pci_register_bar(dev, 5, PCI_BASE_ADDRESS_MEM_TYPE_64, MemoryRegion.io("last", 0x1000, ops))
    with pytest.raises(QOMError):
        pci_register_bar(dev, 0, 0, MemoryRegion.io("again", 0x1000, ops))


def test_capability_list_walk(board: Any) -> None:
    _, dev = board
    assert not cfg_read(dev, 0x06, 2) & 0x10 and pci_capabilities(dev) == []
    pm = pci_add_capability(dev, PCI_CAP_ID_PM, 0x40, 8)
    msi = pci_add_capability(dev, PCI_CAP_ID_MSI, 0, 14)            # first free dword after PM
    vndr = pci_add_capability(dev, PCI_CAP_ID_VNDR, 0x80, 4)
    assert (pm, msi, vndr) == (0x40, 0x48, 0x80)
    assert cfg_read(dev, 0x06, 2) & 0x10                         # STATUS.CAP_LIST
    # The guest's walk: 0x34, then each next pointer.
    ptr, walk = cfg_read(dev, 0x34, 1), []
    while ptr:
        walk.append((ptr, cfg_read(dev, ptr, 1)))
        ptr = cfg_read(dev, ptr + 1, 1)
    assert walk == [(0x80, PCI_CAP_ID_VNDR), (0x48, PCI_CAP_ID_MSI), (0x40, PCI_CAP_ID_PM)]
    assert pci_find_capability(dev, PCI_CAP_ID_MSI) == 0x48
    cfg_write(dev, 0x48, 0xFFFF, 2)                               # the header is read-only
    assert cfg_read(dev, 0x48, 2) == (0x40 << 8) | PCI_CAP_ID_MSI
    with pytest.raises(QOMError):
        pci_add_capability(dev, PCI_CAP_ID_VNDR, 0x44, 4)         # overlaps PM
    pci_del_capability(dev, PCI_CAP_ID_MSI, 14)
    assert [cap for _, cap in pci_capabilities(dev)] == [PCI_CAP_ID_VNDR, PCI_CAP_ID_PM]


def test_capability_walk_survives_a_loop(board: Any) -> None:
    _, dev = board
    pci_add_capability(dev, PCI_CAP_ID_PM, 0x40, 8)
    dev.config[0x41] = 0x40                                       # points at itself
    assert pci_capabilities(dev) == [(0x40, PCI_CAP_ID_PM)]


def test_intx_through_the_bus_map(board: Any) -> None:
    host, dev = board
    lines: dict[int, int] = {}
    pci_bus_irqs(host.bus, lambda n, level: lines.__setitem__(n, level), lambda d, pin: (d.devfn >> 3) + pin, 8)
    pci_set_irq(dev, 1)
    assert lines == {3: 1} and cfg_read(dev, 0x06, 2) & 0x08      # STATUS.INTERRUPT
    cfg_write(dev, 0x04, 0x0400, 2)                               # INTx disable withdraws it
    assert lines[3] == 0 and cfg_read(dev, 0x06, 2) & 0x08
    cfg_write(dev, 0x04, 0x0000, 2)
    assert lines[3] == 1
    pci_set_irq(dev, 0)
    assert lines[3] == 0 and not cfg_read(dev, 0x06, 2) & 0x08
