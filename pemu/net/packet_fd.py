"""Back-ends whose file descriptor carries one frame per read and write.

A datagram socket (-netdev dgram, socket udp=) and a TAP device behave alike
towards the NIC: each read is one frame and each write sends one.  They share
the back-pressure rules of QEMU's net/tap.c and net/dgram.c:

- a frame the descriptor cannot take now (EAGAIN) is kept, the NIC is told to
  hold its next ones (``receive`` returns 0), and the kept frame goes out when
  the descriptor is writable again, after which the NIC's queue is flushed;
- a frame from the descriptor that the NIC holds stops reading until the NIC
  takes it.

So at most one frame waits each way, whatever the guest or the peer does.
"""

from __future__ import annotations

from pemu.net.net import NetClientState, qemu_flush_queued_packets, qemu_send_packet_async
from pemu.util.main_loop import MainLoop

READ_BURST = 64  # frames read per wake-up: a fair share for the other handlers


class PacketFdNetClient(NetClientState):
    """A net client over a descriptor with frame-sized reads and writes."""

    loop: MainLoop
    _pending: bytes | None = None  # a frame the descriptor could not take
    _held = False  # a frame of ours waits in the peer's queue

    # -- what a subclass provides ----------------------------------------------------------
    def fileno(self) -> int:
        raise NotImplementedError

    def read_frame(self) -> bytes | None:
        """The next frame (b"" for one to skip), or None when there is nothing more to read now."""
        raise NotImplementedError

    def write_frame(self, data: bytes) -> None:
        """Send one frame; raise BlockingIOError when the descriptor is full."""
        raise NotImplementedError

    def write_failed(self, error: OSError) -> None:
        """A frame could not be sent for a reason other than a full descriptor; it is dropped."""

    # -- the shared logic --------------------------------------------------------------------
    def _update_handlers(self) -> None:
        read = None if self._held else self._readable
        write = self._writable if self._pending is not None else None
        self.loop.set_fd_handler(self.fileno(), read, write)

    def _readable(self) -> None:
        for _ in range(READ_BURST):
            frame = self.read_frame()
            if frame is None:
                return
            if frame and qemu_send_packet_async(self, frame, self._sent) == 0:
                self._held = True
                self._update_handlers()
                return

    def _sent(self, _nc: NetClientState, _size: int) -> None:
        self._held = False
        self._update_handlers()

    def receive(self, data: bytes) -> int:
        if self._pending is not None:
            return 0
        try:
            self.write_frame(data)
        except BlockingIOError:
            self._pending = data
            self._update_handlers()
        except OSError as e:
            self.write_failed(e)
        return len(data)

    def _writable(self) -> None:
        data, self._pending = self._pending, None
        if data is not None:
            try:
                self.write_frame(data)
            except BlockingIOError:
                self._pending = data
            except OSError:
                pass
        self._update_handlers()
        if self._pending is None:
            qemu_flush_queued_packets(self)
