"""A DMA address space for device tests without a CPU: guest RAM from 0 to
``size``; an access past it fails as pemu's address spaces make it fail."""

from __future__ import annotations

from pemu.system.memory import MemTxResult, RAMMapping


class FakeGuestMemory:
    def __init__(self, size: int) -> None:
        self.ram = bytearray(size)

    def _outside(self, addr: int, length: int) -> bool:
        return addr < 0 or addr + length > len(self.ram)

    def read_result(self, addr: int, length: int) -> tuple[bytes, MemTxResult]:
        if self._outside(addr, length):
            return b"\xff" * length, MemTxResult.DECODE_ERROR
        return bytes(self.ram[addr:addr + length]), MemTxResult.OK

    def write(self, addr: int, data: bytes | bytearray | memoryview, rom: bool = False) -> MemTxResult:
        if self._outside(addr, len(data)):
            return MemTxResult.DECODE_ERROR
        self.ram[addr:addr + len(data)] = data
        return MemTxResult.OK

    def fill(self, addr: int, byte: int, length: int) -> MemTxResult:
        return self.write(addr, bytes([byte]) * length)

    def map(self, addr: int, length: int, is_write: bool = False) -> RAMMapping | None:
        return None  # no direct mapping: the device takes the bounce path

    @staticmethod
    def unmap(mapping: RAMMapping, access_len: int) -> None:
        pass
