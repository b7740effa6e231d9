"""The QMP command table, put together at one known point (QEMU's generated
qmp_init_marshal): the core commands, the machine and back-end ones, and the
two about the table itself, query-commands and query-qmp-schema."""

# No postponed annotations: see pemu.monitor.qmp_cmds.
from typing import Any, TypedDict

from pemu.monitor import qmp_cmds, qmp_cmds_backends, qmp_cmds_machine, qmp_cmds_migration
from pemu.qapi.commands import CommandTable

QMP_COMMANDS = CommandTable(qmp_cmds.COMMANDS, qmp_cmds_machine.COMMANDS, qmp_cmds_backends.COMMANDS,
                            qmp_cmds_migration.COMMANDS)
QMP_CAP_NEGOTIATION_COMMANDS = qmp_cmds.CAP_NEGOTIATION_COMMANDS
QMP_EVENTS = qmp_cmds.EVENTS + qmp_cmds_migration.EVENTS
command = QMP_COMMANDS.command


class CommandInfo(TypedDict):
    name: str


@command("query-commands")
def qmp_query_commands() -> list[CommandInfo]:
    return [{"name": cmd.name} for cmd in QMP_COMMANDS]


@command("query-qmp-schema")
def qmp_query_qmp_schema() -> list[Any]:
    from pemu.qapi.introspect import qmp_schema

    return qmp_schema(QMP_COMMANDS, QMP_EVENTS)
