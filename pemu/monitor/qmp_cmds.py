"""The monitor's core commands (QEMU's monitor/qmp-cmds.c and the run-state
commands): capabilities, version, status, stop, cont, quit, reset, power
button, name, uuid, human-monitor-command; and the events pemu sends.

Each command is written once, as a typed function (see pemu.qapi.schema for
what its signature means); the QMP server dispatches requests to it through
pemu.monitor.qmp_table and the human monitor (pemu.monitor.hmp_cmds) calls it
and formats its result.  The other commands are in qmp_cmds_machine (machine,
CPUs, QOM, devices, PCI) and qmp_cmds_backends (block, chardevs, fd sets,
network).  Commands run on the main-loop thread with the VM of the monitor
that runs them as the current VM.
"""

# No postponed annotations in the command modules: a TypedDict's string
# annotations would each be compiled into a ForwardRef when it is defined,
# which would be most of the module's import time.
from enum import Enum
from typing import TYPE_CHECKING, NotRequired, TypedDict

from pemu.qapi.commands import CommandTable, EventInfo
from pemu.qapi.error import QMPError
from pemu.system import cpus, runstate
from pemu.system.runstate import RunState, ShutdownCause
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.migration.migration import MigrationState
    from pemu.monitor.qmp import MonitorQMP

COMMANDS = CommandTable()
command = COMMANDS.command

# QMP's negotiation mode knows one command (qmp_cap_negotiation_commands).
CAP_NEGOTIATION_COMMANDS = CommandTable()


# --- capabilities --------------------------------------------------------------------------------


class QMPCapability(Enum):
    OOB = "oob"


def _qmp_capabilities(mon: "MonitorQMP", *, enable: list[QMPCapability] | None = None) -> None:
    """Leave capabilities negotiation (qmp_qmp_capabilities)."""
    mon.negotiate(enable or [])


CAP_NEGOTIATION_COMMANDS.command("qmp_capabilities")(_qmp_capabilities)
command("qmp_capabilities")(_qmp_capabilities)


# --- version -------------------------------------------------------------------------------


class VersionTriple(TypedDict):
    major: int
    minor: int
    micro: int


class VersionInfo(TypedDict):
    qemu: VersionTriple
    package: str


def pemu_version() -> str:
    import pemu

    return pemu.__version__


@command("query-version")
def qmp_query_version() -> VersionInfo:
    """The QEMU version whose interface pemu follows, as -version names it,
    with pemu's own version as the package (QEMU's place for a vendor's build)."""
    from pemu import QEMU_INTERFACE_VERSION

    major, minor, micro = (int(p) for p in QEMU_INTERFACE_VERSION.split("."))
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": f"pemu {pemu_version()}"}


# --- run state -----------------------------------------------------------------------------------


class StatusInfo(TypedDict):
    running: bool
    singlestep: bool
    status: RunState


@command("query-status")
def qmp_query_status() -> StatusInfo:
    return {"running": runstate.runstate_is_running(), "singlestep": False, "status": runstate.runstate_get()}


@command("stop")
def qmp_stop() -> None:
    if runstate.runstate_get() == RunState.INMIGRATE:
        _migration_state().autostart = False  # stays paused once the incoming state is loaded
        return
    cpus.vm_stop(RunState.PAUSED)


@command("cont")
def qmp_cont() -> None:
    state = runstate.runstate_get()
    if state in (RunState.SHUTDOWN, RunState.INTERNAL_ERROR):
        raise QMPError("Resetting the Virtual Machine is required")
    if state == RunState.INMIGRATE:
        _migration_state().autostart = True  # runs once the incoming state is loaded
        return
    # The source of a completed migration (or a destination whose images were
    # still held) takes its images back before it runs (QEMU's bdrv_activate_all).
    machine = current_vm().machine
    block = machine.opened_block_devices() if machine is not None else None
    if block is not None and block.inactive:
        from pemu.block.block_int import BlockOpenError

        try:
            block.activate_all()
        except BlockOpenError as e:
            raise QMPError(e.message) from None
    cpus.vm_start()


def _migration_state() -> "MigrationState":
    from pemu.migration.migration import migrate_get_current

    return migrate_get_current(current_vm())


@command("quit")
def qmp_quit() -> None:
    runstate.qemu_system_shutdown_request(ShutdownCause.HOST_QMP_QUIT)


@command("system_reset")
def qmp_system_reset() -> None:
    runstate.qemu_system_reset_request(ShutdownCause.HOST_QMP_SYSTEM_RESET)


@command("system_powerdown")
def qmp_system_powerdown() -> None:
    if not runstate.qemu_system_powerdown_request():
        raise QMPError("this machine has no power button (no ACPI power button handler)")


# --- the machine ---------------------------------------------------------------------------------


class NameInfo(TypedDict):
    name: NotRequired[str]


def vm_name() -> str | None:
    """The -name of the VM, when the command line set one (kept on the machine)."""
    machine = current_vm().machine
    name = machine.name_ if machine is not None else None
    return name or None


@command("query-name")
def qmp_query_name() -> NameInfo:
    name = vm_name()
    return {"name": name} if name is not None else {}


class UuidInfo(TypedDict):
    UUID: str


@command("query-uuid")
def qmp_query_uuid() -> UuidInfo:
    return {"UUID": "00000000-0000-0000-0000-000000000000"}  # pemu has no -uuid: QEMU's default



# --- the human monitor, from QMP ------------------------------------------------------------------


@command("human-monitor-command")
def qmp_human_monitor_command(mon: "MonitorQMP", *, command_line: str, cpu_index: int | None = None) -> str:
    """Run one HMP command line and return what it printed (QEMU's qmp_human_monitor_command)."""
    from pemu.monitor.qmp_cmds_machine import machine_cpus

    if cpu_index is not None and cpu_index not in {cpu.cpu_index for cpu in machine_cpus()}:
        raise QMPError("Parameter 'cpu-index' expects a CPU index")
    return mon.run_hmp_line(command_line)


# --- events -----------------------------------------------------------------------------------------


class ShutdownEvent(TypedDict):
    guest: bool
    reason: ShutdownCause


class ResetEvent(TypedDict):
    guest: bool
    reason: ShutdownCause


EVENTS: tuple[EventInfo, ...] = (
    EventInfo("SHUTDOWN", ShutdownEvent),
    EventInfo("POWERDOWN"),
    EventInfo("RESET", ResetEvent),
    EventInfo("STOP"),
    EventInfo("RESUME"),
)
