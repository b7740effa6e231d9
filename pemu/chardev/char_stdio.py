"""The stdio back-end (QEMU's chardev/char-stdio.c).

Input comes from the process's stdin, output goes to its stdout.  When
stdin is a terminal it is put in raw mode, so every key (Ctrl-A for the
mux, arrow keys for the guest's shell) reaches the front-end as typed;
with ``signal=off`` Ctrl-C and Ctrl-Z are passed on too instead of
signalling pemu.  The terminal's settings are restored when the chardev is
closed, at exit, and when a signal that would end or stop the process
arrives.  End of file on stdin is not an error: input just stops.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from pemu.chardev.char import ChardevOptions
from pemu.chardev.char_fd import FdChardev
from pemu.util.error import UserError

STDIN_FD = 0
STDOUT_FD = 1

_SignalHandler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

# termios attribute list indices (see termios.tcgetattr)
_IFLAG, _OFLAG, _CFLAG, _LFLAG, _CC = 0, 1, 2, 3, 6


def raw_mode_attrs(saved: list[Any], allow_signals: bool) -> list[Any]:
    """Terminal attributes for raw input, derived from ``saved``.

    Output post-processing stays on so that lone newlines still return the
    carriage; with ``allow_signals`` the terminal keeps turning Ctrl-C and
    Ctrl-Z into signals.
    """
    attrs: list[Any] = [list(x) if isinstance(x, list) else x for x in saved]
    attrs[_IFLAG] &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )
    attrs[_OFLAG] |= termios.OPOST
    attrs[_LFLAG] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
    if not allow_signals:
        attrs[_LFLAG] &= ~termios.ISIG
    attrs[_CFLAG] &= ~(termios.CSIZE | termios.PARENB)
    attrs[_CFLAG] |= termios.CS8
    attrs[_CC][termios.VMIN] = 1
    attrs[_CC][termios.VTIME] = 0
    return attrs


class TerminalState:
    """The saved settings of one terminal, put back exactly once per change."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = termios.tcgetattr(fd)
        self.raw: list[Any] | None = None

    def make_raw(self, allow_signals: bool) -> None:
        self.raw = raw_mode_attrs(self.saved, allow_signals)
        self.reapply()

    def reapply(self) -> None:
        if self.raw is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, self.raw)
            except termios.error:
                pass

    def restore(self) -> None:
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
        except termios.error:
            pass


# Signals that end the process by default: the terminal is restored first.
_FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)

# Process-wide, as the process's stdin and stdout are: one stdio chardev at a time.
_stdio_in_use = False


class StdioChardev(FdChardev):
    backend_name = "stdio"

    def __init__(self, label: str, allow_signals: bool = True) -> None:
        global _stdio_in_use
        if _stdio_in_use:
            raise UserError("cannot use stdio by multiple character devices")
        super().__init__(label)
        self.filename = "stdio"
        self.allow_signals = allow_signals
        self.terminal: TerminalState | None = None
        self._previous_handlers: dict[int, _SignalHandler] = {}
        if os.isatty(STDIN_FD):
            self.terminal = TerminalState(STDIN_FD)
            self.terminal.make_raw(allow_signals)
            atexit.register(self._restore_terminal)
            self._install_signal_handlers()
        _stdio_in_use = True
        self.set_fds(STDIN_FD, STDOUT_FD, out_blocking=True)

    @classmethod
    def from_opts(cls, label: str, opts: ChardevOptions) -> StdioChardev:
        return cls(label, allow_signals=opts.get_bool("signal", True))

    def chr_write(self, data: bytes) -> int:
        # Python's own sys.stdout may hold text not yet written: keep order.
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        return super().chr_write(data)

    # -- terminal restoration -------------------------------------------------
    def _restore_terminal(self) -> None:
        if self.terminal is not None:
            self.terminal.restore()

    def _install_signal_handlers(self) -> None:
        """Restore the terminal before a default-handled fatal or stop signal."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _FATAL_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:
                self._previous_handlers[signum] = signal.signal(signum, self._on_fatal_signal)
        if signal.getsignal(signal.SIGTSTP) is signal.SIG_DFL:
            self._previous_handlers[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, self._on_stop_signal)
        if signal.getsignal(signal.SIGCONT) is signal.SIG_DFL:
            self._previous_handlers[signal.SIGCONT] = signal.signal(signal.SIGCONT, self._on_continue)

    def _remove_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()

    def _on_fatal_signal(self, signum: int, frame: FrameType | None) -> None:
        self._restore_terminal()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._restore_terminal()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        # Execution resumes here after SIGCONT.
        signal.signal(signal.SIGTSTP, self._on_stop_signal)

    def _on_continue(self, signum: int, frame: FrameType | None) -> None:
        if self.terminal is not None:
            self.terminal.reapply()

    def close(self) -> None:
        global _stdio_in_use
        super().close()
        self._restore_terminal()
        self._remove_signal_handlers()
        if self.terminal is not None:
            atexit.unregister(self._restore_terminal)
            self.terminal = None
        # Process-wide, as the process's stdin and stdout are: one stdio chardev at a time.
_stdio_in_use = False
