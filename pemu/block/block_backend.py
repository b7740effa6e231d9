"""The device side of an image (QEMU's block/block-backend.c).

A :class:`BlockBackend` is what a device model talks to: it checks every
request against the medium (a guest picks offsets and lengths, so nothing
outside the image is ever read or written), keeps QEMU's I/O statistics and
error policy, and runs requests off the calling thread.

The asynchronous calls (:meth:`aio_preadv`, :meth:`aio_pwritev`,
:meth:`aio_flush`) queue the request to the backend's worker and return at
once; the completion callback runs later on the main loop, as a bottom half,
with 0 or a negative errno.  A guest keeps running while its disk works.
One worker per backend keeps the requests of one image graph in order (the
format drivers' metadata is not shared between threads); separate images
work in parallel.  The synchronous helpers are for loaders, the monitor and
tests.

Completions wait in the backend's own queue, in order, and the main loop runs
them; :meth:`BlockBackend.drain_and_complete` runs them on the caller's thread
instead, until nothing is left (QEMU's blk_drain), so that a migration can
finish every guest request before the VM's state is saved.
"""

from __future__ import annotations

import enum
import errno
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pemu.block.block import bdrv_activate, bdrv_inactivate
from pemu.block.block_int import BDRV_REQUEST_MAX_BYTES, BlockDriverState, BlockOpenError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

Completion = Callable[[int], None]
Buffer = bytearray | memoryview


class BlockDevOps(Protocol):
    """What a device with removable media tells the block layer (QEMU's BlockDevOps)."""

    def change_media_cb(self, load: bool) -> None:
        """The medium was inserted (``load``) or removed by the monitor."""
        ...

    def is_tray_open(self) -> bool: ...

    def is_medium_locked(self) -> bool: ...

    def eject_request_cb(self, force: bool) -> None:
        """The monitor asks the guest to let the medium go."""
        ...


class BlockdevOnError(enum.Enum):
    """-drive werror=/rerror= (QEMU's BlockdevOnError)."""

    REPORT = "report"
    IGNORE = "ignore"
    ENOSPC = "enospc"
    STOP = "stop"
    AUTO = "auto"


class BlockErrorAction(enum.Enum):
    REPORT = "report"
    IGNORE = "ignore"
    STOP = "stop"


@dataclass
class BlockAcctStats:
    rd_bytes: int = 0
    wr_bytes: int = 0
    rd_operations: int = 0
    wr_operations: int = 0
    flush_operations: int = 0
    rd_total_time_ns: int = 0
    wr_total_time_ns: int = 0
    flush_total_time_ns: int = 0
    failed_rd_operations: int = 0
    failed_wr_operations: int = 0
    failed_flush_operations: int = 0
    invalid_rd_operations: int = 0
    invalid_wr_operations: int = 0
    last_access_ns: int = 0


