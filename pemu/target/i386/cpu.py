"""X86CPU, the QOM type of an x86 CPU (QEMU's target/i386/cpu.c).

The seed's x86_cpu_realizefn is :func:`x86_cpu_realizefn`: it realizes the
CPU on its accelerator, gives the CPU its own address spaces ("cpu-memory"
over the system memory, "cpu-smm" over a root holding an alias of it), starts
the vCPU thread and resets the CPU.  Registers live in ``env``
(:class:`CPUX86State`); CPUID comes from the model (``model``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.hw.core.cpu import TYPE_CPU, CPUClass, CPUState
from pemu.hw.core.qdev import DeviceClass, Property, device_class_set_props
from pemu.qom.object import (
    Object,
    ObjectClass,
    QOMError,
    TypeInfo,
    object_check,
    object_class_check,
    type_exists,
    type_register,
)
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, AddressSpace, MemoryRegion
from pemu.target.i386.cpu_state import CPUX86State
from pemu.util.vm_context import current_vm

TYPE_X86_CPU = "x86_64-cpu"
X86_CPU_TYPE_SUFFIX = "-" + TYPE_X86_CPU


def x86_cpu_type_name(model: str) -> str:
    return model + X86_CPU_TYPE_SUFFIX


class X86CPUClass(CPUClass):
    model_name: str = ""


class X86CPU(CPUState):
    env: CPUX86State
    apic_id: int
    model: Any  # pemu.target.i386.cpu_models.X86CPUModel
    features: str  # "+feat,-feat" from -cpu
    memory: AddressSpace
    smm: AddressSpace
    io: AddressSpace
    # The interrupt controller's acknowledge cycle: the vector of the interrupt
    # the CPU takes on INTR (QEMU's cpu_get_pic_interrupt); see x86_cpu_connect_pic.
    get_pic_interrupt: Callable[[], int] | None
    cpu_as_root: MemoryRegion
    cpu_as_mem: MemoryRegion

    def reset(self) -> None:
        x86_cpu_reset(self)


def x86_cpu_connect_pic(cpu: X86CPU, acknowledge: Callable[[], int]) -> None:
    """Connect the board's interrupt controller to the CPU: the accelerator
    calls ``acknowledge()`` (with the big lock held) to take the vector of a
    pending INTR."""
    cpu.get_pic_interrupt = acknowledge


def _x86_cpu_initfn(obj: Object) -> None:
    cpu = object_check(obj, X86CPU)
    vm = current_vm()
    cpu.cpu_index = vm.next_cpu_index
    vm.next_cpu_index += 1
    cpu.env = CPUX86State()
    cpu.model = None
    cpu.features = ""
    cpu.get_pic_interrupt = None


def x86_cpu_realizefn(dev: Object) -> None:
    from pemu.system import cpus
    from pemu.system.physmem import address_space_io, get_system_memory
    from pemu.target.i386 import cpu_models

    cpu = object_check(dev, X86CPU)
    klass = object_class_check(cpu.klass, X86CPUClass)
    try:
        spec = klass.model_name + ("," + cpu.features if cpu.features else "")
        cpu.model = cpu_models.x86_cpu_model_from_string(spec)
    except Exception as e:  # a bad -cpu feature is user input
        raise QOMError(str(e)) from None
    cpu.env.cpuid_version = cpu.model.cpuid_version if hasattr(cpu.model, "cpuid_version") else cpu.env.cpuid_version
    # The CPU's view of memory (seed: cpu_as_mem / cpu_as_root).
    n = cpu.cpu_index
    cpu.cpu_as_mem = MemoryRegion.alias("memory", get_system_memory(), 0, MEMORY_SIZE_UNLIMITED, owner=cpu)
    cpu.cpu_as_root = MemoryRegion.container("memory", MEMORY_SIZE_UNLIMITED, owner=cpu)
    cpu.cpu_as_root.add_subregion_overlap(0, cpu.cpu_as_mem, 0)
    cpu.memory = AddressSpace(get_system_memory(), f"cpu-memory-{n}")
    cpu.smm = AddressSpace(cpu.cpu_as_root, f"cpu-smm-{n}")
    cpu.io = address_space_io()
    cpus.qemu_init_vcpu(cpu)
    x86_cpu_reset(cpu)


def x86_cpu_reset(cpu: X86CPU) -> None:
    from pemu.system import cpus

    cpu.env.reset(bsp=cpu.cpu_index == 0)
    cpus.cpu_synchronize_post_reset(cpu)


def _x86_cpu_common_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = x86_cpu_realizefn
    dc.reset = lambda dev: x86_cpu_reset(object_check(dev, X86CPU))
    dc.desc = "x86 CPU"
    device_class_set_props(dc, [Property("apic-id", "uint32", 0)])


def _x86_cpu_cpudef_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, X86CPUClass)
    k.model_name = data
    k.desc = f"x86 CPU model {data}"


type_register(TypeInfo(TYPE_X86_CPU, parent=TYPE_CPU, abstract=True, instance_type=X86CPU, class_type=X86CPUClass,
                       class_init=_x86_cpu_common_class_init, instance_init=_x86_cpu_initfn))


def x86_register_cpu_types() -> None:
    """One QOM type per CPU model ("qemu64-x86_64-cpu"), as x86_register_cpudef_types.
    The type table is process-wide: a second VM finds them registered."""
    from pemu.target.i386 import cpu_models

    for name in cpu_models.x86_cpu_model_names():
        if type_exists(x86_cpu_type_name(name)):
            continue
        type_register(TypeInfo(x86_cpu_type_name(name), parent=TYPE_X86_CPU,
                               class_init=_x86_cpu_cpudef_class_init, class_data=name))
