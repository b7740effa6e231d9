"""Splitting a QMP byte stream into JSON values (QEMU's qobject/json-lexer.c,
json-streamer.c and json-parser.c), with QEMU's error messages.

:class:`JSONStreamer` is fed bytes as they arrive and calls ``emit(value,
error)`` for each complete top-level value (exactly one of the two is
None), as QEMU's JSONMessageParser does: a value is complete when its
braces and brackets balance, or at the end of a top-level scalar.  Accepted
beyond RFC 8259, as in QEMU: single-quoted strings.

Errors, QEMU's wording:

* a byte no token can start with: "JSON parse error, stray 'X'"; input is
  then skipped to the next structural character or control character
  (a newline), where lexing starts again (QEMU's recovery state);
* a grammar error: "JSON parse error, expecting value", "... key is not a
  string in object", "... missing : in object pair", "... expected
  separator in dict", "... invalid keyword 'foo'" ...;
* limits: "JSON token size limit exceeded", "JSON nesting depth limit
  exceeded".  pemu bounds a message at :data:`MAX_MESSAGE_SIZE` bytes
  (QEMU: 64 MiB of tokens) so that memory stays bounded; after that error
  the rest of the line is skipped, and the stream goes on with the next line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

MAX_MESSAGE_SIZE = 1 << 20
MAX_NESTING = 1024  # QEMU's MAX_NESTING

Emit = Callable[[Any, "str | None"], None]

_WHITESPACE = b" \t\r\n"
_STRUCTURAL = b"{}[]:,"
_SCALAR = re.compile(rb"[-+.0-9a-zA-Z]+")
_DQ_BODY = re.compile(rb'[^"\\\x00-\x1f]*')
_SQ_BODY = re.compile(rb"[^'\\\x00-\x1f]*")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
_KEYWORD = re.compile(r"[a-z]+\Z")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class JSONError(Exception):
    pass


def _parse_error(message: str) -> JSONError:
    return JSONError(f"JSON parse error, {message}")


class _Token:
    __slots__ = ("kind", "text")

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind  # one of "{}[]:,", "string", "scalar"
        self.text = text


def _tokens(message: bytes) -> list[_Token]:
    """The tokens of one complete message (the streamer already checked the bytes)."""
    out: list[_Token] = []
    pos = 0
    end = len(message)
    while pos < end:
        ch = message[pos]
        if ch in _WHITESPACE:
            pos += 1
        elif ch in _STRUCTURAL:
            out.append(_Token(chr(ch), chr(ch)))
            pos += 1
        elif ch in (0x22, 0x27):
            stop = _string_end(message, pos)
            out.append(_Token("string", message[pos:stop].decode("utf-8", errors="surrogateescape")))
            pos = stop
        else:
            m = _SCALAR.match(message, pos)
            assert m is not None
            out.append(_Token("scalar", m.group().decode("ascii")))
            pos = m.end()
    return out


def _string_end(data: bytes, start: int) -> int:
    """The index after the string literal starting at ``start``."""
    quote = data[start]
    pos = start + 1
    while True:
        if data[pos] == quote:
            return pos + 1
        pos += 2 if data[pos] == 0x5C else 1


def _decode_string(text: str) -> str:
    body = text[1:-1]
    if "\\" not in body:
        _check_utf8(body)
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        code = body[i + 1]
        if code == "u":
            value = _hex4(body, i + 2)
            i += 6
            if 0xD800 <= value < 0xDC00:
                if body[i:i + 2] != "\\u":
                    raise _parse_error("missing second half of surrogate pair")
                low = _hex4(body, i + 2)
                if not 0xDC00 <= low < 0xE000:
                    raise _parse_error("invalid second half of surrogate pair")
                value = 0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            elif 0xDC00 <= value < 0xE000:
                raise _parse_error("missing first half of surrogate pair")
            if value == 0:
                raise _parse_error("\\u0000 is not supported")
            out.append(chr(value))
        elif code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        else:
            raise _parse_error("invalid escape sequence in string")
    result = "".join(out)
    _check_utf8(result)
    return result


def _check_utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _parse_error("invalid UTF-8 sequence in string") from None


def _hex4(body: str, at: int) -> int:
    digits = body[at:at + 4]
    if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise _parse_error("invalid hex escape sequence in string")
    return int(digits, 16)


class _Parser:
    """Recursive descent over one message's tokens (json_parser_parse)."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def _next(self) -> _Token | None:
        if self.pos >= len(self.tokens):
            return None
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def value(self) -> Any:
        token = self._next()
        if token is None:
            raise _parse_error("premature EOI")
        if token.kind == "{":
            return self._object()
        if token.kind == "[":
            return self._array()
        if token.kind == "string":
            return _decode_string(token.text)
        if token.kind == "scalar":
            return _scalar(token.text)
        raise _parse_error("expecting value")

    def _object(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        token = self._peek()
        if token is None:
            raise _parse_error("premature EOI")
        if token.kind == "}":
            self.pos += 1
            return result
        while True:
            # The key is parsed as any value first (so "{," expects a value), then must be a string.
            key = self.value()
            if not isinstance(key, str):
                raise _parse_error("key is not a string in object")
            colon = self._next()
            if colon is None:
                raise _parse_error("premature EOI")
            if colon.kind != ":":
                raise _parse_error("missing : in object pair")
            value = self.value()
            if key in result:
                raise _parse_error("duplicate key")
            result[key] = value
            sep = self._next()
            if sep is None:
                raise _parse_error("premature EOI")
            if sep.kind == "}":
                return result
            if sep.kind != ",":
                raise _parse_error("expected separator in dict")

    def _array(self) -> list[Any]:
        result: list[Any] = []
        token = self._peek()
        if token is None:
            raise _parse_error("premature EOI")
        if token.kind == "]":
            self.pos += 1
            return result
        while True:
            result.append(self.value())
            sep = self._next()
            if sep is None:
                raise _parse_error("premature EOI")
            if sep.kind == "]":
                return result
            if sep.kind != ",":
                raise _parse_error("expected separator in list")


def _scalar(text: str) -> Any:
    if _KEYWORD.match(text):
        if text == "true":
            return True
        if text == "false":
            return False
        if text == "null":
            return None
        raise _parse_error(f"invalid keyword '{text}'")
    if not _NUMBER.match(text):
        raise JSONError(f"JSON parse error, stray '{text}'")
    if "." in text or "e" in text or "E" in text:
        return float(text)
    value = int(text)
    if not -(1 << 63) <= value < (1 << 64):
        return float(value)  # as QEMU: out of int64 and uint64 range becomes a double
    return value


def parse_json_message(message: bytes) -> Any:
    """One complete message's value; raises JSONError with QEMU's message."""
    parser = _Parser(_tokens(message))
    value = parser.value()
    if parser.pos != len(parser.tokens):
        raise _parse_error("expecting value")
    return value


class JSONStreamer:
    """Bytes in, JSON values (or errors) out, with bounded memory."""

    def __init__(self, emit: Emit, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.emit = emit
        self.max_message_size = max_message_size
        self.reset()

    def reset(self) -> None:
        self.buf = bytearray()
        self.depth_brace = 0
        self.depth_bracket = 0
        self.quote = 0  # the quote of the string being read, or 0
        self.escape = False
        self.recovering = False  # after a stray byte: skip to a structural or control byte
        self.skip_line = False  # after a size error: skip to the end of the line
        self._scalar_open = False  # a number or keyword is being read
        self._token_start = 0  # where the string being read starts in buf

    def feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            if self.skip_line:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    return
                self.skip_line = False
                pos = nl + 1
                continue
            if self.recovering:
                ch = data[pos]
                if ch < 0x20 or ch >= 0xFE or ch in b"{}[]":
                    self.recovering = False
                else:
                    pos += 1
                continue
            if self.quote:
                pos = self._string_bytes(data, pos)
            else:
                pos = self._outside_string(data, pos)
            if len(self.buf) > self.max_message_size:
                self._fail("JSON token size limit exceeded")
                self.skip_line = True

    # -- lexing -------------------------------------------------------------------------------------
    def _string_bytes(self, data: bytes, pos: int) -> int:
        body = _DQ_BODY if self.quote == 0x22 else _SQ_BODY
        while pos < len(data):
            if self.escape:
                self.escape = False
                self.buf.append(data[pos])
                pos += 1
                continue
            m = body.match(data, pos)
            assert m is not None
            self.buf += m.group()
            pos = m.end()
            if len(self.buf) > self.max_message_size:
                return pos
            if pos >= len(data):
                return pos
            ch = data[pos]
            if ch == self.quote:
                self.buf.append(ch)
                self.quote = 0
                pos += 1
                self._token_done()
                return pos
            if ch == 0x5C:
                self.buf.append(ch)
                self.escape = True
                pos += 1
                continue
            # A control character inside a string: a lexical error.
            self._stray(bytes(self.buf[self._token_start:]) + bytes([ch]))
            return pos  # the control byte itself is where lexing starts again
        return pos

    def _outside_string(self, data: bytes, pos: int) -> int:
        ch = data[pos]
        if ch in _WHITESPACE:
            if self._scalar_open:
                self._token_done()
            if self.buf:
                self.buf.append(ch)  # keeps two scalars apart
            return pos + 1
        if ch in _STRUCTURAL:
            if self._scalar_open:
                self._token_done()
            self.buf.append(ch)
            if ch == 0x7B:
                self.depth_brace += 1
            elif ch == 0x7D:
                self.depth_brace -= 1
            elif ch == 0x5B:
                self.depth_bracket += 1
            elif ch == 0x5D:
                self.depth_bracket -= 1
            if self.depth_brace + self.depth_bracket > MAX_NESTING:
                self._fail("JSON nesting depth limit exceeded")
                return pos + 1
            self._token_done()
            return pos + 1
        if ch in (0x22, 0x27):
            if self._scalar_open:
                self._token_done()
            self._token_start = len(self.buf)
            self.buf.append(ch)
            self.quote = ch
            return pos + 1
        m = _SCALAR.match(data, pos)
        if m is None:
            if self._scalar_open:
                self._token_done()
            self._stray(bytes([ch]))
            return pos + 1
        self._scalar_open = True
        self.buf += m.group()
        return m.end()

    def _token_done(self) -> None:
        """A token ended: a message is complete when the brackets balance."""
        self._scalar_open = False
        if (self.depth_brace > 0 or self.depth_bracket > 0) and self.depth_brace >= 0 and self.depth_bracket >= 0:
            return
        self._complete()

    def _complete(self) -> None:
        message = bytes(self.buf)
        self._clear()
        try:
            value = parse_json_message(message)
        except JSONError as e:
            self.emit(None, str(e))
            return
        except RecursionError:
            self.emit(None, "JSON nesting depth limit exceeded")
            return
        self.emit(value, None)

    def _clear(self) -> None:
        self.buf = bytearray()
        self.depth_brace = self.depth_bracket = 0
        self.quote = 0
        self.escape = False
        self._scalar_open = False

    def _fail(self, message: str) -> None:
        self._clear()
        self.emit(None, message)

    def _stray(self, text: bytes) -> None:
        self._clear()
        self.recovering = True
        self.emit(None, f"JSON parse error, stray '{text.decode('utf-8', errors='replace')}'")
