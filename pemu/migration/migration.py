"""Migration control (QEMU's migration/migration.c): one VM's outgoing and
incoming migration, their status and counters, and the parameters.

Outgoing (``migrate URI``): the transport is opened on the monitor's thread,
then a migration thread ("live_migration", as QEMU's) runs

* setup: the stream's header and RAM block list, the dirty log started
  (:meth:`pemu.migration.savevm.SaveVMState.setup`, under the big lock);
* pre-copy while the guest runs: dirty RAM is sent at most ``max-bandwidth``
  bytes a second, in 100 ms windows (QEMU's BUFFER_DELAY); after each pass
  the dirty log is synced (``dirty sync count``) and the migration converges
  when what is left could be sent within ``downtime-limit`` at the bandwidth
  reached so far, or after :data:`MAX_PASSES` passes.  The RAM is read
  without the big lock, so vCPUs and devices go on meanwhile.  When the
  accelerator cannot track the guest's writes (``SaveVMState.live`` is
  False) there is no pre-copy: everything is copied with the VM stopped;
* completion, under the big lock: the VM stops (``finish-migrate``), the
  block layer is drained and released (``inactivate_all``), the rest of RAM
  and every device's state is sent; the source then stays paused in
  ``postmigrate`` (``cont`` there takes the images back and runs again, as
  in QEMU).  On a failure or ``migrate_cancel`` the images are taken back
  and a VM that ran runs again.

Incoming (``-incoming URI``, ``-incoming defer`` then ``migrate_incoming``):
the VM waits in ``inmigrate``; once the transport is readable (a listening
socket accepted its peer) the stream is loaded on the main loop with the big
lock held (the monitor does not answer meanwhile), then the images are
taken (``activate_all``) and the VM runs, or stays paused with ``-S``.  A
stream that cannot be loaded ends pemu with one line, ``load of migration
failed: REASON``, and exit status 1.

Status changes are sent as MIGRATION events, and each pre-copy pass as a
MIGRATION_PASS event, only while the ``events`` capability is on (QEMU's rule).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from pemu.migration.channel import IncomingChannel, MigrationChannelError, OutgoingChannel
from pemu.qapi.events import qapi_event_send
from pemu.util.main_loop import bql

if TYPE_CHECKING:
    from pemu.block.blockdev import BlockDevices
    from pemu.migration.qemu_file import QEMUFileWriter
    from pemu.migration.savevm import SaveVMState
    from pemu.net.announce import AnnounceTimer
    from pemu.system.vm import VirtualMachine


class MigrationStatus(Enum):
    """QEMU 7.2's MigrationStatus (pemu has no post-copy, COLO or switch-over pause)."""

    NONE = "none"
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"


_RUNNING_STATUSES = (MigrationStatus.SETUP, MigrationStatus.ACTIVE, MigrationStatus.CANCELLING,
                     MigrationStatus.DEVICE)

DEFAULT_DOWNTIME_LIMIT_MS = 300  # QEMU's DEFAULT_MIGRATE_SET_DOWNTIME
MAX_DOWNTIME_LIMIT_MS = 2_000_000  # MAX_MIGRATE_DOWNTIME_SECONDS * 1000
DEFAULT_MAX_BANDWIDTH = 128 << 20  # bytes/s, QEMU's MAX_THROTTLE
MAX_BANDWIDTH_LIMIT = (1 << 64) - 1  # SIZE_MAX
RATE_WINDOW_S = 0.1  # QEMU's BUFFER_DELAY: the bandwidth limit is kept per window
MAX_PASSES = 30  # pre-copy passes before the last copy is done anyway
ITERATE_CHUNK = 4 << 20  # most bytes asked from SaveVMState.iterate at once
TARGET_PAGE_SIZE = 4096


class MigrationError(Exception):
    """A migration command cannot be done (one line, QEMU's wording)."""


class _Cancelled(Exception):
    pass


