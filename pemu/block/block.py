"""Opening images (QEMU's block.c): protocol node, format probing, format node, backing chain.

:func:`bdrv_open` builds a graph for one image: a "file" node over the host
file (which takes QEMU's lock bytes), a format node (raw or qcow2) over it,
and, for a qcow2 with a backing file, the backing chain, each opened
read-only.  With ``snapshot`` the image itself is opened read-only and a
temporary qcow2 overlay (deleted at once, so nothing is left behind) takes
the writes, as QEMU's -snapshot does.

Migration hands an image from one process to another (QEMU's
BDRV_O_INACTIVE): :func:`bdrv_inactivate` flushes a graph and gives up its
write permission (the lock bytes), :func:`bdrv_activate` takes it back and
re-reads the format's metadata, which the other process may have changed.
An incoming VM opens its images inactive (``bdrv_open(..., inactive=True)``):
it reads them, takes no write lock and writes nothing, not even a header field.
"""

from __future__ import annotations

import os
import sys

from pemu.block.block_int import (
    BLK_PERM_ALL,
    BLOCK_PROBE_BUF_SIZE,
    BlockDriverState,
    BlockOpenError,
    BlockPerm,
    CacheMode,
    probe_format,
)
from pemu.block.file_posix import FileDriver

SUPPORTED_FORMATS = ("raw", "qcow2")
# Formats QEMU has and pemu does not: named in the error instead of "Unknown driver".
OTHER_QEMU_FORMATS = ("bochs", "cloop", "dmg", "luks", "parallels", "qcow", "qed", "vdi", "vhdx", "vmdk", "vpc",
                      "vvfat")
MAX_BACKING_CHAIN = 64


def raw_probe_warning(filename: str) -> str:
    return (
        f"WARNING: Image format was not specified for '{filename}' and probing guessed raw.\n"
        "         Automatically detecting the format is dangerous for raw images, "
        "write operations on block 0 will be restricted.\n"
        "         Specify the 'raw' format explicitly to remove the restrictions.\n"
    )


def check_format_name(fmt: str) -> None:
    if fmt in SUPPORTED_FORMATS:
        return
    if fmt in OTHER_QEMU_FORMATS:
        raise BlockOpenError(f"Driver '{fmt}' is not supported by pemu (raw and qcow2 are)")
    raise BlockOpenError(f"Unknown driver '{fmt}'")


def inactive_file_perms() -> tuple[int, int]:
    """(perm, shared) of an inactive node on its file: it reads, and lets anybody write."""
    return int(BlockPerm.CONSISTENT_READ), int(BLK_PERM_ALL)


def file_perms(fmt: str, read_only: bool) -> tuple[int, int]:
    """(perm, shared) a format node takes on its file, as QEMU's default perms for storage."""
    shared = int(BlockPerm.CONSISTENT_READ | BlockPerm.WRITE_UNCHANGED)
    if read_only:
        return int(BlockPerm.CONSISTENT_READ), shared
    perm = BlockPerm.CONSISTENT_READ | BlockPerm.WRITE | BlockPerm.WRITE_UNCHANGED
    if fmt == "qcow2":
        perm |= BlockPerm.RESIZE
    return int(perm), shared


def bdrv_open(
    filename: str,
    fmt: str | None,
    read_only: bool,
    cache: CacheMode,
    locking: bool = True,
    snapshot: bool = False,
    inactive: bool = False,
    _chain: tuple[str, ...] = (),
) -> BlockDriverState:
    """Open ``filename`` as a format node; raises BlockOpenError with QEMU's message.
    ``inactive``: without write permission until :func:`bdrv_activate` (an incoming migration)."""
    if fmt is not None:
        check_format_name(fmt)
    file_bs = BlockDriverState(filename, read_only or snapshot, cache)
    file_bs.inactive = inactive and not file_bs.read_only
    file_drv = FileDriver(file_bs, locking)
    file_bs.drv = file_drv
    bs: BlockDriverState | None = None
    try:
        probed = fmt is None
        if fmt is None:
            fmt = probe_format(file_bs.pread(0, BLOCK_PROBE_BUF_SIZE) if file_bs.getlength() else b"")
            check_format_name(fmt)
        file_drv.set_perm(*(inactive_file_perms() if file_bs.inactive else file_perms(fmt, file_bs.read_only)))
        bs = BlockDriverState(filename, file_bs.read_only, cache)
        bs.inactive = file_bs.inactive
        bs.file = file_bs
        bs.probed = probed
        if fmt == "qcow2":
            from pemu.block.qcow2 import Qcow2Driver

            bs.drv = Qcow2Driver(bs)
        else:
            from pemu.block.raw_format import RawDriver

            bs.drv = RawDriver(bs)
            if probed and not bs.read_only:
                sys.stderr.write(raw_probe_warning(filename))
                sys.stderr.flush()
        if bs.backing_file:
            _open_backing(bs, cache, locking, _chain + (os.path.realpath(filename),))
    except BaseException:
        if bs is not None:
            bs.file = None
            bs.close()
        file_bs.close()
        raise
    if snapshot:
        overlay = _append_temp_snapshot(bs, cache)
        overlay.inactive = inactive
        if overlay.file is not None:
            overlay.file.inactive = inactive
        return overlay
    return bs


