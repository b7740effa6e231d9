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


ICH9_PMBASE_DEFAULT = 0x600
PM1_EVT_OFFSET, PM1_CNT_OFFSET, PM_TMR_OFFSET, GPE0_OFFSET = 0x00, 0x04, 0x08, 0x20
ICH9_SCI_ISA_IRQ = 9
ICH9_RST_CNT_IOPORT = 0xCF9
RST_CNT_SYS_RST = 0x02
RST_CNT_RST_CPU = 0x04
RST_CNT_FULL_RST = 0x08


class ICH9LPCState(PCIDevice):
    isa_bus: ISABus
    pm: Any  # pemu.hw.acpi.core.AcpiPmRegs
    rst_cnt: int

    # The reset control register (0xCF9): writing RST_CPU resets the machine.
    def rst_cnt_read(self, offset: int, size: int) -> int:
        return self.rst_cnt

    def rst_cnt_write(self, offset: int, value: int, size: int) -> None:
        from pemu.system.runstate import ShutdownCause, qemu_system_reset_request

        if value & RST_CNT_RST_CPU:
            qemu_system_reset_request(ShutdownCause.GUEST_RESET)
        self.rst_cnt = value & (RST_CNT_SYS_RST | RST_CNT_FULL_RST)


class _SCILine:
    """The SCI, routed to ISA IRQ 9 on whatever the bus is wired to when it fires."""

    def __init__(self, lpc: ICH9LPCState) -> None:
        self.lpc = lpc

    def set(self, level: int) -> None:
        self.lpc.isa_bus.irqs[ICH9_SCI_ISA_IRQ].set(level)


def _on_sleep(state: int) -> None:
    """SLP_EN written: S5 is power-off; the other sleep states are not supported."""
    from pemu.system.runstate import ShutdownCause, qemu_system_shutdown_request
    from pemu.util.log import LOG_UNIMP, qemu_log_mask

    if state == 5:
        qemu_system_shutdown_request(ShutdownCause.GUEST_SHUTDOWN)
    else:
        qemu_log_mask(LOG_UNIMP, f"ICH9 PM: sleep state S{state} is not supported")


def _ich9_lpc_realize(dev: Any) -> None:
    from pemu.hw.acpi.core import AcpiPmRegs
    from pemu.system.memory import MemoryRegion, MemoryRegionOps
    from pemu.system.physmem import get_system_io

    lpc: ICH9LPCState = dev
    io = get_system_io()
    lpc.isa_bus = isa_bus_new(lpc, io, "isa.0")
    lpc.rst_cnt = 0
    # The ACPI PM block at PMBASE (fixed at QEMU's 0x600 until PMBASE is
    # programmable through config space).
    lpc.pm = pm = AcpiPmRegs(_SCILine(lpc), _on_sleep, timer_32bit=False)
    pm_io = MemoryRegion.container("ich9-pm", 0x80, owner=lpc)
    for name, offset, block in (("acpi-evt", PM1_EVT_OFFSET, pm.evt), ("acpi-cnt", PM1_CNT_OFFSET, pm.cnt),
                                ("acpi-tmr", PM_TMR_OFFSET, pm.tmr), ("acpi-gpe0", GPE0_OFFSET, pm.gpe0)):
        ops = MemoryRegionOps(block.read, block.write, 1, 4, True, 1, 4)
        pm_io.add_subregion(offset, MemoryRegion.io(name, block.length, ops, owner=lpc))
    io.add_subregion(ICH9_PMBASE_DEFAULT, pm_io)
    from pemu.system.runstate import qemu_register_powerdown_notifier

    qemu_register_powerdown_notifier(pm.power_button)
    rst_ops = MemoryRegionOps(lpc.rst_cnt_read, lpc.rst_cnt_write, 1, 1, False, 1, 1)
    io.add_subregion_overlap(ICH9_RST_CNT_IOPORT, MemoryRegion.io("lpc-reset-control", 1, rst_ops, owner=lpc), 1)


def _ich9_lpc_reset(dev: Any) -> None:
    dev.rst_cnt = 0
    dev.pm.reset()


def _ich9_lpc_class_init(klass: ObjectClass, data: Any) -> None:
    k: PCIDeviceClass = klass  # type: ignore[assignment]
    k.vendor_id = 0x8086
    k.device_id = PCI_DEVICE_ID_INTEL_ICH9_8
    k.revision = 0x02
    k.class_id = PCI_CLASS_BRIDGE_ISA
    k.user_creatable = False
    k.desc = "ICH9 LPC bridge"
    k.pci_realize = _ich9_lpc_realize  # type: ignore[attr-defined]
    k.reset = _ich9_lpc_reset


type_register(TypeInfo(TYPE_ICH9_LPC_DEVICE, parent=TYPE_PCI_DEVICE, instance_type=ICH9LPCState,
                       class_init=_ich9_lpc_class_init, interfaces=("conventional-pci-device",)))
