"""Kicking a running TCG vCPU must never make a guest instruction run twice.

Unicorn 2.1.4's ``uc_emu_stop`` can unwind to the start of an instruction
whose store already happened; a read-modify-write then runs again on resume
(this corrupted the kernel's XZ decompressor).  The kick stops at block
starts instead (pemu.accel.tcg.exit_request): on pemu's engine with the
engine's own sticky request, on the stock one with a native block hook.
"""

from __future__ import annotations

import threading
import time

import pytest
from tcg_harness import Machine, needs_binutils
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as ucx

from pemu.accel.tcg.exit_request import ExitMode, TBExitRequest, default_exit_mode, verify_exit_request
from pemu.system import cpus

# loop: inc qword [rbx]; dec rcx; jnz loop; hlt
RMW_LOOP = bytes.fromhex("48ff03" "48ffc9" "75f8" "f4")


MODES = [
    ExitMode.STUB,
    ExitMode.TWO_HOOKS,
    pytest.param(ExitMode.ENGINE, marks=pytest.mark.skipif(
        default_exit_mode() is not ExitMode.ENGINE,
        reason="the stock engine has no exit request of its own (pemu's engine patches 0004, 0005)")),
]


def test_layout_and_behaviour_self_test() -> None:
    verify_exit_request()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_request_stops_before_the_next_block_and_clear_lets_it_run(mode: ExitMode) -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x2000)
    uc.mem_write(0x1000, RMW_LOOP)
    uc.reg_write(ucx.UC_X86_REG_RBX, 0x2000)
    uc.reg_write(ucx.UC_X86_REG_RCX, 5)
    req = TBExitRequest(uc, mode)
    assert req.mode is mode
    req.request()
    assert req.armed
    uc.emu_start(0x1000, 0)
    assert uc.reg_read(ucx.UC_X86_REG_RIP) == 0x1000
    assert uc.mem_read(0x2000, 8) == bytes(8)
    req.clear()
    assert not req.armed
    uc.emu_start(0x1000, 0)
    assert uc.reg_read(ucx.UC_X86_REG_RIP) == 0x1000 + len(RMW_LOOP)
    assert int.from_bytes(uc.mem_read(0x2000, 8), "little") == 5


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_requests_from_another_thread_never_repeat_a_read_modify_write(mode: ExitMode) -> None:
    n = 10_000_000  # long enough for many kicks on a fast engine
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x2000)
    uc.mem_write(0x1000, RMW_LOOP)
    uc.reg_write(ucx.UC_X86_REG_RBX, 0x2000)
    uc.reg_write(ucx.UC_X86_REG_RCX, n)
    req = TBExitRequest(uc, mode)
    assert req.mode is mode
    done = threading.Event()

    def kicker() -> None:
        while not done.is_set():
            req.request()
            time.sleep(0.0001)

    thread = threading.Thread(target=kicker)
    thread.start()
    stops = 0
    rip = 0x1000
    try:
        while rip != 0x1000 + len(RMW_LOOP):
            req.clear()
            uc.emu_start(rip, 0)
            rip = uc.reg_read(ucx.UC_X86_REG_RIP)
            stops += 1
    finally:
        done.set()
        thread.join()
    assert stops > 10, "the kicker never interrupted the loop: the test proves nothing"
    assert int.from_bytes(uc.mem_read(0x2000, 8), "little") == n
    assert uc.reg_read(ucx.UC_X86_REG_RCX) == 0


@needs_binutils
def test_vcpu_kicks_keep_guest_memory_exact() -> None:
    machine = Machine()
    try:
        machine.asm(0x10000, """
        .code32
        mov $0x20000, %ebx
        mov $4000000, %ecx
    1:  incl (%ebx)
        xchg %eax, 4(%ebx)
        xchg %eax, 4(%ebx)
        loop 1b
        mov (%ebx), %eax
        out %eax, $0xe9
        mov 4(%ebx), %eax
        out %eax, $0xe9
        out %al, $0xf4
        hlt
        """)
        machine.memory.write(0x20000, bytes(8))
        machine.start_flat32(0x10000)
        machine.cpu.env.regs[0] = 0x5A5A
        cpus.cpu_synchronize_post_reset(machine.cpu)
        stop = threading.Event()
        vcpu = machine.vcpu
        before = vcpu.exits

        def kicker() -> None:
            while not stop.is_set():
                vcpu.kick()
                time.sleep(0.0002)

        thread = threading.Thread(target=kicker)
        thread.start()
        try:
            machine.run_until_done(20)
        finally:
            stop.set()
            thread.join()
        assert vcpu.exits - before > 10, "the vCPU was never kicked: the test proves nothing"
        assert machine.outputs() == [4000000, 0]
    finally:
        machine.close()