class MigrationCapability(Enum):
    """QEMU 7.2's MigrationCapability, in its order; pemu implements only ``events``."""

    XBZRLE = "xbzrle"
    RDMA_PIN_ALL = "rdma-pin-all"
    AUTO_CONVERGE = "auto-converge"
    ZERO_BLOCKS = "zero-blocks"
    COMPRESS = "compress"
    EVENTS = "events"
    POSTCOPY_RAM = "postcopy-ram"
    X_COLO = "x-colo"
    RELEASE_RAM = "release-ram"
    BLOCK = "block"
    RETURN_PATH = "return-path"
    PAUSE_BEFORE_SWITCHOVER = "pause-before-switchover"
    MULTIFD = "multifd"
    DIRTY_BITMAPS = "dirty-bitmaps"
    POSTCOPY_BLOCKTIME = "postcopy-blocktime"
    LATE_BLOCK_ACTIVATE = "late-block-activate"
    X_IGNORE_SHARED = "x-ignore-shared"
    VALIDATE_UUID = "validate-uuid"
    BACKGROUND_SNAPSHOT = "background-snapshot"
    ZERO_COPY_SEND = "zero-copy-send"
    POSTCOPY_PREEMPT = "postcopy-preempt"


SUPPORTED_CAPABILITIES = frozenset({MigrationCapability.EVENTS})


class MigrationParameters:
    """The parameters pemu has (QEMU's MigrationParameters, in its units)."""

    __slots__ = ("downtime_limit", "max_bandwidth")

    def __init__(self) -> None:
        self.downtime_limit = DEFAULT_DOWNTIME_LIMIT_MS  # ms
        self.max_bandwidth = DEFAULT_MAX_BANDWIDTH  # bytes/s

    @staticmethod
    def check_downtime_limit(value: int) -> None:
        if not 0 <= value <= MAX_DOWNTIME_LIMIT_MS:
            raise MigrationError(f"Parameter 'downtime_limit' expects an integer in the range of 0 to "
                                 f"{MAX_DOWNTIME_LIMIT_MS} ms")

    @staticmethod
    def check_max_bandwidth(value: int) -> None:
        if not 0 <= value <= MAX_BANDWIDTH_LIMIT:
            raise MigrationError(f"Parameter 'max_bandwidth' expects an integer in the range of 0 to "
                                 f"{MAX_BANDWIDTH_LIMIT} bytes/second")


class RAMCounters:
    """What query-migrate's "ram" reports (QEMU's MigrationStats)."""

    __slots__ = ("transferred", "remaining", "total", "normal_pages", "duplicate_pages", "dirty_sync_count",
                 "dirty_pages_rate", "mbps", "pages_per_second", "precopy_bytes", "downtime_bytes")

    def __init__(self) -> None:
        self.transferred = 0  # bytes of the stream handed to the transport
        self.remaining = 0  # RAM bytes still to send (at the last dirty sync, less what was sent since)
        self.total = 0  # guest RAM bytes
        self.normal_pages = 0  # RAM pages sent with their data
        self.duplicate_pages = 0  # RAM pages sent as zero pages (QEMU's "duplicate")
        self.dirty_sync_count = 0
        self.dirty_pages_rate = 0  # pages dirtied a second during the last pass
        self.mbps = 0.0
        self.pages_per_second = 0
        self.precopy_bytes = 0  # sent while the guest ran
        self.downtime_bytes = 0  # sent with the guest stopped


# Each protocol's module and its outgoing and incoming channel classes
# (imported when a URI names them: most runs never migrate).
MIGRATION_PROTOCOLS: dict[str, tuple[str, str, str]] = {
    "exec": ("pemu.migration.exec", "ExecOutgoing", "ExecIncoming"),
    "file": ("pemu.migration.file", "FileOutgoing", "FileIncoming"),
    "tcp": ("pemu.migration.socket", "SocketOutgoing", "SocketIncoming"),
}


def _channel_class(uri: str, outgoing: bool) -> tuple[type, str] | None:
    import importlib

    kind, sep, rest = uri.partition(":")
    protocol = MIGRATION_PROTOCOLS.get(kind) if sep else None
    if protocol is None:
        return None
    module = importlib.import_module(protocol[0])
    cls: type = getattr(module, protocol[1] if outgoing else protocol[2])
    return cls, rest


def parse_outgoing_uri(uri: str) -> OutgoingChannel:
    """Open the transport ``uri`` names, for an outgoing migration."""
    found = _channel_class(uri, outgoing=True)
    if found is None:
        raise MigrationChannelError("Parameter 'uri' expects a valid migration protocol")
    cls, rest = found
    channel: OutgoingChannel = cls(rest)
    return channel


def parse_incoming_uri(uri: str) -> IncomingChannel:
    """Open the transport ``uri`` names, for an incoming migration."""
    found = _channel_class(uri, outgoing=False)
    if found is None:
        raise MigrationChannelError(f"unknown migration protocol: {uri}")
    cls, rest = found
    channel: IncomingChannel = cls(rest)
    return channel


