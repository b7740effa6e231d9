"""The q35 ACPI tables: PCI0, _PRT, HPET, MCFG, WAET, and the firmware copy linked by the loader script."""

from __future__ import annotations

import struct

import pytest

from pemu.hw.acpi.aml_build import aml_eisaid, aml_int
from pemu.hw.acpi.bios_linker_loader import run_linker_loader
from pemu.hw.i386.acpi_build import (
    build_acpi_tables,
    build_acpi_tables_for_firmware,
    build_hpet_table,
    build_mcfg,
    build_prt,
    build_waet,
    q35_acpi_config,
    q35_pci_slot_pirq,
    q35_pirq_gsi,
)

MCFG = (0xB0000000, 0x10000000)


def tables_by_sig(blob: bytes, base: int, rsdt_addr: int) -> dict[bytes, bytes]:
    def at(addr: int) -> bytes:
        length = struct.unpack_from("<I", blob, addr - base + 4)[0]
        return blob[addr - base:addr - base + length]

    rsdt = at(rsdt_addr)
    out = {b"RSDT": rsdt}
    for (ptr,) in struct.iter_unpack("<I", rsdt[36:]):
        t = at(ptr)
        out[t[:4]] = t
    fadt = out[b"FACP"]
    out[b"DSDT"] = at(struct.unpack_from("<I", fadt, 40)[0])
    return out


def test_fixed_tables_bytes() -> None:
    mcfg = build_mcfg(*MCFG)
    assert len(mcfg) == 60 and sum(mcfg) & 0xFF == 0
    assert mcfg[36:] == bytes(8) + struct.pack("<QHBBI", 0xB0000000, 0, 0, 255, 0)
    hpet = build_hpet_table()
    assert len(hpet) == 56 and sum(hpet) & 0xFF == 0
    assert hpet[36:] == (struct.pack("<I", 0x8086A201) + bytes([0, 0, 0, 0]) + struct.pack("<Q", 0xFED00000)
                         + bytes([0, 0, 0, 0]))
    waet = build_waet()
    assert waet[36:] == b"\x02\0\0\0" and sum(waet) & 0xFF == 0
    with pytest.raises(ValueError):
        build_mcfg(0xB0000000, 0x20000000)


def test_pirq_routing() -> None:
    assert q35_pci_slot_pirq(0x1F, 0) == 0           # LPC/SMBus functions: PIRQA for INTA
    assert q35_pci_slot_pirq(0x1F, 3) == 3
    assert q35_pci_slot_pirq(2, 0) == 6              # slot 2 INTA -> PIRQG
    assert q35_pci_slot_pirq(3, 1) == 4
    assert q35_pirq_gsi(6, with_apic=True) == 22
    assert q35_pirq_gsi(6, with_apic=False) == 11
    with pytest.raises(ValueError):
        q35_pci_slot_pirq(32, 0)


def test_prt_matches_interrupt_model() -> None:
    pic = build_prt(with_apic=False)
    apic = build_prt(with_apic=True)
    # Package{0x0002FFFF, 0, 0, GSI}: slot 2 INTA on PIRQG.
    entry = lambda gsi: bytes([0x12, 0x0B, 0x04]) + aml_int(0x0002FFFF) + b"\x00\x00" + aml_int(gsi)  # noqa: E731
    assert entry(11) in pic and entry(22) in apic
    assert entry(22) not in pic
    # Name(_PRT, Package(128){...}): a two-byte PkgLength, then NumElements.
    assert pic[:6] == b"\x08_PRT\x12" and pic[6] >> 6 == 1 and pic[8] == 128


@pytest.mark.parametrize("with_apic", [False, True])
def test_q35_direct_tables(with_apic: bool) -> None:
    base = 0x7FFE0000
    cfg = q35_acpi_config(0x80000000, hpet=True, mcfg=MCFG)
    build = build_acpi_tables(base, with_apic, 2, cfg)
    rsdp = build.blob[build.rsdp_addr - base:build.rsdp_addr - base + 36]
    tables = tables_by_sig(build.blob, base, struct.unpack_from("<I", rsdp, 16)[0])
    expected = {b"RSDT", b"FACP", b"DSDT", b"HPET", b"MCFG", b"WAET"} | ({b"APIC"} if with_apic else set())
    assert set(tables) == expected
    for sig, t in tables.items():
        assert sum(t) & 0xFF == 0, sig
    aml = tables[b"DSDT"]
    assert b"PCI0" in aml and b"ISA_" in aml and b"HPET" in aml and b"_PRT" in aml
    assert aml_eisaid("PNP0A08") in aml and aml_eisaid("PNP0A03") in aml and aml_eisaid("PNP0103") in aml
    # The 32-bit window starts above the MMCONFIG window and ends below the IOAPIC.
    assert struct.pack("<II", 0xC0000000, 0xFEBFFFFF) in aml


