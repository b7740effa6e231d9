"""What every migration transport gives the migration code (QEMU's QIOChannel,
the part migration uses).

An outgoing channel takes the stream (:attr:`OutgoingChannel.sink`), can be
shut down from another thread so that a write blocked on a slow or dead peer
returns (``migrate_cancel``), and says at :meth:`OutgoingChannel.finish`
whether the other end took everything (an ``exec:`` command's exit status).
An incoming channel is readable once :meth:`IncomingChannel.ready` (a
listening socket first waits for the peer) and gives the stream as a binary
file (:attr:`IncomingChannel.source`).

The transports: :mod:`pemu.migration.exec` (``exec:CMD``),
:mod:`pemu.migration.file` (``file:PATH``), :mod:`pemu.migration.socket`
(``tcp:HOST:PORT``); :func:`pemu.migration.migration.parse_uri` picks one.
"""

from __future__ import annotations

import os
from typing import BinaryIO


class MigrationChannelError(Exception):
    """A transport could not be opened or failed (one line, QEMU's wording)."""


class FdSink:
    """Writes everything it is given to a file descriptor (a pipe or a socket:
    a short write is continued, never dropped)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        return total


class OutgoingChannel:
    """Where an outgoing migration's stream goes."""

    # The file: transport gives a seekable regular file: RAM is saved in the mapped-ram layout.
    mapped_ram = False

    @property
    def sink(self) -> FdSink | BinaryIO:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Make a write blocked in another thread return with an error (cancel); idempotent."""

    def finish(self) -> None:
        """Everything was written: close, and raise MigrationChannelError if the
        other end did not take it (an exec: command that failed)."""

    def close(self) -> None:
        """Release everything (after finish, or instead of it on failure); idempotent."""


class IncomingChannel:
    """Where an incoming migration's stream comes from."""

    def ready_fd(self) -> int | None:
        """A descriptor to wait for (readable) before :meth:`accept`; None: ready now."""
        return None

    def accept(self) -> None:
        """The peer is there (a listening socket accepts it)."""

    @property
    def source(self) -> BinaryIO:
        raise NotImplementedError

    def address(self) -> str | None:
        """The listening address, as query-migrate's socket-address shows it."""
        return None

    def close(self) -> None:
        """Release everything; idempotent."""
