"""QEMU's test and debug devices as plain models, without a CPU: pc-testdev,
pci-testdev, edu and isa-debugcon (register maps of QEMU 7.2)."""

from __future__ import annotations

import struct

import pytest

from pemu.hw.char.debugcon import Debugcon
from pemu.hw.misc.edu import (
    DMA_DELAY_NS,
    DMA_IRQ,
    DMA_START,
    EDU_ID,
    FACT_IRQ,
    Edu,
    factorial_u32,
)
from pemu.hw.misc.pc_testdev import PC_TESTDEV_IOMEM_SIZE, PCTestdev
from pemu.hw.misc.pci_testdev import IOTEST_DATAMATCH, IOTEST_NOMATCH, PCITestdev
from pemu.system.memory import MemTxResult
from tests.unit.fakes import EdgeCounter, FakeClock

# --- pc-testdev -----------------------------------------------------------------------------------


def test_pc_testdev_scratch_register_any_width_any_offset() -> None:
    dev = PCTestdev([])
    dev.ioport_write(0, 0x12345678, 4)
    assert dev.ioport_read(0, 4) == 0x12345678
    assert [dev.ioport_read(n, 1) for n in range(4)] == [0x78, 0x56, 0x34, 0x12]
    dev.ioport_write(2, 0xBEEF, 2)
    assert dev.ioport_read(0, 4) == 0xBEEF5678
    dev.ioport_write(3, 0x1FF, 1)   # only the byte lane written
    assert dev.ioport_read(0, 4) == 0xFFEF5678


def test_pc_testdev_irq_ports_drive_lines_and_ignore_missing_ones() -> None:
    lines = [EdgeCounter() for _ in range(16)]
    dev = PCTestdev(lines)
    dev.irq_write(14, 0x80, 1)
    assert lines[14].level == 1 and lines[14].rising == 1
    dev.irq_write(14, 0, 1)
    assert lines[14].level == 0
    dev.irq_write(20, 1, 1)   # no line 20 on this board: logged, nothing else
    dev.irq_write(0xFFFF, 1, 1)
    assert sum(line.rising for line in lines) == 1


def test_pc_testdev_memory_window_and_its_bounds() -> None:
    dev = PCTestdev([])
    dev.iomem_write(0x10, 0x1122334455667788, 8)
    assert dev.iomem_read(0x10, 8) == 0x1122334455667788
    assert dev.iomem_read(0x14, 2) == 0x3344
    dev.iomem_write(PC_TESTDEV_IOMEM_SIZE - 1, 0xAB, 1)
    assert dev.iomem_read(PC_TESTDEV_IOMEM_SIZE - 1, 1) == 0xAB
    dev.iomem_write(PC_TESTDEV_IOMEM_SIZE - 2, 0xFFFF_FFFF, 4)   # would reach past the window: dropped
    assert dev.iomem_read(PC_TESTDEV_IOMEM_SIZE - 2, 4) == 0xFFFFFFFF
    assert len(dev.iomem) == PC_TESTDEV_IOMEM_SIZE


def test_pc_testdev_flush_port_names_the_page() -> None:
    pages: list[int] = []
    dev = PCTestdev([], flush_page=pages.append)
    dev.flush_write(0, 0x12345FFF, 4)
    assert pages == [0x12345000]


# --- pci-testdev ----------------------------------------------------------------------------------


def header(dev: PCITestdev, length: int = 40) -> bytes:
    return bytes(dev.read(n) for n in range(length))


@pytest.mark.parametrize("kind, test, name, offset, data", [
    (0, 0, "mmio-no-eventfd", 2048, IOTEST_DATAMATCH),
    (0, 1, "mmio-wildcard-eventfd", 2049, IOTEST_NOMATCH),
    (0, 2, "mmio-datamatch-eventfd", 2050, IOTEST_DATAMATCH),
    (1, 0, "portio-no-eventfd", 131, IOTEST_DATAMATCH),
    (1, 1, "portio-wildcard-eventfd", 132, IOTEST_NOMATCH),
    (1, 2, "portio-datamatch-eventfd", 133, IOTEST_DATAMATCH),
])
def test_pci_testdev_headers(kind: int, test: int, name: str, offset: int, data: int) -> None:
    dev = PCITestdev()
    dev.write(kind, 0, test)
    raw = header(dev)
    number, width, off, d, count = struct.unpack_from("<BB2xIB3xI", raw)
    assert (number, width, off, d, count) == (kind * 3 + test, 1, offset, data, 0)
    assert raw[16:16 + len(name)] == name.encode()


