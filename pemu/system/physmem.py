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


class _Globals:
    system_memory: MemoryRegion | None = None
    system_io: MemoryRegion | None = None
    io_mem_unassigned: MemoryRegion | None = None
    address_space_memory: AddressSpace | None = None
    address_space_io: AddressSpace | None = None


_g = _Globals()


def _unassigned_read(offset: int, size: int) -> int:
    guest_error(f"unassigned read of size {size} at {offset:#x}")
    return (1 << (size * 8)) - 1


def _unassigned_write(offset: int, value: int, size: int) -> None:
    guest_error(f"unassigned write of size {size} at {offset:#x} value {value:#x}")


def io_mem_init() -> None:
    ops = MemoryRegionOps(_unassigned_read, _unassigned_write, 1, 8, True, 1, 8)
    _g.io_mem_unassigned = MemoryRegion.io("unassigned", MEMORY_SIZE_UNLIMITED, ops)


def memory_map_init() -> None:
    _g.system_memory = MemoryRegion.container("system", MEMORY_SIZE_UNLIMITED)
    _g.address_space_memory = AddressSpace(_g.system_memory, "memory")
    _g.system_io = MemoryRegion.container("io", 0x10000)
    _g.address_space_io = AddressSpace(_g.system_io, "I/O")


def cpu_exec_init_all() -> None:
    io_mem_init()
    memory_map_init()


def get_system_memory() -> MemoryRegion:
    assert _g.system_memory is not None, "cpu_exec_init_all() has not run"
    return _g.system_memory


def get_system_io() -> MemoryRegion:
    assert _g.system_io is not None, "cpu_exec_init_all() has not run"
    return _g.system_io


def address_space_memory() -> AddressSpace:
    assert _g.address_space_memory is not None, "cpu_exec_init_all() has not run"
    return _g.address_space_memory


def address_space_io() -> AddressSpace:
    assert _g.address_space_io is not None, "cpu_exec_init_all() has not run"
    return _g.address_space_io
