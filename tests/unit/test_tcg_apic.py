"""Assembled guests on the local APIC under tcg: a LAPIC timer interrupt, and
a second CPU started with INIT and a start-up IPI that then takes a fixed IPI,
both CPUs run in turn on the one tcg thread."""

from __future__ import annotations

import struct
import threading

import pytest
from tcg_harness import PortRecorder, StubCPU, needs_binutils

from pemu.hw.intc.apic import APIC, APICMemory
from pemu.hw.intc.apic_common import APIC_DEFAULT_ADDRESS, APICBus
from pemu.system import cpus
from pemu.system.memory import AddressSpace, MemoryRegion, MemoryRegionOps
from pemu.target.i386.cpu import X86CPUAPICLink, x86_cpu_connect_pic
from pemu.util.main_loop import bql
from pemu.util.timer import qemu_clock_enable_virtual, timerlist_run_expired

pytestmark = needs_binutils

CODE, TRAMPOLINE, GDT, IDT, FLAGS = 0x10000, 0x8000, 0x5000, 0x6000, 0x7000
READY, TIMER_DONE = FLAGS, FLAGS + 4


def gate32(offset: int) -> bytes:
    return struct.pack("<HHBBH", offset & 0xFFFF, 0x08, 0, 0x8E, offset >> 16)


class APICStubCPU(StubCPU):
    """A test CPU with its local APIC wired as X86CPU wires it."""

    def __init__(self, memory: AddressSpace, io: AddressSpace, index: int) -> None:
        super().__init__(memory, io)
        self.cpu_index = index
        self.apic_id = index
        self.apic = APIC(index, bsp=index == 0)
        self.apic.cpu = X86CPUAPICLink(self)  # type: ignore[arg-type]
        x86_cpu_connect_pic(self, lambda: -1)  # type: ignore[arg-type]


class SMPMachine:
    def __init__(self, ncpus: int) -> None:
        from pemu.accel.accel import configure_accelerators

        configure_accelerators("tcg", smp_cpus=ncpus)
        self.sysmem = MemoryRegion.container("system", 1 << 40)
        self.sysmem.add_subregion(0, MemoryRegion.ram("ram", 4 << 20))
        self.ports = PortRecorder()
        io_root = MemoryRegion.container("io", 0x10000)
        io_root.add_subregion(0, MemoryRegion.io("ports", 0x10000, MemoryRegionOps(
            self.ports.read, self.ports.write, valid_max_access_size=4, impl_max_access_size=4,
            valid_unaligned=True)))
        self.io = AddressSpace(io_root, "io-test")
        self.bus = APICBus()
        self.spaces = [AddressSpace(self.sysmem, f"cpu-memory-{i}") for i in range(ncpus)]
        self.cpus = [APICStubCPU(self.spaces[i], self.io, i) for i in range(ncpus)]
        for cpu in self.cpus:
            self.bus.attach(cpu.apic)
        window = APICMemory(self.bus, lambda: getattr(cpus.current_cpu(), "apic", None))
        self.sysmem.add_subregion_overlap(APIC_DEFAULT_ADDRESS, window.region(), 1)
        for cpu in self.cpus:
            cpus.qemu_init_vcpu(cpu)

    def load(self, addr: int, data: bytes) -> None:
        self.spaces[0].write(addr, data)

    def asm(self, addr: int, source: str) -> None:
        from guestasm import assemble

        self.load(addr, assemble(source, addr))

    def start(self, eip: int) -> None:
        bsp = self.cpus[0]
        bsp.env.reset()
        bsp.env.set_protected_mode_flat32(eip)
        cpus.cpu_synchronize_post_reset(bsp)
        for ap in self.cpus[1:]:
            ap.env.reset(bsp=False)
            ap.env.halted = True      # waiting for SIPI
            cpus.cpu_synchronize_post_reset(ap)

    def run_until_done(self, timeout: float = 10.0) -> None:
        stop = threading.Event()

        def main_loop() -> None:   # the virtual timers (the APIC timer) fire here
            while not stop.wait(0.0005):
                with bql:
                    timerlist_run_expired()

        loop = threading.Thread(target=main_loop, daemon=True)
        loop.start()
        qemu_clock_enable_virtual(True)
        cpus.resume_all_vcpus()
        try:
            assert self.ports.done.wait(timeout), f"guest did not finish: {self.ports.writes}"
        finally:
            cpus.pause_all_vcpus()
            qemu_clock_enable_virtual(False)
            stop.set()
            loop.join()

    def outputs(self) -> list[int]:
        return [v for p, v, _ in self.ports.writes if p == 0xE9]

    def close(self) -> None:
        for cpu in self.cpus:
            cpus.destroy_vcpu(cpu)
            cpu.apic.timer.delete()
        for space in self.spaces:
            space.destroy()
        self.io.destroy()


