"""FlatView rendering and AddressSpace dispatch, table-tested."""

from __future__ import annotations

import pytest

from pemu.system.memory import (
    MMIO_BULK_LIMIT,
    AddressSpace,
    MemoryRegion,
    MemoryRegionOps,
    MemTxResult,
    render_flatview,
)


def flat(root: MemoryRegion) -> list[tuple[int, int, str, int]]:
    return [(fr.start, fr.end, fr.mr.name, fr.offset_in_region) for fr in render_flatview(root)]


class Regs:
    """A device with 4 byte-wide registers that records accesses."""

    def __init__(self, impl_max: int = 4) -> None:
        self.mem = bytearray(16)
        self.log: list[tuple[str, int, int, int]] = []
        self.ops = MemoryRegionOps(self.read, self.write, 1, 4, False, 1, impl_max)

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size, 0))
        return int.from_bytes(self.mem[offset:offset + size], "little")

    def write(self, offset: int, value: int, size: int) -> None:
        self.log.append(("w", offset, size, value))
        self.mem[offset:offset + size] = value.to_bytes(size, "little")


def test_single_ram_region():
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion(0x1000, MemoryRegion.ram("ram", 0x2000))
    assert flat(root) == [(0x1000, 0x3000, "ram", 0)]


def test_overlap_higher_priority_wins_and_splits_lower():
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion(0, MemoryRegion.ram("low", 0x10000))
    root.add_subregion_overlap(0x4000, MemoryRegion.ram("high", 0x1000), 1)
    assert flat(root) == [
        (0x0, 0x4000, "low", 0),
        (0x4000, 0x5000, "high", 0),
        (0x5000, 0x10000, "low", 0x5000),
    ]


def test_equal_priority_newest_wins():
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion_overlap(0, MemoryRegion.ram("a", 0x2000), 0)
    root.add_subregion_overlap(0x1000, MemoryRegion.ram("b", 0x2000), 0)
    assert flat(root) == [(0, 0x1000, "a", 0), (0x1000, 0x3000, "b", 0)]


def test_lower_priority_under_higher_is_hidden():
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion_overlap(0, MemoryRegion.ram("top", 0x2000), 2)
    root.add_subregion_overlap(0x1000, MemoryRegion.ram("under", 0x2000), -1)
    assert flat(root) == [(0, 0x2000, "top", 0), (0x2000, 0x3000, "under", 0x1000)]


def test_alias_into_middle_of_region():
    ram = MemoryRegion.ram("pc.ram", 0x10000)
    root = MemoryRegion.container("root", 1 << 32)
    root.add_subregion(0x100000, MemoryRegion.alias("win", ram, 0x4000, 0x2000))
    assert flat(root) == [(0x100000, 0x102000, "pc.ram", 0x4000)]


def test_alias_of_container_and_clipping():
    inner = MemoryRegion.container("inner", 0x3000)
    inner.add_subregion(0x0, MemoryRegion.ram("r0", 0x1000))
    inner.add_subregion(0x2000, MemoryRegion.ram("r2", 0x1000))
    root = MemoryRegion.container("root", 1 << 20)
    # A window starting half way into r0 and ending inside r2.
    root.add_subregion(0x8000, MemoryRegion.alias("w", inner, 0x800, 0x2000))
    assert flat(root) == [(0x8000, 0x8800, "r0", 0x800), (0x9800, 0xA000, "r2", 0)]


def test_nested_containers_offsets_add_up():
    root = MemoryRegion.container("root", 1 << 32)
    mid = MemoryRegion.container("mid", 0x100000)
    leaf = MemoryRegion.container("leaf", 0x10000)
    leaf.add_subregion(0x100, MemoryRegion.ram("x", 0x100))
    mid.add_subregion(0x2000, leaf)
    root.add_subregion(0x40000000, mid)
    assert flat(root) == [(0x40002100, 0x40002200, "x", 0)]


def test_subregion_clipped_to_container_size():
    root = MemoryRegion.container("root", 1 << 20)
    small = MemoryRegion.container("small", 0x1000)
    small.add_subregion(0x800, MemoryRegion.ram("big", 0x4000))
    root.add_subregion(0, small)
    assert flat(root) == [(0x800, 0x1000, "big", 0)]