def check_incoming_uri(uri: str) -> None:
    """Refuse an -incoming URI of no known protocol before anything is built."""
    if uri == "defer":
        return
    kind, sep, _rest = uri.partition(":")
    if not sep or kind not in MIGRATION_PROTOCOLS:
        raise MigrationChannelError(f"unknown migration protocol: {uri}")


class MigrationState:
    """One VM's migrations: the outgoing one (status, counters, thread) and
    the incoming one; owned by :class:`~pemu.system.vm.VirtualMachine`
    (``vm.migration``, made by :func:`migrate_get_current`)."""

    def __init__(self, vm: VirtualMachine) -> None:
        self.vm = vm
        self.params = MigrationParameters()
        # Every capability is off by default, as in QEMU.
        self.capabilities: dict[MigrationCapability, bool] = dict.fromkeys(MigrationCapability, False)
        # -- outgoing
        self.status = MigrationStatus.NONE
        self.error_desc: str | None = None
        self.ram = RAMCounters()
        self.start_time = 0.0
        self.setup_time_ms: int | None = None
        self.total_time_ms: int | None = None
        self.downtime_ms: int | None = None
        self.expected_downtime_ms: int | None = None
        self.live = True  # False: the last migration was a stop-and-copy
        self._channel: OutgoingChannel | None = None
        self._thread: threading.Thread | None = None
        # What saves the VM (None: pemu.migration.savevm.SaveVMState; a unit test gives its own).
        self.save_state_factory: Callable[[VirtualMachine, QEMUFileWriter, bool], SaveVMState] | None = None
        # Called on the main loop when an outgoing migration ends (an HMP `migrate` waits for it).
        self.on_finished: list[Callable[[], None]] = []
        # -- incoming
        self.incoming_status = MigrationStatus.NONE
        self.incoming_error: str | None = None
        self.incoming_started = False  # migrate_incoming was used (or -incoming URI)
        self.autostart = True  # run once loaded (-S: no; `stop` and `cont` in inmigrate change it)
        self._incoming: IncomingChannel | None = None
        self.incoming_address: str | None = None
        self.announce: AnnounceTimer | None = None  # the destination's self-announcement, once loaded

    # --- status --------------------------------------------------------------------------

    def is_running(self) -> bool:
        return self.status in _RUNNING_STATUSES

    def set_capabilities(self, changes: list[tuple[MigrationCapability, bool]]) -> None:
        """Checked first, then set: a refused list changes nothing (QEMU's
        migrate-set-capabilities)."""
        if self.is_running():
            raise MigrationError("There's a migration process in progress")
        for capability, state in changes:
            if state and capability not in SUPPORTED_CAPABILITIES:
                raise MigrationError(f"Migration capability '{capability.value}' is not supported by pemu")
        for capability, state in changes:
            self.capabilities[capability] = state

    def _events_on(self) -> bool:
        return self.capabilities[MigrationCapability.EVENTS]

    def _set_status(self, new: MigrationStatus) -> None:
        with bql:  # the event goes to the monitors' chardevs, also from the migration thread
            self.status = new
            if self._events_on():
                qapi_event_send("MIGRATION", {"status": new.value})

    def _set_incoming_status(self, new: MigrationStatus) -> None:
        with bql:
            self.incoming_status = new
            if self._events_on():
                qapi_event_send("MIGRATION", {"status": new.value})

    def _pass_event(self, pass_: int) -> None:
        if self._events_on():
            with bql:
                qapi_event_send("MIGRATION_PASS", {"pass": pass_})

    # --- outgoing ------------------------------------------------------------------------

    def migrate(self, uri: str, on_finished: Callable[[], None] | None = None) -> None:
        """Start an outgoing migration to ``uri`` (on the monitor's thread, big lock held).

        Raises MigrationError when it cannot start; once started, failures
        show in the status and its error, and ``on_finished`` runs on the
        main loop when it has ended."""
        from pemu.migration.savevm import MigrationBlocked, migratable_devices
        from pemu.system.runstate import RunState, runstate_get

        if self.is_running():
            raise MigrationError("There's a migration process in progress")
        if runstate_get() == RunState.INMIGRATE:
            raise MigrationError("Guest is waiting for an incoming migration")
        try:
            migratable_devices(self.vm)
        except MigrationBlocked as e:
            raise MigrationError(str(e)) from None
        try:
            channel = parse_outgoing_uri(uri)
        except MigrationChannelError as e:
            raise MigrationError(str(e)) from None
        self._channel = channel
        self.error_desc = None
        self.ram = RAMCounters()
        self.setup_time_ms = self.total_time_ms = self.downtime_ms = self.expected_downtime_ms = None
        self.start_time = time.monotonic()
        if on_finished is not None:
            self.on_finished.append(on_finished)
        self._set_status(MigrationStatus.SETUP)
        self._thread = threading.Thread(target=self._migration_thread, args=(channel,), name="live_migration",
                                        daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """migrate_cancel: an outgoing migration in pre-copy stops; the VM goes on."""
        if self.status not in (MigrationStatus.SETUP, MigrationStatus.ACTIVE):
            return
        self._set_status(MigrationStatus.CANCELLING)
        channel = self._channel
        if channel is not None:
            channel.shutdown()  # a write blocked on the peer returns

    def shutdown(self, timeout: float = 10.0) -> None:
        """At exit (the big lock not held): cancel an outgoing migration and
        wait for its thread (migration_shutdown); close an incoming channel."""
        self.cancel()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._incoming is not None:
            self._incoming.close()

    def _migration_thread(self, channel: OutgoingChannel) -> None:
        from pemu.migration.qemu_file import QEMUFileWriter
        from pemu.migration.savevm import SaveVMState

        f = QEMUFileWriter(channel.sink)
        save: SaveVMState | None = None
        switched = _Switchover()
        try:
            with bql:
                factory = self.save_state_factory
                if factory is not None:
                    save = factory(self.vm, f, channel.mapped_ram)
                else:
                    save = SaveVMState(self.vm, f, mapped_ram=channel.mapped_ram)
                save.setup()
            self.ram.total = save.ram.dirty_pages * TARGET_PAGE_SIZE  # every page is dirty after setup
            self.setup_time_ms = self._elapsed_ms()
            if self.status is MigrationStatus.CANCELLING:
                raise _Cancelled
            self._set_status(MigrationStatus.ACTIVE)
            self.live = save.live
            if save.live:
                self._precopy(save, f)
            self._complete(save, f, channel, switched)
        except _Cancelled:
            self._end_failed(save, channel, switched, None)
        except Exception as e:  # noqa: BLE001 - a failed migration must leave the VM running
            self._end_failed(save, channel, switched, _one_line(e))
        else:
            self._end(save, channel)

    def _elapsed_ms(self) -> int:
        return int((time.monotonic() - self.start_time) * 1000)

    def _refresh(self, save: SaveVMState, f: QEMUFileWriter) -> None:
        """The RAM counters from the stream's (pages sent, zero pages, RAM left to send)."""
        ram, counts = self.ram, save.ram
        # With mapped-ram the pages are written into the file beside the stream.
        ram.transferred = f.bytes_put + (save.ram_bytes_transferred if save.mapped_ram else 0)
        ram.normal_pages = counts.normal_pages
        ram.duplicate_pages = counts.zero_pages
        ram.remaining = counts.dirty_pages * TARGET_PAGE_SIZE

    def _precopy(self, save: SaveVMState, f: QEMUFileWriter) -> None:
        active_start = time.monotonic()
        with bql:
            save.pending_bytes()
        ram = self.ram
        ram.dirty_sync_count = 1
        self._pass_event(1)
        self._refresh(save, f)
        passes = 1
        pass_start = window_start = active_start
        window_bytes = 0
        window_pages = ram.normal_pages + ram.duplicate_pages
        while True:
            if self.status is MigrationStatus.CANCELLING:
                raise _Cancelled
            limit = self.params.max_bandwidth  # 0: no limit, as in QEMU
            budget = int(limit * RATE_WINDOW_S) - window_bytes if limit else ITERATE_CHUNK
            now = time.monotonic()
            if budget <= 0 or now - window_start >= RATE_WINDOW_S:
                if budget <= 0:
                    time.sleep(max(0.0, window_start + RATE_WINDOW_S - now))
                    now = time.monotonic()
                pages = ram.normal_pages + ram.duplicate_pages
                ram.pages_per_second = int((pages - window_pages) / max(now - window_start, 1e-3))
                window_start, window_bytes, window_pages = now, 0, pages
                self._update_rates(active_start)
                continue
            sent = save.iterate(min(budget, ITERATE_CHUNK))
            window_bytes += sent
            self._refresh(save, f)
            ram.precopy_bytes = ram.transferred
            if sent:
                continue
            # The pass is done: what did the guest dirty meanwhile?
            with bql:
                pending = save.pending_bytes()
            now = time.monotonic()
            ram.dirty_sync_count += 1
            self._pass_event(ram.dirty_sync_count)
            self._refresh(save, f)
            ram.dirty_pages_rate = int(pending / TARGET_PAGE_SIZE / max(now - pass_start, 1e-3))
            pass_start = now
            bandwidth = self._update_rates(active_start)
            threshold = bandwidth * self.params.downtime_limit / 1000
            if pending <= threshold or passes >= MAX_PASSES:
                return
            passes += 1

    def _update_rates(self, active_start: float) -> float:
        """Bytes a second sent since pre-copy started; updates mbps and the expected downtime."""
        elapsed = max(time.monotonic() - active_start, 1e-3)
        bandwidth = self.ram.transferred / elapsed
        self.ram.mbps = bandwidth * 8 / 1e6
        if bandwidth > 0:
            self.expected_downtime_ms = int(self.ram.remaining / bandwidth * 1000)
        return bandwidth

    def _complete(self, save: SaveVMState, f: QEMUFileWriter, channel: OutgoingChannel,
                  switched: _Switchover) -> None:
        from pemu.system import cpus
        from pemu.system.runstate import RunState, runstate_get, runstate_set

        with bql:
            if self.status is MigrationStatus.CANCELLING:
                raise _Cancelled
            downtime_start = time.monotonic()
            self._refresh(save, f)
            before = self.ram.transferred
            switched.previous_state = runstate_get()
            cpus.vm_stop(RunState.FINISH_MIGRATE)
            runstate_set(RunState.FINISH_MIGRATE)
            switched.stopped = True
            block = self._block_devices()
            if block is not None:
                block.inactivate_all()
                switched.inactivated = True
            save.complete()
            f.flush()
            channel.finish()
            end = time.monotonic()
            self.downtime_ms = int((end - downtime_start) * 1000)
            self.total_time_ms = int((end - self.start_time) * 1000)
            self._refresh(save, f)
            ram = self.ram
            ram.downtime_bytes = ram.transferred - before
            ram.mbps = ram.transferred * 8 / 1e6 / max(end - self.start_time, 1e-3)
            self.expected_downtime_ms = None
            runstate_set(RunState.POSTMIGRATE)

    def _block_devices(self) -> BlockDevices | None:
        machine = self.vm.machine
        return machine.opened_block_devices() if machine is not None else None

    def _end(self, save: SaveVMState | None, channel: OutgoingChannel) -> None:
        # "completed" only once the dirty log is stopped: a next migration may start right then.
        with bql:
            try:
                if save is not None:
                    save.cleanup()
            finally:
                channel.close()
                self._channel = None
                self._set_status(MigrationStatus.COMPLETED)
        self._notify_finished()

    def _end_failed(self, save: SaveVMState | None, channel: OutgoingChannel, switched: _Switchover,
                    error: str | None) -> None:
        """After a failure (``error``) or a cancel (None): the VM as it was before."""
        from pemu.system import cpus
        from pemu.system.runstate import RunState, runstate_set

        with bql:
            try:
                if save is not None:
                    save.cleanup()
            finally:
                channel.close()
                self._channel = None
                block = self._block_devices()
                if switched.inactivated and block is not None:
                    from pemu.block.block_int import BlockOpenError
                    from pemu.util.error import error_report

                    try:
                        block.activate_all()
                    except BlockOpenError as e:  # another process took an image meanwhile
                        error_report(e.message)
                if switched.stopped:
                    if switched.previous_state == RunState.RUNNING:
                        cpus.vm_start()
                    elif switched.previous_state is not None:
                        runstate_set(switched.previous_state)
                self.total_time_ms = self._elapsed_ms()
                self.expected_downtime_ms = None
                if error is None and self.status is MigrationStatus.CANCELLING:
                    self._set_status(MigrationStatus.CANCELLED)
                elif self.status is MigrationStatus.CANCELLING:
                    self._set_status(MigrationStatus.CANCELLED)  # the write failed because of the cancel
                else:
                    self.error_desc = error or "migration failed"
                    self._set_status(MigrationStatus.FAILED)
        self._notify_finished()

    def _notify_finished(self) -> None:
        from pemu.util.main_loop import main_loop

        callbacks, self.on_finished = self.on_finished, []
        for cb in callbacks:
            main_loop().bh_schedule(cb)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the outgoing migration's thread (tests, shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # --- incoming -----------------------------------------------------------------------

    def start_incoming(self, uri: str) -> None:
        """Open ``uri`` and load the stream from it once it is readable (the
        VM is in ``inmigrate``); MigrationError if it cannot be opened."""
        from pemu.util.main_loop import main_loop

        if self.incoming_started:
            raise MigrationError("The incoming migration has already been started")
        try:
            channel = parse_incoming_uri(uri)
        except MigrationChannelError as e:
            raise MigrationError(str(e)) from None
        self.incoming_started = True
        self._incoming = channel
        self.incoming_address = channel.address()
        self._set_incoming_status(MigrationStatus.SETUP)
        fd = channel.ready_fd()
        loop = main_loop()
        if fd is None:
            loop.bh_schedule(self._incoming_load)
            return

        def accept() -> None:
            loop.set_fd_handler(fd, None)
            try:
                channel.accept()
            except OSError as e:
                self._incoming_failed(f"accepting the migration connection failed: {e.strerror or e}")
                return
            self._incoming_load()

        loop.set_fd_handler(fd, accept)

    def _incoming_load(self) -> None:
        """Load the whole stream (main loop, big lock held, VM stopped)."""
        from pemu.migration.qemu_file import QEMUFileReader
        from pemu.migration.savevm import qemu_loadvm_state
        from pemu.system import cpus
        from pemu.system.runstate import RunState, runstate_set

        channel = self._incoming
        assert channel is not None
        self._set_incoming_status(MigrationStatus.ACTIVE)
        try:
            qemu_loadvm_state(self.vm, QEMUFileReader(channel.source))
        except Exception as e:  # noqa: BLE001 - a bad stream (or a bug loading it) ends pemu with one line
            channel.close()
            self._incoming_failed(_one_line(e))
            return
        channel.close()
        block = self._block_devices()
        if block is not None:
            from pemu.block.block_int import BlockOpenError
            from pemu.util.error import error_report

            try:
                block.activate_all()
            except BlockOpenError as e:
                # As QEMU: the VM stays paused; `cont` tries the images again.
                error_report(e.message)
                self.autostart = False
        if self.vm.net is not None:
            from pemu.net.announce import qemu_announce_self

            # The NICs tell the switches in front of them where they are now (QEMU's announce).
            self.announce = qemu_announce_self(self.vm.net)
        self._set_incoming_status(MigrationStatus.COMPLETED)
        if self.autostart:
            cpus.vm_start()
        else:
            runstate_set(RunState.PAUSED)

    def _incoming_failed(self, reason: str) -> None:
        from pemu.system.runstate import ShutdownCause, qemu_system_shutdown_request
        from pemu.util.error import error_report

        self.incoming_error = reason
        self._set_incoming_status(MigrationStatus.FAILED)
        error_report(f"load of migration failed: {reason}")
        qemu_system_shutdown_request(ShutdownCause.HOST_ERROR, exit_status=1)


class _Switchover:
    """What the completion step changed, to undo on failure."""

    __slots__ = ("stopped", "inactivated", "previous_state")

    def __init__(self) -> None:
        from pemu.system.runstate import RunState

        self.stopped = False
        self.inactivated = False
        self.previous_state: RunState | None = None


def _one_line(exc: BaseException) -> str:
    """The reason an exception gives, on one line (its type when it says nothing)."""
    from pemu.migration.qemu_file import MigrationStreamError
    from pemu.migration.savevm import LoadVMError, MigrationBlocked
    from pemu.migration.vmstate import VMStateError

    text = " ".join(str(exc).split())
    known = (MigrationError, MigrationChannelError, MigrationStreamError, VMStateError, LoadVMError, MigrationBlocked)
    if isinstance(exc, known) and text:
        return text
    if isinstance(exc, OSError):
        return exc.strerror or text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def migrate_get_current(vm: VirtualMachine) -> MigrationState:
    """The VM's migration state, made on first use (QEMU's migrate_get_current)."""
    if vm.migration is None:
        vm.migration = MigrationState(vm)
    return vm.migration
