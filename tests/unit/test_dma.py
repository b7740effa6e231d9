"""DMA: the dma_memory_* interface, PCI bus mastering gated by COMMAND.MASTER,
DMA past guest memory, map/unmap reporting what was written, and the
re-entrancy guard, with a DMA-capable PCI test function on the q35 root bus
(no CPU)."""

from __future__ import annotations

import io
from typing import Any

import pytest

import pemu.hw.pci_host.q35  # noqa: F401  (registers the host types)
from pemu.hw.core.qdev import qdev_new, qdev_realize
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.pci.pci import (
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    TYPE_PCI_DEVICE,
    PCIDevice,
    PCIDeviceClass,
    pci_device_reset,
    pci_dma_map,
    pci_dma_read,
    pci_dma_unmap,
    pci_dma_write,
    pci_get_address_space,
    pci_register_bar,
)
from pemu.qom.object import ObjectClass, TypeInfo, type_register
from pemu.system.dma import DMADirection, dma_memory_read, dma_memory_set, dma_memory_write
from pemu.system.memory import (
    MEMORY_SIZE_UNLIMITED,
    AddressSpace,
    MemoryRegion,
    MemoryRegionOps,
    MemTxResult,
    RAMBlock,
    add_ram_write_notifier,
    remove_ram_write_notifier,
)
from pemu.system.physmem import address_space_memory, cpu_exec_init_all, get_system_memory
from pemu.util import log

TYPE_DMA_TEST = "test-pci-dma"
RAM_SIZE = 1 << 20
BAR_A, BAR_B = 0xFE000000, 0xFE001000

# The test function's registers (BAR 0): a transfer between its 4 KiB buffer
# and guest memory, as a disk or network controller does.
REG_ADDR, REG_LEN, REG_CMD, REG_STATUS, REG_BUF = 0x00, 0x08, 0x0C, 0x10, 0x800
CMD_TO_MEMORY, CMD_FROM_MEMORY = 1, 2
STATUS_OK, STATUS_ERROR = 0, 1
BUF_SIZE = 0x800


class DMATestDevice(PCIDevice):
    dma_addr: int
    dma_len: int
    status: int
    buffer: bytearray
    handled: int


def _read(dev: DMATestDevice, offset: int, size: int) -> int:
    if offset >= REG_BUF:
        return int.from_bytes(dev.buffer[offset - REG_BUF:offset - REG_BUF + size], "little")
    return {REG_ADDR: dev.dma_addr & 0xFFFFFFFF, REG_ADDR + 4: dev.dma_addr >> 32, REG_LEN: dev.dma_len,
            REG_STATUS: dev.status}.get(offset, 0)


def _write(dev: DMATestDevice, offset: int, value: int, size: int) -> None:
    dev.handled += 1
    if offset >= REG_BUF:
        dev.buffer[offset - REG_BUF:offset - REG_BUF + size] = value.to_bytes(size, "little")
    elif offset == REG_ADDR:
        dev.dma_addr = (dev.dma_addr & ~0xFFFFFFFF) | value
    elif offset == REG_ADDR + 4:
        dev.dma_addr = (dev.dma_addr & 0xFFFFFFFF) | (value << 32)
    elif offset == REG_LEN:
        dev.dma_len = min(value, BUF_SIZE)  # the guest's length, capped by what the buffer holds
    elif offset == REG_CMD:
        if value == CMD_TO_MEMORY:
            result = pci_dma_write(dev, dev.dma_addr, dev.buffer[:dev.dma_len])
        else:
            data, result = pci_dma_read(dev, dev.dma_addr, dev.dma_len)
            if result == MemTxResult.OK:
                dev.buffer[:dev.dma_len] = data
        dev.status = STATUS_OK if result == MemTxResult.OK else STATUS_ERROR


def _realize(obj: Any) -> None:
    dev: DMATestDevice = obj
    dev.dma_addr = dev.dma_len = dev.status = dev.handled = 0
    dev.buffer = bytearray(BUF_SIZE)
    ops = MemoryRegionOps(lambda off, size: _read(dev, off, size), lambda off, v, size: _write(dev, off, v, size),
                          1, 4, False, 1, 4)
    pci_register_bar(dev, 0, 0, MemoryRegion.io("dma-test-regs", 0x1000, ops, owner=dev))


def _class_init(klass: ObjectClass, data: Any) -> None:
    k: PCIDeviceClass = klass  # type: ignore[assignment]
    k.vendor_id, k.device_id, k.class_id = 0x1234, 0x11E0, 0xFF00
    k.pci_realize = _realize  # type: ignore[attr-defined]


type_register(TypeInfo(TYPE_DMA_TEST, parent=TYPE_PCI_DEVICE, instance_type=DMATestDevice,
                       class_init=_class_init, interfaces=("conventional-pci-device",)))


