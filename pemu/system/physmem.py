"""The machine's root memory regions (QEMU's system/physmem.c).

cpu_exec_init_all() creates, as in the seed: io_mem_unassigned, the root
regions system_memory and system_io, and the address spaces
address_space_memory and address_space_io over them.
"""

from __future__ import annotations

from pemu.system.memory import (
    MEMORY_SIZE_UNLIMITED,
    AddressSpace,
    MemoryRegion,
    MemoryRegionOps,
)
from pemu.util.log import guest_error
from pemu.util.vm_context import current_vm


class SystemMemory:
    """One VM's root regions and the address spaces over them."""

    def __init__(self, io_mem_unassigned: MemoryRegion, system_memory: MemoryRegion, system_io: MemoryRegion,
                 address_space_memory: AddressSpace, address_space_io: AddressSpace) -> None:
        self.io_mem_unassigned = io_mem_unassigned
        self.system_memory = system_memory
        self.system_io = system_io
        self.address_space_memory = address_space_memory
        self.address_space_io = address_space_io


def _unassigned_read(offset: int, size: int) -> int:
    guest_error(f"unassigned read of size {size} at {offset:#x}")
    return (1 << (size * 8)) - 1


def _unassigned_write(offset: int, value: int, size: int) -> None:
    guest_error(f"unassigned write of size {size} at {offset:#x} value {value:#x}")


def io_mem_init() -> MemoryRegion:
    ops = MemoryRegionOps(_unassigned_read, _unassigned_write, 1, 8, True, 1, 8)
    return MemoryRegion.io("unassigned", MEMORY_SIZE_UNLIMITED, ops)


def memory_map_init(io_mem_unassigned: MemoryRegion) -> SystemMemory:
    system_memory = MemoryRegion.container("system", MEMORY_SIZE_UNLIMITED)
    system_io = MemoryRegion.container("io", 0x10000)
    return SystemMemory(io_mem_unassigned, system_memory, system_io,
                        AddressSpace(system_memory, "memory"), AddressSpace(system_io, "I/O"))


def cpu_exec_init_all() -> None:
    """Make the current VM's root regions and address spaces (once per VM)."""
    vm = current_vm()
    assert vm.physmem is None, "cpu_exec_init_all() ran twice for one VM"
    vm.physmem = memory_map_init(io_mem_init())


def _system() -> SystemMemory:
    physmem = current_vm().physmem
    assert physmem is not None, "cpu_exec_init_all() has not run"
    return physmem


def get_system_memory() -> MemoryRegion:
    return _system().system_memory


def get_system_io() -> MemoryRegion:
    return _system().system_io


def address_space_memory() -> AddressSpace:
    return _system().address_space_memory


def address_space_io() -> AddressSpace:
    return _system().address_space_io
