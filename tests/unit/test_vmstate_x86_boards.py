"""The x86 CPU's migratable state on q35 boards built in-process (kept apart
from test_cpu_migration.py because building a board initialises every QOM
class, which test_qom.py must see uninitialised): a kvm guest's CPU and the
in-kernel irqchip moved to a fresh VM and run on; CPU and APIC moved between
tcg and kvm (kernel-irqchip=off); an AP waiting for its SIPI and a pending
NMI on tcg with -smp 2."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from tcg_harness import needs_binutils, wait_for
from test_cpu_migration import DR1

from pemu.hw.i386.kvm.irqchip import TYPE_KVM_IRQCHIP, VMSTATE_KVM_IRQCHIP
from pemu.migration.savevm import VMSTATE_TIMERS, clock_state
from pemu.migration.vmstate import vmstate_load_bytes, vmstate_save_bytes
from pemu.system import cpus
from pemu.system.vm import VirtualMachine
from pemu.target.i386.cpu_state import X86MPState
from pemu.target.i386.machine import VMSTATE_X86_CPU

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
def test_kvm_cpu_state_moves_to_a_fresh_vm_and_runs_on() -> None:
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
        # On from the saved TSC (a fresh VM's is far from it: the difference would wrap or be huge).
        assert 0 < elapsed < 1 << 36, elapsed
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
