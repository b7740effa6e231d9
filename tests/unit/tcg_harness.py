"""A tiny machine for the TCG tests: RAM, a stub port-I/O space, a stub CPU object."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from guestasm import assemble, have_binutils

from pemu.hw.core.cpu import CPURunState
from pemu.system import cpus
from pemu.system.memory import AddressSpace, MemoryRegion, MemoryRegionOps
from pemu.target.i386.cpu_models import x86_cpu_model_for
from pemu.target.i386.cpu_state import CPUX86State
from pemu.util.timer import qemu_clock_enable_virtual

needs_binutils = pytest.mark.skipif(not have_binutils(), reason="GNU as/ld/objcopy (binutils) not installed")


class PortRecorder:
    """Port I/O stub: records writes, answers reads from a table, calls
    ``handlers[port](value)`` after a write there; port 0xF4 ends the test."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []
        self.reads: dict[int, int] = {}
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.done = threading.Event()

    def read(self, port: int, size: int) -> int:
        return self.reads.get(port, 0xFFFFFFFF) & ((1 << (8 * size)) - 1)

    def write(self, port: int, value: int, size: int) -> None:
        self.writes.append((port, value, size))
        handler = self.handlers.get(port)
        if handler is not None:
            handler(value)
        if port == 0xF4:
            self.done.set()


class StubCPU:
    """The attributes X86CPU gives the accelerator."""

    def __init__(self, memory: AddressSpace, io: AddressSpace, model: str = "qemu64") -> None:
        self.cpu_index = 0
        self.run = CPURunState()
        self.env = CPUX86State()
        self.model = x86_cpu_model_for(model)
        self.env.cpuid_version = self.model.cpuid_version
        self.memory = memory
        self.io = io
        self.pic_vectors: list[int] = []
        self.apic: Any = None  # no local APIC: the engine's MSR hooks stay off
        self.get_pic_interrupt: Callable[[], int] = self._ack

    def _ack(self) -> int:
        vector = self.pic_vectors.pop(0) if self.pic_vectors else 0x20
        cpus.cpu_reset_interrupt(self, cpus.CPU_INTERRUPT_HARD)
        return vector


class Machine:
    def __init__(self, ram_size: int = 4 << 20, model: str = "qemu64", accel: str | Sequence[Any] = "tcg") -> None:
        from pemu.accel.accel import configure_accelerators

        configure_accelerators(accel)
        self.sysmem = MemoryRegion.container("system", 1 << 40)
        self.ram = MemoryRegion.ram("ram", ram_size)
        self.sysmem.add_subregion(0, self.ram)
        self.ports = PortRecorder()
        self.io_root = MemoryRegion.container("io", 0x10000)
        self.io_root.add_subregion(0, MemoryRegion.io("ports", 0x10000, MemoryRegionOps(
            self.ports.read, self.ports.write, valid_max_access_size=4, impl_max_access_size=4,
            valid_unaligned=True)))
        self.memory = AddressSpace(self.sysmem, "cpu-memory-test")
        self.io = AddressSpace(self.io_root, "io-test")
        self.cpu = StubCPU(self.memory, self.io, model)
        cpus.qemu_init_vcpu(self.cpu)

    @property
    def vcpu(self):  # noqa: ANN201 - the TCGVCPU
        return self.cpu.run.accel_vcpu.engine_vcpu()

    def load(self, addr: int, data: bytes) -> None:
        self.memory.write(addr, data)

    def asm(self, addr: int, source: str) -> None:
        self.load(addr, assemble(source, addr))

    def start_real(self, ip: int) -> None:
        env = self.cpu.env
        env.reset()
        env.segs[1].selector = 0
        env.segs[1].base = 0
        env.rip = ip
        cpus.cpu_synchronize_post_reset(self.cpu)

    def start_flat32(self, eip: int) -> None:
        env = self.cpu.env
        env.reset()
        env.set_protected_mode_flat32(eip)
        cpus.cpu_synchronize_post_reset(self.cpu)

    def run_until_done(self, timeout: float = 5.0) -> None:
        # As vm_start/vm_stop do: the virtual clock (and so the TSC) runs only while the vCPUs do.
        qemu_clock_enable_virtual(True)
        cpus.resume_all_vcpus()
        try:
            assert self.ports.done.wait(timeout), "guest did not finish"
        finally:
            cpus.pause_all_vcpus()
            qemu_clock_enable_virtual(False)
        cpus.cpu_synchronize_state(self.cpu)

    def outputs(self, port: int = 0xE9) -> list[int]:
        return [v for p, v, _ in self.ports.writes if p == port]

    def close(self) -> None:
        cpus.destroy_vcpu(self.cpu)
        self.memory.destroy()
        self.io.destroy()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.001)
    return cond()
