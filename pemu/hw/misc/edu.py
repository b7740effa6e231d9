"""edu (QEMU's hw/misc/edu.c): the educational PCI device, 1234:11e8.

BAR0 is 1 MiB of MMIO; registers below 0x80 take 32-bit accesses only,
the DMA registers from 0x80 take 32- or 64-bit ones (anything else reads
all-ones and is dropped):

====== === ============================================================
0x00   RO  identification 0x010000ED (major 1, minor 0, magic 0xED)
0x04   RW  liveness check: reads back the bitwise NOT of what was written
0x08   RW  factorial: write N to compute N! (mod 2^32); read the result
0x20   RW  status: bit 0 "computing" (RO), bit 7 "raise an interrupt when
           the factorial is done"
0x24   RO  interrupt status (bit 0 factorial, bit 8 DMA, others the guest's)
0x60   WO  raise the interrupt status bits written
0x64   WO  acknowledge (clear) the interrupt status bits written
0x80   RW  DMA source address
0x88   RW  DMA destination address
0x90   RW  DMA count
0x98   RW  DMA command: bit 0 start (cleared when done), bit 1 direction
           (0: RAM to the device's buffer, 1: buffer to RAM), bit 2 raise
           the DMA interrupt when done
====== === ============================================================

The device's 4 KiB buffer sits at "device address" 0x40000; a transfer runs
100 ms (virtual time) after the start, as QEMU's timer does.  While any
interrupt status bit is set the device asserts INTA, or sends its one MSI
vector when the guest enabled MSI.

The guest is hostile: a transfer whose buffer side falls outside
0x40000-0x40FFF (or wraps) is refused whole and logged (QEMU 7.2 aborts
the process there); the RAM side is clamped to the DMA mask (28 bits by
default) as QEMU does, and goes through the function's bus-master address
space, so it reaches guest memory only and only while bus mastering is on.
The factorial is computed at once (QEMU uses a thread): N! mod 2^32 is 0 for
every N >= 34, so no value makes it loop for long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pemu.hw.core.irq import IRQLine
from pemu.hw.core.qdev import Property, device_class_set_props
from pemu.hw.pci.msi import VMSTATE_MSI_FIELD, MSICapability, MSIError, msi_init
from pemu.hw.pci.pci import (
    PCI_BASE_ADDRESS_SPACE_MEMORY,
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIDevice,
    PCIDeviceClass,
    pci_config_set_interrupt_pin,
    pci_dma_read,
    pci_dma_write,
    pci_register_bar,
    pci_set_irq,
)
from pemu.migration.vmstate import (
    I64,
    Buffer,
    Struct,
    UInt,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.qom.object import ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps, MemTxResult
from pemu.util.log import guest_error
from pemu.util.timer import TimerFactory, TimerLike, virtual_clock_ns, virtual_timer

TYPE_PCI_EDU = "edu"
PCI_VENDOR_ID_QEMU = 0x1234
PCI_DEVICE_ID_EDU = 0x11E8
EDU_REVISION = 0x10
PCI_CLASS_OTHERS = 0xFF00
EDU_MMIO_SIZE = 1 << 20

EDU_ID = 0x010000ED
EDU_STATUS_COMPUTING = 0x01
EDU_STATUS_IRQFACT = 0x80
FACT_IRQ = 0x00000001
DMA_IRQ = 0x00000100
EDU_DMA_RUN = 0x1
EDU_DMA_TO_RAM = 0x2   # direction bit: set = from the device's buffer to RAM
EDU_DMA_IRQ = 0x4
DMA_START = 0x40000
DMA_SIZE = 4096
DMA_DELAY_NS = 100_000_000
EDU_DEFAULT_DMA_MASK = (1 << 28) - 1

REG_ID, REG_LIVENESS, REG_FACT, REG_STATUS, REG_IRQ_STATUS = 0x00, 0x04, 0x08, 0x20, 0x24
REG_IRQ_RAISE, REG_IRQ_ACK = 0x60, 0x64
REG_DMA_SRC, REG_DMA_DST, REG_DMA_CNT, REG_DMA_CMD = 0x80, 0x88, 0x90, 0x98

U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1


def factorial_u32(n: int) -> int:
    """n! modulo 2^32, as the device's 32-bit loop computes it; 0 from 34 on
    (34! holds 2^32), so the loop never runs more than 33 rounds."""
    if n >= 34:
        return 0
    result = 1
    for k in range(2, n + 1):
        result = (result * k) & U32
    return result


class EduInterrupt(Protocol):
    """How the device signals: MSI when the guest enabled it, else INTx."""

    def msi_enabled(self) -> bool: ...

    def msi_notify(self) -> None: ...


class EduDMA(Protocol):
    """The function's bus master (pemu.hw.pci.pci.pci_dma_read/write)."""

    def read(self, addr: int, length: int) -> tuple[bytes, MemTxResult]: ...

    def write(self, addr: int, data: bytes) -> MemTxResult: ...


