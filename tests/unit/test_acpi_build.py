"""ACPI tables: checksums, lengths, signatures, and pointers that resolve inside the blob."""

from __future__ import annotations

import struct

import pytest

from pemu.hw.acpi.acpi_tables import (
    AcpiOem,
    AddressSpace,
    GenericAddress,
    acpi_checksum,
    build_rsdp,
    build_table,
    parse_table_header,
)
from pemu.hw.i386.acpi_build import (
    FADT_FIELD_OFFSETS as F,
)
from pemu.hw.i386.acpi_build import (
    FadtFlags,
    IapcBootArch,
    PcAcpiConfig,
    build_acpi_tables,
    build_madt,
)

BASE = 0x1FFDF000


class Blob:
    def __init__(self, build):
        self.b = build

    def at(self, addr: int, length: int) -> bytes:
        off = addr - self.b.base_addr
        assert 0 <= off and off + length <= len(self.b.blob), f"{addr:#x} outside the blob"
        return self.b.blob[off:off + length]

    def table(self, addr: int) -> bytes:
        length = struct.unpack("<I", self.at(addr + 4, 4))[0]
        return self.at(addr, length)


def u(data: bytes, off: int, fmt: str) -> int:
    return struct.unpack_from("<" + fmt, data, off)[0]


def test_checksum_helper():
    assert acpi_checksum(b"\x01\x02") == 0xFD
    assert (sum(b"\x01\x02") + acpi_checksum(b"\x01\x02")) % 256 == 0
    assert acpi_checksum(b"") == 0


def test_table_header():
    t = build_table("TEST", 7, b"\xAA" * 10)
    assert len(t) == 46 and sum(t) % 256 == 0
    h = parse_table_header(t)
    assert (h.signature, h.length, h.revision) == ("TEST", 46, 7)
    assert (h.oem_id, h.oem_table_id, h.creator_id) == ("BOCHS ", "BXPC    ", "BXPC")
    assert h.oem_revision == 1 and h.creator_revision == 1
    with pytest.raises(ValueError):
        build_table("TOOLONG", 1, b"")
    with pytest.raises(ValueError):
        build_table("TEST", 1, b"", AcpiOem(oem_id="SEVENCH"))


def test_rsdp_v2():
    r = build_rsdp(0x12345678, 0x1_0000_0000)
    assert len(r) == 36 and r[:8] == b"RSD PTR "
    assert sum(r[:20]) % 256 == 0          # ACPI 1.0 checksum
    assert sum(r) % 256 == 0               # extended checksum
    assert r[15] == 2 and r[9:15] == b"BOCHS "
    assert u(r, 16, "I") == 0x12345678 and u(r, 20, "I") == 36 and u(r, 24, "Q") == 1 << 32


def test_gas():
    g = GenericAddress(AddressSpace.SYSTEM_IO, 16, 0x604).pack()
    assert g == bytes([1, 16, 0, 0]) + (0x604).to_bytes(8, "little")


@pytest.mark.parametrize("with_apic, cpus", [(False, 1), (True, 1), (True, 4), (True, 12)])
def test_whole_build_resolves(with_apic, cpus):
    build = build_acpi_tables(BASE, with_apic, cpus)
    blob = Blob(build)
    assert build.rsdp_addr % 16 == 0
    rsdp = blob.at(build.rsdp_addr, 36)
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    rsdt_addr, xsdt_addr = u(rsdp, 16, "I"), u(rsdp, 24, "Q")
    rsdt, xsdt = blob.table(rsdt_addr), blob.table(xsdt_addr)
    assert rsdt[:4] == b"RSDT" and xsdt[:4] == b"XSDT"
    rsdt_entries = struct.unpack_from(f"<{(len(rsdt) - 36) // 4}I", rsdt, 36)
    xsdt_entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert list(rsdt_entries) == list(xsdt_entries)
    sigs = {blob.table(a)[:4]: a for a in xsdt_entries}
    assert set(sigs) == ({b"FACP", b"APIC"} if with_apic else {b"FACP"})
    for addr in [rsdt_addr, xsdt_addr, *xsdt_entries]:
        t = blob.table(addr)
        assert sum(t) % 256 == 0, t[:4]
        assert parse_table_header(t).oem_id == "BOCHS "

    fadt = blob.table(sigs[b"FACP"])
    assert len(fadt) == 244 and fadt[8] == 3
    facs_addr, dsdt_addr = u(fadt, F["FIRMWARE_CTRL"], "I"), u(fadt, F["DSDT"], "I")
    assert u(fadt, F["X_FIRMWARE_CTRL"], "Q") == facs_addr
    assert u(fadt, F["X_DSDT"], "Q") == dsdt_addr
    facs = blob.at(facs_addr, 64)
    assert facs[:4] == b"FACS" and u(facs, 4, "I") == 64 and facs_addr % 64 == 0
    dsdt = blob.table(dsdt_addr)
    assert dsdt[:4] == b"DSDT" and sum(dsdt) % 256 == 0
    assert build.tables["DSDT"] == dsdt_addr and build.tables["FACS"] == facs_addr

    flags = u(fadt, F["Flags"], "I")
    apic_bits = (FadtFlags.FORCE_APIC_CLUSTER_MODEL
                 | FadtFlags.FORCE_APIC_PHYSICAL_DESTINATION_MODE)
    if not with_apic:
        assert not flags & apic_bits
        assert u(fadt, F["IAPC_BOOT_ARCH"], "H") & IapcBootArch.MSI_NOT_SUPPORTED
    else:
        assert bool(flags & FadtFlags.FORCE_APIC_PHYSICAL_DESTINATION_MODE) == (cpus > 8)
        assert not u(fadt, F["IAPC_BOOT_ARCH"], "H") & IapcBootArch.MSI_NOT_SUPPORTED
        madt = blob.table(sigs[b"APIC"])
        assert madt.count(bytes([0, 8])) >= cpus


