"""The ICH9 SATA controller in AHCI mode, 00:1f.2 on q35 (QEMU's hw/ide/ich.c).

The PCI function (8086:2922, class 01.06 prog-if 01) around an
:class:`~pemu.hw.ide.ahci.AHCIState` with six ports: the HBA's registers
(ABAR) in BAR5, the index/data pair that reaches them through I/O space in
BAR4, the SATA capability that points at that pair, and an MSI capability
(one vector, 64-bit) when the machine can deliver MSIs (``msi_nonbroken``);
otherwise the controller has INTx (INTA) only.  Each port has an IDE bus,
``ide.0``... ``ide.5``, for one ``ide-hd`` or ``ide-cd`` device.
"""

from __future__ import annotations

from typing import Any

from pemu.hw.ide.ahci import AHCI_MEM_BAR_SIZE, VMSTATE_AHCI, AHCIState
from pemu.hw.ide.qdev import TYPE_IDE_BUS, IDEBus
from pemu.hw.pci.msi import VMSTATE_MSI_FIELD, MSICapability, MSIError, msi_init
from pemu.hw.pci.pci import (
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_BASE_ADDRESS_SPACE_MEMORY,
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIDevice,
    PCIDeviceClass,
    pci_add_capability,
    pci_config_set_interrupt_pin,
    pci_dma_write,
    pci_get_address_space,
    pci_register_bar,
    pci_set_irq,
)
from pemu.migration.vmstate import Struct, VMStateDescription, VMStateField
from pemu.qom.object import ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps

TYPE_ICH9_AHCI = "ich9-ahci"
PCI_DEVICE_ID_INTEL_82801IR = 0x2922
PCI_CLASS_STORAGE_SATA = 0x0106
AHCI_PROGMODE_MAJOR_REV_1 = 0x01
ICH9_AHCI_PORTS = 6

ICH9_IDP_BAR = 4
ICH9_MEM_BAR = 5
ICH9_IDP_SIZE = 32
ICH9_IDP_INDEX = 0x10
ICH9_IDP_INDEX_LOG2 = 4
ICH9_MSI_CAP_OFFSET = 0x80
ICH9_SATA_CAP_OFFSET = 0xA8
ICH9_MAP = 0x90  # address map register
ICH9_MAP_AHCI_MODE = 1 << 6
PCI_CAP_ID_SATA = 0x12
SATA_CAP_SIZE = 8
SATA_CAP_REV = 2
SATA_CAP_BAR = 4
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D


class _PCIIntx:
    def __init__(self, dev: PCIDevice) -> None:
        self.dev = dev

    def set(self, level: int) -> None:
        pci_set_irq(self.dev, level)


class ICH9AHCIState(PCIDevice):
    ahci: AHCIState
    mem: MemoryRegion
    idp: MemoryRegion
    msi: MSICapability | None
    buses: list[IDEBus]

    def config_write(self, addr: int, value: int, size: int) -> None:
        msi = self.msi
        was_enabled = msi is not None and msi.enabled
        super().config_write(addr, value, size)
        if msi is not None:
            msi.write_config(addr, size)
            if msi.enabled != was_enabled:
                self.ahci.check_irq()  # MSI turned on or off: a pending interrupt moves over


def _ich9_ahci_init(obj: Any) -> None:
    d = object_check(obj, ICH9AHCIState)
    d.msi = None
    d.buses = []


