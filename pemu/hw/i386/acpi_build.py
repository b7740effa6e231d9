"""The PC's ACPI tables (QEMU's hw/i386/acpi-build.c), laid out at a fixed address.

For direct Linux boot the VMM writes the tables itself: :func:`build_acpi_tables`
returns one blob to copy to ``base_addr`` (RAM the e820 map marks as
reserved or ACPI), with every pointer already relocated to that address,
and the RSDP's address for boot_params.acpi_rsdp_addr.

Tables: FACS, DSDT, FADT (rev 3, ICH9 PM block at PMBASE 0x600), MADT when
the machine has an APIC, RSDT, XSDT, RSDP (rev 2).  Without an APIC nothing
APIC-related is claimed, and MSI is declared unsupported (it needs a LAPIC).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntFlag

from pemu.hw.acpi.acpi_tables import (
    AccessSize,
    AcpiOem,
    AddressSpace,
    GenericAddress,
    build_rsdp,
    build_rsdt,
    build_table,
    build_xsdt,
)
from pemu.hw.acpi.aml_build import (
    aml_device,
    aml_eisaid,
    aml_io,
    aml_irq_no_flags,
    aml_name_decl,
    aml_package,
    aml_resource_template,
    aml_scope,
)
from pemu.hw.acpi.core import ICH9_GPE0_LEN, PM1_CNT_LEN, PM1_EVT_LEN, PM_TMR_LEN, S5_SLP_TYP

# ICH9 power-management I/O layout (QEMU's ich9.h): PMBASE and offsets into it.
ICH9_PMBASE = 0x600
ICH9_PMIO_PM1_EVT = 0x00
ICH9_PMIO_PM1_CNT = 0x04
ICH9_PMIO_PM_TMR = 0x08
ICH9_PMIO_GPE0 = 0x20
ICH9_RST_CNT_IOPORT = 0xCF9
ACPI_RESET_VALUE = 0x06
"""Written to 0xCF9: SYS_RST | RST_CPU, a hard reset."""
ACPI_SCI_IRQ = 9
RTC_CENTURY_INDEX = 0x32

APIC_DEFAULT_ADDRESS = 0xFEE00000
IOAPIC_DEFAULT_ADDRESS = 0xFEC00000
IOAPIC_ID = 0
IOAPIC_GSI_BASE = 0

FADT_REVISION = 3
FADT_REV3_LENGTH = 244
FACS_LENGTH = 64
FACS_ALIGN = 64
RSDP_ALIGN = 16
TABLE_ALIGN = 16


class FadtFlags(IntFlag):
    WBINVD = 1 << 0
    WBINVD_FLUSH = 1 << 1
    PROC_C1 = 1 << 2
    P_LVL2_UP = 1 << 3
    PWR_BUTTON = 1 << 4
    SLP_BUTTON = 1 << 5
    FIX_RTC = 1 << 6
    RTC_S4 = 1 << 7
    TMR_VAL_EXT = 1 << 8
    DCK_CAP = 1 << 9
    RESET_REG_SUP = 1 << 10
    SEALED_CASE = 1 << 11
    HEADLESS = 1 << 12
    CPU_SW_SLP = 1 << 13
    PCI_EXP_WAK = 1 << 14
    USE_PLATFORM_CLOCK = 1 << 15
    S4_RTC_STS_VALID = 1 << 16
    REMOTE_POWER_ON_CAPABLE = 1 << 17
    FORCE_APIC_CLUSTER_MODEL = 1 << 18
    FORCE_APIC_PHYSICAL_DESTINATION_MODE = 1 << 19
    HW_REDUCED_ACPI = 1 << 20


class IapcBootArch(IntFlag):
    LEGACY_DEVICES = 1 << 0
    I8042 = 1 << 1
    VGA_NOT_PRESENT = 1 << 2
    MSI_NOT_SUPPORTED = 1 << 3
    PCIE_ASPM_CONTROLS = 1 << 4
    CMOS_RTC_NOT_PRESENT = 1 << 5


# FADT field offsets (ACPI 6.5 table 5.9); only those written are listed.
_FADT = {
    "FIRMWARE_CTRL": (36, "I"), "DSDT": (40, "I"), "SCI_INT": (46, "H"), "SMI_CMD": (48, "I"),
    "PM1a_EVT_BLK": (56, "I"), "PM1a_CNT_BLK": (64, "I"), "PM_TMR_BLK": (76, "I"),
    "GPE0_BLK": (80, "I"), "PM1_EVT_LEN": (88, "B"), "PM1_CNT_LEN": (89, "B"),
    "PM_TMR_LEN": (91, "B"), "GPE0_BLK_LEN": (92, "B"), "P_LVL2_LAT": (96, "H"),
    "P_LVL3_LAT": (98, "H"), "CENTURY": (108, "B"), "IAPC_BOOT_ARCH": (109, "H"),
    "Flags": (112, "I"), "RESET_REG": (116, "12s"), "RESET_VALUE": (128, "B"),
    "X_FIRMWARE_CTRL": (132, "Q"), "X_DSDT": (140, "Q"), "X_PM1a_EVT_BLK": (148, "12s"),
    "X_PM1a_CNT_BLK": (172, "12s"), "X_PM_TMR_BLK": (208, "12s"), "X_GPE0_BLK": (220, "12s"),
}
FADT_FIELD_OFFSETS = {name: off for name, (off, _) in _FADT.items()}


@dataclass(frozen=True)
class PcAcpiConfig:
    """What the DSDT and FADT describe; defaults are the q35 board's."""

    pm_base: int = ICH9_PMBASE
    sci_irq: int = ACPI_SCI_IRQ
    pm_timer_32bit: bool = False
    serial_ports: tuple[tuple[int, int], ...] = ((0x3F8, 4),)
    rtc: bool = True
    ps2: bool = True
    oem: AcpiOem = AcpiOem()