def bdrv_inactivate(bs: BlockDriverState) -> None:
    """Flush ``bs`` and give up its write permission (bdrv_inactivate_recurse):
    after it nothing is written to the image until :func:`bdrv_activate`.
    Raises OSError when the flush fails (the node then stays active)."""
    if bs.inactive or bs.read_only:
        return
    bs.flush()
    bs.inactive = True
    file = bs.file
    if file is None:
        return
    file.inactive = True
    if not bs.temporary and isinstance(file.drv, FileDriver):
        file.drv.set_perm(*inactive_file_perms())  # only drops lock bytes: cannot conflict


def bdrv_activate(bs: BlockDriverState) -> None:
    """Take the write permission of an inactive ``bs`` back and re-read its
    metadata (bdrv_activate + bdrv_co_invalidate_cache): another process may
    have written the image meanwhile.  Raises BlockOpenError (QEMU's message)
    when another process holds the image or its metadata is no longer usable;
    the node then stays inactive."""
    if not bs.inactive:
        return
    file = bs.file
    locks = file is not None and not bs.temporary and isinstance(file.drv, FileDriver)
    if locks:
        assert file is not None and isinstance(file.drv, FileDriver)
        file.drv.set_perm(*file_perms(bs.format_name, bs.read_only))
    if file is not None:
        file.inactive = False
    bs.inactive = False
    if bs.format_name == "qcow2" and not bs.temporary:
        from pemu.block.qcow2 import Qcow2Driver

        old = bs.drv
        try:
            bs.drv = Qcow2Driver(bs)  # the header, L1 table and refcounts as they are now
        except BlockOpenError:
            bs.drv = old
            bs.inactive = True
            if file is not None:
                file.inactive = True
                if locks:
                    assert isinstance(file.drv, FileDriver)
                    file.drv.set_perm(*inactive_file_perms())
            raise


def _open_backing(bs: BlockDriverState, cache: CacheMode, locking: bool, chain: tuple[str, ...]) -> None:
    name = bs.backing_file
    path = name if os.path.isabs(name) else os.path.join(os.path.dirname(bs.filename), name)
    if os.path.realpath(path) in chain:
        raise BlockOpenError(f"Could not open backing file: the backing chain of '{bs.filename}' loops back "
                             f"to '{path}'")
    if len(chain) >= MAX_BACKING_CHAIN:
        raise BlockOpenError(f"Could not open backing file: backing chain longer than {MAX_BACKING_CHAIN} images")
    try:
        bs.backing = bdrv_open(path, bs.backing_format or None, True, cache, locking, _chain=chain)
    except BlockOpenError as exc:
        message = exc.message
        if not message.startswith("Could not open backing file: "):
            message = "Could not open backing file: " + message
        raise BlockOpenError(message, exc.hint) from None


def _append_temp_snapshot(base: BlockDriverState, cache: CacheMode) -> BlockDriverState:
    """bdrv_append_temp_snapshot: a deleted temporary qcow2 over ``base`` takes the writes."""
    import tempfile

    from pemu.block.qcow2 import Qcow2Driver
    from pemu.block.qcow2_create import qcow2_create

    tmpdir = os.environ.get("TMPDIR") or "/var/tmp"
    fd, path = tempfile.mkstemp(prefix="vl.", dir=tmpdir if os.path.isdir(tmpdir) else None)
    os.close(fd)
    try:
        qcow2_create(path, base.getlength(), os.path.abspath(base.filename), base.format_name)
        file_bs = BlockDriverState(path, False, cache)
        file_drv = FileDriver(file_bs, True)
        file_bs.drv = file_drv
        file_drv.set_perm(*file_perms("qcow2", False))
        overlay = BlockDriverState(path, False, cache)
        overlay.file = file_bs
        overlay.drv = Qcow2Driver(overlay)
        overlay.backing = base
        overlay.temporary = True
    except OSError as exc:
        base.close()
        raise BlockOpenError(f"Could not create temporary overlay '{path}': {os.strerror(exc.errno or 5)}") from None
    finally:
        os.unlink(path)
    return overlay


def bdrv_commit(bs: BlockDriverState) -> None:
    """Copy what ``bs`` holds into its backing image, then make ``bs`` empty (QEMU's bdrv_commit).

    The backing image is reopened read-write for the copy and read-only after.
    Raises OSError (ENOTSUP without a backing image).
    """
    import errno

    from pemu.block.block_int import io_error

    base = bs.backing
    if base is None or bs.drv is None:
        raise io_error(errno.ENOTSUP)
    assert base.file is not None and isinstance(base.file.drv, FileDriver)
    length = bs.getlength()
    base_length = base.getlength()
    base_fmt = base.format_name
    _reopen(base, read_only=False)
    try:
        step = 1 << 16
        for offset in range(0, length, step):
            n = min(step, length - offset)
            if not bs.drv.is_allocated(offset, n):
                continue
            data = bs.pread(offset, n)
            if offset < base_length:
                base.pwrite(offset, data[: base_length - offset])
        base.flush()
        bs.drv.make_empty()
        bs.flush()
    finally:
        _reopen(base, read_only=True)
    assert base.format_name == base_fmt


def _reopen(bs: BlockDriverState, read_only: bool) -> None:
    """Switch a node and its file between read-only and read-write (bdrv_reopen, simplified)."""
    assert bs.file is not None and isinstance(bs.file.drv, FileDriver)
    file_drv = bs.file.drv
    bs.read_only = bs.file.read_only = read_only
    file_drv.reopen(*file_perms(bs.format_name, read_only))
