"""The x86 machine (QEMU's hw/i386/x86.c): TYPE_X86_MACHINE, CPU creation
and x86_load_linux: -kernel booted directly by pemu (no -bios), or handed to
the firmware over fw_cfg with the linuxboot_dma.bin option ROM (-bios or
-machine firmware=)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from pemu.hw.core.machine import TYPE_MACHINE, MachineClass, MachineState
from pemu.hw.core.qdev import qdev_realize
from pemu.hw.i386 import memmap
from pemu.qom.object import (
    Object,
    ObjectClass,
    QOMError,
    TypeInfo,
    object_check,
    object_class_check,
    object_new,
    type_register,
)
from pemu.system import runstate
from pemu.target.i386.cpu import X86CPU

TYPE_X86_MACHINE = "x86-machine"


class X86MachineClass(MachineClass):
    fwcfg_dma_enabled: bool = True
    save_tsc_khz: bool = True


class X86MachineState(MachineState):
    below_4g_mem_size: int
    above_4g_mem_size: int
    max_ram_below_4g: int
    cpus: list[Any]  # X86CPU
    smm: str
    acpi: str
    pit: str
    pic: str
    kernel_irqchip: str
    linux_boot: Any  # the direct-boot plan, replayed at every reset
    e820: Any  # pemu.hw.i386.e820.E820Table
    fw_cfg: Any
    rtc: Any
    gsi: list[Any]
    acpi_rsdp_addr: int | None  # where the ACPI tables' RSDP is, for boot_params (direct boot)
    acpi_build: Any  # pemu.hw.i386.acpi_build's tables, or None


def _x86_machine_initfn(obj: Object) -> None:
    x86ms = object_check(obj, X86MachineState)
    x86ms.below_4g_mem_size = 0
    x86ms.above_4g_mem_size = 0
    x86ms.cpus = []
    x86ms.linux_boot = None
    x86ms.e820 = None
    x86ms.fw_cfg = None
    x86ms.rtc = None
    x86ms.gsi = []
    x86ms.acpi_rsdp_addr = None
    x86ms.acpi_build = None


_ONOFFAUTO = ("on", "off", "auto")


def _x86_machine_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, X86MachineClass)
    k.property_add_field("smm", "OnOffAuto", default="auto", enum_values=_ONOFFAUTO, description="Enable SMM")
    k.property_add_field("acpi", "OnOffAuto", default="auto", enum_values=_ONOFFAUTO, description="Enable ACPI")
    k.property_add_field("pit", "OnOffAuto", default="auto", enum_values=_ONOFFAUTO, description="Enable i8254 PIT")
    k.property_add_field("pic", "OnOffAuto", default="auto", enum_values=_ONOFFAUTO, description="Enable i8259 PIC")
    k.property_add_field("max-ram-below-4g", "size", default=0,
                         description="Maximum ram below the 4G boundary (32bit boundary)")
    k.property_add_field("kernel-irqchip", "OnOffSplit", default="on", enum_values=("on", "off", "split"),
                         description="Configure KVM in-kernel irqchip")


type_register(TypeInfo(TYPE_X86_MACHINE, parent=TYPE_MACHINE, abstract=True, instance_type=X86MachineState,
                       class_type=X86MachineClass, class_init=_x86_machine_class_init,
                       instance_init=_x86_machine_initfn))


# --- CPUs ------------------------------------------------------------------------------


def x86_cpu_new(x86ms: X86MachineState, apic_id: int) -> X86CPU:
    """Create one CPU of the machine's CPU type and realize it (seed: x86_cpu_new)."""
    assert x86ms.cpu_type is not None
    cpu = object_check(object_new(x86ms.cpu_type), X86CPU)
    cpu.property_set("apic-id", apic_id)
    cpu.features = x86ms.cpu_features
    # The board's own default model is narrowed to what the accelerator offers without a word.
    cpu.check_model_features = x86ms.cpu_type != x86ms.mc.default_cpu_type
    qdev_realize(cpu, None)
    cpu.unref()
    return cpu


def x86_cpus_init(x86ms: X86MachineState) -> None:
    """Create the boot CPUs (seed: x86_cpus_init)."""
    for apic_id in range(x86ms.smp.cpus):
        x86ms.cpus.append(x86_cpu_new(x86ms, apic_id))


# --- direct Linux boot -----------------------------------------------------------------


def _read_user_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise QOMError(f"could not load {what} '{path}': {e.strerror}") from None


