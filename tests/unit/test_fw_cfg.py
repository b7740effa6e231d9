"""fw_cfg: selector/data semantics, the file directory, DMA and its error paths, -fw_cfg."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest

import pemu.hw.pci_host.q35 as q35
from pemu.hw.core.qdev import qdev_new
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.nvram.fw_cfg import (
    FW_CFG_ARCH_LOCAL,
    FW_CFG_FILE_FIRST,
    FW_CFG_WRITE_CHANNEL,
    FWCfgDmaControl,
    FWCfgError,
    FWCfgKey,
    FWCfgState,
    fw_cfg_init_io_dma,
    parse_fw_cfg_option,
)
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MMIO_BULK_LIMIT, AddressSpace, MemoryRegion
from pemu.system.physmem import address_space_io, address_space_memory, cpu_exec_init_all, get_system_memory
from pemu.util.error import UserError

RAM_SIZE = 0x10000
DESC = 0x1000
BUF = 0x2000


@pytest.fixture
def space() -> Iterator[AddressSpace]:
    root = MemoryRegion.container("root", 1 << 32)
    root.add_subregion(0, MemoryRegion.ram("ram", RAM_SIZE))
    asp = AddressSpace(root, "dma-test")
    yield asp
    asp.destroy()


def read_item(fw: FWCfgState, key: int, n: int) -> bytes:
    fw.comb_write(0, key, 2)
    return bytes(fw.comb_read(1, 1) for _ in range(n))


def dma(fw: FWCfgState, space: AddressSpace, control: int, length: int, address: int) -> int:
    """Run one descriptor through the port interface and return the control word written back."""
    space.write(DESC, struct.pack(">IIQ", control, length, address))
    # The guest's outl of the big-endian halves: bytes in memory order, as the port sees them.
    fw.dma_write(0, int.from_bytes((0).to_bytes(4, "big"), "little"), 4)
    fw.dma_write(4, int.from_bytes(DESC.to_bytes(4, "big"), "little"), 4)
    return struct.unpack(">I", space.read(DESC, 4))[0]


def test_signature_id_and_selector(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    assert read_item(fw, FWCfgKey.SIGNATURE, 4) == b"QEMU"
    assert read_item(fw, FWCfgKey.ID, 4) == struct.pack("<I", 3)  # traditional + DMA
    assert FWCfgState(None).get(FWCfgKey.ID) == struct.pack("<I", 1)
    # Past the end reads 0; reselecting restarts at offset 0.
    assert read_item(fw, FWCfgKey.SIGNATURE, 6) == b"QEMU\0\0"
    assert read_item(fw, FWCfgKey.SIGNATURE, 1) == b"Q"


def test_unknown_and_out_of_range_selectors_read_zero() -> None:
    fw = FWCfgState(None)
    assert read_item(fw, FWCfgKey.UUID, 4) == b"\0" * 4         # valid key, no item
    assert read_item(fw, 0x3FFF, 4) == b"\0" * 4                # beyond the file slots
    assert fw.cur_entry == 0xFFFF
    assert read_item(fw, FW_CFG_ARCH_LOCAL | 0x7, 2) == b"\0\0"


def test_write_channel_bit_selects_same_item_and_data_writes_ignored() -> None:
    fw = FWCfgState(None)
    fw.add_i16(FWCfgKey.NB_CPUS, 2)
    assert read_item(fw, FWCfgKey.NB_CPUS | FW_CFG_WRITE_CHANNEL, 2) == b"\x02\x00"
    fw.comb_write(0, FWCfgKey.NB_CPUS, 2)
    fw.comb_write(1, 0x55, 1)
    assert fw.get(FWCfgKey.NB_CPUS) == b"\x02\x00"


def test_invalid_port_access_sizes_are_ignored() -> None:
    fw = FWCfgState(None)
    fw.add_i16(FWCfgKey.NB_CPUS, 7)
    fw.comb_write(0, FWCfgKey.NB_CPUS, 2)
    fw.comb_write(0, 0, 1)        # byte write to the selector: invalid
    assert fw.comb_read(1, 1) == 7
    assert fw.comb_read(0, 1) == 0  # byte read of the selector port: invalid
    assert fw.comb_read(1, 2) == 0


def test_16bit_data_read_is_big_endian_order() -> None:
    fw = FWCfgState(None)
    fw.comb_write(0, FWCfgKey.SIGNATURE, 2)
    assert fw.comb_read(0, 2) == 0x5145  # "Q" then "E"


def test_arch_local_items() -> None:
    fw = FWCfgState(None)
    fw.add_i32(FW_CFG_ARCH_LOCAL | 2, 1)
    assert read_item(fw, FW_CFG_ARCH_LOCAL | 2, 4) == b"\x01\0\0\0"
    with pytest.raises(ValueError):
        fw.add_bytes(FW_CFG_FILE_FIRST, b"x")


def test_file_directory_sorted_with_keys() -> None:
    fw = FWCfgState(None)
    fw.add_file("etc/e820", b"x" * 40)
    fw.add_file("bootorder", b"")
    fw.add_file("opt/a", b"hello")
    raw = read_item(fw, FWCfgKey.FILE_DIR, 4 + 3 * 64)
    assert struct.unpack(">I", raw[:4])[0] == 3
    entries = [struct.unpack(">IHH56s", raw[4 + 64 * i:68 + 64 * i]) for i in range(3)]
    assert [(e[0], e[1], e[3].rstrip(b"\0")) for e in entries] == [
        (0, 0x20, b"bootorder"), (40, 0x21, b"etc/e820"), (5, 0x22, b"opt/a")]
    assert read_item(fw, fw.file_key("opt/a") or 0, 5) == b"hello"
    with pytest.raises(FWCfgError):
        fw.add_file("opt/a", b"again")
    fw.modify_file("opt/a", b"bye")
    assert read_item(fw, 0x22, 4) == b"bye\0"


def test_file_slots_are_limited() -> None:
    fw = FWCfgState(None, file_slots=2)
    fw.add_file("a", b"")
    fw.add_file("b", b"")
    with pytest.raises(FWCfgError):
        fw.add_file("c", b"")


def test_select_callback_runs_on_select() -> None:
    fw = FWCfgState(None)
    seen: list[int] = []
    fw.add_file("etc/acpi/tables", b"T", select_cb=lambda: seen.append(1))
    read_item(fw, fw.file_key("etc/acpi/tables") or 0, 1)
    assert seen == [1]


def test_dma_signature_register() -> None:
    fw = FWCfgState(None)
    assert bytes(fw.dma_read(0, 4).to_bytes(4, "little")) + fw.dma_read(4, 4).to_bytes(4, "little") == b"QEMU CFG"
    assert fw.dma_read(0, 8).to_bytes(8, "little") == b"QEMU CFG"
    assert fw.dma_read(2, 4) == 0  # misaligned: invalid


def test_dma_select_and_read(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    fw.add_file("etc/e820", bytes(range(40)))
    key = fw.file_key("etc/e820") or 0
    ctl = (key << 16) | FWCfgDmaControl.SELECT | FWCfgDmaControl.READ
    assert dma(fw, space, ctl, 16, BUF) == 0
    assert space.read(BUF, 16) == bytes(range(16))
    # Without SELECT the offset carries on; past the end the buffer is zero-filled.
    space.write(BUF, b"\xaa" * 32)
    assert dma(fw, space, FWCfgDmaControl.READ, 32, BUF) == 0
    assert space.read(BUF, 32) == bytes(range(16, 40)) + bytes(8)


def test_dma_skip_then_read(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    ctl = (FWCfgKey.SIGNATURE << 16) | FWCfgDmaControl.SELECT | FWCfgDmaControl.SKIP
    assert dma(fw, space, ctl, 2, 0) == 0
    assert dma(fw, space, FWCfgDmaControl.READ, 2, BUF) == 0
    assert space.read(BUF, 2) == b"MU"


def test_dma_64bit_register_write(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    space.write(DESC, struct.pack(">IIQ", FWCfgDmaControl.SELECT | FWCfgDmaControl.READ, 4, BUF))
    fw.dma_write(0, int.from_bytes(DESC.to_bytes(8, "big"), "little"), 8)
    assert space.read(BUF, 4) == b"QEMU"
    assert space.read(DESC, 4) == b"\0\0\0\0"


def test_dma_bad_buffer_address_sets_error(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    ctl = (FWCfgKey.SIGNATURE << 16) | FWCfgDmaControl.SELECT | FWCfgDmaControl.READ
    assert dma(fw, space, ctl, 4, 0x8000_0000) == FWCfgDmaControl.ERROR
    # A buffer that starts in RAM and runs past its end fails as well.
    assert dma(fw, space, ctl, 4, RAM_SIZE - 2) == FWCfgDmaControl.ERROR


def test_dma_bad_descriptor_address_is_ignored(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    fw.dma_write(0, 0, 4)
    fw.dma_write(4, int.from_bytes((0x9000_0000).to_bytes(4, "big"), "little"), 4)
    assert fw.dma_addr == 0  # consumed; nothing raised


def test_dma_length_past_item_on_missing_item_zero_fills(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    space.write(BUF, b"\xff" * 8)
    ctl = (FWCfgKey.UUID << 16) | FWCfgDmaControl.SELECT | FWCfgDmaControl.READ
    assert dma(fw, space, ctl, 8, BUF) == 0
    assert space.read(BUF, 8) == bytes(8)
    # An unknown selector behaves the same; a huge length that leaves RAM fails.
    ctl = (0x3FFF << 16) | FWCfgDmaControl.SELECT | FWCfgDmaControl.READ
    assert dma(fw, space, ctl, 0xFFFF_FFFF, BUF) == FWCfgDmaControl.ERROR


def test_dma_write_to_read_only_item_fails(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    fw.add_file("etc/ro", b"abcd")
    space.write(BUF, b"WXYZ")
    ctl = ((fw.file_key("etc/ro") or 0) << 16) | FWCfgDmaControl.SELECT | FWCfgDmaControl.WRITE
    assert dma(fw, space, ctl, 4, BUF) == FWCfgDmaControl.ERROR
    assert fw.file("etc/ro") == b"abcd"


def test_dma_write_to_writable_item_and_past_end(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    written: list[tuple[int, int]] = []
    fw.add_file("etc/rw", b"abcd", allow_write=True, write_cb=lambda off, n: written.append((off, n)))
    space.write(BUF, b"WXYZQ")
    key = fw.file_key("etc/rw") or 0
    assert dma(fw, space, (key << 16) | FWCfgDmaControl.SELECT | FWCfgDmaControl.WRITE, 2, BUF) == 0
    assert fw.file("etc/rw") == b"WXcd"
    assert written == [(0, 2)]
    # Length past the item: the part inside is written, then ERROR.
    assert dma(fw, space, FWCfgDmaControl.WRITE, 5, BUF) == FWCfgDmaControl.ERROR
    assert fw.file("etc/rw") == b"WXWX"


def test_dma_without_operation_does_nothing(space: AddressSpace) -> None:
    fw = FWCfgState(space)
    space.write(BUF, b"\x11" * 4)
    assert dma(fw, space, (FWCfgKey.SIGNATURE << 16) | FWCfgDmaControl.SELECT, 4, BUF) == 0
    assert space.read(BUF, 4) == b"\x11" * 4


def test_dma_disabled_device() -> None:
    fw = FWCfgState(None)
    fw.dma_write(0, 0, 8)  # no DMA address space: logged, ignored
    assert not fw.dma_enabled


class Opts(dict):
    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return super().get(key, default)


def test_user_option_parsing(tmp_path: object) -> None:
    assert parse_fw_cfg_option(Opts(name="opt/x", string="hi")) == ("opt/x", b"hi")
    path = f"{tmp_path}/blob"
    with open(path, "wb") as f:
        f.write(b"\x01\x02")
    assert parse_fw_cfg_option(Opts(name="opt/f", file=path)) == ("opt/f", b"\x01\x02")
    with pytest.raises(UserError, match="exactly one of file, string"):
        parse_fw_cfg_option(Opts(name="opt/x", string="a", file=path))
    with pytest.raises(UserError, match="exactly one of"):
        parse_fw_cfg_option(Opts(name="opt/x"))
    with pytest.raises(UserError, match="name too long"):
        parse_fw_cfg_option(Opts(name="opt/" + "x" * 60, string="a"))
    with pytest.raises(UserError, match="can't load"):
        parse_fw_cfg_option(Opts(name="opt/x", file=f"{tmp_path}/missing"))
    with pytest.raises(UserError, match="invalid argument"):
        parse_fw_cfg_option(Opts(string="a"))


def test_dma_zero_fill_aimed_at_mmconfig_stops_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reproducer of issue 8: a READ past the end of an item, 256 MiB long,
    into the PCIe MMCONFIG window, started by the guest's port writes.  It used
    to take minutes under the big lock; now the device registers take at most
    MMIO_BULK_LIMIT bytes and the descriptor reports ERROR."""
    cpu_exec_init_all()
    system = get_system_memory()
    system.add_subregion(0, MemoryRegion.ram("pc.ram", 1 << 20))
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    system.add_subregion_overlap(0, pci, -1)
    host = qdev_new(q35.TYPE_Q35_HOST_DEVICE)
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    q35.mch_init_pciexbar(host.mch, host.bus, system, enabled_at_reset=True)  # type: ignore[attr-defined]
    fw_cfg_init_io_dma(0x510, 0x514, address_space_memory())
    config_writes: list[int] = []
    real_write = q35.pci_bus_config_write

    def counting_write(bus: object, bus_num: int, devfn: int, where: int, value: int, size: int) -> None:
        config_writes.append(size)
        real_write(bus, bus_num, devfn, where, value, size)  # type: ignore[arg-type]

    monkeypatch.setattr(q35, "pci_bus_config_write", counting_write)
    mem, io = address_space_memory(), address_space_io()
    assert mem.flatview.lookup(0xB0100000).mr.name == "pcie-mmcfg-mmio"  # type: ignore[union-attr]
    mem.write(0x1000, struct.pack(">IIQ", FWCfgDmaControl.READ, 0x0FFFFFFF, 0xB0100000))
    started = time.monotonic()
    io.dispatch_write(0x514, 0, 4)
    io.dispatch_write(0x518, int.from_bytes((0x1000).to_bytes(4, "big"), "little"), 4)  # outl: starts it
    elapsed = time.monotonic() - started
    assert struct.unpack(">I", mem.read(0x1000, 4))[0] == FWCfgDmaControl.ERROR
    assert sum(config_writes) == MMIO_BULK_LIMIT and set(config_writes) == {4}
    assert elapsed < 1.0
