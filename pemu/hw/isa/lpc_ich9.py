"""The ICH9 LPC bridge (QEMU's hw/isa/lpc_ich9.c) at 00:1f.0: the PCI
function that owns the ISA bus of the q35 and its legacy devices, the ACPI
PM block behind PMBASE, the PIRQ A-H routers that take the PCI INTx lines to
ISA IRQs (and, with an IOAPIC, to GSIs 16-23), and the root complex register
block (RCRB) behind RCBA.

At reset the registers hold the chip's values: PM block and RCRB off, every
PIRQ unrouted.  Firmware programs them; for direct boot, where there is no
firmware, :func:`ich9_lpc_direct_boot_setup` writes what SeaBIOS would.
"""

from __future__ import annotations

from typing import Any

from pemu.hw.acpi.core import VMSTATE_ACPI_PM
from pemu.hw.core.irq import IRQLine
from pemu.hw.i386 import memmap
from pemu.hw.isa.isa_bus import ISABus, isa_bus_new
from pemu.hw.pci.pci import (
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIDevice,
    PCIDeviceClass,
    pci_bus_get_irq_level,
    pci_bus_irqs,
)
from pemu.migration.vmstate import I8, U8, U32, Array, Buffer, Struct, VMStateDescription, VMStateError, VMStateField
from pemu.qom.object import ObjectClass, TypeInfo, object_class_check, type_register
from pemu.system.memory import MemoryRegion
from pemu.util.log import LOG_UNIMP, guest_error, qemu_log_mask

TYPE_ICH9_LPC_DEVICE = "ICH9-LPC"
PCI_DEVICE_ID_INTEL_ICH9_8 = 0x2918
PCI_CLASS_BRIDGE_ISA = 0x0601


ICH9_PMBASE_DEFAULT = 0x600
PM1_EVT_OFFSET, PM1_CNT_OFFSET, PM_TMR_OFFSET, GPE0_OFFSET = 0x00, 0x04, 0x08, 0x20
SMI_EN_OFFSET, SMI_STS_OFFSET = 0x30, 0x34
ICH9_SMI_IO_SIZE = 8
SMI_EN_APMC_EN = 1 << 5
"""SMI on writes to the APM control port 0xB2.  pemu has no SMM: it reads set
from reset, as QEMU's ICH9 with smm=off, so firmware (SeaBIOS's
ich9_lpc_apmc_smm_setup) takes SMM as already set up and skips it."""

ICH9_SCI_ISA_IRQ = 9
ICH9_RST_CNT_IOPORT = 0xCF9
RST_CNT_SYS_RST = 0x02
RST_CNT_RST_CPU = 0x04
RST_CNT_FULL_RST = 0x08

# LPC configuration registers.
ICH9_LPC_PMBASE = 0x40  # dword: bits 15:7 the I/O base of the 128-byte PM block, bit 0 reads 1
ICH9_LPC_PMBASE_DEFAULT = 0x1
ICH9_LPC_PMBASE_BASE_ADDRESS_MASK = 0xFF80
ICH9_PM_IO_SIZE = 0x80
ICH9_LPC_ACPI_CTRL = 0x44  # ACPI_CNTL
ICH9_LPC_ACPI_CTRL_ACPI_EN = 0x80
ICH9_LPC_ACPI_CTRL_SCI_IRQ_SEL_MASK = 0x07
# SCI_IRQ_SEL: the interrupt the SCI is wired to (3 is reserved).
ICH9_SCI_IRQ_SELECT = {0: 9, 1: 10, 2: 11, 4: 20, 5: 21, 6: 22, 7: 23}
ICH9_LPC_PIRQA_ROUT = 0x60  # PIRQA-D routing, one byte each
ICH9_LPC_PIRQE_ROUT = 0x68  # PIRQE-H
ICH9_LPC_PIRQ_ROUT_IRQEN = 0x80  # set: the PIRQ is NOT routed to an ISA IRQ
ICH9_LPC_PIRQ_ROUT_MASK = 0x0F
ICH9_LPC_PIRQ_ROUT_DEFAULT = 0x80
ICH9_LPC_NB_PIRQS = 8
ICH9_PIRQ_VALID_ISA_IRQS = frozenset({3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15})
ICH9_FIRST_PIRQ_GSI = 16
ICH9_LPC_RCBA = 0xF0
ICH9_LPC_RCBA_EN = 0x1
ICH9_LPC_RCBA_BA_MASK = 0xFFFFC000
ICH9_LPC_RCBA_DEFAULT = 0x0

