"""The PCI power management capability (PCI Bus Power Management 1.2 §3.2),
as QEMU's devices add it: D0-D3hot in PMCSR, nothing powered down for real."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pemu.hw.pci.pci import PCI_CAP_ID_PM, pci_add_capability

if TYPE_CHECKING:
    from pemu.hw.pci.pci import PCIDevice

PCI_PM_PMC = 2
PCI_PM_CTRL = 4
PCI_PM_SIZEOF = 8
PCI_PM_CAP_VER_1_2 = 0x0003
PCI_PM_CTRL_STATE_MASK = 0x0003
PCI_PM_CTRL_PME_ENABLE = 0x0100
PCI_PM_CTRL_PME_STATUS = 0x8000
PCI_PM_CTRL_NO_SOFT_RESET = 0x0008


def pci_pm_init(dev: PCIDevice, offset: int, pmc: int) -> int:
    """Add a PM capability advertising ``pmc`` (its version bits are set
    here); the guest may move PMCSR between power states and arm PME."""
    pos = pci_add_capability(dev, PCI_CAP_ID_PM, offset, PCI_PM_SIZEOF)
    dev.set_word(pos + PCI_PM_PMC, pmc | PCI_PM_CAP_VER_1_2)
    dev.set_word(pos + PCI_PM_CTRL, PCI_PM_CTRL_NO_SOFT_RESET)
    writable = PCI_PM_CTRL_STATE_MASK | PCI_PM_CTRL_PME_ENABLE
    dev.wmask[pos + PCI_PM_CTRL:pos + PCI_PM_CTRL + 2] = writable.to_bytes(2, "little")
    dev.w1cmask[pos + PCI_PM_CTRL:pos + PCI_PM_CTRL + 2] = PCI_PM_CTRL_PME_STATUS.to_bytes(2, "little")
    return pos
