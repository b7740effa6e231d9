"""The PCI MSI and MSI-X capabilities on a stub function: layout, the
msi_nonbroken rule, masking, pending bits and the MSI-X table and PBA."""

from __future__ import annotations

from typing import Any

import pytest

import pemu.hw.pci_host.q35  # noqa: F401  (registers the host types)
from pemu.hw.core.qdev import qdev_new, qdev_realize
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.pci.msi import MSICapability, MSIError, msi_init
from pemu.hw.pci.msix import MSIXState, msix_init
from pemu.hw.pci.pci import (
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_MSIX,
    TYPE_PCI_DEVICE,
    PCIDevice,
    PCIDeviceClass,
    pci_find_capability,
)
from pemu.qom.object import ObjectClass, TypeInfo, type_register
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion
from pemu.system.physmem import cpu_exec_init_all, get_system_memory

TYPE_STUB = "test-msi-stub"


class StubMSI(PCIDevice):
    sent: list[tuple[int, int]]
    msi: MSICapability | None
    msix: MSIXState | None

    def config_write(self, addr: int, value: int, size: int) -> None:
        super().config_write(addr, value, size)
        if self.msi is not None:
            self.msi.write_config(addr, size)
        if self.msix is not None:
            self.msix.write_config(addr, size)


def _stub_realize(dev: Any) -> None:
    dev.sent = []
    dev.msi = None
    dev.msix = None


def _stub_class_init(klass: ObjectClass, data: Any) -> None:
    k: PCIDeviceClass = klass  # type: ignore[assignment]
    k.vendor_id, k.device_id, k.class_id = 0x1234, 0x5679, 0xFF00
    k.pci_realize = _stub_realize  # type: ignore[attr-defined]


type_register(TypeInfo(TYPE_STUB, parent=TYPE_PCI_DEVICE, instance_type=StubMSI, class_init=_stub_class_init,
                       interfaces=("conventional-pci-device",)))


@pytest.fixture
def dev() -> StubMSI:
    cpu_exec_init_all()
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    get_system_memory().add_subregion_overlap(0, pci, -1)
    host = qdev_new("q35-pcihost")
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    d = qdev_new(TYPE_STUB)
    d.property_set("addr", "4.0")
    qdev_realize(d, host.bus)  # type: ignore[attr-defined]
    return d  # type: ignore[return-value]


def send_to(d: StubMSI) -> Any:
    return lambda address, data: d.sent.append((address, data))


def test_msi_refused_when_the_machine_cannot_deliver(dev: StubMSI) -> None:
    with pytest.raises(MSIError):
        msi_init(dev, 0, 1, True, False, send_to(dev), msi_nonbroken=False)
    assert pci_find_capability(dev, PCI_CAP_ID_MSI) == 0
    with pytest.raises(MSIError):
        msix_init(dev, 4, send_to(dev), table_bar_nr=0, table_offset=0, pba_bar_nr=0, pba_offset=0x800,
                  msi_nonbroken=False)
    assert pci_find_capability(dev, PCI_CAP_ID_MSIX) == 0


@pytest.mark.parametrize("msi64,mask,size", [(False, False, 0xA), (True, False, 0xE), (False, True, 0x14),
                                             (True, True, 0x18)])
def test_msi_layout(dev: StubMSI, msi64: bool, mask: bool, size: int) -> None:
    dev.msi = cap = msi_init(dev, 0x50, 4, msi64, mask, send_to(dev), msi_nonbroken=True)
    assert cap.offset == 0x50 and cap.size == size
    assert pci_find_capability(dev, PCI_CAP_ID_MSI) == 0x50
    flags = dev.config_read(0x52, 2)
    assert flags == (2 << 1) | (0x80 if msi64 else 0) | (0x100 if mask else 0)
    dev.config_write(0x52, 0xFFFF, 2)
    assert dev.config_read(0x52, 2) == flags | 0x1 | (2 << 4)    # enable, and QSIZE clamped to 4 vectors
    dev.config_write(0x54, 0xFFFFFFFF, 4)
    assert dev.config_read(0x54, 4) == 0xFFFFFFFC


