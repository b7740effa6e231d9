"""The PCI Express capability of an endpoint (QEMU's hw/pci/pcie.c, PCIe
base spec 1.1 §7.8 for the version-1 layout QEMU's e1000e uses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pemu.hw.pci.pci import PCI_CAP_ID_EXP, TYPE_PCIE_BUS, pci_add_capability

if TYPE_CHECKING:
    from pemu.hw.pci.pci import PCIDevice

PCI_EXP_FLAGS = 2
PCI_EXP_DEVCAP = 4
PCI_EXP_DEVCTL = 8
PCI_EXP_DEVSTA = 10
PCI_EXP_LNKCAP = 12
PCI_EXP_LNKCTL = 16
PCI_EXP_LNKSTA = 18
PCI_EXP_VER1_SIZEOF = 0x14

PCI_EXP_TYPE_ENDPOINT = 0x0
PCI_EXP_TYPE_RC_END = 0x9
PCI_EXP_FLAGS_TYPE_SHIFT = 4
PCI_EXP_DEVCAP_RBER = 1 << 15           # role-based error reporting
PCI_EXP_DEVCTL_WRITABLE = 0x7CFF        # error reporting, MPS, MRRS, relaxed ordering, no-snoop...
PCI_EXP_DEVSTA_W1C = 0x000F             # the error-detected bits
PCI_EXP_LNKCAP_X1_2_5GT = 0x11          # one lane at 2.5 GT/s
PCI_EXP_LNKSTA_X1_2_5GT = 0x11
PCI_EXP_LNKCTL_WRITABLE = 0x01C3        # ASPM control, RCB, common clock, extended synch


def pcie_endpoint_cap_v1_init(dev: PCIDevice, offset: int) -> int:
    """Add a version-1 PCIe capability: an endpoint, or an integrated one
    (RC_END) on a root bus as QEMU makes it.  Returns its offset."""
    from pemu.hw.pci.pci import PCIDevice

    bus = dev.pci_bus
    # A root bus hangs off a host bridge; a secondary one off a PCI bridge.
    on_root = bus.is_a(TYPE_PCIE_BUS) and not isinstance(bus.parent_dev, PCIDevice)
    kind = PCI_EXP_TYPE_RC_END if on_root else PCI_EXP_TYPE_ENDPOINT
    pos = pci_add_capability(dev, PCI_CAP_ID_EXP, offset, PCI_EXP_VER1_SIZEOF)
    dev.set_word(pos + PCI_EXP_FLAGS, 1 | (kind << PCI_EXP_FLAGS_TYPE_SHIFT))
    dev.set_long(pos + PCI_EXP_DEVCAP, PCI_EXP_DEVCAP_RBER)
    dev.wmask[pos + PCI_EXP_DEVCTL:pos + PCI_EXP_DEVCTL + 2] = PCI_EXP_DEVCTL_WRITABLE.to_bytes(2, "little")
    dev.w1cmask[pos + PCI_EXP_DEVSTA:pos + PCI_EXP_DEVSTA + 2] = PCI_EXP_DEVSTA_W1C.to_bytes(2, "little")
    if kind == PCI_EXP_TYPE_ENDPOINT:
        dev.set_long(pos + PCI_EXP_LNKCAP, PCI_EXP_LNKCAP_X1_2_5GT)
        dev.set_word(pos + PCI_EXP_LNKSTA, PCI_EXP_LNKSTA_X1_2_5GT)
        dev.wmask[pos + PCI_EXP_LNKCTL:pos + PCI_EXP_LNKCTL + 2] = PCI_EXP_LNKCTL_WRITABLE.to_bytes(2, "little")
    return pos
