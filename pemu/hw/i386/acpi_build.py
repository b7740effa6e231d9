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
from enum import IntFlag
from typing import NamedTuple

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
    MemCacheable,
    aml_device,
    aml_dword_memory,
    aml_eisaid,
    aml_io,
    aml_irq_no_flags,
    aml_memory32_fixed,
    aml_name_decl,
    aml_package,
    aml_resource_template,
    aml_scope,
    aml_word_bus_number,
    aml_word_io,
)
from pemu.hw.acpi.bios_linker_loader import AllocZone, BiosLinker
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


class PcAcpiConfig(NamedTuple):
    """What the DSDT and FADT describe; defaults are the q35 board's."""

    pm_base: int = ICH9_PMBASE
    sci_irq: int = ACPI_SCI_IRQ
    pm_timer_32bit: bool = False
    serial_ports: tuple[tuple[int, int], ...] = ((0x3F8, 4),)
    rtc: bool = True
    ps2: bool = True
    oem: AcpiOem = AcpiOem()
    # The q35 board's extras (off by default; q35_acpi_config turns them on).
    pci_host: bool = False
    """Describe PCI0 (the MCH's root bus) with its windows and _PRT, the ISA devices under it."""
    pci_hole: tuple[int, int] = (0xC0000000, 0xFEBFFFFF)
    """First and last address of the 32-bit PCI memory window."""
    hpet: bool = False
    hpet_id: int = 0x8086A201
    mcfg: tuple[int, int] | None = None
    """(base, size) of the PCIe MMCONFIG window for the MCFG table."""
    waet: bool = False
    fw_cfg_io: tuple[int, int] | None = None
    """(port, length) of the fw_cfg device, described as \\_SB.FWCF (QEMU0002)
    for Linux's qemu_fw_cfg driver."""


class AcpiBuild(NamedTuple):
    """The tables for direct boot: one blob at ``base_addr``, its RSDP's and each table's address."""

    base_addr: int
    blob: bytes
    rsdp_addr: int
    tables: dict[str, int]
    """Signature -> guest-physical address (FACS, DSDT, FACP, APIC, RSDT, XSDT)."""

    @property
    def size(self) -> int:
        return len(self.blob)


def _io_gas(addr: int, length: int) -> GenericAddress:
    return GenericAddress(AddressSpace.SYSTEM_IO, length * 8, addr)


def build_facs() -> bytes:
    """FACS (5.2.10): no checksum, 64 bytes, version 2, no wake vector yet."""
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_LENGTH, 0, 0, 0, 0, 0, 2, 0)


# q35 INTx routing (ICH9 defaults, as QEMU's ich9_lpc_map_irq): functions in
# slots 25-31 use PIRQ A-D by pin, every other slot PIRQ E-H swizzled by slot.
ICH9_FIRST_FIXED_SLOT = 25
PIRQ_COUNT = 8
PIRQ_PIC_IRQS = (10, 10, 11, 11, 10, 10, 11, 11)
"""The ISA IRQ of each PIRQ in PIC mode (SeaBIOS's choice, which direct boot copies)."""
PIRQ_FIRST_GSI = 16


def q35_pci_slot_pirq(slot: int, pin: int) -> int:
    """The PIRQ (0 = A .. 7 = H) of INTx ``pin`` (0 = INTA) of a device in ``slot`` of bus 0."""
    if not (0 <= slot < 32 and 0 <= pin < 4):
        raise ValueError(f"PCI slot {slot} pin {pin}")
    if slot >= ICH9_FIRST_FIXED_SLOT:
        return pin
    return (slot + pin) % 4 + 4


def q35_pirq_gsi(pirq: int, with_apic: bool) -> int:
    """Where a PIRQ arrives: GSI 16-23 on the IOAPIC, or its ISA IRQ on the 8259s."""
    return PIRQ_FIRST_GSI + pirq if with_apic else PIRQ_PIC_IRQS[pirq]


def build_prt(with_apic: bool) -> bytes:
    """_PRT of PCI0 for all 32 slots: static GSIs (Source 0), matching the
    interrupt model the guest has (PIC IRQs without an APIC)."""
    entries = [aml_package((slot << 16) | 0xFFFF, pin, 0, q35_pirq_gsi(q35_pci_slot_pirq(slot, pin), with_apic))
               for slot in range(32) for pin in range(4)]
    return aml_name_decl("_PRT", aml_package(*entries))


def build_pci0_crs(cfg: PcAcpiConfig) -> bytes:
    hole_start, hole_end = cfg.pci_hole
    return aml_name_decl("_CRS", aml_resource_template(
        aml_word_bus_number(0x00, 0xFF),
        aml_io(0x0CF8, 0x0CF8, 0x01, 0x08),
        aml_word_io(0x0000, 0x0CF7),
        aml_word_io(0x0D00, 0xFFFF),
        aml_dword_memory(0x000A0000, 0x000BFFFF, cacheable=MemCacheable.CACHEABLE),
        aml_dword_memory(hole_start, hole_end)))


