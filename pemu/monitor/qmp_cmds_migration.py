"""Migration commands (QEMU's qmp_migrate, qmp_migrate_cancel,
qmp_migrate_incoming, qmp_query_migrate, qmp_migrate_set_parameters,
qmp_query_migrate_parameters, qmp_migrate_set_capabilities, qmp_query_migrate_capabilities
in migration/migration.c), on
:mod:`pemu.migration.migration`."""

# No postponed annotations: see pemu.monitor.qmp_cmds.
from typing import NotRequired, TypedDict

from pemu.migration.migration import (
    MigrationCapability,
    MigrationError,
    MigrationState,
    MigrationStatus,
    migrate_get_current,
)
from pemu.qapi.commands import CommandTable, EventInfo
from pemu.qapi.error import QMPError
from pemu.util.vm_context import current_vm

COMMANDS = CommandTable()
command = COMMANDS.command


def migration_state() -> MigrationState:
    return migrate_get_current(current_vm())


@command("migrate")
def qmp_migrate(*, uri: str, detach: bool | None = None) -> None:
    """Start an outgoing migration; it runs on after the command returns (QMP always detaches)."""
    try:
        migration_state().migrate(uri)
    except MigrationError as e:
        raise QMPError(str(e)) from None


@command("migrate_cancel")
def qmp_migrate_cancel() -> None:
    migration_state().cancel()


@command("migrate-incoming")
def qmp_migrate_incoming(*, uri: str) -> None:
    """Start the incoming migration of a VM started with ``-incoming defer``."""
    from pemu.system.runstate import RunState, runstate_get

    state = migration_state()
    if state.incoming_started:
        raise QMPError("The incoming migration has already been started")
    if runstate_get() != RunState.INMIGRATE:
        raise QMPError("'-incoming' was not specified on the command line")
    try:
        state.start_incoming(uri)
    except MigrationError as e:
        raise QMPError(str(e)) from None


# --- query-migrate -------------------------------------------------------------------------------

MigrationStats = TypedDict("MigrationStats", {
    "transferred": int, "remaining": int, "total": int, "duplicate": int, "skipped": int, "normal": int,
    "normal-bytes": int, "dirty-pages-rate": int, "mbps": float, "dirty-sync-count": int,
    "postcopy-requests": int, "page-size": int, "multifd-bytes": int, "pages-per-second": int,
    "precopy-bytes": int, "downtime-bytes": int, "postcopy-bytes": int, "dirty-sync-missed-zero-copy": int,
})


class SocketAddress(TypedDict):
    type: str
    host: str
    port: str


MigrationInfo = TypedDict("MigrationInfo", {
    "status": NotRequired[MigrationStatus], "ram": NotRequired[MigrationStats],
    "total-time": NotRequired[int], "expected-downtime": NotRequired[int], "downtime": NotRequired[int],
    "setup-time": NotRequired[int], "error-desc": NotRequired[str],
    "socket-address": NotRequired[list[SocketAddress]],
})


def _ram_stats(state: MigrationState) -> MigrationStats:
    from pemu.migration.migration import TARGET_PAGE_SIZE

    ram = state.ram
    return {
        "transferred": ram.transferred, "remaining": ram.remaining, "total": ram.total,
        "duplicate": ram.duplicate_pages,
        "skipped": 0, "normal": ram.normal_pages, "normal-bytes": ram.normal_pages * TARGET_PAGE_SIZE,
        "dirty-pages-rate": ram.dirty_pages_rate, "mbps": round(ram.mbps, 6),
        "dirty-sync-count": ram.dirty_sync_count, "postcopy-requests": 0, "page-size": TARGET_PAGE_SIZE,
        "multifd-bytes": 0, "pages-per-second": ram.pages_per_second, "precopy-bytes": ram.precopy_bytes,
        "downtime-bytes": ram.downtime_bytes, "postcopy-bytes": 0, "dirty-sync-missed-zero-copy": 0,
    }


def _socket_addresses(address: str) -> list[SocketAddress]:
    host, _, port = address.removeprefix("tcp:").rpartition(":")
    return [{"type": "inet", "host": host.strip("[]"), "port": port}]


@command("query-migrate")
def qmp_query_migrate() -> MigrationInfo:
    """The outgoing migration's status and counters; on a destination, the incoming one's."""
    import time

    state = migration_state()
    info: MigrationInfo = {}
    if state.status is MigrationStatus.NONE:
        if state.incoming_status is not MigrationStatus.NONE:
            info["status"] = state.incoming_status
            if state.incoming_error is not None:
                info["error-desc"] = state.incoming_error
        if state.incoming_address is not None and state.incoming_status is MigrationStatus.SETUP:
            info["socket-address"] = _socket_addresses(state.incoming_address)
        return info
    info["status"] = state.status
    if state.status is MigrationStatus.SETUP:
        return info
    total = state.total_time_ms
    if total is None:
        total = int((time.monotonic() - state.start_time) * 1000)
    info["total-time"] = total
    if state.setup_time_ms is not None:
        info["setup-time"] = state.setup_time_ms
    if state.status is MigrationStatus.COMPLETED and state.downtime_ms is not None:
        info["downtime"] = state.downtime_ms
    elif state.expected_downtime_ms is not None and state.status is MigrationStatus.ACTIVE:
        info["expected-downtime"] = state.expected_downtime_ms
    info["ram"] = _ram_stats(state)
    if state.status is MigrationStatus.FAILED and state.error_desc is not None:
        info["error-desc"] = state.error_desc
    return info


# --- parameters ----------------------------------------------------------------------------------

MigrationParametersInfo = TypedDict("MigrationParametersInfo", {"downtime-limit": int, "max-bandwidth": int})


@command("migrate-set-parameters")
def qmp_migrate_set_parameters(*, downtime_limit: int | None = None, max_bandwidth: int | None = None) -> None:
    params = migration_state().params
    try:
        # Checked first, then set: a refused value changes nothing.
        if downtime_limit is not None:
            params.check_downtime_limit(downtime_limit)
        if max_bandwidth is not None:
            params.check_max_bandwidth(max_bandwidth)
    except MigrationError as e:
        raise QMPError(str(e)) from None
    if downtime_limit is not None:
        params.downtime_limit = downtime_limit
    if max_bandwidth is not None:
        params.max_bandwidth = max_bandwidth


@command("query-migrate-parameters")
def qmp_query_migrate_parameters() -> MigrationParametersInfo:
    params = migration_state().params
    return {"downtime-limit": params.downtime_limit, "max-bandwidth": params.max_bandwidth}


# --- capabilities --------------------------------------------------------------------------------


class MigrationCapabilityStatus(TypedDict):
    capability: MigrationCapability
    state: bool


@command("migrate-set-capabilities")
def qmp_migrate_set_capabilities(*, capabilities: list[MigrationCapabilityStatus]) -> None:
    try:
        migration_state().set_capabilities([(c["capability"], c["state"]) for c in capabilities])
    except MigrationError as e:
        raise QMPError(str(e)) from None


@command("query-migrate-capabilities")
def qmp_query_migrate_capabilities() -> list[MigrationCapabilityStatus]:
    return [{"capability": capability, "state": state}
            for capability, state in migration_state().capabilities.items()]


# --- events --------------------------------------------------------------------------------------


class MigrationEvent(TypedDict):
    status: MigrationStatus


MigrationPassEvent = TypedDict("MigrationPassEvent", {"pass": int})


EVENTS: tuple[EventInfo, ...] = (EventInfo("MIGRATION", MigrationEvent),
                                 EventInfo("MIGRATION_PASS", MigrationPassEvent))
