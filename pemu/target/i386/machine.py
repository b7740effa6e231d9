"""The migratable state of an x86 CPU (QEMU's target/i386/machine.c).

:data:`VMSTATE_X86_CPU` describes one CPU's architectural state as it is in
``cpu.env`` (:class:`~pemu.target.i386.cpu_state.CPUX86State`), whichever
accelerator runs it: the general registers, RIP and RFLAGS; the six segment
registers, LDTR and TR with their hidden parts (selector, base, limit,
attributes in QEMU's descriptor-flags encoding), GDTR and IDTR; CR0, CR2,
CR3, CR4, CR8 and EFER; DR0-DR7; the x87 unit (control, status and abridged
tag words, last opcode, instruction and data pointers, ST0-ST7 as 80-bit
values), MXCSR, XMM0-15 and the upper halves of YMM0-15, XCR0; the MSRs
(SYSENTER_*, STAR/LSTAR/CSTAR/SFMASK, KERNEL_GS_BASE, FS/GS base as segment
bases, PAT, TSC_AUX, MISC_ENABLE, APIC_BASE, TSC_DEADLINE); the events
between two instructions (interrupt shadow, an exception or interrupt being
delivered, NMI pending/in delivery/blocked, a latched INIT, the SIPI vector);
what the processor is doing (running, halted, waiting for a start-up IPI);
and the TSC.

Saving (``pre_save``) first pulls the accelerator's registers into ``env``
(``cpu_synchronize_state``); loading (``post_load``) checks the values and
gives them to the accelerator before the vCPU runs again
(``cpu_synchronize_post_init``).  Nothing in the stream depends on the
accelerator, so a CPU saved under tcg loads under kvm and the other way
round; the one accelerator-specific part is KVM's in-kernel local APIC
(``kernel_lapic``: its register page, present only with
``kernel-irqchip=on``), which a VM whose local APIC is pemu's device refuses,
and the other way round.

The TSC continues where it was: the saved value is what the guest read last,
and the destination's TSC restarts from it (QEMU saves ``env->tsc`` and puts
it back as MSR_IA32_TSC); the time the VM spent stopped or in transit is not
added.  Under tcg the TSC is the virtual clock plus a per-vCPU offset and
the virtual clock is restored before any device (the "timer" section); under
kvm it is MSR_IA32_TSC.

What an accelerator cannot give:

* tcg (either engine): no NMI blocking is modelled (``nmi_masked`` is saved
  as False and ignored on load), no exception or interrupt is ever half
  delivered (the host delivers synchronously), CR8 is not the APIC's TPR.
  An event another accelerator was delivering is delivered when the state
  is loaded; a software interrupt is not, its instruction runs again.
  On the stock engine (``PEMU_ENGINE=stock``) every register here is still
  readable and writable through the engine's API and context; what it lacks
  are the MSR hooks, so IA32_APIC_BASE and IA32_TSC_DEADLINE are the local
  APIC's own state (saved with the APIC) and the guest reads 0 for the first.
* kvm: an MSR a given KVM refuses is skipped (with a log line when it is
  put); KVM's paravirtual MSRs (kvmclock, async PF, steal time, PV EOI) are
  not described, so a CPU model that offers them is refused at save.  With
  the in-kernel irqchip, KVM restarts a LAPIC timer's count from its initial
  count when the page is loaded; the 8259s, I/O APIC and 8254 are the
  "kvm-irqchip" device's (pemu.hw.i386.kvm.irqchip).  The software KVM of the
  test machines ignores a written TSC (MSR_IA32_TSC, TSC_ADJUST and the vCPU's
  TSC offset alike): there the guest sees the host's TSC after a load.  It
  also lets a guest enable CR4 features its CPUID does not offer; such a
  state (CR4 bits the CPU model lacks) is refused at save.

A CPU in a state that cannot be described is refused at save with one line
(system management mode, an SMI pending, a CPU shut down by a triple fault),
and so is a stream whose values the CPU would misbehave on (reserved bits,
CR0.PG without PE, a non-canonical RIP in 64-bit mode, segment limits that
do not match their granularity, ...): :class:`VMStateError` names the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pemu.migration.vmstate import (
    BOOL,
    I16,
    U8,
    U16,
    U32,
    U64,
    Array,
    Buffer,
    Enum,
    Optional,
    Struct,
    StructList,
    UInt,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.target.i386.cpu_state import (
    CR0_CD_MASK,
    CR0_NW_MASK,
    CR0_PE_MASK,
    CR0_PG_MASK,
    CR4_LA57_MASK,
    CR4_OSXSAVE_MASK,
    CR4_PAE_MASK,
    CR4_PCIDE_MASK,
    DESC_B_MASK,
    DESC_CS_MASK,
    DESC_FLAGS_MASK,
    DESC_G_MASK,
    DESC_L_MASK,
    DESC_P_MASK,
    DESC_S_MASK,
    DESC_W_MASK,
    EFLAGS_FIXED,
    VM_MASK,
    XSTATE_FP,
    XSTATE_SSE,
    XSTATE_YMM,
    Efer,
    SegReg,
    X86MPState,
)
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter


class BigUInt:
    """An unsigned integer wider than 64 bits (an 80-bit x87 register, a
    128-bit XMM register), big-endian in the smallest whole number of bytes."""

    __slots__ = ("bits", "size")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.size = (bits + 7) // 8

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        value = int(value)
        if not 0 <= value < 1 << self.bits:
            raise VMStateError(f"value {value:#x} does not fit {self.bits} bits")
        f.put_buffer(value.to_bytes(self.size, "big"))

    def load(self, f: QEMUFileReader, current: Any, where: str) -> int:
        value = int.from_bytes(f.get_buffer(self.size), "big")
        if value >> self.bits:
            raise VMStateError(f"{where}: value {value:#x} does not fit {self.bits} bits")
        return value


U80 = BigUInt(80)
U128 = BigUInt(128)


VMSTATE_SEGMENT = VMStateDescription(
    "segment", version_id=1,
    fields=[
        VMStateField("selector", U16),
        VMStateField("base", U64),
        VMStateField("limit", U32),
        # The descriptor's high dword without its base bytes (QEMU keeps limit bits 19:16 there too).
        VMStateField("flags", U32, check=lambda v: not v & ~(DESC_FLAGS_MASK | 0xF0000)),
    ])

VMSTATE_DTABLE = VMStateDescription(
    "dtable", version_id=1,
    fields=[VMStateField("base", U64), VMStateField("limit", U16)])


# --- checks -------------------------------------------------------------------------------

# RFLAGS bits a CPU can hold: CF PF AF ZF SF TF IF DF OF IOPL NT RF VM AC VIF VIP ID, and bit 1.
RFLAGS_VALID = 0x003F7FD7
CR0_VALID = 0xE005003F          # PE MP EM TS ET NE WP AM NW CD PG
# VME PVI TSD DE PSE PAE MCE PGE PCE OSFXSR OSXMMEXCPT UMIP LA57 VMXE SMXE FSGSBASE
# PCIDE OSXSAVE SMEP SMAP PKE
CR4_VALID = 0x007F7FFF
EFER_VALID = Efer.SCE | Efer.LME | Efer.LMA | Efer.NXE | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15
MXCSR_VALID = 0xFFFF
# CR4 bits a CPU model must have the feature for (the accelerators refuse them otherwise).
_CR4_FEATURES = ((CR4_OSXSAVE_MASK, "xsave"), (CR4_LA57_MASK, "la57"), (CR4_PCIDE_MASK, "pcid"),
                 (1 << 16, "fsgsbase"), (1 << 20, "smep"), (1 << 21, "smap"), (1 << 22, "pku"),
                 (1 << 11, "umip"))
_SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")


def _canonical(address: int, bits: int) -> bool:
    top = address >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


def _check_segment(name: str, seg: Any, protected: bool, long_mode: bool, system_type: tuple[int, ...] = ()) -> None:
    flags, limit = seg.flags, seg.limit
    if protected and not flags & DESC_P_MASK:
        return  # a null or unusable segment: its hidden part is not used
    if flags & DESC_G_MASK and limit & 0xFFF != 0xFFF:
        raise VMStateError(f"{name}: limit {limit:#x} with 4 KiB granularity must end in 0xfff")
    if not flags & DESC_G_MASK and limit > 0xFFFFF and protected:
        raise VMStateError(f"{name}: limit {limit:#x} exceeds 1 MiB with byte granularity")
    if not long_mode and seg.base >> 32:
        raise VMStateError(f"{name}: base {seg.base:#x} above 4 GiB outside long mode")
    if long_mode and not _canonical(seg.base, 48):
        raise VMStateError(f"{name}: base {seg.base:#x} is not canonical")
    if system_type and protected and flags & DESC_P_MASK:
        kind = (flags >> 8) & 0xF
        if flags & DESC_S_MASK or kind not in system_type:
            raise VMStateError(f"{name}: descriptor type {kind:#x} (S={int(bool(flags & DESC_S_MASK))}) "
                               f"is not a {name.split('.')[-1].upper()} descriptor")


def check_cpu_state(cpu: Any) -> None:
    """Refuse (VMStateError naming the field) a CPU state the CPU would
    misbehave on or the accelerators refuse; the same rules apply when a
    state is saved and when it is loaded."""
    env = cpu.env
    model = cpu.model
    if env.rflags & ~RFLAGS_VALID or not env.rflags & EFLAGS_FIXED:
        raise VMStateError(f"env.rflags: {env.rflags:#x} has reserved bits wrong")
    cr0, cr4, efer = env.cr0, env.cr4, env.efer
    if cr0 & ~CR0_VALID:
        raise VMStateError(f"env.cr0: reserved bits set in {cr0:#x}")
    if cr0 & CR0_PG_MASK and not cr0 & CR0_PE_MASK:
        raise VMStateError(f"env.cr0: {cr0:#x} has paging (PG) without protection (PE)")
    if cr0 & CR0_NW_MASK and not cr0 & CR0_CD_MASK:
        raise VMStateError(f"env.cr0: {cr0:#x} has not-write-through (NW) without cache-disable (CD)")
    if cr4 & ~CR4_VALID:
        raise VMStateError(f"env.cr4: reserved bits set in {cr4:#x}")
    for bit, feature in _CR4_FEATURES:
        if cr4 & bit and not model.has(feature):
            raise VMStateError(f"env.cr4: {cr4:#x} enables {feature}, which the CPU model lacks")
    if efer & ~EFER_VALID:
        raise VMStateError(f"env.efer: reserved bits set in {efer:#x}")
    if efer & Efer.LME and not model.has("lm"):
        raise VMStateError("env.efer: long mode enabled on a CPU model without lm")
    if efer & Efer.NXE and not model.has("nx"):
        raise VMStateError("env.efer: NX enabled on a CPU model without nx")
    paging_long = bool(cr0 & CR0_PG_MASK and efer & Efer.LME)
    if paging_long and not cr4 & CR4_PAE_MASK:
        raise VMStateError("env.cr4: long mode with paging needs PAE")
    if bool(efer & Efer.LMA) != paging_long:
        raise VMStateError(f"env.efer: LMA is {int(bool(efer & Efer.LMA))} with CR0.PG="
                           f"{int(bool(cr0 & CR0_PG_MASK))} and EFER.LME={int(bool(efer & Efer.LME))}")
    long_mode = bool(efer & Efer.LMA)
    protected = bool(cr0 & CR0_PE_MASK) and not env.rflags & VM_MASK
    if long_mode and env.rflags & VM_MASK:
        raise VMStateError("env.rflags: virtual-8086 mode in long mode")
    if cr4 & CR4_PCIDE_MASK and not long_mode:
        raise VMStateError("env.cr4: PCIDE outside long mode")
    for i, seg in enumerate(env.segs):
        _check_segment(f"env.segs[{i}] ({_SEG_NAMES[i]})", seg, protected, long_mode and i >= SegReg.FS)
        if not long_mode and seg.base >> 32:
            raise VMStateError(f"env.segs[{i}] ({_SEG_NAMES[i]}): base {seg.base:#x} above 4 GiB outside long mode")
    cs = env.segs[SegReg.CS]
    code64 = long_mode and bool(cs.flags & DESC_L_MASK)
    if protected and cs.flags & DESC_P_MASK and not (cs.flags & DESC_S_MASK and cs.flags & DESC_CS_MASK):
        raise VMStateError(f"env.segs[1] (cs): flags {cs.flags:#x} are not a code segment's")
    if code64 and cs.flags & DESC_B_MASK:
        raise VMStateError("env.segs[1] (cs): L and D both set")
    if cs.flags & DESC_L_MASK and not long_mode and protected:
        raise VMStateError("env.segs[1] (cs): a 64-bit code segment outside long mode")
    ss = env.segs[SegReg.SS]
    if protected and ss.flags & DESC_P_MASK and not (
            ss.flags & DESC_S_MASK and not ss.flags & DESC_CS_MASK and ss.flags & DESC_W_MASK):
        raise VMStateError(f"env.segs[2] (ss): flags {ss.flags:#x} are not a writable data segment's")
    _check_segment("env.ldt", env.ldt, protected, long_mode, system_type=(2,))
    _check_segment("env.tr", env.tr, protected, long_mode, system_type=(1, 3, 9, 11))
    for name, table in (("env.gdt", env.gdt), ("env.idt", env.idt)):
        if long_mode and not _canonical(table.base, 48) or not long_mode and table.base >> 32:
            raise VMStateError(f"{name}: base {table.base:#x} is out of range")
    va_bits = 57 if cr4 & CR4_LA57_MASK else 48
    if code64 and not _canonical(env.rip, va_bits):
        raise VMStateError(f"env.rip: {env.rip:#x} is not canonical in 64-bit mode")
    if not code64 and env.rip >> 32:
        raise VMStateError(f"env.rip: {env.rip:#x} above 4 GiB outside 64-bit mode")
    for name in ("kernel_gs_base", "lstar", "cstar", "sysenter_esp", "sysenter_eip"):
        value = getattr(env, name)
        if model.has("lm") and not _canonical(value, 48):
            raise VMStateError(f"env.{name}: {value:#x} is not canonical")
    if env.dr[6] >> 32 or env.dr[7] >> 32:
        raise VMStateError("env.dr: DR6/DR7 have bits above 31 set")
    if env.mxcsr & ~MXCSR_VALID:
        raise VMStateError(f"env.mxcsr: reserved bits set in {env.mxcsr:#x}")
    xcr0_valid = XSTATE_FP | XSTATE_SSE | (XSTATE_YMM if model.has("avx") else 0)
    if env.xcr0 & ~xcr0_valid or not env.xcr0 & XSTATE_FP:
        raise VMStateError(f"env.xcr0: {env.xcr0:#x} is not valid for the CPU model (allowed {xcr0_valid:#x})")
    if env.xcr0 & XSTATE_YMM and not env.xcr0 & XSTATE_SSE:
        raise VMStateError(f"env.xcr0: {env.xcr0:#x} enables AVX without SSE")
    if any(env.ymmh) and not model.has("avx"):
        raise VMStateError("env.ymmh: AVX state on a CPU model without avx")
    phys_mask = (1 << model.phys_bits) - 1
    if env.apic_base & ~(phys_mask & ~0xFFF | 0xD00):
        raise VMStateError(f"env.apic_base: reserved bits set in {env.apic_base:#x}")
    if env.exception_injected > 31 or env.exception_injected < -1:
        raise VMStateError(f"env.exception_injected: {env.exception_injected} is not an exception vector")
    if env.exception_has_error_code and env.exception_injected < 0:
        raise VMStateError("env.exception_has_error_code: set without an exception")
    if env.interrupt_injected < -1 or env.interrupt_injected > 255:
        raise VMStateError(f"env.interrupt_injected: {env.interrupt_injected} is not a vector")
    if env.interrupt_soft and env.interrupt_injected < 0:
        raise VMStateError("env.interrupt_soft: set without an interrupt")
    if env.interrupt_injected >= 0 and not env.interrupt_soft and env.interrupt_injected < 16:
        raise VMStateError(f"env.interrupt_injected: external interrupt vector {env.interrupt_injected} "
                           "is reserved")


# --- save and load -------------------------------------------------------------------------


def _cpu_pre_save(cpu: Any) -> None:
    from pemu.system import cpus

    cpus.cpu_synchronize_state(cpu)
    env = cpu.env
    index = cpu.cpu_index
    if cpu.run.shutdown:
        raise VMStateError(f"CPU {index} is shut down after a triple fault, waiting for a reset")
    if env.smm or env.smi_pending:
        raise VMStateError(f"CPU {index} is in system management mode or has an SMI pending; pemu has no SMM")
    if cpu.model.cpuid(0x40000001)[0]:
        raise VMStateError(f"CPU {index}: KVM's paravirtual features (kvmclock, ...) keep state in MSRs "
                           "pemu does not migrate")
    try:
        check_cpu_state(cpu)
    except VMStateError as e:
        raise VMStateError(f"CPU {index} cannot be described: {e}") from None


def _cpu_post_load(cpu: Any, version_id: int) -> None:
    from pemu.system import cpus

    check_cpu_state(cpu)
    env = cpu.env
    accel = current_vm().accel
    accel_lapic = accel is not None and accel.irqchip_in_kernel()
    if env.kernel_lapic is not None and not accel_lapic:
        raise VMStateError("env.kernel_lapic: the stream has KVM's in-kernel local APIC, "
                           "this VM's local APIC is pemu's own (tcg, or kvm with kernel-irqchip=off)")
    if env.kernel_lapic is None and accel_lapic:
        raise VMStateError("env.kernel_lapic: missing; this VM's local APIC is KVM's in-kernel one")
    if env.kernel_lapic is not None:
        check_kernel_lapic(env.kernel_lapic)
    env.halted = env.mp_state in (X86MPState.HALTED, X86MPState.WAIT_FOR_SIPI, X86MPState.UNINITIALIZED)
    # What the vCPU thread keeps: halted, and the requests it has not taken yet.
    run = cpu.run
    special = cpus.CPU_INTERRUPT_NMI | cpus.CPU_INTERRUPT_INIT | cpus.CPU_INTERRUPT_SIPI
    with run.lock:
        run.halted = env.halted
        request = run.interrupt_request & ~special
        if env.nmi_pending:
            request |= cpus.CPU_INTERRUPT_NMI
        if env.init_pending:
            request |= cpus.CPU_INTERRUPT_INIT
        if env.mp_state == X86MPState.SIPI_RECEIVED:
            request |= cpus.CPU_INTERRUPT_SIPI
        run.interrupt_request = request
    cpus.cpu_synchronize_post_init(cpu)


# KVM's LAPIC register page: offsets of the registers checked on load.
_KLAPIC_SVR = 0xF0
_KLAPIC_LVT = 0x320
_KLAPIC_DIVIDE = 0x3E0


def check_kernel_lapic(page: bytes) -> None:
    """The in-kernel LAPIC's register page, as KVM_SET_LAPIC would take it:
    timer mode and the divide configuration are checked (KVM masks the rest)."""

    def reg(offset: int) -> int:
        return int.from_bytes(page[offset:offset + 4], "little")

    timer_mode = (reg(_KLAPIC_LVT) >> 17) & 3
    if timer_mode == 3:
        raise VMStateError("env.kernel_lapic: LVT timer mode 3 is reserved")
    if reg(_KLAPIC_DIVIDE) & ~0xB:
        raise VMStateError(f"env.kernel_lapic: divide configuration {reg(_KLAPIC_DIVIDE):#x} has reserved bits")
    for n in range(6):
        lvt = reg(_KLAPIC_LVT + 0x10 * n)
        if (lvt >> 8) & 7 in (3, 6):
            raise VMStateError(f"env.kernel_lapic: LVT {n} has reserved delivery mode {(lvt >> 8) & 7}")


VMSTATE_X86_CPU = VMStateDescription(
    "cpu", version_id=1,
    fields=[
        VMStateField("env.regs", Array(U64, 16)),
        VMStateField("env.rip", U64),
        VMStateField("env.rflags", U64),
        VMStateField("env.segs", StructList(VMSTATE_SEGMENT, 6)),
        VMStateField("env.ldt", Struct(VMSTATE_SEGMENT)),
        VMStateField("env.tr", Struct(VMSTATE_SEGMENT)),
        VMStateField("env.gdt", Struct(VMSTATE_DTABLE)),
        VMStateField("env.idt", Struct(VMSTATE_DTABLE)),
        VMStateField("env.cr0", U64),
        VMStateField("env.cr2", U64),
        VMStateField("env.cr3", U64),
        VMStateField("env.cr4", U64),
        VMStateField("env.cr8", UInt(4)),
        VMStateField("env.efer", U64),
        VMStateField("env.dr", Array(U64, 8)),
        VMStateField("env.fpuc", U16),
        VMStateField("env.fpus", U16),
        VMStateField("env.fptag", U8),
        VMStateField("env.fpop", UInt(11)),
        VMStateField("env.fpip", U64),
        VMStateField("env.fpdp", U64),
        VMStateField("env.fpregs", Array(U80, 8)),
        VMStateField("env.mxcsr", U32),
        VMStateField("env.xmm", Array(U128, 16)),
        VMStateField("env.ymmh", Array(U128, 16)),
        VMStateField("env.xcr0", U64),
        VMStateField("env.star", U64),
        VMStateField("env.lstar", U64),
        VMStateField("env.cstar", U64),
        VMStateField("env.fmask", U64),
        VMStateField("env.kernel_gs_base", U64),
        VMStateField("env.sysenter_cs", U32),
        VMStateField("env.sysenter_esp", U64),
        VMStateField("env.sysenter_eip", U64),
        VMStateField("env.pat", U64),
        VMStateField("env.tsc_aux", U32),
        VMStateField("env.misc_enable", U64),
        VMStateField("env.apic_base", U64),
        VMStateField("env.tsc", U64),
        VMStateField("env.tsc_deadline", U64),
        VMStateField("env.interrupt_shadow", BOOL),
        VMStateField("env.exception_injected", I16),
        VMStateField("env.exception_has_error_code", BOOL),
        VMStateField("env.exception_error_code", U32),
        VMStateField("env.interrupt_injected", I16),
        VMStateField("env.interrupt_soft", BOOL),
        VMStateField("env.nmi_injected", BOOL),
        VMStateField("env.nmi_pending", BOOL),
        VMStateField("env.nmi_masked", BOOL),
        VMStateField("env.init_pending", BOOL),
        VMStateField("env.sipi_vector", U8),
        VMStateField("env.mp_state", Enum(X86MPState)),
        VMStateField("env.kernel_lapic", Optional(Buffer(1024))),
    ],
    pre_save=_cpu_pre_save, post_load=_cpu_post_load)

__all__ = ["VMSTATE_X86_CPU", "check_cpu_state", "check_kernel_lapic"]