def test_disabled_region_and_its_children_vanish():
    root = MemoryRegion.container("root", 1 << 20)
    under = MemoryRegion.ram("under", 0x2000)
    cont = MemoryRegion.container("c", 0x2000)
    cont.add_subregion(0, MemoryRegion.ram("child", 0x1000))
    root.add_subregion(0, under)
    root.add_subregion_overlap(0, cont, 1)
    assert flat(root)[0][2] == "child"
    cont.set_enabled(False)
    assert flat(root) == [(0, 0x2000, "under", 0)]


def test_readonly_alias_makes_range_readonly():
    ram = MemoryRegion.ram("r", 0x1000)
    a = MemoryRegion.alias("ro", ram, 0, 0x1000)
    a.set_readonly(True)
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion(0, a)
    (fr,) = render_flatview(root).ranges
    assert fr.readonly


def test_adjacent_pieces_of_one_region_merge():
    ram = MemoryRegion.ram("r", 0x3000)
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion(0, MemoryRegion.alias("a", ram, 0, 0x1000))
    root.add_subregion(0x1000, MemoryRegion.alias("b", ram, 0x1000, 0x2000))
    assert flat(root) == [(0, 0x3000, "r", 0)]


def test_lookup_and_listener_on_change():
    root = MemoryRegion.container("root", 1 << 20)
    space = AddressSpace(root, "test")
    seen = []

    class L:
        def flatview_changed(self, old, new):
            seen.append(len(new))

    try:
        space.add_listener(L())
        assert seen == [0]
        r = MemoryRegion.ram("r", 0x1000)
        root.add_subregion(0x2000, r)
        assert seen == [0, 1]
        assert space.flatview.lookup(0x2fff).mr is r
        assert space.flatview.lookup(0x3000) is None
        r.set_address(0x5000)
        assert space.flatview.lookup(0x5000).mr is r
        assert seen == [0, 1, 1]
    finally:
        space.destroy()


def test_dispatch_io_splits_and_widens():
    regs = Regs(impl_max=1)
    root = MemoryRegion.container("root", 0x10000)
    root.add_subregion(0x100, MemoryRegion.io("dev", 16, regs.ops))
    space = AddressSpace(root, "io-test")
    try:
        space.dispatch_write(0x104, 0x11223344, 4)
        assert [e[1] for e in regs.log] == [4, 5, 6, 7]
        assert space.dispatch_read(0x104, 4) == 0x11223344
        assert space.dispatch_read(0x105, 1) == 0x33
    finally:
        space.destroy()


def test_unassigned_reads_all_ones_and_drops_writes():
    root = MemoryRegion.container("root", 0x10000)
    space = AddressSpace(root, "empty")
    try:
        assert space.dispatch_read(0x80, 1) == 0xFF
        assert space.dispatch_read(0x80, 4) == 0xFFFFFFFF
        space.dispatch_write(0x80, 1, 1)
        data, res = space.read_result(0x10, 4)
        assert data == b"\xff" * 4 and res == MemTxResult.DECODE_ERROR
    finally:
        space.destroy()


def test_invalid_access_size_is_refused():
    regs = Regs()
    ops = MemoryRegionOps(regs.read, regs.write, 4, 4, False, 4, 4)
    root = MemoryRegion.container("root", 0x10000)
    root.add_subregion(0, MemoryRegion.io("dev", 16, ops))
    space = AddressSpace(root, "strict")
    try:
        assert space.dispatch_read(0x1, 1) == 0xFF
        space.dispatch_write(0x2, 0xAB, 2)
        assert regs.log == []
    finally:
        space.destroy()


def test_buffer_write_crosses_ram_and_hole_and_rom_is_protected():
    ram = MemoryRegion.ram("ram", 0x1000)
    rom = MemoryRegion.rom("rom", 0x1000)
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion(0, ram)
    root.add_subregion(0x2000, rom)
    space = AddressSpace(root, "buf")
    try:
        assert space.write(0xFFE, b"abcd") == MemTxResult.DECODE_ERROR
        assert bytes(ram.ram_block.view[0xFFE:0x1000]) == b"ab"
        space.write(0x2000, b"xy")
        assert bytes(rom.ram_block.view[0:2]) == b"\0\0"
        space.write_rom(0x2000, b"xy")
        assert space.read(0x2000, 2) == b"xy"
        assert space.map(0x10, 0x20) is not None
        assert space.map(0xFF0, 0x20) is None
    finally:
        space.destroy()


