"""DMA into guest RAM that holds translated code, on the software CPU.

A device writes new code over a function the guest has already run (the
write goes through a DMA address space while the vCPU is inside a port
write, as a disk controller's would): the guest must then run the new code,
and the rest of the translation cache must survive.  Translations are
counted with Unicorn's UC_HOOK_EDGE_GENERATED, which the engine calls from
tb_find each time it has just translated a block (never for a block found
in the cache), so the hook costs nothing while the guest runs.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from guestasm import assemble
from tcg_harness import Machine, needs_binutils
from unicorn import UC_HOOK_EDGE_GENERATED

from pemu.accel.tcg import tcg_accel
from pemu.system.dma import dma_memory_set, dma_memory_write
from pemu.system.memory import AddressSpace, MemTxResult

pytestmark = needs_binutils

CODE, FUNC, FUNCS, STACK = 0x10000, 0x30000, 0x40000, 0x80000
N_FUNCS = 400  # one translated block each, on 13 pages of their own
NEW_FUNC = ".code32\n mov $2, %eax\n ret"
# Ports the guest writes to: the device's "go" register, translation-count marks.
PORT_DMA, PORT_BIG_DMA, PORT_MARK = 0xE0, 0xE4, 0xE1


class CountingMachine:
    """The test machine, a DMA address space of its own, and a translation counter."""

    def __init__(self, ram_size: int = 4 << 20) -> None:
        self.m = Machine(ram_size=ram_size)
        self.dma_as = AddressSpace(self.m.sysmem, "test-dma")
        self.translations = 0
        self.marks: list[int] = []
        self.dma_results: list[MemTxResult] = []
        self.m.vcpu.uc.hook_add(UC_HOOK_EDGE_GENERATED, self._translated)
        self.m.ports.handlers[PORT_MARK] = lambda _: self.marks.append(self.translations)

    def _translated(self, *_: Any) -> None:
        self.translations += 1

    def dma_on(self, port: int, addr: int, data: bytes) -> None:
        self.m.ports.handlers[port] = lambda _: self.dma_results.append(dma_memory_write(self.dma_as, addr, data))

    def close(self) -> None:
        self.dma_as.destroy()
        self.m.close()


@pytest.fixture
def cm():
    c = CountingMachine()
    yield c
    c.close()


def many_functions() -> tuple[str, str]:
    """A routine calling N_FUNCS distinct functions at FUNCS, and those functions."""
    calls = "\n".join(f"    call {FUNCS + 32 * k:#x}" for k in range(N_FUNCS))
    funcs = "\n".join(f"    .balign 32\n    mov ${k}, %ecx\n    ret" for k in range(N_FUNCS))
    return f"call_all:\n{calls}\n    ret\n", ".code32\n" + funcs


def test_dma_over_translated_code_runs_the_new_code_and_keeps_the_rest(cm: CountingMachine) -> None:
    m = cm.m
    call_all, funcs = many_functions()
    m.load(FUNCS, assemble(funcs, FUNCS))
    m.asm(FUNC, ".code32\n mov $1, %eax\n ret")
    cm.dma_on(PORT_DMA, FUNC, assemble(NEW_FUNC, FUNC))
    cm.m.ports.handlers[PORT_BIG_DMA] = lambda _: cm.dma_results.append(
        dma_memory_set(cm.dma_as, 0x200000, 0, 2 << 20))  # 2 MiB: more than is worth dropping page by page
    m.asm(CODE, f"""
    .code32
    mov ${STACK:#x}, %esp
    call {FUNC:#x}
    out %eax, $0xe9
    call call_all              # translates everything
    out %al, ${PORT_MARK}
    call call_all              # all found in the cache
    out %al, ${PORT_MARK}
    out %al, ${PORT_DMA}       # the device writes FUNC's page
    call {FUNC:#x}
    out %eax, $0xe9
    call call_all
    out %al, ${PORT_MARK}
    out %al, ${PORT_BIG_DMA}   # a large transfer: the whole cache goes
    call call_all
    out %al, ${PORT_MARK}
    out %al, $0xf4
    hlt
    {call_all}
    """)
    m.start_flat32(CODE)
    m.run_until_done()
    assert m.outputs() == [1, 2]                                   # the DMA-written code ran
    assert cm.dma_results == [MemTxResult.OK, MemTxResult.OK]
    first, warm, after_dma, after_flush = cm.marks
    assert first >= 2 * N_FUNCS                                    # each function and each return point
    assert warm - first < 10                                       # the counter counts translations only
    assert after_dma - warm < 20, f"{after_dma - warm} blocks translated again after a one-page DMA"
    assert after_flush - after_dma >= 2 * N_FUNCS                  # what a whole-cache flush costs


# 32-bit paging with 4 MiB pages: virtual 0-4 MiB is physical 0-4 MiB (this
# code, its stack, the page directory); virtual 12-16 MiB is physical
# 4-8 MiB, where the patched function lives; virtual 4-8 MiB is unmapped.
# So the function's physical address means nothing (or something else) as a
# virtual one: invalidating by virtual address would miss it.
PD = 0x1000
PHYS_FUNC, VIRT_FUNC = 0x430000, 0xC30000


def test_dma_over_translated_code_with_paging_on() -> None:
    c = CountingMachine(ram_size=16 << 20)
    try:
        m = c.m
        pde = 1 | 2 | 0x80  # present, writable, 4 MiB
        m.load(PD, struct.pack("<IIII", 0 | pde, 0, 0, 0x400000 | pde))
        call_all, funcs = many_functions()
        m.load(FUNCS, assemble(funcs, FUNCS))
        m.load(PHYS_FUNC, assemble(".code32\n mov $1, %eax\n ret", VIRT_FUNC))
        c.dma_on(PORT_DMA, PHYS_FUNC, assemble(NEW_FUNC, VIRT_FUNC))
        m.asm(CODE, f"""
        .code32
        mov ${STACK:#x}, %esp
        mov %cr4, %eax
        or $0x10, %eax             # PSE
        mov %eax, %cr4
        mov ${PD:#x}, %eax
        mov %eax, %cr3
        mov %cr0, %eax
        or $0x80000000, %eax
        mov %eax, %cr0
        jmp 1f
    1:  call {VIRT_FUNC:#x}
        out %eax, $0xe9
        call call_all
        out %al, ${PORT_MARK}
        out %al, ${PORT_DMA}
        call {VIRT_FUNC:#x}
        out %eax, $0xe9
        call call_all
        out %al, ${PORT_MARK}
        out %al, $0xf4
        hlt
        {call_all}
        """)
        m.start_flat32(CODE)
        m.run_until_done()
        assert m.outputs() == [1, 2]
        assert c.dma_results == [MemTxResult.OK]
        before, after = c.marks
        if tcg_accel.engine_invalidates_by_physical_address():
            assert after - before < 20, f"{after - before} blocks translated again after a one-page DMA"
        else:  # the stock engine cannot name the page with paging on: it flushes everything
            assert after - before >= 2 * N_FUNCS
    finally:
        c.close()
