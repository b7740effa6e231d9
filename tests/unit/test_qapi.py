"""The command layer's pure logic, table-tested: JSON stream splitting with
QEMU's messages, argument checking, schema generation and its validity
check, request checking; then the QMP monitor itself on a capture chardev
(greeting, negotiation, id, errors, events, a 10 MB line, slow clients)."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, NotRequired, TypedDict

import pytest

from pemu.chardev.char import Chardev
from pemu.monitor.qmp import MonitorQMP, check_request, monitor_init_qmp
from pemu.monitor.qmp_table import QMP_COMMANDS, QMP_EVENTS
from pemu.qapi.commands import CommandTable
from pemu.qapi.error import QMPError
from pemu.qapi.events import qapi_event_send
from pemu.qapi.introspect import qmp_schema, schema_problems
from pemu.qapi.json_stream import JSONStreamer
from pemu.qapi.schema import (
    INT,
    STR,
    ArgumentCheckError,
    ArrayType,
    EnumType,
    command_signature,
    qapi_type,
    visit_input,
    visit_members,
)

# --- the JSON stream --------------------------------------------------------------------------------

STREAM_CASES: list[tuple[bytes, list[tuple[Any, str | None]]]] = [
    (b'{"execute": "x"}', [({"execute": "x"}, None)]),
    (b'{"a": [1, -2, 3.5, true, false, null]}\n', [({"a": [1, -2, 3.5, True, False, None]}, None)]),
    (b'{"s": "\\u00e9\\n\\"q\\""}', [({"s": 'é\n"q"'}, None)]),
    (b"{'single': 'quotes'}", [({"single": "quotes"}, None)]),
    (b"1 2 ", [(1, None), (2, None)]),
    (b'"str" ', [("str", None)]),
    (b"[] {}", [([], None), ({}, None)]),
    (b'{"a" 1}', [(None, "JSON parse error, missing : in object pair")]),
    (b'{"a": 1 "b": 2}', [(None, "JSON parse error, expected separator in dict")]),
    (b"{1: 2}", [(None, "JSON parse error, key is not a string in object")]),
    (b'{"execute": "x",,}', [(None, "JSON parse error, expecting value")]),
    (b'{"a": 1, "a": 2}', [(None, "JSON parse error, duplicate key")]),
    (b"[1 2]", [(None, "JSON parse error, expected separator in list")]),
    (b"}", [(None, "JSON parse error, expecting value")]),
    (b"[tru]", [(None, "JSON parse error, invalid keyword 'tru'")]),
    (b'{"a": "\\q"}', [(None, "JSON parse error, invalid escape sequence in string")]),
    (b'{"a": "\\u12"}', [(None, "JSON parse error, invalid hex escape sequence in string")]),
    # A stray byte: an error at once, then lexing starts again at the next structural character.
    (b'{"x": @}\n{"ok": 1}', [(None, "JSON parse error, stray '@'"), (None, "JSON parse error, expecting value"),
                              ({"ok": 1}, None)]),
    # A control character inside a string; the newline starts a fresh message.
    (b'"abc\n{"ok": 2}', [(None, "JSON parse error, stray '\"abc\n'"), ({"ok": 2}, None)]),
]


@pytest.mark.parametrize(("data", "expected"), STREAM_CASES)
def test_json_stream(data: bytes, expected: list[tuple[Any, str | None]]) -> None:
    out: list[tuple[Any, str | None]] = []
    streamer = JSONStreamer(lambda value, error: out.append((value, error)))
    streamer.feed(data)
    assert out == expected
    # Byte by byte, the same messages come out.
    out.clear()
    streamer.reset()
    for byte in data:
        streamer.feed(bytes([byte]))
    assert out == expected


def test_json_stream_limits_message_size_and_recovers_at_the_next_line() -> None:
    out: list[tuple[Any, str | None]] = []
    streamer = JSONStreamer(lambda value, error: out.append((value, error)), max_message_size=1000)
    streamer.feed(b'{"execute": "' + b"x" * 5000)
    assert out == [(None, "JSON token size limit exceeded")]
    assert len(streamer.buf) <= 1000
    streamer.feed(b"y" * 5000 + b'"}\n{"ok": 3}\n')
    assert out == [(None, "JSON token size limit exceeded"), ({"ok": 3}, None)]


def test_json_stream_nesting_limit() -> None:
    out: list[tuple[Any, str | None]] = []
    streamer = JSONStreamer(lambda value, error: out.append((value, error)))
    streamer.feed(b"[" * 1100)
    assert out[0] == (None, "JSON nesting depth limit exceeded")


# --- argument checking -------------------------------------------------------------------------------


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Inner(TypedDict):
    n: int
    tag: NotRequired[str]


def _sample(*, count: int, name: str | None = None, colours: list[Colour] | None = None,
            inner: Inner | None = None, ratio: float = 1.0, flag: bool = False, anything: Any = None) -> None:
    pass


SIGNATURE = command_signature("sample", _sample)

VISIT_CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"count": 1}, None),
    ({"count": 1, "name": "a", "colours": ["red", "blue"], "inner": {"n": 2, "tag": "t"}, "ratio": 2,
      "flag": True, "anything": [1, {"x": None}]}, None),
    ({}, "Parameter 'count' is missing"),
    ({"count": "1"}, "Invalid parameter type for 'count', expected: integer"),
    ({"count": True}, "Invalid parameter type for 'count', expected: integer"),
    ({"count": 1, "name": 5}, "Invalid parameter type for 'name', expected: string"),
    ({"count": 1, "flag": 1}, "Invalid parameter type for 'flag', expected: boolean"),
    ({"count": 1, "ratio": "x"}, "Invalid parameter type for 'ratio', expected: number"),
    ({"count": 1, "colours": "red"}, "Invalid parameter type for 'colours', expected: array"),
    ({"count": 1, "colours": ["green"]}, "Parameter 'null' does not accept value 'green'"),  # as QEMU 7.2
    ({"count": 1, "colours": [1]}, "Invalid parameter type for 'colours[0]', expected: string"),
    ({"count": 1, "inner": []}, "Invalid parameter type for 'inner', expected: object"),
    ({"count": 1, "inner": {}}, "Parameter 'inner.n' is missing"),
    ({"count": 1, "inner": {"n": 1, "z": 0}}, "Parameter 'inner.z' is unexpected"),
    ({"count": 1, "bogus": 0}, "Parameter 'bogus' is unexpected"),
]


@pytest.mark.parametrize(("args", "error"), VISIT_CASES)
def test_argument_checking(args: dict[str, Any], error: str | None) -> None:
    if error is None:
        visit_members(args, SIGNATURE.arguments)
    else:
        with pytest.raises(ArgumentCheckError) as info:
            visit_members(args, SIGNATURE.arguments)
        assert info.value.desc == error


def test_signature_reads_the_function() -> None:
    members = {m.name: m for m in SIGNATURE.arguments.members}
    assert list(members) == ["count", "name", "colours", "inner", "ratio", "flag", "anything"]
    assert members["count"].type is INT and not members["count"].optional
    assert members["name"].type is STR and members["name"].optional
    assert members["colours"].type == ArrayType(EnumType(Colour))
    assert SIGNATURE.returns is None and not SIGNATURE.wants_monitor
    assert visit_input(["red"], qapi_type(list[Colour]), "c") == [Colour.RED]


def test_python_names_become_qapi_names() -> None:
    def fn(*, read_only_mode: bool = False, **props: Any) -> int:
        return 0

    sig = command_signature("f", fn)
    assert [m.name for m in sig.arguments.members] == ["read-only-mode"]
    assert sig.arguments.extra and sig.returns is INT
    # Extra arguments pass through unchecked when the command takes **props.
    assert visit_members({"read-only-mode": True, "x": 1}, sig.arguments) == {"read-only-mode": True, "x": 1}


def test_a_positional_parameter_other_than_mon_is_refused() -> None:
    def fn(path: str) -> None:
        pass

    with pytest.raises(TypeError):
        command_signature("bad", fn)


def test_table_refuses_a_name_twice() -> None:
    table = CommandTable()
    table.command("a")(lambda: None)
    with pytest.raises(ValueError):
        table.command("a")(lambda: None)


# --- the schema ---------------------------------------------------------------------------------------


def test_schema_of_the_command_table_is_valid_introspection() -> None:
    schema = qmp_schema(QMP_COMMANDS, QMP_EVENTS)
    assert schema_problems(schema) == []
    by_name = {entity["name"]: entity for entity in schema}
    for cmd in QMP_COMMANDS:
        assert by_name[cmd.name]["meta-type"] == "command"
    for event in ("SHUTDOWN", "POWERDOWN", "RESET", "STOP", "RESUME"):
        assert by_name[event]["meta-type"] == "event"
    status = by_name[by_name["query-status"]["ret-type"]]
    assert status["meta-type"] == "object"
    assert {m["name"]: m["type"] for m in status["members"]} == {"running": "bool", "singlestep": "bool",
                                                                  "status": "RunState"}
    assert "running" in by_name["RunState"]["values"]
    qom_get_args = by_name[by_name["qom-get"]["arg-type"]]
    assert qom_get_args["members"] == [{"name": "path", "type": "str"}, {"name": "property", "type": "str"}]
    qom_types = by_name[by_name["qom-list-types"]["arg-type"]]["members"]
    assert {"name": "implements", "type": "str", "default": None} in qom_types
    assert by_name["SHUTDOWN"]["arg-type"] == "q_obj_SHUTDOWN-arg"
    assert by_name["str"] == {"name": "str", "meta-type": "builtin", "json-type": "string"}
    json.dumps(schema)  # plain JSON


SCHEMA_PROBLEMS: list[tuple[list[dict[str, Any]], str]] = [
    ([{"name": "c", "meta-type": "command", "arg-type": "nope", "ret-type": "nope"}], "refers to 'nope'"),
    ([{"name": "t", "meta-type": "object", "members": [{"name": "m", "type": "gone"}]}], "refers to 'gone'"),
    ([{"name": "a", "meta-type": "array", "element-type": "x"}], "refers to 'x'"),
    ([{"name": "e", "meta-type": "enum", "values": ["a"], "members": []}], "members and values differ"),
    ([{"name": "b", "meta-type": "builtin", "json-type": "str"}], "bad json-type"),
    ([{"name": "x", "meta-type": "weird"}], "unknown meta-type"),
    ([{"name": "s", "meta-type": "builtin", "json-type": "string"}] * 2, "defined twice"),
]


@pytest.mark.parametrize(("schema", "problem"), SCHEMA_PROBLEMS)
def test_schema_checker_finds(schema: list[dict[str, Any]], problem: str) -> None:
    problems = schema_problems(schema)
    assert problems and problem in problems[0]


# --- requests -------------------------------------------------------------------------------------------

REQUEST_CASES: list[tuple[object, str]] = [
    ([1], "QMP input must be a JSON object"),
    ("x", "QMP input must be a JSON object"),
    ({}, "QMP input lacks member 'execute'"),
    ({"execute": 1}, "QMP input member 'execute' must be a string"),
    ({"execute": "x", "arguments": []}, "QMP input member 'arguments' must be an object"),
    ({"execute": "x", "foo": 1}, "QMP input member 'foo' is unexpected"),
    ({"exec-oob": "x"}, "QMP input member 'exec-oob' is unexpected"),
]


@pytest.mark.parametrize(("request_", "error"), REQUEST_CASES)
def test_request_checking(request_: object, error: str) -> None:
    with pytest.raises(QMPError) as info:
        check_request(request_)
    assert info.value.desc == error


# --- the monitor on a chardev ---------------------------------------------------------------------------


class CaptureChardev(Chardev):
    backend_name = "capture"

    def __init__(self) -> None:
        super().__init__("cap")
        self.out = bytearray()
        self.room: int | None = None  # bytes it takes before it is "full"

    def chr_write(self, data: bytes) -> int:
        taken = len(data) if self.room is None else min(self.room, len(data))
        if self.room is not None:
            self.room -= taken
        self.out += data[:taken]
        return taken

    def messages(self) -> list[dict[str, Any]]:
        lines = [line for line in self.out.decode().split("\r\n") if line]
        self.out.clear()
        return [json.loads(line) for line in lines]


@pytest.fixture
def qmp() -> tuple[MonitorQMP, CaptureChardev]:
    chardev = CaptureChardev()
    chardev.open()
    mon = monitor_init_qmp(chardev)
    return mon, chardev


def _send(chardev: CaptureChardev, data: bytes) -> list[dict[str, Any]]:
    chardev.push_input(data)
    return chardev.messages()


def test_greeting_negotiation_and_id(qmp: tuple[MonitorQMP, CaptureChardev]) -> None:
    mon, chardev = qmp
    (greeting,) = chardev.messages()
    assert greeting == {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "pemu 0.1.0"},
                                "capabilities": []}}
    assert _send(chardev, b'{"execute": "query-status", "id": "a"}') == [
        {"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"},
         "id": "a"}]
    assert _send(chardev, b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}') == [
        {"error": {"class": "GenericError", "desc": "Capability 'oob' not available"}}]
    assert _send(chardev, b'{"execute": "qmp_capabilities", "id": [1, {"x": 2}]}') == [
        {"return": {}, "id": [1, {"x": 2}]}]
    assert _send(chardev, b'{"execute": "qmp_capabilities"}') == [
        {"error": {"class": "CommandNotFound",
                   "desc": "Capabilities negotiation is already complete, command ignored"}}]
    assert _send(chardev, b'{"execute": "query-name", "id": 7}') == [{"return": {}, "id": 7}]


BAD_INPUT: list[tuple[bytes, dict[str, Any]]] = [
    (b'{"execute": }', {"class": "GenericError", "desc": "JSON parse error, expecting value"}),
    (b"[1, 2]", {"class": "GenericError", "desc": "QMP input must be a JSON object"}),
    (b'{"execute": 3}', {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}),
    (b'{"execute": "foo"}', {"class": "CommandNotFound", "desc": "The command foo has not been found"}),
    (b'{"execute": "qom-get", "arguments": {"path": 1, "property": "x"}}',
     {"class": "GenericError", "desc": "Invalid parameter type for 'path', expected: string"}),
    (b'{"execute": "query-status", "arguments": {"x": 1}}',
     {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}),
    (b'{"execute": "qom-list", "arguments": {"path": "/nowhere"}}',
     {"class": "DeviceNotFound", "desc": "Device '/nowhere' not found"}),
]


@pytest.mark.parametrize(("data", "error"), BAD_INPUT)
def test_bad_input_gets_qemus_error_and_the_monitor_goes_on(qmp: tuple[MonitorQMP, CaptureChardev],
                                                           data: bytes, error: dict[str, Any]) -> None:
    _mon, chardev = qmp
    chardev.messages()
    _send(chardev, b'{"execute": "qmp_capabilities"}')
    assert _send(chardev, data) == [{"error": error}]
    assert _send(chardev, b'{"execute": "query-version"}')[0]["return"]["qemu"]["minor"] == 2


def test_a_10_mb_line_is_refused_with_bounded_memory(qmp: tuple[MonitorQMP, CaptureChardev]) -> None:
    mon, chardev = qmp
    chardev.messages()
    _send(chardev, b'{"execute": "qmp_capabilities"}')
    chunk = b"A" * 65536
    chardev.push_input(b'{"execute": "human-monitor-command", "arguments": {"command-line": "')
    for _ in range(160):
        chardev.push_input(chunk)
        assert len(mon.streamer.buf) <= (1 << 20) + len(chunk)
    chardev.push_input(b'"}}\n')
    assert chardev.messages() == [{"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}]
    assert _send(chardev, b'{"execute": "query-status", "id": 1}')[0]["id"] == 1


def test_events_reach_negotiated_clients_with_timestamps(qmp: tuple[MonitorQMP, CaptureChardev]) -> None:
    _mon, chardev = qmp
    chardev.messages()
    qapi_event_send("STOP")
    assert chardev.messages() == []  # not negotiated yet
    _send(chardev, b'{"execute": "qmp_capabilities"}')
    qapi_event_send("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    (event,) = chardev.messages()
    assert event["event"] == "SHUTDOWN" and event["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert set(event["timestamp"]) == {"seconds", "microseconds"}
    assert 0 <= event["timestamp"]["microseconds"] < 1_000_000


def test_a_client_that_does_not_read_stops_being_read(qmp: tuple[MonitorQMP, CaptureChardev]) -> None:
    mon, chardev = qmp
    chardev.messages()
    _send(chardev, b'{"execute": "qmp_capabilities"}')
    chardev.room = 10
    chardev.push_input(b'{"execute": "query-version"}{"execute": "query-version"}')
    assert mon.outbuf  # the reply waits ...
    assert mon._can_read() == 0  # ... and no more input is taken meanwhile
    chardev.room = None
    mon._output_ready()
    replies = [json.loads(x) for x in chardev.out.decode().split("\r\n") if x]
    assert [r["return"]["qemu"]["major"] for r in replies] == [7, 7]
    assert not mon.outbuf


def test_pretty_output() -> None:
    chardev = CaptureChardev()
    chardev.open()
    monitor_init_qmp(chardev, pretty=True)
    assert chardev.out.decode().startswith('{\r\n    "QMP": {\r\n')
