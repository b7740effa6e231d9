"""Number and flag parsing for user input (QEMU's util/cutils.c, qapi_bool_parse).

Everything here parses text typed by the user on the command line or the
monitor.  Failures raise :class:`ValueError` (a :class:`SizeParseError` for
sizes, so callers can tell "not a size" from "too large"); callers that know
which option they are parsing turn it into a :class:`UserError`.
"""

from __future__ import annotations

import enum
import re

UINT64_MAX = (1 << 64) - 1

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
PiB = 1 << 50
EiB = 1 << 60

# Power of the unit each scaling suffix stands for (case-insensitive).
_SUFFIX_POWER: dict[str, int] = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}

# What C's isspace() skips before a number (strtoull does).
_C_WHITESPACE = " \t\n\v\f\r"

# A hexadecimal size: no fraction and no scaling suffix ("0x1B" is 27 bytes).
_HEX_SIZE = re.compile(r"0[xX]([0-9a-fA-F]+)")
# A decimal size: digits, an optional fraction (either side of the point may
# be empty, not both), an optional one-letter suffix.
_DECIMAL_SIZE = re.compile(r"(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?(?P<suffix>[A-Za-z]?)")

# Digits of a fraction beyond this cannot change a result below 2**64 by a
# whole byte once scaled (2**60 < 10**19); longer inputs are cut here so a
# hostile string cannot make us do big-number arithmetic.
_MAX_FRACTION_DIGITS = 40


class SizeError(enum.Enum):
    INVALID = "invalid"
    OUT_OF_RANGE = "out of range"


class SizeParseError(ValueError):
    """A size string could not be parsed; ``kind`` says why."""

    def __init__(self, text: str, kind: SizeError, detail: str) -> None:
        super().__init__(f"invalid size '{text}': {detail}")
        self.text = text
        self.kind = kind
        self.detail = detail


def _suffix_multiplier(suffix: str, unit: int) -> int:
    return unit ** _SUFFIX_POWER[suffix.upper()]


def _do_strtosz(text: str, default_suffix: str, unit: int) -> int:
    def invalid(detail: str) -> SizeParseError:
        return SizeParseError(text, SizeError.INVALID, detail)

    s = text.lstrip(_C_WHITESPACE)
    if s.startswith("+"):
        s = s[1:]
    if s.startswith("-"):
        raise SizeParseError(text, SizeError.OUT_OF_RANGE, "negative sizes are not allowed")
    if not s:
        raise invalid("no number")

    hex_match = _HEX_SIZE.fullmatch(s)
    if hex_match:
        value = int(hex_match.group(1), 16) * _suffix_multiplier(default_suffix, unit)
        if value > UINT64_MAX:
            raise SizeParseError(text, SizeError.OUT_OF_RANGE, "does not fit in 64 bits")
        return value
    if s[:2] in ("0x", "0X"):
        raise invalid("hexadecimal sizes take no fraction and no suffix")

    m = _DECIMAL_SIZE.fullmatch(s)
    if m is None or not (m.group("int") or m.group("frac")):
        raise invalid("expected a number with an optional suffix B, K, M, G, T, P or E")
    suffix = m.group("suffix") or default_suffix
    if suffix.upper() not in _SUFFIX_POWER:
        raise invalid(f"unknown suffix '{suffix}'")
    multiplier = _suffix_multiplier(suffix, unit)

    integral_digits = m.group("int").lstrip("0") or "0"
    if len(integral_digits) > 20:
        raise SizeParseError(text, SizeError.OUT_OF_RANGE, "does not fit in 64 bits")
    integral = int(integral_digits)
    fraction_digits = (m.group("frac") or "")[:_MAX_FRACTION_DIGITS]
    # The fraction as numerator / 10**digits, in integers.
    numerator, denominator = int(fraction_digits or "0"), 10 ** len(fraction_digits)
    if numerator and multiplier == 1:
        raise invalid("a fraction needs a scaling suffix (K, M, G, T, P or E)")

    # QEMU rounds the scaled fraction to the nearest byte (halves up).
    value = integral * multiplier + (2 * numerator * multiplier + denominator) // (2 * denominator)
    if value > UINT64_MAX:
        raise SizeParseError(text, SizeError.OUT_OF_RANGE, "does not fit in 64 bits")
    return value


def qemu_strtosz(text: str, default_suffix: str = "B") -> int:
    """Parse a size in bytes: "4096", "512M", "1.5G", "0x1000", "4k".

    Suffixes B, K, M, G, T, P, E (any case) scale by powers of 1024; without
    one, ``default_suffix`` applies.  A fraction needs a suffix above bytes;
    hexadecimal takes neither a fraction nor a suffix; octal is not
    recognised (08 is eight); negative values, exponents, junk after the
    number and values of 2**64 or more are refused.
    """
    return _do_strtosz(text, default_suffix, 1024)


def qemu_strtosz_MiB(text: str) -> int:
    """Like :func:`qemu_strtosz` with mebibytes as the default unit (-m 4096)."""
    return _do_strtosz(text, "M", 1024)


def qemu_strtosz_metric(text: str) -> int:
    """Like :func:`qemu_strtosz` with powers of 1000."""
    return _do_strtosz(text, "B", 1000)


_UINT_PATTERNS = (
    (re.compile(r"0[xX]([0-9a-fA-F]+)"), 16),
    (re.compile(r"0([0-7]+)"), 8),
    (re.compile(r"([1-9][0-9]*|0)"), 10),
)


def parse_uint64(text: str) -> int:
    """Parse an unsigned 64-bit number the way strtoull(base 0) reads it.

    Decimal, 0x-hexadecimal and 0-octal are accepted, with leading white
    space and a '+' sign.  Unlike strtoull, a minus sign is refused rather
    than wrapped.  Raises OverflowError for values of 2**64 or more and
    ValueError for anything else that is not a number.
    """
    s = text.lstrip(_C_WHITESPACE)
    if s.startswith("+"):
        s = s[1:]
    for pattern, base in _UINT_PATTERNS:
        m = pattern.fullmatch(s)
        if m:
            digits = m.group(1).lstrip("0") or "0"
            if len(digits) > 70:
                raise OverflowError(f"'{text}' does not fit in 64 bits")
            value = int(digits, base)
            if value > UINT64_MAX:
                raise OverflowError(f"'{text}' does not fit in 64 bits")
            return value
    raise ValueError(f"'{text}' is not a number")


_TRUE_WORDS = frozenset({"on", "yes", "true"})
_FALSE_WORDS = frozenset({"off", "no", "false"})


def parse_bool(text: str, name: str = "value") -> bool:
    """Parse on/off, yes/no, true/false (exact lower case, as QEMU does).

    ``name`` is the parameter being parsed; it only appears in the error,
    "Parameter 'name' expects 'on' or 'off'".
    """
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise ValueError(f"Parameter '{name}' expects 'on' or 'off'")


def size_to_str(value: int) -> str:
    """Human-readable size with IEC units, e.g. "1.5 GiB", "512 MiB", "0 B"."""
    if value < 0:
        raise ValueError("size_to_str takes a non-negative size")
    units = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
    # Switch to the next unit once the number reaches 1000 of the current one.
    index = 0
    while index < len(units) - 1 and value >= 1000 * (1 << (10 * index)):
        index += 1
    scaled = value / (1 << (10 * index))
    return f"{scaled:.3g} {units[index]}B"
