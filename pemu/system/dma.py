"""DMA from device models into guest memory (QEMU's include/sysemu/dma.h).

A device moves data through the address space it masters, never through
host pointers it keeps: a PCI function through its bus-master space
(:func:`pemu.hw.pci.pci.pci_dma_read` and friends, enabled only while
COMMAND.MASTER is set), a platform device through the one its board gave
it.  Every call reports a :class:`~pemu.system.memory.MemTxResult`: a
transfer that reaches past guest memory writes nothing there, reads
all-ones, is logged as a guest error and comes back as DECODE_ERROR, so the
device can give the guest its own error status.  Writes into RAM tell the
accelerators which bytes changed, so translated code is dropped for that
range only.

For zero-copy transfers :func:`dma_memory_map` lends a window of RAM and
:func:`dma_memory_unmap` takes it back, reporting how many bytes the device
actually wrote.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol

from pemu.system.memory import MemTxResult, RAMMapping


class DMADirection(IntEnum):
    """Which way the data goes, seen from guest memory (QEMU's DMADirection)."""

    TO_DEVICE = 0  # the device reads guest memory
    FROM_DEVICE = 1  # the device writes guest memory


class DMAAddressSpace(Protocol):
    """What DMA needs of an address space (pemu.system.memory.AddressSpace)."""

    def read_result(self, addr: int, length: int) -> tuple[bytes, MemTxResult]: ...

    def write(self, addr: int, data: bytes | bytearray | memoryview, rom: bool = False) -> MemTxResult: ...

    def fill(self, addr: int, byte: int, length: int) -> MemTxResult: ...

    def map(self, addr: int, length: int, is_write: bool = False) -> RAMMapping | None: ...

    @staticmethod
    def unmap(mapping: RAMMapping, access_len: int) -> None: ...


def dma_memory_read(space: DMAAddressSpace, addr: int, length: int) -> tuple[bytes, MemTxResult]:
    """``length`` bytes at ``addr`` (all-ones where nothing is there) and how it went."""
    return space.read_result(addr, length)


def dma_memory_write(space: DMAAddressSpace, addr: int, data: bytes | bytearray | memoryview) -> MemTxResult:
    """Write ``data`` at ``addr``; ROM is left alone, as a DMA write to ROM is in QEMU."""
    return space.write(addr, data)


def dma_memory_set(space: DMAAddressSpace, addr: int, byte: int, length: int) -> MemTxResult:
    """Fill ``length`` bytes at ``addr`` with ``byte`` (no host buffer of that size)."""
    return space.fill(addr, byte, length)


def dma_memory_map(space: DMAAddressSpace, addr: int, length: int, direction: DMADirection) -> RAMMapping | None:
    """Lend [addr, addr+length) of guest RAM as ``mapping.view``, or None when
    that range is not all one piece of RAM (fall back to read/write then).
    ``FROM_DEVICE`` mappings are writable and must go back through
    :func:`dma_memory_unmap`."""
    return space.map(addr, length, is_write=direction == DMADirection.FROM_DEVICE)


def dma_memory_unmap(space: DMAAddressSpace, mapping: RAMMapping, access_len: int) -> None:
    """Give ``mapping`` back; ``access_len`` is how many bytes from its start
    the device wrote (only those count as changed)."""
    space.unmap(mapping, access_len)
