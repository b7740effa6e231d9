"""The dirty log of guest RAM (pemu.system.dirty_log), for live migration.

A small guest writes known pages, on the software CPU (pemu's engine,
patch 0009) and on KVM (KVM_MEM_LOG_DIRTY_PAGES); the log must report
exactly those pages, once per sync, together with what devices wrote
through the memory API, and nothing written while it was off.  Each phase
of the guest ends with an OUT to port 0xF4 and then waits until port 0xE0
reads the next phase's number, so the vCPU is parked between phases with
nothing written meanwhile.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from tcg_harness import Machine, PortRecorder, StubCPU, needs_binutils

from pemu.system import cpus
from pemu.system.dirty_log import (
    memory_global_dirty_log_start,
    memory_global_dirty_log_stop,
    memory_global_dirty_log_sync,
)
from pemu.system.dma import DMADirection, dma_memory_map, dma_memory_set, dma_memory_unmap, dma_memory_write
from pemu.system.memory import AddressSpace, MemoryRegion, MemoryRegionOps, RAMBlock, bitmap_or, bitmap_set
from pemu.util.timer import qemu_clock_enable_virtual
from pemu.util.vm_context import current_vm

PAGE = 0x1000
CODE = 0x10000
PORT_PHASE = 0xE0


class KVMMachine(Machine):
    """The tcg harness's machine on KVM: its RAM in the VM's system memory,
    which KVM maps into memory slots, and pemu's own 8259 (none here)."""

    def __init__(self, ram_size: int = 4 << 20) -> None:
        from pemu.accel.accel import configure_accelerators, current_accel
        from pemu.system.physmem import (
            address_space_io,
            address_space_memory,
            cpu_exec_init_all,
            get_system_io,
            get_system_memory,
        )

        configure_accelerators("kvm")
        cpu_exec_init_all()
        self.sysmem = get_system_memory()
        self.ram = MemoryRegion.ram("ram", ram_size)
        self.sysmem.add_subregion(0, self.ram)
        self.ports = PortRecorder()
        self.io_root = get_system_io()
        self.io_root.add_subregion(0, MemoryRegion.io("ports", 0x10000, MemoryRegionOps(
            self.ports.read, self.ports.write, valid_max_access_size=4, impl_max_access_size=4,
            valid_unaligned=True)))
        self.memory = address_space_memory()
        self.io = address_space_io()
        current_accel().init_machine(SimpleNamespace(kernel_irqchip="off", smp=SimpleNamespace(cpus=1)))
        self.cpu = StubCPU(self.memory, self.io)
        self.cpu.apic_id = 0  # KVM's vCPU id
        cpus.qemu_init_vcpu(self.cpu)


@pytest.fixture(params=["tcg", pytest.param("kvm", marks=pytest.mark.kvm)])
def machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    m = Machine() if request.param == "tcg" else KVMMachine()
    m.ports.reads[PORT_PHASE] = 0
    try:
        yield m
    finally:
        vm = current_vm()
        memory_global_dirty_log_stop(vm)
        m.close()


def run_phase(m: Machine, phase: int) -> None:
    """Let the guest run its phase ``phase`` (1, 2, ...) to its OUT to 0xF4."""
    m.ports.done.clear()
    m.ports.reads[PORT_PHASE] = phase
    m.run_until_done()


def phases(*bodies: str) -> str:
    """A flat 32-bit guest running ``bodies`` in turn, each when told to."""
    out = [".code32"]
    for n, body in enumerate(bodies, 1):
        out.append(f"""
        1: inb ${PORT_PHASE}, %al
           cmpb ${n}, %al
           jne 1b
        {body}
           outb %al, $0xf4""")
    out.append("2: hlt\n jmp 2b")
    return "\n".join(out)


def dirty_pages(bitmaps: dict[RAMBlock, bytearray], block: RAMBlock) -> set[int]:
    bitmap = bitmaps.get(block, bytearray())
    return {8 * i + b for i, byte in enumerate(bitmap) if byte for b in range(8) if byte >> b & 1}


def sync_pages(m: Machine) -> set[int]:
    bitmaps = memory_global_dirty_log_sync(current_vm())
    block = m.ram.ram_block
    assert block is not None
    assert set(bitmaps) <= {block}, f"other blocks reported: {list(bitmaps)}"
    for bitmap in bitmaps.values():
        assert len(bitmap) == block.size // PAGE // 8
    return dirty_pages(bitmaps, block)


# -- the guest's own writes ------------------------------------------------------------------------