class Edu:
    """The register model; INTx, MSI, DMA and the timer are injected."""

    def __init__(self, intx: IRQLine, interrupt: EduInterrupt, dma: EduDMA,
                 timer_factory: TimerFactory = virtual_timer,
                 clock: Callable[[], int] = virtual_clock_ns, dma_mask: int = EDU_DEFAULT_DMA_MASK) -> None:
        self.intx = intx
        self.interrupt = interrupt
        self.dma = dma
        self.clock = clock
        self.dma_mask = dma_mask & U64
        self.dma_timer: TimerLike = timer_factory(self.dma_done)
        self.dma_deadline = -1  # when the pending transfer runs (virtual ns), -1 when none
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = self.dma_dst = self.dma_cnt = self.dma_cmd = 0
        self.buffer = bytearray(DMA_SIZE)

    def reset(self) -> None:
        """Nothing: QEMU's edu keeps its registers over a reset."""

    # -- interrupts --------------------------------------------------------------------------
    def raise_irq(self, bits: int) -> None:
        self.irq_status |= bits & U32
        if self.irq_status:
            if self.interrupt.msi_enabled():
                self.interrupt.msi_notify()
            else:
                self.intx.set(1)

    def lower_irq(self, bits: int) -> None:
        self.irq_status &= ~bits & U32
        if not self.irq_status and not self.interrupt.msi_enabled():
            self.intx.set(0)

    # -- MMIO ---------------------------------------------------------------------------------
    @staticmethod
    def _size_ok(offset: int, size: int) -> bool:
        return size == 4 if offset < REG_DMA_SRC else size in (4, 8)

    def read(self, offset: int, size: int) -> int:
        ones = (1 << (8 * size)) - 1
        if not self._size_ok(offset, size):
            return ones
        value = {
            REG_ID: EDU_ID,
            REG_LIVENESS: self.addr4,
            REG_FACT: self.fact,
            REG_STATUS: self.status,
            REG_IRQ_STATUS: self.irq_status,
            REG_DMA_SRC: self.dma_src,
            REG_DMA_DST: self.dma_dst,
            REG_DMA_CNT: self.dma_cnt,
            REG_DMA_CMD: self.dma_cmd,
        }.get(offset)
        return ones if value is None else value & ones

    def write(self, offset: int, value: int, size: int) -> None:
        if not self._size_ok(offset, size):
            return
        value &= (1 << (8 * size)) - 1
        if offset == REG_LIVENESS:
            self.addr4 = ~value & U32
        elif offset == REG_FACT:
            if not self.status & EDU_STATUS_COMPUTING:
                self.compute_factorial(value & U32)
        elif offset == REG_STATUS:
            if value & EDU_STATUS_IRQFACT:
                self.status |= EDU_STATUS_IRQFACT
            else:
                self.status &= ~EDU_STATUS_IRQFACT
        elif offset == REG_IRQ_RAISE:
            self.raise_irq(value)
        elif offset == REG_IRQ_ACK:
            self.lower_irq(value)
        elif offset in (REG_DMA_SRC, REG_DMA_DST, REG_DMA_CNT, REG_DMA_CMD):
            self.dma_register_write(offset, value)

    # -- factorial ----------------------------------------------------------------------------
    def compute_factorial(self, n: int) -> None:
        self.status |= EDU_STATUS_COMPUTING
        self.fact = factorial_u32(n)
        self.status &= ~EDU_STATUS_COMPUTING
        if self.status & EDU_STATUS_IRQFACT:
            self.raise_irq(FACT_IRQ)

    # -- DMA ----------------------------------------------------------------------------------
    def dma_register_write(self, offset: int, value: int) -> None:
        if self.dma_cmd & EDU_DMA_RUN:
            return   # the registers are frozen while a transfer is pending
        if offset == REG_DMA_SRC:
            self.dma_src = value
        elif offset == REG_DMA_DST:
            self.dma_dst = value
        elif offset == REG_DMA_CNT:
            self.dma_cnt = value
        elif value & EDU_DMA_RUN:
            self.dma_cmd = value
            self.dma_deadline = self.clock() + DMA_DELAY_NS
            self.dma_timer.mod_ns(self.dma_deadline)

    @staticmethod
    def buffer_range_ok(start: int, count: int) -> bool:
        end = start + count
        return end <= U64 and DMA_START <= start and end <= DMA_START + DMA_SIZE

    def clamp(self, addr: int) -> int:
        clamped = addr & self.dma_mask
        if clamped != addr:
            guest_error(f"edu: DMA address {addr:#018x} clamped to {clamped:#018x}")
        return clamped

    def dma_done(self) -> None:
        """The timer: run the transfer, clear RUN, raise the DMA interrupt if asked."""
        cmd = self.dma_cmd
        self.dma_deadline = -1
        if not cmd & EDU_DMA_RUN:
            return
        to_ram = bool(cmd & EDU_DMA_TO_RAM)
        buf_addr = self.dma_src if to_ram else self.dma_dst
        count = self.dma_cnt
        if not self.buffer_range_ok(buf_addr, count):
            guest_error(f"edu: DMA buffer range {buf_addr:#x}+{count:#x} is outside "
                        f"{DMA_START:#x}-{DMA_START + DMA_SIZE - 1:#x}: transfer refused")
        elif to_ram:
            start = buf_addr - DMA_START
            result = self.dma.write(self.clamp(self.dma_dst), bytes(self.buffer[start:start + count]))
            if result != MemTxResult.OK:
                guest_error(f"edu: DMA write to {self.dma_dst:#x} failed ({result.name})")
        else:
            start = buf_addr - DMA_START
            data, result = self.dma.read(self.clamp(self.dma_src), count)
            if result != MemTxResult.OK:
                guest_error(f"edu: DMA read from {self.dma_src:#x} failed ({result.name})")
            self.buffer[start:start + count] = data
        self.dma_cmd &= ~EDU_DMA_RUN
        if cmd & EDU_DMA_IRQ:
            self.raise_irq(DMA_IRQ)