class BlockBackend:
    def __init__(
        self,
        root: BlockDriverState | None,
        name: str = "",
        schedule_completion: Callable[[Callable[[], None]], None] | None = None,
        writeback: bool = True,
        on_read_error: BlockdevOnError = BlockdevOnError.REPORT,
        on_write_error: BlockdevOnError = BlockdevOnError.ENOSPC,
    ) -> None:
        self.root = root
        self.name = name
        self.dev: str | None = None  # the qdev path or id of the attached device
        self.dev_ops: BlockDevOps | None = None  # set by a device with removable media
        self.resize_cb: Callable[[], None] | None = None  # the device re-reads the size (BlockDevOps.resize_cb)
        self.enable_write_cache = writeback
        self.on_read_error = on_read_error
        self.on_write_error = on_write_error
        self.stats = BlockAcctStats()
        if schedule_completion is None:
            from pemu.util.main_loop import main_loop

            schedule_completion = main_loop().bh_schedule
        self._schedule = schedule_completion
        self.io_lock = threading.Lock()  # one request at a time on the graph
        self._worker: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._idle = threading.Condition()
        self._completions: deque[tuple[Completion, int]] = deque()  # finished requests, in order

    # -- the medium -------------------------------------------------------------------
    def is_inserted(self) -> bool:
        return self.root is not None

    def is_read_only(self) -> bool:
        return self.root is None or self.root.read_only

    def getlength(self) -> int:
        if self.root is None:
            return -errno.ENOMEDIUM
        with self.io_lock:
            return self.root.getlength()

    def truncate(self, size: int) -> None:
        """Resize the medium (blk_truncate): requests in flight finish first,
        then the attached device learns the new size.  Raises BlockOpenError."""
        if self.root is None:
            raise BlockOpenError("No medium inserted")
        self.drain()
        with self.io_lock:
            try:
                self.root.truncate(size)
            except OSError as e:
                raise BlockOpenError(f"Failed to resize file: {e.strerror}") from None
        if self.resize_cb is not None:
            self.resize_cb()

    def _check_request(self, offset: int, nbytes: int) -> int:
        """blk_check_byte_request: 0, or the negative errno the request fails with."""
        if self.root is None:
            return -errno.ENOMEDIUM
        if offset < 0 or nbytes < 0 or nbytes > BDRV_REQUEST_MAX_BYTES or offset + nbytes > self.root.getlength():
            return -errno.EIO
        return 0

    def get_error_action(self, is_read: bool, error: int) -> BlockErrorAction:
        """blk_get_error_action: what to do about a failed request (``error`` > 0)."""
        policy = self.on_read_error if is_read else self.on_write_error
        if policy is BlockdevOnError.AUTO:
            policy = BlockdevOnError.REPORT if is_read else BlockdevOnError.ENOSPC
        if policy is BlockdevOnError.ENOSPC:
            return BlockErrorAction.STOP if error == errno.ENOSPC else BlockErrorAction.REPORT
        return {BlockdevOnError.REPORT: BlockErrorAction.REPORT, BlockdevOnError.IGNORE: BlockErrorAction.IGNORE,
                BlockdevOnError.STOP: BlockErrorAction.STOP}[policy]

    def error_stop(self, is_read: bool, error: int) -> None:
        """A request failed under the ``stop`` policy (blk_error_action): the
        VM stops in ``io-error``; the device repeats the request when it runs again."""
        from pemu.system.runstate import RunState, qemu_system_vmstop_request

        qemu_system_vmstop_request(RunState.IO_ERROR)

    # -- synchronous requests (run on the caller's thread) -----------------------------
    def pread(self, offset: int, buf: Buffer) -> int:
        """Read len(buf) bytes at ``offset`` into ``buf``; 0 or -errno."""
        return self._do_read(offset, buf)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        return self._do_write(offset, data)

    def flush(self) -> int:
        return self._do_flush()

    def _do_read(self, offset: int, buf: Buffer) -> int:
        nbytes = len(buf)
        ret = self._check_request(offset, nbytes)
        if ret:
            self.stats.invalid_rd_operations += 1
            return ret
        start = time.monotonic_ns()
        try:
            with self.io_lock:
                assert self.root is not None
                data = self.root.pread(offset, nbytes)
            memoryview(buf)[:nbytes] = data
        except OSError as exc:
            self.stats.failed_rd_operations += 1
            return -(exc.errno or errno.EIO)
        self._account(start, "rd", nbytes)
        return 0

    def _do_write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        nbytes = len(data)
        ret = self._check_request(offset, nbytes)
        if ret == 0 and (self.is_read_only() or self.root is not None and self.root.inactive):
            ret = -errno.EPERM
        if ret:
            self.stats.invalid_wr_operations += 1
            return ret
        start = time.monotonic_ns()
        try:
            with self.io_lock:
                assert self.root is not None
                self.root.pwrite(offset, data)
                if not self.enable_write_cache:
                    self.root.flush()  # writethrough: stable before completion
        except OSError as exc:
            self.stats.failed_wr_operations += 1
            return -(exc.errno or errno.EIO)
        self._account(start, "wr", nbytes)
        return 0

    def _do_flush(self) -> int:
        if self.root is None:
            return 0
        start = time.monotonic_ns()
        try:
            with self.io_lock:
                self.root.flush()
        except OSError as exc:
            self.stats.failed_flush_operations += 1
            return -(exc.errno or errno.EIO)
        self._account(start, "flush", 0)
        return 0

    def _account(self, start: int, kind: str, nbytes: int) -> None:
        now = time.monotonic_ns()
        stats = self.stats
        if kind == "rd":
            stats.rd_operations += 1
            stats.rd_bytes += nbytes
            stats.rd_total_time_ns += now - start
        elif kind == "wr":
            stats.wr_operations += 1
            stats.wr_bytes += nbytes
            stats.wr_total_time_ns += now - start
        else:
            stats.flush_operations += 1
            stats.flush_total_time_ns += now - start
        stats.last_access_ns = now

    # -- asynchronous requests -----------------------------------------------------------
    def aio_preadv(self, offset: int, buf: Buffer, cb: Completion) -> None:
        """Read into ``buf`` on the worker; ``cb(ret)`` runs on the main loop."""
        self._submit(lambda: self._do_read(offset, buf), cb)

    def aio_pwritev(self, offset: int, data: bytes | bytearray | memoryview, cb: Completion) -> None:
        """Write ``data`` (which must stay unchanged until ``cb`` runs)."""
        self._submit(lambda: self._do_write(offset, data), cb)

    def aio_flush(self, cb: Completion) -> None:
        self._submit(self._do_flush, cb)

    def _submit(self, work: Callable[[], int], cb: Completion) -> None:
        if self._worker is None:
            # Imported with the first request: most VMs have no drive, and it costs ms at start.
            from concurrent.futures import ThreadPoolExecutor

            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"blk-{self.name or 'anon'}")
        with self._idle:
            self._in_flight += 1

        def run() -> None:
            ret = work()
            with self._idle:
                self._completions.append((cb, ret))
                self._in_flight -= 1
                self._idle.notify_all()
            self._schedule(self._run_completions)

        self._worker.submit(run)

    def _run_completions(self) -> None:
        """Run the completions of finished requests, oldest first."""
        while True:
            with self._idle:
                if not self._completions:
                    return
                cb, ret = self._completions.popleft()
            cb(ret)

    def drain(self) -> None:
        """Wait until no request is running (their completions may still be queued)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)

    def drain_and_complete(self) -> None:
        """Wait for every request and run its completion on this thread,
        including the requests those completions submit, until the backend
        is idle (QEMU's blk_drain).  The caller holds the big lock, as the
        main loop does when it runs completions; the device models then have
        no request in flight."""
        while True:
            self.drain()
            with self._idle:
                if not self._completions and self._in_flight == 0:
                    return
            self._run_completions()

    # -- migration: handing the image over ------------------------------------------------
    @property
    def inactive(self) -> bool:
        return self.root is not None and self.root.inactive

    def inactivate(self) -> None:
        """Finish every request, flush, and give up the image's write lock
        (the source of a migration, before the final device state is saved).
        Raises OSError when the flush fails."""
        self.drain_and_complete()
        if self.root is not None:
            with self.io_lock:
                bdrv_inactivate(self.root)

    def activate(self) -> None:
        """Take the write lock back and re-read the image's metadata (the
        destination after loading, the source after a failed migration).
        Raises BlockOpenError when another process holds the image."""
        if self.root is not None:
            with self.io_lock:
                bdrv_activate(self.root)

    def close(self) -> None:
        self.drain()
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        if self.root is not None:
            self.root.close()
            self.root = None
