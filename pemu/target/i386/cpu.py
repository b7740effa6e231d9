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
from pemu.hw.intc.apic_common import APIC_DM_EXTINT, APIC_LVT_LINT0, APIC_LVT_MASKED, APICCommonState
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
from pemu.target.i386.machine import VMSTATE_X86_CPU
from pemu.util.error import UserError
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
    # Warn for every model feature the accelerator drops (QEMU's "check"), not
    # only for those named on -cpu: False for the board's default model.
    check_model_features: bool
    memory: AddressSpace
    smm: AddressSpace
    io: AddressSpace
    # The interrupt controller's acknowledge cycle: the vector of the interrupt
    # the CPU takes on INTR (QEMU's cpu_get_pic_interrupt); see x86_cpu_connect_pic.
    get_pic_interrupt: Callable[[], int] | None
    apic_state: Any  # the "apic" device (QEMU's cpu->apic_state), None without a local APIC
    apic: Any  # its model, pemu.hw.intc.apic.APIC, or None
    cpu_as_root: MemoryRegion
    cpu_as_mem: MemoryRegion

    def reset(self) -> None:
        x86_cpu_reset(self)


def _x86_cpu_initfn(obj: Object) -> None:
    cpu = object_check(obj, X86CPU)
    vm = current_vm()
    cpu.cpu_index = vm.next_cpu_index
    vm.next_cpu_index += 1
    cpu.env = CPUX86State()
    cpu.model = None
    cpu.features = ""
    cpu.check_model_features = True
    cpu.get_pic_interrupt = None
    cpu.apic_state = None
    cpu.apic = None


def x86_cpu_realizefn(dev: Object) -> None:
    from pemu.system import cpus
    from pemu.system.physmem import address_space_io, get_system_memory
    from pemu.target.i386 import cpu_models

    cpu = object_check(dev, X86CPU)
    klass = object_class_check(cpu.klass, X86CPUClass)
    try:
        spec = klass.model_name + ("," + cpu.features if cpu.features else "")
        cpu.model = cpu_models.x86_cpu_model_from_string(spec, cpu.check_model_features)
    except UserError as e:  # a bad -cpu feature is user input
        raise QOMError(str(e)) from None
    cpu.env.cpuid_version = cpu.model.cpuid_version if hasattr(cpu.model, "cpuid_version") else cpu.env.cpuid_version
    cpu.model.apic_id = cpu.apic_id  # CPUID leaf 1 EBX[31:24]
    accel = current_vm().accel
    if cpu.model.has("apic") and not (accel is not None and accel.irqchip_in_kernel()):  # else KVM's
        x86_cpu_apic_create(cpu)
        x86_cpu_apic_realize(cpu)
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

    bsp = cpu.cpu_index == 0
    cpu.env.reset(bsp=bsp)
    if cpu.apic is not None:
        cpu.apic.reset()
        # An application processor waits for INIT and start-up IPIs.
        cpu.env.halted = not bsp
    cpus.cpu_synchronize_post_reset(cpu)


def x86_cpu_do_init(cpu: X86CPU, sipi_pending: bool = False) -> None:
    """An INIT signal (QEMU's do_cpu_init): the registers as after RESET,
    the APIC's as after INIT; an application processor then waits for a
    start-up IPI, halted (unless one came already: ``sipi_pending``).  The
    accelerator loads ``env`` afterwards."""
    bsp = cpu.apic is None or cpu.apic.is_bsp
    cpu.env.reset(bsp=bsp)
    if cpu.apic is not None:
        cpu.env.apic_base = cpu.apic.apicbase
        vector = cpu.apic.sipi_vector
        cpu.apic.init_reset()
        if sipi_pending:   # accepted already: keep it, take no other
            cpu.apic.wait_for_sipi = False
            cpu.apic.sipi_vector = vector
    cpu.env.halted = not bsp


def x86_cpu_do_sipi(cpu: X86CPU) -> None:
    """A start-up IPI (QEMU's do_cpu_sipi): real mode at ``vector << 12``."""
    from pemu.target.i386.cpu_state import SegReg

    vector = cpu.apic.sipi_vector
    cs = cpu.env.segs[SegReg.CS]
    cs.selector = vector << 8
    cs.base = vector << 12
    cs.limit = 0xFFFF
    cpu.env.rip = 0
    cpu.env.halted = False


# --- the local APIC ----------------------------------------------------------------------


