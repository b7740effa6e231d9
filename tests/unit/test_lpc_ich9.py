"""The ICH9 LPC's PMBASE/ACPI_CNTL, PIRQ routing, SCI routing, RCBA and the
direct-boot programming, on the q35 root bus without a CPU."""

from __future__ import annotations

from typing import Any

import pytest

import pemu.hw.isa.lpc_ich9  # noqa: F401  (registers the type)
import pemu.hw.pci_host.q35  # noqa: F401
from pemu.hw.core.irq import IRQ
from pemu.hw.core.qdev import device_cold_reset, qdev_new, qdev_realize
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.isa.isa_bus import isa_bus_irqs
from pemu.hw.isa.lpc_ich9 import ich9_lpc_direct_boot_setup
from pemu.hw.pci.pci import TYPE_PCI_DEVICE, PCIDevice, PCIDeviceClass, pci_config_set_interrupt_pin, pci_set_irq
from pemu.qom.object import ObjectClass, TypeInfo, type_register
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion, MemoryRegionOps, mtree_info
from pemu.system.physmem import (
    address_space_io,
    address_space_memory,
    cpu_exec_init_all,
    get_system_io,
    get_system_memory,
)

TYPE_INTX_STUB = "test-lpc-intx-stub"


def _stub_class_init(klass: ObjectClass, data: Any) -> None:
    k: PCIDeviceClass = klass  # type: ignore[assignment]
    k.vendor_id, k.device_id = 0x1234, 0x0001
    k.pci_realize = lambda dev: pci_config_set_interrupt_pin(dev, 1)  # type: ignore[attr-defined]


type_register(TypeInfo(TYPE_INTX_STUB, parent=TYPE_PCI_DEVICE, instance_type=PCIDevice, class_init=_stub_class_init,
                       interfaces=("conventional-pci-device",)))


class Board:
    def __init__(self) -> None:
        cpu_exec_init_all()
        pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
        get_system_memory().add_subregion_overlap(0, pci, -1)
        self.host = qdev_new("q35-pcihost")
        self.host.pci_address_space = pci  # type: ignore[attr-defined]
        sysbus_realize(self.host)  # type: ignore[arg-type]
        self.lpc: Any = qdev_new("ICH9-LPC")
        self.lpc.property_set("addr", "1f.0")
        self.lpc.property_set("multifunction", True)
        qdev_realize(self.lpc, self.host.bus)  # type: ignore[attr-defined]
        self.levels = [0] * 16
        self.history: list[tuple[int, int]] = []
        isa_bus_irqs(self.lpc.isa_bus, [IRQ(self._isa_irq, n) for n in range(16)])
        # A stand-in ELCR at 0x4D0 (the 8259 pair's, in the real board).
        self.elcr = bytearray(2)
        get_system_io().add_subregion(0x4D0, MemoryRegion.io("elcr", 2, MemoryRegionOps(
            lambda o, s: self.elcr[o], lambda o, v, s: self.elcr.__setitem__(o, v), 1, 1)))

    def _isa_irq(self, n: int, level: int) -> None:
        self.levels[n] = level
        self.history.append((n, level))

    def stub(self, addr: str) -> PCIDevice:
        dev: PCIDevice = qdev_new(TYPE_INTX_STUB)  # type: ignore[assignment]
        dev.property_set("addr", addr)
        qdev_realize(dev, self.host.bus)  # type: ignore[attr-defined]
        return dev


@pytest.fixture
def board() -> Board:
    return Board()


def io_tree() -> str:
    return mtree_info(spaces=[address_space_io()])


def test_reset_values(board: Board) -> None:
    lpc = board.lpc
    assert lpc.config_read(0x40, 4) == 0x00000001              # PMBASE: I/O indicator only
    assert lpc.config_read(0x44, 1) == 0
    assert [lpc.config_read(r, 1) for r in (0x60, 0x61, 0x62, 0x63, 0x68, 0x69, 0x6A, 0x6B)] == [0x80] * 8
    assert lpc.config_read(0xF0, 4) == 0
    assert "ich9-pm" in io_tree() and "(prio 0, i/o) [disabled]: ich9-pm" in io_tree()
    assert address_space_memory().flatview.lookup(0xFED1C000) is None


def test_pmbase_moves_the_pm_block(board: Board) -> None:
    lpc = board.lpc
    lpc.config_write(0x40, 0x601, 4)
    assert "[disabled]: ich9-pm" in io_tree()                  # ACPI_EN still clear
    lpc.config_write(0x44, 0x80, 1)
    assert "0600-067f (prio 0, i/o): ich9-pm" in io_tree()
    assert "0608-060b (prio 0, i/o): acpi-tmr" in io_tree()
    lpc.config_write(0x40, 0xB07F, 4)                           # low bits are not part of the base
    assert lpc.config_read(0x40, 4) == 0xB001
    tree = io_tree()
    assert "b000-b07f (prio 0, i/o): ich9-pm" in tree and "0600-067f" not in tree
    assert address_space_io().flatview.lookup(0xB008).mr.name == "acpi-tmr"  # type: ignore[union-attr]
    lpc.config_write(0x44, 0x00, 1)                             # ACPI off: the block goes away
    assert address_space_io().flatview.lookup(0xB008) is None


