"""The q35 host bridge (QEMU's hw/pci-host/q35.c): the "q35-pcihost" system
bus device that owns the PCIe root bus pcie.0 and answers PCI configuration
mechanism #1 on ports 0xCF8/0xCFC, and the MCH itself at 00:00.0."""

from __future__ import annotations

from typing import Any

from pemu.hw.core.qdev import DeviceClass, qdev_new, qdev_realize
from pemu.hw.core.sysbus import TYPE_SYS_BUS_DEVICE, SysBusDevice
from pemu.hw.i386 import memmap
from pemu.hw.pci.pci import (
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIBus,
    PCIDevice,
    PCIDeviceClass,
    pci_bus_config_read,
    pci_bus_config_write,
    pci_root_bus_new,
)
from pemu.migration.vmstate import U32, VMStateDescription, VMStateError, VMStateField
from pemu.qom.object import Object, ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps

TYPE_Q35_HOST_DEVICE = "q35-pcihost"
TYPE_MCH_PCI_DEVICE = "mch"

PCI_VENDOR_ID_INTEL = 0x8086
PCI_DEVICE_ID_INTEL_Q35_MCH = 0x29C0
PCI_CLASS_BRIDGE_HOST = 0x0600


# PAM: the shadow areas 0xC0000-0xFFFFF, switched between RAM and PCI.
MCH_HOST_BRIDGE_PAM0 = 0x90
PAM_BIOS_BASE, PAM_BIOS_SIZE = 0xF0000, 0x10000
PAM_EXPAN_BASE, PAM_EXPAN_SIZE, PAM_EXPAN_COUNT = 0xC0000, 0x4000, 12


class PAMMode:
    """The two PAM bits of one segment: 0 = PCI, 1 = read-only RAM,
    2 = write-only RAM (reads from PCI; approximated as PCI), 3 = RAM."""

    PCI = 0
    READ_ONLY = 1
    WRITE_ONLY = 2
    RAM = 3


class PAMSegment:
    """One shadow segment: three aliases over the same addresses in system
    memory (QEMU's PAMMemoryRegion), exactly one of them enabled."""

    def __init__(self, owner: object, ram: MemoryRegion, pci: MemoryRegion, system: MemoryRegion,
                 start: int, size: int) -> None:
        self.start, self.size = start, size
        self.pci = MemoryRegion.alias("pam-pci", pci, start, size, owner=owner)
        self.rom = MemoryRegion.alias("pam-rom", ram, start, size, owner=owner)
        self.rom.set_readonly(True)
        self.ram = MemoryRegion.alias("pam-ram", ram, start, size, owner=owner)
        for mr in (self.pci, self.rom, self.ram):
            mr.enabled = False
            system.add_subregion_overlap(start, mr, 1)
        self.mode = -1
        self.update(PAMMode.PCI)

    def update(self, mode: int) -> None:
        if mode == self.mode:
            return
        self.mode = mode
        chosen = {PAMMode.RAM: self.ram, PAMMode.READ_ONLY: self.rom}.get(mode, self.pci)
        for mr in (self.pci, self.rom, self.ram):
            mr.set_enabled(mr is chosen)


