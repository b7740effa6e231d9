"""The BIOS linker/loader script (QEMU's hw/acpi/bios-linker-loader.c).

The firmware places the ACPI (and SMBIOS) blobs itself, so the VMM cannot
know their final addresses.  Instead it passes, in the fw_cfg file
``etc/table-loader``, a list of 128-byte commands the firmware runs in order:

* ALLOCATE: load fw_cfg file F into memory aligned to A, in zone HIGH
  (anywhere below 4 GiB) or FSEG (0xE0000-0xFFFFF, where the RSDP must be);
* ADD_POINTER: add the address where file S was loaded to the little-endian
  pointer of 1/2/4/8 bytes at offset O of file D (which holds the offset
  within S the pointer refers to);
* ADD_CHECKSUM: make bytes [start, start+length) of file F sum to zero by
  adjusting the byte at offset O;
* WRITE_POINTER: write the address of S (+ offset) back to the VMM through
  the fw_cfg file D (not used by the PC tables here).

All fields are little-endian; file names are NUL-padded to 56 bytes.
"""

from __future__ import annotations

import struct
from enum import IntEnum

BIOS_LINKER_LOADER_FILESZ = 56
BIOS_LINKER_LOADER_ENTRY_SIZE = 128


class LoaderCommand(IntEnum):
    ALLOCATE = 0x1
    ADD_POINTER = 0x2
    ADD_CHECKSUM = 0x3
    WRITE_POINTER = 0x4


class AllocZone(IntEnum):
    HIGH = 0x1
    FSEG = 0x2


_ALLOCATE = struct.Struct("<I56sIB")
_ADD_POINTER = struct.Struct("<I56s56sIB")
_ADD_CHECKSUM = struct.Struct("<I56sIII")
_WRITE_POINTER = struct.Struct("<I56s56sIIB")
for _s in (_ALLOCATE, _ADD_POINTER, _ADD_CHECKSUM, _WRITE_POINTER):
    assert _s.size <= BIOS_LINKER_LOADER_ENTRY_SIZE


def _file_name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= BIOS_LINKER_LOADER_FILESZ:
        raise ValueError(f"linker-loader: bad file name {name!r}")
    return raw


def _entry(packed: bytes) -> bytes:
    return packed.ljust(BIOS_LINKER_LOADER_ENTRY_SIZE, b"\0")


class BiosLinker:
    """Builds the command list, checking every command against the sizes of
    the files it names (QEMU asserts the same)."""

    def __init__(self) -> None:
        self.files: dict[str, int] = {}
        """File name -> size, for the files the linker knows (each must be ALLOCATEd)."""
        self.cmd_blob = bytearray()

    def _size(self, name: str) -> int:
        try:
            return self.files[name]
        except KeyError:
            raise ValueError(f"linker-loader: file {name!r} was not allocated") from None

    def add_allocate(self, name: str, size: int, align: int, zone: AllocZone) -> None:
        if align & (align - 1) or align <= 0:
            raise ValueError(f"linker-loader: alignment {align} is not a power of two")
        if name in self.files:
            raise ValueError(f"linker-loader: file {name!r} allocated twice")
        self.files[name] = size
        self.cmd_blob += _entry(_ALLOCATE.pack(LoaderCommand.ALLOCATE, _file_name(name), align, zone))

    def add_pointer(self, dest_file: str, dst_offset: int, size: int, src_file: str, src_offset: int) -> None:
        """Make the ``size``-byte field at ``dst_offset`` of ``dest_file`` point
        at ``src_offset`` in ``src_file``.  The field must already hold
        ``src_offset``; :meth:`patch_pointer` can write it."""
        if size not in (1, 2, 4, 8):
            raise ValueError(f"linker-loader: pointer size {size}")
        if dst_offset < 0 or dst_offset + size > self._size(dest_file):
            raise ValueError(f"linker-loader: pointer at {dst_offset:#x} is outside {dest_file}")
        if not 0 <= src_offset < self._size(src_file):
            raise ValueError(f"linker-loader: target {src_offset:#x} is outside {src_file}")
        self.cmd_blob += _entry(_ADD_POINTER.pack(LoaderCommand.ADD_POINTER, _file_name(dest_file),
                                                  _file_name(src_file), dst_offset, size))

    def add_checksum(self, name: str, start: int, length: int, checksum_offset: int) -> None:
        size = self._size(name)
        if start < 0 or length < 0 or start + length > size:
            raise ValueError(f"linker-loader: checksum range {start:#x}+{length:#x} is outside {name}")
        if not start <= checksum_offset < start + length:
            raise ValueError("linker-loader: checksum byte outside the checksummed range")
        self.cmd_blob += _entry(_ADD_CHECKSUM.pack(LoaderCommand.ADD_CHECKSUM, _file_name(name),
                                                   checksum_offset, start, length))

    def add_write_pointer(self, dest_file: str, dst_patched_offset: int, dst_patched_size: int,
                          src_file: str, src_offset: int) -> None:
        if dst_patched_size not in (1, 2, 4, 8):
            raise ValueError(f"linker-loader: pointer size {dst_patched_size}")
        if not 0 <= src_offset < self._size(src_file):
            raise ValueError(f"linker-loader: target {src_offset:#x} is outside {src_file}")
        self.cmd_blob += _entry(_WRITE_POINTER.pack(LoaderCommand.WRITE_POINTER, _file_name(dest_file),
                                                    _file_name(src_file), dst_patched_offset, src_offset,
                                                    dst_patched_size))

    @property
    def commands(self) -> bytes:
        return bytes(self.cmd_blob)


def patch_pointer(blob: bytearray, offset: int, size: int, value: int) -> None:
    """Store ``value`` as the little-endian pointer of ``size`` bytes at ``offset``."""
    blob[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def run_linker_loader(commands: bytes, files: dict[str, bytes], base_of: dict[str, int]) -> dict[str, bytes]:
    """Execute a command list the way the firmware does, with the files
    placed at ``base_of`` (tests use this to check tables as a guest sees
    them).  Returns the patched files."""
    out = {name: bytearray(data) for name, data in files.items()}
    for pos in range(0, len(commands), BIOS_LINKER_LOADER_ENTRY_SIZE):
        entry = commands[pos:pos + BIOS_LINKER_LOADER_ENTRY_SIZE]
        cmd = struct.unpack_from("<I", entry)[0]
        if cmd == LoaderCommand.ADD_POINTER:
            _, dest, src, offset, size = _ADD_POINTER.unpack_from(entry)
            d, s = dest.rstrip(b"\0").decode(), src.rstrip(b"\0").decode()
            old = int.from_bytes(out[d][offset:offset + size], "little")
            patch_pointer(out[d], offset, size, old + base_of[s])
        elif cmd == LoaderCommand.ADD_CHECKSUM:
            _, name, offset, start, length = _ADD_CHECKSUM.unpack_from(entry)
            f = out[name.rstrip(b"\0").decode()]
            f[offset] = (f[offset] - sum(f[start:start + length])) & 0xFF
    return {name: bytes(data) for name, data in out.items()}