@dataclass(frozen=True)
class AcpiBuild:
    base_addr: int
    blob: bytes
    rsdp_addr: int
    tables: dict[str, int] = field(default_factory=dict)
    """Signature -> guest-physical address (FACS, DSDT, FACP, APIC, RSDT, XSDT)."""

    @property
    def size(self) -> int:
        return len(self.blob)


def _io_gas(addr: int, length: int) -> GenericAddress:
    return GenericAddress(AddressSpace.SYSTEM_IO, length * 8, addr)


def build_facs() -> bytes:
    """FACS (5.2.10): no checksum, 64 bytes, version 2, no wake vector yet."""
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_LENGTH, 0, 0, 0, 0, 0, 2, 0)


def build_dsdt(cfg: PcAcpiConfig = PcAcpiConfig()) -> bytes:
    devices: list[bytes] = []
    for index, (port, irq) in enumerate(cfg.serial_ports):
        devices.append(aml_device(
            f"COM{index + 1}",
            aml_name_decl("_HID", aml_eisaid("PNP0501")),
            aml_name_decl("_UID", index + 1),
            aml_name_decl("_STA", 0x0F),
            aml_name_decl("_CRS", aml_resource_template(
                aml_io(port, port, 0x00, 0x08), aml_irq_no_flags(irq)))))
    if cfg.rtc:
        devices.append(aml_device(
            "RTC",
            aml_name_decl("_HID", aml_eisaid("PNP0B00")),
            aml_name_decl("_CRS", aml_resource_template(
                aml_io(0x70, 0x70, 0x01, 0x08), aml_irq_no_flags(8)))))
    if cfg.ps2:
        devices.append(aml_device(
            "KBD",
            aml_name_decl("_HID", aml_eisaid("PNP0303")),
            aml_name_decl("_STA", 0x0F),
            aml_name_decl("_CRS", aml_resource_template(
                aml_io(0x60, 0x60, 0x01, 0x01), aml_io(0x64, 0x64, 0x01, 0x01),
                aml_irq_no_flags(1)))))
        devices.append(aml_device(
            "MOU",
            aml_name_decl("_HID", aml_eisaid("PNP0F13")),
            aml_name_decl("_STA", 0x0F),
            aml_name_decl("_CRS", aml_resource_template(aml_irq_no_flags(12)))))
    aml = (aml_scope("\\_SB", *devices)
           + aml_name_decl("\\_S5", aml_package(S5_SLP_TYP, S5_SLP_TYP, 0, 0)))
    return build_table("DSDT", 2, aml, cfg.oem)


