"""The q35 machine types (QEMU's hw/i386/pc_q35.c) and their board init.

Each versioned type ("pc-q35-7.2") is a subclass of the PC machine whose
class_init fills the MachineClass (seed: pc_machine_##suffix##_class_init
sets mc->init = pc_q35_init); the newest carries the alias "q35".
"""

from __future__ import annotations

from typing import Any

from pemu.hw.core.machine import machine_type_name
from pemu.hw.core.qdev import qdev_new, qdev_realize, qemu_register_reset
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.i386 import memmap
from pemu.hw.i386.pc import (
    TYPE_PC_MACHINE,
    PCMachineClass,
    PCMachineState,
    pc_apic_init,
    pc_check_apic_ids,
    pc_memory_init,
    placeholder_region,
)
from pemu.hw.i386.pc_sysfw import DIRECT_BOOT_FIRMWARE
from pemu.hw.i386.x86 import x86_cpus_init, x86_load_linux, x86_ram_split
from pemu.hw.isa.lpc_ich9 import ICH9LPCState
from pemu.hw.pci_host.q35 import (
    MCHPCIState,
    Q35PCIHost,
    mch_init_pam,
    mch_init_pciexbar,
    mch_init_smram,
    mch_set_tolud,
)
from pemu.qom.object import ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion
from pemu.system.physmem import get_system_io, get_system_memory

Q35_MACHINE_VERSIONS = ("7.2", "7.1", "7.0", "6.2", "6.1", "6.0")
Q35_LATEST = Q35_MACHINE_VERSIONS[0]


def smbios_set_defaults(pcms: PCMachineState, manufacturer: str, product: str, version: str) -> None:
    """Record the SMBIOS identity the tables will carry (seed: smbios_set_defaults)."""
    pcms.smbios_defaults = (manufacturer, product, version)


def q35_ram_split(ram_size: int, gigabyte_align: bool, max_ram_below_4g: int = 0) -> tuple[int, int]:
    """(RAM below 4G, RAM above 4G) on q35.

    RAM up to the MMCONFIG window (0xB0000000) stays below 4G; with that
    much RAM or more, q35 keeps 2 GiB below 4G (gigabyte alignment, on for
    current machine types) and puts the rest from 4G up.  A max-ram-below-4g
    setting lowers the limit further.
    """
    lowmem = memmap.Q35_LOWMEM_DEFAULT
    if gigabyte_align and ram_size >= memmap.Q35_LOWMEM_DEFAULT:
        lowmem = memmap.Q35_LOWMEM_GIGABYTE_ALIGNED
    if max_ram_below_4g:
        if max_ram_below_4g > memmap.FOUR_GIB:
            raise QOMError("max-ram-below-4g must be at most 4G")
        lowmem = min(lowmem, max_ram_below_4g)
    return x86_ram_split(ram_size, lowmem)


def q35_direct_boot_chipset_setup(lpc: Any, smb: Any, kbd: Any) -> None:
    """The chipset programming SeaBIOS does before it boots Linux, for a
    direct boot: the LPC's PM block, PIRQ routes, RCBA and ELCR, the SMBus
    host interface and the keyboard controller's command byte.  Runs after
    the devices' own reset."""
    from pemu.hw.isa.lpc_ich9 import ich9_lpc_direct_boot_setup

    ich9_lpc_direct_boot_setup(lpc)
    if kbd is not None:
        kbd.model.firmware_setup()
    if smb is not None:
        from pemu.hw.i2c.smbus_ich9 import ich9_smb_direct_boot_setup

        ich9_smb_direct_boot_setup(smb)


def _q35_connect_ioapic_gsis(pcms: PCMachineState, lpc: Any) -> None:
    """With an IOAPIC (pemu's, or KVM's in-kernel irqchip), PIRQ A-H also
    drive GSI 16-23, where the APIC-model _PRT sends them."""
    accel = pcms.vm.accel
    if accel is not None and accel.irqchip_in_kernel():
        lpc.gsi_lines = accel.irqchip_gsi_lines()
    elif pcms.ioapic is not None:
        lpc.gsi_lines = list(pcms.gsi)


