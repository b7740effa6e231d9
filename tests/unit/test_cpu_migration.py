"""The x86 CPU's migratable state (pemu.target.i386.machine): a guest in long
mode with distinctive registers, saved on one tcg machine, loaded into a
fresh one, compared (saved again: the same bytes, read back through the new
engine), then run on; the same on kvm with a q35 board; and the refusal of
states the CPU would misbehave on (no CPU needed for those)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tcg_harness import Machine, needs_binutils, wait_for
from test_tcg_longmode import CODE, HANDLERS, PROLOGUE, build

from pemu.hw.core.cpu import CPURunState
from pemu.hw.i386.kvm.irqchip import TYPE_KVM_IRQCHIP, VMSTATE_KVM_IRQCHIP
from pemu.migration.savevm import VMSTATE_TIMERS, clock_state
from pemu.migration.vmstate import (
    VMStateDescription,
    VMStateError,
    vmstate_load_bytes,
    vmstate_save_bytes,
)
from pemu.system import cpus
from pemu.system.vm import VirtualMachine
from pemu.target.i386.cpu_models import x86_cpu_model_for
from pemu.target.i386.cpu_state import (
    CR0_PE_MASK,
    CR0_PG_MASK,
    CR4_PAE_MASK,
    CPUX86State,
    Efer,
    SegmentCache,
    SegReg,
    X86MPState,
)
from pemu.target.i386.machine import VMSTATE_X86_CPU
from pemu.util.timer import qemu_clock_enable_virtual
from pemu.util.vm_context import set_current_vm

FS_DATA, RESULT, SCRATCH = 0x20000, 0x21000, 0x22000
KGS = 0xFFFF8000CAFE0000
LSTAR = 0xFFFFFFFF81000000
R15 = 0x1122334455667788
XMM3 = 0xFEDCBA9876543210_0123456789ABCDEF
DR1 = 0x1234000
MXCSR = 0x7F80           # all exceptions masked, rounding toward zero

MAIN = f"""
    mov %cr4, %rax
    or $0x600, %rax      # OSFXSR, OSXMMEXCPT: SSE on
    mov %rax, %cr4
    mov $0x10, %ax
    mov %ax, %fs
    mov $0xC0000100, %ecx
    mov ${FS_DATA}, %eax
    xor %edx, %edx
    wrmsr
    mov $0xC0000102, %ecx
    mov ${KGS & 0xFFFFFFFF}, %eax
    mov ${KGS >> 32}, %edx
    wrmsr
    mov $0xC0000082, %ecx
    mov ${LSTAR & 0xFFFFFFFF}, %eax
    mov ${LSTAR >> 32}, %edx
    wrmsr
    movabs ${R15:#x}, %r15
    movabs ${XMM3 & (1 << 64) - 1:#x}, %rax
    movq %rax, %xmm3
    movabs ${XMM3 >> 64:#x}, %rax
    movq %rax, %xmm4
    punpcklqdq %xmm4, %xmm3
    pxor %xmm4, %xmm4
    movl ${MXCSR}, {SCRATCH}
    ldmxcsr {SCRATCH}
    mov ${DR1}, %rax
    mov %rax, %db1
    fninit
    fldpi
    fld1
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r14
    sti
    out %al, $0xf4
    hlt
    # Run on: what the registers hold now is the saved state.
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    sub %r14, %rax
    mov %rax, {RESULT + 56}
    mov %r15, {RESULT}
    movdqu %xmm3, {RESULT + 8}
    faddp
    fstpl {RESULT + 24}
    stmxcsr {RESULT + 32}
    mov $0xC0000102, %ecx
    rdmsr
    mov %eax, {RESULT + 40}
    mov %edx, {RESULT + 44}
    mov %fs:0, %rax
    mov %rax, {RESULT + 48}
    mov %db1, %rax
    mov %rax, {RESULT + 64}
    mov $0xC0000082, %ecx
    rdmsr
    mov %eax, {RESULT + 72}
    mov %edx, {RESULT + 76}
    out %al, $0xf4
1:  hlt
    jmp 1b
"""


def build_guest(m: Machine) -> None:
    """The long-mode machine of test_tcg_longmode, with MAIN after its handlers."""
    build(m, "hlt")
    m.asm(CODE, PROLOGUE + "main:\n jmp body\n" + HANDLERS + "body:\n" + MAIN)


def run_to_done(m: Machine, *, then: Callable[[], bool] = lambda: True, timeout: float = 10.0) -> None:
    """Run the machine until the guest writes port 0xF4 and ``then()`` holds; stopped after."""
    m.ports.done.clear()
    qemu_clock_enable_virtual(True)
    cpus.resume_all_vcpus()
    try:
        assert m.ports.done.wait(timeout), f"guest did not finish: {m.ports.writes}"
        assert wait_for(then, timeout), "guest did not reach the expected state"
    finally:
        cpus.pause_all_vcpus()
        qemu_clock_enable_virtual(False)


@pytest.fixture
def second_vm() -> Iterator[Callable[[], VirtualMachine]]:
    """Make another VM current (the destination of a migration); destroyed after the test."""
    made: list[tuple[VirtualMachine, Any]] = []

    def make() -> VirtualMachine:
        vm = VirtualMachine()
        made.append((vm, vm.activate()))
        return vm

    yield make
    for vm, previous in reversed(made):
        vm.destroy()
        set_current_vm(previous)


@needs_binutils
def test_tcg_cpu_state_moves_to_a_fresh_machine_and_runs_on(virtual_machine: VirtualMachine,
                                                            second_vm: Callable[[], VirtualMachine]) -> None:
    source = Machine()
    build_guest(source)
    source.load(FS_DATA, struct.pack("<Q", 0x5A5A_0000_1234_A5A5))
    run_to_done(source, then=lambda: source.cpu.run.halted)
    assert source.outputs() == []   # no exception on the way
    env = source.cpu.env
    cpu_bytes = vmstate_save_bytes(VMSTATE_X86_CPU, source.cpu)
    # What the guest made is in the state: long mode, its registers, MSRs, x87/SSE, halted with IF=1.
    assert env.efer & Efer.LMA and env.segs[SegReg.CS].flags & (1 << 21)
    assert env.regs[15] == R15 and env.xmm[3] == XMM3 and env.mxcsr == MXCSR and env.dr[1] == DR1
    assert env.kernel_gs_base == KGS and env.lstar == LSTAR and env.segs[SegReg.FS].base == FS_DATA
    assert env.fpregs[0] == 0x3FFF_8000000000000000 and env.fpregs[1] >> 64 == 0x4000   # 1.0, pi
    assert env.mp_state == X86MPState.HALTED and env.rflags & (1 << 9)
    saved_tsc = env.tsc
    clock_bytes = vmstate_save_bytes(VMSTATE_TIMERS, clock_state(virtual_machine))
    ram = source.memory.read(0, 4 << 20)

    dest_vm = second_vm()
    dest = Machine()
    dest.load(0, ram)
    dest.vcpu  # noqa: B018  (the engine exists: what is loaded goes into it and is read back from it)
    time.sleep(0.05)   # downtime: the guest must not see it
    vmstate_load_bytes(VMSTATE_TIMERS, clock_state(dest_vm), clock_bytes)
    vmstate_load_bytes(VMSTATE_X86_CPU, dest.cpu, cpu_bytes)
    assert dest.cpu.run.halted
    dest.cpu.env.reset()   # forget what was loaded: saving must read it all from the engine
    assert vmstate_save_bytes(VMSTATE_X86_CPU, dest.cpu) == cpu_bytes
    assert dest.cpu.env.tsc == saved_tsc

    # Run on: an interrupt wakes the halted CPU; it reports from its registers.
    dest.cpu.pic_vectors.append(0x20)
    cpus.cpu_interrupt(dest.cpu, cpus.CPU_INTERRUPT_HARD)
    run_to_done(dest)
    assert dest.outputs() == [0x20]   # the IRQ handler of the IDT that came with the state
    out = dest.memory.read(RESULT, 80)
    r15, xmm_lo, xmm_hi, total, mxcsr, kgs, fs_word, elapsed, dr1, lstar = struct.unpack("<QQQdIxxxxQQQQQ", out)
    assert r15 == R15 and xmm_hi << 64 | xmm_lo == XMM3
    assert abs(total - 4.14159265358979) < 1e-12
    assert mxcsr == MXCSR and kgs == KGS and lstar == LSTAR and dr1 == DR1
    assert fs_word == 0x5A5A_0000_1234_A5A5
    # The TSC went on from where it was: forward, and without the 50 ms the state spent outside.
    assert 0 < elapsed < 20_000_000, elapsed
    dest.close()
    source.close()


@needs_binutils
def test_tcg_loaded_state_is_what_the_engine_holds_before_any_run(second_vm: Callable[[], VirtualMachine]) -> None:
    """A state loaded into an engine that already ran something else replaces all of it."""
    source = Machine()
    build_guest(source)
    run_to_done(source, then=lambda: source.cpu.run.halted)
    cpu_bytes = vmstate_save_bytes(VMSTATE_X86_CPU, source.cpu)
    ram = source.memory.read(0, 4 << 20)
    second_vm()
    dest = Machine()
    dest.asm(0x8000, ".code16\n movw $0x1234, %ax\n fldz\n out %al, $0xf4\n 1: hlt\n jmp 1b")
    dest.start_real(0x8000)
    run_to_done(dest)
    dest.load(0, ram)
    vmstate_load_bytes(VMSTATE_X86_CPU, dest.cpu, cpu_bytes)
    dest.cpu.env.reset()
    assert vmstate_save_bytes(VMSTATE_X86_CPU, dest.cpu) == cpu_bytes
    dest.close()
    source.close()


# --- refusals (no engine: the checks run before the accelerator is touched) ----------------


class BareCPU:
    """What the description needs of a CPU, without an accelerator."""

    def __init__(self, model: str = "qemu64") -> None:
        self.cpu_index = 0
        self.run = CPURunState()
        self.env = CPUX86State()
        self.model = x86_cpu_model_for(model)
        self.apic: Any = None


def long_mode(env: CPUX86State) -> None:
    env.cr0 |= CR0_PE_MASK | CR0_PG_MASK
    env.cr0 &= ~((1 << 29) | (1 << 30))
    env.cr4 |= CR4_PAE_MASK
    env.cr3 = 0x1000
    env.efer = Efer.LME | Efer.LMA | Efer.SCE | Efer.NXE
    env.segs[SegReg.CS] = SegmentCache(0x08, 0, 0xFFFFFFFF, 0x00AF9B00)
    for reg in (SegReg.DS, SegReg.ES, SegReg.SS, SegReg.FS, SegReg.GS):
        env.segs[reg] = SegmentCache(0x10, 0, 0xFFFFFFFF, 0x00CF9300)
    env.tr = SegmentCache(0x30, 0x5800, 0x67, 0x00008B00)
    env.rip = 0xFFFFFFFF81000000


# The description without its checks and its hooks: writes any state as it is.
RAW = VMStateDescription("cpu", VMSTATE_X86_CPU.version_id, VMSTATE_X86_CPU.fields)


def stream_of(change: Callable[[CPUX86State], None]) -> bytes:
    cpu = BareCPU()
    long_mode(cpu.env)
    change(cpu.env)
    return vmstate_save_bytes(RAW, cpu)


def test_a_good_long_mode_state_loads() -> None:
    cpu = BareCPU()
    data = stream_of(lambda env: None)
    vmstate_load_bytes(VMSTATE_X86_CPU, cpu, data)
    assert cpu.env.rip == 0xFFFFFFFF81000000 and cpu.env.efer & Efer.LMA
    assert vmstate_save_bytes(VMSTATE_X86_CPU, cpu) == data


def _set(attr: str, value: Any) -> Callable[[CPUX86State], None]:
    return lambda env: setattr(env, attr, value)


def _seg(reg: int, **kw: int) -> Callable[[CPUX86State], None]:
    def change(env: CPUX86State) -> None:
        for name, value in kw.items():
            setattr(env.segs[reg], name, value)

    return change


@pytest.mark.parametrize("change, field", [
    (_set("rip", 0x0000800000000000), "env.rip"),                    # not canonical in 64-bit mode
    (_set("cr0", CR0_PG_MASK | 0x10), "env.cr0"),                     # paging without protection
    (_set("cr0", 0x8000_0011 | 1 << 40), "env.cr0"),                  # reserved bits
    (_set("cr0", 0x2000_0011), "env.cr0"),                            # NW without CD
    (_set("efer", Efer.LME | Efer.SCE), "env.efer"),                  # LMA off with LME and PG on
    (_set("cr4", 1 << 18), "env.cr4"),                                # OSXSAVE on qemu64 (no xsave)
    (_set("cr4", 1 << 30), "env.cr4"),                                # reserved bit
    (_set("rflags", 0x2 | 1 << 3), "env.rflags"),                     # reserved bit 3
    (_set("rflags", 0x0), "env.rflags"),                              # bit 1 clear
    (_set("xcr0", 0x7), "env.xcr0"),                                  # AVX state on a model without AVX
    (_set("mxcsr", 1 << 20), "env.mxcsr"),
    (_set("interrupt_injected", 5), "env.interrupt_injected"),        # external interrupt, reserved vector
    (_set("exception_injected", 40), "env.exception_injected"),
    (_set("kernel_gs_base", 0x0000800000000000), "env.kernel_gs_base"),
    (_set("kernel_lapic", bytes(1024)), "env.kernel_lapic"),          # KVM's LAPIC page in a tcg VM
    (_set("ymmh", [1] + [0] * 15), "env.ymmh"),
    (_seg(SegReg.CS, limit=0xFFFF0), "env.segs[1]"),                  # 4 KiB granularity, limit not ...FFF
    (_seg(SegReg.CS, flags=0x00CF9300), "env.segs[1]"),               # CS holds a data segment
    (_seg(SegReg.CS, flags=0x00EF9B00), "env.segs[1]"),               # L and D both set
    (_seg(SegReg.SS, flags=0x00CF9B00), "env.segs[2]"),               # SS holds a code segment
    (_seg(SegReg.FS, base=0x0000800000000000), "env.segs[4]"),        # FS base not canonical
    (lambda env: setattr(env, "tr", SegmentCache(0x30, 0, 0x67, 0x8200)), "env.tr"),  # an LDT in TR
])
def test_bad_cpu_state_is_refused_naming_the_field(change: Callable[[CPUX86State], None], field: str) -> None:
    data = stream_of(change)
    with pytest.raises(VMStateError, match=field.replace("[", r"\[").replace("]", r"\]")):
        vmstate_load_bytes(VMSTATE_X86_CPU, BareCPU(), data)


def test_out_of_range_values_are_refused_by_their_kinds() -> None:
    good = stream_of(lambda env: None)
    cpu = BareCPU()
    # mp_state is the byte before the kernel_lapic presence byte at the end.
    bad_state = good[:-2] + bytes([9]) + good[-1:]
    with pytest.raises(VMStateError, match="env.mp_state"):
        vmstate_load_bytes(VMSTATE_X86_CPU, cpu, bad_state)
    with pytest.raises(VMStateError, match="env.kernel_lapic"):
        vmstate_load_bytes(VMSTATE_X86_CPU, cpu, good[:-1] + bytes([2]))
    with pytest.raises(VMStateError, match="segs"):   # a flags value outside the descriptor bits
        vmstate_load_bytes(VMSTATE_X86_CPU, cpu, stream_of(_seg(SegReg.DS, flags=0x1)))


@pytest.mark.parametrize("change, reason", [
    (_set("smm", True), "system management mode"),
    (_set("cr0", CR0_PG_MASK | 0x10), "cannot be described: env.cr0"),
])
def test_a_cpu_that_cannot_be_described_is_refused_at_save(change: Callable[[CPUX86State], None],
                                                           reason: str) -> None:
    cpu = BareCPU()
    long_mode(cpu.env)
    change(cpu.env)
    with pytest.raises(VMStateError, match=reason):
        vmstate_save_bytes(VMSTATE_X86_CPU, cpu)


def test_a_cpu_shut_down_by_a_triple_fault_is_refused_at_save() -> None:
    cpu = BareCPU()
    cpu.run.shutdown = True
    with pytest.raises(VMStateError, match="triple fault"):
        vmstate_save_bytes(VMSTATE_X86_CPU, cpu)


# --- kvm: a q35 board each side, a 32-bit guest -----------------------------------------------

KVM_CODE, KVM_FLAG, KVM_RESULT, KVM_SCRATCH = 0x8000, 0x9000, 0x9100, 0x9200
KVM_BOARD = ["-machine", "q35", "-nodefaults", "-display", "none", "-S", "-accel", "kvm", "-m", "32"]
SYSENTER_EIP, PAT = 0xC0DE1000, 0x0007010600070106
FCW = 0x0F7F   # x87: round toward zero, all exceptions masked
# The interrupt controllers and the PIT (KVM's in-kernel ones, in the kvm test).
DEVICES_SETUP = """
    mov $0xFB, %al                      # the in-kernel 8259: mask all but the cascade
    out %al, $0x21
    mov $0x34, %al                      # the in-kernel 8254: channel 0, mode 2
    out %al, $0x43
    mov $0x9c, %al
    out %al, $0x40
    mov $0x2e, %al
    out %al, $0x40
    movl $0x18, 0xFEC00000              # the in-kernel I/O APIC: pin 4, masked, vector 0x35
    movl $0x10035, 0xFEC00010
"""
DEVICES_READ = f"""
    in $0x21, %al
    mov %al, {KVM_RESULT + 56}
    mov $0xE2, %al                      # read back channel 0's status
    out %al, $0x43
    in $0x40, %al
    mov %al, {KVM_RESULT + 57}
    movl $0x18, 0xFEC00000
    mov 0xFEC00010, %eax
    mov %eax, {KVM_RESULT + 60}
"""
def guest_main(setup: str, read: str) -> str:
    return f"""
    .code32
    mov $0x176, %ecx
    mov ${SYSENTER_EIP}, %eax
    xor %edx, %edx
    wrmsr
    mov $0x277, %ecx
    mov ${PAT & 0xFFFFFFFF}, %eax
    mov ${PAT >> 32}, %edx
    wrmsr
    mov ${DR1}, %eax
    mov %eax, %db1
{setup}    mov $0x5eed, %edi
    rdtsc
    mov %eax, %esi
    mov %edx, %ebp
    movl $1, {KVM_FLAG + 4}
1:  cmpl $0, {KVM_FLAG}
    je 1b
    # Run on from the restored registers (this KVM emulates each instruction:
    # only what its emulator knows is used here).
    rdtsc
    sub %esi, %eax
    sbb %ebp, %edx
    mov %eax, {KVM_RESULT + 40}
    mov %edx, {KVM_RESULT + 44}
    mov %edi, {KVM_RESULT}
    movdqu %xmm5, {KVM_RESULT + 4}
    fnstcw {KVM_RESULT + 20}
    mov $0x176, %ecx
    rdmsr
    mov %eax, {KVM_RESULT + 32}
    mov %db1, %eax
    mov %eax, {KVM_RESULT + 36}
    mov $0x277, %ecx
    rdmsr
    mov %eax, {KVM_RESULT + 48}
    mov %edx, {KVM_RESULT + 52}
{read}    movl $2, {KVM_FLAG + 4}
2:  hlt
    jmp 2b
"""


KVM_MAIN = guest_main(DEVICES_SETUP, DEVICES_READ)
PLAIN_MAIN = guest_main("", "")
XMM5 = 0x11223344_55667788_99AABBCC_DDEEFF00
ST0 = 0x4000_C90FDAA22168C235   # pi


def kvm_sets_the_tsc() -> bool:
    """Whether this KVM takes a guest TSC written as MSR_IA32_TSC (a real one
    does; the software KVM of the test machines ignores it, and TSC_ADJUST
    and the vCPU's TSC offset attribute as well: the guest sees the host's TSC)."""
    from pemu.accel.kvm import kvm_sys as k

    system = k.KVMSystem()
    try:
        vm = system.create_vm()
        vcpu = vm.create_vcpu(0)
        vcpu.set_msrs({0x10: 1000})
        tsc = vcpu.get_msrs([0x10])[0x10]
        vcpu.close()
        vm.close()
    finally:
        system.close()
    return tsc < 1 << 40


def find_device(vm: VirtualMachine, typename: str) -> Any:
    def walk(obj: Any) -> Any:
        for _, child in obj.children():
            if child.typename == typename:
                return child
            found = walk(child)
            if found is not None:
                return found
        return None

    found = walk(vm.qom_root)
    assert found is not None, typename
    return found


def _kvm_wait(memory: Any, value: int, timeout: float = 30.0) -> None:
    assert wait_for(lambda: struct.unpack("<I", memory.read(KVM_FLAG + 4, 4))[0] == value, timeout), \
        f"the guest did not reach step {value}"


@pytest.mark.kvm
@needs_binutils
def test_kvm_cpu_state_moves_to_a_fresh_vm_and_runs_on(virtual_machine: VirtualMachine,
                                                       second_vm: Callable[[], VirtualMachine]) -> None:
    from guestasm import assemble

    from pemu.system import vl

    source_vm = vl.qemu_init(KVM_BOARD)
    assert source_vm.machine is not None
    cpu = source_vm.machine.cpus[0]
    cpu.memory.write(KVM_CODE, assemble(KVM_MAIN, KVM_CODE))
    cpu.env.reset()
    cpu.env.set_protected_mode_flat32(KVM_CODE)
    cpu.env.cr4 |= 0x600   # OSFXSR, OSXMMEXCPT
    cpu.env.xmm[5], cpu.env.mxcsr, cpu.env.fpuc = XMM5, 0x7F80, FCW
    cpu.env.fpregs[0], cpu.env.fpus, cpu.env.fptag = ST0, 7 << 11, 0x80   # pi pushed: TOP 7, register 7 full
    cpus.cpu_synchronize_post_reset(cpu)
    cpus.vm_start()
    try:
        _kvm_wait(cpu.memory, 1)
    finally:
        cpus.vm_stop()
    cpu_bytes = vmstate_save_bytes(VMSTATE_X86_CPU, cpu)
    irqchip_bytes = vmstate_save_bytes(VMSTATE_KVM_IRQCHIP, find_device(source_vm, TYPE_KVM_IRQCHIP))
    env = cpu.env
    assert env.regs[7] == 0x5EED and env.xmm[5] == XMM5
    assert env.sysenter_eip == SYSENTER_EIP and env.pat == PAT and env.dr[1] == DR1
    assert env.fpregs[0] == ST0 and env.fpus == 7 << 11 and env.fptag == 0x80 and env.mxcsr == 0x7F80
    assert env.kernel_lapic is not None and env.mp_state == X86MPState.RUNNABLE
    assert vmstate_save_bytes(VMSTATE_X86_CPU, cpu) == cpu_bytes   # stopped: the same state twice
    saved_tsc = env.tsc
    clock_bytes = vmstate_save_bytes(VMSTATE_TIMERS, clock_state(source_vm))
    ram = cpu.memory.read(0, 1 << 20)

    dest_vm = vl.qemu_init(KVM_BOARD)
    assert dest_vm.machine is not None
    dest = dest_vm.machine.cpus[0]
    dest.memory.write(0, ram)
    vmstate_load_bytes(VMSTATE_TIMERS, clock_state(dest_vm), clock_bytes)
    vmstate_load_bytes(VMSTATE_X86_CPU, dest, cpu_bytes)
    dest_irqchip = find_device(dest_vm, TYPE_KVM_IRQCHIP)
    vmstate_load_bytes(VMSTATE_KVM_IRQCHIP, dest_irqchip, irqchip_bytes)
    assert vmstate_save_bytes(VMSTATE_KVM_IRQCHIP, dest_irqchip)[:16 + 16 + 216] == irqchip_bytes[:16 + 16 + 216]
    dest.env.reset()   # forget what was loaded: saving must read it all back from KVM
    assert vmstate_save_bytes(VMSTATE_X86_CPU, dest) == cpu_bytes
    assert dest.env.tsc == saved_tsc

    dest.memory.write(KVM_FLAG, struct.pack("<I", 1))
    cpus.vm_start()
    try:
        _kvm_wait(dest.memory, 2)
    finally:
        cpus.vm_stop()
    edi, xmm, fcw, sysenter_eip, dr1, elapsed, pat, imr, pit_status, ioapic_pin4 = struct.unpack(
        "<I16sHxxxxxxxxxxIIQQBBxxI", dest.memory.read(KVM_RESULT, 64))
    # The in-kernel interrupt controllers came along.
    assert imr == 0xFB and pit_status & 0x3F == 0x34 and ioapic_pin4 == 0x10035
    assert edi == 0x5EED and int.from_bytes(xmm, "little") == XMM5 and fcw == FCW
    assert sysenter_eip == SYSENTER_EIP and dr1 == DR1 and pat == PAT
    if kvm_sets_the_tsc():
        # The TSC went on from the saved value (a fresh VM's starts near 0: the difference would wrap).
        assert 0 < elapsed < 1 << 40, elapsed
    dest_vm.destroy()
    source_vm.destroy()


class _Irqchip:
    def __init__(self) -> None:
        self.pic_master = self.pic_slave = bytes(16)
        self.ioapic = bytes(216)
        self.pit = bytes(112)


def _pic(**fields: int) -> bytes:
    names = ("last_irr irr imr isr priority_add irq_base read_reg_select poll special_mask init_state auto_eoi "
             "rotate_on_auto_eoi special_fully_nested_mode init4 elcr elcr_mask").split()
    return bytes(fields.get(name, 0) for name in names)


@pytest.mark.parametrize("attr, value, reason", [
    ("pic_master", _pic(priority_add=8), "pic_master"),
    ("pic_slave", _pic(irq_base=0x71), "pic_slave"),
    ("pic_master", _pic(init_state=4), "pic_master"),
    ("pic_master", _pic(poll=2), "poll"),
    ("pic_slave", _pic(elcr=0x10, elcr_mask=0x0F), "elcr"),
    ("ioapic", bytes(8) + (0x100).to_bytes(4, "little") + bytes(204), "ioregsel"),
    ("ioapic", bytes(24 + 8 * 3) + (0x300).to_bytes(8, "little") + bytes(216 - 32 - 24), "pin 3"),
    ("pit", bytes(13) + bytes([7]) + bytes(98), "channel 0"),            # mode 7
    ("pit", bytes(24) + (0x10001).to_bytes(4, "little") + bytes(84), "channel 1"),
])
def test_bad_in_kernel_irqchip_state_is_refused(attr: str, value: bytes, reason: str) -> None:
    """Checked before anything reaches KVM (no /dev/kvm needed)."""
    source = _Irqchip()
    setattr(source, attr, value)
    raw = VMStateDescription("kvm-irqchip", 1, VMSTATE_KVM_IRQCHIP.fields)
    with pytest.raises(VMStateError, match=reason):
        vmstate_load_bytes(VMSTATE_KVM_IRQCHIP, _Irqchip(), vmstate_save_bytes(raw, source))


# --- across accelerators: tcg <-> kvm with pemu's own APIC (kernel-irqchip=off) -----------------

BOARD = ["-machine", "q35", "-nodefaults", "-display", "none", "-S", "-m", "32"]


def _start(accel: str) -> tuple[VirtualMachine, Any]:
    from guestasm import assemble

    from pemu.system import vl

    vm = vl.qemu_init(BOARD + ["-accel", accel])
    assert vm.machine is not None
    cpu = vm.machine.cpus[0]
    cpu.memory.write(KVM_CODE, assemble(PLAIN_MAIN, KVM_CODE))
    cpu.env.reset()
    cpu.env.set_protected_mode_flat32(KVM_CODE)
    cpu.env.cr4 |= 0x600
    cpu.env.xmm[5], cpu.env.mxcsr, cpu.env.fpuc = XMM5, 0x7F80, FCW
    cpu.env.fpregs[0], cpu.env.fpus, cpu.env.fptag = ST0, 7 << 11, 0x80
    if accel == "tcg":
        cpu.run.accel_vcpu.engine_vcpu()   # made now: what is loaded goes into it and is read back
    cpus.cpu_synchronize_post_reset(cpu)
    return vm, cpu


def _run_to(cpu: Any, step: int) -> None:
    cpus.vm_start()
    try:
        _kvm_wait(cpu.memory, step)
    finally:
        cpus.vm_stop()


@pytest.mark.kvm
@needs_binutils
@pytest.mark.parametrize("source_accel, dest_accel", [
    ("tcg", "kvm,kernel-irqchip=off"),
    ("kvm,kernel-irqchip=off", "tcg"),
])
def test_cpu_and_apic_state_move_between_accelerators(source_accel: str, dest_accel: str) -> None:
    from pemu.hw.intc.apic import VMSTATE_APIC_DEVICE

    source_vm, cpu = _start(source_accel)
    _run_to(cpu, 1)
    cpu_bytes = vmstate_save_bytes(VMSTATE_X86_CPU, cpu)
    apic_bytes = vmstate_save_bytes(VMSTATE_APIC_DEVICE, cpu.apic_state)
    clock_bytes = vmstate_save_bytes(VMSTATE_TIMERS, clock_state(source_vm))
    ram = cpu.memory.read(0, 1 << 20)
    saved = cpu.env

    dest_vm, dest = _start(dest_accel)
    dest.memory.write(0, ram)
    vmstate_load_bytes(VMSTATE_TIMERS, clock_state(dest_vm), clock_bytes)
    vmstate_load_bytes(VMSTATE_X86_CPU, dest, cpu_bytes)
    vmstate_load_bytes(VMSTATE_APIC_DEVICE, dest.apic_state, apic_bytes)
    dest.env.reset()
    cpus.cpu_synchronize_state(dest)   # what the other accelerator now holds
    for name in ("regs", "rip", "rflags", "cr0", "cr3", "cr4", "efer", "xmm", "mxcsr", "fpuc", "fpus", "fptag",
                 "fpregs", "sysenter_eip", "pat", "tsc"):
        assert getattr(dest.env, name) == getattr(saved, name), name
    assert dest.env.segs == saved.segs and dest.env.dr[:4] == saved.dr[:4]
    assert dest.apic.get_base() == cpu.apic.get_base() and dest.apic.lvt == cpu.apic.lvt

    dest.memory.write(KVM_FLAG, struct.pack("<I", 1))
    _run_to(dest, 2)
    edi, xmm, fcw, sysenter_eip, dr1, elapsed, pat = struct.unpack(
        "<I16sHxxxxxxxxxxIIQQ", dest.memory.read(KVM_RESULT, 56))
    assert edi == 0x5EED and int.from_bytes(xmm, "little") == XMM5 and fcw == FCW
    assert sysenter_eip == SYSENTER_EIP and dr1 == DR1 and pat == PAT
    if dest_accel == "tcg" or kvm_sets_the_tsc():
        # On from the saved TSC: under tcg the virtual clock plus an offset, restored from the stream.
        assert 0 < elapsed < 1 << 32, elapsed
    dest_vm.destroy()
    source_vm.destroy()


@needs_binutils
def test_tcg_ap_waiting_for_sipi_and_a_pending_nmi_survive(virtual_machine: VirtualMachine) -> None:
    """-smp 2 on tcg: the AP waits for its start-up IPI and the BSP has an NMI
    pending when the VM is saved; on the destination the NMI is taken through
    the BSP's IDT and a SIPI starts the AP (its APIC still waits for one)."""
    from guestasm import assemble

    from pemu.hw.intc.apic import VMSTATE_APIC_DEVICE
    from pemu.hw.intc.apic_common import APIC_DM_STARTUP
    from pemu.system import vl
    from pemu.target.i386.cpu_state import DescriptorTable

    gdt, idt, nmi_handler, ap_code, marks = 0x5000, 0x6000, 0x8100, 0x9000, 0x9100
    board = BOARD + ["-accel", "tcg", "-smp", "2"]

    def build() -> tuple[VirtualMachine, list[Any]]:
        vm = vl.qemu_init(board)
        assert vm.machine is not None
        bsp = vm.machine.cpus[0]
        mem = bsp.memory
        mem.write(gdt, struct.pack("<4Q", 0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF))
        mem.write(idt + 2 * 8, struct.pack("<HHBBH", nmi_handler & 0xFFFF, 0x10, 0, 0x8E, nmi_handler >> 16))
        mem.write(KVM_CODE, assemble(".code32\n1: jmp 1b", KVM_CODE))
        mem.write(nmi_handler, assemble(f".code32\n movl $0xAA, {marks + 4}\n 1: jmp 1b", nmi_handler))
        mem.write(ap_code, assemble(f".code16\n movl $0x5151, {marks}\n 1: hlt\n jmp 1b", ap_code))
        bsp.env.reset()
        bsp.env.set_protected_mode_flat32(KVM_CODE)
        bsp.env.gdt = DescriptorTable(gdt, 31)
        bsp.env.idt = DescriptorTable(idt, 0x7FF)
        bsp.env.regs[4] = 0x7000   # the NMI's frame goes below
        cpus.cpu_synchronize_post_reset(bsp)
        return vm, vm.machine.cpus

    source_vm, (bsp, ap) = build()
    cpus.cpu_interrupt(bsp, cpus.CPU_INTERRUPT_NMI)   # raised while the VM is stopped
    sections = [vmstate_save_bytes(VMSTATE_X86_CPU, cpu) for cpu in (bsp, ap)]
    sections += [vmstate_save_bytes(VMSTATE_APIC_DEVICE, cpu.apic_state) for cpu in (bsp, ap)]
    assert bsp.env.nmi_pending and ap.env.mp_state == X86MPState.WAIT_FOR_SIPI
    source_vm.destroy()

    dest_vm, (dest_bsp, dest_ap) = build()
    cpus.cpu_reset_interrupt(dest_bsp, cpus.CPU_INTERRUPT_NMI)
    dest_ap.apic.wait_for_sipi = False     # would refuse a SIPI unless the stream says it waits
    for cpu, data in zip((dest_bsp, dest_ap), sections[:2], strict=True):
        vmstate_load_bytes(VMSTATE_X86_CPU, cpu, data)
    for cpu, data in zip((dest_bsp, dest_ap), sections[2:], strict=True):
        vmstate_load_bytes(VMSTATE_APIC_DEVICE, cpu.apic_state, data)
    assert dest_bsp.run.interrupt_request & cpus.CPU_INTERRUPT_NMI
    assert dest_ap.run.halted and dest_ap.apic.wait_for_sipi
    dest_ap.apic.accept_message(APIC_DM_STARTUP, ap_code >> 12, 0)
    cpus.vm_start()
    try:
        assert wait_for(lambda: dest_bsp.memory.read(marks, 8) == struct.pack("<II", 0x5151, 0xAA), 10), \
            dest_bsp.memory.read(marks, 8).hex()
    finally:
        cpus.vm_stop()
    dest_vm.destroy()
