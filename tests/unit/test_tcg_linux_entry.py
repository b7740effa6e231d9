"""The direct-boot entry states, loaded into the TCG vCPU, run guest code as the kernel expects."""

from __future__ import annotations

import lzma

from tcg_harness import Machine, assemble, needs_binutils
from test_linux_boot import bzimage_with_payload, make_elf, q35_e820

from pemu.hw.i386.linux_boot import plan_linux_boot
from pemu.hw.i386.x86 import set_linux_entry_state
from pemu.system import cpus

pytestmark = needs_binutils

MiB = 1 << 20


def test_64bit_entry_runs_vmlinux_in_long_mode_on_identity_paging() -> None:
    # At startup_64: report RSI, CS, EFER.LMA and a read through the page
    # tables of a byte above 16 MiB, then stop.
    code = assemble("""
    .code64
    mov %rsi, %rax
    out %eax, $0xe9
    mov %cs, %eax
    out %eax, $0xe9
    mov $0xC0000080, %ecx
    rdmsr
    out %eax, $0xe9
    lea data(%rip), %rbx
    mov (%rbx), %eax
    out %eax, $0xe9
    out %al, $0xf4
    hlt
    data: .long 0x600DF00D
    """, 0x1000000)
    ram = 32 * MiB
    elf = make_elf(0x1000000, [(0x1000000, code, len(code))])
    plan = plan_linux_boot(bzimage_with_payload(lzma.compress(elf)), None, "", ram, q35_e820(ram), None)
    machine = Machine(ram_size=ram)
    try:
        for blob in plan.blobs:
            machine.load(blob.addr, blob.data)
        machine.cpu.env.reset()
        set_linux_entry_state(machine.cpu.env, plan.entry)
        cpus.cpu_synchronize_post_reset(machine.cpu)
        machine.run_until_done()
        rsi, cs, efer, data = machine.outputs()
        assert (rsi, cs, data) == (0x7000, 0x10, 0x600DF00D)
        assert efer & 0x500 == 0x500
    finally:
        machine.close()
