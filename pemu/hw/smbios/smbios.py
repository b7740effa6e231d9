"""SMBIOS tables (QEMU's hw/smbios/smbios.c), version 2.8.

The structures the PC offers the firmware in the fw_cfg files
``etc/smbios/smbios-tables`` (the structure table) and
``etc/smbios/smbios-anchor`` (the 31-byte "_SM_" entry point; the firmware
fills in the table address and fixes the checksums):

* 0 BIOS information, 1 system, 3 chassis, 4 one per processor socket,
* 16 physical memory array, 17 one per DIMM (RAM split in 16 GiB pieces),
* 19 one per RAM range of the memory map, 32 boot status, 127 end of table.

Each structure is a formatted part (type, length, handle, fields) followed
by its strings, each NUL-terminated, and one more NUL (two NULs when it has
no strings).  A string field holds the 1-based index of its string, 0 for
none.  Handles follow QEMU's numbering (type << 8, plus the instance).

``-smbios type=N,field=value`` overrides the defaults (:func:`smbios_entry_add`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pemu.util.error import UserError

if TYPE_CHECKING:
    import uuid as uuid_mod  # imported where a UUID is parsed: uuid pulls in platform

SMBIOS_MAJOR, SMBIOS_MINOR = 2, 8
SMBIOS_21_ANCHOR = struct.Struct("<4sBBBBHB5s5sBHIHB")
"""The SMBIOS 2.1 (32-bit) entry point: anchor, checksum, length, version,
max structure size, revision, formatted area, "_DMI_", intermediate
checksum, table length, table address, structure count, BCD revision."""
assert SMBIOS_21_ANCHOR.size == 0x1F

MAX_DIMM_SIZE = 16 << 30
ONE_KB, ONE_MB, ONE_GB = 1 << 10, 1 << 20, 1 << 30

T0_BASE, T1_BASE, T2_BASE, T3_BASE, T4_BASE = 0x000, 0x100, 0x200, 0x300, 0x400
T16_BASE, T17_BASE, T19_BASE, T32_BASE, T127_BASE = 0x1000, 0x1100, 0x1300, 0x2000, 0x7F00

class _Strings:
    """The string set of one structure: fields refer to strings by index."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def add(self, text: str | None) -> int:
        if not text:
            return 0
        raw = text.encode("utf-8", "replace").replace(b"\0", b"")
        if not raw:
            return 0
        self.items.append(raw)
        return len(self.items)

    def pack(self) -> bytes:
        if not self.items:
            return b"\0\0"
        return b"".join(s + b"\0" for s in self.items) + b"\0"


def _structure(kind: int, handle: int, fmt: str, strings: _Strings, *fields: int | bytes) -> bytes:
    body = struct.pack("<" + fmt, *fields)
    return struct.pack("<BBH", kind, 4 + len(body), handle) + body + strings.pack()


@dataclass
class SmbiosType0:
    """SMBIOS type 0 (BIOS information) strings and version."""

    vendor: str | None = None
    version: str | None = None
    date: str | None = None
    major: int = 0
    minor: int = 0
    uefi: bool = False


@dataclass
class SmbiosType1:
    """SMBIOS type 1 (system information)."""

    manufacturer: str | None = None
    product: str | None = None
    version: str | None = None
    serial: str | None = None
    sku: str | None = None
    family: str | None = None
    uuid: uuid_mod.UUID | None = None


@dataclass
class SmbiosType3:
    """SMBIOS type 3 (chassis)."""

    manufacturer: str | None = None
    version: str | None = None
    serial: str | None = None
    asset: str | None = None
    sku: str | None = None


@dataclass
class SmbiosType4:
    """SMBIOS type 4 (processor), one structure per socket."""

    sock_pfx: str = "CPU"
    manufacturer: str = "QEMU"
    version: str | None = None
    serial: str | None = None
    asset: str | None = None
    part: str | None = None
    max_speed: int = 2000
    current_speed: int = 2000
    processor_id: int = 0
    processor_family: int = 0x01


@dataclass
class SmbiosType17:
    """SMBIOS type 17 (memory device), one per DIMM."""

    loc_pfx: str = "DIMM"
    bank: str | None = None
    manufacturer: str = "QEMU"
    serial: str | None = None
    asset: str | None = None
    part: str | None = None
    speed: int = 0


@dataclass
class SmbiosConfig:
    """Everything the tables say; the board fills the defaults, -smbios overrides them."""

    type0: SmbiosType0 = field(default_factory=SmbiosType0)
    type1: SmbiosType1 = field(default_factory=SmbiosType1)
    type3: SmbiosType3 = field(default_factory=SmbiosType3)
    type4: SmbiosType4 = field(default_factory=SmbiosType4)
    type17: SmbiosType17 = field(default_factory=SmbiosType17)

    def set_defaults(self, manufacturer: str, product: str, version: str) -> None:
        """smbios_set_defaults: fill the fields the user left alone."""
        t1, t3 = self.type1, self.type3
        t1.manufacturer = t1.manufacturer or manufacturer
        t1.product = t1.product or product
        t1.version = t1.version or version
        t3.manufacturer = t3.manufacturer or manufacturer
        t3.version = t3.version or version
        self.type4.version = self.type4.version or version
        self.type0.vendor = self.type0.vendor or "pemu"
        self.type0.version = self.type0.version or version
        self.type0.date = self.type0.date or "04/01/2014"