def build_hpet_aml(cfg: PcAcpiConfig) -> bytes:
    from pemu.hw.i386 import memmap

    return aml_device(
        "HPET",
        aml_name_decl("_HID", aml_eisaid("PNP0103")),
        aml_name_decl("_UID", 0),
        aml_name_decl("_STA", 0x0F),
        aml_name_decl("_CRS", aml_resource_template(
            aml_memory32_fixed(memmap.HPET_BASE, memmap.HPET_SIZE, read_write=False))))


def build_fw_cfg_aml(port: int, length: int) -> bytes:
    """The fw_cfg device as QEMU describes it: present, enabled, not shown in UI."""
    return aml_device(
        "FWCF",
        aml_name_decl("_HID", "QEMU0002"),
        aml_name_decl("_STA", 0x0B),
        aml_name_decl("_CRS", aml_resource_template(aml_io(port, port, 0x01, length))))


def build_dsdt(cfg: PcAcpiConfig = PcAcpiConfig(), with_apic: bool = False) -> bytes:
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
    if cfg.pci_host:
        # The ISA devices sit behind the LPC bridge at 00:1f.0.
        devices = [aml_device(
            "PCI0",
            aml_name_decl("_HID", aml_eisaid("PNP0A08")),
            aml_name_decl("_CID", aml_eisaid("PNP0A03")),
            aml_name_decl("_ADR", 0),
            aml_name_decl("_UID", 0),
            aml_name_decl("_BBN", 0),
            build_pci0_crs(cfg),
            build_prt(with_apic),
            aml_device("ISA", aml_name_decl("_ADR", 0x001F0000), *devices))]
    if cfg.hpet:
        devices.append(build_hpet_aml(cfg))
    if cfg.fw_cfg_io is not None:
        devices.append(build_fw_cfg_aml(*cfg.fw_cfg_io))
    aml = (aml_scope("\\_SB", *devices)
           + aml_name_decl("\\_S5", aml_package(S5_SLP_TYP, S5_SLP_TYP, 0, 0)))
    return build_table("DSDT", 2, aml, cfg.oem)


def build_mcfg(base: int, size: int, cfg: PcAcpiConfig = PcAcpiConfig()) -> bytes:
    """MCFG (PCI Firmware spec 3.2, 4.1.2): one ECAM allocation for segment 0."""
    end_bus = size // (1 << 20) - 1
    if not 0 <= end_bus <= 0xFF or base % (1 << 20):
        raise ValueError(f"MCFG window {base:#x}+{size:#x}")
    body = bytes(8) + struct.pack("<QHBBI", base, 0, 0, end_bus, 0)
    return build_table("MCFG", 1, body, cfg.oem)


def build_hpet_table(cfg: PcAcpiConfig = PcAcpiConfig()) -> bytes:
    """HPET description table (IA-PC HPET spec 3.2.4): block id, base as a GAS, number, tick, protection."""
    from pemu.hw.i386 import memmap

    body = (struct.pack("<I", cfg.hpet_id)
            + GenericAddress(AddressSpace.SYSTEM_MEMORY, 0, memmap.HPET_BASE).pack()
            + struct.pack("<BHB", 0, 0, 0))
    return build_table("HPET", 1, body, cfg.oem)


ACPI_WAET_PM_TIMER_GOOD = 1 << 1


def build_waet(cfg: PcAcpiConfig = PcAcpiConfig()) -> bytes:
    """WAET: tells Windows-style guests the PM timer needs no workaround reads."""
    return build_table("WAET", 1, struct.pack("<I", ACPI_WAET_PM_TIMER_GOOD), cfg.oem)


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
MADT_PCI_IRQS = (5, 9, 10, 11)


