"""Linker-loader command bytes, worked out from the 128-byte entry layout."""

from __future__ import annotations

import pytest

from pemu.hw.acpi.bios_linker_loader import AllocZone, BiosLinker, patch_pointer, run_linker_loader


def name56(name: bytes) -> bytes:
    return name + bytes(56 - len(name))


def test_allocate_bytes() -> None:
    linker = BiosLinker()
    linker.add_allocate("etc/acpi/rsdp", 20, 16, AllocZone.FSEG)
    expected = b"\x01\0\0\0" + name56(b"etc/acpi/rsdp") + b"\x10\0\0\0" + b"\x02"
    assert linker.commands == expected + bytes(128 - len(expected))


def test_add_pointer_bytes() -> None:
    linker = BiosLinker()
    linker.add_allocate("etc/acpi/tables", 0x200, 64, AllocZone.HIGH)
    linker.add_allocate("etc/acpi/rsdp", 20, 16, AllocZone.FSEG)
    linker.add_pointer("etc/acpi/rsdp", 16, 4, "etc/acpi/tables", 0x100)
    cmd = linker.commands[256:384]
    expected = (b"\x02\0\0\0" + name56(b"etc/acpi/rsdp") + name56(b"etc/acpi/tables")
                + b"\x10\0\0\0" + b"\x04")
    assert cmd == expected + bytes(128 - len(expected))
    assert len(linker.commands) == 3 * 128


def test_add_checksum_bytes() -> None:
    linker = BiosLinker()
    linker.add_allocate("etc/acpi/tables", 0x100, 64, AllocZone.HIGH)
    linker.add_checksum("etc/acpi/tables", 0x40, 0x24, 0x49)
    cmd = linker.commands[128:]
    expected = b"\x03\0\0\0" + name56(b"etc/acpi/tables") + b"\x49\0\0\0" + b"\x40\0\0\0" + b"\x24\0\0\0"
    assert cmd == expected + bytes(128 - len(expected))


def test_write_pointer_bytes() -> None:
    linker = BiosLinker()
    linker.add_allocate("etc/vmgenid_guid", 0x1000, 4096, AllocZone.HIGH)
    linker.add_write_pointer("etc/vmgenid_addr", 0, 8, "etc/vmgenid_guid", 40)
    cmd = linker.commands[128:]
    expected = (b"\x04\0\0\0" + name56(b"etc/vmgenid_addr") + name56(b"etc/vmgenid_guid")
                + b"\0\0\0\0" + b"\x28\0\0\0" + b"\x08")
    assert cmd == expected + bytes(128 - len(expected))


def test_commands_are_checked() -> None:
    linker = BiosLinker()
    linker.add_allocate("a", 16, 16, AllocZone.HIGH)
    with pytest.raises(ValueError):
        linker.add_pointer("a", 14, 4, "a", 0)       # field past the end
    with pytest.raises(ValueError):
        linker.add_pointer("a", 0, 3, "a", 0)        # odd size
    with pytest.raises(ValueError):
        linker.add_pointer("a", 0, 4, "b", 0)        # unknown file
    with pytest.raises(ValueError):
        linker.add_checksum("a", 0, 17, 0)
    with pytest.raises(ValueError):
        linker.add_allocate("a", 16, 16, AllocZone.HIGH)
    with pytest.raises(ValueError):
        linker.add_allocate("b", 16, 24, AllocZone.HIGH)
    with pytest.raises(ValueError):
        linker.add_allocate("x" * 56, 16, 16, AllocZone.HIGH)


def test_run_patches_pointer_and_checksum() -> None:
    linker = BiosLinker()
    table = bytearray(16)
    patch_pointer(table, 4, 4, 8)  # points at offset 8 of itself
    linker.add_allocate("t", 16, 16, AllocZone.HIGH)
    linker.add_pointer("t", 4, 4, "t", 8)
    linker.add_checksum("t", 0, 16, 0)
    out = run_linker_loader(linker.commands, {"t": bytes(table)}, {"t": 0x1000})["t"]
    assert int.from_bytes(out[4:8], "little") == 0x1008
    assert sum(out) & 0xFF == 0