# The chipset configuration registers in the RCRB that route the INTx of the
# fixed functions in slots 25-31 (DnnIR: a 3-bit PIRQ number per pin).
ICH9_CC_SIZE = memmap.ICH9_RCBA_SIZE
ICH9_CC_DIR_DEFAULT = 0x3210  # INTA-D -> PIRQA-D
ICH9_CC_DIR_REGISTERS = {31: 0x3140, 30: 0x3142, 29: 0x3144, 28: 0x3146, 27: 0x3148, 26: 0x314C, 25: 0x3150}

# What SeaBIOS programs, and direct boot copies: PM block at 0x600 with ACPI
# on and the SCI on IRQ 9, PIRQ A-H on IRQ 10/11 (the DSDT's _PRT), the RCRB
# at 0xFED1C000.
ICH9_DIRECT_BOOT_PIRQ_IRQS = (10, 10, 11, 11, 10, 10, 11, 11)
ICH9_DIRECT_BOOT_PMBASE = ICH9_PMBASE_DEFAULT


def _pirq_register(pirq: int) -> int:
    return (ICH9_LPC_PIRQA_ROUT + pirq) if pirq < 4 else (ICH9_LPC_PIRQE_ROUT + pirq - 4)


def _overlaps(addr: int, size: int, reg: int, reg_size: int) -> bool:
    return addr < reg + reg_size and addr + size > reg


