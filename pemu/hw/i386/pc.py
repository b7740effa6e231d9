"""The PC machine (QEMU's hw/i386/pc.c): TYPE_PC_MACHINE, its memory map
(pc_memory_init) and its legacy devices (pc_basic_device_init)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pemu.hw.core.machine import MachineState, qemu_devices_reset
from pemu.hw.core.qdev import qdev_new, qdev_realize, qdev_realize_and_unref
from pemu.hw.i386 import memmap
from pemu.hw.i386.e820 import E820Table, E820Type
from pemu.hw.i386.pc_sysfw import DIRECT_BOOT_FIRMWARE, load_firmware_image, pc_system_firmware_init
from pemu.hw.i386.x86 import TYPE_X86_MACHINE, X86MachineClass, X86MachineState, linux_boot_apply
from pemu.hw.isa.pc_legacy import ISAPICState, ISASerialState, PCSpkState
from pemu.qom.object import Object, ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system import cpus
from pemu.system.memory import MemoryRegion, MemoryRegionOps
from pemu.util.log import LOG_UNIMP, qemu_log_mask

if TYPE_CHECKING:
    from pemu.chardev.char import Chardev

TYPE_PC_MACHINE = "generic-pc-machine"


class PCMachineClass(X86MachineClass):
    pci_enabled: bool = True
    has_reserved_memory: bool = True
    has_acpi_build: bool = True
    gigabyte_align: bool = True
    pci_root_uid: int = 0


class PCMachineState(X86MachineState):
    pci_memory: MemoryRegion | None
    pcibus: Any
    isabus: Any
    bios: MemoryRegion | None
    bios_source: str
    hpet_enabled: bool
    smbus_enabled: bool
    sata_enabled: bool
    max_fw_size: int
    placeholders: list[MemoryRegion]
    i8042: Any
    apic_bus: Any  # pemu.hw.intc.apic_common.APICBus when the CPUs have local APICs
    ioapic: Any  # the "ioapic" device on that bus
    i8259: Any  # the 8259 pair (isa-i8259), None under an in-kernel irqchip
    hpet_dev: Any
    lpc: Any  # ICH9 LPC (q35)
    smbus: Any  # ICH9 SMBus (q35), when enabled
    smbios_defaults: tuple[str, str, str]  # manufacturer, product, version
    vmport: str  # OnOffAuto; pemu has no VMware backdoor port, so "auto" is off


def _pc_machine_initfn(obj: Object) -> None:
    pcms = object_check(obj, PCMachineState)
    pcms.pci_memory = None
    pcms.pcibus = None
    pcms.isabus = None
    pcms.bios = None
    pcms.bios_source = ""
    pcms.placeholders = []
    pcms.i8042 = None
    pcms.apic_bus = None
    pcms.ioapic = None
    pcms.i8259 = None
    pcms.hpet_dev = None
    pcms.lpc = None
    pcms.smbus = None
    pcms.smbios_defaults = ("QEMU", "Standard PC", "pc")


def pc_machine_reset(machine: MachineState) -> None:
    """The PC's system reset (QEMU's pc_machine_reset): devices, then CPUs,
    then the direct-boot setup is written again (a reboot boots the same kernel)."""
    x86ms = object_check(machine, X86MachineState)
    qemu_devices_reset(machine)
    for cpu in x86ms.cpus:
        cpus.cpu_reset(cpu)
    linux_boot_apply(x86ms)


def _pc_machine_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCMachineClass)
    k.default_ram_size = 128 << 20
    k.reset = pc_machine_reset
    k.default_ram_id = "pc.ram"
    k.default_nic = "e1000e"
    k.property_add_field("hpet", "bool", attr="hpet_enabled", default=True, description="Enable HPET")
    k.property_add_field("smbus", "bool", attr="smbus_enabled", default=True, description="Enable/disable SMBus")
    k.property_add_field("sata", "bool", attr="sata_enabled", default=True, description="Enable/disable Serial ATA bus")
    k.property_add_field("max-fw-size", "size", default=8 << 20,
                         description="Maximum combined firmware size")
    k.property_add_field("vmport", "OnOffAuto", default="auto", enum_values=("on", "off", "auto"),
                         description="Enable vmport (pc & q35)", check=_vmport_check)


def _vmport_check(obj: Object, value: Any) -> None:
    """QEMU's vmport device answers the VMware backdoor (port 0x5658) from the
    calling CPU's registers, which pemu's port handlers do not see."""
    if value == "on":
        raise QOMError("the VMware I/O port (vmport) is not supported by pemu")


type_register(TypeInfo(TYPE_PC_MACHINE, parent=TYPE_X86_MACHINE, abstract=True, instance_type=PCMachineState,
                       class_type=PCMachineClass, class_init=_pc_machine_class_init,
                       instance_init=_pc_machine_initfn))


# --- placeholders for devices of later milestones ---------------------------------------------


def placeholder_region(pcms: PCMachineState, name: str, size: int) -> MemoryRegion:
    """An MMIO window whose device is not implemented yet: reads all-ones,
    drops writes, logs under -d unimp, and shows as [placeholder] in
    `info mtree`."""

    def read(offset: int, size_: int) -> int:
        qemu_log_mask(LOG_UNIMP, f"{name}: unimplemented read at offset {offset:#x}")
        return (1 << (8 * size_)) - 1

    def write(offset: int, value: int, size_: int) -> None:
        qemu_log_mask(LOG_UNIMP, f"{name}: unimplemented write at offset {offset:#x}")

    mr = MemoryRegion.io(name, size, MemoryRegionOps(read, write, 1, 8, True, 1, 8))
    mr.placeholder = True
    pcms.placeholders.append(mr)
    return mr


# --- memory map -------------------------------------------------------------------------


def pc_memory_init(pcms: PCMachineState, system_memory: MemoryRegion, rom_memory: MemoryRegion) -> None:
    """Lay out RAM, firmware and option-ROM space (seed: pc_memory_init)."""
    machine = pcms
    pcmc = object_class_check(pcms.klass, PCMachineClass)
    ram = machine.ram
    assert ram is not None

    # RAM below 4G from 0, the rest from 4G up: two windows of the one block.
    ram_below_4g = MemoryRegion.alias("ram-below-4g", ram, 0, pcms.below_4g_mem_size)
    system_memory.add_subregion(0, ram_below_4g)
    if pcms.above_4g_mem_size > 0:
        ram_above_4g = MemoryRegion.alias("ram-above-4g", ram, pcms.below_4g_mem_size, pcms.above_4g_mem_size)
        system_memory.add_subregion(memmap.FOUR_GIB, ram_above_4g)

    # Memory for hot-plugged DIMMs, between the end of RAM and maxmem.
    if pcmc.has_reserved_memory and machine.ram_size < machine.maxram_size:
        if machine.ram_slots == 0:
            raise QOMError("memory slots must be set when maxmem is larger than memory size")
        base = _align_up(memmap.FOUR_GIB + pcms.above_4g_mem_size, memmap.DEVICE_MEMORY_ALIGN)
        size = machine.maxram_size - machine.ram_size
        machine.device_memory = MemoryRegion.container("device-memory", size)
        machine.device_memory_base = base
        system_memory.add_subregion(base, machine.device_memory)

    # The firmware: its image ends at 4G, its isa-bios alias ends at 1M.
    image, source = load_firmware_image(machine.firmware, machine.kernel is not None, pcms.data_dirs)
    if len(image) > pcms.max_fw_size:
        raise QOMError(f"Total firmware size {len(image)} exceeds maximum of {pcms.max_fw_size}")
    pcms.bios = pc_system_firmware_init(rom_memory, image)
    pcms.bios_source = source

    # Option ROM space below the BIOS.
    option_rom = MemoryRegion.rom("pc.rom", memmap.PC_ROM_SIZE)
    rom_memory.add_subregion_overlap(memmap.PC_ROM_MIN_VGA, option_rom, 1)

    # The firmware configuration device (fw_cfg_arch_create, as in the seed).
    from pemu.hw.i386.fw_cfg import fw_cfg_arch_create

    fw_cfg_arch_create(pcms, machine.smp.cpus, machine.smp.max_cpus)


def pc_build_e820(pcms: PCMachineState, tables_base: int | None = None) -> E820Table:
    """The memory map the guest is told about, with the same holes QEMU and
    SeaBIOS report: the EBDA, the BIOS area below 1M, firmware tables at the
    top of low RAM (from ``tables_base``), MMCONFIG, the ICH9 RCRB and the
    firmware ROM."""
    e820 = E820Table()
    low_end = pcms.below_4g_mem_size if tables_base is None else tables_base
    e820.add(0, 0x9FC00, E820Type.RAM)
    e820.add(0x9FC00, 0x400, E820Type.RESERVED)
    e820.add(0xF0000, 0x10000, E820Type.RESERVED)
    e820.add(memmap.HIGH_MEMORY, low_end - memmap.HIGH_MEMORY, E820Type.RAM)
    if tables_base is not None and tables_base < pcms.below_4g_mem_size:
        e820.add(tables_base, pcms.below_4g_mem_size - tables_base, E820Type.RESERVED)
    e820.add(memmap.MCH_PCIEXBAR_DEFAULT, memmap.MCH_PCIEXBAR_SIZE, E820Type.RESERVED)
    e820.add(memmap.ICH9_RCBA_BASE, memmap.ICH9_RCBA_SIZE, E820Type.RESERVED)
    if pcms.bios is not None:
        e820.add(memmap.BIOS_END - pcms.bios.size, pcms.bios.size, E820Type.RESERVED)
    if pcms.above_4g_mem_size:
        e820.add(memmap.FOUR_GIB, pcms.above_4g_mem_size, E820Type.RAM)
    return e820


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def pc_machine_device_memory_size(pcms: PCMachineState) -> int:
    return pcms.maxram_size - pcms.ram_size


# --- legacy devices --------------------------------------------------------------------------


class _CPUInterruptLine:
    """The 8259's INTR output (QEMU's pic_irq_request): the LINT0 input of
    every local APIC that accepts it, or without APICs the boot CPU's hard
    interrupt request."""

    def __init__(self, pcms: PCMachineState) -> None:
        from pemu.target.i386.cpu import x86_cpu_pic_intr

        self.pcms = pcms
        # Bound once: this runs on every edge of the PIC's output.
        self._raise = cpus.cpu_interrupt
        self._lower = cpus.cpu_reset_interrupt
        self._hard = cpus.CPU_INTERRUPT_HARD
        self._pic_intr = x86_cpu_pic_intr

    def set(self, level: int) -> None:
        cpus = self.pcms.cpus
        if cpus[0].apic is not None:
            for cpu in cpus:
                self._pic_intr(cpu, level)
            return
        if level:
            self._raise(cpus[0], self._hard)
        else:
            self._lower(cpus[0], self._hard)


def _current_cpu_apic() -> Any:
    """The local APIC of the CPU making the access (None off a vCPU: a device's write)."""
    from pemu.system.cpus import current_cpu

    cpu = current_cpu()
    return None if cpu is None else cpu.apic


def pc_check_apic_ids(pcms: PCMachineState) -> None:
    """pemu's own APICs are xAPICs (no x2APIC on the stock engine): APIC IDs
    0-254, checked before any CPU is made."""
    from pemu.hw.intc.apic_common import APIC_MAX_XAPIC_ID

    top = pcms.smp.cpus - 1
    accel = pcms.vm.accel
    if top > APIC_MAX_XAPIC_ID and not (accel is not None and accel.irqchip_in_kernel()):
        raise QOMError(f"-smp {pcms.smp.cpus} needs APIC ID {top}: pemu's APICs take APIC ID "
                       f"{APIC_MAX_XAPIC_ID} at most without x2APIC")


def pc_apic_init(pcms: PCMachineState) -> None:
    """The machine's APIC bus with every CPU's local APIC on it, the one
    "apic-msi" window at 0xFEE00000 through which each CPU reaches its own
    APIC and devices send MSIs (QEMU maps it in x86_cpu_apic_realize), and
    the I/O APIC at 0xFEC00000 (QEMU's ioapic_init_gsi).  Nothing without
    local APICs (under kvm with the in-kernel irqchip they are KVM's)."""
    from pemu.hw.core.sysbus import sysbus_realize
    from pemu.hw.intc.apic import APICMemory
    from pemu.hw.intc.apic_common import APIC_PAGE_SIZE, APICBus
    from pemu.hw.intc.ioapic import TYPE_IOAPIC, IOAPICState
    from pemu.system.physmem import get_system_memory

    apics = [cpu.apic for cpu in pcms.cpus if cpu.apic is not None]
    if not apics:
        return
    pcms.vm.msi_nonbroken = True  # MSIs reach the APIC bus through the apic-msi window
    bus = APICBus()
    for apic in apics:
        bus.attach(apic)
    pcms.apic_bus = bus
    pcms.vm.msi_nonbroken = True
    window = APICMemory(bus, _current_cpu_apic)
    get_system_memory().add_subregion_overlap(memmap.APIC_BASE, window.region(owner=pcms), APIC_PAGE_SIZE)
    ioapic = object_check(qdev_new(TYPE_IOAPIC), IOAPICState)
    pcms.add_child("ioapic", ioapic)
    ioapic.unref()
    sysbus_realize(ioapic)
    ioapic.mmio_map(0, memmap.IOAPIC_BASE)
    bus.attach_ioapic(ioapic.model)
    pcms.ioapic = ioapic


def pc_kvm_msi_region(pcms: PCMachineState, accel: Any) -> MemoryRegion:
    """The "apic-msi" window when the accelerator has the local APICs (QEMU's
    kvm-apic-msi): a device's 32-bit write there is an MSI for the kernel."""

    def read(offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(offset: int, value: int, size: int) -> None:
        accel.send_msi(memmap.APIC_BASE + offset, value & 0xFFFFFFFF)

    pcms.vm.msi_nonbroken = True
    return MemoryRegion.io("apic-msi", memmap.APIC_SPACE_SIZE, MemoryRegionOps(read, write, 1, 4, False, 4, 4),
                           owner=pcms)


def pc_nic_init(pcms: PCMachineState, pci_bus: Any) -> None:
    """The NICs of -nic and -net nic, on the PCI bus (QEMU's pc_nic_init)."""
    net = pcms.vm.net
    if net is None:
        return
    from pemu.net.nic import qdev_set_nic_properties
    from pemu.system.qdev_monitor import module_object_class_by_name

    for nd in net.nd_table:
        module_object_class_by_name(nd.model)  # imports the NIC model's module
        dev = qdev_new(nd.model)
        qdev_set_nic_properties(dev, nd)
        qdev_realize(dev, pci_bus)
        dev.unref()


def pc_gsi_lines(pcms: PCMachineState, pic_lines: list[Any]) -> list[Any]:
    """The GSIs (QEMU's GSIState and gsi_handler): ISA IRQs 0-15 reach both
    the 8259 and I/O APIC pins 0-15, GSIs 16-23 only the I/O APIC."""
    from pemu.hw.core.irq import SplitIRQ

    if pcms.ioapic is None:
        return list(pic_lines)
    pins = [pcms.ioapic.get_gpio_in(n) for n in range(24)]
    return [SplitIRQ(pic_lines[n], pins[n]) for n in range(16)] + pins[16:]


def _isa_create(pcms: PCMachineState, isa_bus: Any, typename: str,
                configure: Callable[[Any], None] | None = None) -> Any:
    """Make, wire (``configure`` sets the device's declared links before
    realize) and realize one ISA device of the board."""
    dev = qdev_new(typename)
    if configure is not None:
        configure(dev)
    qdev_realize(dev, isa_bus)
    dev.unref()
    return dev


def pc_basic_device_init(pcms: PCMachineState, isa_bus: Any, system_io: MemoryRegion) -> None:
    """The PC's legacy devices: interrupt controllers, timers, CMOS, keyboard
    controller, ports 0x61/0x80/0x92 and the serial ports (pc_basic_device_init,
    pc_i8259_create, serial_hds_isa_init)."""
    from pemu.hw.isa.isa_bus import isa_bus_irqs

    # Under KVM with kernel-irqchip=on the 8259s, the IOAPIC and the 8254
    # (with the speaker port 0x61) are the kernel's: ISA lines go to KVM.
    accel = pcms.vm.accel
    irqchip_in_kernel = accel is not None and accel.irqchip_in_kernel()
    if irqchip_in_kernel:
        assert accel is not None
        lines = accel.irqchip_gsi_lines()[:16]
        isa_bus_irqs(isa_bus, list(lines))
        pcms.gsi = list(lines)
        from pemu.hw.i386.kvm.irqchip import TYPE_KVM_IRQCHIP

        qdev_realize_and_unref(qdev_new(TYPE_KVM_IRQCHIP), None)   # saves and loads the kernel's state
    else:
        from pemu.target.i386.cpu import x86_cpu_connect_pic

        def connect_intr(dev: ISAPICState) -> None:
            dev.int_output = _CPUInterruptLine(pcms)

        pic = _isa_create(pcms, isa_bus, "isa-i8259", connect_intr)
        pcms.gsi = pc_gsi_lines(pcms, pic.model.get_irq_lines())
        isa_bus_irqs(isa_bus, pcms.gsi[:16])
        pcms.i8259 = pic
        for cpu in pcms.cpus:
            x86_cpu_connect_pic(cpu, pic.model.read_irq)

    hpet = pc_hpet_init(pcms) if pcms.hpet_enabled else None
    pcms.rtc = _isa_create(pcms, isa_bus, "mc146818rtc")
    if not irqchip_in_kernel:
        pit = _isa_create(pcms, isa_bus, "isa-pit")
        def link_pit(dev: PCSpkState) -> None:
            dev.pit = pit

        _isa_create(pcms, isa_bus, "isa-pcspk", link_pit)
        if hpet is not None:
            # Legacy replacement mode hands IRQ 0 to HPET timer 0: the HPET
            # cuts the PIT's output off (QEMU connects HPET gpio-out 0 to the PIT).
            hpet.pit_enabled_cb = pit.model.irq_control
    pcms.i8042 = _isa_create(pcms, isa_bus, "i8042")
    _isa_create(pcms, isa_bus, "port92")
    _isa_create(pcms, isa_bus, "ioport80")
    for i in range(4):
        chr_ = pcms.vm.serial_hd(i)
        if chr_ is not None:
            def attach(dev: ISASerialState, chr_: Chardev = chr_) -> None:
                dev.chr = chr_

            _isa_create(pcms, isa_bus, "isa-serial", attach)


def pc_hpet_init(pcms: PCMachineState) -> Any:
    """The HPET at 0xFED00000 with its interrupt outputs on the GSIs (pc_hpet_init).
    Without an IOAPIC only GSIs 0-15 exist: the guest uses the legacy
    replacement route (timer 0 on IRQ 0, timer 1 on IRQ 8)."""
    from pemu.hw.core.sysbus import sysbus_realize
    from pemu.hw.timer.hpet import TYPE_HPET, HPETState

    hpet = object_check(qdev_new(TYPE_HPET), HPETState)
    sysbus_realize(hpet)  # adopted under /machine/unattached
    hpet.unref()
    hpet.mmio_map(0, memmap.HPET_BASE)
    for n, line in enumerate(pcms.gsi):
        hpet.connect_irq(n, line)
    pcms.hpet_dev = hpet
    return hpet


ACPI_TABLES_SIZE = 128 * 1024
ACPI_RSDP_V2_SIZE = 36  # an ACPI 2.0 RSDP with its extended checksum


def _fw_cfg_acpi_io(pcms: PCMachineState) -> tuple[int, int] | None:
    """The fw_cfg ports the DSDT describes: the selector/data pair, and with
    DMA up to the end of the DMA address register (as QEMU: 0x510-0x51B)."""
    fw_cfg = pcms.fw_cfg
    if fw_cfg is None:
        return None
    if fw_cfg.dma_enabled:
        return memmap.FW_CFG_IO_BASE, memmap.FW_CFG_DMA_IO_BASE + 8 - memmap.FW_CFG_IO_BASE
    return memmap.FW_CFG_IO_BASE, 2


def pc_late_init(pcms: PCMachineState) -> None:
    """What needs the whole board: CMOS memory bytes, ACPI tables and the
    guest's e820 map (for direct boot the tables sit at the top of RAM below
    4G, reserved in e820, and boot_params points at the RSDP)."""
    from pemu.hw.i386.acpi_build import build_acpi_tables, build_acpi_tables_for_firmware, q35_acpi_config
    from pemu.hw.i386.fw_cfg import pc_fw_cfg_machine_done
    from pemu.hw.rtc.mc146818rtc import pc_cmos_init_memory
    from pemu.system.physmem import address_space_memory

    pc_cmos_init_memory(pcms.rtc.model, below_4g_mem_size=pcms.below_4g_mem_size,
                        above_4g_mem_size=pcms.above_4g_mem_size, cpu_count=pcms.smp.cpus)
    tables_base = None
    fw_tables = None
    if pcms.acpi != "off":
        tables_base = (pcms.below_4g_mem_size - ACPI_TABLES_SIZE) & ~0xFFF
        with_apic = pcms.apic_bus is not None
        accel = pcms.vm.accel
        # The in-kernel LAPICs and IOAPIC.
        with_apic = with_apic or (accel is not None and accel.irqchip_in_kernel())
        acpi_cfg = q35_acpi_config(pcms.below_4g_mem_size, hpet=pcms.hpet_enabled,
                                   mcfg=(memmap.MCH_PCIEXBAR_DEFAULT, memmap.MCH_PCIEXBAR_SIZE),
                                   fw_cfg_io=_fw_cfg_acpi_io(pcms))
        build = build_acpi_tables(tables_base, with_apic=with_apic, cpus=pcms.smp.cpus, cfg=acpi_cfg)
        # The same tables for firmware boot, placed by the firmware (etc/table-loader).
        fw_tables = build_acpi_tables_for_firmware(with_apic, pcms.smp.cpus, acpi_cfg)
        if len(build.blob) > ACPI_TABLES_SIZE:
            raise QOMError("ACPI tables do not fit in their reserved area")
        address_space_memory().write_rom(tables_base, build.blob)
        pcms.acpi_rsdp_addr = build.rsdp_addr
        if pcms.bios_source == DIRECT_BOOT_FIRMWARE:
            # No firmware will put the RSDP where guests scan for it: the stub carries a copy.
            rsdp = build.blob[build.rsdp_addr - tables_base:][:ACPI_RSDP_V2_SIZE]
            address_space_memory().write_rom(memmap.DIRECT_BOOT_RSDP, rsdp)
        pcms.acpi_build = build
    else:
        pcms.acpi_rsdp_addr = None
    pcms.e820 = pc_build_e820(pcms, tables_base)
    pc_fw_cfg_machine_done(pcms, fw_tables)