@pytest.fixture
def board() -> Any:
    """System memory with 1 MiB of RAM, the q35 host and two test functions
    with BAR 0 at BAR_A and BAR_B and memory decoding on (MASTER still off)."""
    cpu_exec_init_all()
    ram = MemoryRegion.ram("ram", RAM_SIZE)
    get_system_memory().add_subregion(0, ram)
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    get_system_memory().add_subregion_overlap(0, pci, -1)
    host = qdev_new("q35-pcihost")
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    devs = []
    for addr, bar in (("3.0", BAR_A), ("4.0", BAR_B)):
        dev = qdev_new(TYPE_DMA_TEST)
        dev.property_set("addr", addr)
        qdev_realize(dev, host.bus)  # type: ignore[attr-defined]
        dev.config_write(0x10, bar, 4)
        dev.config_write(PCI_COMMAND, PCI_COMMAND_MEMORY, 2)
        devs.append(dev)
    return ram, devs[0], devs[1]


@pytest.fixture
def guest_errors(monkeypatch: pytest.MonkeyPatch) -> Any:
    """-d guest_errors into a buffer; calling the result returns (and empties) it."""
    out = io.StringIO()
    monkeypatch.setattr(log, "_mask", log.LOG_GUEST_ERROR)
    monkeypatch.setattr(log, "_file", out)

    def take() -> str:
        text = out.getvalue()
        out.seek(0)
        out.truncate()
        return text
    return take


def run_dma(dev: DMATestDevice, cmd: int, addr: int, length: int, bar: int = BAR_A) -> int:
    """Program a transfer through the function's registers, as a guest driver does; the status."""
    mem = address_space_memory()
    mem.dispatch_write(bar + REG_ADDR, addr & 0xFFFFFFFF, 4)
    mem.dispatch_write(bar + REG_ADDR + 4, addr >> 32, 4)
    mem.dispatch_write(bar + REG_LEN, length, 4)
    mem.dispatch_write(bar + REG_CMD, cmd, 4)
    return mem.dispatch_read(bar + REG_STATUS, 4)


def set_master(dev: PCIDevice, on: bool) -> None:
    dev.config_write(PCI_COMMAND, PCI_COMMAND_MEMORY | (PCI_COMMAND_MASTER if on else 0), 2)


def test_master_off_cannot_dma(board: Any, guest_errors: Any) -> None:
    ram, dev, _ = board
    ram.ram_block.view[0x1000:0x1008] = b"original"
    dev.buffer[:8] = b"from-dev"
    assert run_dma(dev, CMD_TO_MEMORY, 0x1000, 8) == STATUS_ERROR
    assert bytes(ram.ram_block.view[0x1000:0x1008]) == b"original"     # the write was dropped
    assert run_dma(dev, CMD_FROM_MEMORY, 0x1000, 8) == STATUS_ERROR
    assert bytes(dev.buffer[:8]) == b"from-dev"                        # nothing was read
    data, result = pci_dma_read(dev, 0x1000, 4)
    assert (data, result) == (b"\xff" * 4, MemTxResult.DECODE_ERROR)  # unassigned: all ones
    assert "nothing is there" in guest_errors()


def test_master_on_can_dma_both_ways(board: Any) -> None:
    ram, dev, _ = board
    set_master(dev, True)
    dev.buffer[:8] = b"from-dev"
    assert run_dma(dev, CMD_TO_MEMORY, 0x1000, 8) == STATUS_OK
    assert bytes(ram.ram_block.view[0x1000:0x1008]) == b"from-dev"
    ram.ram_block.view[0x2000:0x2006] = b"to-dev"
    assert run_dma(dev, CMD_FROM_MEMORY, 0x2000, 6) == STATUS_OK
    assert bytes(dev.buffer[:6]) == b"to-dev"


def test_master_bit_gates_dma_each_time_it_changes(board: Any) -> None:
    ram, dev, other = board
    set_master(dev, True)
    dev.buffer[:2] = b"on"
    assert run_dma(dev, CMD_TO_MEMORY, 0x100, 2) == STATUS_OK
    set_master(dev, False)
    dev.buffer[:2] = b"no"
    assert run_dma(dev, CMD_TO_MEMORY, 0x100, 2) == STATUS_ERROR
    assert bytes(ram.ram_block.view[0x100:0x102]) == b"on"
    # Each function has its own bus-master space: the other one's bit is its own.
    assert pci_get_address_space(dev) is not pci_get_address_space(other)
    set_master(other, True)
    assert run_dma(other, CMD_TO_MEMORY, 0x100, 2, bar=BAR_B) == STATUS_OK
    # A PCI reset clears COMMAND, so MASTER too.
    pci_device_reset(other)
    assert pci_dma_write(other, 0x100, b"xx") == MemTxResult.DECODE_ERROR


