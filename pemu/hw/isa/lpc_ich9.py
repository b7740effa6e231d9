"""The ICH9 LPC bridge (QEMU's hw/isa/lpc_ich9.c) at 00:1f.0: the PCI
function that owns the ISA bus of the q35 and its legacy devices."""

from __future__ import annotations

from typing import Any

from pemu.hw.isa.isa_bus import ISABus, isa_bus_new
from pemu.hw.pci.pci import TYPE_PCI_DEVICE, PCIDevice, PCIDeviceClass
from pemu.qom.object import ObjectClass, TypeInfo, type_register

TYPE_ICH9_LPC_DEVICE = "ICH9-LPC"
PCI_DEVICE_ID_INTEL_ICH9_8 = 0x2918
PCI_CLASS_BRIDGE_ISA = 0x0601


class ICH9LPCState(PCIDevice):
    isa_bus: ISABus


def _ich9_lpc_realize(dev: Any) -> None:
    from pemu.system.physmem import get_system_io

    lpc: ICH9LPCState = dev
    lpc.isa_bus = isa_bus_new(lpc, get_system_io(), "isa.0")


def _ich9_lpc_class_init(klass: ObjectClass, data: Any) -> None:
    k: PCIDeviceClass = klass  # type: ignore[assignment]
    k.vendor_id = 0x8086
    k.device_id = PCI_DEVICE_ID_INTEL_ICH9_8
    k.revision = 0x02
    k.class_id = PCI_CLASS_BRIDGE_ISA
    k.user_creatable = False
    k.desc = "ICH9 LPC bridge"
    k.pci_realize = _ich9_lpc_realize  # type: ignore[attr-defined]


type_register(TypeInfo(TYPE_ICH9_LPC_DEVICE, parent=TYPE_PCI_DEVICE, instance_type=ICH9LPCState,
                       class_init=_ich9_lpc_class_init, interfaces=("conventional-pci-device",)))
