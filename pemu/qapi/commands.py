"""The command table (QEMU's QmpCommandList): commands by name, each a
typed function (see :mod:`pemu.qapi.schema` for what its signature means).

Registering stores the function only.  Its signature is read, and the
schema machinery imported, the first time the command is dispatched or the
schema is asked for: the human monitor calls the same functions directly,
so a monitor that never speaks QMP never loads any of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pemu.qapi.schema import CommandSignature


class QmpCommand:
    """One command: its name and function."""

    __slots__ = ("name", "fn", "_signature")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self._signature: CommandSignature | None = None

    @property
    def signature(self) -> CommandSignature:
        if self._signature is None:
            from pemu.qapi.schema import command_signature

            self._signature = command_signature(self.name, self.fn)
        return self._signature

    def call(self, mon: object, arguments: dict[str, Any]) -> Any:
        """Check ``arguments`` (JSON) and run the command; its result as JSON.

        Raises QMPError for bad arguments or a failed command."""
        from pemu.qapi.schema import to_json, visit_members

        sig = self.signature
        checked = visit_members(arguments, sig.arguments)
        py_names = {member.name: member.py_name for member in sig.arguments.members}
        kwargs = {py_names.get(key, key): value for key, value in checked.items()}
        result = self.fn(mon, **kwargs) if sig.wants_monitor else self.fn(**kwargs)
        return {} if sig.returns is None else to_json(result)


class CommandTable:
    """A static table of commands by name, in registration order."""

    def __init__(self, *tables: CommandTable) -> None:
        """An empty table, or one holding the commands of ``tables`` (names must not repeat)."""
        self._commands: dict[str, QmpCommand] = {}
        for table in tables:
            for cmd in table:
                self._add(cmd)

    def _add(self, cmd: QmpCommand) -> None:
        if cmd.name in self._commands:
            raise ValueError(f"command {cmd.name} registered twice")
        self._commands[cmd.name] = cmd

    def command(self, name: str) -> Callable[[Callable[..., Any]], Any]:
        """Register the decorated function as command ``name``; the function is returned unchanged."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._add(QmpCommand(name, fn))
            return fn

        return register

    def find(self, name: str) -> QmpCommand | None:
        return self._commands.get(name)

    def __iter__(self) -> Iterator[QmpCommand]:
        return iter(list(self._commands.values()))

    def __len__(self) -> int:
        return len(self._commands)


class EventInfo:
    """One event the server may send, with its data type (a TypedDict; None: no data)."""

    __slots__ = ("name", "data")

    def __init__(self, name: str, data: type | None = None) -> None:
        self.name = name
        self.data = data
