"""An AML encoder (ACPI 6.x, chapter 20 "ACPI Machine Language Specification").

Every builder returns the encoded term as ``bytes``; containers (scopes,
devices, methods, If/Else, packages) take their contents as arguments, so a
table reads like the ASL it stands for::

    aml_scope("\\\\_SB",
        aml_device("COM1",
            aml_name_decl("_HID", aml_eisaid("PNP0501")),
            aml_name_decl("_CRS", aml_resource_template(
                aml_io(0x3F8, 0x3F8, 0x00, 0x08),
                aml_irq_no_flags(4)))))

Names follow QEMU's hw/acpi/aml-build.c so that a reader of QEMU's table
code finds the same vocabulary.  A builder given an impossible value (a
name that is not a NameSeg, an integer wider than its field) raises
ValueError: tables are built by the board, never from guest input.
"""

from __future__ import annotations

import struct
from enum import IntEnum

Aml = bytes
TermArg = int | bytes
"""A term argument: an int is encoded with :func:`aml_int`."""

# Opcodes (ACPI 6.5, 20.3 "AML Byte Stream Byte Values").
ZERO_OP = 0x00
ONE_OP = 0x01
ALIAS_OP = 0x06
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
EXT_OP_PREFIX = 0x5B
ROOT_CHAR = 0x5C
PARENT_PREFIX_CHAR = 0x5E
NULL_NAME = 0x00
LOCAL0_OP = 0x60
ARG0_OP = 0x68
STORE_OP = 0x70
ADD_OP = 0x72
SUBTRACT_OP = 0x74
AND_OP = 0x7B
OR_OP = 0x7D
NOTIFY_OP = 0x86
LAND_OP = 0x90
LOR_OP = 0x91
LNOT_OP = 0x92
LEQUAL_OP = 0x93
LGREATER_OP = 0x94
LLESS_OP = 0x95
IF_OP = 0xA0
ELSE_OP = 0xA1
RETURN_OP = 0xA4
ONES_OP = 0xFF
# Second bytes after EXT_OP_PREFIX.
EXT_MUTEX_OP = 0x01
EXT_OP_REGION_OP = 0x80
EXT_FIELD_OP = 0x81
EXT_DEVICE_OP = 0x82

PKG_LENGTH_MAX = (1 << 28) - 1


# --- package length ----------------------------------------------------------

def encode_pkglength(value: int) -> bytes:
    """PkgLength encoding of ``value`` (20.2.4).

    Up to 63 fits the lead byte's low 6 bits; above that, bits 7-6 of the
    lead byte count the 1-3 bytes that follow, the lead byte keeps the low
    nibble and the following bytes the rest, least significant first.
    """
    if not 0 <= value <= PKG_LENGTH_MAX:
        raise ValueError(f"PkgLength {value} out of range")
    if value <= 0x3F:
        return bytes([value])
    extra = 1 if value <= 0xFFF else 2 if value <= 0xFFFFF else 3
    lead = (extra << 6) | (value & 0x0F)
    return bytes([lead]) + (value >> 4).to_bytes(extra, "little")


def _pkg(body: bytes) -> bytes:
    """``body`` prefixed by a PkgLength that counts itself and the body."""
    for width in range(1, 5):
        total = len(body) + width
        if total > PKG_LENGTH_MAX:
            break
        encoded = encode_pkglength(total)
        if len(encoded) == width:
            return encoded + body
    raise ValueError(f"AML package of {len(body)} bytes is too long")


# --- names -------------------------------------------------------------------

_LEAD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _LEAD_CHARS | frozenset("0123456789")