@pytest.fixture
def machine():
    m = SMPMachine(2)
    yield m
    m.close()


PROLOGUE = """
    .code32
    lgdt gdtr
    lidt idtr
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
"""
TABLES = f"""
gdtr: .word 0x17
    .long {GDT}
idtr: .word 0x7ff
    .long {IDT}
"""


def test_lapic_timer_then_init_sipi_and_a_fixed_ipi_to_the_second_cpu(machine: SMPMachine) -> None:
    m = machine
    m.load(GDT, struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    idt = bytearray(256 * 8)
    idt[0x40 * 8:0x41 * 8] = gate32(CODE + 0x400)   # the BSP's timer
    idt[0x41 * 8:0x42 * 8] = gate32(CODE + 0x500)   # the AP's IPI
    m.load(IDT, bytes(idt))
    m.load(FLAGS, bytes(8))
    apic = APIC_DEFAULT_ADDRESS
    # The BSP: APIC on, a one-shot timer of 200 us at vector 0x40, wait for it;
    # then INIT and SIPI (vector 8: 0x8000) to APIC 1, wait until it is up,
    # and send it vector 0x41.
    m.asm(CODE, PROLOGUE + f"""
    mov $0x70000, %esp
    movl $0x1ff, {apic + 0xF0}
    movl $0x0b, {apic + 0x3E0}
    movl $0x40, {apic + 0x320}
    movl $200000, {apic + 0x380}
    sti
2:  hlt
    cmpl $0, {TIMER_DONE}
    je 2b
    movl $0x01000000, {apic + 0x310}
    movl $0x00004500, {apic + 0x300}
    movl $0x01000000, {apic + 0x310}
    movl $0x00004608, {apic + 0x300}
3:  pause
    cmpl $0, {READY}
    je 3b
    movl $0x01000000, {apic + 0x310}
    movl $0x00000041, {apic + 0x300}
4:  hlt
    jmp 4b
""" + TABLES + f"""
    .org 0x400
    mov $0xa0, %al
    out %al, $0xe9
    movl {apic + 0x390}, %eax     # current count: 0 once a one-shot expired
    out %al, $0xe9
    movl $1, {TIMER_DONE}
    movl $0, {apic + 0xB0}
    iret
    .org 0x500
    mov $0xb2, %al
    out %al, $0xe9
    movl {apic + 0x20}, %eax      # its own APIC ID
    shr $24, %eax
    out %al, $0xe9
    movl $0, {apic + 0xB0}
    out %al, $0xf4
    iret
""")
    # The AP's trampoline: real mode at 0x8000, into flat 32-bit mode, APIC on, ready.
    m.asm(TRAMPOLINE, ap_trampoline(f"""
    movl $0x1ff, {apic + 0xF0}
    movl $1, {READY}
    sti
5:  hlt
    jmp 5b
"""))
    m.start(CODE)
    m.run_until_done()
    assert m.outputs() == [0xA0, 0, 0xB2, 1]
    assert m.cpus[1].apic.isr == 0 and m.cpus[0].apic.isr == 0


def ap_trampoline(body32: str) -> str:
    """Real mode at 0x8000 (the start-up IPI's vector 8), into flat 32-bit mode, then ``body32``."""
    return """
    .code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl gdtr
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $pm
    .code32
pm: mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x60000, %esp
    lidt idtr
""" + body32 + TABLES


def test_code_patched_by_another_cpu_drops_a_stale_int3(machine: SMPMachine) -> None:
    """The AP runs an int3 once; the BSP then overwrites it with a nop (the
    text_poke_bp pattern).  The AP's engine still holds its translation with
    the int3, but running it again must not raise #BP."""
    m = machine
    m.load(GDT, struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    idt = bytearray(256 * 8)
    idt[3 * 8:4 * 8] = gate32(CODE + 0x400)
    m.load(IDT, bytes(idt))
    m.load(FLAGS, bytes(16))
    apic = APIC_DEFAULT_ADDRESS
    patched, count, site = FLAGS + 8, FLAGS + 12, TRAMPOLINE + 0x100
    m.asm(CODE, PROLOGUE + f"""
    mov $0x70000, %esp
    movl $0x01000000, {apic + 0x310}
    movl $0x00004500, {apic + 0x300}
    movl $0x01000000, {apic + 0x310}
    movl $0x00004608, {apic + 0x300}
3:  pause
    cmpl $0, {READY}
    je 3b
    movb $0x90, {site}
    movl $1, {patched}
4:  hlt
    jmp 4b
""" + TABLES + f"""
    .org 0x400
    incl {count}
    iret
""")
    m.asm(TRAMPOLINE, ap_trampoline(f"""
    jmp {site}
    .org 0x100
    int3
    cmpl $0, {patched}
    jne 7f
    movl $1, {READY}
6:  pause
    cmpl $0, {patched}
    je 6b
    jmp {site}
7:  movl {count}, %eax
    out %al, $0xe9
    out %al, $0xf4
"""))
    m.start(CODE)
    m.run_until_done()
    assert m.outputs() == [1]


def test_x2apic_and_tsc_deadline_through_msrs(machine: SMPMachine) -> None:
    """On pemu's engine (RDMSR/WRMSR hooks) the guest reads IA32_APIC_BASE,
    turns x2APIC mode on, reads its x2APIC ID, sends itself an IPI through
    the SELF IPI MSR, takes a TSC-deadline timer interrupt, and gets #GP at
    the instruction for an x2APIC read in xAPIC mode and a non-zero EOI
    write, as on hardware."""
    from pemu.accel.tcg.engine import EngineFeature, engine_info

    if not engine_info().has(EngineFeature.MSR_HOOKS):
        pytest.skip("the stock engine cannot hook RDMSR/WRMSR: tcg offers the xAPIC only there")
    m = machine
    m.load(GDT, struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    idt = bytearray(256 * 8)
    idt[13 * 8:14 * 8] = gate32(CODE + 0x300)     # #GP
    idt[0x41 * 8:0x42 * 8] = gate32(CODE + 0x400)  # the self IPI
    idt[0x42 * 8:0x43 * 8] = gate32(CODE + 0x500)  # the TSC-deadline timer
    m.load(IDT, bytes(idt))
    m.load(FLAGS, bytes(16))
    m.asm(CODE, PROLOGUE + f"""
    mov $0x60000, %esp
    mov $0x802, %ecx
    rdmsr                          # an x2APIC register in xAPIC mode: #GP, here
    mov $0x99, %al
    out %al, $0xe9
    mov $0x1b, %ecx
    rdmsr                          # IA32_APIC_BASE: 0xFEE00000, enabled, BSP
    shr $8, %eax
    out %al, $0xe9                 # 0x09: EN (bit 11) | BSP (bit 8)
    or $0x4, %eax                  # EXTD (bit 10)
    shl $8, %eax
    wrmsr                          # x2APIC mode on
    mov $0x80f, %ecx
    mov $0x1ff, %eax
    xor %edx, %edx
    wrmsr                          # SVR: software enable
    mov $0x802, %ecx
    rdmsr                          # x2APIC ID
    out %al, $0xe9
    sti
    mov $0x83f, %ecx
    mov $0x41, %eax
    wrmsr                          # SELF IPI, vector 0x41
1:  cmpl $0, {FLAGS}
    je 1b
    mov $0x832, %ecx
    mov $0x40042, %eax             # LVT timer: TSC-deadline mode, vector 0x42
    wrmsr
    rdtsc
    add $200000, %eax
    adc $0, %edx
    mov $0x6e0, %ecx
    wrmsr
2:  cmpl $0, {FLAGS + 4}
    je 2b
    mov $0x80b, %ecx
    mov $1, %eax
    wrmsr                          # EOI takes only 0: #GP
    mov $0xee, %al
    out %al, $0xe9
    out %al, $0xf4
    hlt
    .org 0x300
    mov $0x0d, %al
    out %al, $0xe9
    add $4, %esp                   # the error code
    addl $2, (%esp)                # past the wrmsr
    iret
    .org 0x400
    mov $0x41, %al
    out %al, $0xe9
    movl $1, {FLAGS}
    mov $0x80b, %ecx
    xor %eax, %eax
    wrmsr                          # EOI
    iret
    .org 0x500
    mov $0x42, %al
    out %al, $0xe9
    movl $1, {FLAGS + 4}
    mov $0x80b, %ecx
    xor %eax, %eax
    wrmsr
    iret
""" + TABLES)
    m.start(CODE)
    m.run_until_done()
    assert m.outputs() == [0x0D, 0x99, 0x09, 0, 0x41, 0x42, 0x0D, 0xEE]
    assert m.cpus[0].apic.x2apic_mode and m.cpus[0].apic.isr == 0


def test_tcg_offers_x2apic_and_tsc_deadline_only_with_msr_hooks() -> None:
    from pemu.accel.tcg.engine import EngineFeature, engine_info
    from pemu.accel.tcg.tcg_all import TCGAccel
    from pemu.target.i386.cpu_models import feature_bits

    hidden = TCGAccel().cpu_model_filter()
    offered = engine_info().has(EngineFeature.MSR_HOOKS)
    for word, mask in feature_bits("x2apic", "tsc-deadline").items():
        assert (hidden.get(word, 0) & mask == 0) is offered
