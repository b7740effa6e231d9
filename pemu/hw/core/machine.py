"""The abstract machine (QEMU's hw/core/machine.c): TYPE_MACHINE, the root of
the seed's class hierarchy machine -> x86 machine -> PC machine -> q35."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pemu.backends.hostmem import HostMemoryBackend
from pemu.block.blockdev import BlockDevices
from pemu.hw.core.qdev import MachineInitPhase, bus_cold_reset, phase_advance, qemu_run_reset_handlers
from pemu.hw.core.sysbus import sysbus_get_default
from pemu.qom.object import (
    TYPE_OBJECT,
    Object,
    ObjectClass,
    QOMError,
    TypeInfo,
    object_check,
    object_class_check,
    object_resolve_path,
    type_register,
)
from pemu.system.memory import MemoryRegion
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.system.vm import VirtualMachine

TYPE_MACHINE = "machine"
TYPE_MACHINE_SUFFIX = "-machine"


def machine_type_name(name: str) -> str:
    return name + TYPE_MACHINE_SUFFIX


@dataclass
class CpuTopology:
    """The ``-smp`` topology: how many CPUs and how they are grouped."""

    cpus: int = 1
    sockets: int = 1
    dies: int = 1
    cores: int = 1
    threads: int = 1
    max_cpus: int = 1


class MachineClass(ObjectClass):
    # Set by each machine type's class_init.
    name: str = ""
    alias: str | None = None
    desc: str = ""
    is_default: bool = False
    deprecation_reason: str | None = None
    init: Callable[[MachineState], None] | None = None
    reset: Callable[[MachineState], None] | None = None
    default_cpu_type: str | None = None
    default_ram_size: int = 128 << 20
    default_ram_id: str | None = None
    max_cpus: int = 1
    min_cpus: int = 1
    default_cpus: int = 1
    no_serial: bool = False
    no_parallel: bool = False
    no_floppy: bool = False
    no_cdrom: bool = False
    default_display: str | None = None
    default_nic: str | None = None
    units_per_default_bus: int = 0


class MachineState(Object):
    vm: VirtualMachine  # everything this machine's VM owns (QEMU reaches it through current_machine)
    ram_size: int
    maxram_size: int
    ram_slots: int
    ram: MemoryRegion | None
    memdev: Object | None
    memory_backend: str
    kernel: str | None
    initrd: str | None
    append: str | None
    firmware: str | None
    dtb: str | None
    cpu_type: str | None
    smp: CpuTopology
    device_memory: MemoryRegion | None
    device_memory_base: int
    accel: str | None
    dump_guest_core: bool
    mem_merge: bool
    usb: bool
    graphics: bool
    block_devices: BlockDevices  # -drive and -blockdev (pemu.block.blockdev)
    # From the command line, besides the properties (set by vl before the board is built):
    name_: str | None  # -name
    cpu_features: str  # the "+feat,-feat" of -cpu
    data_dirs: list[str]  # -L
    fw_cfg_user_files: list[tuple[str, bytes]]  # -fw_cfg name=...
    smbios_config: Any  # pemu.hw.smbios.smbios.SmbiosConfig from -smbios, or None

    @property
    def mc(self) -> MachineClass:
        return object_class_check(self.klass, MachineClass)

    @property
    def kernel_filename(self) -> str | None:
        return self.kernel

    @property
    def initrd_filename(self) -> str | None:
        return self.initrd

    @property
    def kernel_cmdline(self) -> str:
        return self.append or ""


def _machine_initfn(obj: Object) -> None:
    ms = object_check(obj, MachineState)
    ms.vm = current_vm()
    ms.name_ = None
    ms.cpu_features = ""
    ms.data_dirs = []
    ms.fw_cfg_user_files = []
    ms.smbios_config = None
    mc = ms.mc
    ms.ram_size = mc.default_ram_size
    ms.maxram_size = mc.default_ram_size
    ms.ram_slots = 0
    ms.ram = None
    ms.memdev = None
    ms.cpu_type = mc.default_cpu_type
    ms.smp = CpuTopology(cpus=mc.default_cpus, max_cpus=mc.default_cpus)
    ms.device_memory = None
    ms.device_memory_base = 0
    ms.accel = None
    ms.block_devices = BlockDevices(units_per_bus=mc.units_per_default_bus or 2)  # 2: QEMU's IDE master/slave


def _machine_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, MachineClass)
    k.property_add_field("kernel", "str", description="Linux kernel image file")
    k.property_add_field("initrd", "str", description="Linux initial ramdisk file")
    k.property_add_field("append", "str", description="Linux kernel command line")
    k.property_add_field("dtb", "str", description="Linux kernel device tree file")
    k.property_add_field("firmware", "str", description="Firmware image")
    k.property_add_field("memory-backend", "str", default="",
                         description="Set RAM backend: valid value is ID of hostmem based backend")
    k.property_add_field("dump-guest-core", "bool", default=True, description="Include guest memory in a core dump")
    k.property_add_field("mem-merge", "bool", default=True, description="Enable/disable memory merge support")
    k.property_add_field("usb", "bool", default=False, description="Set on/off to enable/disable usb")
    k.property_add_field("graphics", "bool", default=True,
                         description="Set on/off to enable/disable graphics emulation")
    k.property_add_field("accel", "str", description="Accelerator list (legacy; use -accel)")


def _machine_class_base_init(klass: ObjectClass, data: Any) -> None:
    # Every concrete machine type is named "<name>-machine"; its MachineClass
    # name is that without the suffix (QEMU's machine_class_base_init).
    k = object_class_check(klass, MachineClass)
    if not k.abstract and k.type.name.endswith(TYPE_MACHINE_SUFFIX):
        k.name = k.type.name[: -len(TYPE_MACHINE_SUFFIX)]


type_register(TypeInfo(
    TYPE_MACHINE, parent=TYPE_OBJECT, abstract=True,
    instance_type=MachineState, class_type=MachineClass,
    class_init=_machine_class_init, class_base_init=_machine_class_base_init,
    instance_init=_machine_initfn,
))


def qemu_devices_reset(machine: MachineState) -> None:
    """Reset every device of the machine, then run the reset handlers
    (QEMU's qemu_devices_reset: what a machine without its own reset does)."""
    bus_cold_reset(sysbus_get_default())
    qemu_run_reset_handlers()


def machine_reset(machine: MachineState) -> None:
    """A system reset: the machine class's ``reset`` if it has one, else the
    devices' (QEMU's qemu_system_reset calling mc->reset)."""
    mc = machine.mc
    if mc.reset is not None:
        mc.reset(machine)
    else:
        qemu_devices_reset(machine)


def machine_run_board_init(machine: MachineState) -> None:
    """Attach the RAM back-end and run the board's init (pc_q35_init)."""
    mc = machine.mc
    if machine.memory_backend:
        backend = object_resolve_path(f"/objects/{machine.memory_backend}")
        if backend is None:
            backend = object_resolve_path(machine.memory_backend)
        if backend is None or not backend.is_a("memory-backend"):
            raise QOMError(f"Memory backend '{machine.memory_backend}' not found")
        backend = object_check(backend, HostMemoryBackend)
        size = backend.property_get("size")
        if size != machine.ram_size:
            raise QOMError("Machine memory size does not match the size of the memory backend")
        if backend.is_mapped():
            raise QOMError(f"memory backend {machine.memory_backend} can't be used multiple times.")
        backend.set_mapped(True)
        machine.memdev = backend
        machine.ram = backend.get_memory()
    if mc.init is None:
        raise QOMError(f"machine type '{mc.name}' has no board init")
    mc.init(machine)
    phase_advance(MachineInitPhase.MACHINE_INITIALIZED)
