"""pc-testdev (QEMU's hw/misc/pc-testdev.c): the ISA device kvm-unit-tests
drive to test emulation and interrupt routing.

Its windows, all little-endian:

- ports 0xE0-0xE3: a 32-bit scratch register, read and written at any width
  and byte offset;
- port 0xE4: "flush page": a 4-byte write names a guest-physical page whose
  host mapping QEMU drops and re-creates, so that KVM faults it in again.
  Nothing of that is visible to the guest; pemu's model only tells an
  optional ``flush_page`` hook (none on the board);
- ports 0xE8-0xEB: the same scratch register, handled one byte at a time;
- ports 0x2000-0x2017: one byte-wide port per interrupt line: writing V
  sets line N (port 0x2000 + N) to ``V != 0``;
- 0xFF000000-0xFF00FFFF: 64 KiB of plain memory behind an MMIO window.

QEMU reaches the interrupt lines through ``isa_get_irq``, which only knows
ISA IRQs 0-15 (and aborts for 16-23); pemu connects the upper eight ports to
GSIs 16-23 when the board has them and ignores writes to the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pemu.hw.core.irq import IRQLine
from pemu.hw.core.qdev import DeviceClass
from pemu.hw.isa.isa_bus import ISA_NUM_IRQS, TYPE_ISA_DEVICE, ISADevice
from pemu.migration.vmstate import U32, Buffer, Struct, VMStateDescription, VMStateField
from pemu.qom.object import ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps
from pemu.util.log import guest_error

TYPE_PC_TESTDEV = "pc-testdev"

PC_TESTDEV_IOPORT = 0xE0
PC_TESTDEV_FLUSH = 0xE4
PC_TESTDEV_IOPORT_BYTE = 0xE8
PC_TESTDEV_IRQ = 0x2000
PC_TESTDEV_IRQ_LINES = 24
PC_TESTDEV_IOMEM = 0xFF000000
PC_TESTDEV_IOMEM_SIZE = 0x10000
PAGE_MASK = ~0xFFF


class PCTestdev:
    """The registers.  ``irqs[n]`` is interrupt line n (None where the board
    has none); ``flush_page(addr)`` is told about flush-port writes."""

    def __init__(self, irqs: Sequence[IRQLine | None],
                 flush_page: Callable[[int], None] | None = None) -> None:
        self.irqs = list(irqs)[:PC_TESTDEV_IRQ_LINES]
        self.flush_page = flush_page
        self.ioport_data = 0
        self.iomem = bytearray(PC_TESTDEV_IOMEM_SIZE)

    def reset(self) -> None:
        """Nothing: QEMU's device has no reset handler (the scratch register
        and the memory window keep their contents)."""

    # -- the scratch register: 4 bytes, any width at any byte offset --------------------
    def ioport_read(self, offset: int, size: int) -> int:
        shift = (offset & 3) * 8
        mask = (1 << (size * 8)) - 1
        return (self.ioport_data >> shift) & mask

    def ioport_write(self, offset: int, value: int, size: int) -> None:
        shift = (offset & 3) * 8
        mask = ((1 << (size * 8)) - 1) << shift
        self.ioport_data = ((self.ioport_data & ~mask) | ((value << shift) & mask)) & 0xFFFFFFFF

    # -- the flush port ---------------------------------------------------------------------
    def flush_write(self, offset: int, value: int, size: int) -> None:
        if self.flush_page is not None:
            self.flush_page(value & PAGE_MASK & 0xFFFFFFFF)

    # -- interrupt lines ---------------------------------------------------------------------
    def irq_write(self, offset: int, value: int, size: int) -> None:
        line = self.irqs[offset] if 0 <= offset < len(self.irqs) else None
        if line is None:
            guest_error(f"pc-testdev: no interrupt line {offset} on this board")
            return
        line.set(1 if value else 0)

    # -- the memory window -----------------------------------------------------------------
    def iomem_read(self, offset: int, size: int) -> int:
        if not 0 <= offset <= PC_TESTDEV_IOMEM_SIZE - size:
            return (1 << (size * 8)) - 1
        return int.from_bytes(self.iomem[offset:offset + size], "little")

    def iomem_write(self, offset: int, value: int, size: int) -> None:
        if not 0 <= offset <= PC_TESTDEV_IOMEM_SIZE - size:
            return
        self.iomem[offset:offset + size] = (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little")


VMSTATE_PC_TESTDEV_MODEL = VMStateDescription(
    "pc-testdev-model", version_id=1,
    fields=[VMStateField("ioport_data", U32), VMStateField("iomem", Buffer(PC_TESTDEV_IOMEM_SIZE))])
"""The scratch register and the memory window; the interrupt lines' levels
are held by the interrupt controllers."""

VMSTATE_PC_TESTDEV = VMStateDescription(
    TYPE_PC_TESTDEV, version_id=1, fields=[VMStateField("model", Struct(VMSTATE_PC_TESTDEV_MODEL))])


def _no_read(offset: int, size: int) -> int:
    return 0


class PCTestdevState(ISADevice):
    model: PCTestdev
    iomem_region: MemoryRegion | None


def _board_irq_lines(dev: ISADevice) -> list[IRQLine | None]:
    """ISA IRQs 0-15 from the bus, GSIs 16-23 from an x86 board that has them."""
    from pemu.hw.i386.x86 import X86MachineState
    from pemu.util.vm_context import current_vm

    lines: list[IRQLine | None] = [dev.isa_bus.irqs[n] for n in range(ISA_NUM_IRQS)]
    machine = current_vm().machine
    gsi = machine.gsi if isinstance(machine, X86MachineState) else []
    lines += [gsi[n] if n < len(gsi) else None for n in range(ISA_NUM_IRQS, PC_TESTDEV_IRQ_LINES)]
    return lines


def _pc_testdev_realize(obj: Any) -> None:
    from pemu.system.physmem import get_system_memory

    dev = object_check(obj, PCTestdevState)
    dev.model = m = PCTestdev(_board_irq_lines(dev))

    def io(name: str, size: int, ops: MemoryRegionOps) -> MemoryRegion:
        return MemoryRegion.io(name, size, ops, owner=dev)

    dev.register_ioport(PC_TESTDEV_IOPORT, io("pc-testdev-ioport", 4,
                                              MemoryRegionOps(m.ioport_read, m.ioport_write, 1, 4, True, 1, 4)))
    dev.register_ioport(PC_TESTDEV_FLUSH, io("pc-testdev-flush-page", 4,
                                             MemoryRegionOps(_no_read, m.flush_write, 4, 4, False, 4, 4)))
    dev.register_ioport(PC_TESTDEV_IOPORT_BYTE, io("pc-testdev-ioport-byte", 4,
                                                   MemoryRegionOps(m.ioport_read, m.ioport_write, 1, 4, True, 1, 1)))
    dev.register_ioport(PC_TESTDEV_IRQ, io("pc-testdev-irq-line", PC_TESTDEV_IRQ_LINES,
                                           MemoryRegionOps(_no_read, m.irq_write, 1, 1, False, 1, 1)))
    dev.iomem_region = io("pc-testdev-iomem", PC_TESTDEV_IOMEM_SIZE,
                          MemoryRegionOps(m.iomem_read, m.iomem_write, 1, 8, True, 1, 8))
    get_system_memory().add_subregion(PC_TESTDEV_IOMEM, dev.iomem_region)


def _pc_testdev_unmap_iomem(obj: Any) -> None:
    dev = object_check(obj, PCTestdevState)
    region = dev.iomem_region
    if region is not None and region.parent_container is not None:
        region.parent_container.del_subregion(region)
    dev.iomem_region = None


def _pc_testdev_init(obj: Any) -> None:
    object_check(obj, PCTestdevState).iomem_region = None


def _pc_testdev_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = _pc_testdev_realize
    dc.vmsd = VMSTATE_PC_TESTDEV
    isa_unrealize = dc.unrealize

    def unrealize(obj: Any) -> None:
        _pc_testdev_unmap_iomem(obj)
        if isa_unrealize is not None:
            isa_unrealize(obj)

    dc.unrealize = unrealize
    dc.user_creatable = True
    dc.categories = ("misc",)


type_register(TypeInfo(TYPE_PC_TESTDEV, parent=TYPE_ISA_DEVICE, instance_type=PCTestdevState,
                       instance_init=_pc_testdev_init, class_init=_pc_testdev_class_init))