def test_fadt_fields():
    build = build_acpi_tables(BASE, False, 1)
    fadt = Blob(build).table(build.tables["FACP"])
    assert u(fadt, F["SCI_INT"], "H") == 9
    assert u(fadt, F["SMI_CMD"], "I") == 0
    assert u(fadt, F["PM1a_EVT_BLK"], "I") == 0x600 and fadt[F["PM1_EVT_LEN"]] == 4
    assert u(fadt, F["PM1a_CNT_BLK"], "I") == 0x604 and fadt[F["PM1_CNT_LEN"]] == 2
    assert u(fadt, F["PM_TMR_BLK"], "I") == 0x608 and fadt[F["PM_TMR_LEN"]] == 4
    assert u(fadt, F["GPE0_BLK"], "I") == 0x620 and fadt[F["GPE0_BLK_LEN"]] == 16
    # X_ blocks agree with the legacy ones: I/O space, width = length * 8.
    for name, addr, bits in (("X_PM1a_EVT_BLK", 0x600, 32), ("X_PM1a_CNT_BLK", 0x604, 16),
                             ("X_PM_TMR_BLK", 0x608, 32), ("X_GPE0_BLK", 0x620, 128)):
        off = F[name]
        assert fadt[off] == 1 and fadt[off + 1] == bits and u(fadt, off + 4, "Q") == addr, name
    # Reset register: I/O 0xCF9, 8 bits, value 6, advertised.
    off = F["RESET_REG"]
    assert fadt[off] == 1 and fadt[off + 1] == 8 and u(fadt, off + 4, "Q") == 0xCF9
    assert fadt[F["RESET_VALUE"]] == 0x06
    flags = u(fadt, F["Flags"], "I")
    for bit in (FadtFlags.WBINVD, FadtFlags.PROC_C1, FadtFlags.SLP_BUTTON, FadtFlags.RTC_S4,
                FadtFlags.RESET_REG_SUP):
        assert flags & bit, bit
    assert not flags & FadtFlags.TMR_VAL_EXT          # the PM timer is 24-bit
    assert not flags & FadtFlags.HW_REDUCED_ACPI
    assert fadt[F["CENTURY"]] == 0x32


def test_fadt_32bit_timer_flag():
    build = build_acpi_tables(BASE, False, 1, PcAcpiConfig(pm_timer_32bit=True))
    fadt = Blob(build).table(build.tables["FACP"])
    assert u(fadt, F["Flags"], "I") & FadtFlags.TMR_VAL_EXT


def test_dsdt_contents():
    build = build_acpi_tables(BASE, False, 1)
    dsdt = Blob(build).table(build.tables["DSDT"])
    aml = dsdt[36:]
    # \_S5 = Package(){0, 0, 0, 0}: SLP_TYP 0 is soft-off, as the PM model decodes it.
    assert bytes.fromhex("08 5c 5f 53 35 5f 12 06 04 00 00 00 00") in aml
    assert aml.startswith(b"\x10") and b"\\_SB_" in aml[:8]
    for hid in ("0c 41 d0 05 01", "0c 41 d0 0b 00", "0c 41 d0 03 03", "0c 41 d0 0f 13"):
        assert bytes.fromhex(hid) in aml
    assert bytes.fromhex("47 01 f8 03 f8 03 00 08 22 10 00") in aml   # COM1 resources
    no_devices = build_acpi_tables(BASE, False, 1,
                                   PcAcpiConfig(serial_ports=(), rtc=False, ps2=False))
    small = Blob(no_devices).table(no_devices.tables["DSDT"])
    assert b"COM1" not in small and b"_S5_" in small


def test_madt():
    madt = build_madt(2)
    assert madt[:4] == b"APIC" and sum(madt) % 256 == 0
    body = madt[36:]
    assert u(body, 0, "I") == 0xFEE00000 and u(body, 4, "I") == 1     # PCAT_COMPAT
    entries = []
    off = 8
    while off < len(body):
        length = body[off + 1]
        entries.append(body[off:off + length])
        off += length
    assert off == len(body)
    assert entries[0] == bytes([0, 8, 0, 0]) + (1).to_bytes(4, "little")
    assert entries[1] == bytes([0, 8, 1, 1]) + (1).to_bytes(4, "little")
    assert entries[2] == bytes([1, 12, 0, 0]) + struct.pack("<II", 0xFEC00000, 0)
    assert entries[3] == bytes([2, 10, 0, 0]) + struct.pack("<IH", 2, 0)          # IRQ0 -> GSI2
    # The IRQs PCI interrupts may use, the SCI among them: level/high, as QEMU's q35.
    for n, irq in enumerate((5, 9, 10, 11)):
        assert entries[4 + n] == bytes([2, 10, 0, irq]) + struct.pack("<IH", irq, 0x000D)
    assert entries[8] == bytes([4, 6, 0xFF, 0, 0, 1])                           # NMI on LINT1
    assert len(entries) == 9
    with pytest.raises(ValueError):
        build_madt(0)


def test_base_alignment_and_placement():
    with pytest.raises(ValueError):
        build_acpi_tables(BASE + 8, False, 1)
    a = build_acpi_tables(0x9F000, False, 1)
    b = build_acpi_tables(0x1FFDF000, False, 1)
    assert a.size == b.size and a.rsdp_addr - a.base_addr == b.rsdp_addr - b.base_addr
    assert a.blob != b.blob                           # pointers relocated