def build_fadt(facs_addr: int, dsdt_addr: int, with_apic: bool, cpus: int,
               cfg: PcAcpiConfig = PcAcpiConfig()) -> bytes:
    body = bytearray(FADT_REV3_LENGTH - 36)

    def put(name: str, value: int | bytes) -> None:
        off, fmt = _FADT[name]
        struct.pack_into("<" + fmt, body, off - 36, value)

    evt = cfg.pm_base + ICH9_PMIO_PM1_EVT
    cnt = cfg.pm_base + ICH9_PMIO_PM1_CNT
    tmr = cfg.pm_base + ICH9_PMIO_PM_TMR
    gpe0 = cfg.pm_base + ICH9_PMIO_GPE0
    put("FIRMWARE_CTRL", facs_addr)
    put("DSDT", dsdt_addr)
    put("SCI_INT", cfg.sci_irq)
    put("SMI_CMD", 0)                 # no SMM: ACPI is always enabled (SCI_EN reads 1)
    put("PM1a_EVT_BLK", evt)
    put("PM1a_CNT_BLK", cnt)
    put("PM_TMR_BLK", tmr)
    put("GPE0_BLK", gpe0)
    put("PM1_EVT_LEN", PM1_EVT_LEN)
    put("PM1_CNT_LEN", PM1_CNT_LEN)
    put("PM_TMR_LEN", PM_TMR_LEN)
    put("GPE0_BLK_LEN", ICH9_GPE0_LEN)
    put("P_LVL2_LAT", 0xFFF)          # > 100: C2 not supported
    put("P_LVL3_LAT", 0xFFF)          # > 1000: C3 not supported
    put("CENTURY", RTC_CENTURY_INDEX if cfg.rtc else 0)

    boot_arch = IapcBootArch.LEGACY_DEVICES
    if cfg.ps2:
        boot_arch |= IapcBootArch.I8042
    if not with_apic:
        boot_arch |= IapcBootArch.MSI_NOT_SUPPORTED
    if not cfg.rtc:
        boot_arch |= IapcBootArch.CMOS_RTC_NOT_PRESENT
    put("IAPC_BOOT_ARCH", int(boot_arch))

    flags = (FadtFlags.WBINVD | FadtFlags.PROC_C1 | FadtFlags.SLP_BUTTON | FadtFlags.RTC_S4
             | FadtFlags.RESET_REG_SUP | FadtFlags.USE_PLATFORM_CLOCK)
    if cfg.pm_timer_32bit:
        flags |= FadtFlags.TMR_VAL_EXT
    if with_apic and cpus > 8:
        flags |= FadtFlags.FORCE_APIC_PHYSICAL_DESTINATION_MODE
    put("Flags", int(flags))
    put("RESET_REG", GenericAddress(AddressSpace.SYSTEM_IO, 8, ICH9_RST_CNT_IOPORT,
                                    access_size=AccessSize.BYTE).pack())
    put("RESET_VALUE", ACPI_RESET_VALUE)
    put("X_FIRMWARE_CTRL", facs_addr)
    put("X_DSDT", dsdt_addr)
    put("X_PM1a_EVT_BLK", _io_gas(evt, PM1_EVT_LEN).pack())
    put("X_PM1a_CNT_BLK", _io_gas(cnt, PM1_CNT_LEN).pack())
    put("X_PM_TMR_BLK", _io_gas(tmr, PM_TMR_LEN).pack())
    put("X_GPE0_BLK", _io_gas(gpe0, ICH9_GPE0_LEN).pack())
    return build_table("FACP", FADT_REVISION, bytes(body), cfg.oem)


