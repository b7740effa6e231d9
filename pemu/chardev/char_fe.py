"""The front-end side of a character device (QEMU's CharBackend, chardev/char-fe.c).

A device model (the 16550 UART, the human monitor) owns one
:class:`CharBackend`.  It writes output with :meth:`CharBackend.write` and
receives input through the handlers it installs with
:meth:`CharBackend.set_handlers`; input arrives on the main-loop thread with
the big lock held, and never more bytes than ``can_read()`` returned.  When
the device can take more input again (its receive FIFO drained), it calls
:meth:`CharBackend.accept_input`.

A CharBackend may also be left without a chardev (``-serial none``): writes
are then dropped and no input ever arrives.
"""

from __future__ import annotations

from collections.abc import Callable

from pemu.chardev.char import Chardev, ChrEvent

CanReadHandler = Callable[[], int]
ReadHandler = Callable[[bytes], None]
EventHandler = Callable[[ChrEvent], None]


class CharBackend:
    """A front-end's handle on a chardev (qemu_chr_fe_init and friends)."""

    def __init__(self, chr: Chardev | None = None) -> None:
        self.chr: Chardev | None = None
        self.tag = 0
        self.can_read: CanReadHandler | None = None
        self.read: ReadHandler | None = None
        self.event: EventHandler | None = None
        if chr is not None:
            self.tag = chr.attach_frontend(self)
            self.chr = chr

    # -- output ---------------------------------------------------------------
    def write(self, data: bytes) -> int:
        """Send ``data`` to the host; returns how many bytes were taken.

        Never blocks for long: a back-end whose peer is slow or gone buffers
        a bounded amount and drops the rest.
        """
        chr = self.chr
        if chr is None:
            return len(data)
        return chr.write(data)

    # -- input ----------------------------------------------------------------
    def set_handlers(
        self,
        can_read: CanReadHandler | None,
        read: ReadHandler | None,
        event: EventHandler | None = None,
        *,
        sync_state: bool = True,
    ) -> None:
        """Install the input and event handlers (all None removes them).

        With ``sync_state`` a front-end joining an already open back-end gets
        an OPENED event straight away, as in QEMU.  On a mux, the front-end
        that installs handlers takes the input focus.
        """
        self.can_read = can_read
        self.read = read
        self.event = event
        chr = self.chr
        if chr is None:
            return
        if can_read is not None or read is not None or event is not None:
            chr.take_focus(self)
            if sync_state and chr.be_open:
                chr.be_event(ChrEvent.OPENED)
        chr.update_read_handler()

    def accept_input(self) -> None:
        """The front-end can take more input: deliver what is pending."""
        if self.chr is not None:
            self.chr.accept_input()

    # -- state ------------------------------------------------------------------
    def backend_connected(self) -> bool:
        """True when a chardev is attached (qemu_chr_fe_backend_connected)."""
        return self.chr is not None

    def backend_open(self) -> bool:
        """True when the chardev's host side is connected."""
        return self.chr is not None and self.chr.be_open

    def get_driver(self) -> Chardev | None:
        return self.chr

    def deinit(self) -> None:
        """Detach from the chardev (qemu_chr_fe_deinit)."""
        chr = self.chr
        self.can_read = self.read = self.event = None
        if chr is not None:
            chr.detach_frontend(self)
            self.chr = None
