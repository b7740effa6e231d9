"""qcow2 pieces without qemu-img or a guest: header checks, the L2 cache, refcount entries and allocation."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pemu.block.block import bdrv_open, probe_format
from pemu.block.block_int import CACHE_MODES, BlockOpenError
from pemu.block.qcow2 import Qcow2Driver, parse_header
from pemu.block.qcow2_cache import Qcow2Cache
from pemu.block.qcow2_create import qcow2_create
from pemu.block.qcow2_refcount import get_refcount_entry, set_refcount_entry


def header(**fields: int) -> bytes:
    """A v3 header (1 GiB, 64 KiB clusters) with some fields replaced, followed by an end extension."""
    values = dict(magic=0x514649FB, version=3, backing_file_offset=0, backing_file_size=0, cluster_bits=16,
                  size=1 << 30, crypt_method=0, l1_size=2, l1_table_offset=0x30000,
                  refcount_table_offset=0x10000, refcount_table_clusters=1, nb_snapshots=0, snapshots_offset=0,
                  incompatible_features=0, compatible_features=0, autoclear_features=0, refcount_order=4,
                  header_length=104)
    values.update(fields)
    raw = struct.pack(">IIQIIQIIQQIIQQQQII", *values.values())
    return raw + bytes(8)


GOOD = header()


@pytest.mark.parametrize(("image", "message"), [
    (b"", "Image is not in qcow2 format"),
    (b"QFI", "Image is not in qcow2 format"),
    (header(magic=0x514649FA), "Image is not in qcow2 format"),
    (header(version=1), "Unsupported qcow2 version 1"),
    (header(version=4), "Unsupported qcow2 version 4"),
    (header(cluster_bits=8), "Unsupported cluster size: 2^8"),
    (header(cluster_bits=22), "Unsupported cluster size: 2^22"),
    (header(header_length=100), "qcow2 header too short"),
    (header(cluster_bits=9, header_length=1024), "qcow2 header exceeds cluster size"),
    (header(backing_file_offset=0x10001), "Invalid backing file offset"),
    (header(incompatible_features=1 << 63), "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000"),
    (header(incompatible_features=(1 << 2) | (1 << 9)),
     "Unsupported qcow2 feature(s): external data file, Unknown incompatible feature: 200"),
    (header(refcount_order=7), "Reference count entry width too large; may not exceed 64 bits"),
    (header(crypt_method=1), "Use of AES-CBC encrypted qcow2 images is no longer supported in system emulators"),
    (header(crypt_method=2), "qcow2: LUKS-encrypted images are not supported by pemu"),
    (header(crypt_method=3), "Unsupported encryption method: 3"),
    (header(l1_size=0x400001), "Active L1 table too large"),
    (header(l1_size=1), "L1 table is too small"),
    (header(size=1 << 63), "Image is too big"),
    (header(l1_table_offset=0x30008), "Invalid L1 table offset"),
    (header(l1_table_offset=(1 << 63) - 8), "Invalid L1 table offset"),
    (header(refcount_table_clusters=0), "Image does not contain a reference count table"),
    (header(refcount_table_clusters=129), "Reference count table too large"),
    (header(refcount_table_offset=0x10200), "Invalid reference count table offset"),
    (header(nb_snapshots=65537), "Too many snapshots"),
    (header(nb_snapshots=1, snapshots_offset=0x123), "Invalid snapshot table offset"),
    (header(backing_file_offset=0x200, backing_file_size=1024), "Backing file name too long"),
])
def test_bad_headers(image: bytes, message: str) -> None:
    with pytest.raises(BlockOpenError) as info:
        parse_header(image)
    assert info.value.message == message


def test_good_headers_and_extensions() -> None:
    h = parse_header(GOOD)
    assert (h.version, h.cluster_size, h.size, h.refcount_order) == (3, 65536, 1 << 30, 4)
    v2 = header(version=2)[:72]
    assert parse_header(v2).refcount_order == 4 and parse_header(v2).header_length == 72
    name = b"base.raw"
    ext = struct.pack(">II", 0xE2792ACA, 3) + b"raw\0\0\0\0\0" + bytes(8)
    image = header(header_length=104, backing_file_offset=104 + len(ext), backing_file_size=len(name))[:104]
    h = parse_header(image + ext + name)
    assert (h.backing_file, h.backing_format) == ("base.raw", "raw")
    too_long = header(header_length=104)[:104] + struct.pack(">II", 0x12345678, 1 << 20)
    with pytest.raises(BlockOpenError, match="Header extension too large"):
        parse_header(too_long)


def test_probe() -> None:
    assert probe_format(GOOD) == "qcow2"
    assert probe_format(header(version=1)) == "qcow"
    assert probe_format(b"QED\0" + bytes(100)) == "qed"
    assert probe_format(bytes(512)) == "raw"
    assert probe_format(b"") == "raw"


def test_l2_cache_is_lru_and_bounded() -> None:
    loads: list[int] = []

    def load(offset: int) -> bytearray:
        loads.append(offset)
        return bytearray(offset.to_bytes(8, "big"))

    cache = Qcow2Cache(2, load)
    assert cache.get(0x10000)[:8] == bytearray((0x10000).to_bytes(8, "big"))
    cache.get(0x20000)
    cache.get(0x10000)  # 0x20000 is now the least recently used
    cache.get(0x30000)
    assert 0x20000 not in cache and 0x10000 in cache and len(cache) == 2
    cache.get(0x20000)
    assert loads == [0x10000, 0x20000, 0x30000, 0x20000]
    assert (cache.hits, cache.misses) == (1, 4)
    cache.put_new(0x40000, bytearray(8))
    assert len(cache) == 2 and 0x40000 in cache
    cache.discard(0x40000)
    assert 0x40000 not in cache
    with pytest.raises(ValueError):
        Qcow2Cache(0, load)


@pytest.mark.parametrize("order", range(7))
def test_refcount_entries_of_every_width(order: int) -> None:
    bits = 1 << order
    block = bytearray(64)
    entries = 64 * 8 // bits
    for index in range(entries):
        set_refcount_entry(block, index, order, (index * 7 + 1) % (1 << bits))
    for index in range(entries):
        assert get_refcount_entry(block, index, order) == (index * 7 + 1) % (1 << bits)
    if bits < 8:  # QEMU's order: entry 0 in the least significant bits
        fresh = bytearray(1)
        set_refcount_entry(fresh, 0, order, 1)
        assert fresh[0] == 1
    if bits >= 8:  # big-endian
        fresh = bytearray(bits // 8)
        set_refcount_entry(fresh, 0, order, 1)
        assert fresh[-1] == 1


def test_allocation_on_a_fresh_image(tmp_path: Path) -> None:
    image = tmp_path / "a.qcow2"
    qcow2_create(str(image), 64 << 20)  # clusters 0..3: header, reftable, refblock, L1
    bs = bdrv_open(str(image), "qcow2", False, CACHE_MODES["writeback"])
    try:
        assert isinstance(bs.drv, Qcow2Driver)
        refcounts = bs.drv.refcounts
        assert [refcounts.get(c) for c in range(5)] == [1, 1, 1, 1, 0]
        assert refcounts.alloc_clusters(2) == 4 << 16
        assert refcounts.alloc_clusters(1) == 6 << 16
        refcounts.update(4, -1)
        assert refcounts.alloc_clusters(1) == 4 << 16  # a freed cluster is found again
        assert refcounts.alloc_clusters(2) == 7 << 16
        with pytest.raises(OSError):
            refcounts.update(100, -1)  # freeing a free cluster is corruption
        assert bs.drv.corrupt
    finally:
        bs.close()


def test_a_write_allocates_data_then_l2_then_l1(tmp_path: Path) -> None:
    image = tmp_path / "w.qcow2"
    qcow2_create(str(image), 64 << 20)
    bs = bdrv_open(str(image), "qcow2", False, CACHE_MODES["writeback"])
    try:
        assert isinstance(bs.drv, Qcow2Driver)
        bs.pwrite(5 << 16, b"hello")
        assert bs.drv.l1[0] == (1 << 63) | (4 << 16)  # the L2 table, COPIED
        entry = bs.drv._l2_entry(5 << 16)
        assert entry == (1 << 63) | (5 << 16)
        assert bs.pread((5 << 16) - 2, 9) == b"\0\0hello\0\0"
        with pytest.raises(OSError):
            bs.pwrite(64 << 20, b"x")  # past the L1 table's reach
    finally:
        bs.close()
    with open(image, "rb") as f:
        f.seek(5 << 16)
        assert f.read(5) == b"hello"
