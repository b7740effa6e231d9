"""SMBIOS structure bytes, the table walk, the entry point and -smbios."""

from __future__ import annotations

import struct
import uuid

import pytest

from pemu.hw.smbios.smbios import (
    SmbiosConfig,
    SmbiosType1,
    build_type1,
    build_type19,
    build_type32,
    build_type127,
    smbios_entry_add,
    smbios_get_tables,
)
from pemu.util.error import UserError


def walk(blob: bytes) -> list[tuple[int, int, bytes, list[bytes]]]:
    """(type, handle, formatted part, strings) of every structure."""
    out = []
    pos = 0
    while pos < len(blob):
        kind, length, handle = struct.unpack_from("<BBH", blob, pos)
        formatted = blob[pos:pos + length]
        end = blob.index(b"\0\0", pos + length)
        strings = [s for s in blob[pos + length:end].split(b"\0") if s]
        out.append((kind, handle, formatted, strings))
        pos = end + 2
    return out


def test_type1_bytes() -> None:
    u = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    t = SmbiosType1()
    t.manufacturer, t.product, t.uuid = "QEMU", "P", u
    raw = build_type1(t)
    expected = (bytes([1, 27, 0x00, 0x01])          # type 1, length 27, handle 0x100
                + bytes([1, 2, 0, 0])               # manufacturer, product; no version/serial
                + bytes.fromhex("33221100554477668899aabbccddeeff")  # first 3 fields LE
                + bytes([6, 0, 0])                  # wake-up: power switch; no sku/family
                + b"QEMU\0P\0\0")
    assert raw == expected


def test_fixed_small_structures() -> None:
    assert build_type127() == b"\x7f\x04\x00\x7f\0\0"
    assert build_type32() == b"\x20\x0b\x00\x20" + bytes(7) + b"\0\0"
    # 1 MiB at 1 MiB: kilobyte start 0x400, inclusive end 0x7ff, array handle 0x1000, width 1.
    assert build_type19(0, 1 << 20, 1 << 20) == (b"\x13\x1f\x00\x13" + struct.pack("<IIHBQQ", 0x400, 0x7FF, 0x1000, 1, 0, 0)
                                                 + b"\0\0")
    big = build_type19(1, 1 << 42, 1 << 30)
    assert struct.unpack_from("<IIHBQQ", big, 4) == (0xFFFFFFFF, 0xFFFFFFFF, 0x1000, 1, 1 << 42, (1 << 42) + (1 << 30) - 1)


def test_whole_table_and_anchor() -> None:
    cfg = SmbiosConfig()
    cfg.set_defaults("QEMU", "Standard PC (Q35 + ICH9, 2009)", "pc-q35-7.2")
    ram = 20 << 30
    t = smbios_get_tables(cfg, ram, [(0, 0x80000000), (1 << 32, ram - 0x80000000)], sockets=2, cores=2)
    structs = walk(t.tables)
    assert [(k, h) for k, h, _, _ in structs] == [
        (0, 0), (1, 0x100), (3, 0x300), (4, 0x400), (4, 0x401), (16, 0x1000), (17, 0x1100), (17, 0x1101),
        (19, 0x1300), (19, 0x1301), (32, 0x2000), (127, 0x7F00)]
    lengths = {k: len(f) for k, _, f, _ in structs}
    assert lengths == {0: 24, 1: 27, 3: 22, 4: 42, 16: 23, 17: 40, 19: 31, 32: 11, 127: 4}
    t1 = structs[1]
    assert t1[3] == [b"QEMU", b"Standard PC (Q35 + ICH9, 2009)", b"pc-q35-7.2"]
    assert structs[3][3][0] == b"CPU 0" and structs[4][3][0] == b"CPU 1"
    # Type 17: 16 GiB then 4 GiB, in MiB.
    assert struct.unpack_from("<H", structs[6][2], 12)[0] == 16384
    assert struct.unpack_from("<H", structs[7][2], 12)[0] == 4096
    assert struct.unpack_from("<H", structs[5][2], 13)[0] == 2     # number of devices

    ep = t.anchor
    assert len(ep) == 31 and ep[:4] == b"_SM_" and ep[16:21] == b"_DMI_"
    assert sum(ep) & 0xFF == 0 and sum(ep[16:]) & 0xFF == 0
    assert (ep[6], ep[7]) == (2, 8)
    assert struct.unpack_from("<H", ep, 0x16)[0] == len(t.tables)
    assert struct.unpack_from("<H", ep, 0x1C)[0] == len(structs)
    assert struct.unpack_from("<H", ep, 0x08)[0] == t.max_structure_size
    assert ep[0x1E] == 0x28


class Opts:
    def __init__(self, **kw: str) -> None:
        self.kw = kw

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.kw.get(key, default)

    def items(self) -> list[tuple[str, str]]:
        return list(self.kw.items())


def test_smbios_option() -> None:
    cfg = SmbiosConfig()
    smbios_entry_add(cfg, Opts(type="1", manufacturer="ACME", serial="42",
                               uuid="00112233-4455-6677-8899-aabbccddeeff"))
    smbios_entry_add(cfg, Opts(type="0", vendor="V", release="1.2", uefi="on"))
    smbios_entry_add(cfg, Opts(type="4", **{"max-speed": "3000"}))
    cfg.set_defaults("QEMU", "Q35", "pc-q35-7.2")
    assert cfg.type1.manufacturer == "ACME" and cfg.type1.product == "Q35"
    assert (cfg.type0.major, cfg.type0.minor, cfg.type0.uefi) == (1, 2, True)
    assert cfg.type4.max_speed == 3000
    with pytest.raises(UserError, match="Invalid parameter 'colour'"):
        smbios_entry_add(cfg, Opts(type="1", colour="red"))
    with pytest.raises(UserError, match="Don't know how to build fields for SMBIOS type 9"):
        smbios_entry_add(cfg, Opts(type="9"))
    with pytest.raises(UserError, match="Invalid UUID"):
        smbios_entry_add(cfg, Opts(type="1", uuid="nope"))
    with pytest.raises(UserError, match="out of range"):
        smbios_entry_add(cfg, Opts(type="17", speed="70000"))