@needs_binutils
def test_the_log_reports_exactly_the_pages_the_guest_wrote_once_per_sync(machine: Machine) -> None:
    m = machine
    m.asm(CODE, phases(
        # A byte, a dword across a page boundary, a byte at the end of a page.
        "movb $1, 0x100000\n movl $2, 0x101ffe\n movb $3, 0x1a3fff",
        # One new page, and one reported already: written again, reported again.
        "movb $4, 0x200000\n movb $5, 0x100010",
        "",  # nothing
    ))
    m.start_flat32(CODE)
    assert memory_global_dirty_log_start(current_vm())
    assert sync_pages(m) == set()  # the loader's writes came before the start
    run_phase(m, 1)
    assert sync_pages(m) == {0x100, 0x101, 0x102, 0x1A3}
    run_phase(m, 2)
    assert sync_pages(m) == {0x200, 0x100}
    run_phase(m, 3)
    assert sync_pages(m) == set()


@needs_binutils
def test_writes_while_the_log_is_off_are_not_reported(machine: Machine) -> None:
    m = machine
    m.asm(CODE, phases("movb $1, 0x100000", "movb $2, 0x300000", "movb $3, 0x301000\n movb $4, 0x100000"))
    m.start_flat32(CODE)
    vm = current_vm()
    assert memory_global_dirty_log_start(vm)
    run_phase(m, 1)
    memory_global_dirty_log_stop(vm)
    assert memory_global_dirty_log_sync(vm) == {}
    run_phase(m, 2)  # the log is off
    m.memory.write(0x302000, b"dma")
    assert memory_global_dirty_log_start(vm)
    run_phase(m, 3)
    # Page 0x100 was logged before the stop and written again after the
    # restart (its TLB entry was clean while the log was off).
    assert sync_pages(m) == {0x301, 0x100}


@needs_binutils
def test_a_sync_while_the_guest_runs_reports_what_it_keeps_writing(machine: Machine) -> None:
    """The vCPU is taken out of its engine for the sync and resumed; the
    pages it writes afterwards are logged again (the engine re-armed them)."""
    m = machine
    m.asm(CODE, phases("3: incl 0x380000\n incl 0x381ff0\n jmp 3b"))
    m.start_flat32(CODE)
    assert memory_global_dirty_log_start(current_vm())
    m.ports.reads[PORT_PHASE] = 1
    qemu_clock_enable_virtual(True)
    cpus.resume_all_vcpus()
    try:
        for _ in range(3):
            time.sleep(0.05)
            assert sync_pages(m) == {0x380, 0x381}
            assert not m.cpu.run.stopped  # it was running and runs on
    finally:
        cpus.pause_all_vcpus()
        qemu_clock_enable_virtual(False)
    sync_pages(m)
    assert sync_pages(m) == set()  # parked: nothing more


@needs_binutils
def test_an_interrupt_frame_pushed_for_the_guest_is_logged(machine: Machine) -> None:
    """On tcg pemu delivers real-mode interrupts itself and writes the frame
    (FLAGS, CS, IP) on the guest's stack; on KVM the kernel does."""
    m = machine
    m.load(0x30 * 4, struct.pack("<HH", 0x800, 0))
    m.asm(0x800, ".code16\n iret")
    m.asm(0x600, f"""
    .code16
    1: inb ${PORT_PHASE}, %al
       cmpb $1, %al
       jne 1b
       mov $0x7000, %ax
       mov %ax, %ss
       mov $0xfff0, %sp
       int $0x30
       outb %al, $0xf4
    2: hlt
       jmp 2b
    """)
    m.start_real(0x600)
    assert memory_global_dirty_log_start(current_vm())
    run_phase(m, 1)
    assert sync_pages(m) == {0x7F}


