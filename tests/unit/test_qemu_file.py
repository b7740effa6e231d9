"""The stream's byte layer against sinks that take less than they are given
(an unbuffered file, a pipe: write(2) may write part of a buffer)."""

from __future__ import annotations

import io
import os

import pytest

from pemu.migration.qemu_file import WRITE_BUFFER_SIZE, MigrationStreamError, QEMUFileReader, QEMUFileWriter


class ShortWrites:
    """A raw sink that takes at most ``most`` bytes a call, as write(2) may."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.data = bytearray()
        self.calls = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.calls += 1
        taken = bytes(data[:self.most])
        self.data += taken
        return len(taken)


def test_a_sink_taking_part_of_each_write_gets_all_of_it() -> None:
    sink = ShortWrites(1000)
    f = QEMUFileWriter(sink)
    payload = os.urandom(3 * WRITE_BUFFER_SIZE + 123)
    f.put_be32(0x12345678)
    f.put_buffer(payload)
    f.put_buffer(b"small")
    f.flush()
    assert bytes(sink.data) == b"\x12\x34\x56\x78" + payload + b"small"
    assert f.bytes_written == len(sink.data)
    assert sink.calls > 3 * WRITE_BUFFER_SIZE // 1000
    reader = QEMUFileReader(io.BytesIO(bytes(sink.data)))
    assert reader.get_be32() == 0x12345678
    assert reader.get_buffer(len(payload)) == payload
    assert reader.get_buffer(5) == b"small"
    assert reader.crc == f.crc


def test_a_sink_that_takes_nothing_is_an_error() -> None:
    f = QEMUFileWriter(ShortWrites(0))
    f.put_buffer(b"x" * 10)
    with pytest.raises(MigrationStreamError, match="nothing was written"):
        f.flush()


def test_an_unbuffered_file_sink(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "stream")
    payload = os.urandom(5 * WRITE_BUFFER_SIZE)
    with open(path, "wb", buffering=0) as raw:
        f = QEMUFileWriter(raw)
        f.put_buffer(payload)
        f.flush()
    with open(path, "rb") as fh:
        assert fh.read() == payload
