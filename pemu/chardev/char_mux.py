"""The multiplexer (QEMU's chardev/char-mux.c): several front-ends, one back-end.

``-nographic`` and ``mon:stdio`` put the guest's console and the monitor on
one terminal.  Output from every front-end goes to the back-end; input goes
to the front-end that has the focus.  Ctrl-A is the escape key:

    C-a h   print the help          C-a x   quit (a HOST_UI shutdown request)
    C-a c   switch the input focus  C-a b   send a break to the focused one
    C-a t   toggle timestamps       C-a s   (saving disks: ignored here)
    C-a C-a send a literal C-a

Each front-end has a small input buffer so that escapes keep working while
the focused front-end is not reading (a guest with its UART full can still
be quit with C-a x).
"""

from __future__ import annotations

import time

from pemu.chardev.char import Chardev, ChrEvent
from pemu.chardev.char_fe import CharBackend
from pemu.system.runstate import ShutdownCause, qemu_system_shutdown_request
from pemu.util.error import UserError
from pemu.util.vm_context import current_vm

MAX_MUX = 4
MUX_BUFFER_SIZE = 32
TERM_ESCAPE = 0x01  # Ctrl-A

TERMINATED_MESSAGE = b"pemu: Terminated\n\r"

_HELP_LINES = (
    ("h", "print this help"),
    ("x", "exit emulator"),
    ("s", "save disk data back to file (if -snapshot)"),
    ("t", "toggle console timestamps"),
    ("b", "send break (magic sysrq)"),
    ("c", "switch between console and monitor"),
)


def mux_help_text(escape: int = TERM_ESCAPE) -> bytes:
    """The C-a h help, in QEMU's layout."""
    if 0 < escape < 27:
        key = f"C-{chr(escape - 1 + ord('a'))}"
        text = "\n\r"
    else:
        key = "Escape-Char"
        text = f"\n\rEscape-Char set to Ascii: 0x{escape:02x}\n\r\n\r"
    for letter, meaning in _HELP_LINES:
        text += f"{key} {letter}    {meaning}\n\r"
    text += f"{key} {key}  sends {key}\n\r"
    return text.encode()


# QEMU delays the OPENED events of muxes until the command line has been
# processed, so that banners go to whichever front-end ended with the focus
# (the VM's ``muxes_opened``).


def suspend_mux_open() -> None:
    """Hold back OPENED events of the current VM's muxes until :func:`resume_mux_open`."""
    current_vm().muxes_opened = False


def resume_mux_open() -> None:
    """Send the held-back OPENED events to every attached front-end."""
    vm = current_vm()
    vm.muxes_opened = True
    for mux in list(vm.muxes):
        if not mux.be_open:
            mux.open_all_frontends()


