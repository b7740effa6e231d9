"""Generic ACPI table pieces: header, checksum, GAS, RSDP, RSDT, XSDT.

Layouts follow ACPI 6.5 chapter 5.2.  The OEM fields default to QEMU's
("BOCHS " / "BXPC    " / creator "BXPC") so that guests and tools that
special-case QEMU's tables see the same thing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

ACPI_TABLE_HEADER = struct.Struct("<4sIBB6s8sI4sI")
assert ACPI_TABLE_HEADER.size == 36
ACPI_HEADER_CHECKSUM_OFFSET = 9

ACPI_OEM_ID = "BOCHS "
ACPI_OEM_TABLE_ID = "BXPC    "
ACPI_CREATOR_ID = "BXPC"
ACPI_CREATOR_REVISION = 1
ACPI_OEM_REVISION = 1

RSDP_SIGNATURE = b"RSD PTR "
RSDP_V1_LENGTH = 20
RSDP_V2_LENGTH = 36
RSDP = struct.Struct("<8sB6sBIIQB3x")
assert RSDP.size == RSDP_V2_LENGTH


def acpi_checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with that byte counted as 0) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _fixed_ascii(text: str, size: int, what: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > size:
        raise ValueError(f"ACPI {what} {text!r} is longer than {size} characters")
    return raw.ljust(size, b" ")


@dataclass(frozen=True)
class AcpiOem:
    """The OEM and creator fields of every table's header."""

    oem_id: str = ACPI_OEM_ID
    oem_table_id: str = ACPI_OEM_TABLE_ID
    oem_revision: int = ACPI_OEM_REVISION
    creator_id: str = ACPI_CREATOR_ID
    creator_revision: int = ACPI_CREATOR_REVISION


def build_table(signature: str, revision: int, body: bytes, oem: AcpiOem = AcpiOem()) -> bytes:
    """A complete table: 36-byte header (length and checksum filled in) + body."""
    sig = signature.encode("ascii")
    if len(sig) != 4:
        raise ValueError(f"ACPI signature {signature!r} is not 4 characters")
    length = ACPI_TABLE_HEADER.size + len(body)
    header = ACPI_TABLE_HEADER.pack(
        sig, length, revision, 0,
        _fixed_ascii(oem.oem_id, 6, "OEM id"), _fixed_ascii(oem.oem_table_id, 8, "OEM table id"),
        oem.oem_revision, _fixed_ascii(oem.creator_id, 4, "creator id"), oem.creator_revision)
    table = bytearray(header + body)
    table[ACPI_HEADER_CHECKSUM_OFFSET] = acpi_checksum(table)
    return bytes(table)


@dataclass(frozen=True)
class TableHeader:
    """A table's 36-byte header, decoded."""

    signature: str
    length: int
    revision: int
    checksum: int
    oem_id: str
    oem_table_id: str
    oem_revision: int
    creator_id: str
    creator_revision: int


def parse_table_header(data: bytes, offset: int = 0) -> TableHeader:
    sig, length, rev, csum, oem, oem_tid, oem_rev, creator, creator_rev = \
        ACPI_TABLE_HEADER.unpack_from(data, offset)
    return TableHeader(sig.decode("ascii"), length, rev, csum, oem.decode("ascii"),
                       oem_tid.decode("ascii"), oem_rev, creator.decode("ascii"), creator_rev)


class AddressSpace(IntEnum):
    SYSTEM_MEMORY = 0
    SYSTEM_IO = 1
    PCI_CONFIG = 2


class AccessSize(IntEnum):
    UNDEFINED = 0
    BYTE = 1
    WORD = 2
    DWORD = 3
    QWORD = 4


GAS = struct.Struct("<BBBBQ")
assert GAS.size == 12


@dataclass(frozen=True)
class GenericAddress:
    """Generic Address Structure (5.2.3.2)."""

    space: AddressSpace
    bit_width: int
    address: int
    bit_offset: int = 0
    access_size: AccessSize = AccessSize.UNDEFINED

    def pack(self) -> bytes:
        return GAS.pack(int(self.space), self.bit_width, self.bit_offset,
                        int(self.access_size), self.address)


GAS_NONE = GenericAddress(AddressSpace.SYSTEM_MEMORY, 0, 0)


def build_rsdp(rsdt_addr: int, xsdt_addr: int, oem_id: str = ACPI_OEM_ID) -> bytes:
    """RSDP revision 2: checksum over the first 20 bytes, extended over all 36."""
    raw = bytearray(RSDP.pack(RSDP_SIGNATURE, 0, _fixed_ascii(oem_id, 6, "OEM id"), 2,
                              rsdt_addr, RSDP_V2_LENGTH, xsdt_addr, 0))
    raw[8] = acpi_checksum(raw[:RSDP_V1_LENGTH])
    raw[32] = acpi_checksum(raw)
    return bytes(raw)


def build_rsdt(table_addrs: list[int], oem: AcpiOem = AcpiOem()) -> bytes:
    for addr in table_addrs:
        if not 0 <= addr <= 0xFFFFFFFF:
            raise ValueError(f"RSDT entry {addr:#x} is above 4 GiB")
    return build_table("RSDT", 1, struct.pack(f"<{len(table_addrs)}I", *table_addrs), oem)


def build_xsdt(table_addrs: list[int], oem: AcpiOem = AcpiOem()) -> bytes:
    return build_table("XSDT", 1, struct.pack(f"<{len(table_addrs)}Q", *table_addrs), oem)