def aml_nameseg(seg: str) -> bytes:
    """A 4-character NameSeg, padded with '_' (``"PCI"`` -> ``PCI_``)."""
    if not 1 <= len(seg) <= 4 or seg[0] not in _LEAD_CHARS or not set(seg) <= _NAME_CHARS:
        raise ValueError(f"invalid AML NameSeg {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def aml_namestring(name: str) -> bytes:
    """A NameString: optional root '\\' or parent '^' prefixes, then segments.

    One segment is written as is, two behind DualNamePrefix, more behind
    MultiNamePrefix and a count; no segment at all is NullName.
    """
    prefix = b""
    rest = name
    if rest.startswith("\\"):
        prefix, rest = b"\\", rest[1:]
    else:
        while rest.startswith("^"):
            prefix += b"^"
            rest = rest[1:]
    segs = rest.split(".") if rest else []
    encoded = b"".join(aml_nameseg(s) for s in segs)
    if not segs:
        return prefix + bytes([NULL_NAME])
    if len(segs) == 1:
        return prefix + encoded
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + encoded
    if len(segs) > 255:
        raise ValueError(f"AML name {name!r} has too many segments")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + encoded


def aml_name(name: str) -> bytes:
    """A reference to a named object, usable as a term argument."""
    return aml_namestring(name)


# --- data objects --------------------------------------------------------------

def aml_int(value: int) -> bytes:
    """The shortest integer encoding: Zero, One, Ones, or a prefixed constant."""
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer {value} out of range")
    if value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value <= 0xFFFFFFFF:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def aml_string(text: str) -> bytes:
    """A String constant: ASCII 0x01-0x7F, NUL-terminated."""
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\0"


def _term(value: TermArg | str) -> bytes:
    if isinstance(value, bool):
        return aml_int(int(value))
    if isinstance(value, int):
        return aml_int(value)
    if isinstance(value, str):
        return aml_string(value)
    return bytes(value)


def aml_eisaid(eisaid: str) -> bytes:
    """A compressed EISA id ("PNP0501") as a DWord constant.

    Three letters of 5 bits each ('A' = 1) then four hex digits form a
    32-bit big-endian value, stored as the little-endian DWord.
    """
    if (len(eisaid) != 7 or not all("A" <= c <= "Z" for c in eisaid[:3])
            or not all(c in "0123456789ABCDEF" for c in eisaid[3:])):
        raise ValueError(f"invalid EISA id {eisaid!r}")
    letters = 0
    for c in eisaid[:3]:
        letters = (letters << 5) | (ord(c) - 0x40)
    value = (letters << 16) | int(eisaid[3:], 16)
    return bytes([DWORD_PREFIX]) + value.to_bytes(4, "big")


def aml_package(*elements: TermArg | str) -> bytes:
    """Package(){...}: ints, strings and encoded terms."""
    if len(elements) > 255:
        raise ValueError("AML Package has more than 255 elements")
    body = bytes([len(elements)]) + b"".join(_term(e) for e in elements)
    return bytes([PACKAGE_OP]) + _pkg(body)


def aml_buffer(data: bytes, size: int | None = None) -> bytes:
    """Buffer(size){data}; ``size`` defaults to len(data)."""
    body = aml_int(len(data) if size is None else size) + bytes(data)
    return bytes([BUFFER_OP]) + _pkg(body)


# --- namespace modifiers and named objects -----------------------------------------

def aml_name_decl(name: str, value: TermArg | str) -> bytes:
    """Name(name, value)."""
    return bytes([NAME_OP]) + aml_namestring(name) + _term(value)


def aml_scope(name: str, *terms: bytes) -> bytes:
    return bytes([SCOPE_OP]) + _pkg(aml_namestring(name) + b"".join(terms))


def aml_device(name: str, *terms: bytes) -> bytes:
    return bytes([EXT_OP_PREFIX, EXT_DEVICE_OP]) + _pkg(aml_namestring(name) + b"".join(terms))


def aml_method(name: str, arg_count: int, *terms: bytes, serialized: bool = False,
               sync_level: int = 0) -> bytes:
    """Method(name, arg_count, Serialized/NotSerialized, sync_level){terms}."""
    if not 0 <= arg_count <= 7:
        raise ValueError(f"AML method {name!r}: {arg_count} arguments (at most 7)")
    if not 0 <= sync_level <= 15:
        raise ValueError(f"AML method {name!r}: sync level {sync_level}")
    flags = arg_count | (0x08 if serialized else 0) | sync_level << 4
    return bytes([METHOD_OP]) + _pkg(aml_namestring(name) + bytes([flags]) + b"".join(terms))


class RegionSpace(IntEnum):
    SYSTEM_MEMORY = 0x00
    SYSTEM_IO = 0x01
    PCI_CONFIG = 0x02
    EMBEDDED_CONTROL = 0x03
    SMBUS = 0x04
    SYSTEM_CMOS = 0x05
    PCI_BAR_TARGET = 0x06


class FieldAccess(IntEnum):
    ANY = 0
    BYTE = 1
    WORD = 2
    DWORD = 3
    QWORD = 4
    BUFFER = 5


class FieldLock(IntEnum):
    NO_LOCK = 0
    LOCK = 1


class FieldUpdate(IntEnum):
    PRESERVE = 0
    WRITE_AS_ONES = 1
    WRITE_AS_ZEROS = 2


def aml_operation_region(name: str, space: RegionSpace, offset: TermArg, length: TermArg) -> bytes:
    return (bytes([EXT_OP_PREFIX, EXT_OP_REGION_OP]) + aml_namestring(name)
            + bytes([int(space)]) + _term(offset) + _term(length))


def aml_named_field(name: str, bits: int) -> bytes:
    """A NamedField: NameSeg plus its width in bits (a plain PkgLength value)."""
    return aml_nameseg(name) + encode_pkglength(bits)


def aml_reserved_field(bits: int) -> bytes:
    """Skip ``bits`` bits of the region (Offset() in ASL)."""
    return bytes([0x00]) + encode_pkglength(bits)


def aml_field(region: str, *elements: bytes, access: FieldAccess = FieldAccess.BYTE,
              lock: FieldLock = FieldLock.NO_LOCK,
              update: FieldUpdate = FieldUpdate.PRESERVE) -> bytes:
    flags = int(access) | int(lock) << 4 | int(update) << 5
    body = aml_namestring(region) + bytes([flags]) + b"".join(elements)
    return bytes([EXT_OP_PREFIX, EXT_FIELD_OP]) + _pkg(body)


# --- statements and expressions ------------------------------------------------------

def aml_local(n: int) -> bytes:
    if not 0 <= n <= 7:
        raise ValueError(f"Local{n} does not exist")
    return bytes([LOCAL0_OP + n])


def aml_arg(n: int) -> bytes:
    if not 0 <= n <= 6:
        raise ValueError(f"Arg{n} does not exist")
    return bytes([ARG0_OP + n])


def aml_return(value: TermArg | str) -> bytes:
    return bytes([RETURN_OP]) + _term(value)


def aml_store(source: TermArg | str, target: bytes) -> bytes:
    return bytes([STORE_OP]) + _term(source) + target


def aml_equal(a: TermArg, b: TermArg) -> bytes:
    """LEqual(a, b)."""
    return bytes([LEQUAL_OP]) + _term(a) + _term(b)


def aml_lgreater(a: TermArg, b: TermArg) -> bytes:
    return bytes([LGREATER_OP]) + _term(a) + _term(b)


def aml_lless(a: TermArg, b: TermArg) -> bytes:
    return bytes([LLESS_OP]) + _term(a) + _term(b)


def aml_lnot(a: TermArg) -> bytes:
    return bytes([LNOT_OP]) + _term(a)


def aml_land(a: TermArg, b: TermArg) -> bytes:
    return bytes([LAND_OP]) + _term(a) + _term(b)


def aml_lor(a: TermArg, b: TermArg) -> bytes:
    return bytes([LOR_OP]) + _term(a) + _term(b)


def _binary(op: int, a: TermArg, b: TermArg, target: bytes | None) -> bytes:
    return bytes([op]) + _term(a) + _term(b) + (target if target is not None else bytes([NULL_NAME]))


def aml_and(a: TermArg, b: TermArg, target: bytes | None = None) -> bytes:
    return _binary(AND_OP, a, b, target)


def aml_or(a: TermArg, b: TermArg, target: bytes | None = None) -> bytes:
    return _binary(OR_OP, a, b, target)


def aml_add(a: TermArg, b: TermArg, target: bytes | None = None) -> bytes:
    return _binary(ADD_OP, a, b, target)


def aml_subtract(a: TermArg, b: TermArg, target: bytes | None = None) -> bytes:
    return _binary(SUBTRACT_OP, a, b, target)


def aml_notify(obj: bytes, value: TermArg) -> bytes:
    return bytes([NOTIFY_OP]) + obj + _term(value)


def aml_if(predicate: TermArg, *terms: bytes) -> bytes:
    return bytes([IF_OP]) + _pkg(_term(predicate) + b"".join(terms))


def aml_else(*terms: bytes) -> bytes:
    """Else{...}: place it right after the aml_if it belongs to."""
    return bytes([ELSE_OP]) + _pkg(b"".join(terms))


# --- resource descriptors (6.4 "Resource Data Types for ACPI") -------------------------

def _check(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {value:#x} does not fit in {bits} bits")
    return value


def aml_io(min_base: int, max_base: int, align: int, length: int, decode16: bool = True) -> bytes:
    """IO(Decode16/Decode10, min, max, alignment, length): small item 0x47."""
    return struct.pack("<BBHHBB", 0x47, 1 if decode16 else 0,
                       _check(min_base, 16, "IO minimum"), _check(max_base, 16, "IO maximum"),
                       _check(align, 8, "IO alignment"), _check(length, 8, "IO length"))


def aml_irq_no_flags(irq: int) -> bytes:
    """IRQNoFlags(){irq}: small item 0x22 with a 16-bit IRQ mask."""
    if not 0 <= irq <= 15:
        raise ValueError(f"IRQ {irq} is not an ISA IRQ")
    return struct.pack("<BH", 0x22, 1 << irq)


def aml_memory32_fixed(base: int, length: int, read_write: bool = True) -> bytes:
    """Memory32Fixed(ReadWrite/ReadOnly, base, length): large item 0x86."""
    return struct.pack("<BHBII", 0x86, 9, 1 if read_write else 0,
                       _check(base, 32, "memory base"), _check(length, 32, "memory length"))


class AddressSpaceType(IntEnum):
    MEMORY = 0
    IO = 1
    BUS_NUMBER = 2


class MemCacheable(IntEnum):
    NON_CACHEABLE = 0
    CACHEABLE = 1
    WRITE_COMBINING = 2
    PREFETCHABLE = 3


class IsaRanges(IntEnum):
    NON_ISA_ONLY = 1
    ISA_ONLY = 2
    ENTIRE_RANGE = 3


def _general_flags(consumer: bool, subtractive: bool, min_fixed: bool, max_fixed: bool) -> int:
    return ((1 if consumer else 0) | (2 if subtractive else 0)
            | (4 if min_fixed else 0) | (8 if max_fixed else 0))


_ADDRESS_SPACE = {
    16: (0x88, "H"),   # Word Address Space Descriptor
    32: (0x87, "I"),   # DWord
    64: (0x8A, "Q"),   # QWord
}


def _address_space(bits: int, kind: AddressSpaceType, general: int, specific: int,
                   granularity: int, min_addr: int, max_addr: int, translation: int,
                   length: int | None) -> bytes:
    tag, fmt = _ADDRESS_SPACE[bits]
    if length is None:
        length = max_addr - min_addr + 1
    values = [_check(v, bits, what) for v, what in (
        (granularity, "granularity"), (min_addr, "minimum"), (max_addr, "maximum"),
        (translation, "translation"), (length, "length"))]
    body = struct.pack("<BBB5" + fmt, int(kind), general, specific, *values)
    return struct.pack("<BH", tag, len(body)) + body


def aml_word_bus_number(min_bus: int, max_bus: int, *, length: int | None = None,
                        granularity: int = 0, translation: int = 0, consumer: bool = False,
                        min_fixed: bool = True, max_fixed: bool = True,
                        subtractive: bool = False) -> bytes:
    """WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, ...)."""
    return _address_space(16, AddressSpaceType.BUS_NUMBER,
                          _general_flags(consumer, subtractive, min_fixed, max_fixed), 0,
                          granularity, min_bus, max_bus, translation, length)


def aml_word_io(min_base: int, max_base: int, *, length: int | None = None,
                granularity: int = 0, translation: int = 0,
                isa_ranges: IsaRanges = IsaRanges.ENTIRE_RANGE, consumer: bool = False,
                min_fixed: bool = True, max_fixed: bool = True,
                subtractive: bool = False) -> bytes:
    """WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)."""
    return _address_space(16, AddressSpaceType.IO,
                          _general_flags(consumer, subtractive, min_fixed, max_fixed),
                          int(isa_ranges), granularity, min_base, max_base, translation, length)


def _memory_flags(cacheable: MemCacheable, read_write: bool) -> int:
    return (1 if read_write else 0) | int(cacheable) << 1


def aml_dword_memory(min_base: int, max_base: int, *, length: int | None = None,
                     granularity: int = 0, translation: int = 0,
                     cacheable: MemCacheable = MemCacheable.NON_CACHEABLE,
                     read_write: bool = True, consumer: bool = False, min_fixed: bool = True,
                     max_fixed: bool = True, subtractive: bool = False) -> bytes:
    """DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, ...)."""
    return _address_space(32, AddressSpaceType.MEMORY,
                          _general_flags(consumer, subtractive, min_fixed, max_fixed),
                          _memory_flags(cacheable, read_write),
                          granularity, min_base, max_base, translation, length)


def aml_qword_memory(min_base: int, max_base: int, *, length: int | None = None,
                     granularity: int = 0, translation: int = 0,
                     cacheable: MemCacheable = MemCacheable.NON_CACHEABLE,
                     read_write: bool = True, consumer: bool = False, min_fixed: bool = True,
                     max_fixed: bool = True, subtractive: bool = False) -> bytes:
    """QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, ...)."""
    return _address_space(64, AddressSpaceType.MEMORY,
                          _general_flags(consumer, subtractive, min_fixed, max_fixed),
                          _memory_flags(cacheable, read_write),
                          granularity, min_base, max_base, translation, length)


def aml_end_tag(resources: bytes) -> bytes:
    """End Tag (0x79) whose checksum makes ``resources`` plus the tag sum to 0."""
    return bytes([0x79, (-(sum(resources) + 0x79)) & 0xFF])


def aml_resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(){...}: a Buffer of the descriptors and an End Tag."""
    data = b"".join(descriptors)
    return aml_buffer(data + aml_end_tag(data))