@needs_binutils
def test_accessed_and_dirty_bits_the_cpu_sets_in_page_tables_are_logged() -> None:
    """The page walker writes the guest's page directory (the accessed and
    dirty bits of a 4 MiB page): that page is written too.  On tcg only:
    the software KVM here (PVM) never returns from the guest's move to CR0
    that turns 32-bit paging on (with PAE too), with or without the log."""
    m = Machine()
    m.ports.reads[PORT_PHASE] = 0
    pd = 0x1000
    m.load(pd, struct.pack("<I", 0x83))  # 0-4 MiB: present, writable, 4 MiB; accessed and dirty clear
    m.asm(CODE, phases(f"""
        movl ${pd:#x}, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x10, %eax
        movl %eax, %cr4
        movl %cr0, %eax
        orl $0x80000000, %eax
        movl %eax, %cr0
        jmp 4f
    4:  movb $1, 0x100000"""))
    m.start_flat32(CODE)
    assert memory_global_dirty_log_start(current_vm())
    run_phase(m, 1)
    try:
        assert struct.unpack("<I", m.memory.read(pd, 4))[0] == 0x83 | 0x60  # the walker set A and D
        assert sync_pages(m) == {pd // PAGE, 0x100}
    finally:
        memory_global_dirty_log_stop(current_vm())
        m.close()


# -- writes by devices and loaders -------------------------------------------------------------------


def test_dma_and_loader_writes_are_logged(machine: Machine) -> None:
    m = machine
    vm = current_vm()
    dma_as = AddressSpace(m.sysmem, "test-dma")
    try:
        assert memory_global_dirty_log_start(vm)
        m.memory.write(0x120000, b"x" * (PAGE + 1))                           # AddressSpace.write: 2 pages
        assert dma_memory_write(dma_as, 0x130ffe, b"abcd") == 0               # pci_dma_write's path
        assert dma_memory_set(dma_as, 0x140000, 0, 3 * PAGE) == 0             # a fill (MADV_DONTNEED)
        mapping = dma_memory_map(dma_as, 0x150000, 2 * PAGE, DMADirection.FROM_DEVICE)
        assert mapping is not None
        mapping.view[0] = 1
        dma_memory_unmap(dma_as, mapping, 1)                                  # only the byte written
        reading = dma_memory_map(dma_as, 0x160000, PAGE, DMADirection.TO_DEVICE)
        assert reading is not None
        dma_memory_unmap(dma_as, reading, PAGE)                               # a read is no write
        m.memory.write_rom(0x170000, b"kernel")                               # a loader
        m.memory.read(0x180000, 16)
        m.memory.dispatch_write(0x1B0ffe, 0x12345678, 4)                      # a CPU's store via an exit
        assert sync_pages(m) == {0x120, 0x121, 0x130, 0x131, 0x140, 0x141, 0x142, 0x150, 0x170, 0x1B0, 0x1B1}
        assert sync_pages(m) == set()
        m.memory.write(0x190000, b"y")
        assert sync_pages(m) == {0x190}
        memory_global_dirty_log_stop(vm)
        m.memory.write(0x1A0000, b"z")
        assert memory_global_dirty_log_sync(vm) == {}
        assert m.ram.ram_block is not None and m.ram.ram_block.dirty_bitmap is None
    finally:
        dma_as.destroy()


def test_ram_made_while_logging_is_all_dirty(machine: Machine) -> None:
    vm = current_vm()
    assert memory_global_dirty_log_start(vm)
    extra = MemoryRegion.ram("hotplugged", 5 * PAGE)
    block = extra.ram_block
    assert block is not None
    bitmaps = memory_global_dirty_log_sync(vm)
    assert dirty_pages(bitmaps, block) == {0, 1, 2, 3, 4}


# -- the stock engine ----------------------------------------------------------------------------------


def test_the_stock_engine_cannot_log() -> None:
    """The wheel's Unicorn has no dirty log: the start says so (the migration
    then copies a stopped guest's RAM) and nothing is logged."""
    code = """
import pemu
from pemu.accel.tcg.engine import engine_info
from pemu.system.vm import VirtualMachine
from pemu.system.dirty_log import memory_global_dirty_log_start, memory_global_dirty_log_sync
vm = VirtualMachine()
vm.activate()
from tcg_harness import Machine
m = Machine()
m.memory.write(0x1000, b"x")
print(engine_info().patched, memory_global_dirty_log_start(vm), memory_global_dirty_log_sync(vm),
      m.ram.ram_block.dirty_bitmap)
m.close()
"""
    here = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k != "LIBUNICORN_PATH"}
    env["PEMU_ENGINE"] = "stock"
    env["PYTHONPATH"] = os.pathsep.join([str(here.parents[1]), str(here), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "{}", "None"]


# -- the bitmaps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "count", "expected"), [
    (0, 1, "01000000"),
    (3, 2, "18000000"),
    (7, 2, "80010000"),
    (4, 12, "f0ff0000"),
    (6, 20, "c0ffff03"),
    (0, 32, "ffffffff"),
    (9, 0, "00000000"),
])
def test_bitmap_set(start: int, count: int, expected: str) -> None:
    bitmap = bytearray(4)
    bitmap_set(bitmap, start, count)
    assert bitmap.hex() == expected


@pytest.mark.parametrize(("src", "start", "count", "size", "expected"), [
    ("ff", 0, 8, 4, "ff000000"),
    ("ff", 4, 8, 4, "f00f0000"),
    ("ff", 4, 3, 4, "70000000"),                    # only the first count bits of src
    ("0100000000000080", 8, 64, 9, "000100000000000080"),  # a whole 64-bit word of a KVM log
    ("0000", 3, 16, 4, "00000000"),
])
def test_bitmap_or(src: str, start: int, count: int, size: int, expected: str) -> None:
    bitmap = bytearray(size)
    bitmap_or(bitmap, bytes.fromhex(src), start, count)
    assert bitmap.hex() == expected
