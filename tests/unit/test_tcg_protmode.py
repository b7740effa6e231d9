"""TCG vCPU in 32-bit protected mode: interrupt vs trap gates, #GP error code."""

from __future__ import annotations

import struct

import pytest
from tcg_harness import Machine, needs_binutils

pytestmark = needs_binutils

CODE, GDT, IDT = 0x10000, 0x5000, 0x6000


def gate32(offset: int, trap: bool, dpl: int = 0) -> bytes:
    type_attr = 0x80 | dpl << 5 | (0xF if trap else 0xE)
    return struct.pack("<HHBBH", offset & 0xFFFF, 0x08, 0, type_attr, offset >> 16)


@pytest.fixture
def machine():
    m = Machine()
    yield m
    m.close()


def test_interrupt_gate_clears_if_trap_gate_keeps_it_gp_pushes_error_code(machine: Machine) -> None:
    m = machine
    m.load(GDT, struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    handlers = """
    .org 0x100
    pushf
    pop %eax
    shr $9, %eax
    and $1, %eax
    out %al, $0xe9
    iret
    .org 0x200
    mov $13, %al
    out %al, $0xe9
    pop %eax
    out %al, $0xe9
    addl $2, (%esp)     # skip the faulting 2-byte mov to %ds
    iret
    """
    idt = bytearray(256 * 8)
    idt[0x40 * 8:0x41 * 8] = gate32(CODE + 0x100, trap=False)
    idt[0x41 * 8:0x42 * 8] = gate32(CODE + 0x100, trap=True)
    idt[13 * 8:14 * 8] = gate32(CODE + 0x200, trap=False)
    m.load(IDT, bytes(idt))
    m.asm(CODE, f"""
    .code32
    lgdt gdtr
    lidt idtr
    ljmp $0x08, $1f
1:  mov $0x10, %ax
    mov %ax, %ss
    mov $0x70000, %esp
    sti
    int $0x40
    int $0x41
    mov $0x33, %ax
    mov %ax, %ds        # selector 0x30 beyond the GDT limit -> #GP(0x30)
    mov $0x10, %ax
    mov %ax, %ds
    mov $0x77, %al
    out %al, $0xe9
    out %al, $0xf4
    hlt
gdtr: .word 0x17
    .long {GDT}
idtr: .word 0x7ff
    .long {IDT}
    """ + handlers)
    m.start_flat32(CODE)
    m.run_until_done()
    assert m.outputs() == [0, 1, 13, 0x30, 0x77]
    assert m.cpu.env.regs[4] == 0x70000
