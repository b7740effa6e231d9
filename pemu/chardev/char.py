"""The character device back-end base class (QEMU's chardev/char.c).

A :class:`Chardev` is the host side of a character stream: a terminal, a
file, a socket.  At most one front-end (a UART, the monitor, or a mux that
fans out to several front-ends) is attached to it through a
:class:`~pemu.chardev.char_fe.CharBackend`.

Two directions:

* output: the front-end calls ``CharBackend.write``, which ends in
  :meth:`Chardev.chr_write`.  A back-end never blocks the caller for long:
  it writes, buffers a bounded amount, or drops.
* input: the back-end reads host data on the main-loop thread and offers it
  to the front-end with :meth:`Chardev.push_input`.  Only as many bytes as
  the front-end's ``can_read()`` allows are delivered; the rest waits in a
  pending buffer until the front-end calls ``accept_input()``.  While input
  is pending the back-end stops reading from the host, which gives natural
  back-pressure.

The front-end's handlers are device code: an exception out of one is
contained here (``contain_fault``: the VM stops in internal-error) and the
input it was given is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING

from pemu.system.cpus import contain_fault
from pemu.util import cutils
from pemu.util.error import UserError
from pemu.util.main_loop import handler_name

if TYPE_CHECKING:
    from pemu.chardev.char_fe import CharBackend


class ChrEvent(Enum):
    """Events a back-end sends to its front-end (QEMUChrEvent)."""

    OPENED = "opened"  # the peer is there: a client connected, a file opened
    CLOSED = "closed"  # the peer went away
    BREAK = "break"  # a serial break (mux "C-a b")
    MUX_IN = "mux-in"  # this front-end got the mux's input focus
    MUX_OUT = "mux-out"  # this front-end lost the mux's input focus


# Every key -chardev accepts (QEMU's qemu_chardev_opts); a key outside this
# set is refused before any back-end sees it.
CHARDEV_OPTION_NAMES = frozenset(
    {
        "backend", "id", "path", "host", "port", "server", "wait", "nodelay", "delay",
        "mux", "signal", "append", "logfile", "logappend", "chardev", "reconnect",
        "telnet", "ipv4", "ipv6", "to", "input-path",
    }
)

class ChardevOptions:
    """The option dictionary of one chardev, with QemuOpts-style typed access."""

    def __init__(self, opts: Mapping[str, str]) -> None:
        self.values = dict(opts)

    @property
    def id(self) -> str | None:
        return self.values.get("id")

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def has(self, key: str) -> bool:
        return key in self.values

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        return parse_bool(key, value)


def parse_bool(key: str, value: str) -> bool:
    """Parse an on/off option value the way QemuOpts does."""
    try:
        return cutils.parse_bool(value, key)
    except ValueError as exc:
        raise UserError(str(exc)) from None


class Chardev:
    """One host-side character stream.  Subclasses override the ``chr_*`` hooks."""

    # The -chardev backend name ("file", "socket", ...); set by each subclass.
    backend_name = ""

    def __init__(self, label: str) -> None:
        self.label = label
        # What `info chardev` shows; subclasses refine it.
        self.filename = self.backend_name
        # The attached front-end (for a mux: the one with input focus).
        self.be: CharBackend | None = None
        # True while the host side is connected (QEMU's be_open).
        self.be_open = False
        self._pending_input = bytearray()
        self._logfile_fd: int | None = None

    # -- output (front-end -> host) ----------------------------------------
    def write(self, data: bytes) -> int:
        """Send ``data`` to the host; returns how many bytes were taken."""
        if not data:
            return 0
        taken = self.chr_write(bytes(data))
        if self._logfile_fd is not None and taken > 0:
            self._log(data[:taken])
        return taken

    def chr_write(self, data: bytes) -> int:
        """Back-end specific output.  The default discards everything."""
        return len(data)

    # -- input (host -> front-end) ------------------------------------------
    def be_can_write(self) -> int:
        """How many bytes the front-end takes now (qemu_chr_be_can_write)."""
        fe = self.be
        if fe is None or fe.can_read is None or fe.read is None:
            return 0
        try:
            return max(0, int(fe.can_read()))
        except Exception as exc:
            contain_fault(f"chardev '{self.label}' can-read handler {handler_name(fe.can_read)}", exc)
            return 0

    def be_write(self, data: bytes) -> None:
        """Hand ``data`` to the front-end, which said it can take it."""
        fe = self.be
        if fe is not None and fe.read is not None:
            try:
                fe.read(data)
            except Exception as exc:
                shown = repr(bytes(data[:16])) + ("..." if len(data) > 16 else "")
                contain_fault(f"chardev '{self.label}' read handler {handler_name(fe.read)}, input {shown}", exc)

    def push_input(self, data: bytes) -> bool:
        """Queue host input and deliver what the front-end can take.

        Returns True when nothing is left pending.
        """
        self._pending_input += data
        return self.drain_input()

    def drain_input(self) -> bool:
        """Deliver pending input while the front-end accepts it."""
        pending = self._pending_input
        while pending:
            room = self.be_can_write()
            if room <= 0:
                break
            chunk = bytes(pending[:room])
            del pending[:room]
            self.be_write(chunk)
        return not pending

    @property
    def input_pending(self) -> int:
        return len(self._pending_input)

    def accept_input(self) -> None:
        """The front-end can take more input now (qemu_chr_fe_accept_input)."""
        self.drain_input()

    # -- events ---------------------------------------------------------------
    def be_event(self, event: ChrEvent) -> None:
        """Tell the front-end about ``event`` (qemu_chr_be_event)."""
        if event is ChrEvent.OPENED:
            self.be_open = True
        elif event is ChrEvent.CLOSED:
            self.be_open = False
        self.send_event(event)

    def send_event(self, event: ChrEvent) -> None:
        fe = self.be
        if fe is not None and fe.event is not None:
            try:
                fe.event(event)
            except Exception as exc:
                contain_fault(f"chardev '{self.label}' event handler {handler_name(fe.event)}, "
                              f"event {event.name}", exc)

    # -- front-end attachment ---------------------------------------------------
    def attach_frontend(self, fe: CharBackend) -> int:
        """Attach ``fe``; returns its tag (always 0 except on a mux)."""
        if self.be is not None:
            raise UserError(f"Device '{self.label}' is in use")
        self.be = fe
        return 0

    def detach_frontend(self, fe: CharBackend) -> None:
        if self.be is fe:
            self.be = None

    def take_focus(self, fe: CharBackend) -> None:
        """Give ``fe`` the input focus; only a mux has a choice."""

    def update_read_handler(self) -> None:
        """The front-end's handlers changed: offer it what is pending."""
        self.accept_input()

    # -- life cycle -------------------------------------------------------------
    def open(self) -> None:
        """Finish opening after construction; OPENED is sent if it succeeded.

        Back-ends whose peer is not there yet (a listening socket) override this.
        """
        self.be_event(ChrEvent.OPENED)

    def wait_connected(self) -> None:
        """Block until the peer is there (server sockets with wait=on)."""

    def close(self) -> None:
        """Release host resources; the chardev is unusable afterwards."""
        if self._logfile_fd is not None:
            close_fd_quietly(self._logfile_fd)
            self._logfile_fd = None

    # -- logfile= -------------------------------------------------------------
    def open_logfile(self, path: str, append: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        try:
            self._logfile_fd = os.open(path, flags, 0o666)
        except OSError as exc:
            raise UserError(f"Could not open '{path}': {exc.strerror}") from None

    def _log(self, data: bytes) -> None:
        assert self._logfile_fd is not None
        try:
            os.write(self._logfile_fd, data)
        except OSError:
            pass  # logs are best effort, as in QEMU

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r} {self.filename}>"


def close_fd_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
