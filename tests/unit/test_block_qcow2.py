"""The block layer against real image files made and checked by qemu-img (Debian qemu-utils)."""

from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

from pemu.block.block import bdrv_commit, bdrv_open
from pemu.block.block_backend import BlockBackend
from pemu.block.block_int import CACHE_MODES, BlockDriverState, BlockOpenError
from pemu.block.file_posix import RAW_LOCK_PERM_BASE, _lock_byte_conflicts
from pemu.block.qcow2 import QCOW_OFLAG_COMPRESSED, Qcow2Driver
from pemu.block.qcow2_create import qcow2_create
from pemu.util.main_loop import MainLoop

QEMU_IMG = shutil.which("qemu-img")
needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img (Debian package qemu-utils) is not installed")
pytestmark = needs_qemu_img

SIZE = 8 << 20
WB = CACHE_MODES["writeback"]


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU_IMG is not None
    return subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, timeout=60)


def make_raw(path: Path, seed: int = 1) -> bytes:
    data = _raw_content(seed)
    path.write_bytes(data)
    return data


@functools.lru_cache(maxsize=2)
def _raw_content(seed: int) -> bytes:
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(SIZE))
    data[1 << 20 : 3 << 20] = bytes(2 << 20)  # a hole, so some clusters are unallocated/zero
    words = [b"pemu ", b"qcow2 ", b"cluster ", b"refcount ", b"\n"]
    text = b"".join(rng.choice(words) for _ in range(1 << 20))
    data[3 << 20 :] = (text * 2)[: SIZE - (3 << 20)]  # compressible, so `convert -c` compresses it
    return bytes(data)


def open_image(path: Path, fmt: str | None = "qcow2", read_only: bool = False, **kw: object) -> BlockDriverState:
    return bdrv_open(str(path), fmt, read_only, kw.pop("cache", WB), **kw)  # type: ignore[arg-type]


IMAGE_KINDS = {
    "plain-v3": ["convert", "-O", "qcow2"],
    "plain-v2": ["convert", "-O", "qcow2", "-o", "compat=0.10"],
    "compressed": ["convert", "-c", "-O", "qcow2"],
    "small-clusters": ["convert", "-O", "qcow2", "-o", "cluster_size=512,refcount_bits=64"],
    "big-clusters-1bit": ["convert", "-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=1"],
}


def build(kind: str, tmp_path: Path) -> tuple[Path, bytes]:
    raw = tmp_path / "base.raw"
    data = make_raw(raw)
    image = tmp_path / f"{kind}.qcow2"
    if kind == "backing":
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(raw), "-F", "raw", str(image)).check_returncode()
    else:
        qemu_img(*IMAGE_KINDS[kind], str(raw), str(image)).check_returncode()
    return image, data


@pytest.mark.parametrize("kind", [*IMAGE_KINDS, "backing"])
def test_qemu_img_images_read_like_the_raw_original(kind: str, tmp_path: Path) -> None:
    image, data = build(kind, tmp_path)
    bs = open_image(image, None, read_only=True)  # probed as qcow2
    try:
        assert bs.format_name == "qcow2"
        assert bs.getlength() == SIZE
        assert bs.pread(0, SIZE) == data
        # unaligned reads across cluster boundaries
        for offset, n in ((511, 1027), (65535, 2), (SIZE - 5, 5), ((1 << 20) - 7, 100)):
            assert bs.pread(offset, n) == data[offset : offset + n]
    finally:
        bs.close()


def random_writes(targets: list[BlockDriverState], seed: int, count: int = 200) -> None:
    rng = random.Random(seed)
    for _ in range(count):
        offset = rng.randrange(0, SIZE)
        n = min(rng.choice((1, 512, 4096, 65536, 70000, 200000)), SIZE - offset)
        chunk = rng.randbytes(n)
        for bs in targets:
            bs.pwrite(offset, chunk)


@pytest.mark.parametrize("kind", [*IMAGE_KINDS, "backing", "empty"])
def test_written_images_pass_check_and_compare_with_raw(kind: str, tmp_path: Path) -> None:
    if kind == "empty":
        image = tmp_path / "empty.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(image), str(SIZE)).check_returncode()
        data = bytes(SIZE)
    else:
        image, data = build(kind, tmp_path)
    reference = tmp_path / "reference.raw"
    reference.write_bytes(data)
    bs = open_image(image)
    ref = open_image(reference, "raw")
    try:
        random_writes([bs, ref], seed=zlib.crc32(kind.encode()))
        bs.flush()
        assert bs.pread(0, SIZE) == ref.pread(0, SIZE)
    finally:
        bs.close()
        ref.close()
    check = qemu_img("check", str(image))
    assert check.returncode == 0, check.stdout + check.stderr
    compare = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(image), str(reference))
    assert compare.returncode == 0, compare.stdout + compare.stderr
    if kind == "backing":  # copy-on-write left the backing file alone
        assert (tmp_path / "base.raw").read_bytes() == data