def build_madt(cpus: int, cfg: PcAcpiConfig = PcAcpiConfig()) -> bytes:
    if not 1 <= cpus <= 255:
        raise ValueError(f"MADT: {cpus} CPUs do not fit xAPIC ids")
    body = struct.pack("<II", APIC_DEFAULT_ADDRESS, MADT_PCAT_COMPAT)
    for cpu in range(cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, MADT_LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, IOAPIC_ID, 0, IOAPIC_DEFAULT_ADDRESS,
                        IOAPIC_GSI_BASE)
    # The PIT's IRQ0 arrives on IOAPIC pin 2; the SCI and the ISA IRQs PCI
    # interrupts may be routed to are level-triggered, active high (as QEMU's
    # pci_irq_mask).
    body += struct.pack("<BBBBIH", MADT_INT_SRC_OVR, 10, 0, 0, 2, 0)
    for irq in sorted(set(MADT_PCI_IRQS) | {cfg.sci_irq}):
        body += struct.pack("<BBBBIH", MADT_INT_SRC_OVR, 10, 0, irq, irq,
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
    dsdt = place("DSDT", build_dsdt(cfg, with_apic))
    pointed = [place("FACP", build_fadt(facs, dsdt, with_apic, cpus, cfg))]
    if with_apic:
        pointed.append(place("APIC", build_madt(cpus, cfg)))
    if cfg.hpet:
        pointed.append(place("HPET", build_hpet_table(cfg)))
    if cfg.mcfg is not None:
        pointed.append(place("MCFG", build_mcfg(*cfg.mcfg, cfg)))
    if cfg.waet:
        pointed.append(place("WAET", build_waet(cfg)))
    rsdt = place("RSDT", build_rsdt(pointed, cfg.oem))
    xsdt = place("XSDT", build_xsdt(pointed, cfg.oem))
    rsdp = place("RSD PTR ", build_rsdp(rsdt, xsdt, cfg.oem.oem_id), RSDP_ALIGN)
    del tables["RSD PTR "]
    if base_addr + len(blob) > 1 << 32:
        raise ValueError("ACPI tables must lie below 4 GiB (RSDT holds 32-bit pointers)")
    return AcpiBuild(base_addr=base_addr, blob=bytes(blob), rsdp_addr=rsdp, tables=tables)


# --- tables for firmware boot (placed by the firmware, linked by etc/table-loader) -------------

ACPI_BUILD_TABLE_FILE = "etc/acpi/tables"
ACPI_BUILD_RSDP_FILE = "etc/acpi/rsdp"
ACPI_BUILD_LOADER_FILE = "etc/table-loader"


class AcpiFirmwareTables(NamedTuple):
    """The three fw_cfg files of QEMU's acpi_setup."""

    tables: bytes
    rsdp: bytes
    loader: bytes


def q35_acpi_config(below_4g_mem_size: int, hpet: bool, mcfg: tuple[int, int] | None,
                    serial_ports: tuple[tuple[int, int], ...] = ((0x3F8, 4),),
                    fw_cfg_io: tuple[int, int] | None = None) -> PcAcpiConfig:
    """The q35 board's tables: PCI0 with its windows and _PRT, the HPET, MCFG
    and WAET, and the fw_cfg device when ``fw_cfg_io`` is given."""
    hole_start = max(below_4g_mem_size, mcfg[0] + mcfg[1] if mcfg else 0)
    hole_start = -(-hole_start // (1 << 20)) * (1 << 20)
    return PcAcpiConfig(serial_ports=serial_ports, pci_host=True, pci_hole=(hole_start, IOAPIC_DEFAULT_ADDRESS - 1),
                        hpet=hpet, mcfg=mcfg, waet=True, fw_cfg_io=fw_cfg_io)


def build_acpi_tables_for_firmware(with_apic: bool, cpus: int,
                                   cfg: PcAcpiConfig = PcAcpiConfig()) -> AcpiFirmwareTables:
    """The same tables as :func:`build_acpi_tables`, as the blob
    ``etc/acpi/tables`` whose pointers hold offsets within it, the RSDP as
    ``etc/acpi/rsdp``, and the linker script that has the firmware allocate
    them (tables anywhere high, RSDP in the F segment), add the load address
    to every pointer and fix every checksum."""
    build = build_acpi_tables(0, with_apic, cpus, cfg)
    rsdp_off = build.rsdp_addr
    tables = build.blob[:rsdp_off]
    rsdp = build.blob[rsdp_off:rsdp_off + 36]
    T, R = ACPI_BUILD_TABLE_FILE, ACPI_BUILD_RSDP_FILE
    linker = BiosLinker()
    linker.add_allocate(T, len(tables), FACS_ALIGN, AllocZone.HIGH)
    linker.add_allocate(R, len(rsdp), RSDP_ALIGN, AllocZone.FSEG)

    def length_at(off: int) -> int:
        return int(struct.unpack_from("<I", tables, off + 4)[0])

    def pointer(dest: str, blob: bytes, field_off: int, size: int) -> None:
        target = int.from_bytes(blob[field_off:field_off + size], "little")
        linker.add_pointer(dest, field_off, size, T, target)

    fadt = build.tables["FACP"]
    for name, size in (("FIRMWARE_CTRL", 4), ("DSDT", 4), ("X_FIRMWARE_CTRL", 8), ("X_DSDT", 8)):
        pointer(T, tables, fadt + FADT_FIELD_OFFSETS[name], size)
    for sig, size in (("RSDT", 4), ("XSDT", 8)):
        off = build.tables[sig]
        for entry in range(off + 36, off + length_at(off), size):
            pointer(T, tables, entry, size)
    pointer(R, rsdp, 16, 4)
    pointer(R, rsdp, 24, 8)
    for sig, off in build.tables.items():
        if sig != "FACS":
            linker.add_checksum(T, off, length_at(off), off + 9)
    linker.add_checksum(R, 0, 20, 8)
    linker.add_checksum(R, 0, 36, 32)
    return AcpiFirmwareTables(tables, rsdp, linker.commands)