def pc_q35_init(machine: Any) -> None:
    """Build the q35 board (seed: pc_q35_init)."""
    from pemu.hw.i386.pc import pc_basic_device_init, pc_late_init

    pcms: PCMachineState = machine
    pcmc = object_class_check(pcms.klass, PCMachineClass)

    pcms.below_4g_mem_size, pcms.above_4g_mem_size = q35_ram_split(
        machine.ram_size, pcmc.gigabyte_align, pcms.max_ram_below_4g)

    pc_check_apic_ids(pcms)
    x86_cpus_init(pcms)

    system_memory = get_system_memory()
    system_io = get_system_io()

    # The PCI address space sits under system memory at the lowest priority:
    # whatever RAM and fixed devices leave free decodes to PCI.
    pci_memory = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    system_memory.add_subregion_overlap(0, pci_memory, -1)
    pcms.pci_memory = pci_memory
    rom_memory = pci_memory
    # QEMU's default machine has a VGA whose legacy window claims 0xA0000-0xBFFFF
    # in PCI space (the MCH shows PCI there while SMRAM is closed).  pemu has no
    # VGA: a placeholder keeps the window off the RAM below it, as in QEMU.
    vga_window = placeholder_region(pcms, "vga-lowmem", memmap.VGA_WINDOW_SIZE)
    pci_memory.add_subregion_overlap(memmap.VGA_WINDOW, vga_window, 1)

    smbios_set_defaults(pcms, "QEMU", "Standard PC (Q35 + ICH9, 2009)", machine.mc.name)

    pc_memory_init(pcms, system_memory, rom_memory)

    # The host bridge and its PCIe root bus; the LPC bridge with the ISA bus.
    host = qdev_new("q35-pcihost")
    assert isinstance(host, Q35PCIHost)
    pcms.add_child("q35", host)
    host.unref()
    host.pci_address_space = pci_memory  # where memory BARs map (QEMU's pci-address-space link)
    sysbus_realize(host)
    pcms.pcibus = host.bus
    mch = host.mch
    assert isinstance(mch, MCHPCIState) and machine.ram is not None
    mch_init_pam(mch, machine.ram, pci_memory, system_memory)
    mch_init_smram(mch, pci_memory, system_memory)
    mch_set_tolud(mch, pcms.below_4g_mem_size)

    lpc = qdev_new("ICH9-LPC")
    assert isinstance(lpc, ICH9LPCState)
    lpc.property_set("addr", "1f.0")
    lpc.property_set("multifunction", True)
    qdev_realize(lpc, pcms.pcibus)
    lpc.unref()
    pcms.lpc = lpc
    pcms.isabus = lpc.isa_bus

    # The SMBus controller, function 3 of the LPC's slot.
    smb = None
    if pcms.smbus_enabled:
        from pemu.hw.i2c.smbus_eeprom import SMBUS_EEPROM_MAX, smbus_eeprom_init
        from pemu.hw.i2c.smbus_ich9 import ICH9SMBState  # (and registers the type)

        smb = object_check(qdev_new("ICH9-SMB"), ICH9SMBState)
        smb.property_set("addr", "1f.3")
        qdev_realize(smb, pcms.pcibus)
        smb.unref()
        pcms.smbus = smb.smbus
        # The memory modules' SPD EEPROMs, empty as in QEMU's q35.
        smbus_eeprom_init(smb.smbus, SMBUS_EEPROM_MAX)

    # Fixed windows whose devices come later.
    # The ECAM window at 0xB0000000.  QEMU leaves PCIEXBAREN clear at reset
    # for SeaBIOS to set; pemu sets it from reset so that direct boot (no
    # firmware) finds the window the MCFG table describes, and SeaBIOS writes
    # the same value again.
    mch_init_pciexbar(mch, pcms.pcibus, system_memory, enabled_at_reset=True)
    pc_apic_init(pcms)
    if pcms.apic_bus is None:
        system_memory.add_subregion(memmap.IOAPIC_BASE, placeholder_region(pcms, "ioapic", memmap.IOAPIC_SIZE))
        apic_msi = placeholder_region(pcms, "apic-msi", memmap.APIC_SPACE_SIZE)
        system_memory.add_subregion_overlap(memmap.APIC_BASE, apic_msi, 4096)

    pc_basic_device_init(pcms, pcms.isabus, system_io)
    _q35_connect_ioapic_gsis(pcms, lpc)

    direct_boot = machine.kernel is not None and pcms.bios_source == DIRECT_BOOT_FIRMWARE
    if direct_boot:
        # No firmware will program the chipset: do at every reset what SeaBIOS would.
        qemu_register_reset(lambda: q35_direct_boot_chipset_setup(lpc, smb, pcms.i8042))
    pc_late_init(pcms)

    if machine.kernel is not None:
        x86_load_linux(pcms, firmware_boot=not direct_boot)


def _q35_machine_options(k: ObjectClass, version: str) -> None:
    pcmc = object_class_check(k, PCMachineClass)
    pcmc.desc = "Standard PC (Q35 + ICH9, 2009)"
    pcmc.init = pc_q35_init
    pcmc.default_cpu_type = "qemu64-x86_64-cpu"
    pcmc.max_cpus = 288
    pcmc.no_floppy = True
    pcmc.units_per_default_bus = 1
    pcmc.default_display = "std"
    if version == Q35_LATEST:
        pcmc.alias = "q35"
        pcmc.is_default = True


def _register_q35_types() -> None:
    for version in Q35_MACHINE_VERSIONS:
        def class_init(klass: ObjectClass, data: Any, version: str = version) -> None:
            _q35_machine_options(klass, version)

        type_register(TypeInfo(machine_type_name(f"pc-q35-{version}"), parent=TYPE_PC_MACHINE,
                               class_init=class_init))


_register_q35_types()