class MuxChardev(Chardev):
    backend_name = "mux"

    def __init__(self, label: str, base: Chardev) -> None:
        super().__init__(label)
        self.base = base
        self.filename = base.filename
        self.frontends: list[CharBackend | None] = [None] * MAX_MUX
        self.buffers = [bytearray() for _ in range(MAX_MUX)]
        self.focus = -1
        self.got_escape = False
        self.timestamps = False
        self._timestamps_start: float | None = None
        self._line_start = False
        # The mux is itself the front-end of its base chardev.
        self.base_fe = CharBackend(base)
        self.vm = current_vm()  # the VM whose command line decides when it opens
        self.vm.muxes.append(self)

    def open(self) -> None:
        self.base_fe.set_handlers(self._base_can_read, self._base_read, self._base_event)
        if self.vm.muxes_opened:
            self.be_event(ChrEvent.OPENED)

    def open_all_frontends(self) -> None:
        self.be_open = True
        self._send_all(ChrEvent.OPENED)

    # -- front-ends ---------------------------------------------------------------
    def attach_frontend(self, fe: CharBackend) -> int:
        for tag, slot in enumerate(self.frontends):
            if slot is None:
                self.frontends[tag] = fe
                return tag
        raise UserError(f"too many uses of multiplexed chardev '{self.label}' (maximum is {MAX_MUX})")

    def detach_frontend(self, fe: CharBackend) -> None:
        tag = fe.tag
        if 0 <= tag < MAX_MUX and self.frontends[tag] is fe:
            self.frontends[tag] = None
            self.buffers[tag].clear()
            if self.focus == tag:
                others = [i for i, slot in enumerate(self.frontends) if slot is not None]
                self.focus = -1
                self.be = None
                if others:
                    self.set_focus(others[0])

    def take_focus(self, fe: CharBackend) -> None:
        if 0 <= fe.tag < MAX_MUX and self.frontends[fe.tag] is fe:
            self.set_focus(fe.tag)

    def set_focus(self, tag: int) -> None:
        """Move the input focus to front-end ``tag``, with MUX_OUT/MUX_IN events."""
        if not (0 <= tag < MAX_MUX) or self.frontends[tag] is None:
            return
        if self.focus != -1:
            self._send_to(self.focus, ChrEvent.MUX_OUT)
        self.focus = tag
        self.be = self.frontends[tag]
        self._send_to(tag, ChrEvent.MUX_IN)

    def focus_next(self) -> None:
        attached = [i for i, slot in enumerate(self.frontends) if slot is not None]
        if not attached:
            return
        later = [i for i in attached if i > self.focus]
        self.set_focus(later[0] if later else attached[0])

    # -- events -----------------------------------------------------------------
    def _send_to(self, tag: int, event: ChrEvent) -> None:
        fe = self.frontends[tag]
        if fe is not None and fe.event is not None:
            fe.event(event)

    def _send_all(self, event: ChrEvent) -> None:
        if not self.vm.muxes_opened:
            return
        for tag in range(MAX_MUX):
            self._send_to(tag, event)

    def send_event(self, event: ChrEvent) -> None:
        # Events raised on the mux itself go to the focused front-end only.
        if self.focus != -1:
            self._send_to(self.focus, event)

    def _base_event(self, event: ChrEvent) -> None:
        # The base's peer came or went: every front-end hears of it.
        self._send_all(event)

    # -- output -------------------------------------------------------------------
    def chr_write(self, data: bytes) -> int:
        if not self.timestamps:
            return self.base_fe.write(data)
        taken = 0
        for line in data.splitlines(keepends=True):
            if self._line_start:
                self.base_fe.write(self._timestamp())
                self._line_start = False
            taken += self.base_fe.write(line)
            if line.endswith(b"\n"):
                self._line_start = True
        return taken

    def _timestamp(self) -> bytes:
        now = time.monotonic()
        if self._timestamps_start is None:
            self._timestamps_start = now
        elapsed_ms = int((now - self._timestamps_start) * 1000)
        secs, ms = divmod(elapsed_ms, 1000)
        return f"[{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{ms:03d}] ".encode()

    # -- input ------------------------------------------------------------------
    def _base_can_read(self) -> int:
        if self.focus == -1:
            return 0
        room = MUX_BUFFER_SIZE - len(self.buffers[self.focus])
        if room > 0:
            return room
        return self.be_can_write()

    def _base_read(self, data: bytes) -> None:
        self._drain_focus()
        run = bytearray()
        for byte in data:
            if self.got_escape:
                self.got_escape = False
                if byte == TERM_ESCAPE:
                    run.append(byte)
                    continue
                self._to_focus(run)
                run = bytearray()
                self._escape_command(byte)
            elif byte == TERM_ESCAPE:
                self.got_escape = True
            else:
                run.append(byte)
        self._to_focus(run)

    def _escape_command(self, key: int) -> None:
        if key in (ord("h"), ord("?")):
            self.base_fe.write(mux_help_text())
        elif key == ord("x"):
            self.base_fe.write(TERMINATED_MESSAGE)
            qemu_system_shutdown_request(ShutdownCause.HOST_UI)
        elif key == ord("b"):
            self.be_event(ChrEvent.BREAK)
        elif key == ord("c"):
            self.focus_next()
        elif key == ord("t"):
            self.timestamps = not self.timestamps
            self._timestamps_start = None
            self._line_start = False
        # "s" (commit -snapshot disks) and unknown keys are ignored.

    def _to_focus(self, data: bytes | bytearray) -> None:
        if not data or self.focus == -1:
            return
        self.buffers[self.focus] += data
        self._drain_focus()

    def _drain_focus(self) -> None:
        if self.focus == -1:
            return
        buffer = self.buffers[self.focus]
        while buffer:
            room = self.be_can_write()
            if room <= 0:
                break
            chunk = bytes(buffer[:room])
            del buffer[:room]
            self.be_write(chunk)

    def accept_input(self) -> None:
        self._drain_focus()
        self.base_fe.accept_input()

    def update_read_handler(self) -> None:
        self.accept_input()

    def close(self) -> None:
        for tag, fe in enumerate(self.frontends):
            if fe is not None:
                fe.chr = None
                self.frontends[tag] = None
        self.be = None
        self.focus = -1
        self.base_fe.deinit()
        if self in self.vm.muxes:
            self.vm.muxes.remove(self)
        super().close()