def _ich9_ahci_realize(dev: Any) -> None:
    from pemu.hw.core.qdev import qbus_new
    from pemu.system.runstate import qemu_add_vm_change_state_handler
    from pemu.util.vm_context import current_vm

    d = object_check(dev, ICH9AHCIState)
    d.ahci = AHCIState(ICH9_AHCI_PORTS, pci_get_address_space(d), _PCIIntx(d))
    for port in d.ahci.ports:
        bus = object_check(qbus_new(TYPE_IDE_BUS, d, None), IDEBus)
        bus.units = [port.ide]
        d.buses.append(bus)
    d.set_byte(0x09, AHCI_PROGMODE_MAJOR_REV_1)
    d.config[PCI_CACHE_LINE_SIZE] = 0x08
    d.config[PCI_LATENCY_TIMER] = 0x00
    pci_config_set_interrupt_pin(d, 1)  # INTA
    d.config[ICH9_MAP] = ICH9_MAP_AHCI_MODE
    ahci = d.ahci
    d.mem = MemoryRegion.io("ahci", AHCI_MEM_BAR_SIZE,
                            MemoryRegionOps(ahci.mem_read, ahci.mem_write, 1, 8, True, 1, 4), owner=d)
    d.idp = MemoryRegion.io(
        "ahci-idp", ICH9_IDP_SIZE,
        MemoryRegionOps(lambda off, size: ahci.idp_read(off, size, ICH9_IDP_INDEX),
                        lambda off, val, size: ahci.idp_write(off, val, size, ICH9_IDP_INDEX), 1, 4, True, 1, 4),
        owner=d)
    pci_register_bar(d, ICH9_IDP_BAR, PCI_BASE_ADDRESS_SPACE_IO, d.idp)
    pci_register_bar(d, ICH9_MEM_BAR, PCI_BASE_ADDRESS_SPACE_MEMORY, d.mem)
    sata = pci_add_capability(d, PCI_CAP_ID_SATA, ICH9_SATA_CAP_OFFSET, SATA_CAP_SIZE)
    d.set_word(sata + SATA_CAP_REV, 0x10)
    d.set_long(sata + SATA_CAP_BAR, (ICH9_IDP_BAR + 4) | (ICH9_IDP_INDEX_LOG2 << 4))
    # The ICH9 lists MSI first (its datasheet; AHCI 1.3 would have PM first).
    try:
        d.msi = msi_init(d, ICH9_MSI_CAP_OFFSET, 1, True, False,
                         lambda address, data: _msi_send(d, address, data),
                         msi_nonbroken=current_vm().msi_nonbroken)
    except MSIError:
        d.msi = None  # INTx only, and no MSI capability for the guest to try
    ahci.msi = d.msi
    qemu_add_vm_change_state_handler(lambda running, state: ahci.restart() if running else None)


def _msi_send(d: ICH9AHCIState, address: int, data: int) -> None:
    """An MSI is a dword write by the function's bus master (msi_send_message)."""
    pci_dma_write(d, address, data.to_bytes(4, "little"))


def _ich9_ahci_reset(dev: Any) -> None:
    d = object_check(dev, ICH9AHCIState)
    d.ahci.reset()


# The function's state (QEMU's vmstate_ich9_ahci): the PCI function (config space,
# BARs, INTx) and its MSI capability first, so that the HBA's post_load knows
# whether an interrupt goes by INTx; then the HBA with its ports and drives.
VMSTATE_ICH9_AHCI = VMStateDescription(
    "ich9_ahci", version_id=1,
    fields=[
        VMSTATE_PCI_DEVICE_FIELD,
        VMSTATE_MSI_FIELD,
        VMStateField("ahci", Struct(VMSTATE_AHCI)),
    ])


def _ich9_ahci_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCIDeviceClass)
    k.vendor_id = 0x8086
    k.device_id = PCI_DEVICE_ID_INTEL_82801IR
    k.revision = 1
    k.class_id = PCI_CLASS_STORAGE_SATA
    k.desc = "ICH9 AHCI controller"
    k.categories = ("storage",)
    k.user_creatable = False  # part of the ICH9, wired by pc_q35_init
    k.pci_realize = _ich9_ahci_realize
    k.pci_reset = _ich9_ahci_reset
    k.vmsd = VMSTATE_ICH9_AHCI


type_register(TypeInfo(TYPE_ICH9_AHCI, parent=TYPE_PCI_DEVICE, instance_type=ICH9AHCIState,
                       instance_init=_ich9_ahci_init, class_init=_ich9_ahci_class_init,
                       interfaces=("conventional-pci-device",)))