# --- the structures ----------------------------------------------------------------------------


def smbios_encode_uuid(value: uuid_mod.UUID | None) -> bytes:
    """SMBIOS 2.6+ stores the first three UUID fields little-endian."""
    return bytes(16) if value is None else value.bytes_le


def build_type0(t: SmbiosType0) -> bytes:
    s = _Strings()
    vendor, version = s.add(t.vendor), s.add(t.version)
    date = s.add(t.date)
    ext2 = 0x14 | (0x08 if t.uefi else 0)  # target content distribution | VM (| UEFI)
    return _structure(0, T0_BASE, "BBHBBQBBBBBB", s, vendor, version, 0xE800, date, 0,
                      0x08, 0, ext2, t.major, t.minor, 0xFF, 0xFF)


def build_type1(t: SmbiosType1) -> bytes:
    s = _Strings()
    man, prod, ver, serial = s.add(t.manufacturer), s.add(t.product), s.add(t.version), s.add(t.serial)
    sku, family = s.add(t.sku), s.add(t.family)
    return _structure(1, T1_BASE, "BBBB16sBBB", s, man, prod, ver, serial, smbios_encode_uuid(t.uuid),
                      0x06, sku, family)


def build_type3(t: SmbiosType3) -> bytes:
    s = _Strings()
    man = s.add(t.manufacturer)
    ver, serial, asset = s.add(t.version), s.add(t.serial), s.add(t.asset)
    sku = s.add(t.sku)
    return _structure(3, T3_BASE, "BBBBBBBBBIBBBBB", s, man, 0x01, ver, serial, asset,
                      0x03, 0x03, 0x03, 0x02, 0, 0, 0, 0, 0, sku)


def build_type4(t: SmbiosType4, instance: int, cores: int, threads: int) -> bytes:
    s = _Strings()
    sock = s.add(f"{t.sock_pfx} {instance}")
    man = s.add(t.manufacturer)
    ver = s.add(t.version)
    serial, asset, part = s.add(t.serial), s.add(t.asset), s.add(t.part)
    return _structure(4, T4_BASE + instance, "BBBBQBBHHHBBHHHBBBBBBHH", s,
                      sock, 0x03, t.processor_family, man, t.processor_id & (1 << 64) - 1, ver, 0,
                      0, t.max_speed & 0xFFFF, t.current_speed & 0xFFFF, 0x41, 0x01,
                      0xFFFF, 0xFFFF, 0xFFFF, serial, asset, part,
                      min(cores, 0xFF), min(cores, 0xFF), min(threads, 0xFF), 0x02, t.processor_family)


def build_type16(ram_size: int, dimms: int) -> bytes:
    kb = ram_size // ONE_KB
    if kb < 0x80000000:
        capacity, extended = kb, 0
    else:
        capacity, extended = 0x80000000, ram_size
    return _structure(16, T16_BASE, "BBBIHHQ", _Strings(), 0x01, 0x03, 0x06, capacity, 0xFFFE,
                      dimms, extended)


def build_type17(t: SmbiosType17, instance: int, size: int) -> bytes:
    s = _Strings()
    mb = size // ONE_MB
    if mb < 0x7FFF:
        size_field, extended = mb, 0
    else:
        size_field, extended = 0x7FFF, mb
    loc = s.add(f"{t.loc_pfx} {instance}")
    bank = s.add(t.bank)
    man, serial, asset, part = s.add(t.manufacturer), s.add(t.serial), s.add(t.asset), s.add(t.part)
    return _structure(17, T17_BASE + instance, "HHHHHBBBBBHHBBBBBIHHHH", s,
                      T16_BASE, 0xFFFE, 0xFFFF, 0xFFFF, size_field, 0x09, 0, loc, bank, 0x07, 0x02,
                      t.speed & 0xFFFF, man, serial, asset, part, 0, extended, t.speed & 0xFFFF, 0, 0, 0)


def build_type19(instance: int, start: int, size: int) -> bytes:
    end = start + size - 1
    if end < 4 << 40:  # fits in 32-bit kilobyte fields
        return _structure(19, T19_BASE + instance, "IIHBQQ", _Strings(), start // ONE_KB, end // ONE_KB,
                          T16_BASE, 1, 0, 0)
    return _structure(19, T19_BASE + instance, "IIHBQQ", _Strings(), 0xFFFFFFFF, 0xFFFFFFFF,
                      T16_BASE, 1, start, end)


def build_type32() -> bytes:
    return _structure(32, T32_BASE, "6sB", _Strings(), bytes(6), 0)


def build_type127() -> bytes:
    return _structure(127, T127_BASE, "", _Strings())


@dataclass(frozen=True)
class SmbiosTables:
    """The structure table and its entry point, as fw_cfg hands them to firmware."""

    tables: bytes
    anchor: bytes
    count: int
    max_structure_size: int