# MADT interrupt-controller structure types and flags (5.2.12).
MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INT_SRC_OVR = 2
MADT_LOCAL_APIC_NMI = 4
MADT_PCAT_COMPAT = 1
MADT_LAPIC_ENABLED = 1
MPS_INTI_POLARITY_HIGH = 0b01
MPS_INTI_TRIGGER_EDGE = 0b01 << 2
MPS_INTI_TRIGGER_LEVEL = 0b11 << 2


def build_madt(cpus: int, cfg: PcAcpiConfig = PcAcpiConfig()) -> bytes:
    if not 1 <= cpus <= 255:
        raise ValueError(f"MADT: {cpus} CPUs do not fit xAPIC ids")
    body = struct.pack("<II", APIC_DEFAULT_ADDRESS, MADT_PCAT_COMPAT)
    for cpu in range(cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, MADT_LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, IOAPIC_ID, 0, IOAPIC_DEFAULT_ADDRESS,
                        IOAPIC_GSI_BASE)
    # The PIT's IRQ0 arrives on IOAPIC pin 2; the SCI is level-triggered, active high.
    body += struct.pack("<BBBBIH", MADT_INT_SRC_OVR, 10, 0, 0, 2, 0)
    body += struct.pack("<BBBBIH", MADT_INT_SRC_OVR, 10, 0, cfg.sci_irq, cfg.sci_irq,
                        MPS_INTI_POLARITY_HIGH | MPS_INTI_TRIGGER_LEVEL)
    # LINT1 of every LAPIC is the NMI input.
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)
    return build_table("APIC", 1, body, cfg.oem)


def _align(value: int, align: int) -> int:
    return -(-value // align) * align


def build_acpi_tables(base_addr: int, with_apic: bool, cpus: int,
                      cfg: PcAcpiConfig = PcAcpiConfig()) -> AcpiBuild:
    """All tables in one blob for ``base_addr`` (64-byte aligned, below 4 GiB)."""
    if base_addr % FACS_ALIGN:
        raise ValueError(f"ACPI tables base {base_addr:#x} is not {FACS_ALIGN}-byte aligned")
    if cpus < 1:
        raise ValueError(f"{cpus} CPUs")
    blob = bytearray()
    tables: dict[str, int] = {}

    def place(sig: str, data: bytes, align: int = TABLE_ALIGN) -> int:
        blob.extend(bytes(_align(len(blob), align) - len(blob)))
        addr = base_addr + len(blob)
        blob.extend(data)
        tables[sig] = addr
        return addr

    facs = place("FACS", build_facs(), FACS_ALIGN)
    dsdt = place("DSDT", build_dsdt(cfg))
    pointed = [place("FACP", build_fadt(facs, dsdt, with_apic, cpus, cfg))]
    if with_apic:
        pointed.append(place("APIC", build_madt(cpus, cfg)))
    rsdt = place("RSDT", build_rsdt(pointed, cfg.oem))
    xsdt = place("XSDT", build_xsdt(pointed, cfg.oem))
    rsdp = place("RSD PTR ", build_rsdp(rsdt, xsdt, cfg.oem.oem_id), RSDP_ALIGN)
    del tables["RSD PTR "]
    if base_addr + len(blob) > 1 << 32:
        raise ValueError("ACPI tables must lie below 4 GiB (RSDT holds 32-bit pointers)")
    return AcpiBuild(base_addr=base_addr, blob=bytes(blob), rsdp_addr=rsdp, tables=tables)