def compressed_clusters(bs: BlockDriverState) -> int:
    assert isinstance(bs.drv, Qcow2Driver)
    return sum(1 for offset in range(0, SIZE, 65536) if bs.drv._l2_entry(offset) & QCOW_OFLAG_COMPRESSED)


def test_overwriting_compressed_clusters_frees_them(tmp_path: Path) -> None:
    image, data = build("compressed", tmp_path)
    bs = open_image(image)
    try:
        assert compressed_clusters(bs) >= 70  # the compressible 5 MiB
        for cluster in range(0, SIZE, 65536):  # rewrite one byte in every cluster
            bs.pwrite(cluster + 3, b"\xa5")
    finally:
        bs.close()
    check = qemu_img("check", str(image))
    assert check.returncode == 0, check.stdout
    bs = open_image(image, read_only=True)
    try:
        assert compressed_clusters(bs) == 0
        expected = bytearray(data)
        for cluster in range(0, SIZE, 65536):
            expected[cluster + 3] = 0xA5
        assert bs.pread(0, SIZE) == expected
    finally:
        bs.close()


def test_l2_cache_of_one_table_still_reads_and_writes_right(tmp_path: Path) -> None:
    image, data = build("small-clusters", tmp_path)  # 512-byte clusters: an L2 table per 32 KiB
    bs = open_image(image)
    assert isinstance(bs.drv, Qcow2Driver)
    drv = bs.drv
    drv.l2_cache.capacity = 1
    try:
        rng = random.Random(3)
        for _ in range(50):
            offset = rng.randrange(0, SIZE - 70000)
            assert bs.pread(offset, 70000) == data[offset : offset + 70000]
        assert len(drv.l2_cache) == 1
        assert drv.l2_cache.misses > 50
        bs.pwrite(100_000, b"x" * 100_000)
    finally:
        bs.close()
    assert qemu_img("check", str(image)).returncode == 0


def test_new_refcount_blocks_are_allocated_and_accounted(tmp_path: Path) -> None:
    # 512-byte clusters and 64-bit refcounts: one refcount block covers 64 clusters (32 KiB).
    image = tmp_path / "grow.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", str(image), "1M").check_returncode()
    bs = open_image(image)
    try:
        assert isinstance(bs.drv, Qcow2Driver)
        blocks_before = sum(1 for entry in bs.drv.refcounts.table if entry)
        bs.pwrite(0, random.Random(9).randbytes(1 << 20))
        blocks_after = sum(1 for entry in bs.drv.refcounts.table if entry)
        assert blocks_after > blocks_before + 10
    finally:
        bs.close()
    check = qemu_img("check", str(image))
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_refcount_table_grows_when_the_image_outgrows_it(tmp_path: Path) -> None:
    # 512-byte clusters, 64-bit refcounts: a 64-entry table cluster covers 2 MiB of file.
    image = tmp_path / "grow.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", str(image), "8M").check_returncode()
    data = random.Random(11).randbytes(SIZE)
    bs = open_image(image)
    try:
        assert isinstance(bs.drv, Qcow2Driver)
        old_table = bs.drv.refcounts.table_offset
        for offset in range(0, SIZE, 1 << 20):
            bs.pwrite(offset, data[offset : offset + (1 << 20)])
        assert bs.drv.refcounts.table_offset != old_table
        assert bs.pread(0, SIZE) == data
    finally:
        bs.close()
    check = qemu_img("check", str(image))
    assert check.returncode == 0, check.stdout + check.stderr
    reference = tmp_path / "ref.raw"
    reference.write_bytes(data)
    assert qemu_img("compare", "-f", "qcow2", "-F", "raw", str(image), str(reference)).returncode == 0


def test_freed_clusters_are_reused(tmp_path: Path) -> None:
    image, _ = build("compressed", tmp_path)
    bs = open_image(image)
    try:
        assert isinstance(bs.drv, Qcow2Driver)
        refcounts = bs.drv.refcounts
        offset = refcounts.alloc_clusters(1)
        assert refcounts.get(offset >> 16) == 1
        refcounts.update(offset >> 16, -1)
        assert refcounts.alloc_clusters(1) == offset
        refcounts.update(offset >> 16, -1)
    finally:
        bs.close()
    assert qemu_img("check", str(image)).returncode == 0


