"""The human monitor on a character device (QEMU's monitor/hmp.c, monitor.c
and util/readline.c, the part pemu needs).

A :class:`Monitor` is one front-end of a chardev.  Bytes typed by the user go
through a small line editor (:class:`LineEditor`) that echoes them as QEMU's
readline does, handles backspace, swallows terminal escape sequences and
recalls earlier lines with the up and down arrows.  A finished line is run as
an HMP command (:mod:`pemu.monitor.hmp_cmds`) on the main-loop thread with
the big lock held, and the prompt "(qemu) " is printed again.

Output goes through :meth:`Monitor.printf`, which turns "\\n" into "\\r\\n"
as QEMU does, so the text reads right on a raw terminal and through pipes.

On a mux (``-nographic``, ``mon:stdio``) the monitor follows the input
focus: it prints its banner and prompt when it first gets the focus after
the chardev opened, prints the prompt again whenever the focus comes back
(Ctrl-A c), and ends the current line when the focus leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from pemu.chardev.char import Chardev, ChrEvent
from pemu.chardev.char_fe import CharBackend
from pemu.monitor.hmp_cmds import handle_hmp_command, monitor_version
from pemu.util.vm_context import current_vm

PROMPT = "(qemu) "

# Longest command line kept; further typed characters are ignored (QEMU's
# READLINE_CMD_BUF_SIZE less the terminating NUL).
MAX_LINE_BYTES = 4095
# How many earlier lines the up arrow can recall (READLINE_MAX_CMDS).
MAX_HISTORY = 64
# How much input the monitor takes at once.  Commands run synchronously, so
# any size works; a bound keeps one read from running a huge batch.
READ_CHUNK = 256

BACKSPACE = 0x08
DELETE = 0x7F
ESCAPE = 0x1B


def monitor_banner() -> str:
    return f"pemu {monitor_version()} monitor - type 'help' for more information\n"


class _EscapeState(Enum):
    NORMAL = "normal"
    ESC = "esc"  # after ESC
    CSI = "csi"  # after ESC [ or ESC O: parameters until a final byte


class LineEditor:
    """Accumulate typed bytes into lines, echoing them (QEMU's readline, minimal).

    ``echo(data)`` receives the bytes the terminal should show, typed bytes
    as they came (a UTF-8 character echoes as itself); ``on_line(line)``
    receives each finished line, without its end-of-line.
    """

    def __init__(self, echo: Callable[[bytes], None], on_line: Callable[[str], None]) -> None:
        self._echo = echo
        self._on_line = on_line
        self.buffer = bytearray()
        self.history: list[str] = []
        self._history_pos = 0  # == len(history) when not browsing
        self._escape = _EscapeState.NORMAL
        self._csi_params = bytearray()
        self._last_was_cr = False
        self.prompt = PROMPT

    def restart(self) -> None:
        """Forget the line being typed (readline_restart)."""
        self.buffer.clear()
        self._history_pos = len(self.history)
        self._escape = _EscapeState.NORMAL

    def show_prompt(self) -> None:
        self._echo(self.prompt.encode())

    def feed_byte(self, byte: int) -> None:
        byte &= 0xFF
        if self._escape is not _EscapeState.NORMAL:
            self._escape_byte(byte)
            return
        was_cr, self._last_was_cr = self._last_was_cr, byte == 0x0D
        if byte in (0x0D, 0x0A):
            if byte == 0x0A and was_cr:
                return  # the "\n" of a "\r\n" pair
            self._finish_line()
        elif byte in (BACKSPACE, DELETE):
            self._backspace()
        elif byte == ESCAPE:
            self._escape = _EscapeState.ESC
        elif byte >= 0x20:
            if len(self.buffer) < MAX_LINE_BYTES:
                self.buffer.append(byte)
                self._echo(bytes([byte]))
        # Other control characters (tab, Ctrl-C ...) are ignored.

    def _finish_line(self) -> None:
        line = self.buffer.decode("utf-8", errors="replace")
        self.buffer.clear()
        self._echo(b"\n")
        if line.strip():
            if not self.history or self.history[-1] != line:
                self.history.append(line)
                del self.history[:-MAX_HISTORY]
        self._history_pos = len(self.history)
        self._on_line(line)

    def _backspace(self) -> None:
        if not self.buffer:
            return
        # Remove one whole UTF-8 character: continuation bytes, then its lead.
        while len(self.buffer) > 1 and self.buffer[-1] & 0xC0 == 0x80:
            self.buffer.pop()
        self.buffer.pop()
        self._echo(b"\b \b")

    def _escape_byte(self, byte: int) -> None:
        if self._escape is _EscapeState.ESC:
            if byte in (ord("["), ord("O")):
                self._escape = _EscapeState.CSI
                self._csi_params.clear()
            else:
                self._escape = _EscapeState.NORMAL
            return
        # CSI: parameter and intermediate bytes, then one final byte.
        if 0x20 <= byte <= 0x3F:
            if len(self._csi_params) < 16:
                self._csi_params.append(byte)
            return
        self._escape = _EscapeState.NORMAL
        if byte == ord("A"):
            self._recall(-1)
        elif byte == ord("B"):
            self._recall(+1)
        # Cursor movement, Home/End, function keys: not supported, ignored.

    def _recall(self, step: int) -> None:
        pos = self._history_pos + step
        if pos < 0 or pos > len(self.history):
            return
        self._history_pos = pos
        text = self.history[pos] if pos < len(self.history) else ""
        self.buffer = bytearray(text.encode("utf-8")[:MAX_LINE_BYTES])
        # Back to the start of the line, redraw, clear what is left.
        self._echo(b"\r" + (self.prompt + text).encode() + b"\x1b[K")


class Monitor:
    """One human monitor (QEMU's MonitorHMP) on a chardev."""

    # A command may suspend it until something ends (`migrate` without -d; QEMU's monitor_suspend).
    can_suspend = True

    def __init__(self, chr: Chardev | None) -> None:
        self.vm = current_vm()  # the VM this monitor inspects and controls
        self.editor = LineEditor(self._write, self._run_line)
        # True while the monitor does not have a mux's input focus.
        self.mux_out = False
        # True once the chardev has opened (the banner is due or shown).
        self.reset_seen = False
        self._banner_pending = False
        # A suspended monitor reads no input (after `quit`).
        self.suspended = False
        self._held_input = b""  # typed while suspended, read on resume
        self.fe = CharBackend(chr)
        self.fe.set_handlers(self._can_read, self._read, self._event)

    # -- output -----------------------------------------------------------------
    def puts(self, text: str) -> None:
        """Write ``text`` to the user, with "\\n" as "\\r\\n" (monitor_puts)."""
        self._write(text.encode("utf-8", errors="replace"))

    def _write(self, data: bytes) -> None:
        if data:
            self.fe.write(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    def printf(self, text: str) -> None:
        """Alias of :meth:`puts` for readers of QEMU's monitor_printf."""
        self.puts(text)

    def print_line(self, text: str = "") -> None:
        self.puts(text + "\n")

    def error(self, message: str) -> None:
        """One error line, as QEMU's hmp_handle_error prints it."""
        self.print_line(f"Error: {message}")

    # -- input ------------------------------------------------------------------
    def _can_read(self) -> int:
        return 0 if self.suspended else READ_CHUNK

    def _read(self, data: bytes) -> None:
        for index, byte in enumerate(data):
            if self.suspended:
                # The rest of the batch waits for resume() (after a `migrate` that waited; after `quit` it is dropped).
                self._held_input = data[index:]
                return
            self.editor.feed_byte(byte)

    def handle_command(self, line: str) -> None:
        """Run one command line; never raises."""
        handle_hmp_command(self, line)

    def _run_line(self, line: str) -> None:
        self.handle_command(line)
        if not self.suspended:
            self.editor.show_prompt()

    def suspend(self) -> None:
        self.suspended = True

    def resume(self) -> None:
        if self.suspended:
            self.suspended = False
            held, self._held_input = self._held_input, b""
            if held:
                self._read(held)
            self.fe.accept_input()

    # -- events -------------------------------------------------------------------
    def _event(self, event: ChrEvent) -> None:
        if event is ChrEvent.OPENED:
            self.reset_seen = True
            if self.mux_out:
                # The banner waits until the user switches to the monitor.
                self._banner_pending = True
                return
            self.puts(monitor_banner())
            self.editor.restart()
            self.editor.show_prompt()
        elif event is ChrEvent.MUX_IN:
            self.mux_out = False
            if not self.reset_seen:
                return
            if self._banner_pending:
                self._banner_pending = False
                self.puts(monitor_banner())
            self.editor.restart()
            self.editor.show_prompt()
        elif event is ChrEvent.MUX_OUT:
            if self.reset_seen and not self.mux_out and not self._banner_pending:
                self.puts("\n")
            self.mux_out = True
        elif event is ChrEvent.CLOSED:
            # The next client starts with a fresh line and a new banner.
            self.editor.restart()
        # BREAK means nothing to the monitor.

    def close(self) -> None:
        self.fe.deinit()
        if self in self.vm.monitors:
            self.vm.monitors.remove(self)


class StringMonitor(Monitor):
    """A human monitor without a chardev whose output is kept (what QMP's
    human-monitor-command runs a command line on)."""

    can_suspend = False  # the command's output is returned at once

    def __init__(self) -> None:
        self._captured = bytearray()
        super().__init__(None)

    def _write(self, data: bytes) -> None:
        self._captured += data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    def output(self) -> str:
        return self._captured.decode("utf-8", errors="replace")


def monitor_init_hmp(chr: Chardev) -> Monitor:
    """Start a human monitor on ``chr`` (QEMU's monitor_init_hmp).

    On a mux, call this before the other front-ends (the serial port) attach:
    the last front-end to attach gets the input focus.
    """
    mon = Monitor(chr)
    mon.vm.monitors.append(mon)
    return mon


def monitors() -> list[Monitor]:
    """The current VM's monitors."""
    return list(current_vm().monitors)


def monitor_cleanup() -> None:
    for mon in monitors():
        mon.close()
