"""The ``file:PATH[,offset=N]`` transport (QEMU 9's migration/file.c).

Outgoing, the file is created (or truncated) and RAM is written in the
mapped-ram layout: every page has its own place in the file, so a page
dirtied again is written again in place and the file never grows past the
guest's RAM; a restore can map the pages instead of reading them.  Incoming,
the file is opened for reading and the stream's header says which layout it
has.  ``offset=N`` starts the stream N bytes into the file.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from pemu.migration.channel import IncomingChannel, MigrationChannelError, OutgoingChannel


def parse_file_uri(spec: str) -> tuple[str, int]:
    """``PATH[,offset=N]`` -> (path, offset)."""
    path, sep, option = spec.rpartition(",offset=")
    if not sep:
        path, option = spec, ""
    if not path:
        raise MigrationChannelError("file: needs a path")
    offset = 0
    if option:
        try:
            offset = int(option, 0)
        except ValueError:
            raise MigrationChannelError(f"Parameter 'offset' expects a number, not '{option}'") from None
        if offset < 0:
            raise MigrationChannelError("Parameter 'offset' expects a non-negative number")
    return path, offset


def _open_error(path: str, e: OSError) -> MigrationChannelError:
    return MigrationChannelError(f"Could not open '{path}': {e.strerror or e}")


class FileOutgoing(OutgoingChannel):
    mapped_ram = True

    def __init__(self, spec: str) -> None:
        self.path, self.offset = parse_file_uri(spec)
        try:
            if self.offset == 0 and os.path.isfile(self.path):
                # A new file, not the old one cut: a VM restored from the old
                # one (mapped-ram) still maps its pages, and cutting them would
                # fault the VMM.  Unlinked, the old file lives on for its mappings.
                os.unlink(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise _open_error(self.path, e) from None
        # Unbuffered and seekable: the mapped-ram layout writes pages at their own offsets.
        self.file = os.fdopen(fd, "r+b", buffering=0)
        try:
            self.file.truncate(self.offset)
            self.file.seek(self.offset)
        except OSError as e:
            self.file.close()
            raise _open_error(self.path, e) from None

    @property
    def sink(self) -> BinaryIO:
        return self.file

    def finish(self) -> None:
        try:
            os.fsync(self.file.fileno())
        except OSError as e:
            raise MigrationChannelError(f"Could not write '{self.path}': {e.strerror or e}") from None

    def close(self) -> None:
        self.file.close()


class FileIncoming(IncomingChannel):
    def __init__(self, spec: str) -> None:
        self.path, self.offset = parse_file_uri(spec)
        try:
            self.file = open(self.path, "rb")  # noqa: SIM115 - kept open for the load, closed by close()
            if self.offset:
                self.file.seek(self.offset)
        except OSError as e:
            raise _open_error(self.path, e) from None

    @property
    def source(self) -> BinaryIO:
        return self.file

    def close(self) -> None:
        self.file.close()