# -- bad images ------------------------------------------------------------------------------


def _image_with(tmp_path: Path, patch: dict[int, bytes], truncate: int | None = None) -> Path:
    image = tmp_path / "bad.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "1M").check_returncode()
    with open(image, "r+b") as f:
        for offset, value in patch.items():
            f.seek(offset)
            f.write(value)
        if truncate is not None:
            f.truncate(truncate)
    return image


@pytest.mark.parametrize(("patch", "truncate", "message"), [
    ({}, 50, "qcow2 header too short"),
    ({}, 6, "Unsupported qcow2 version 0"),
    ({}, 3, "Image is not in qcow2 format"),
    ({4: struct.pack(">I", 4)}, None, "Unsupported qcow2 version 4"),
    ({20: struct.pack(">I", 22)}, None, "Unsupported cluster size: 2^22"),
    ({20: struct.pack(">I", 8)}, None, "Unsupported cluster size: 2^8"),
    ({72: struct.pack(">Q", 1 << 40)}, None, "Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000"),
    ({72: struct.pack(">Q", 1 << 4)}, None, "Unsupported qcow2 feature(s): extended L2 entries"),
    ({72: struct.pack(">Q", 2)}, None, "qcow2: Image is corrupt; cannot be opened read/write"),
    ({32: struct.pack(">I", 1)}, None, "Use of AES-CBC encrypted qcow2 images is no longer supported in system emulators"),
    ({32: struct.pack(">I", 7)}, None, "Unsupported encryption method: 7"),
    ({36: struct.pack(">I", 0x1000000)}, None, "Active L1 table too large"),
    ({36: struct.pack(">I", 0)}, None, "L1 table is too small"),
    ({40: struct.pack(">Q", 12345)}, None, "Invalid L1 table offset"),
    ({56: struct.pack(">I", 0x10000)}, None, "Reference count table too large"),
    ({48: struct.pack(">Q", 4096)}, None, "Invalid reference count table offset"),
    ({96: struct.pack(">I", 7)}, None, "Reference count entry width too large; may not exceed 64 bits"),
    ({100: struct.pack(">I", 50)}, None, "qcow2 header too short"),
    ({8: struct.pack(">Q", 1 << 20)}, None, "Invalid backing file offset"),
    ({60: struct.pack(">I", 70000)}, None, "Too many snapshots"),
])
def test_bad_headers_are_refused_with_qemus_message(tmp_path: Path, patch: dict[int, bytes],
                                                    truncate: int | None, message: str) -> None:
    image = _image_with(tmp_path, patch, truncate)
    with pytest.raises(BlockOpenError) as info:
        open_image(image, "qcow2").close()
    assert info.value.message == message


def test_a_huge_l1_size_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    image = _image_with(tmp_path, {24: struct.pack(">Q", 1 << 61), 36: struct.pack(">I", 0x7FFFFFFF)})
    with pytest.raises(BlockOpenError, match="Active L1 table too large"):
        open_image(image, "qcow2")


def test_backing_file_loop_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(a), "1M").check_returncode()
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(a), "-F", "qcow2", str(b)).check_returncode()
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(b), "-F", "qcow2", str(a)).check_returncode()
    with pytest.raises(BlockOpenError, match="^Could not open backing file: the backing chain of .* loops back"):
        open_image(b, "qcow2")