def test_intx_reaches_the_isa_irq_its_pirq_is_routed_to(board: Board) -> None:
    lpc = board.lpc
    dev = board.stub("2.0")                                     # slot 2 INTA -> PIRQG
    pci_set_irq(dev, 1)
    assert board.levels == [0] * 16                             # PIRQG unrouted at reset
    lpc.config_write(0x6A, 11, 1)                               # PIRQG -> IRQ 11
    assert board.levels[11] == 1
    pci_set_irq(dev, 0)
    assert board.levels[11] == 0
    pci_set_irq(dev, 1)
    lpc.config_write(0x6A, 5, 1)                                # rerouted while asserted
    assert board.levels[11] == 0 and board.levels[5] == 1
    lpc.config_write(0x6A, 0x85, 1)                             # IRQEN set: not routed
    assert board.levels[5] == 0
    lpc.config_write(0x6A, 0x02, 1)                             # IRQ 2 is not a valid target
    assert board.levels[2] == 0


def test_shared_irq_is_the_or_of_its_pirqs(board: Board) -> None:
    lpc = board.lpc
    a = board.stub("1f.3")                                      # slot 31 INTA -> PIRQA
    e = board.stub("3.0")                                       # slot 3 INTA -> PIRQH
    lpc.config_write(0x60, 10, 1)
    lpc.config_write(0x6B, 10, 1)
    pci_set_irq(a, 1)
    pci_set_irq(e, 1)
    pci_set_irq(a, 0)
    assert board.levels[10] == 1
    pci_set_irq(e, 0)
    assert board.levels[10] == 0


def test_sci_follows_sci_irq_sel_and_shares_with_pirqs(board: Board) -> None:
    lpc = board.lpc
    lpc.pm.sci.set(1)
    assert board.levels[9] == 1                                 # SCI_IRQ_SEL 0: IRQ 9
    lpc.config_write(0x44, 0x01, 1)                             # IRQ 10
    assert board.levels[9] == 0 and board.levels[10] == 1
    dev = board.stub("1f.3")
    lpc.config_write(0x60, 10, 1)
    pci_set_irq(dev, 1)
    lpc.pm.sci.set(0)
    assert board.levels[10] == 1                                # PIRQA still holds it
    pci_set_irq(dev, 0)
    assert board.levels[10] == 0
    lpc.config_write(0x44, 0x03, 1)                             # reserved selection: nowhere
    lpc.pm.sci.set(1)
    assert sum(board.levels) == 0


def test_rcba_maps_the_rcrb(board: Board) -> None:
    lpc = board.lpc
    mem = address_space_memory()
    lpc.config_write(0xF0, 0xFED1C000, 4)
    assert mem.flatview.lookup(0xFED1C000) is None              # enable bit clear
    lpc.config_write(0xF0, 0xFED1C001, 4)
    assert mem.flatview.lookup(0xFED1F000).mr.name == "lpc-rcrb-mmio"  # type: ignore[union-attr]
    assert mem.dispatch_read(0xFED1C000 + 0x3140, 2) == 0x3210  # D31IR default
    mem.dispatch_write(0xFED1C000 + 0x3410, 0x20, 4)             # GCS: stored
    assert mem.dispatch_read(0xFED1C000 + 0x3410, 4) == 0x20
    lpc.config_write(0xF0, 0xFEC80001 | 0x3FFE, 4)               # reserved low bits ignored
    assert lpc.config_read(0xF0, 4) == 0xFEC80001
    assert mem.flatview.lookup(0xFED1C000) is None and mem.flatview.lookup(0xFEC80000) is not None
    device_cold_reset(lpc)
    assert mem.flatview.lookup(0xFEC80000) is None and lpc.config_read(0xF0, 4) == 0


def test_direct_boot_setup_matches_the_dsdt(board: Board) -> None:
    from pemu.hw.i386.acpi_build import PIRQ_PIC_IRQS

    lpc = board.lpc
    ich9_lpc_direct_boot_setup(lpc)
    assert lpc.config_read(0x40, 4) == 0x601 and lpc.config_read(0x44, 1) == 0x80
    routes = [lpc.config_read(r, 1) for r in (0x60, 0x61, 0x62, 0x63, 0x68, 0x69, 0x6A, 0x6B)]
    assert tuple(routes) == PIRQ_PIC_IRQS
    assert "0600-067f (prio 0, i/o): ich9-pm" in io_tree()
    assert address_space_memory().flatview.lookup(0xFED1C000) is not None
    # ELCR: the SCI (9) and the PCI IRQs (10, 11) level-triggered.
    assert board.elcr[0] == 0 and board.elcr[1] == 0b1110
    # A device's INTx arrives where the _PRT says it does.
    from pemu.hw.i386.acpi_build import q35_pci_slot_pirq, q35_pirq_gsi

    dev = board.stub("5.0")
    pci_set_irq(dev, 1)
    assert board.levels[q35_pirq_gsi(q35_pci_slot_pirq(5, 0), with_apic=False)] == 1


def test_apic_mode_pirqs_drive_gsi_16_to_23(board: Board) -> None:
    lpc = board.lpc
    gsi = [0] * 24
    lpc.gsi_lines = [IRQ(lambda n, level: gsi.__setitem__(n, level), n) for n in range(24)]
    dev = board.stub("4.0")                                     # slot 4 INTA -> PIRQE -> GSI 20
    pci_set_irq(dev, 1)
    assert gsi[20] == 1 and sum(gsi) == 1
    lpc.config_write(0x44, 0x04, 1)                             # SCI on GSI 20 too
    lpc.pm.sci.set(1)
    pci_set_irq(dev, 0)
    assert gsi[20] == 1
