"""Every fixed address of the q35 PC in one place.

These are the guest-visible constants of QEMU's q35 machine; the code that
maps something at one of them names the constant from here.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Low memory.
LOW_RAM_END = 0xA0000  # end of conventional memory (640 KiB)
VGA_WINDOW = 0xA0000  # legacy VGA window, 128 KiB
VGA_WINDOW_SIZE = 0x20000
PC_ROM_MIN_VGA = 0xC0000  # pc.rom: option ROM space
PC_ROM_MAX = 0xE0000
PC_ROM_SIZE = PC_ROM_MAX - PC_ROM_MIN_VGA
ISA_BIOS_SIZE = 128 * KiB  # the isa-bios alias ends at 1 MiB
ISA_BIOS_END = 1 * MiB
# Where a direct boot's firmware stub carries a copy of the ACPI RSDP: the
# stub's first bytes, seen at 0xF0000 through isa-bios, in the BIOS area
# (0xE0000-0xFFFFF) that firmware-less guests scan for "RSD PTR ".
DIRECT_BOOT_RSDP = 0xF0000
HIGH_MEMORY = 1 * MiB

# q35's split of RAM around the 32-bit PCI hole.
Q35_LOWMEM_DEFAULT = 0xB0000000  # RAM below 4G goes up to the MMCONFIG window
Q35_LOWMEM_GIGABYTE_ALIGNED = 0x80000000  # ... or to 2 GiB when RAM reaches that window
FOUR_GIB = 1 << 32

# Fixed windows below 4 GiB.
MCH_PCIEXBAR_DEFAULT = 0xB0000000  # PCIe MMCONFIG (ECAM)
MCH_PCIEXBAR_SIZE = 0x10000000  # 256 buses
IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
HPET_BASE = 0xFED00000
HPET_SIZE = 0x400
ICH9_RCBA_BASE = 0xFED1C000
ICH9_RCBA_SIZE = 0x4000
APIC_BASE = 0xFEE00000
APIC_SPACE_SIZE = 0x100000

# The firmware image ends at 4 GiB.
BIOS_END = FOUR_GIB
DEVICE_MEMORY_ALIGN = 1 * GiB

# Port I/O.
PIC_MASTER_IOBASE = 0x20
PIC_SLAVE_IOBASE = 0xA0
PIT_IOBASE = 0x40
PCSPK_IOBASE = 0x61
I8042_DATA = 0x60
I8042_CMD = 0x64
RTC_IOBASE = 0x70
RTC_ISA_IRQ = 8
IOPORT80 = 0x80
PORT92 = 0x92
ELCR_IOBASE = 0x4D0
COM_IOBASES = (0x3F8, 0x2F8, 0x3E8, 0x2E8)
COM_IRQS = (4, 3, 4, 3)
FW_CFG_IO_BASE = 0x510
FW_CFG_DMA_IO_BASE = 0x514
ICH9_PMBASE = 0x600
ICH9_RST_CNT = 0xCF9
PCI_CONFIG_ADDR = 0xCF8
PCI_CONFIG_DATA = 0xCFC

# Direct Linux boot (no firmware): where the loader puts its pieces.
BOOT_PARAMS_ADDR = 0x7000
CMDLINE_ADDR = 0x20000
KERNEL_LOAD_ADDR = 0x100000
