"""The schema of typed commands (QEMU's QAPI schema, the generated
qmp_marshal_* functions and the QObject input visitor, in one place).

A command is a plain typed function::

    @QMP_COMMANDS.command("qom-get")
    def qmp_qom_get(*, path: str, property: str) -> Any: ...

Its keyword-only parameters are the command's arguments (``read_only`` is
the argument "read-only"); a parameter with a default is optional; a
``**props`` parameter takes further arguments of any type (QEMU's
``'gen': false`` commands such as device_add); a first positional parameter
``mon`` receives the monitor that runs it.  The return annotation is the
result type.  Types are Python's: ``str``, ``int``, ``bool``, ``float``
(QAPI ``number``), ``Any`` (QAPI ``any``), ``list[T]``, an :class:`Enum`
(QAPI enum, by its values) and a ``TypedDict`` (QAPI struct; ``NotRequired``
members are optional).

This module is loaded the first time a command is dispatched or the schema
is asked for (pemu.qapi.commands registers functions without it).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union

from pemu.qapi.error import QMPError

# --- QAPI types from Python annotations -------------------------------------------------------


@dataclass(frozen=True)
class Builtin:
    """A QAPI built-in type: its schema name and its JSON type."""

    name: str
    json_type: str  # as query-qmp-schema's "json-type" says it
    expected: str  # as the input visitor's "expected: ..." says it


STR = Builtin("str", "string", "string")
INT = Builtin("int", "int", "integer")
BOOL = Builtin("bool", "boolean", "boolean")
NUMBER = Builtin("number", "number", "number")
ANY = Builtin("any", "value", "any")
NULL = Builtin("null", "null", "null")


@dataclass(frozen=True)
class ArrayType:
    element: QapiType

    @property
    def name(self) -> str:
        return f"[{self.element.name}]"


@dataclass(frozen=True)
class EnumType:
    cls: type[Enum]

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def values(self) -> list[str]:
        return [str(member.value) for member in self.cls]


@dataclass(frozen=True)
class Member:
    """One member of a struct or one argument of a command."""

    name: str  # the QAPI name ("read-only")
    type: QapiType
    optional: bool
    py_name: str = ""  # the Python parameter's name, for arguments


@dataclass(frozen=True)
class StructType:
    name: str
    members: tuple[Member, ...]
    extra: bool = False  # further members of any type are accepted (device_add)


QapiType = Builtin | ArrayType | EnumType | StructType

_BUILTINS: dict[object, Builtin] = {str: STR, int: INT, bool: BOOL, float: NUMBER, Any: ANY, object: ANY,
                                    type(None): NULL}


def _is_typeddict(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__required_keys__")


def qapi_type(annotation: object) -> QapiType:
    """The QAPI type a Python annotation stands for."""
    builtin = _BUILTINS.get(annotation) if _hashable(annotation) else None
    if builtin is not None:
        return builtin
    origin = typing.get_origin(annotation)
    if origin is list:
        (element,) = typing.get_args(annotation)
        return ArrayType(qapi_type(element))
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return qapi_type(members[0])  # "X | None": optionality is the default's business
        raise TypeError(f"no QAPI type for the union {annotation!r}")
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return EnumType(annotation)
    if isinstance(annotation, type) and _is_typeddict(annotation):
        return struct_type(annotation)
    raise TypeError(f"no QAPI type for {annotation!r}")


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@functools.cache
def struct_type(cls: type) -> StructType:
    """The QAPI struct a TypedDict declares (its name is the class's)."""
    # NotRequired is read from the annotations themselves: with postponed
    # evaluation of annotations, __required_keys__ does not see it.
    members: list[Member] = []
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        optional = typing.get_origin(hint) is typing.NotRequired
        if optional or typing.get_origin(hint) is typing.Required:
            (hint,) = typing.get_args(hint)
        members.append(Member(name, qapi_type(hint), optional))
    return StructType(cls.__name__, tuple(members))


# --- the input visitor: JSON arguments checked against a type --------------------------------


class ArgumentCheckError(QMPError):
    """The arguments do not match the command's (GenericError, QEMU's messages)."""


def _json_kind_ok(value: object, builtin: Builtin) -> bool:
    if builtin is ANY:
        return True
    if builtin is NULL:
        return value is None
    if builtin is BOOL:
        return isinstance(value, bool)
    if builtin is INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if builtin is NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _wrong_type(name: str, expected: str) -> ArgumentCheckError:
    return ArgumentCheckError(f"Invalid parameter type for '{name}', expected: {expected}")


def visit_input(value: object, qtype: QapiType, name: str, leaf: str | None = None) -> Any:
    """``value`` (from JSON) checked against ``qtype``; enum values become
    the Enum's members.  ``name`` is the member's full name for messages
    ("device", "props.foo", "enable[0]"); ``leaf`` is its own name, which
    QEMU's enum check uses instead ("null" for a list element)."""
    if isinstance(qtype, Builtin):
        if not _json_kind_ok(value, qtype):
            raise _wrong_type(name, qtype.expected)
        return value
    if isinstance(qtype, ArrayType):
        if not isinstance(value, list):
            raise _wrong_type(name, "array")
        # A list element has no name of its own: QEMU's enum check says 'null'.
        return [visit_input(item, qtype.element, f"{name}[{index}]", "null") for index, item in enumerate(value)]
    if isinstance(qtype, EnumType):
        if not isinstance(value, str):
            raise _wrong_type(name, "string")
        for member in qtype.cls:
            if member.value == value:
                return member
        shown = leaf if leaf is not None else name.rsplit(".", 1)[-1]
        raise ArgumentCheckError(f"Parameter '{shown}' does not accept value '{value}'")
    if not isinstance(value, dict):
        raise _wrong_type(name, "object")
    return visit_members(value, qtype, f"{name}.")


def visit_members(values: dict[str, Any], struct: StructType, prefix: str = "") -> dict[str, Any]:
    """The members of ``values`` checked against ``struct``, keyed by QAPI name.

    Unknown members are refused (unless ``struct.extra``), missing mandatory
    ones reported, as QEMU's visitor does: members in declaration order,
    then the first unexpected one."""
    result: dict[str, Any] = {}
    for member in struct.members:
        if member.name not in values:
            if not member.optional:
                raise ArgumentCheckError(f"Parameter '{prefix}{member.name}' is missing")
            continue
        result[member.name] = visit_input(values[member.name], member.type, prefix + member.name)
    known = {member.name for member in struct.members}
    for key, value in values.items():
        if key not in known:
            if not struct.extra:
                raise ArgumentCheckError(f"Parameter '{prefix}{key}' is unexpected")
            result[key] = value
    return result


def to_json(value: object) -> Any:
    """A command's typed result as plain JSON values (enums by their value)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


# --- commands -----------------------------------------------------------------------------------


def qapi_name(py_name: str) -> str:
    """A Python parameter's QAPI name: "read_only" is "read-only"."""
    return py_name.replace("_", "-")


@dataclass(frozen=True)
class CommandSignature:
    arguments: StructType
    returns: QapiType | None
    wants_monitor: bool


def command_signature(name: str, fn: Callable[..., Any]) -> CommandSignature:
    """A command's arguments and result type, read from its signature."""
    # The monitor parameter's type is only imported for type checking: not needed here.
    mon_annotation = fn.__annotations__.get("mon")
    localns = {mon_annotation: object} if isinstance(mon_annotation, str) and mon_annotation.isidentifier() else {}
    hints = typing.get_type_hints(fn, localns=localns)
    members: list[Member] = []
    wants_monitor = False
    extra = False
    for param in inspect.signature(fn).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = True
        elif param.kind is inspect.Parameter.KEYWORD_ONLY:
            members.append(Member(qapi_name(param.name), qapi_type(hints[param.name]),
                                  param.default is not inspect.Parameter.empty, param.name))
        elif param.name == "mon" and not members and not wants_monitor:
            wants_monitor = True
        else:
            raise TypeError(f"command {name}: parameter '{param.name}' must be keyword-only")
    ret = hints.get("return", type(None))
    returns = None if ret is type(None) else qapi_type(ret)
    return CommandSignature(StructType(f"q_obj_{name}-arg", tuple(members), extra), returns, wants_monitor)