def x86_load_linux(x86ms: X86MachineState, *, firmware_boot: bool = False) -> None:
    """Load the -kernel bzImage, -initrd and -append.

    With ``firmware_boot`` (-bios or -machine firmware= given) this does
    what QEMU's x86_load_linux does: the bzImage header is patched for the
    16-bit boot protocol and setup, kernel, initrd and command line go into
    fw_cfg, with linuxboot_dma.bin offered as the first boot device; the
    firmware (SeaBIOS) runs that option ROM, which loads everything over
    fw_cfg DMA and jumps into the kernel's real-mode setup.

    Without it (direct boot) there is no firmware in the way: the pure
    planner (pemu.hw.i386.linux_boot) lays everything out and fills
    boot_params, and the plan is written to RAM and the boot CPU set to the
    kernel's entry here, and again at every system reset (a guest reboot
    boots the kernel again).
    """
    from pemu.hw.i386.linux_boot import plan_linux_boot
    from pemu.util.error import UserError

    assert x86ms.kernel is not None
    kernel = _read_user_file(x86ms.kernel, "kernel")
    if firmware_boot:
        x86_load_linux_fw_cfg(x86ms, kernel)
        return
    if kernel[0x202:0x206] != b"HdrS" and x86_load_direct_kernel(x86ms, kernel):
        return
    initrd = _read_user_file(x86ms.initrd, "initrd") if x86ms.initrd else None
    acpi_rsdp = x86ms.acpi_rsdp_addr
    cmdline, below_4g, e820 = x86ms.kernel_cmdline, x86ms.below_4g_mem_size, x86ms.e820

    def plan() -> Any:
        try:
            return plan_linux_boot(kernel, initrd, cmdline, below_4g, e820, acpi_rsdp)
        except UserError as e:
            raise QOMError(e.message) from None

    if runstate.runstate_get() == runstate.RunState.INMIGRATE:
        # An incoming migration brings RAM and registers: the kernel is
        # unpacked (seconds for an xz bzImage) only if the guest reboots.
        x86ms.linux_boot = DeferredBootPlan(plan)
        return
    x86ms.linux_boot = plan()
    linux_boot_apply(x86ms)