class Q35PCIHost(SysBusDevice):
    bus: PCIBus
    mch: MCHPCIState
    config_reg: int
    # Where the root bus's memory BARs go: the board's "pci" container, set
    # before realize (QEMU's pci-address-space link); system memory if unset.
    pci_address_space: MemoryRegion | None
    conf_mr: MemoryRegion
    data_mr: MemoryRegion

    # -- configuration mechanism #1 ------------------------------------------------
    def conf_read(self, offset: int, size: int) -> int:
        return (self.config_reg >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def conf_write(self, offset: int, value: int, size: int) -> None:
        # Only 32-bit writes to 0xCF8 change the address (byte writes there are
        # other legacy mechanisms that the q35 does not implement).
        if size == 4 and offset == 0:
            self.config_reg = value & 0xFFFFFFFF

    def data_read(self, offset: int, size: int) -> int:
        reg = self.config_reg
        if not reg & 0x80000000:
            return (1 << (8 * size)) - 1
        bus_num, devfn, where = (reg >> 16) & 0xFF, (reg >> 8) & 0xFF, (reg & 0xFC) + offset
        return pci_bus_config_read(self.bus, bus_num, devfn, where, size)

    def data_write(self, offset: int, value: int, size: int) -> None:
        reg = self.config_reg
        if not reg & 0x80000000:
            return
        bus_num, devfn, where = (reg >> 16) & 0xFF, (reg >> 8) & 0xFF, (reg & 0xFC) + offset
        pci_bus_config_write(self.bus, bus_num, devfn, where, value, size)


def _q35_host_init(obj: Object) -> None:
    host = object_check(obj, Q35PCIHost)
    host.config_reg = 0
    host.pci_address_space = None


def _q35_host_realize(dev: Any) -> None:
    from pemu.system.physmem import get_system_io, get_system_memory

    host: Q35PCIHost = dev
    io = get_system_io()
    host.conf_mr = MemoryRegion.io("pci-conf-idx", 4,
                                   MemoryRegionOps(host.conf_read, host.conf_write, 1, 4, False, 1, 4), owner=host)
    host.data_mr = MemoryRegion.io("pci-conf-data", 4,
                                   MemoryRegionOps(host.data_read, host.data_write, 1, 4, False, 1, 4), owner=host)
    io.add_subregion(memmap.PCI_CONFIG_ADDR, host.conf_mr)
    io.add_subregion(memmap.PCI_CONFIG_DATA, host.data_mr)
    pci_memory = host.pci_address_space if host.pci_address_space is not None else get_system_memory()
    host.bus = pci_root_bus_new(host, "pcie.0", express=True, address_space_mem=pci_memory, address_space_io=io,
                                dma_root=get_system_memory())
    mch = object_check(qdev_new(TYPE_MCH_PCI_DEVICE), MCHPCIState)
    mch.property_set("addr", "0.0")
    host.add_child("mch", mch)
    mch.unref()
    qdev_realize(mch, host.bus)
    host.mch = mch


def _q35_host_reset(dev: Any) -> None:
    dev.config_reg = 0


# The host bridge's own state is the CONFIG_ADDRESS latch (any 32-bit value a
# guest can write); the MCH function is a device of its own (section "mch").
VMSTATE_Q35_PCI_HOST = VMStateDescription("q35-pcihost", version_id=1, fields=[
    VMStateField("config_reg", U32),
])


def _q35_host_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.vmsd = VMSTATE_Q35_PCI_HOST
    dc.realize = _q35_host_realize
    dc.reset = _q35_host_reset
    dc.user_creatable = False
    dc.desc = "Q35 PCI host bridge"


class MCHPCIState(PCIDevice):
    pam: list[PAMSegment]
    mmcfg: PCIEMMCFG | None
    pciexbar_reset: int
    smram_region: MemoryRegion | None

    def config_write(self, addr: int, value: int, size: int) -> None:
        super().config_write(addr, value, size)
        if addr < MCH_HOST_BRIDGE_PAM0 + 7 and addr + size > MCH_HOST_BRIDGE_PAM0:
            self.update_pam()
        if addr <= MCH_HOST_BRIDGE_ESMRAMC and addr + size > MCH_HOST_BRIDGE_SMRAM:
            self.update_smram()
        if addr < MCH_HOST_BRIDGE_PCIEXBAR + 8 and addr + size > MCH_HOST_BRIDGE_PCIEXBAR:
            self.update_pciexbar()

    def update_smram(self) -> None:
        """Apply SMRAM/ESMRAMC (mch_update_smram).  D_LCK makes the registers
        read-only except D_CLS and closes the window for good.  With the
        window closed (D_OPEN clear, or H_SMRAME set) 0xA0000-0xBFFFF decodes
        to PCI (the VGA window); open, the CPU sees the RAM below it.  pemu has
        no SMM, so the SMM-only view of that RAM and TSEG are not modelled."""
        smram = self.config[MCH_HOST_BRIDGE_SMRAM]
        if smram & SMRAM_D_LCK:
            self.config[MCH_HOST_BRIDGE_SMRAM] = smram = smram & ~SMRAM_D_OPEN & 0xFF
            self.wmask[MCH_HOST_BRIDGE_SMRAM] = SMRAM_WMASK_LCK
            self.wmask[MCH_HOST_BRIDGE_ESMRAMC] = ESMRAMC_WMASK_LCK
        if self.smram_region is None:
            return
        h_smrame = bool(self.config[MCH_HOST_BRIDGE_ESMRAMC] & ESMRAMC_H_SMRAME)
        closed = not smram & SMRAM_D_OPEN or h_smrame
        self.smram_region.set_enabled(closed)

    def update_pciexbar(self) -> None:
        """Map, move or unmap the ECAM window after PCIEXBAR changed (mch_update_pciexbar)."""
        from pemu.util.log import guest_error

        if self.mmcfg is None:
            return
        reg = int.from_bytes(self.config[MCH_HOST_BRIDGE_PCIEXBAR:MCH_HOST_BRIDGE_PCIEXBAR + 8], "little")
        length = PCIEXBAR_LENGTHS.get((reg & PCIEXBAR_LENGTH_MASK) >> 1)
        enabled = bool(reg & PCIEXBAREN)
        if length is None:
            guest_error("mch: PCIEXBAR length 3 is reserved; window disabled")
            enabled, length = False, 0
        base = reg & PCIEXBAR_ADMSK & ~((length or 1) - 1)
        self.mmcfg.update(enabled, base, length)

    def update_pam(self) -> None:
        """Apply PAM0-6 to the shadow segments (mch_update_pam)."""
        from pemu.system.memory import memory_transaction

        with memory_transaction():
            self.pam[0].update(self.config[MCH_HOST_BRIDGE_PAM0] >> 4 & 3)
            for i in range(PAM_EXPAN_COUNT):
                reg = self.config[MCH_HOST_BRIDGE_PAM0 + 1 + i // 2]
                self.pam[1 + i].update((reg >> (4 * (i & 1))) & 3)


# PCIEXBAR: the PCIe MMCONFIG (ECAM) window, 64-bit register at 0x60.
MCH_HOST_BRIDGE_PCIEXBAR = 0x60
PCIEXBAREN = 0x1
PCIEXBAR_LENGTH_MASK = 0x6
PCIEXBAR_LENGTHS = {0: 256 << 20, 1: 128 << 20, 2: 64 << 20}
PCIEXBAR_ADMSK = 0x0000000FFC000000
PCIEXBAR_RESET = memmap.MCH_PCIEXBAR_DEFAULT  # address set, window disabled (as QEMU)


class PCIEMMCFG:
    """The ECAM window: bus << 20 | devfn << 12 | register, routed to the
    bus's config space; mapped in system memory while PCIEXBAREN is set."""

    def __init__(self, bus: PCIBus, system: MemoryRegion, owner: object) -> None:
        self.bus, self.system = bus, system
        self.size = 0
        self.base = -1
        self.mr: MemoryRegion | None = None
        self.owner = owner

    def read(self, offset: int, size: int) -> int:
        return pci_bus_config_read(self.bus, (offset >> 20) & 0xFF, (offset >> 12) & 0xFF, offset & 0xFFF, size)

    def write(self, offset: int, value: int, size: int) -> None:
        pci_bus_config_write(self.bus, (offset >> 20) & 0xFF, (offset >> 12) & 0xFF, offset & 0xFFF, value, size)

    def update(self, enabled: bool, base: int, size: int) -> None:
        if self.mr is not None and (not enabled or base != self.base or size != self.size):
            self.system.del_subregion(self.mr)
            self.mr = None
        if enabled and self.mr is None:
            ops = MemoryRegionOps(self.read, self.write, 1, 4, False, 1, 4)
            self.mr = MemoryRegion.io("pcie-mmcfg-mmio", size, ops, owner=self.owner)
            self.system.add_subregion(base, self.mr)
        self.base, self.size = (base, size) if enabled else (-1, 0)


def mch_init_pciexbar(mch: MCHPCIState, bus: PCIBus, system: MemoryRegion, enabled_at_reset: bool = False) -> None:
    """Give the MCH its ECAM window.  ``enabled_at_reset``: the window is on
    from reset (direct boot, where no firmware enables it)."""
    mch.mmcfg = PCIEMMCFG(bus, system, mch)
    mch.pciexbar_reset = PCIEXBAR_RESET | (PCIEXBAREN if enabled_at_reset else 0)
    mch.wmask[MCH_HOST_BRIDGE_PCIEXBAR:MCH_HOST_BRIDGE_PCIEXBAR + 8] = \
        (PCIEXBAR_ADMSK | PCIEXBAR_LENGTH_MASK | PCIEXBAREN).to_bytes(8, "little")
    mch.config[MCH_HOST_BRIDGE_PCIEXBAR:MCH_HOST_BRIDGE_PCIEXBAR + 8] = mch.pciexbar_reset.to_bytes(8, "little")
    mch.update_pciexbar()


# SMRAM control (0x9D) and extended SMRAM control (0x9E).
MCH_HOST_BRIDGE_SMRAM = 0x9D
MCH_HOST_BRIDGE_ESMRAMC = 0x9E
SMRAM_D_OPEN, SMRAM_D_CLS, SMRAM_D_LCK, SMRAM_G_SMRAME = 0x40, 0x20, 0x10, 0x08
SMRAM_C_BASE_SEG = 0x02  # hard-wired: the compatible SMRAM is at 0xA0000
SMRAM_DEFAULT = SMRAM_C_BASE_SEG
SMRAM_WMASK = SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME
SMRAM_WMASK_LCK = SMRAM_D_CLS
ESMRAMC_H_SMRAME, ESMRAMC_SM_CACHE, ESMRAMC_SM_L1, ESMRAMC_SM_L2 = 0x40, 0x10, 0x08, 0x04
ESMRAMC_TSEG_SZ_MASK, ESMRAMC_T_EN = 0x06, 0x01
ESMRAMC_DEFAULT = ESMRAMC_SM_CACHE | ESMRAMC_SM_L1 | ESMRAMC_SM_L2
ESMRAMC_WMASK = ESMRAMC_H_SMRAME | ESMRAMC_TSEG_SZ_MASK | ESMRAMC_T_EN
ESMRAMC_WMASK_LCK = 0
SMRAM_C_BASE, SMRAM_C_SIZE = 0xA0000, 0x20000

# TOLUD (0xB0): bits 15:4 are address bits 31:20 of the top of low usable DRAM.
MCH_HOST_BRIDGE_TOLUD = 0xB0


def mch_init_smram(mch: MCHPCIState, pci: MemoryRegion, system: MemoryRegion) -> None:
    """The "smram-region": a window of the PCI space over 0xA0000-0xBFFFF in
    system memory, above RAM, enabled while SMRAM is closed."""
    mch.smram_region = MemoryRegion.alias("smram-region", pci, SMRAM_C_BASE, SMRAM_C_SIZE, owner=mch)
    system.add_subregion_overlap(SMRAM_C_BASE, mch.smram_region, 1)
    _mch_reset_smram(mch)


def mch_set_tolud(mch: PCIDevice, below_4g_mem_size: int) -> None:
    """Report the top of low usable DRAM (read-only to the guest), 1 MiB granular."""
    top = min(below_4g_mem_size, memmap.FOUR_GIB - memmap.MiB) & ~(memmap.MiB - 1)
    mch.set_word(MCH_HOST_BRIDGE_TOLUD, (top >> 16) & 0xFFF0)
    mch.wmask[MCH_HOST_BRIDGE_TOLUD:MCH_HOST_BRIDGE_TOLUD + 2] = b"\0\0"
    # Fixed by the board's RAM: a stream from a machine with other RAM is refused.
    mch.cmask[MCH_HOST_BRIDGE_TOLUD:MCH_HOST_BRIDGE_TOLUD + 2] = b"\xff\xff"


def _mch_reset_smram(mch: Any) -> None:
    mch.config[MCH_HOST_BRIDGE_SMRAM] = SMRAM_DEFAULT
    mch.config[MCH_HOST_BRIDGE_ESMRAMC] = ESMRAMC_DEFAULT
    mch.wmask[MCH_HOST_BRIDGE_SMRAM] = SMRAM_WMASK
    mch.wmask[MCH_HOST_BRIDGE_ESMRAMC] = ESMRAMC_WMASK
    mch.update_smram()


def mch_init_pam(mch: MCHPCIState, ram: MemoryRegion, pci: MemoryRegion, system: MemoryRegion) -> None:
    mch.pam = [PAMSegment(mch, ram, pci, system, PAM_BIOS_BASE, PAM_BIOS_SIZE)]
    for i in range(PAM_EXPAN_COUNT):
        mch.pam.append(PAMSegment(mch, ram, pci, system, PAM_EXPAN_BASE + i * PAM_EXPAN_SIZE, PAM_EXPAN_SIZE))
    for i in range(7):
        mch.wmask[MCH_HOST_BRIDGE_PAM0 + i] = 0x33 if i else 0x30


def _mch_reset(dev: Any) -> None:
    _mch_reset_smram(dev)
    for i in range(7):
        dev.config[MCH_HOST_BRIDGE_PAM0 + i] = 0
    if dev.pam:
        dev.update_pam()
    if dev.mmcfg is not None:
        dev.config[MCH_HOST_BRIDGE_PCIEXBAR:MCH_HOST_BRIDGE_PCIEXBAR + 8] = dev.pciexbar_reset.to_bytes(8, "little")
        dev.update_pciexbar()


def _mch_post_load(mch: MCHPCIState, version_id: int) -> None:
    """The loaded registers (config space, already in place) are checked for
    bits no guest write can set, then applied exactly as the register writes
    apply them (mch_post_load): PAM segments, the SMRAM window and its lock,
    the MMCONFIG window."""
    cfg = mch.config
    for i in range(7):
        writable = 0x33 if i else 0x30
        if cfg[MCH_HOST_BRIDGE_PAM0 + i] & ~writable:
            raise VMStateError(f"PAM{i} = {cfg[MCH_HOST_BRIDGE_PAM0 + i]:#04x} sets bits outside {writable:#04x}")
    smram, esmramc = cfg[MCH_HOST_BRIDGE_SMRAM], cfg[MCH_HOST_BRIDGE_ESMRAMC]
    if smram & ~SMRAM_WMASK != SMRAM_DEFAULT & ~SMRAM_WMASK or smram & SMRAM_D_LCK and smram & SMRAM_D_OPEN:
        raise VMStateError(f"SMRAM = {smram:#04x} is not a value the register can hold")
    if esmramc & ~ESMRAMC_WMASK != ESMRAMC_DEFAULT & ~ESMRAMC_WMASK:
        raise VMStateError(f"ESMRAMC = {esmramc:#04x} is not a value the register can hold")
    pciexbar = int.from_bytes(cfg[MCH_HOST_BRIDGE_PCIEXBAR:MCH_HOST_BRIDGE_PCIEXBAR + 8], "little")
    pciexbar_writable = PCIEXBAR_ADMSK | PCIEXBAR_LENGTH_MASK | PCIEXBAREN
    if mch.mmcfg is not None and pciexbar & ~pciexbar_writable:
        raise VMStateError(f"PCIEXBAR = {pciexbar:#x} sets bits outside {pciexbar_writable:#x}")
    # Unlocked first: update_smram locks them again if the loaded D_LCK says so.
    mch.wmask[MCH_HOST_BRIDGE_SMRAM] = SMRAM_WMASK
    mch.wmask[MCH_HOST_BRIDGE_ESMRAMC] = ESMRAMC_WMASK
    mch.update_smram()
    if mch.pam:
        mch.update_pam()
    mch.update_pciexbar()


VMSTATE_MCH = VMStateDescription("mch", version_id=1, fields=[VMSTATE_PCI_DEVICE_FIELD],
                                 post_load=_mch_post_load)


def _mch_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCIDeviceClass)
    k.vmsd = VMSTATE_MCH
    k.vendor_id = PCI_VENDOR_ID_INTEL
    k.device_id = PCI_DEVICE_ID_INTEL_Q35_MCH
    k.revision = 0x02
    k.class_id = PCI_CLASS_BRIDGE_HOST
    k.user_creatable = False
    k.desc = "Host bridge"
    k.pci_reset = _mch_reset
    k.pci_realize = _mch_reset_smram


type_register(TypeInfo(TYPE_Q35_HOST_DEVICE, parent=TYPE_SYS_BUS_DEVICE, instance_type=Q35PCIHost,
                       instance_init=_q35_host_init, class_init=_q35_host_class_init))
def _mch_init(obj: Object) -> None:
    mch = object_check(obj, MCHPCIState)
    mch.smram_region = None
    mch.mmcfg = None
    mch.pam = []


type_register(TypeInfo(TYPE_MCH_PCI_DEVICE, parent=TYPE_PCI_DEVICE, class_init=_mch_class_init,
                       instance_type=MCHPCIState, instance_init=_mch_init,
                       interfaces=("conventional-pci-device",)))