# --- migration -----------------------------------------------------------------------------------


def _edu_post_load(edu: Edu, version_id: int) -> None:
    """A pending transfer (RUN) has a deadline and a deadline has RUN (the
    timer clears RUN when it fires); the timer is armed again for that
    instant of the virtual clock (restored before the devices).  The
    factorial runs at once, so COMPUTING is never saved set."""
    if bool(edu.dma_cmd & EDU_DMA_RUN) != (edu.dma_deadline >= 0):
        raise VMStateError(f"DMA command {edu.dma_cmd:#x} with the transfer deadline {edu.dma_deadline}")
    if edu.dma_deadline >= 0:
        edu.dma_timer.mod_ns(edu.dma_deadline)
    else:
        edu.dma_timer.delete()


VMSTATE_EDU_MODEL = VMStateDescription("edu-model", version_id=1, fields=[
    VMStateField("addr4", UInt(32)),
    VMStateField("fact", UInt(32)),
    VMStateField("status", UInt(32), check=lambda v: not v & ~EDU_STATUS_IRQFACT),
    VMStateField("irq_status", UInt(32)),
    VMStateField("dma_src", UInt(64)),
    VMStateField("dma_dst", UInt(64)),
    VMStateField("dma_cnt", UInt(64)),
    VMStateField("dma_cmd", UInt(64)),
    VMStateField("dma_mask", UInt(64)),
    VMStateField("buffer", Buffer(DMA_SIZE)),
    VMStateField("dma_deadline", I64, check=lambda v: v >= -1),
], post_load=_edu_post_load)