def test_pci_testdev_counts_hits_as_its_test_says() -> None:
    dev = PCITestdev()
    dev.write(0, 0, 2)               # mmio-datamatch: only 0xFA at offset 2050 counts
    dev.write(0, 2050, 0xFA)
    dev.write(0, 2050, 0x00)
    dev.write(0, 2049, 0xFA)
    assert struct.unpack_from("<I", header(dev), 12)[0] == 1
    dev.write(1, 0, 1)               # portio-wildcard: anything at 132 counts
    for value in (0, 1, 0xFF):
        dev.write(1, 132, value)
    assert struct.unpack_from("<I", header(dev), 12)[0] == 3
    dev.write(1, 0, 7)               # no such test: nothing selected, reads are 0
    assert header(dev) == bytes(40)
    dev.write(1, 132, 1)             # and nothing counts
    dev.write(1, 0, 1)
    assert struct.unpack_from("<I", header(dev), 12)[0] == 3


# --- edu ----------------------------------------------------------------------------------------


class FakeMSI:
    def __init__(self) -> None:
        self.enabled = False
        self.sent = 0

    def msi_enabled(self) -> bool:
        return self.enabled

    def msi_notify(self) -> None:
        self.sent += 1


class FakeDMA:
    """Guest RAM of ``size`` bytes; beyond it the bus answers DECODE_ERROR."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.ram = bytearray(size)
        self.calls: list[tuple[str, int, int]] = []

    def read(self, addr: int, length: int) -> tuple[bytes, MemTxResult]:
        self.calls.append(("read", addr, length))
        if addr + length > len(self.ram):
            return b"\xff" * length, MemTxResult.DECODE_ERROR
        return bytes(self.ram[addr:addr + length]), MemTxResult.OK

    def write(self, addr: int, data: bytes) -> MemTxResult:
        self.calls.append(("write", addr, len(data)))
        if addr + len(data) > len(self.ram):
            return MemTxResult.DECODE_ERROR
        self.ram[addr:addr + len(data)] = data
        return MemTxResult.OK


@pytest.fixture
def edu() -> tuple[Edu, EdgeCounter, FakeMSI, FakeDMA, FakeClock]:
    intx, msi, dma, clock = EdgeCounter(), FakeMSI(), FakeDMA(), FakeClock()
    return Edu(intx, msi, dma, timer_factory=clock.timer, clock=clock), intx, msi, dma, clock


@pytest.mark.parametrize("n, result", [(0, 1), (1, 1), (5, 120), (12, 479001600), (13, 1932053504),
                                       (33, 2147483648), (34, 0), (0xFFFFFFFF, 0)])
def test_factorial_is_the_32_bit_product(n: int, result: int) -> None:
    product = 1
    for k in range(2, min(n, 40) + 1):
        product = product * k % (1 << 32)
    assert factorial_u32(n) == result == product


def test_edu_identification_liveness_and_access_sizes(edu: tuple) -> None:
    dev = edu[0]
    assert dev.read(0x00, 4) == EDU_ID
    dev.write(0x04, 0x12345678, 4)
    assert dev.read(0x04, 4) == 0xEDCBA987
    assert dev.read(0x00, 8) == (1 << 64) - 1     # registers below 0x80 are 32-bit only
    dev.write(0x04, 0, 2)
    assert dev.read(0x04, 4) == 0xEDCBA987
    assert dev.read(0x40, 4) == 0xFFFFFFFF        # nothing there
    dev.write(0x80, 0x1234_5678_9ABC, 8)
    assert dev.read(0x80, 8) == 0x1234_5678_9ABC


def test_edu_factorial_with_interrupt_on_intx_then_msi(edu: tuple) -> None:
    dev, intx, msi, _, _ = edu
    dev.write(0x08, 10, 4)
    assert dev.read(0x20, 4) & 1 == 0 and dev.read(0x08, 4) == 3628800
    assert intx.level == 0
    dev.write(0x20, 0x80, 4)                       # interrupt when done
    dev.write(0x08, 5, 4)
    assert dev.read(0x08, 4) == 120
    assert dev.read(0x24, 4) == FACT_IRQ and intx.level == 1
    dev.write(0x64, FACT_IRQ, 4)
    assert dev.read(0x24, 4) == 0 and intx.level == 0
    msi.enabled = True
    dev.write(0x60, 0x1000, 4)
    assert msi.sent == 1 and intx.level == 0 and dev.read(0x24, 4) == 0x1000
    dev.write(0x64, 0x1000, 4)
    assert msi.sent == 1 and dev.read(0x24, 4) == 0


def test_edu_dma_both_ways_after_100_ms(edu: tuple) -> None:
    dev, intx, _, dma, clock = edu
    dma.ram[0x1000:0x1010] = bytes(range(16))
    dev.write(0x80, 0x1000, 8)
    dev.write(0x88, DMA_START + 0x20, 8)
    dev.write(0x90, 16, 8)
    dev.write(0x98, 0x1 | 0x4, 8)                  # RAM -> buffer, interrupt
    dev.write(0x80, 0x9999, 8)                     # frozen while it runs
    assert dev.read(0x80, 8) == 0x1000 and dev.read(0x98, 8) & 1
    clock.advance(DMA_DELAY_NS - 1)
    assert dev.read(0x98, 8) & 1 and not dma.calls
    clock.advance(1)
    assert dev.read(0x98, 8) == 0x4 and dev.read(0x24, 4) == DMA_IRQ and intx.level == 1
    assert dev.buffer[0x20:0x30] == bytes(range(16))
    dev.write(0x64, DMA_IRQ, 4)
    dev.write(0x80, DMA_START + 0x20, 8)
    dev.write(0x88, 0x2000, 8)
    dev.write(0x98, 0x1 | 0x2, 8)                  # buffer -> RAM, no interrupt
    clock.advance(DMA_DELAY_NS)
    assert dma.ram[0x2000:0x2010] == bytes(range(16)) and intx.level == 0


@pytest.mark.parametrize("buf_addr, count", [
    (DMA_START + 4090, 16),        # past the end of the buffer
    (DMA_START - 1, 4),            # before it
    (0, 4096),
    ((1 << 64) - 8, 16),           # wraps around
    (DMA_START, 1 << 40),          # a huge count
])
def test_edu_dma_outside_the_buffer_is_refused(edu: tuple, buf_addr: int, count: int) -> None:
    dev, intx, _, dma, clock = edu
    for direction in (0, 2):
        dev.write(0x80 if direction else 0x88, buf_addr, 8)
        dev.write(0x88 if direction else 0x80, 0x100, 8)
        dev.write(0x90, count, 8)
        dev.write(0x98, 0x1 | direction | 0x4, 8)
        clock.advance(DMA_DELAY_NS)
        assert dev.read(0x98, 8) & 1 == 0           # finished (refused), the guest is not left waiting
    assert dma.calls == [] and dev.buffer == bytearray(4096)
    assert intx.level == 1                         # completion is still signalled


def test_edu_dma_ram_address_is_clamped_to_the_mask(edu: tuple) -> None:
    dev, _, _, dma, clock = edu
    dev.write(0x80, DMA_START, 8)
    dev.write(0x88, (1 << 40) | 0x3000, 8)
    dev.write(0x90, 8, 8)
    dev.write(0x98, 0x3, 8)
    clock.advance(DMA_DELAY_NS)
    assert dma.calls == [("write", 0x3000, 8)]


def test_edu_dma_bus_error_is_survived(edu: tuple) -> None:
    dev, _, _, dma, clock = edu
    dev.write(0x80, 0xFFFF000, 8)                  # beyond the fake RAM: DECODE_ERROR, all-ones
    dev.write(0x88, DMA_START, 8)
    dev.write(0x90, 8, 8)
    dev.write(0x98, 0x1, 8)
    clock.advance(DMA_DELAY_NS)
    assert dev.buffer[:8] == b"\xff" * 8 and dev.read(0x98, 8) == 0


# --- isa-debugcon ---------------------------------------------------------------------------------


def test_debugcon_sends_each_byte_and_reads_back() -> None:
    out: list[bytes] = []
    dev = Debugcon(out.append)
    for ch in b"hi\n":
        dev.write(0, ch | 0x100, 1)
    assert b"".join(out) == b"hi\n"
    assert dev.read(0, 1) == 0xE9
    assert Debugcon(out.append, readback=0x1234).read(0, 1) == 0x34
