"""The PC's fw_cfg contents (QEMU's hw/i386/fw_cfg.c and the fw_cfg parts of pc.c).

:func:`fw_cfg_arch_create` (called from pc_memory_init, as in the seed)
creates the device on ports 0x510/0x511 with DMA at 0x514 and fills the
items known then: signature, ID, UUID, RAM size, CPU counts, no-graphic,
boot menu, the IRQ0 override and the HPET description.  When the board is
complete, :func:`pc_fw_cfg_machine_done` adds the files the firmware reads:
``etc/e820``, ``bootorder``, ``etc/boot-fail-wait``, the SMBIOS tables and
anchor, the ACPI tables with ``etc/table-loader``, and the user's -fw_cfg
files.  :func:`fw_cfg_add_option_rom` offers an option ROM under
``genroms/`` and :func:`fw_cfg_add_linux_boot` the kernel items for
firmware boot with -kernel.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from pemu.hw.i386 import memmap
from pemu.hw.i386.e820 import E820Table, E820Type
from pemu.hw.nvram.fw_cfg import (
    FW_CFG_ARCH_LOCAL,
    FWCfgKey,
    FWCfgState,
    fw_cfg_add_user_files,
    fw_cfg_init_io_dma,
)

if TYPE_CHECKING:
    import uuid as uuid_mod  # imported where a UUID is parsed: uuid pulls in platform


class FWCfgX86Key:
    """The x86 arch-local items (QEMU's hw/i386/fw_cfg.h)."""

    ACPI_TABLES = FW_CFG_ARCH_LOCAL + 0
    SMBIOS_ENTRIES = FW_CFG_ARCH_LOCAL + 1
    IRQ0_OVERRIDE = FW_CFG_ARCH_LOCAL + 2
    E820_TABLE = FW_CFG_ARCH_LOCAL + 3
    HPET = FW_CFG_ARCH_LOCAL + 4


SMBIOS_TABLES_FILE = "etc/smbios/smbios-tables"
SMBIOS_ANCHOR_FILE = "etc/smbios/smbios-anchor"
BOOT_FAIL_WAIT_FILE = "etc/boot-fail-wait"
E820_FILE = "etc/e820"


def fw_cfg_arch_create(pcms: Any, boot_cpus: int, max_cpus: int, *, dma_as: Any = None,
                       system_uuid: uuid_mod.UUID | None = None, boot_menu: bool = False) -> FWCfgState:
    """Create the PC's fw_cfg and its fixed items; ``pcms.fw_cfg`` is set."""
    from pemu.hw.timer.hpet import hpet_fw_cfg_bytes
    from pemu.system.physmem import address_space_memory

    fw_cfg = fw_cfg_init_io_dma(memmap.FW_CFG_IO_BASE, memmap.FW_CFG_DMA_IO_BASE,
                                dma_as if dma_as is not None else address_space_memory(), machine=pcms)
    fw_cfg.add_bytes(FWCfgKey.UUID, system_uuid.bytes if system_uuid else bytes(16))
    fw_cfg.add_i16(FWCfgKey.NOGRAPHIC, 0 if pcms.graphics else 1)
    fw_cfg.add_i16(FWCfgKey.BOOT_MENU, 1 if boot_menu else 0)
    fw_cfg.add_i16(FWCfgKey.NB_CPUS, boot_cpus)
    fw_cfg.add_i16(FWCfgKey.MAX_CPUS, max_cpus)
    fw_cfg.add_i64(FWCfgKey.RAM_SIZE, pcms.ram_size)
    fw_cfg.add_i32(FWCfgX86Key.IRQ0_OVERRIDE, 1)
    fw_cfg.add_bytes(FWCfgX86Key.HPET, hpet_fw_cfg_bytes(0x8086A201))
    fw_cfg.update_bootorder()
    # -1: no automatic reboot when booting fails (QEMU's -boot reboot-timeout default).
    fw_cfg.add_file(BOOT_FAIL_WAIT_FILE, struct.pack("<i", -1))
    pcms.fw_cfg = fw_cfg
    return fw_cfg


def fw_cfg_e820_table(below_4g_mem_size: int, above_4g_mem_size: int) -> E820Table:
    """What QEMU puts in etc/e820: the RAM (the firmware adds its own holes)."""
    e820 = E820Table()
    if below_4g_mem_size:
        e820.add(0, below_4g_mem_size, E820Type.RAM)
    if above_4g_mem_size:
        e820.add(memmap.FOUR_GIB, above_4g_mem_size, E820Type.RAM)
    return e820


def fw_cfg_build_smbios(fw_cfg: FWCfgState, pcms: Any, smbios_cfg: Any = None) -> None:
    from pemu.hw.smbios.smbios import SmbiosConfig, smbios_get_tables

    cfg = smbios_cfg or pcms.smbios_config or SmbiosConfig()
    manufacturer, product, version = pcms.smbios_defaults
    cfg.set_defaults(manufacturer, product, version)
    ranges = [(e.addr, e.length) for e in fw_cfg_e820_table(pcms.below_4g_mem_size, pcms.above_4g_mem_size)]
    smp = pcms.smp
    tables = smbios_get_tables(cfg, pcms.ram_size, ranges, sockets=max(1, smp.sockets),
                               cores=max(1, smp.cores), threads=max(1, smp.threads))
    fw_cfg.add_file(SMBIOS_TABLES_FILE, tables.tables)
    fw_cfg.add_file(SMBIOS_ANCHOR_FILE, tables.anchor)


def fw_cfg_add_acpi(fw_cfg: FWCfgState, tables: Any) -> None:
    """The three files of QEMU's acpi_setup (an AcpiFirmwareTables)."""
    from pemu.hw.i386.acpi_build import ACPI_BUILD_LOADER_FILE, ACPI_BUILD_RSDP_FILE, ACPI_BUILD_TABLE_FILE

    fw_cfg.add_file(ACPI_BUILD_TABLE_FILE, tables.tables)
    fw_cfg.add_file(ACPI_BUILD_RSDP_FILE, tables.rsdp)
    fw_cfg.add_file(ACPI_BUILD_LOADER_FILE, tables.loader)


def fw_cfg_add_option_rom(fw_cfg: FWCfgState, name: str, data: bytes, bootindex: int | None = None) -> None:
    """Offer an option ROM (linuxboot_dma.bin, a NIC's ROM) as genroms/<name>;
    with ``bootindex`` it is also a boot device ("/rom@genroms/<name>" in bootorder)."""
    fw_cfg.add_file(f"genroms/{name}", data)
    if bootindex is not None:
        fw_cfg.add_boot_device(bootindex, f"/rom@genroms/{name}")


def fw_cfg_add_linux_boot(fw_cfg: FWCfgState, *, setup: bytes, setup_addr: int, kernel: bytes,
                          kernel_addr: int, cmdline: bytes, cmdline_addr: int,
                          initrd: bytes | None = None, initrd_addr: int = 0) -> None:
    """The kernel items that linuxboot(_dma).bin reads (as QEMU's x86_load_linux)."""
    fw_cfg.add_i32(FWCfgKey.SETUP_ADDR, setup_addr)
    fw_cfg.add_i32(FWCfgKey.SETUP_SIZE, len(setup))
    fw_cfg.add_bytes(FWCfgKey.SETUP_DATA, setup)
    fw_cfg.add_i32(FWCfgKey.KERNEL_ADDR, kernel_addr)
    fw_cfg.add_i32(FWCfgKey.KERNEL_SIZE, len(kernel))
    fw_cfg.add_bytes(FWCfgKey.KERNEL_DATA, kernel)
    fw_cfg.add_i32(FWCfgKey.CMDLINE_ADDR, cmdline_addr)
    fw_cfg.add_i32(FWCfgKey.CMDLINE_SIZE, len(cmdline) + 1)
    fw_cfg.add_bytes(FWCfgKey.CMDLINE_DATA, cmdline + b"\0")
    if initrd is not None:
        fw_cfg.add_i32(FWCfgKey.INITRD_ADDR, initrd_addr)
        fw_cfg.add_i32(FWCfgKey.INITRD_SIZE, len(initrd))
        fw_cfg.add_bytes(FWCfgKey.INITRD_DATA, initrd)


def pc_fw_cfg_machine_done(pcms: Any, acpi_tables: Any | None) -> None:
    """Add the board-wide files once every device exists (pc_machine_done)."""
    fw_cfg: FWCfgState | None = pcms.fw_cfg
    if fw_cfg is None:
        return
    e820 = fw_cfg_e820_table(pcms.below_4g_mem_size, pcms.above_4g_mem_size)
    fw_cfg.add_file(E820_FILE, e820.to_fw_cfg_bytes())
    fw_cfg_build_smbios(fw_cfg, pcms)
    if acpi_tables is not None:
        fw_cfg_add_acpi(fw_cfg, acpi_tables)
    fw_cfg_add_user_files(fw_cfg, list(pcms.fw_cfg_user_files))
