"""Size, number and boolean parsing (pemu.util.cutils)."""

from __future__ import annotations

import pytest

from pemu.util.cutils import (
    UINT64_MAX,
    EiB,
    GiB,
    KiB,
    MiB,
    SizeError,
    SizeParseError,
    parse_bool,
    parse_uint64,
    qemu_strtosz,
    qemu_strtosz_metric,
    qemu_strtosz_MiB,
    size_to_str,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("4G", 4 * GiB),
        ("4g", 4 * GiB),
        ("512M", 512 * MiB),
        ("512m", 512 * MiB),
        ("1.5G", 3 * GiB // 2),
        ("12k", 12 * KiB),
        ("12K", 12 * KiB),
        ("7b", 7),
        ("7B", 7),
        ("1T", 1 << 40),
        ("1P", 1 << 50),
        ("15E", 15 * EiB),
        ("0x1000", 0x1000),
        ("0x1b", 27),  # B is a hex digit here, not the byte suffix
        ("0X7fEE", 0x7FEE),
        ("08", 8),  # no octal
        (".5K", 512),
        ("1.k", KiB),
        ("1.0", 1),  # a zero fraction needs no suffix
        ("12.345M", 12944671),  # rounded to the nearest byte
        ("  12k", 12 * KiB),
        ("+3M", 3 * MiB),
        ("18446744073709551615", UINT64_MAX),
        ("0000000000000000000000000000001K", KiB),
    ],
)
def test_strtosz_accepts(text: str, expected: int) -> None:
    assert qemu_strtosz(text) == expected


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", SizeError.INVALID),
        ("   ", SizeError.INVALID),
        ("foo", SizeError.INVALID),
        ("1.5", SizeError.INVALID),  # a fraction of a byte
        ("1.5B", SizeError.INVALID),
        ("12x", SizeError.INVALID),
        ("4kb", SizeError.INVALID),  # trailing junk after the suffix
        ("1e3", SizeError.INVALID),  # no exponents
        ("0x10M", SizeError.INVALID),  # no suffix on hex
        ("0x1.8", SizeError.INVALID),
        ("0x", SizeError.INVALID),
        ("0b1000", SizeError.INVALID),
        (".", SizeError.INVALID),
        ("inf", SizeError.INVALID),
        ("nan", SizeError.INVALID),
        ("1 G", SizeError.INVALID),
        ("-1", SizeError.OUT_OF_RANGE),
        ("-0", SizeError.OUT_OF_RANGE),
        ("16E", SizeError.OUT_OF_RANGE),
        ("20E", SizeError.OUT_OF_RANGE),
        ("18446744073709551616", SizeError.OUT_OF_RANGE),
        ("9" * 5000, SizeError.OUT_OF_RANGE),
        ("0x10000000000000000", SizeError.OUT_OF_RANGE),
    ],
)
def test_strtosz_rejects(text: str, kind: SizeError) -> None:
    with pytest.raises(SizeParseError) as info:
        qemu_strtosz(text)
    assert info.value.kind is kind
    assert isinstance(info.value, ValueError)


def test_long_fraction_does_not_blow_up() -> None:
    assert qemu_strtosz("1." + "0" * 10000 + "M") == MiB


def test_strtosz_mib_default_unit() -> None:
    assert qemu_strtosz_MiB("4096") == 4096 * MiB
    assert qemu_strtosz_MiB("4G") == 4 * GiB
    assert qemu_strtosz_MiB("1.5") == 3 * MiB // 2  # a fraction of a MiB is fine
    assert qemu_strtosz_MiB("0x10") == 16 * MiB
    assert qemu_strtosz_MiB("100b") == 100
    with pytest.raises(SizeParseError):
        qemu_strtosz_MiB("17592186044416")  # 2**44 MiB = 2**64 bytes


def test_strtosz_metric() -> None:
    assert qemu_strtosz_metric("12k") == 12000
    assert qemu_strtosz_metric("1.5M") == 1500000


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("42", 42), ("0x2a", 42), ("052", 42), (" +7", 7), (str(UINT64_MAX), UINT64_MAX)],
)
def test_parse_uint64(text: str, expected: int) -> None:
    assert parse_uint64(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1k", "-1", "08", "0x", "1.0"])
def test_parse_uint64_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_uint64(text)


def test_parse_uint64_overflow() -> None:
    with pytest.raises(OverflowError):
        parse_uint64(str(UINT64_MAX + 1))
    with pytest.raises(OverflowError):
        parse_uint64("1" * 3000)


@pytest.mark.parametrize("text", ["on", "yes", "true"])
def test_parse_bool_true(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["off", "no", "false"])
def test_parse_bool_false(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "ON", "1", "0", "enable", "onn"])
def test_parse_bool_rejects_with_qemu_wording(text: str) -> None:
    with pytest.raises(ValueError, match=r"^Parameter 'mem-lock' expects 'on' or 'off'$"):
        parse_bool(text, "mem-lock")


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "0.977 KiB"), (1536 * MiB, "1.5 GiB"), (UINT64_MAX, "16 EiB")],
)
def test_size_to_str(value: int, text: str) -> None:
    assert size_to_str(value) == text