class X86CPUAPICLink:
    """The processor's end of its local APIC's wires (pemu.hw.intc.apic_common.APICCPU):
    what QEMU's apic.c does with cpu_interrupt()."""

    def __init__(self, cpu: X86CPU) -> None:
        from pemu.system import cpus

        self.cpu = cpu
        self._interrupt = cpus.cpu_interrupt
        self._reset_interrupt = cpus.cpu_reset_interrupt

    def apic_irq_changed(self, pending: bool) -> None:
        x86_cpu_update_hard_irq(self.cpu)

    def apic_extint(self) -> None:
        x86_cpu_update_hard_irq(self.cpu)

    def apic_nmi(self) -> None:
        from pemu.system.cpus import CPU_INTERRUPT_NMI

        self._interrupt(self.cpu, CPU_INTERRUPT_NMI)

    def apic_smi(self) -> None:
        from pemu.util.log import LOG_UNIMP, qemu_log_mask

        qemu_log_mask(LOG_UNIMP, f"CPU {self.cpu.cpu_index}: SMI ignored (no system management mode)")

    def apic_init(self) -> None:
        from pemu.system.cpus import CPU_INTERRUPT_INIT

        # An AP accepts a start-up IPI from the moment INIT arrives, even if
        # its vCPU has not run the reset yet (Linux sends both back to back).
        apic = self.cpu.apic
        apic.wait_for_sipi = not apic.is_bsp
        self._interrupt(self.cpu, CPU_INTERRUPT_INIT)

    def apic_sipi(self, vector: int) -> None:
        from pemu.system.cpus import CPU_INTERRUPT_SIPI

        self._interrupt(self.cpu, CPU_INTERRUPT_SIPI)


def x86_cpu_apic_create(cpu: X86CPU) -> None:
    """Make the CPU's local APIC (seed: x86_cpu_apic_create): the userspace
    "apic" device as the CPU's child "lapic"."""
    import pemu.hw.intc.apic  # noqa: F401  (registers the type)
    from pemu.hw.core.qdev import qdev_new

    dev = object_check(qdev_new("apic"), APICCommonState)
    dev.apic_id = cpu.apic_id
    cpu.add_child("lapic", dev)
    dev.unref()
    cpu.apic_state = dev


def x86_cpu_apic_realize(cpu: X86CPU) -> None:
    """Realize the APIC and wire it to this CPU (seed: x86_cpu_apic_realize).
    The machine attaches it to its APIC bus and maps the "apic-msi" window."""
    from pemu.hw.core.qdev import qdev_realize

    qdev_realize(cpu.apic_state, None)
    apic = cpu.apic_state.model
    apic.phys_bits = cpu.model.phys_bits
    apic.cpu = X86CPUAPICLink(cpu)
    cpu.apic = apic


def _extint_pending(apic: Any) -> bool:
    """The 8259's INTR reaches the processor as an ExtINT: LINT0 in ExtINT
    mode and unmasked (or the APIC globally disabled) with the line high."""
    if not apic.lint0_level:
        return False
    if not apic.hw_enabled:
        return True
    lvt = apic.lvt[APIC_LVT_LINT0]
    return not lvt & APIC_LVT_MASKED and (lvt >> 8) & 7 == APIC_DM_EXTINT


def x86_cpu_update_hard_irq(cpu: X86CPU) -> None:
    """CPU_INTERRUPT_HARD follows the APIC: a fixed interrupt deliverable or
    an ExtINT from the 8259 pending (QEMU's apic_update_irq)."""
    from pemu.system import cpus

    apic = cpu.apic
    if apic.irq_pending or _extint_pending(apic):
        cpus.cpu_interrupt(cpu, cpus.CPU_INTERRUPT_HARD)
    else:
        cpus.cpu_reset_interrupt(cpu, cpus.CPU_INTERRUPT_HARD)


def x86_cpu_pic_intr(cpu: X86CPU, level: int) -> None:
    """The 8259's INTR output reaches this CPU's LINT0 (QEMU's pic_irq_request)."""
    cpu.apic.deliver_pic_intr(level)
    x86_cpu_update_hard_irq(cpu)


def x86_cpu_connect_pic(cpu: X86CPU, read_irq: Callable[[], int]) -> None:
    """Give the CPU its interrupt-acknowledge cycle: the APIC first, then
    the 8259 when an ExtINT is pending (QEMU's cpu_get_pic_interrupt).
    Called with the big lock held, from the vCPU at its interrupt window."""
    apic = cpu.apic
    if apic is None:
        cpu.get_pic_interrupt = read_irq
        return

    def get_interrupt() -> int:
        vector = apic.get_interrupt()
        if vector < 0 and _extint_pending(apic):
            vector = read_irq()
        x86_cpu_update_hard_irq(cpu)
        return vector

    cpu.get_pic_interrupt = get_interrupt


def _x86_cpu_common_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = x86_cpu_realizefn
    dc.reset = lambda dev: x86_cpu_reset(object_check(dev, X86CPU))
    dc.desc = "x86 CPU"
    dc.vmsd = VMSTATE_X86_CPU
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
