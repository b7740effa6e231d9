"""Chardevs over host file descriptors (QEMU's chardev/char-fd.c).

Input: while the front-end keeps up, the input fd is watched by the main
loop; each wake-up reads one chunk.  Whatever the front-end cannot take
stays pending and the fd is no longer watched until ``accept_input``
drains it.  Regular files and /dev/null cannot be watched (epoll refuses
them): they are read from bottom halves instead.

Output: a blocking output fd (a terminal, a file) is written through.  A
non-blocking one (a socket, a FIFO) is written as far as it goes; the rest
is kept in a bounded buffer flushed when the fd becomes writable, and what
does not fit is dropped, so a vCPU never waits for a slow peer.
"""

from __future__ import annotations

import errno
import os
import selectors
import threading
from collections.abc import Callable

from pemu.chardev.char import Chardev
from pemu.util.main_loop import main_loop

READ_CHUNK = 4096
# Output kept for a slow peer before bytes are dropped.
OUTPUT_BUFFER_LIMIT = 64 * 1024


def fd_is_pollable(fd: int) -> bool:
    """Whether the main loop can watch ``fd`` (epoll refuses regular files, /dev/null)."""
    probe = selectors.DefaultSelector()
    try:
        probe.register(fd, selectors.EVENT_READ)
    except (PermissionError, ValueError, OSError):
        return False
    finally:
        probe.close()
    return True


class FdChardev(Chardev):
    """A chardev reading ``fd_in`` and writing ``fd_out`` (either may be None)."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.fd_in: int | None = None
        self.fd_out: int | None = None
        self._out_blocking = True
        self._out_buffer = bytearray()
        self._out_lock = threading.RLock()
        self._reading = False  # fd_in is being watched
        self._in_eof = False
        self._in_is_file = False
        self._bh_read_scheduled = False
        self._watched: set[int] = set()
        self._output_watches: list[Callable[[], None]] = []

    def set_fds(self, fd_in: int | None, fd_out: int | None, *, out_blocking: bool) -> None:
        """Start using ``fd_in``/``fd_out``; reading starts at once."""
        self.fd_in = fd_in
        self.fd_out = fd_out
        self._out_blocking = out_blocking
        self._in_eof = False
        self._in_is_file = fd_in is not None and not fd_is_pollable(fd_in)
        with self._out_lock:
            self._out_buffer.clear()
        self._start_input()

    def forget_fds(self) -> None:
        """Stop watching the fds (the caller closes them)."""
        self._reading = False
        self._out_buffer.clear()
        self._run_output_watches()  # nothing is held back any more
        self._update_watches()
        self.fd_in = None
        self.fd_out = None

    # -- input ----------------------------------------------------------------
    def _start_input(self) -> None:
        if self.fd_in is None or self._in_eof or self._reading:
            return
        self._reading = True
        if self._in_is_file:
            self._schedule_file_read()
        else:
            self._update_watches()

    def _stop_input(self) -> None:
        if not self._reading:
            return
        self._reading = False
        if not self._in_is_file:
            self._update_watches()

    def _schedule_file_read(self) -> None:
        if not self._bh_read_scheduled:
            self._bh_read_scheduled = True
            main_loop().bh_schedule(self._file_read_bh)

    def _file_read_bh(self) -> None:
        self._bh_read_scheduled = False
        if self._reading:
            self._on_readable()
            if self._reading:
                self._schedule_file_read()

    def _on_readable(self) -> None:
        fd = self.fd_in
        if fd is None:
            return
        try:
            data = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._in_eof = True
            self._stop_input()
            self.input_eof()
            return
        if not self.push_input(data):
            self._stop_input()

    def input_eof(self) -> None:
        """The input fd reached end of file or failed.  Default: stop reading."""

    def accept_input(self) -> None:
        if self.drain_input():
            self._start_input()

    # -- output ---------------------------------------------------------------
    def chr_write(self, data: bytes) -> int:
        fd = self.fd_out
        if fd is None:
            return len(data)  # nobody to send to: drop silently
        with self._out_lock:
            if self._out_blocking:
                return self._write_through(fd, data)
            if self._out_buffer:
                return self._buffer_output(data)
            try:
                written = os.write(fd, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self._output_failed(exc)
                return 0
            if written < len(data):
                return written + self._buffer_output(data[written:])
            return written

    def _write_through(self, fd: int, data: bytes) -> int:
        done = 0
        view = memoryview(data)
        while done < len(data):
            try:
                done += os.write(fd, view[done:])
            except InterruptedError:
                continue
            except BlockingIOError:
                break  # someone made it non-blocking; drop the rest
            except OSError as exc:
                self._output_failed(exc)
                break
        return done

    def _buffer_output(self, data: bytes) -> int:
        room = OUTPUT_BUFFER_LIMIT - len(self._out_buffer)
        taken = data[: max(0, room)]
        if taken:
            was_empty = not self._out_buffer
            self._out_buffer += taken
            if was_empty:
                self._update_watches()
        return len(taken)

    def add_output_watch(self, cb: Callable[[], None]) -> None:
        with self._out_lock:
            if self._out_buffer and self.fd_out is not None:
                self._output_watches.append(cb)  # called once the buffer has drained
                return
        super().add_output_watch(cb)

    def _run_output_watches(self) -> None:
        watches, self._output_watches = self._output_watches, []
        for cb in watches:
            main_loop().bh_schedule(cb)

    def _on_writable(self) -> None:
        fd = self.fd_out
        with self._out_lock:
            if fd is None or not self._out_buffer:
                self._out_buffer.clear()
            else:
                try:
                    written = os.write(fd, self._out_buffer)
                    del self._out_buffer[:written]
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self._out_buffer.clear()
                    self._output_failed(exc)
                    return
            if not self._out_buffer:
                self._update_watches()
        if not self._out_buffer:
            self._run_output_watches()

    def _output_failed(self, exc: OSError) -> None:
        """Writing failed for good (EPIPE, EIO ...).  Default: stop writing."""
        if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO, errno.EBADF):
            self.fd_out = None

    # -- main-loop registration ---------------------------------------------
    def _update_watches(self) -> None:
        """Tell the main loop which of our fds to watch, and for what."""
        wanted: dict[int, tuple[bool, bool]] = {}
        if self._reading and self.fd_in is not None and not self._in_is_file:
            wanted[self.fd_in] = (True, False)
        if self._out_buffer and self.fd_out is not None:
            reading = wanted.get(self.fd_out, (False, False))[0]
            wanted[self.fd_out] = (reading, True)
        loop = main_loop()
        for fd in self._watched - wanted.keys():
            loop.set_fd_handler(fd, None, None)
        for fd, (want_read, want_write) in wanted.items():
            loop.set_fd_handler(
                fd,
                self._on_readable if want_read else None,
                self._on_writable if want_write else None,
            )
        self._watched = set(wanted)

    def close(self) -> None:
        self.forget_fds()
        super().close()