def test_msi_notify_and_multiple_messages(dev: StubMSI) -> None:
    dev.msi = cap = msi_init(dev, 0, 4, False, False, send_to(dev), msi_nonbroken=True)
    o = cap.offset
    cap.notify(0)
    assert dev.sent == []                                         # not enabled yet
    dev.config_write(o + 4, 0xFEE01000, 4)
    dev.config_write(o + 8, 0x4060, 2)
    dev.config_write(o + 2, 0x21, 2)                              # enable, 4 vectors
    cap.notify(3)
    cap.notify(4)                                                 # beyond the enabled vectors
    assert dev.sent == [(0xFEE01000, 0x4063)]


def test_msi_per_vector_mask_and_pending(dev: StubMSI) -> None:
    dev.msi = cap = msi_init(dev, 0, 2, True, True, send_to(dev), msi_nonbroken=True)
    o = cap.offset
    dev.config_write(o + 4, 0xFEE00000, 4)
    dev.config_write(o + 0xC, 0x0050, 2)
    dev.config_write(o + 0x10, 0x2, 4)                            # mask vector 1
    dev.config_write(o + 2, 0x11, 2)
    cap.notify(1)
    assert dev.sent == [] and dev.config_read(o + 0x14, 4) == 0x2
    dev.config_write(o + 0x14, 0, 4)                              # pending bits are read-only
    assert dev.config_read(o + 0x14, 4) == 0x2
    dev.config_write(o + 0x10, 0, 4)                              # unmask: the pending one goes
    assert dev.sent == [(0xFEE00000, 0x0051)]
    assert dev.config_read(o + 0x14, 4) == 0


def test_msix_table_pba_and_masking(dev: StubMSI) -> None:
    dev.msix = x = msix_init(dev, 3, send_to(dev), table_bar_nr=1, table_offset=0, pba_bar_nr=1,
                             pba_offset=0x800, msi_nonbroken=True)
    o = x.offset
    assert dev.config_read(o + 2, 2) == 2                         # table size - 1
    assert dev.config_read(o + 4, 4) == 1 and dev.config_read(o + 8, 4) == 0x801
    assert x.table_region.size == 48 and x.pba_region.size == 8
    assert all(x.table_read(16 * v + 12, 4) == 1 for v in range(3))     # masked at reset
    x.table_write(16 * 2 + 0, 0xFEE02000, 4)
    x.table_write(16 * 2 + 8, 0x0071, 4)
    dev.config_write(o + 2, 0x8000, 2)                            # enable
    x.notify(2)
    assert dev.sent == [] and x.pba_read(0, 4) == 0x4
    x.pba_write(0, 0, 4)
    assert x.pba_read(0, 4) == 0x4
    x.table_write(16 * 2 + 12, 0xFFFFFFFE, 4)                     # unmask (reserved bits dropped)
    assert x.table_read(16 * 2 + 12, 4) == 0
    assert dev.sent == [(0xFEE02000, 0x0071)] and x.pba_read(0, 4) == 0
    dev.config_write(o + 2, 0xC000, 2)                            # function mask
    x.notify(2)
    assert len(dev.sent) == 1 and x.pba_read(0, 4) == 0x4
    dev.config_write(o + 2, 0x8000, 2)
    assert dev.sent[1:] == [(0xFEE02000, 0x0071)]
    x.notify(7)                                                   # no such vector
    assert len(dev.sent) == 2
    x.table_write(3, 0, 4)                                        # misaligned: ignored
    assert x.table_read(16 * 3, 4) == 0                           # beyond the table


def test_msix_layout_errors(dev: StubMSI) -> None:
    for kwargs in ({"table_offset": 4}, {"pba_offset": 0x10}, {"table_bar_nr": 6}):
        args = {"table_bar_nr": 0, "table_offset": 0, "pba_bar_nr": 0, "pba_offset": 0x800} | kwargs
        with pytest.raises(MSIError):
            msix_init(dev, 4, send_to(dev), msi_nonbroken=True, **args)
    with pytest.raises(MSIError):
        msix_init(dev, 0, send_to(dev), table_bar_nr=0, table_offset=0, pba_bar_nr=0, pba_offset=0x800,
                  msi_nonbroken=True)