class ICH9LPCState(PCIDevice):
    isa_bus: ISABus
    pm: Any  # pemu.hw.acpi.core.AcpiPmRegs
    pm_io: MemoryRegion
    rcrb: MemoryRegion
    chip_config: bytearray
    rst_cnt: int
    smi_en: int
    sci_level: int
    # GSI 0-23 of an IOAPIC, when the board has one (PIRQs then also drive GSI 16-23).
    gsi_lines: list[IRQLine]
    # The level this bridge last put on each ISA IRQ it drives (PIRQs and SCI).
    pic_levels: dict[int, int]

    # -- configuration space -------------------------------------------------------
    def config_write(self, addr: int, value: int, size: int) -> None:
        super().config_write(addr, value, size)
        if _overlaps(addr, size, ICH9_LPC_PMBASE, 4) or _overlaps(addr, size, ICH9_LPC_ACPI_CTRL, 1):
            self.update_pmbase_sci()
        if _overlaps(addr, size, ICH9_LPC_PIRQA_ROUT, 4) or _overlaps(addr, size, ICH9_LPC_PIRQE_ROUT, 4):
            self.update_irq_routes()
        if _overlaps(addr, size, ICH9_LPC_RCBA, 4):
            self.update_rcba()

    def update_pmbase_sci(self) -> None:
        """Place the PM block at PMBASE while ACPI_CNTL.ACPI_EN is set
        (ich9_lpc_pmbase_sci_update); the SCI follows SCI_IRQ_SEL."""
        self.map_pm_block()
        self.update_irq_routes()

    def map_pm_block(self) -> None:
        from pemu.system.memory import memory_transaction

        base = self.get_long(ICH9_LPC_PMBASE) & ICH9_LPC_PMBASE_BASE_ADDRESS_MASK
        enabled = bool(self.config[ICH9_LPC_ACPI_CTRL] & ICH9_LPC_ACPI_CTRL_ACPI_EN) and base != 0
        with memory_transaction():
            if enabled:
                self.pm_io.set_address(base)
            self.pm_io.set_enabled(enabled)

    def sci_irq(self) -> int:
        """The ISA IRQ or GSI of the SCI, or -1 for the reserved selection."""
        return ICH9_SCI_IRQ_SELECT.get(self.config[ICH9_LPC_ACPI_CTRL] & ICH9_LPC_ACPI_CTRL_SCI_IRQ_SEL_MASK, -1)

    def pirq_route(self, pirq: int) -> int:
        """The ISA IRQ PIRQ ``pirq`` (0 = A) is routed to, or -1 when unrouted."""
        rout = self.config[_pirq_register(pirq)]
        irq = rout & ICH9_LPC_PIRQ_ROUT_MASK
        if rout & ICH9_LPC_PIRQ_ROUT_IRQEN or irq not in ICH9_PIRQ_VALID_ISA_IRQS:
            return -1
        return irq

    # -- interrupts ----------------------------------------------------------------
    def set_pirq(self, pirq: int, level: int) -> None:
        """The PCI bus's set_irq: PIRQ ``pirq`` is now ``level`` (ich9_lpc_set_irq)."""
        if not 0 <= pirq < ICH9_LPC_NB_PIRQS:
            return
        self._update_gsi(ICH9_FIRST_PIRQ_GSI + pirq)
        irq = self.pirq_route(pirq)
        if irq >= 0:
            self._drive_pic(irq)

    def set_sci(self, level: int) -> None:
        level = 1 if level else 0
        if level == self.sci_level:
            return
        self.sci_level = level
        irq = self.sci_irq()
        if irq < 0:
            return
        if irq < 16:
            self._drive_pic(irq)
        self._update_gsi(irq)

    def _pic_level(self, irq: int) -> int:
        level = 0
        bus = self.pci_bus
        for pirq in range(ICH9_LPC_NB_PIRQS):
            if self.pirq_route(pirq) == irq:
                level |= pci_bus_get_irq_level(bus, pirq)
        if self.sci_irq() == irq:
            level |= self.sci_level
        return level

    def _drive_pic(self, irq: int) -> None:
        level = self._pic_level(irq)
        if self.pic_levels.get(irq) != level:
            self.pic_levels[irq] = level
            self.isa_bus.irqs[irq].set(level)

    def _update_gsi(self, gsi: int) -> None:
        if gsi < ICH9_FIRST_PIRQ_GSI or gsi >= len(self.gsi_lines):
            return
        level = 0
        pirq = gsi - ICH9_FIRST_PIRQ_GSI
        if pirq < ICH9_LPC_NB_PIRQS:
            level |= pci_bus_get_irq_level(self.pci_bus, pirq)
        if self.sci_irq() == gsi:
            level |= self.sci_level
        self.gsi_lines[gsi].set(level)

    def update_irq_routes(self) -> None:
        """Routing changed: bring every ISA IRQ this bridge drives, or drove
        before, to the level the new routing gives it."""
        targets = {self.pirq_route(p) for p in range(ICH9_LPC_NB_PIRQS)} | {self.sci_irq()}
        for irq in sorted((targets | set(self.pic_levels)) - {-1}):
            if irq < 16:
                self._drive_pic(irq)

    # -- the RCRB ------------------------------------------------------------------
    def update_rcba(self) -> None:
        """Map the RCRB at RCBA while its enable bit is set (ich9_lpc_rcba_update)."""
        from pemu.system.memory import memory_transaction
        from pemu.system.physmem import get_system_memory

        rcba = self.get_long(ICH9_LPC_RCBA)
        system = get_system_memory()
        with memory_transaction():
            if self.rcrb.parent_container is not None:
                self.rcrb.parent_container.del_subregion(self.rcrb)
            if rcba & ICH9_LPC_RCBA_EN:
                system.add_subregion_overlap(rcba & ICH9_LPC_RCBA_BA_MASK, self.rcrb, 1)

    def cc_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > ICH9_CC_SIZE:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.chip_config[offset:offset + size], "little")

    def cc_write(self, offset: int, value: int, size: int) -> None:
        if offset < 0 or offset + size > ICH9_CC_SIZE:
            guest_error(f"ich9-rcrb: write at {offset:#x} size {size} outside the block")
            return
        old = bytes(self.chip_config[offset:offset + size])
        self.chip_config[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if old != self.chip_config[offset:offset + size] and any(
                _overlaps(offset, size, reg, 2) for reg in ICH9_CC_DIR_REGISTERS.values()):
            qemu_log_mask(LOG_UNIMP, "ich9-rcrb: INTx routing of slots 25-31 stays at its default (DnnIR ignored)")

    def cc_reset(self) -> None:
        self.chip_config[:] = bytes(ICH9_CC_SIZE)
        for slot, reg in ICH9_CC_DIR_REGISTERS.items():
            self.chip_config[reg:reg + 2] = (0 if slot == 30 else ICH9_CC_DIR_DEFAULT).to_bytes(2, "little")

    # SMI_EN / SMI_STS in the PM block.  No SMI is ever raised (no SMM):
    # SMI_EN keeps what the guest writes, with APMC_EN stuck at 1, and
    # SMI_STS reads 0.
    def smi_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > ICH9_SMI_IO_SIZE:
            return 0
        regs = self.smi_en.to_bytes(4, "little") + bytes(4)
        return int.from_bytes(regs[offset:offset + size], "little")

    def smi_write(self, offset: int, value: int, size: int) -> None:
        if offset < 0 or offset + size > ICH9_SMI_IO_SIZE:
            guest_error(f"ich9-smi: write at {offset:#x} size {size} outside the block")
            return
        if offset >= SMI_STS_OFFSET - SMI_EN_OFFSET:
            return  # SMI_STS: write 1 to clear, and nothing is ever set
        regs = bytearray(self.smi_en.to_bytes(4, "little"))
        n = min(size, 4 - offset)
        regs[offset:offset + n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
        self.smi_en = int.from_bytes(regs, "little") | SMI_EN_APMC_EN

    # The reset control register (0xCF9): writing RST_CPU resets the machine.
    def rst_cnt_read(self, offset: int, size: int) -> int:
        return self.rst_cnt

    def rst_cnt_write(self, offset: int, value: int, size: int) -> None:
        from pemu.system.runstate import ShutdownCause, qemu_system_reset_request

        if value & RST_CNT_RST_CPU:
            qemu_system_reset_request(ShutdownCause.GUEST_RESET)
        self.rst_cnt = value & (RST_CNT_SYS_RST | RST_CNT_FULL_RST)


    # The levels this bridge drove on ISA IRQs 0-15 as the description saves them (-1: never driven).
    @property
    def pic_level_list(self) -> list[int]:
        return [self.pic_levels.get(irq, -1) for irq in range(ICH9_ISA_IRQS)]

    @pic_level_list.setter
    def pic_level_list(self, levels: list[int]) -> None:
        self.pic_levels = {irq: level for irq, level in enumerate(levels) if level >= 0}


ICH9_ISA_IRQS = 16


class _SCILine:
    """The PM block's SCI output, routed by ACPI_CNTL.SCI_IRQ_SEL."""

    def __init__(self, lpc: ICH9LPCState) -> None:
        self.lpc = lpc

    def set(self, level: int) -> None:
        self.lpc.set_sci(level)


def ich9_lpc_map_irq(dev: PCIDevice, pin: int) -> int:
    """The PIRQ of a root-bus function's INTx ``pin`` (ich9_lpc_map_irq): the
    same table the DSDT's _PRT is built from."""
    from pemu.hw.i386.acpi_build import q35_pci_slot_pirq

    return q35_pci_slot_pirq(dev.devfn >> 3, pin & 3)


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
    lpc.smi_en = SMI_EN_APMC_EN
    lpc.sci_level = 0
    lpc.gsi_lines = []
    lpc.pic_levels = {}
    # The ACPI PM block, placed by PMBASE and enabled by ACPI_CNTL.
    lpc.pm = pm = AcpiPmRegs(_SCILine(lpc), _on_sleep, timer_32bit=False)
    lpc.pm_io = pm_io = MemoryRegion.container("ich9-pm", ICH9_PM_IO_SIZE, owner=lpc)
    for name, offset, block in (("acpi-evt", PM1_EVT_OFFSET, pm.evt), ("acpi-cnt", PM1_CNT_OFFSET, pm.cnt),
                                ("acpi-tmr", PM_TMR_OFFSET, pm.tmr), ("acpi-gpe0", GPE0_OFFSET, pm.gpe0)):
        ops = MemoryRegionOps(block.read, block.write, 1, 4, True, 1, 4)
        pm_io.add_subregion(offset, MemoryRegion.io(name, block.length, ops, owner=lpc))
    smi_ops = MemoryRegionOps(lpc.smi_read, lpc.smi_write, 1, 4, True, 1, 4)
    pm_io.add_subregion(SMI_EN_OFFSET, MemoryRegion.io("apm-smi", ICH9_SMI_IO_SIZE, smi_ops, owner=lpc))
    pm_io.enabled = False
    io.add_subregion(0, pm_io)
    # The root complex register block, mapped by RCBA.
    lpc.chip_config = bytearray(ICH9_CC_SIZE)
    lpc.rcrb = MemoryRegion.io("lpc-rcrb-mmio", ICH9_CC_SIZE,
                               MemoryRegionOps(lpc.cc_read, lpc.cc_write, 1, 4, False, 1, 4), owner=lpc)
    # Their read-only bits are the chip's: a stream that differs is refused.
    for reg, width in ((ICH9_LPC_PMBASE, 4), (ICH9_LPC_ACPI_CTRL, 1), (ICH9_LPC_PIRQA_ROUT, 4),
                       (ICH9_LPC_PIRQE_ROUT, 4), (ICH9_LPC_RCBA, 4)):
        lpc.cmask[reg:reg + width] = b"\xff" * width
    # Writable bits of the registers above.
    lpc.wmask[ICH9_LPC_PMBASE:ICH9_LPC_PMBASE + 4] = ICH9_LPC_PMBASE_BASE_ADDRESS_MASK.to_bytes(4, "little")
    lpc.wmask[ICH9_LPC_ACPI_CTRL] = ICH9_LPC_ACPI_CTRL_ACPI_EN | ICH9_LPC_ACPI_CTRL_SCI_IRQ_SEL_MASK
    for pirq in range(ICH9_LPC_NB_PIRQS):
        lpc.wmask[_pirq_register(pirq)] = ICH9_LPC_PIRQ_ROUT_IRQEN | ICH9_LPC_PIRQ_ROUT_MASK
    lpc.wmask[ICH9_LPC_RCBA:ICH9_LPC_RCBA + 4] = (ICH9_LPC_RCBA_BA_MASK | ICH9_LPC_RCBA_EN).to_bytes(4, "little")
    # INTx of the root bus arrives here as PIRQ A-H.
    pci_bus_irqs(lpc.pci_bus, lpc.set_pirq, ich9_lpc_map_irq, ICH9_LPC_NB_PIRQS)
    _ich9_lpc_reset_registers(lpc)
    from pemu.system.runstate import qemu_register_powerdown_notifier

    qemu_register_powerdown_notifier(pm.power_button)
    rst_ops = MemoryRegionOps(lpc.rst_cnt_read, lpc.rst_cnt_write, 1, 1, False, 1, 1)
    io.add_subregion_overlap(ICH9_RST_CNT_IOPORT, MemoryRegion.io("lpc-reset-control", 1, rst_ops, owner=lpc), 1)


def _ich9_lpc_reset_registers(lpc: ICH9LPCState) -> None:
    for pirq in range(ICH9_LPC_NB_PIRQS):
        lpc.config[_pirq_register(pirq)] = ICH9_LPC_PIRQ_ROUT_DEFAULT
    lpc.config[ICH9_LPC_ACPI_CTRL] = 0
    lpc.set_long(ICH9_LPC_PMBASE, ICH9_LPC_PMBASE_DEFAULT)
    lpc.set_long(ICH9_LPC_RCBA, ICH9_LPC_RCBA_DEFAULT)
    lpc.cc_reset()
    lpc.sci_level = 0
    lpc.update_pmbase_sci()
    lpc.update_rcba()


def _ich9_lpc_reset(dev: Any) -> None:
    dev.rst_cnt = 0
    dev.smi_en = SMI_EN_APMC_EN
    dev.pm.reset()
    _ich9_lpc_reset_registers(dev)


def ich9_lpc_direct_boot_setup(lpc: ICH9LPCState) -> None:
    """Program what firmware would (SeaBIOS's ich9 LPC setup), for direct
    boot: PMBASE 0x600 with ACPI enabled and the SCI on IRQ 9, PIRQ A-H on
    the IRQs the DSDT's _PRT names, the RCRB at 0xFED1C000, and in the ELCR
    the SCI and PCI interrupts level-triggered.  Goes through config space
    and port I/O, exactly as the firmware's writes would."""
    from pemu.hw.intc.i8259 import ELCR_BASE
    from pemu.system.physmem import address_space_io

    lpc.config_write(ICH9_LPC_PMBASE, ICH9_DIRECT_BOOT_PMBASE | ICH9_LPC_PMBASE_DEFAULT, 4)
    lpc.config_write(ICH9_LPC_ACPI_CTRL, ICH9_LPC_ACPI_CTRL_ACPI_EN, 1)  # SCI_IRQ_SEL 0: IRQ 9
    for pirq, irq in enumerate(ICH9_DIRECT_BOOT_PIRQ_IRQS):
        lpc.config_write(_pirq_register(pirq), irq, 1)
    lpc.config_write(ICH9_LPC_RCBA, memmap.ICH9_RCBA_BASE | ICH9_LPC_RCBA_EN, 4)
    level = 1 << ICH9_SCI_ISA_IRQ
    for irq in ICH9_DIRECT_BOOT_PIRQ_IRQS:
        level |= 1 << irq
    io = address_space_io()
    if io.flatview.lookup(ELCR_BASE) is None:
        return  # an in-kernel irqchip keeps its ELCR to itself
    for chip in range(2):
        current = io.dispatch_read(ELCR_BASE + chip, 1)
        io.dispatch_write(ELCR_BASE + chip, current | ((level >> (8 * chip)) & 0xFF), 1)


# --- migration (QEMU's vmstate_ich9_lpc) ------------------------------------------------------


def _ich9_lpc_post_load(lpc: ICH9LPCState, version_id: int) -> None:
    """Config space (PMBASE, ACPI_CNTL, PIRQ routing, RCBA) came first and
    its read-only bits were compared; the PM block and the RCRB are placed
    as those register writes place them.  No interrupt line is driven: the
    levels this bridge put on its ISA IRQs are loaded (the PCI functions
    behind it may load after it), the SCI must be the PM block's."""
    if lpc.sci_level != lpc.pm.sci_level:
        raise VMStateError(f"SCI level {lpc.sci_level} but the PM registers give {lpc.pm.sci_level}")
    lpc.map_pm_block()
    lpc.update_rcba()


VMSTATE_ICH9_LPC = VMStateDescription("ICH9LPC", version_id=1, fields=[
    VMSTATE_PCI_DEVICE_FIELD,
    VMStateField("pm", Struct(VMSTATE_ACPI_PM)),
    VMStateField("chip_config", Buffer(ICH9_CC_SIZE)),
    VMStateField("sci_level", U8, check=range(2)),
    VMStateField("rst_cnt", U8, check=lambda v: not v & ~(RST_CNT_SYS_RST | RST_CNT_FULL_RST)),
    VMStateField("smi_en", U32, check=lambda v: bool(v & SMI_EN_APMC_EN)),
    VMStateField("pic_level_list", Array(I8, ICH9_ISA_IRQS), check=lambda v: all(-1 <= x <= 1 for x in v)),
], post_load=_ich9_lpc_post_load)


def _ich9_lpc_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCIDeviceClass)
    k.vmsd = VMSTATE_ICH9_LPC
    k.vendor_id = 0x8086
    k.device_id = PCI_DEVICE_ID_INTEL_ICH9_8
    k.revision = 0x02
    k.class_id = PCI_CLASS_BRIDGE_ISA
    k.user_creatable = False
    k.desc = "ICH9 LPC bridge"
    k.pci_realize = _ich9_lpc_realize
    k.pci_reset = _ich9_lpc_reset


type_register(TypeInfo(TYPE_ICH9_LPC_DEVICE, parent=TYPE_PCI_DEVICE, instance_type=ICH9LPCState,
                       class_init=_ich9_lpc_class_init, interfaces=("conventional-pci-device",)))