def smbios_get_tables(cfg: SmbiosConfig, ram_size: int, mem_ranges: list[tuple[int, int]],
                      sockets: int = 1, cores: int = 1, threads: int = 1,
                      table_addr: int = 0) -> SmbiosTables:
    """All structures and the 2.1 entry point for them (at ``table_addr``;
    0 when the firmware places them)."""
    structures = [build_type0(cfg.type0), build_type1(cfg.type1), build_type3(cfg.type3)]
    structures += [build_type4(cfg.type4, i, cores, cores * threads) for i in range(sockets)]
    dimms = max(1, -(-ram_size // MAX_DIMM_SIZE))
    structures.append(build_type16(ram_size, dimms))
    for i in range(dimms):
        size = min(MAX_DIMM_SIZE, ram_size - i * MAX_DIMM_SIZE) if ram_size else 0
        structures.append(build_type17(cfg.type17, i, size))
    structures += [build_type19(i, start, size) for i, (start, size) in enumerate(mem_ranges)]
    structures += [build_type32(), build_type127()]
    blob = b"".join(structures)
    max_size = max(len(st) for st in structures)
    return SmbiosTables(blob, build_entry_point_21(len(blob), len(structures), max_size, table_addr),
                        len(structures), max_size)


def build_entry_point_21(table_length: int, count: int, max_size: int, table_addr: int = 0) -> bytes:
    ep = bytearray(SMBIOS_21_ANCHOR.pack(
        b"_SM_", 0, SMBIOS_21_ANCHOR.size, SMBIOS_MAJOR, SMBIOS_MINOR, max_size, 0, bytes(5),
        b"_DMI_", 0, table_length, table_addr, count, (SMBIOS_MAJOR << 4) | SMBIOS_MINOR))
    ep[0x15] = -sum(ep[0x10:]) & 0xFF          # intermediate checksum over the "_DMI_" part
    ep[0x04] = -sum(ep) & 0xFF                 # whole entry point
    return bytes(ep)


# --- -smbios type=N,... ----------------------------------------------------------------------------

_TYPE_FIELDS: dict[int, dict[str, str]] = {
    0: {"vendor": "str", "version": "str", "date": "str", "release": "release", "uefi": "bool"},
    1: {"manufacturer": "str", "product": "str", "version": "str", "serial": "str", "uuid": "uuid",
        "sku": "str", "family": "str"},
    3: {"manufacturer": "str", "version": "str", "serial": "str", "asset": "str", "sku": "str"},
    4: {"sock_pfx": "str", "manufacturer": "str", "version": "str", "serial": "str", "asset": "str",
        "part": "str", "max-speed": "int", "current-speed": "int", "processor-id": "int"},
    17: {"loc_pfx": "str", "bank": "str", "manufacturer": "str", "serial": "str", "asset": "str",
         "part": "str", "speed": "int"},
}


def smbios_entry_add(cfg: SmbiosConfig, opts: Any, location: str | None = None) -> None:
    """Apply one -smbios option (a QemuOpts) to ``cfg`` (QEMU's smbios_entry_add)."""
    if opts.get("file"):
        raise UserError("-smbios file=... is not supported by pemu", location)
    text = opts.get("type")
    if text is None:
        raise UserError("Must specify type= or file=", location)
    try:
        kind = int(text, 0)
    except ValueError:
        raise UserError("Parameter 'type' expects a number", location) from None
    fields = _TYPE_FIELDS.get(kind)
    if fields is None:
        raise UserError(f"Don't know how to build fields for SMBIOS type {kind}", location)
    target = {0: cfg.type0, 1: cfg.type1, 3: cfg.type3, 4: cfg.type4, 17: cfg.type17}[kind]
    for name, value in opts.items():
        if name == "type":
            continue
        kind_of = fields.get(name)
        if kind_of is None:
            raise UserError(f"Invalid parameter '{name}'", location)
        attr = name.replace("-", "_")
        if kind_of == "str":
            setattr(target, attr, value)
        elif kind_of == "bool":
            if value not in ("on", "off", "yes", "no", "true", "false"):
                raise UserError(f"Parameter '{name}' expects 'on' or 'off'", location)
            setattr(target, attr, value in ("on", "yes", "true"))
        elif kind_of == "int":
            try:
                number = int(value, 0)
            except ValueError:
                raise UserError(f"Parameter '{name}' expects a number", location) from None
            limit = (1 << 64) if name == "processor-id" else (1 << 16)
            if not 0 <= number < limit:
                raise UserError(f"Parameter '{name}' is out of range", location)
            setattr(target, attr, number)
        elif kind_of == "uuid":
            from uuid import UUID

            try:
                setattr(target, attr, UUID(value))
            except ValueError:
                raise UserError("Invalid UUID", location) from None
        elif kind_of == "release":
            major, _, minor = value.partition(".")
            if not (major.isdigit() and minor.isdigit() and int(major) < 256 and int(minor) < 256):
                raise UserError("Invalid release", location)
            cfg.type0.major, cfg.type0.minor = int(major), int(minor)