def test_alias_window_must_fit():
    ram = MemoryRegion.ram("r", 0x1000)
    with pytest.raises(ValueError):
        MemoryRegion.alias("bad", ram, 0x800, 0x1000)


def test_wide_access_goes_whole_to_the_region_at_its_first_byte():
    # As 0xCF8-0xCFB (PCI config address) with the 1-byte reset register at
    # 0xCF9 on top: a dword at 0xCF8 still reaches the config address whole.
    conf, rst = Regs(), Regs()
    root = MemoryRegion.container("io", 0x10000)
    root.add_subregion(0xCF8, MemoryRegion.io("conf", 4, conf.ops))
    root.add_subregion_overlap(0xCF9, MemoryRegion.io("rst", 1, rst.ops), 1)
    space = AddressSpace(root, "overlap")
    try:
        space.dispatch_write(0xCF8, 0x80001234, 4)
        assert conf.log == [("w", 0, 4, 0x80001234)] and rst.log == []
        assert space.dispatch_read(0xCF8, 4) == 0x80001234
        space.dispatch_write(0xCF9, 0x06, 1)
        assert rst.log == [("w", 0, 1, 0x06)]
    finally:
        space.destroy()


def test_ram_access_never_reads_past_its_window():
    ram = MemoryRegion.ram("r", 0x3000)
    ram.ram_block.view[0x1000:0x1002] = b"\x11\x22"
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion(0, MemoryRegion.alias("w", ram, 0, 0x1000))
    space = AddressSpace(root, "window")
    try:
        # The last byte of the window, then nothing: never the RAM behind it.
        assert space.dispatch_read(0xFFF, 2) == 0xFF00
    finally:
        space.destroy()


class CountingRegs:
    """A large register window that only counts the accesses it gets."""

    def __init__(self, valid_max: int = 4) -> None:
        self.sizes: list[int] = []
        self.ops = MemoryRegionOps(self.read, self.write, 1, valid_max, False, 1, valid_max)

    def read(self, offset: int, size: int) -> int:
        self.sizes.append(size)
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        self.sizes.append(size)


@pytest.mark.parametrize("start, length, valid_max, sizes", [
    (0x0, 16, 4, [4, 4, 4, 4]),
    (0x1, 10, 4, [1, 2, 4, 2, 1]),          # aligned accesses, never wider than the device takes
    (0x0, 16, 8, [8, 8]),
    (0x0, 7, 8, [4, 2, 1]),
    (0x0, 4, 1, [1, 1, 1, 1]),
])
def test_bulk_access_to_registers_goes_by_the_largest_valid_size(start: int, length: int, valid_max: int,
                                                                 sizes: list[int]) -> None:
    regs = CountingRegs(valid_max)
    root = MemoryRegion.container("root", 1 << 20)
    root.add_subregion(0x1000, MemoryRegion.io("dev", 0x100, regs.ops))
    space = AddressSpace(root, "bulk")
    try:
        assert space.write(0x1000 + start, bytes(length)) == MemTxResult.OK
        assert regs.sizes == sizes
        regs.sizes.clear()
        assert space.read_result(0x1000 + start, length) == (bytes(length), MemTxResult.OK)
        assert regs.sizes == sizes
        regs.sizes.clear()
        assert space.fill(0x1000 + start, 0, length) == MemTxResult.OK
        assert regs.sizes == sizes
    finally:
        space.destroy()


def test_bulk_access_to_registers_stops_at_the_limit() -> None:
    # A guest-chosen DMA length into a register window: at most MMIO_BULK_LIMIT
    # bytes reach the device, then the transfer fails as a refused access.
    regs = CountingRegs()
    ram = MemoryRegion.ram("ram", 0x1000)
    root = MemoryRegion.container("root", 1 << 32)
    root.add_subregion(0x10000000, MemoryRegion.io("window", 0x10000000, regs.ops))
    root.add_subregion(0x20000000, ram)
    space = AddressSpace(root, "bounded")
    try:
        assert space.fill(0x10000000, 0, 0x10001000) == MemTxResult.ERROR
        assert sum(regs.sizes) == MMIO_BULK_LIMIT and set(regs.sizes) == {4}
        regs.sizes.clear()
        assert space.write(0x1FFFF000, b"\x55" * 0x2000) == MemTxResult.OK    # under the limit: all done
        assert bytes(ram.ram_block.view[:0x1000]) == b"\x55" * 0x1000
        assert space.write(0x10000000, b"\x55" * (MMIO_BULK_LIMIT + 4)) == MemTxResult.ERROR
        assert sum(regs.sizes) == 0x1000 + MMIO_BULK_LIMIT
        regs.sizes.clear()
        data, res = space.read_result(0x10000000, MMIO_BULK_LIMIT * 2)
        assert res == MemTxResult.ERROR and len(data) == MMIO_BULK_LIMIT * 2
        assert sum(regs.sizes) == MMIO_BULK_LIMIT
    finally:
        space.destroy()


