"""Guest RAM in the migration stream (pemu.migration.ram), without a board:
RAM blocks of a bare VirtualMachine, saved by a RAMState and loaded by a
RAMLoadState, in both layouts (page records, and mapped-ram's file areas
mapped privately), with a dirty log the tests drive."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pemu.migration import ram as ram_mod
from pemu.migration.qemu_file import MigrationStreamError, QEMUFileReader, QEMUFileWriter
from pemu.migration.ram import TARGET_PAGE_SIZE, RAMLoadError, RAMLoadState, RAMState
from pemu.system.memory import RAMBlock
from pemu.system.vm import VirtualMachine
from pemu.util.vm_context import current_vm, set_current_vm

PAGE = TARGET_PAGE_SIZE
# (idstr, size): a block whose size is not a multiple of the page size too.
LAYOUT = [("pc.ram", 8 << 20), ("pc.bios", 256 << 10), ("odd.rom", 3 * PAGE + 0x345)]


class FakeDirtyLog:
    """Stands for pemu.system.dirty_log: the test says which pages were written."""

    def __init__(self, vm: VirtualMachine, can_track: bool = True) -> None:
        self.vm = vm
        self.can_track = can_track
        self.dirty: dict[RAMBlock, set[int]] = {}
        self.started = self.stopped = 0

    def start(self) -> bool:
        self.started += 1
        return self.can_track

    def sync(self) -> dict[RAMBlock, bytearray]:
        out = {}
        for block, pages in self.dirty.items():
            bitmap = bytearray(-(-ram_mod.block_pages(block) // 8))
            for page in pages:
                bitmap[page // 8] |= 1 << (page % 8)
            out[block] = bitmap
        self.dirty = {}
        return out

    def stop(self) -> None:
        self.stopped += 1

    def write(self, block: RAMBlock, offset: int, data: bytes) -> None:
        """A guest write: the bytes, and their pages logged."""
        block.view[offset:offset + len(data)] = data
        for page in range(offset // PAGE, (offset + len(data) - 1) // PAGE + 1):
            self.dirty.setdefault(block, set()).add(page)


def make_vm(layout: list[tuple[str, int]] = LAYOUT) -> VirtualMachine:
    vm = VirtualMachine()
    previous = vm.activate()
    try:
        for idstr, size in layout:
            RAMBlock(idstr, size)
    finally:
        set_current_vm(previous)
    return vm


@pytest.fixture
def vms() -> Iterator[list[VirtualMachine]]:
    made: list[VirtualMachine] = []
    previous = current_vm()
    yield made
    for vm in made:
        vm.destroy()
    set_current_vm(previous)


@pytest.fixture
def dirty_log(monkeypatch: pytest.MonkeyPatch) -> list[FakeDirtyLog]:
    logs: list[FakeDirtyLog] = []

    def make(vm: VirtualMachine) -> FakeDirtyLog:
        logs.append(FakeDirtyLog(vm))
        return logs[-1]

    monkeypatch.setattr(ram_mod, "dirty_log_for", make)
    return logs


def fill_patterns(vm: VirtualMachine) -> None:
    """Data pages, zero pages between them, a page full of one byte, and
    the last byte of every block."""
    for n, block in enumerate(vm.memory.ram_blocks):
        for page in range(0, block.size // PAGE, 3):
            block.view[page * PAGE + 17:page * PAGE + 21] = bytes([n + 1, page & 0xFF, 0xA5, 0x5A])
        if block.size >= 2 * PAGE:
            block.view[PAGE:2 * PAGE] = b"\xff" * PAGE
        block.view[block.size - 1] = 0xC3 + n


def blocks_equal(a: VirtualMachine, b: VirtualMachine) -> bool:
    return all(x.idstr == y.idstr and x.view == y.view
               for x, y in zip(a.memory.ram_blocks, b.memory.ram_blocks, strict=True))


def save_stream(state: RAMState, iterations: list[int] | None = None) -> None:
    state.save_setup()
    for budget in iterations or []:
        state.save_pages(budget)
        state.end_part()
    state.sync_dirty_log()
    state.save_pages(None)
    state.end_part()


def load_stream(vm: VirtualMachine, data: bytes, parts: int = 1) -> None:
    loader = RAMLoadState(vm)
    f = QEMUFileReader(io.BytesIO(data))
    loader.load_setup(f, False, 0)
    for _ in range(parts):
        loader.load_pages(f)
    assert f.get_buffer_upto(1) == b"", "the loader left bytes of the stream unread"


def test_round_trip_with_patterns_zero_pages_and_last_bytes(vms: list[VirtualMachine],
                                                            dirty_log: list[FakeDirtyLog]) -> None:
    src, dst = make_vm(), make_vm()
    vms += [src, dst]
    fill_patterns(src)
    # The destination's RAM is not fresh (a kernel loaded at start-up): its zero pages must become zero.
    for block in dst.memory.ram_blocks:
        block.view[0:block.size] = b"\x77" * block.size
    out = io.BytesIO()
    state = RAMState(src, QEMUFileWriter(out))
    save_stream(state)
    state.f.flush()
    assert state.live and state.dirty_pages == 0
    assert state.zero_pages > 0 and state.normal_pages > 0
    total = sum(-(-b.size // PAGE) for b in src.memory.ram_blocks)
    assert state.zero_pages + state.normal_pages == total
    # zero pages cost no data: the stream is about the size of the data pages
    assert len(out.getvalue()) < (state.normal_pages + 64) * PAGE
    load_stream(dst, out.getvalue())
    assert blocks_equal(src, dst)


def test_zero_run_on_the_destination_does_not_touch_fresh_ram(vms: list[VirtualMachine],
                                                              dirty_log: list[FakeDirtyLog]) -> None:
    src, dst = make_vm([("pc.ram", 64 << 20)]), make_vm([("pc.ram", 64 << 20)])
    vms += [src, dst]
    src.memory.ram_blocks[0].view[5 * PAGE] = 1
    out = io.BytesIO()
    state = RAMState(src, QEMUFileWriter(out))
    save_stream(state)
    state.f.flush()
    load_stream(dst, out.getvalue())
    assert resident_kib(dst.memory.ram_blocks[0]) == PAGE // 1024  # only the data page
    assert blocks_equal(src, dst)


def test_live_iterations_send_what_the_guest_wrote_meanwhile(vms: list[VirtualMachine],
                                                             dirty_log: list[FakeDirtyLog]) -> None:
    src, dst = make_vm(), make_vm()
    vms += [src, dst]
    fill_patterns(src)
    out = io.BytesIO()
    state = RAMState(src, QEMUFileWriter(out))
    state.save_setup()
    log = dirty_log[0]
    ram = src.memory.ram_blocks[0]
    first = state.pending_bytes()
    assert first == sum(-(-b.size // PAGE) for b in src.memory.ram_blocks) * PAGE
    parts = 0
    rounds = 0
    while state.pending_bytes() > 0 and rounds < 100:
        sent = state.save_pages(1 << 20)
        state.end_part()
        parts += 1
        assert 0 < sent <= (1 << 20) + 64 * PAGE  # about max_bytes, a window at most beyond
        # the guest writes meanwhile: behind and ahead of the cursor, a page that becomes zero
        log.write(ram, rounds * 7 * PAGE + 100, b"round %d" % rounds)
        log.write(ram, ram.size - PAGE, bytes([rounds + 1]) * PAGE)
        if rounds == 3:
            log.write(ram, PAGE, bytes(PAGE))  # was all 0xff, sent already
        rounds += 1
        if rounds >= 10:
            break
    assert rounds == 10, "pages written meanwhile were not picked up"
    state.sync_dirty_log()
    state.save_pages(None)
    state.end_part()
    parts += 1
    state.f.flush()
    load_stream(dst, out.getvalue(), parts)
    assert blocks_equal(src, dst)
    assert dst.memory.ram_blocks[0].view[PAGE:2 * PAGE] == bytes(PAGE)


def test_no_dirty_tracking_means_not_live(vms: list[VirtualMachine], monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_vm()
    vms.append(src)
    logs: list[FakeDirtyLog] = []
    monkeypatch.setattr(ram_mod, "dirty_log_for", lambda vm: logs.append(FakeDirtyLog(vm, False)) or logs[-1])
    state = RAMState(src, QEMUFileWriter(io.BytesIO()))
    state.save_setup()
    assert not state.live
    state.cleanup()
    assert logs[0].stopped == 1


def saved_setup(src: VirtualMachine) -> bytes:
    out = io.BytesIO()
    state = RAMState(src, QEMUFileWriter(out))
    state.save_setup()
    state.cleanup()
    state.f.flush()
    return out.getvalue()


@pytest.mark.parametrize("dst_layout, message", [
    ([("pc.ram", 16 << 20), ("pc.bios", 256 << 10), ("odd.rom", 3 * PAGE + 0x345)],
     "Length mismatch: pc.ram: 0x800000 in != 0x1000000"),
    ([("pc.ram", 8 << 20), ("pc.bios", 256 << 10)], 'Unknown ramblock "odd.rom", cannot accept migration'),
    (LAYOUT + [("extra.ram", PAGE)], 'RAM block "extra.ram" is missing from the stream'),
])
def test_block_list_or_sizes_that_differ_are_refused(vms: list[VirtualMachine], dirty_log: list[FakeDirtyLog],
                                                     dst_layout: list[tuple[str, int]], message: str) -> None:
    src, dst = make_vm(), make_vm(dst_layout)
    vms += [src, dst]
    with pytest.raises(RAMLoadError) as e:
        RAMLoadState(dst).load_setup(QEMUFileReader(io.BytesIO(saved_setup(src))), False, 0)
    assert str(e.value) == message


def page_record(offset: int, flags: int, idstr: str, count: int, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    f = QEMUFileWriter(out)
    f.put_be64(offset | flags)
    f.put_counted_string(idstr)
    f.put_be32(count)
    f.put_buffer(data)
    f.flush()
    return out.getvalue()


@pytest.mark.parametrize("record, message", [
    (page_record(8 << 20, ram_mod.RAM_SAVE_FLAG_PAGE, "pc.ram", 1, bytes(PAGE)), "RAM record out of range"),
    (page_record((8 << 20) - PAGE, ram_mod.RAM_SAVE_FLAG_ZERO, "pc.ram", 2), "RAM record out of range"),
    (page_record(0, ram_mod.RAM_SAVE_FLAG_PAGE, "pc.ram", 0), "RAM record out of range"),
    (page_record(0, ram_mod.RAM_SAVE_FLAG_PAGE, "pc.ram", 100000), "RAM record out of range"),
    (page_record(0, ram_mod.RAM_SAVE_FLAG_PAGE, "nowhere", 1, bytes(PAGE)), 'Unknown ramblock "nowhere"'),
    (page_record(0, 0x40, "pc.ram", 1), "Unknown RAM record flags 0x40"),
    (page_record(0, ram_mod.RAM_SAVE_FLAG_PAGE | ram_mod.RAM_SAVE_FLAG_CONTINUE, "", 1),
     "continues a block that was never named"),
])
def test_bad_page_records_are_refused(vms: list[VirtualMachine], dirty_log: list[FakeDirtyLog],
                                      record: bytes, message: str) -> None:
    src, dst = make_vm(), make_vm()
    vms += [src, dst]
    loader = RAMLoadState(dst)
    f = QEMUFileReader(io.BytesIO(saved_setup(src) + record))
    loader.load_setup(f, False, 0)
    with pytest.raises(RAMLoadError, match=message):
        loader.load_pages(f)


def test_a_cut_page_record_is_a_truncated_stream(vms: list[VirtualMachine], dirty_log: list[FakeDirtyLog]) -> None:
    src, dst = make_vm(), make_vm()
    vms += [src, dst]
    record = page_record(0, ram_mod.RAM_SAVE_FLAG_PAGE, "pc.ram", 2, bytes(2 * PAGE))
    loader = RAMLoadState(dst)
    f = QEMUFileReader(io.BytesIO(saved_setup(src) + record[:-1]))
    loader.load_setup(f, False, 0)
    with pytest.raises(MigrationStreamError, match="truncated"):
        loader.load_pages(f)


# --- mapped-ram --------------------------------------------------------------------------


def resident_kib(block: RAMBlock) -> int:
    """How much of the block's memory is mapped in (its pages present in
    /proc/self/pagemap: bit 63 of each page's entry), in KiB."""
    pages = len(block.mmap) // PAGE
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(block.host_addr // PAGE * 8)
        entries = pagemap.read(pages * 8)
    present = sum(1 for i in range(7, len(entries), 8) if entries[i] & 0x80)
    return present * PAGE // 1024


def save_mapped(src: VirtualMachine, path: Path, header: bytes = b"HEADER", live_writes: bool = False) -> RAMState:
    """What SaveVMState does with mapped_ram: a header, the layout, the pages
    in place, the stream going on after the RAM area."""
    fh = open(path, "wb")  # noqa: SIM115 (kept open across the steps, closed below)
    f = QEMUFileWriter(fh)
    f.put_buffer(header)
    state = RAMState(src, f, mapped_ram=True)
    f.flush()
    state.plan_mapped_ram(fh.tell() + state.setup_payload_size())
    state.save_setup()
    state.open_mapped_ram_file()
    if live_writes:
        state.save_pages(2 << 20)
    return state


def finish_mapped(state: RAMState) -> None:
    state.sync_dirty_log()
    state.save_pages(None)
    state.seek_to_tail()
    state.f.put_buffer(b"TAIL")
    state.f.flush()
    state.cleanup()
    sink = state.f.sink
    assert isinstance(sink, io.BufferedWriter)
    sink.close()


def load_mapped(dst: VirtualMachine, path: Path, header: bytes = b"HEADER") -> tuple[RAMLoadState, io.BufferedReader]:
    fh = open(path, "rb")  # noqa: SIM115 (the caller closes it)
    f = QEMUFileReader(fh)
    assert f.get_buffer(len(header)) == header
    loader = RAMLoadState(dst)
    loader.load_setup(f, True, f.bytes_read)
    loader.map_file(fh.fileno())
    assert loader.layout is not None
    fh.seek(loader.layout.tail_offset)
    assert f.get_buffer(4) == b"TAIL"
    return loader, fh


def test_mapped_ram_round_trip_sparse_and_private(vms: list[VirtualMachine], dirty_log: list[FakeDirtyLog],
                                                  tmp_path: Path) -> None:
    src, dst = make_vm(), make_vm()
    vms += [src, dst]
    fill_patterns(src)
    for block in dst.memory.ram_blocks:  # replaced by the mapping
        block.view[0:block.size] = b"\x77" * block.size
    path = tmp_path / "snap"
    state = save_mapped(src, path)
    finish_mapped(state)
    size = os.stat(path).st_size
    assert state.layout is not None and size == state.layout.tail_offset + 4
    for idstr, offset in state.layout.offsets.items():
        assert offset % PAGE == 0, idstr
    assert os.stat(path).st_blocks * 512 < (state.normal_pages + 64) * PAGE, "zero pages were written"
    before = path.read_bytes()
    _, fh = load_mapped(dst, path)
    assert blocks_equal(src, dst)
    # The destination writes (the guest runs on): its memory changes, the file does not.
    ram = dst.memory.ram_blocks[0]
    ram.view[0:PAGE] = b"\x11" * PAGE
    ram.view[ram.size - 1] = 0
    assert path.read_bytes() == before
    # Zeroing whole pages (a guest's DMA fill) gives zeros, not the file's pages back.
    ram.fill(0, 0, 2 * PAGE)
    assert ram.view[0:2 * PAGE] == bytes(2 * PAGE)
    assert ram.view[3 * PAGE + 17] == 1
    fh.close()


def test_mapped_ram_restore_reads_no_page_until_touched(vms: list[VirtualMachine], dirty_log: list[FakeDirtyLog],
                                                        tmp_path: Path) -> None:
    layout = [("pc.ram", 64 << 20)]
    src, dst = make_vm(layout), make_vm(layout)
    vms += [src, dst]
    src_ram = src.memory.ram_blocks[0]
    pattern = os.urandom(1 << 20)
    for at in range(0, src_ram.size, 1 << 20):
        src_ram.view[at:at + (1 << 20)] = pattern
    path = tmp_path / "snap"
    finish_mapped(save_mapped(src, path))
    ram = dst.memory.ram_blocks[0]
    ram.view[0:ram.size] = b"\x01" * ram.size  # resident before the load
    assert resident_kib(ram) >= 60 << 10
    _, fh = load_mapped(dst, path)
    assert resident_kib(ram) == 0, "the load read guest RAM"
    assert ram.view[5 * PAGE:6 * PAGE] == pattern[5 * PAGE:6 * PAGE]
    assert 0 < resident_kib(ram) <= 1024  # the page touched (and the kernel's read-ahead around it)
    fh.close()


def test_mapped_ram_live_pages_rewritten_in_place(vms: list[VirtualMachine], dirty_log: list[FakeDirtyLog],
                                                  tmp_path: Path) -> None:
    src, dst = make_vm(), make_vm()
    vms += [src, dst]
    fill_patterns(src)
    path = tmp_path / "snap"
    state = save_mapped(src, path, live_writes=True)
    log = dirty_log[0]
    ram = src.memory.ram_blocks[0]
    log.write(ram, 0, b"early page, written again")          # behind the cursor
    log.write(ram, PAGE, bytes(PAGE))                         # data that became zero: no hole there now
    log.write(ram, ram.size - 10, b"last bytes")              # ahead of the cursor
    state.save_pages(1 << 20)
    log.write(ram, 3 * PAGE, b"late")
    finish_mapped(state)
    size_before = os.stat(path).st_size
    _, fh = load_mapped(dst, path)
    assert blocks_equal(src, dst)
    assert os.stat(path).st_size == size_before
    fh.close()


def test_mapped_ram_file_shorter_than_its_ram_area_is_refused(vms: list[VirtualMachine],
                                                              dirty_log: list[FakeDirtyLog],
                                                              tmp_path: Path) -> None:
    src, dst = make_vm(), make_vm()
    vms += [src, dst]
    path = tmp_path / "snap"
    state = save_mapped(src, path)
    finish_mapped(state)
    assert state.layout is not None
    os.truncate(path, state.layout.tail_offset - PAGE)
    with pytest.raises(RAMLoadError, match="the file ends at .* before its RAM area"):
        load_mapped(dst, path)
