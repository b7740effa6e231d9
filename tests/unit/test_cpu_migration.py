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
from pemu.hw.i386.kvm.irqchip import VMSTATE_KVM_IRQCHIP
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
from pemu.util.timer import QEMU_CLOCK_VIRTUAL, qemu_clock_enable_virtual, qemu_clock_get_ns
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
    source_ran = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)   # the virtual time the source ran
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
    loaded_at = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)
    run_to_done(dest)
    dest_ran = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) - loaded_at
    assert dest.outputs() == [0x20]   # the IRQ handler of the IDT that came with the state
    out = dest.memory.read(RESULT, 80)
    r15, xmm_lo, xmm_hi, total, mxcsr, kgs, fs_word, elapsed, dr1, lstar = struct.unpack("<QQQdIxxxxQQQQQ", out)
    assert r15 == R15 and xmm_hi << 64 | xmm_lo == XMM3
    assert abs(total - 4.14159265358979) < 1e-12
    assert mxcsr == MXCSR and kgs == KGS and lstar == LSTAR and dr1 == DR1
    assert fs_word == 0x5A5A_0000_1234_A5A5
    # The TSC went on from where it was (read back above: the saved value), forward and only
    # while a guest ran: the 50 ms the state spent outside are not in it.
    assert 0 < elapsed <= source_ran + dest_ran, (elapsed, source_ran, dest_ran)
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


@needs_binutils
@pytest.mark.parametrize("event, outputs", [
    ({"interrupt_injected": 0x20}, [0x20]),                    # an external interrupt half delivered: taken
    ({"interrupt_injected": 0x80, "interrupt_soft": True}, []),  # INT n: its instruction raises it again
])
def test_tcg_finishes_an_event_another_accelerator_was_delivering(event: dict[str, Any], outputs: list[int],
                                                                  second_vm: Callable[[], VirtualMachine]) -> None:
    """KVM can stop a vCPU between the start and the end of an event's
    delivery (its vcpu events say so); tcg delivers such an event on load."""
    source = Machine()
    build_guest(source)
    run_to_done(source, then=lambda: source.cpu.run.halted)
    ram = source.memory.read(0, 4 << 20)
    # The same state as KVM would give it, stopped while delivering the event.
    bare = BareCPU()
    vmstate_load_bytes(VMSTATE_X86_CPU, bare, vmstate_save_bytes(VMSTATE_X86_CPU, source.cpu))
    for name, value in event.items():
        setattr(bare.env, name, value)
    bare.env.mp_state = X86MPState.RUNNABLE
    cpu_bytes = vmstate_save_bytes(RAW, bare)
    second_vm()
    dest = Machine()
    dest.load(0, ram)
    vmstate_load_bytes(VMSTATE_X86_CPU, dest.cpu, cpu_bytes)
    qemu_clock_enable_virtual(True)
    cpus.resume_all_vcpus()
    try:   # the guest halts again after the handler's IRET (RIP was at its hlt)
        assert wait_for(lambda: dest.outputs() == outputs and dest.cpu.run.halted, 5.0), dest.outputs()
    finally:
        cpus.pause_all_vcpus()
        qemu_clock_enable_virtual(False)
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