def test_dma_past_guest_memory_is_a_guest_error(board: Any, guest_errors: Any) -> None:
    ram, dev, _ = board
    set_master(dev, True)
    dev.buffer[:16] = b"0123456789abcdef"
    # Runs off the end of RAM: the part in RAM lands (as QEMU), the rest goes nowhere.
    assert run_dma(dev, CMD_TO_MEMORY, RAM_SIZE - 4, 16) == STATUS_ERROR
    assert bytes(ram.ram_block.view[RAM_SIZE - 4:]) == b"0123"
    assert f"write of 12 bytes at {RAM_SIZE:#x}: nothing is there" in guest_errors()
    # Far beyond, and wrapping around the top of the 64-bit space: refused, nothing raised.
    assert run_dma(dev, CMD_TO_MEMORY, 0x40_0000_0000, 16) == STATUS_ERROR
    assert run_dma(dev, CMD_TO_MEMORY, (1 << 64) - 8, 16) == STATUS_ERROR
    assert run_dma(dev, CMD_FROM_MEMORY, (1 << 64) - 8, 16) == STATUS_ERROR
    assert "nothing is there" in guest_errors()


def test_dma_into_its_own_registers_is_refused(board: Any, guest_errors: Any) -> None:
    _, dev, _ = board
    set_master(dev, True)
    # The transfer targets the function's own command register: without the
    # guard the write would start the same transfer again, recursively.
    dev.buffer[:4] = CMD_TO_MEMORY.to_bytes(4, "little")
    handled = dev.handled
    assert run_dma(dev, CMD_TO_MEMORY, BAR_A + REG_CMD, 4) == STATUS_ERROR
    assert dev.handled == handled + 4                   # the four register writes, no fifth from the DMA
    assert "Blocked re-entrant IO on MemoryRegion: dma-test-regs write" in guest_errors()
    # Reading its own registers by DMA is refused as well.
    assert run_dma(dev, CMD_FROM_MEMORY, BAR_A + REG_STATUS, 4) == STATUS_ERROR
    assert "Blocked re-entrant IO on MemoryRegion: dma-test-regs read" in guest_errors()
    # The guard is released afterwards: the CPU still reaches the registers.
    assert address_space_memory().dispatch_read(BAR_A + REG_STATUS, 4) == STATUS_ERROR


def test_dma_into_another_devices_registers_is_allowed(board: Any, guest_errors: Any) -> None:
    _, dev, other = board
    set_master(dev, True)
    dev.buffer[:4] = b"peer"
    assert run_dma(dev, CMD_TO_MEMORY, BAR_B + REG_BUF, 4) == STATUS_OK
    assert bytes(other.buffer[:4]) == b"peer"
    assert "re-entrant" not in guest_errors()


def test_map_unmap_reports_only_what_was_written(board: Any) -> None:
    ram, dev, _ = board
    set_master(dev, True)
    written: list[tuple[RAMBlock, int, int]] = []

    def notify(block: RAMBlock, offset: int, length: int) -> None:
        written.append((block, offset, length))

    add_ram_write_notifier(notify)
    try:
        mapping = pci_dma_map(dev, 0x3000, 0x100, DMADirection.FROM_DEVICE)
        assert mapping is not None and len(mapping.view) == 0x100
        mapping.view[:5] = b"hello"
        assert written == []                                    # nobody told yet
        pci_dma_unmap(dev, mapping, 5)
        assert written == [(ram.ram_block, 0x3000, 5)]
        assert bytes(ram.ram_block.view[0x3000:0x3005]) == b"hello"
        # A read mapping reports nothing; a range that is not all RAM is not mapped.
        mapping = pci_dma_map(dev, 0x3000, 0x10, DMADirection.TO_DEVICE)
        assert mapping is not None and bytes(mapping.view[:5]) == b"hello"
        pci_dma_unmap(dev, mapping, 0x10)
        assert len(written) == 1
        assert pci_dma_map(dev, RAM_SIZE - 8, 16, DMADirection.FROM_DEVICE) is None
        set_master(dev, False)
        assert pci_dma_map(dev, 0x3000, 0x10, DMADirection.FROM_DEVICE) is None
    finally:
        remove_ram_write_notifier(notify)


def test_dma_memory_functions_on_an_address_space() -> None:
    root = MemoryRegion.container("root", 1 << 32)
    ram = MemoryRegion.ram("ram", 0x2000)
    root.add_subregion(0x1000, ram)
    space = AddressSpace(root, "dma-test")
    written: list[tuple[int, int]] = []

    def notify(block: RAMBlock, offset: int, length: int) -> None:
        if block is ram.ram_block:
            written.append((offset, length))

    add_ram_write_notifier(notify)
    try:
        assert dma_memory_write(space, 0x1010, b"abc") == MemTxResult.OK
        assert dma_memory_read(space, 0x100F, 5) == (b"\0abc\0", MemTxResult.OK)
        assert dma_memory_set(space, 0x1100, 0x5A, 0x20) == MemTxResult.OK
        assert ram.ram_block.view[0x100:0x120] == b"\x5a" * 0x20
        assert written == [(0x10, 3), (0x100, 0x20)]                # the bytes written, by block offset
        assert dma_memory_set(space, 0x2FFF, 0, 2) == MemTxResult.DECODE_ERROR
        assert dma_memory_read(space, 0x0FFF, 2) == (b"\xff\0", MemTxResult.DECODE_ERROR)
    finally:
        remove_ram_write_notifier(notify)
        space.destroy()