def test_missing_backing_file(tmp_path: Path) -> None:
    image = tmp_path / "o.qcow2"
    qemu_img("create", "-q", "-u", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", str(image), "1M").check_returncode()
    with pytest.raises(BlockOpenError) as info:
        open_image(image, "qcow2")
    assert info.value.message == f"Could not open backing file: Could not open '{tmp_path}/gone.raw': No such file or directory"


def test_bad_l2_offset_marks_the_image_corrupt_and_fails_with_eio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, _ = build("plain-v3", tmp_path)
    bs = open_image(image)
    assert isinstance(bs.drv, Qcow2Driver)
    l1_offset = bs.drv.header.l1_table_offset
    bs.close()
    with open(image, "r+b") as f:  # an L2 table offset that is not cluster aligned
        f.seek(l1_offset)
        f.write(struct.pack(">Q", (1 << 63) | 0x10200))
    bs = open_image(image)
    try:
        with pytest.raises(OSError) as info:
            bs.pread(0, 512)
        assert info.value.errno == errno.EIO
        with pytest.raises(OSError):  # and every later request
            bs.pread(SIZE - 512, 512)
    finally:
        bs.close()
    assert "qcow2: Marking image as corrupt: L2 table offset 0x10200 unaligned" in capsys.readouterr().err
    with pytest.raises(BlockOpenError, match="corrupt"):
        open_image(image)
    assert "corrupt: true" in qemu_img("info", str(image)).stdout


# -- the backend: bounds, async completion, cache modes ---------------------------------------


def test_backend_checks_every_request_against_the_medium(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    make_raw(raw)
    blk = BlockBackend(open_image(raw, "raw"), "d", schedule_completion=lambda cb: cb())
    try:
        buf = bytearray(512)
        assert blk.pread(SIZE - 512, buf) == 0
        assert blk.pread(SIZE - 511, buf) == -errno.EIO
        assert blk.pread(-1, buf) == -errno.EIO
        assert blk.pwrite(SIZE, b"x") == -errno.EIO
        assert blk.pwrite(1 << 62, b"x") == -errno.EIO
        assert os.path.getsize(raw) == SIZE
        assert blk.stats.invalid_rd_operations == 2 and blk.stats.invalid_wr_operations == 2
    finally:
        blk.close()
    ro = BlockBackend(open_image(raw, "raw", read_only=True), "r", schedule_completion=lambda cb: cb())
    try:
        assert ro.pwrite(0, b"x") == -errno.EPERM
    finally:
        ro.close()


def test_aio_runs_off_thread_and_completes_on_the_main_loop(tmp_path: Path) -> None:
    image, data = build("plain-v3", tmp_path)
    loop = MainLoop()
    blk = BlockBackend(open_image(image), "d", schedule_completion=loop.bh_schedule)
    done: list[tuple[str, int, str]] = []
    worker_threads: set[str] = set()
    real_pread = blk.root.pread  # type: ignore[union-attr]

    def spy(offset: int, n: int) -> bytes:
        worker_threads.add(threading.current_thread().name)
        return real_pread(offset, n)

    blk.root.pread = spy  # type: ignore[union-attr,method-assign]
    buf = bytearray(65536 * 3)
    blk.aio_pwritev(4096, b"\x5a" * 100, lambda ret: done.append(("w", ret, threading.current_thread().name)))
    blk.aio_preadv(0, buf, lambda ret: done.append(("r", ret, threading.current_thread().name)))
    blk.aio_flush(lambda ret: done.append(("f", ret, threading.current_thread().name)))
    blk.aio_preadv(SIZE, bytearray(1), lambda ret: done.append(("bad", ret, threading.current_thread().name)))
    while len(done) < 4:
        loop.run_once(max_wait_s=5)
    blk.close()
    me = threading.current_thread().name
    assert done == [("w", 0, me), ("r", 0, me), ("f", 0, me), ("bad", -errno.EIO, me)]
    assert worker_threads and me not in worker_threads
    expected = bytearray(data[: len(buf)])
    expected[4096:4196] = b"\x5a" * 100
    assert buf == expected


def test_writethrough_flushes_after_each_write_and_unsafe_never(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "d.raw"
    make_raw(raw)
    syncs: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd)))
    for mode, writes_sync, flush_syncs in (("writethrough", 2, 1), ("writeback", 0, 1), ("unsafe", 0, 0),
                                           ("directsync", 2, 1), ("none", 0, 1)):
        cache = CACHE_MODES[mode]
        blk = BlockBackend(open_image(raw, "raw", cache=cache), mode, writeback=cache.writeback,
                           schedule_completion=lambda cb: cb())
        syncs.clear()
        assert blk.pwrite(10, b"abc") == 0 and blk.pwrite(70000, b"def") == 0
        assert len(syncs) == writes_sync, mode
        syncs.clear()
        assert blk.flush() == 0
        assert len(syncs) == flush_syncs, mode
        blk.close()
    data = raw.read_bytes()
    assert data[10:13] == b"abc" and data[70000:70003] == b"def"


def test_cache_none_opens_with_o_direct_and_does_aligned_io(tmp_path: Path) -> None:
    image, data = build("plain-v3", tmp_path)
    bs = open_image(image, cache=CACHE_MODES["none"])
    try:
        assert bs.file is not None and bs.file.drv.direct  # type: ignore[union-attr]
        fd = bs.file.drv.fd  # type: ignore[union-attr]
        flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        assert flags & os.O_DIRECT
        assert bs.pread(12345, 99999) == data[12345 : 12345 + 99999]
        bs.pwrite(777, b"q" * 5000)
    finally:
        bs.close()
    assert qemu_img("check", str(image)).returncode == 0


