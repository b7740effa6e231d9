"""TCG vCPU in real mode: int n through the IVT, iret, port I/O, #UD, cpuid."""

from __future__ import annotations

import struct

import pytest
from tcg_harness import Machine, needs_binutils

pytestmark = needs_binutils


@pytest.fixture
def machine():
    m = Machine()
    yield m
    m.close()


def test_int_through_ivt_and_iret(machine: Machine) -> None:
    machine.asm(0x8000, """
        .code16
        mov $0x55, %al
        out %al, $0xe9
        iret
    """)
    machine.load(0x21 * 4, struct.pack("<HH", 0x8000, 0))
    machine.asm(0x7C00, """
        .code16
        xor %ax, %ax
        mov %ax, %ss
        mov $0x7000, %sp
        int $0x21
        mov $0x66, %al
        out %al, $0xe9
        out %al, $0xf4
        hlt
    """)
    machine.start_real(0x7C00)
    machine.run_until_done()
    assert machine.outputs() == [0x55, 0x66]
    assert machine.cpu.env.regs[4] & 0xFFFF == 0x7000


def test_ud2_raises_ud_through_ivt(machine: Machine) -> None:
    machine.asm(0x8000, """
        .code16
        mov $6, %al
        out %al, $0xe9
        mov %sp, %bp
        addw $2, (%bp)      # skip the ud2
        iret
    """)
    machine.load(6 * 4, struct.pack("<HH", 0x8000, 0))
    machine.asm(0x7C00, """
        .code16
        xor %ax, %ax
        mov %ax, %ss
        mov $0x7000, %sp
        ud2
        mov $0x77, %al
        out %al, $0xe9
        out %al, $0xf4
        hlt
    """)
    machine.start_real(0x7C00)
    machine.run_until_done()
    assert machine.outputs() == [6, 0x77]


def test_in_reads_device(machine: Machine) -> None:
    machine.ports.reads[0x71] = 0xA5
    machine.asm(0x7C00, """
        .code16
        in $0x71, %al
        out %al, $0xe9
        mov $0x1234, %dx
        mov $0xbeef, %ax
        out %ax, %dx
        out %al, $0xf4
        hlt
    """)
    machine.start_real(0x7C00)
    machine.run_until_done()
    assert machine.outputs() == [0xA5]
    assert (0x1234, 0xBEEF, 2) in machine.ports.writes


def test_reset_state_runs_from_reset_vector(machine: Machine) -> None:
    # Map a "BIOS" at the top of 4 GiB: jmp from 0xFFFFFFF0 to 0xF000:0xE000.
    bios = bytearray(b"\xf4" * 0x10000)
    code = bytes.fromhex("b0 42 e6 e9 e6 f4 f4".replace(" ", ""))  # mov al,42h; out e9; out f4; hlt
    bios[0xE000:0xE000 + len(code)] = code
    bios[0xFFF0:0xFFF5] = bytes.fromhex("ea00e000f0")  # ljmp f000:e000
    from pemu.system.memory import MemoryRegion

    rom = MemoryRegion.rom("bios", 0x10000)
    rom.ram_block.view[:] = bios
    machine.sysmem.add_subregion(0xFFFF0000, rom)
    # The same ROM shows below 1 MiB, above RAM (the isa-bios alias).
    machine.sysmem.add_subregion_overlap(0xF0000, MemoryRegion.alias("isa-bios", rom, 0, 0x10000), 1)
    env = machine.cpu.env
    env.reset()
    assert env.regs[2] == machine.cpu.model.cpuid_version
    from pemu.system import cpus

    cpus.cpu_synchronize_post_reset(machine.cpu)
    machine.run_until_done()
    assert machine.outputs() == [0x42]
    assert machine.cpu.env.segs[1].selector == 0xF000
