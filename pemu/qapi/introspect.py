"""query-qmp-schema: the schema as QAPI introspection data (QEMU's
scripts/qapi/introspect.py, computed from the command table when asked).

The result is a list of SchemaInfo objects: one per command and event, and
one per type they reference (objects, enums, arrays, built-ins), every
reference resolvable in the list.  Type names are given in clear (QEMU
masks them as numbers; introspection clients must not depend on names).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pemu.qapi.commands import CommandTable, EventInfo
from pemu.qapi.schema import ArrayType, Builtin, EnumType, QapiType, StructType, struct_type

EMPTY = StructType("q_empty", ())


class SchemaBuilder:
    """Collects SchemaInfo entries, each type once."""

    def __init__(self) -> None:
        self.entities: list[dict[str, Any]] = []
        self._types: dict[str, dict[str, Any]] = {}

    def type_ref(self, qtype: QapiType) -> str:
        """The name of ``qtype`` in the schema, adding its SchemaInfo (and its members') first time."""
        name = qtype.name
        if name in self._types:
            return name
        info: dict[str, Any] = {"name": name}
        self._types[name] = info  # before the members: a recursive type refers to itself
        if isinstance(qtype, Builtin):
            info.update({"meta-type": "builtin", "json-type": qtype.json_type})
        elif isinstance(qtype, ArrayType):
            info.update({"meta-type": "array", "element-type": self.type_ref(qtype.element)})
        elif isinstance(qtype, EnumType):
            values = qtype.values
            info.update({"meta-type": "enum", "members": [{"name": v} for v in values], "values": values})
        else:
            members = []
            for member in qtype.members:
                entry: dict[str, Any] = {"name": member.name, "type": self.type_ref(member.type)}
                if member.optional:
                    entry["default"] = None
                members.append(entry)
            info.update({"meta-type": "object", "members": members})
        return name

    def add_command(self, name: str, args: StructType, returns: QapiType | None, allow_oob: bool = False) -> None:
        entry: dict[str, Any] = {
            "name": name,
            "meta-type": "command",
            "arg-type": self.type_ref(args if args.members else EMPTY),
            "ret-type": self.type_ref(returns if returns is not None else EMPTY),
        }
        if allow_oob:
            entry["allow-oob"] = True
        self.entities.append(entry)

    def add_event(self, name: str, data: StructType | None) -> None:
        self.entities.append({"name": name, "meta-type": "event",
                              "arg-type": self.type_ref(data if data is not None else EMPTY)})

    def result(self) -> list[dict[str, Any]]:
        return self.entities + list(self._types.values())


def qmp_schema(commands: CommandTable, events: Iterable[EventInfo]) -> list[dict[str, Any]]:
    builder = SchemaBuilder()
    for cmd in commands:
        sig = cmd.signature
        builder.add_command(cmd.name, sig.arguments, sig.returns)
    for event in events:
        data = struct_type(event.data) if event.data is not None else None
        # An event's data is an implicit type in QEMU's schema, named after the event.
        builder.add_event(event.name, StructType(f"q_obj_{event.name}-arg", data.members) if data else None)
    return builder.result()


def schema_problems(schema: list[dict[str, Any]]) -> list[str]:
    """What is wrong with introspection data: unknown meta-types, references
    to types not in it, duplicate names (empty when it is valid)."""
    problems: list[str] = []
    names: dict[str, dict[str, Any]] = {}
    for entity in schema:
        name = entity.get("name")
        if not isinstance(name, str):
            problems.append(f"entity without a name: {entity}")
            continue
        if name in names:
            problems.append(f"'{name}' defined twice")
        names[name] = entity

    def need(ref: object, where: str, *meta: str) -> None:
        target = names.get(ref) if isinstance(ref, str) else None
        if target is None:
            problems.append(f"{where} refers to '{ref}', which is not in the schema")
        elif meta and target.get("meta-type") not in meta:
            problems.append(f"{where} refers to '{ref}', a {target.get('meta-type')}, not {'/'.join(meta)}")

    for entity in names.values():
        name, meta = entity["name"], entity.get("meta-type")
        if meta == "command":
            need(entity.get("arg-type"), f"command {name}", "object")
            need(entity.get("ret-type"), f"command {name}")
        elif meta == "event":
            need(entity.get("arg-type"), f"event {name}", "object")
        elif meta == "object":
            for member in entity.get("members", []):
                need(member.get("type"), f"member {name}.{member.get('name')}")
        elif meta == "array":
            need(entity.get("element-type"), f"array {name}")
        elif meta == "enum":
            if [m.get("name") for m in entity.get("members", [])] != entity.get("values"):
                problems.append(f"enum {name}: members and values differ")
        elif meta == "builtin":
            if entity.get("json-type") not in ("string", "number", "int", "boolean", "null", "object",
                                               "array", "value"):
                problems.append(f"builtin {name}: bad json-type {entity.get('json-type')}")
        else:
            problems.append(f"'{name}' has an unknown meta-type {meta!r}")
    return problems
