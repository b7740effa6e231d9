"""The MCH's SMRAM window (0x9D/0x9E) and TOLUD (0xB0), without a CPU."""

from __future__ import annotations

from typing import Any

import pytest

import pemu.hw.pci_host.q35  # noqa: F401  (registers the types)
from pemu.hw.core.qdev import device_cold_reset, qdev_new
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.pci_host.q35 import mch_init_smram, mch_set_tolud
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion, MemoryRegionOps
from pemu.system.physmem import address_space_memory, cpu_exec_init_all, get_system_memory


@pytest.fixture
def board() -> Any:
    cpu_exec_init_all()
    system = get_system_memory()
    ram = MemoryRegion.ram("pc.ram", 1 << 20)
    system.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram, 0, 1 << 20))
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    system.add_subregion_overlap(0, pci, -1)
    # Something on PCI at the VGA window, as a VGA card would put there.
    vga = MemoryRegion.io("vga-lowmem", 0x20000, MemoryRegionOps(lambda o, s: 0x5A, lambda o, v, s: None, 1, 1))
    pci.add_subregion(0xA0000, vga)
    host = qdev_new("q35-pcihost")
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    mch_init_smram(host.mch, pci, system)  # type: ignore[attr-defined]
    return host.mch  # type: ignore[attr-defined]


def owner_at(addr: int) -> str:
    fr = address_space_memory().flatview.lookup(addr)
    return "nothing" if fr is None else fr.mr.name


def test_smram_closed_at_reset_decodes_to_pci(board: Any) -> None:
    assert board.config_read(0x9D, 1) == 0x02                    # C_BASE_SEG hard-wired
    assert board.config_read(0x9E, 1) == 0x1C
    assert owner_at(0xA0000) == "vga-lowmem" and owner_at(0xBFFFF) == "vga-lowmem"
    assert owner_at(0x9FFFF) == "pc.ram" and owner_at(0xC0000) == "pc.ram"


def test_smram_open_shows_ram_and_close_hides_it(board: Any) -> None:
    board.config_write(0x9D, 0x40 | 0x08, 1)                     # D_OPEN | G_SMRAME
    assert owner_at(0xA0000) == "pc.ram"
    address_space_memory().stb(0xA0010, 0x77)
    board.config_write(0x9D, 0x08, 1)                            # closed again
    assert owner_at(0xA0010) == "vga-lowmem"
    assert address_space_memory().ldub(0xA0010) == 0x5A
    board.config_write(0x9D, 0x48, 1)
    assert address_space_memory().ldub(0xA0010) == 0x77          # the RAM kept what was written
    # H_SMRAME moves SMRAM to high memory: the low window stays PCI even when open.
    board.config_write(0x9E, 0x40, 1)
    assert owner_at(0xA0000) == "vga-lowmem"


def test_smram_lock(board: Any) -> None:
    board.config_write(0x9D, 0x40 | 0x10, 1)                     # D_OPEN with D_LCK: lock wins
    assert board.config_read(0x9D, 1) == 0x12
    assert owner_at(0xA0000) == "vga-lowmem"
    board.config_write(0x9D, 0x40 | 0x08, 1)                     # only D_CLS is writable now
    assert board.config_read(0x9D, 1) == 0x12
    board.config_write(0x9E, 0x47, 1)
    assert board.config_read(0x9E, 1) == 0x1C
    device_cold_reset(board)                                     # reset unlocks
    board.config_write(0x9D, 0x48, 1)
    assert owner_at(0xA0000) == "pc.ram"


@pytest.mark.parametrize("below_4g, tolud", [
    (512 << 20, 0x2000),
    (2 << 30, 0x8000),
    (0xB0000000 - (1 << 20), 0xAFF0),
    ((128 << 20) + 0x1234, 0x0800),        # not MiB-aligned: rounded down
])
def test_tolud_reports_low_ram(board: Any, below_4g: int, tolud: int) -> None:
    mch_set_tolud(board, below_4g)
    assert board.config_read(0xB0, 2) == tolud
    board.config_write(0xB0, 0x1230, 2)                          # read-only to the guest
    assert board.config_read(0xB0, 2) == tolud
