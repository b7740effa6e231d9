"""The migration stream's byte layer (QEMU's QEMUFile, migration/qemu-file.c).

A :class:`QEMUFileWriter` buffers what is put and hands it to a binary sink
(a file, a socket's file object, a pipe to a command); a
:class:`QEMUFileReader` takes exactly what is asked from a binary source and
raises :class:`MigrationStreamError` when the source ends early, so a
truncated stream is one clear error wherever it is cut.  Both count the bytes
that passed and keep a running CRC-32 of them, which the stream's end marker
carries (see :mod:`pemu.migration.savevm`).  Integers are big-endian, as in QEMU.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Protocol

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")

WRITE_BUFFER_SIZE = 1 << 16


class MigrationStreamError(Exception):
    """The stream ended early or could not be read or written (one line)."""


class BinarySink(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int | None: ...


class QEMUFileWriter:
    """Buffered big-endian writer with a byte count and a running CRC-32."""

    def __init__(self, sink: BinarySink) -> None:
        self.sink = sink
        self._buf = bytearray()
        self.bytes_written = 0  # handed to the sink (QEMU's qemu_file_transferred)
        self.crc = 0

    def put_buffer(self, data: bytes | bytearray | memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        if len(data) >= WRITE_BUFFER_SIZE:
            self.flush()
            self._emit(data)
            return
        self._buf += data
        if len(self._buf) >= WRITE_BUFFER_SIZE:
            self.flush()

    def put_be8(self, value: int) -> None:
        self.put_buffer(bytes((value & 0xFF,)))

    def put_be16(self, value: int) -> None:
        self.put_buffer(_BE16.pack(value & 0xFFFF))

    def put_be32(self, value: int) -> None:
        self.put_buffer(_BE32.pack(value & 0xFFFFFFFF))

    def put_be64(self, value: int) -> None:
        self.put_buffer(_BE64.pack(value & 0xFFFFFFFFFFFFFFFF))

    def put_counted_string(self, text: str) -> None:
        """A length byte then the UTF-8 bytes (QEMU's section idstr)."""
        data = text.encode()
        if len(data) > 255:
            raise MigrationStreamError(f"name too long for the stream: {text[:40]}...")
        self.put_be8(len(data))
        self.put_buffer(data)

    def flush(self) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._emit(data)

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                # A raw (unbuffered) file may take less than all of it; a buffered one takes all.
                written = self.sink.write(view[done:])
            except OSError as e:
                raise MigrationStreamError(f"failed to write the migration stream: {e.strerror or e}") from None
            if written is None:
                break  # a sink that does not count (as a buffered one, it took everything)
            if written <= 0:
                raise MigrationStreamError("failed to write the migration stream: nothing was written")
            done += written
        self.bytes_written += len(view)

    @property
    def bytes_put(self) -> int:
        """Everything put so far, flushed or not."""
        return self.bytes_written + len(self._buf)


class QEMUFileReader:
    """Exact reads with a byte count and a running CRC-32; a short read is
    :class:`MigrationStreamError` ("truncated")."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.bytes_read = 0
        self.crc = 0

    def get_buffer(self, size: int) -> bytes:
        if size == 0:
            return b""
        try:
            data = self.source.read(size)
        except OSError as e:
            raise MigrationStreamError(f"failed to read the migration stream: {e.strerror or e}") from None
        while data is not None and len(data) < size:
            try:
                more = self.source.read(size - len(data))
            except OSError as e:
                raise MigrationStreamError(f"failed to read the migration stream: {e.strerror or e}") from None
            if not more:
                break
            data += more
        if data is None or len(data) < size:
            raise MigrationStreamError("the migration stream is truncated")
        self.bytes_read += size
        self.crc = zlib.crc32(data, self.crc)
        return data

    def get_buffer_upto(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        try:
            data = self.source.read(size) or b""
        except OSError as e:
            raise MigrationStreamError(f"failed to read the migration stream: {e.strerror or e}") from None
        self.bytes_read += len(data)
        self.crc = zlib.crc32(data, self.crc)
        return data

    def get_be8(self) -> int:
        return self.get_buffer(1)[0]

    def get_be16(self) -> int:
        return int(_BE16.unpack(self.get_buffer(2))[0])

    def get_be32(self) -> int:
        return int(_BE32.unpack(self.get_buffer(4))[0])

    def get_be64(self) -> int:
        return int(_BE64.unpack(self.get_buffer(8))[0])

    def get_counted_string(self) -> str:
        data = self.get_buffer(self.get_be8())
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise MigrationStreamError("the migration stream is corrupt (a name is not UTF-8)") from None