def test_fill_ram_and_skip_holes_in_bulk() -> None:
    ram = MemoryRegion.ram("ram", 0x300000)
    rom = MemoryRegion.rom("rom", 0x1000)
    root = MemoryRegion.container("root", 1 << 64)
    root.add_subregion(0, ram)
    root.add_subregion(0x400000, rom)
    space = AddressSpace(root, "fill")
    try:
        ram.ram_block.view[0x2FFFFF] = 0x11
        # Up to 4 GiB, as a fw_cfg DMA may ask: RAM is filled, the hole and ROM are skipped.
        assert space.fill(0x10, 0xA5, 0xFFFFFFFF) == MemTxResult.DECODE_ERROR
        assert ram.ram_block.view[0x0F] == 0 and ram.ram_block.view[0x10] == 0xA5
        assert bytes(ram.ram_block.view[0x2FFFF0:]) == b"\xa5" * 16
        assert bytes(rom.ram_block.view[:16]) == bytes(16)
    finally:
        space.destroy()


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_zero_fill_of_ram_neither_faults_in_nor_keeps_host_memory() -> None:
    # A fw_cfg DMA may zero up to 4 GiB of guest RAM in one request: page by
    # page that took ~30 s of page faults under the big lock (and 4 GiB of host memory).
    size = 256 << 20
    ram = MemoryRegion.ram("ram", size)
    root = MemoryRegion.container("root", 1 << 32)
    root.add_subregion(0, ram)
    space = AddressSpace(root, "zero")
    view = ram.ram_block.view
    try:
        view[0x10:0x3000] = b"\x77" * (0x3000 - 0x10)
        view[size - 0x1800:] = b"\x77" * 0x1800
        before = resident_bytes()
        assert space.fill(0x20, 0, size - 0x20 - 0x10) == MemTxResult.OK
        assert resident_bytes() - before < 16 << 20
        assert bytes(view[0x10:0x20]) == b"\x77" * 16 and not any(view[0x20:0x3000])
        assert not any(view[size - 0x1800:size - 0x10]) and bytes(view[size - 0x10:]) == b"\x77" * 16
        space.fill(0x1001, 0x42, 0x2000)                   # other bytes: written as they are
        assert bytes(view[0x1000:0x1002]) == b"\0\x42" and bytes(view[0x3000:0x3002]) == b"\x42\0"
    finally:
        space.destroy()


def test_views_without_listeners_render_when_looked_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a machine commits at every step: only spaces someone listens
    to re-render then; the others render on their next lookup."""
    import pemu.system.memory as memory

    renders: list[str] = []
    real_render = memory.render_flatview
    monkeypatch.setattr(memory, "render_flatview", lambda root: (renders.append(root.name), real_render(root))[1])
    quiet_root = MemoryRegion.container("quiet", 1 << 32)
    heard_root = MemoryRegion.container("heard", 1 << 32)
    quiet = AddressSpace(quiet_root, "quiet")
    heard = AddressSpace(heard_root, "heard")
    seen: list[int] = []

    class Listener:
        def flatview_changed(self, old: object, new: memory.FlatView) -> None:
            seen.append(len(new))

    heard.add_listener(Listener())
    try:
        for i in range(5):
            quiet_root.add_subregion(i * 0x1000, MemoryRegion.ram(f"q{i}", 0x1000))
            heard_root.add_subregion(i * 0x2000, MemoryRegion.ram(f"h{i}", 0x1000))
        assert renders.count("quiet") == 0
        assert seen == [0, 1, 2, 3, 4, 5]  # a listener hears every change at once
        assert quiet.flatview.lookup(0x4000) is not None
        assert quiet.flatview.lookup(0x4000).mr.name == "q4"
        assert renders.count("quiet") == 1
    finally:
        quiet.destroy()
        heard.destroy()