class DeferredBootPlan:
    """A direct-boot plan made when first applied (see x86_load_linux)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


# Where QEMU's x86_load_linux puts a "high and recent" (protocol >= 2.02) kernel
# for the firmware: the real-mode setup at 64 KiB, the command line at 128 KiB,
# the protected-mode kernel at 1 MiB.
FW_SETUP_ADDR = 0x10000
FW_CMDLINE_ADDR = 0x20000
FW_KERNEL_ADDR = 0x100000
FW_LOADER_TYPE_QEMU = 0xB0
"""type_of_loader: boot loader id 0xB (QEMU), version 0."""
FW_ACPI_DATA_SIZE = 0x20000 + 0x8000
"""What QEMU's PC keeps free at the top of low RAM for the firmware's
tables (pcmc->acpi_data_size): the initrd ends below it."""
LINUXBOOT_DMA_ROM = "linuxboot_dma.bin"
LINUXBOOT_ROM = "linuxboot.bin"

# The special vga= values (Documentation/arch/x86/boot.rst, vid_mode).
_VGA_MODES = {"normal": 0xFFFF, "ext": 0xFFFE, "ask": 0xFFFD}


class FirmwareLinuxBoot(NamedTuple):
    """What x86_load_linux hands the firmware over fw_cfg for a bzImage."""

    setup: bytes  # boot sector + real-mode setup, header patched
    setup_addr: int
    kernel: bytes  # the protected-mode part
    kernel_addr: int
    cmdline: bytes  # without its NUL
    cmdline_addr: int
    initrd: bytes | None
    initrd_addr: int


def _vga_mode(cmdline: str) -> int | None:
    """The video mode a vga= argument asks for (as QEMU reads it), None without one."""
    at = cmdline.find("vga=")
    if at < 0:
        return None
    arg = cmdline[at + 4:].split(maxsplit=1)[0] if cmdline[at + 4:].strip() else ""
    if arg in _VGA_MODES:
        return _VGA_MODES[arg]
    try:
        value = int(arg, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFF:
        from pemu.hw.i386.bzimage import LinuxBootError

        raise LinuxBootError(f"can't parse 'vga' parameter '{arg}'")
    return value


def plan_firmware_linux_boot(kernel: bytes, initrd: bytes | None, cmdline: str,
                             below_4g_mem_size: int,
                             acpi_data_size: int = FW_ACPI_DATA_SIZE) -> FirmwareLinuxBoot:
    """Patch the bzImage's setup header as QEMU does for firmware boot and
    say where each piece goes.  Raises LinuxBootError for bad input."""
    from pemu.hw.i386.bzimage import (
        LinuxBootError,
        LoadFlags,
        XLoadFlags,
        parse_bzimage,
    )

    hdr = parse_bzimage(kernel)  # protocol >= 2.06 and LOADED_HIGH: "high and recent"
    cmdline_bytes = cmdline.encode("utf-8")
    if b"\0" in cmdline_bytes:
        raise LinuxBootError("kernel command line contains a NUL character")
    if len(cmdline_bytes) > hdr.cmdline_size:
        raise LinuxBootError(f"kernel command line too long ({len(cmdline_bytes)} bytes, "
                             f"this kernel accepts at most {hdr.cmdline_size})")
    if len(cmdline_bytes) + 1 > FW_KERNEL_ADDR - FW_CMDLINE_ADDR:
        raise LinuxBootError(f"kernel command line too long ({len(cmdline_bytes)} bytes)")

    if hdr.xloadflags & XLoadFlags.XLF_CAN_BE_LOADED_ABOVE_4G:
        initrd_max = 0xFFFFFFFF
    else:
        initrd_max = hdr.initrd_addr_max
    if initrd_max >= below_4g_mem_size - acpi_data_size:
        initrd_max = below_4g_mem_size - acpi_data_size - 1

    setup = bytearray(kernel[:hdr.setup_size])
    struct.pack_into("<I", setup, 0x228, FW_CMDLINE_ADDR)  # cmd_line_ptr
    vga = _vga_mode(cmdline)
    if vga is not None:
        struct.pack_into("<H", setup, 0x1FA, vga)  # vid_mode
    setup[0x210] = FW_LOADER_TYPE_QEMU  # type_of_loader
    setup[0x211] |= LoadFlags.CAN_USE_HEAP  # loadflags
    # heap_end_ptr: the heap and stack end where the command line starts.
    struct.pack_into("<H", setup, 0x224, FW_CMDLINE_ADDR - FW_SETUP_ADDR - 0x200)

    initrd_addr = 0
    if initrd is not None:
        if len(initrd) >= initrd_max:
            raise LinuxBootError(f"initrd is too large, cannot support (max: {initrd_max}, "
                                 f"need {len(initrd)})")
        initrd_addr = (initrd_max - len(initrd)) & ~0xFFF
        if initrd_addr < FW_KERNEL_ADDR + hdr.kernel_size:
            raise LinuxBootError(f"not enough RAM below 4 GiB for the kernel and an initrd of "
                                 f"{len(initrd)} bytes")
        struct.pack_into("<II", setup, 0x218, initrd_addr, len(initrd))  # ramdisk_image, ramdisk_size

    return FirmwareLinuxBoot(setup=bytes(setup), setup_addr=FW_SETUP_ADDR,
                             kernel=bytes(kernel[hdr.setup_size:]), kernel_addr=FW_KERNEL_ADDR,
                             cmdline=cmdline_bytes, cmdline_addr=FW_CMDLINE_ADDR,
                             initrd=initrd, initrd_addr=initrd_addr)


def x86_load_linux_fw_cfg(x86ms: X86MachineState, kernel: bytes) -> None:
    """The firmware-boot half of x86_load_linux: fw_cfg items and linuxboot ROM."""
    from pemu.hw.i386.fw_cfg import fw_cfg_add_linux_boot, fw_cfg_add_option_rom
    from pemu.hw.i386.pc_sysfw import qemu_find_file
    from pemu.util.error import UserError

    fw_cfg = x86ms.fw_cfg
    if fw_cfg is None:
        raise QOMError("firmware boot with -kernel needs fw_cfg")
    if kernel[0x202:0x206] != b"HdrS":
        raise QOMError("pemu boots only bzImage kernels through the firmware "
                       "(boot ELF or multiboot kernels without -bios)")
    initrd = _read_user_file(x86ms.initrd, "initrd") if x86ms.initrd else None
    try:
        boot = plan_firmware_linux_boot(kernel, initrd, x86ms.kernel_cmdline or "",
                                        x86ms.below_4g_mem_size)
    except UserError as e:
        raise QOMError(e.message) from None
    fw_cfg_add_linux_boot(fw_cfg, setup=boot.setup, setup_addr=boot.setup_addr, kernel=boot.kernel,
                          kernel_addr=boot.kernel_addr, cmdline=boot.cmdline, cmdline_addr=boot.cmdline_addr,
                          initrd=boot.initrd, initrd_addr=boot.initrd_addr)
    klass = object_class_check(x86ms.klass, X86MachineClass)
    rom_name = LINUXBOOT_DMA_ROM if klass.fwcfg_dma_enabled and fw_cfg.dma_enabled else LINUXBOOT_ROM
    path = qemu_find_file(rom_name, list(x86ms.data_dirs))
    if path is None:
        raise QOMError(f"Could not open option rom '{rom_name}'")
    rom = _read_user_file(path, "option rom")
    fw_cfg_add_option_rom(fw_cfg, rom_name, rom, bootindex=0)


def x86_load_direct_kernel(x86ms: X86MachineState, kernel: bytes) -> bool:
    """Not a bzImage: an ELF kernel with a PVH entry note, or a multiboot
    kernel, as QEMU tries them.  False when it is neither."""
    from pemu.hw.i386.multiboot import is_multiboot, load_multiboot_modules, plan_multiboot
    from pemu.hw.i386.pvh import has_pvh_note, plan_pvh_boot
    from pemu.system.physmem import address_space_memory
    from pemu.util.error import UserError

    assert x86ms.kernel is not None
    try:
        if has_pvh_note(kernel):
            initrd = _read_user_file(x86ms.initrd, "initrd") if x86ms.initrd else None
            x86ms.linux_boot = plan_pvh_boot(kernel, initrd, x86ms.kernel_cmdline, x86ms.e820,
                                             x86ms.acpi_rsdp_addr)
        elif is_multiboot(kernel):
            modules = load_multiboot_modules(x86ms.initrd)
            x86ms.linux_boot = plan_multiboot(kernel, x86ms.kernel, x86ms.kernel_cmdline, modules, x86ms.e820,
                                              address_space_memory().is_memory)
        else:
            return False
    except UserError as e:
        raise QOMError(e.message) from None
    linux_boot_apply(x86ms)
    return True


def linux_boot_apply(x86ms: X86MachineState) -> None:
    """Write the boot plan into guest RAM and point the boot CPU at it."""
    from pemu.system import cpus
    from pemu.system.physmem import address_space_memory

    plan = x86ms.linux_boot
    if plan is None:
        return
    if isinstance(plan, DeferredBootPlan):
        if runstate.runstate_get() == runstate.RunState.INMIGRATE:
            return  # the reset at creation of a VM whose state comes from a migration
        plan = x86ms.linux_boot = plan.make()
    space = address_space_memory()
    for blob in plan.blobs:
        space.write_rom(blob.addr, blob.data)
    cpu = x86ms.cpus[0]
    set_linux_entry_state(cpu.env, plan.entry)
    if cpu.apic is not None:
        cpu.apic.firmware_virtual_wire()  # what the firmware would leave on the BSP
    cpus.cpu_synchronize_post_reset(cpu)


def set_linux_entry_state(env: Any, entry: Any) -> None:
    """Load the 32-bit boot protocol's entry state into a CPU's registers."""
    from pemu.target.i386.cpu_state import DescriptorTable, Reg, SegmentCache, SegReg

    for reg, value in ((Reg.RAX, entry.eax), (Reg.RBX, entry.ebx), (Reg.RCX, entry.ecx), (Reg.RDX, entry.edx),
                       (Reg.RSI, entry.esi), (Reg.RDI, entry.edi), (Reg.RBP, entry.ebp), (Reg.RSP, entry.esp)):
        env.regs[reg] = value
    env.rip = entry.eip
    env.rflags = entry.eflags
    for sreg, seg in ((SegReg.CS, entry.cs), (SegReg.DS, entry.ds), (SegReg.ES, entry.es),
                      (SegReg.SS, entry.ss), (SegReg.FS, entry.fs), (SegReg.GS, entry.gs)):
        env.segs[sreg] = SegmentCache(seg.selector, seg.base, seg.limit, seg.qemu_flags)
    env.gdt = DescriptorTable(entry.gdt_base, entry.gdt_limit)
    env.idt = DescriptorTable(entry.idt_base, entry.idt_limit)
    env.cr0, env.cr3, env.cr4, env.efer = entry.cr0, entry.cr3, entry.cr4, entry.efer
    env.halted = False


def x86_ram_split(ram_size: int, lowmem: int) -> tuple[int, int]:
    """(below 4G, above 4G) for ``ram_size`` bytes of RAM with RAM below 4G
    ending at ``lowmem`` at most."""
    if ram_size > lowmem:
        return lowmem, ram_size - lowmem
    return ram_size, 0


__all__ = ["TYPE_X86_MACHINE", "X86MachineClass", "X86MachineState", "x86_cpus_init", "x86_cpu_new",
           "x86_load_linux", "plan_firmware_linux_boot", "FirmwareLinuxBoot", "linux_boot_apply",
           "x86_ram_split", "memmap"]