def test_firmware_tables_link_like_the_firmware() -> None:
    cfg = q35_acpi_config(0x8000000, hpet=True, mcfg=MCFG)
    fw = build_acpi_tables_for_firmware(False, 1, cfg)
    assert len(fw.loader) % 128 == 0
    # The first commands allocate the two files.
    assert fw.loader[:4] == b"\x01\0\0\0" and fw.loader[4:19] == b"etc/acpi/tables"
    assert fw.loader[128 + 4:128 + 17] == b"etc/acpi/rsdp" and fw.loader[128 + 64] == 2   # FSEG
    tables_base, rsdp_base = 0x7FE0000, 0xF5A00
    out = run_linker_loader(fw.loader, {"etc/acpi/tables": fw.tables, "etc/acpi/rsdp": fw.rsdp},
                            {"etc/acpi/tables": tables_base, "etc/acpi/rsdp": rsdp_base})
    rsdp = out["etc/acpi/rsdp"]
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    rsdt_addr = struct.unpack_from("<I", rsdp, 16)[0]
    assert tables_base <= rsdt_addr < tables_base + len(fw.tables)
    tables = tables_by_sig(out["etc/acpi/tables"], tables_base, rsdt_addr)
    assert {b"FACP", b"DSDT", b"HPET", b"MCFG", b"WAET"} <= set(tables)
    for sig, t in tables.items():
        assert sum(t) & 0xFF == 0, sig
    fadt = tables[b"FACP"]
    facs = struct.unpack_from("<I", fadt, 36)[0]
    assert facs == tables_base and struct.unpack_from("<Q", fadt, 132)[0] == facs
    assert out["etc/acpi/tables"][facs - tables_base:facs - tables_base + 4] == b"FACS"
    xsdt_addr = struct.unpack_from("<Q", rsdp, 24)[0]
    xsdt = out["etc/acpi/tables"][xsdt_addr - tables_base:]
    assert xsdt[:4] == b"XSDT"


# --- the MCH registers behind those tables: PAM and PCIEXBAR, seen in `info mtree` ---------------


@pytest.fixture
def mch_board():  # type: ignore[no-untyped-def]
    import pemu.hw.pci_host.q35  # noqa: F401  (registers the types)
    from pemu.hw.core.qdev import qdev_new
    from pemu.hw.core.sysbus import sysbus_realize
    from pemu.hw.pci_host.q35 import mch_init_pam, mch_init_pciexbar
    from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion
    from pemu.system.physmem import cpu_exec_init_all, get_system_memory

    cpu_exec_init_all()
    system = get_system_memory()
    ram = MemoryRegion.ram("pc.ram", 2 << 20)
    system.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram, 0, 2 << 20))
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    system.add_subregion_overlap(0, pci, -1)
    host = qdev_new("q35-pcihost")
    sysbus_realize(host)  # type: ignore[arg-type]
    mch_init_pam(host.mch, ram, pci, system)  # type: ignore[attr-defined]
    mch_init_pciexbar(host.mch, host.bus, system)  # type: ignore[attr-defined]
    return host


def cfg_write(host, offset: int, value: int, size: int) -> None:  # type: ignore[no-untyped-def]
    host.conf_write(0, 0x80000000 | (offset & 0xFC), 4)
    host.data_write(offset & 3, value, size)


def cfg_read(host, offset: int, size: int) -> int:  # type: ignore[no-untyped-def]
    host.conf_write(0, 0x80000000 | (offset & 0xFC), 4)
    return host.data_read(offset & 3, size)


def test_pam_switching_in_mtree(mch_board) -> None:  # type: ignore[no-untyped-def]
    from pemu.system.memory import mtree_info

    seg = "00000000000f0000-00000000000fffff"
    assert f"{seg} (prio 1, i/o): alias pam-pci @pci {seg}" in mtree_info()
    cfg_write(mch_board, 0x90, 0x30, 1)            # PAM0: the BIOS segment to RAM
    tree = mtree_info()
    assert f"{seg} (prio 1, ram): alias pam-ram @pc.ram {seg}" in tree
    assert f"{seg} (prio 1, i/o) [disabled]: alias pam-pci @pci {seg}" in tree
    cfg_write(mch_board, 0x90, 0x10, 1)            # read-only RAM
    assert f"{seg} (prio 0, rom): pc.ram @00000000000f0000" in mtree_info(flatview=True)
    cfg_write(mch_board, 0x90, 0x00, 1)            # back to PCI
    assert f"{seg} (prio 1, i/o): alias pam-pci @pci {seg}" in mtree_info()
    assert cfg_read(mch_board, 0x90, 1) == 0x00
    cfg_write(mch_board, 0x91, 0xFF, 1)            # only the PAM bits are writable
    assert cfg_read(mch_board, 0x91, 1) == 0x33


def test_pciexbar_enables_and_moves_the_ecam_window(mch_board) -> None:  # type: ignore[no-untyped-def]
    from pemu.system.memory import mtree_info
    from pemu.system.physmem import address_space_memory

    assert "pcie-mmcfg-mmio" not in mtree_info()           # disabled at reset
    assert cfg_read(mch_board, 0x60, 4) == 0xB0000000
    cfg_write(mch_board, 0x60, 0xB0000001, 4)
    assert "00000000b0000000-00000000bfffffff (prio 0, i/o): pcie-mmcfg-mmio" in mtree_info()
    space = address_space_memory()
    assert space.dispatch_read(0xB0000000, 4) == 0x29C08086   # 00:00.0 through ECAM
    assert space.dispatch_read(0xB0000000 + (3 << 15), 4) == 0xFFFFFFFF  # empty slot
    space.dispatch_write(0xB0000000 + 0x90, 0x30, 1)           # ECAM write reaches the MCH (PAM0)
    assert cfg_read(mch_board, 0x90, 1) == 0x30
    cfg_write(mch_board, 0x60, 0xE0000000 | 0b101, 4)          # 64 MiB at 0xE0000000
    tree = mtree_info()
    assert "00000000e0000000-00000000e3ffffff (prio 0, i/o): pcie-mmcfg-mmio" in tree
    assert "00000000b0000000-00000000bfffffff" not in tree
    cfg_write(mch_board, 0x60, 0xE0000000 | 0b111, 4)          # reserved length: off
    assert "pcie-mmcfg-mmio" not in mtree_info()
