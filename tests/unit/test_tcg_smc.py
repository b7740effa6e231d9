"""Self-modifying code on the software CPU, on whichever engine is installed.

A store to guest memory that holds translated code must make the CPU run the
new code: written into the block that is running, into the same page,
through a second, non-executable mapping of the page, and patched again and
again.  pemu's engine lets stores to pages *without* translated code skip
that check (engine patch 0002), which is exactly what these tests guard.
The stock engine misses the second-mapping case (see below).
"""

from __future__ import annotations

import struct

import pytest
from tcg_harness import Machine, needs_binutils

from pemu.accel.tcg.engine import EngineFeature, engine_info

pytestmark = needs_binutils

CODE, FUNC, STACK = 0x10000, 0x30000, 0x80000
# PAE paging: PDPT, one page directory with 2 MiB pages.
PDPT, PD = 0x1000, 0x2000
ALIAS = 0x200000  # a second, NX mapping of physical 0-2 MiB
PAGE_P, PAGE_RW, PAGE_PS, PAGE_NX = 1, 2, 0x80, 1 << 63

STOCK_MISSES_NX_ALIAS = pytest.mark.xfail(
    not engine_info().has(EngineFeature.CODE_DIRTY), strict=True,
    reason="stock Unicorn 2.1.4 re-arms the code-write check only for the virtual page the code was "
           "fetched from: after the first write through a second, non-executable mapping, later writes "
           "through it no longer invalidate the code (fixed by pemu's engine patch 0002)")


@pytest.fixture
def machine():
    m = Machine()
    yield m
    m.close()


def run32(m: Machine, body: str) -> list[int]:
    m.asm(CODE, f"""
    .code32
    mov ${STACK:#x}, %esp
    {body}
    out %al, $0xf4
    hlt
    """)
    m.start_flat32(CODE)
    m.run_until_done()
    return m.outputs()


def test_store_into_the_running_block(machine: Machine) -> None:
    # The patched instruction is in the same block as the store, after it.
    assert run32(machine, """
    movb $0x22, 1f + 1
1:  mov $0x11, %al
    out %al, $0xe9
    movb $0x33, 2f + 1
    nop
2:  mov $0x11, %al
    out %al, $0xe9
    """) == [0x22, 0x33]


def test_store_into_the_same_page_between_calls(machine: Machine) -> None:
    # `func` is translated, patched by code on its own page, and run again.
    assert run32(machine, """
    call func
    out %al, $0xe9
    movb $0x02, func + 1
    call func
    out %al, $0xe9
    movb $0x03, func + 1
    call func
    out %al, $0xe9
    jmp 9f
func:
    mov $0x01, %al
    ret
9:
    """) == [1, 2, 3]


def test_write_execute_patch_execute_loop(machine: Machine) -> None:
    # 1000 rounds of: patch the immediate of a function on another page, call it.
    machine.asm(FUNC, ".code32\n mov $0, %eax\n ret")
    assert run32(machine, f"""
    xor %ebx, %ebx
    mov $1000, %ecx
1:  mov %ecx, {FUNC + 1:#x}
    call {FUNC:#x}
    add %eax, %ebx
    loop 1b
    mov %ebx, %eax
    out %eax, $0xe9
    """) == [sum(range(1, 1001))]


def test_store_in_real_mode_code(machine: Machine) -> None:
    m = machine
    m.asm(0x7C00, """
    .code16
    xor %ax, %ax
    mov %ax, %ds
    call func
    out %al, $0xe9
    movb $0x05, func + 1
    call func
    out %al, $0xe9
    out %al, $0xf4
    hlt
func:
    mov $0x04, %al
    ret
    """)
    m.start_real(0x7C00)
    m.run_until_done()
    assert m.outputs() == [4, 5]


def _pae_tables(m: Machine) -> None:
    m.load(PDPT, struct.pack("<Q", PD | PAGE_P) + bytes(24))
    pd = struct.pack("<QQ", 0 | PAGE_P | PAGE_RW | PAGE_PS,
                     0 | PAGE_P | PAGE_RW | PAGE_PS | PAGE_NX)  # 0-2 MiB, and again at 2-4 MiB with NX
    m.load(PD, pd)


PAGING_ON = f"""
    mov $0xC0000080, %ecx      # EFER.NXE
    rdmsr
    or $0x800, %eax
    wrmsr
    mov %cr4, %eax
    or $0x20, %eax             # PAE
    mov %eax, %cr4
    mov ${PDPT:#x}, %eax
    mov %eax, %cr3
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    jmp 1f
1:
"""


@STOCK_MISSES_NX_ALIAS
def test_store_through_a_second_nx_mapping(machine: Machine) -> None:
    m = machine
    _pae_tables(m)
    m.asm(FUNC, ".code32\n mov $1, %eax\n ret")
    # Run `func`, then patch it through its NX alias and run it, three times.
    assert run32(m, PAGING_ON + f"""
    call {FUNC:#x}
    out %eax, $0xe9
    movl $2, {ALIAS + FUNC + 1:#x}
    call {FUNC:#x}
    out %eax, $0xe9
    movl $3, {ALIAS + FUNC + 1:#x}
    call {FUNC:#x}
    out %eax, $0xe9
    movl $4, {ALIAS + FUNC + 1:#x}
    call {FUNC:#x}
    out %eax, $0xe9
    """) == [1, 2, 3, 4]


def test_nx_mapping_is_not_executable(machine: Machine) -> None:
    """The alias really is NX: a jump into it faults (#PF), so the test above writes through NX."""
    m = machine
    _pae_tables(m)
    m.asm(FUNC, ".code32\n mov $1, %eax\n ret")
    # IDT entry 14 -> a handler that reports the error code's I/D bit (0x10) and stops.
    m.asm(0x40000, ".code32\n pop %eax\n out %eax, $0xe9\n out %al, $0xf4\n hlt")
    idt = bytearray(256 * 8)
    idt[14 * 8:15 * 8] = struct.pack("<HHBBH", 0x0000, 0x08, 0, 0x8E, 0x0004)
    m.load(0x6000, bytes(idt))
    m.load(0x5000, struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF))
    outputs = run32(m, """
    lgdt gdtr
    lidt idtr
    ljmp $0x08, $2f
2:  mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %ss
    """ + PAGING_ON + f"""
    call {ALIAS + FUNC:#x}
    out %eax, $0xe9
    jmp 9f
gdtr: .word 23
    .long 0x5000
idtr: .word 0x7ff
    .long 0x6000
9:
    """)
    assert outputs and outputs[0] & 0x10, f"no instruction-fetch #PF from the NX alias: {outputs}"