def test_probed_raw_refuses_to_become_a_qcow2_but_explicit_raw_may(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    make_raw(raw)
    header = (tmp_path / "h").with_suffix(".qcow2")
    qemu_img("create", "-q", "-f", "qcow2", str(header), "1M").check_returncode()
    magic = header.read_bytes()[:512]
    probed = open_image(raw, None)
    try:
        assert probed.probed and probed.format_name == "raw"
        with pytest.raises(OSError) as info:
            probed.pwrite(0, magic)
        assert info.value.errno == errno.EPERM
        probed.pwrite(0, b"\0" * 512)  # harmless block-0 writes still work
    finally:
        probed.close()
    explicit = open_image(raw, "raw")
    try:
        explicit.pwrite(0, magic)
    finally:
        explicit.close()


# -- locking ------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_qemus_message(tmp_path: Path) -> None:
    image, _ = build("plain-v3", tmp_path)
    first = open_image(image)
    try:
        with pytest.raises(BlockOpenError) as info:
            open_image(image)
        assert info.value.message == 'Failed to get "write" lock'
        assert info.value.hint == f"Is another process using the image [{image}]?"
        with pytest.raises(BlockOpenError, match='Failed to get shared "write" lock'):
            open_image(image, read_only=True)
        # qemu-img honours pemu's locks, and -U (force share) ignores them
        result = qemu_img("info", str(image))
        assert result.returncode == 1 and 'Failed to get shared "write" lock' in result.stderr
        assert qemu_img("info", "-U", str(image)).returncode == 0
        open_image(image, locking=False).close()  # file.locking=off
    finally:
        first.close()
    open_image(image).close()  # closing released the locks


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-io (Debian package qemu-utils) is not installed")
def test_pemu_is_refused_while_qemu_holds_the_image(tmp_path: Path) -> None:
    image, _ = build("plain-v3", tmp_path)
    qemu_io = subprocess.Popen(["qemu-io", "-c", "sleep 20000", str(image)])  # QEMU's block layer, read-write
    try:
        # Wait until qemu-io holds the "write" permission byte, looking without locking
        # (a probe that took locks itself could make qemu-io's own open fail).
        probe = os.open(image, os.O_RDONLY)
        try:
            deadline = time.monotonic() + 30
            while not _lock_byte_conflicts(probe, RAW_LOCK_PERM_BASE + 1):
                assert time.monotonic() < deadline and qemu_io.poll() is None
                time.sleep(0.05)
        finally:
            os.close(probe)
        with pytest.raises(BlockOpenError, match='^Failed to get "write" lock$'):
            open_image(image)
        with pytest.raises(BlockOpenError, match='^Failed to get shared "write" lock$'):
            open_image(image, read_only=True)
    finally:
        qemu_io.kill()
        qemu_io.wait()
    open_image(image).close()


def test_readers_share_and_a_qemu_img_writer_is_refused(tmp_path: Path) -> None:
    image, _ = build("plain-v3", tmp_path)
    a = open_image(image, read_only=True)
    b = open_image(image, read_only=True)
    try:
        result = qemu_img("resize", str(image), "+1M")
        assert result.returncode == 1 and "lock" in result.stderr
    finally:
        a.close()
        b.close()


# -- snapshot and commit --------------------------------------------------------------------------


def test_snapshot_leaves_the_image_untouched_and_commit_writes_it(tmp_path: Path) -> None:
    for fmt in ("raw", "qcow2"):
        image = tmp_path / f"s.{fmt}"
        if fmt == "raw":
            data = make_raw(image)
        else:
            qemu_img("convert", "-O", "qcow2", str(tmp_path / "s.raw"), str(image)).check_returncode()
        before = image.read_bytes()
        bs = open_image(image, fmt, snapshot=True)
        try:
            assert bs.temporary and bs.backing is not None and bs.backing.read_only
            assert bs.filename.startswith("/var/tmp/vl.") and not os.path.exists(bs.filename)  # deleted once open
            bs.pwrite(1000, b"snap" * 1000)
            assert bs.pread(1000, 4) == b"snap"
            assert bs.pread(SIZE - 10, 10) == data[-10:]
        finally:
            bs.close()
        assert image.read_bytes() == before
    image = tmp_path / "s.raw"
    bs = open_image(image, "raw", snapshot=True)
    try:
        bs.pwrite(70000, b"kept" * 100)
        bdrv_commit(bs)
        assert bs.pread(70000, 4) == b"kept"
        assert bs.backing is not None and bs.backing.read_only
    finally:
        bs.close()
    assert image.read_bytes()[70000:70400] == b"kept" * 100


def test_pemu_created_overlay_passes_qemu_img_check(tmp_path: Path) -> None:
    raw = tmp_path / "b.raw"
    data = make_raw(raw)
    overlay = tmp_path / "o.qcow2"
    qcow2_create(str(overlay), SIZE, str(raw), "raw")
    bs = open_image(overlay)
    try:
        assert bs.pread(0, SIZE) == data
        random_writes([bs], 4, 50)
    finally:
        bs.close()
    assert qemu_img("check", str(overlay)).returncode == 0


def test_data_survives_sigkill_after_flush(tmp_path: Path) -> None:
    image = tmp_path / "k.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "4M").check_returncode()
    script = f"""
import os, sys, time
from pemu.block.block import bdrv_open
from pemu.block.block_backend import BlockBackend
from pemu.block.block_int import CACHE_MODES
blk = BlockBackend(bdrv_open({str(image)!r}, "qcow2", False, CACHE_MODES["writeback"]), "k",
                   schedule_completion=lambda cb: cb())
assert blk.pwrite(65536 * 3 + 5, b"flushed!" * 512) == 0
assert blk.flush() == 0
print("flushed", flush=True)
time.sleep(60)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(["python3", "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "flushed\n"
    finally:
        proc.kill()
        proc.wait()
    bs = open_image(image, read_only=True)
    try:
        assert bs.pread(65536 * 3 + 5, 4096) == b"flushed!" * 512
    finally:
        bs.close()
    assert qemu_img("check", str(image)).returncode == 0


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-io (Debian package qemu-utils) is not installed")
def test_a_three_level_chain_written_by_qemu_reads_like_qemus_flattening(tmp_path: Path) -> None:
    base, data = build("compressed", tmp_path)
    mid, top = tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(mid)).check_returncode()
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", mid.name, "-F", "qcow2", str(top)).check_returncode()
    for image, pattern, offset, length in ((mid, 0x11, 0, 200_000), (mid, 0x22, 5 << 20, 70_000),
                                           (top, 0x33, 100_000, 300_000), (top, 0x44, SIZE - 4096, 4096)):
        subprocess.run(["qemu-io", "-c", f"write -P {pattern} {offset} {length}", str(image)],
                       check=True, capture_output=True)
    subprocess.run(["qemu-io", "-c", "write -z 6291456 131072", str(mid)], check=True, capture_output=True)
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-O", "raw", str(top), str(flat)).check_returncode()
    bs = open_image(top, None, read_only=True)  # relative backing names, probed formats
    try:
        assert [node.filename for node in bs.chain()] == [str(top), str(mid), str(base)]
        assert bs.pread(0, SIZE) == flat.read_bytes()
    finally:
        bs.close()
    # and pemu's writes on top of the chain compare equal to the same writes on the flat copy
    bs, ref = open_image(top), open_image(flat, "raw")
    try:
        random_writes([bs, ref], seed=77, count=80)
    finally:
        bs.close()
        ref.close()
    assert qemu_img("check", str(top)).returncode == 0
    assert qemu_img("compare", "-f", "qcow2", "-F", "raw", str(top), str(flat)).returncode == 0
    assert qemu_img("check", str(mid)).returncode == 0


@pytest.mark.parametrize(("policy", "is_read", "error", "action"), [
    ("report", True, errno.EIO, "report"), ("ignore", True, errno.EIO, "ignore"), ("stop", True, errno.EIO, "stop"),
    ("enospc", False, errno.ENOSPC, "stop"), ("enospc", False, errno.EIO, "report"), ("stop", False, errno.EIO, "stop"),
    ("auto", True, errno.ENOSPC, "report"), ("auto", False, errno.ENOSPC, "stop"),
])
def test_error_actions(policy: str, is_read: bool, error: int, action: str) -> None:
    from pemu.block.block_backend import BlockdevOnError

    blk = BlockBackend(None, "x", schedule_completion=lambda cb: cb(),
                       on_read_error=BlockdevOnError(policy), on_write_error=BlockdevOnError(policy))
    assert blk.get_error_action(is_read, error).value == action