# --- the PCI function ---------------------------------------------------------------------------


class _EduPCI:
    """The function's INTx pin, MSI capability and bus master, as the model wants them."""

    def __init__(self, dev: EduState) -> None:
        self.dev = dev

    def set(self, level: int) -> None:
        pci_set_irq(self.dev, level)

    def msi_enabled(self) -> bool:
        return self.dev.msi is not None and self.dev.msi.enabled

    def msi_notify(self) -> None:
        if self.dev.msi is not None:
            self.dev.msi.notify(0)

    def read(self, addr: int, length: int) -> tuple[bytes, MemTxResult]:
        return pci_dma_read(self.dev, addr, length)

    def write(self, addr: int, data: bytes) -> MemTxResult:
        return pci_dma_write(self.dev, addr, data)

    def send_msi(self, address: int, data: int) -> None:
        """An MSI is a 32-bit write of the function's bus master (QEMU's msi_send_message)."""
        pci_dma_write(self.dev, address, (data & U32).to_bytes(4, "little"))


class EduState(PCIDevice):
    model: Edu
    mmio: MemoryRegion
    msi: MSICapability | None
    dma_mask: int

    def config_write(self, addr: int, value: int, size: int) -> None:
        super().config_write(addr, value, size)
        if self.msi is not None:
            self.msi.write_config(addr, size)


def _edu_init(obj: Any) -> None:
    object_check(obj, EduState).msi = None


def _edu_realize(obj: Any) -> None:
    from pemu.util.vm_context import current_vm

    dev = object_check(obj, EduState)
    pci_config_set_interrupt_pin(dev, 1)
    link = _EduPCI(dev)
    try:
        dev.msi = msi_init(dev, 0, 1, True, False, link.send_msi, msi_nonbroken=current_vm().msi_nonbroken)
    except MSIError:
        dev.msi = None   # INTx only, as QEMU's edu on a machine without MSI
    dev.model = m = Edu(link, link, link, dma_mask=dev.dma_mask)
    dev.mmio = MemoryRegion.io("edu-mmio", EDU_MMIO_SIZE, MemoryRegionOps(m.read, m.write, 4, 8, False, 4, 8),
                               owner=dev)
    pci_register_bar(dev, 0, PCI_BASE_ADDRESS_SPACE_MEMORY, dev.mmio)


def _edu_state_post_load(dev: EduState, version_id: int) -> None:
    if dev.model.dma_mask != dev.dma_mask:
        raise VMStateError(f"DMA mask {dev.model.dma_mask:#x} in the stream, {dev.dma_mask:#x} here (dma_mask=)")


VMSTATE_EDU = VMStateDescription("edu", version_id=1, fields=[
    VMSTATE_PCI_DEVICE_FIELD,
    VMSTATE_MSI_FIELD,
    VMStateField("model", Struct(VMSTATE_EDU_MODEL)),
], post_load=_edu_state_post_load)


def _edu_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCIDeviceClass)
    k.vmsd = VMSTATE_EDU
    k.vendor_id = PCI_VENDOR_ID_QEMU
    k.device_id = PCI_DEVICE_ID_EDU
    k.revision = EDU_REVISION
    k.class_id = PCI_CLASS_OTHERS
    k.user_creatable = True
    k.categories = ("misc",)
    k.pci_realize = _edu_realize
    device_class_set_props(k, [Property("dma_mask", "uint64", EDU_DEFAULT_DMA_MASK,
                                        description="the bits of a RAM address the DMA engine drives")])


type_register(TypeInfo(TYPE_PCI_EDU, parent=TYPE_PCI_DEVICE, instance_type=EduState, instance_init=_edu_init,
                       class_init=_edu_class_init, interfaces=("conventional-pci-device",)))
