"""Migration control without a guest: URIs, the transports on real sockets,
pipes and files, the parameters and their monitor commands, and the
migration thread's pre-copy loop, switch-over, failure and cancel with a
stand-in for the stream (the stream itself is tested in test_savevm*)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from pemu.migration.channel import FdSink, MigrationChannelError
from pemu.migration.exec import ExecIncoming, ExecOutgoing
from pemu.migration.file import FileIncoming, FileOutgoing, parse_file_uri
from pemu.migration.migration import (
    MAX_PASSES,
    MigrationCapability,
    MigrationError,
    MigrationState,
    MigrationStatus,
    check_incoming_uri,
    migrate_get_current,
    parse_outgoing_uri,
)
from pemu.migration.qemu_file import QEMUFileWriter
from pemu.migration.socket import SocketIncoming, SocketOutgoing, parse_inet
from pemu.monitor.monitor import StringMonitor
from pemu.system.runstate import RunState
from pemu.system.vm import VirtualMachine

# --- URIs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("127.0.0.1:4444", ("127.0.0.1", 4444)),
    ("localhost:1", ("localhost", 1)),
    (":4444", ("", 4444)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:5555", ("::1", 5555)),
])
def test_inet_addresses(spec: str, expected: tuple[str, int]) -> None:
    assert parse_inet(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("4444", "error parsing address '4444'"),
    ("host:port", "error parsing port in address 'host:port'"),
    ("host:99999", "port 99999 out of range"),
    ("[::1:5", "error parsing IPv6 address '[::1:5'"),
])
def test_bad_inet_addresses(spec: str, message: str) -> None:
    with pytest.raises(MigrationChannelError, match=f"^{message}$".replace("[", r"\[")):
        parse_inet(spec)


def test_file_uris() -> None:
    assert parse_file_uri("/tmp/vm") == ("/tmp/vm", 0)
    assert parse_file_uri("/tmp/vm,offset=0x1000") == ("/tmp/vm", 4096)
    with pytest.raises(MigrationChannelError, match="Parameter 'offset' expects a number, not 'x'"):
        parse_file_uri("/tmp/vm,offset=x")


@pytest.mark.parametrize("uri", ["defer", "exec:cat f", "file:/x", "tcp::4444"])
def test_incoming_uris_accepted(uri: str) -> None:
    check_incoming_uri(uri)


@pytest.mark.parametrize("uri", ["foo", "unix:/sock", "rdma:host:1", "exec"])
def test_unknown_incoming_protocol(uri: str) -> None:
    with pytest.raises(MigrationChannelError, match=f"^unknown migration protocol: {uri}$"):
        check_incoming_uri(uri)


def test_unknown_outgoing_protocol() -> None:
    with pytest.raises(MigrationChannelError, match="^Parameter 'uri' expects a valid migration protocol$"):
        parse_outgoing_uri("udp:1.2.3.4:5")


# --- transports -----------------------------------------------------------------------------


def test_tcp_carries_the_stream_and_waits_for_the_peer() -> None:
    incoming = SocketIncoming("127.0.0.1:0")
    assert incoming.address() == f"tcp:127.0.0.1:{incoming.port}"
    assert incoming.ready_fd() is not None
    data = os.urandom(3 << 20)
    received: list[bytes] = []

    def destination() -> None:
        incoming.accept()
        received.append(incoming.source.read())
        incoming.close()  # the source's finish() waits for this

    thread = threading.Thread(target=destination)
    thread.start()
    outgoing = SocketOutgoing(f"127.0.0.1:{incoming.port}")
    outgoing.sink.write(data)
    outgoing.finish()
    outgoing.close()
    thread.join(10)
    assert received == [data]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback address")
def test_tcp_over_ipv6_and_every_address() -> None:
    incoming = SocketIncoming("[::1]:0")
    assert incoming.address() == f"tcp:[::1]:{incoming.port}"
    outgoing = SocketOutgoing(f"[::1]:{incoming.port}")
    incoming.accept()
    outgoing.sink.write(b"over ipv6")
    outgoing.sock.shutdown(socket.SHUT_WR)
    assert incoming.source.read() == b"over ipv6"
    outgoing.close()
    incoming.close()
    anywhere = SocketIncoming(":0")  # tcp::PORT listens on every IPv4 address
    assert anywhere.address() == f"tcp:0.0.0.0:{anywhere.port}"
    anywhere.close()


def test_tcp_connection_refused_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(MigrationChannelError, match=f"^Failed to connect to '127.0.0.1:{port}': Connection refused$"):
            SocketOutgoing(f"127.0.0.1:{port}")


def test_tcp_listen_on_a_used_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(MigrationChannelError, match="^Failed to bind socket: Address already in use$"):
            SocketIncoming(f"127.0.0.1:{s.getsockname()[1]}")


def test_cancel_unblocks_a_writer_stuck_on_a_silent_peer() -> None:
    incoming = SocketIncoming("127.0.0.1:0")
    outgoing = SocketOutgoing(f"127.0.0.1:{incoming.port}")
    failed: list[OSError] = []

    def writer() -> None:
        try:
            while True:
                outgoing.sink.write(bytes(1 << 20))  # the peer never reads: the socket buffers fill
        except OSError as e:
            failed.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.3)
    outgoing.shutdown()
    thread.join(10)
    assert not thread.is_alive() and failed
    outgoing.close()
    incoming.close()


def test_exec_both_ways(tmp_path: Path) -> None:
    target = tmp_path / "stream"
    out = ExecOutgoing(f"cat > {target}")
    out.sink.write(b"hello " * 1000)
    out.finish()
    out.close()
    assert target.read_bytes() == b"hello " * 1000
    inc = ExecIncoming(f"cat {target}")
    assert inc.source.read() == b"hello " * 1000
    inc.close()


def test_exec_command_that_fails_fails_the_migration() -> None:
    out = ExecOutgoing("cat > /dev/null; exit 3")
    out.sink.write(b"x")
    with pytest.raises(MigrationChannelError, match="^the command 'cat > /dev/null; exit 3' exited with status 3$"):
        out.finish()
    out.close()


def test_file_with_offset(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    out = FileOutgoing(f"{path},offset=512")
    assert out.mapped_ram
    out.sink.write(b"stream")
    out.finish()
    out.close()
    assert path.read_bytes() == bytes(512) + b"stream"
    inc = FileIncoming(f"{path},offset=512")
    assert inc.source.read() == b"stream"
    inc.close()
    with pytest.raises(MigrationChannelError, match="^Could not open '/nonexistent/x': No such file or directory$"):
        FileIncoming("/nonexistent/x")


def test_file_replaced_not_cut_so_its_mappings_stay_valid(tmp_path: Path) -> None:
    """A VM restored from a mapped-ram file maps its pages: saving to the same
    path must leave those pages readable (a cut file faults the VMM)."""
    import mmap

    path = tmp_path / "snap"
    path.write_bytes(b"old!" * 1024)
    with open(path, "rb") as old:
        mapping = mmap.mmap(old.fileno(), 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    out = FileOutgoing(str(path))
    out.sink.write(b"new")
    out.finish()
    out.close()
    assert path.read_bytes() == b"new"
    assert mapping[:8] == b"old!old!"  # the old inode lives on for its mapping (SIGBUS if cut)
    mapping.close()


def test_fd_sink_writes_everything_to_a_pipe() -> None:
    r, w = os.pipe()
    data = os.urandom(1 << 20)  # more than a pipe holds: the writer waits for the reader
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")))
    reader.start()
    assert FdSink(w).write(data) == len(data)
    os.close(w)
    reader.join(10)
    os.close(r)
    assert b"".join(chunks) == data


# --- parameters and their commands ------------------------------------------------------------


def _hmp(line: str) -> str:
    mon = StringMonitor()
    mon.handle_command(line)
    return mon.output().replace("\r\n", "\n")


def test_parameters_defaults_and_setting(virtual_machine: VirtualMachine) -> None:
    assert _hmp("info migrate_parameters") == "max-bandwidth: 134217728 bytes/second\ndowntime-limit: 300 ms\n"
    assert _hmp("migrate_set_parameter downtime-limit 100") == ""
    assert _hmp("migrate_set_parameter max-bandwidth 1G") == ""
    assert _hmp("migrate_set_parameter max-bandwidth 32") == ""  # MiB/s without a suffix
    params = migrate_get_current(virtual_machine).params
    assert (params.downtime_limit, params.max_bandwidth) == (100, 32 << 20)


@pytest.mark.parametrize("line, message", [
    ("migrate_set_parameter downtime-limit 2000001",
     "Error: Parameter 'downtime_limit' expects an integer in the range of 0 to 2000000 ms"),
    ("migrate_set_parameter downtime-limit abc", "Error: Parameter 'downtime-limit' expects uint64"),
    ("migrate_set_parameter max-bandwidth lots", "Error: Parameter 'max-bandwidth' expects a size value"),
    ("migrate_set_parameter colo-mode on", "Error: Invalid parameter value: colo-mode"),
])
def test_bad_parameters(virtual_machine: VirtualMachine, line: str, message: str) -> None:
    assert _hmp(line) == message + "\n"
    params = migrate_get_current(virtual_machine).params
    assert (params.downtime_limit, params.max_bandwidth) == (300, 128 << 20)


def test_commands_before_any_migration(virtual_machine: VirtualMachine) -> None:
    assert _hmp("info migrate") == ""
    assert _hmp("migrate_incoming tcp::4444") == "Error: '-incoming' was not specified on the command line\n"
    assert _hmp("migrate foo:bar") == "Error: Parameter 'uri' expects a valid migration protocol\n"
    assert _hmp("migrate_cancel") == ""


# --- the migration thread, with a stand-in for the stream ------------------------------------------


class FakeRAM:
    """The counters the migration reads from the stream's RAM part."""

    def __init__(self, pages: int) -> None:
        self.dirty_pages = pages  # all dirty after setup
        self.normal_pages = 0
        self.zero_pages = 0


class FakeSave:
    """RAM of ``pages`` pages all dirty at first; each dirty sync finds ``dirtied`` pages again
    (the guest writing while it runs).  A page goes as 4096 bytes."""

    live = True
    mapped_ram = False
    ram_bytes_transferred = 0

    def __init__(self, f: QEMUFileWriter, pages: int, dirtied: list[int], fail_in: str = "") -> None:
        self.f, self.dirtied, self.fail_in = f, list(dirtied), fail_in
        self.ram = FakeRAM(pages)
        self.calls: list[str] = []

    def setup(self) -> None:
        self.calls.append("setup")
        self.f.put_be32(0x5145564D)

    def _send(self, pages: int) -> int:
        self.f.put_buffer(bytes(pages * 4096))
        self.ram.dirty_pages -= pages
        self.ram.normal_pages += pages
        return pages * 4096

    def iterate(self, max_bytes: int) -> int:
        return self._send(min(max(1, max_bytes // 4096), self.ram.dirty_pages))

    def pending_bytes(self) -> int:
        self.calls.append("sync")
        self.ram.dirty_pages += self.dirtied.pop(0) if self.dirtied else 0
        return self.ram.dirty_pages * 4096

    def complete(self) -> None:
        self.calls.append("complete")
        if self.fail_in == "complete":
            raise OSError(5, "Input/output error")
        self._send(self.ram.dirty_pages)

    def cleanup(self) -> None:
        self.calls.append("cleanup")


def _migrate(vm: VirtualMachine, tmp_path: Path, save_args: dict[str, object]) -> tuple[MigrationState, FakeSave]:
    state = migrate_get_current(vm)
    saves: list[FakeSave] = []

    def factory(_vm: VirtualMachine, f: QEMUFileWriter, mapped_ram: bool) -> FakeSave:
        saves.append(FakeSave(f, **save_args))
        return saves[-1]

    state.save_state_factory = factory
    vm.run.state = RunState.RUNNING
    state.migrate(f"exec:cat > {tmp_path / 'out'}")
    state.wait(30)
    return state, saves[0]


def test_precopy_converges_and_the_source_ends_postmigrate(virtual_machine: VirtualMachine,
                                                            tmp_path: Path) -> None:
    # A zero downtime limit converges only when nothing is left to send.
    migrate_get_current(virtual_machine).params.downtime_limit = 0
    state, save = _migrate(virtual_machine, tmp_path, {"pages": 256, "dirtied": [64, 8, 0]})
    assert state.status is MigrationStatus.COMPLETED, state.error_desc
    assert virtual_machine.run.state is RunState.POSTMIGRATE
    assert save.calls[0] == "setup" and save.calls[-2:] == ["complete", "cleanup"]
    # Synced after setup, then after each pass until nothing was left.
    assert save.calls.count("sync") == 3
    assert state.ram.dirty_sync_count == 3
    assert state.ram.normal_pages == 256 + 64 + 8
    assert state.ram.total == 256 * 4096 and state.ram.remaining == 0
    assert state.downtime_ms is not None and state.total_time_ms is not None
    assert (tmp_path / "out").stat().st_size == 4 + (256 + 64 + 8) * 4096


def test_a_guest_that_keeps_dirtying_is_stopped_after_max_passes(virtual_machine: VirtualMachine,
                                                                  tmp_path: Path) -> None:
    # With a zero downtime limit this guest never converges: the passes end at MAX_PASSES and the rest goes
    # with the VM stopped.
    migrate_get_current(virtual_machine).params.downtime_limit = 0
    state, save = _migrate(virtual_machine, tmp_path, {"pages": 16, "dirtied": [0] + [4] * 100})
    assert state.status is MigrationStatus.COMPLETED, state.error_desc
    assert save.calls.count("sync") == 1 + MAX_PASSES  # after setup, then after each pass
    assert state.ram.downtime_bytes >= 4 * 4096


def test_bandwidth_limit_is_kept(virtual_machine: VirtualMachine, tmp_path: Path) -> None:
    migrate_get_current(virtual_machine).params.max_bandwidth = 4 << 20  # 4 MiB/s
    start = time.monotonic()
    state, _save = _migrate(virtual_machine, tmp_path, {"pages": 512, "dirtied": [0]})  # 2 MiB
    assert state.status is MigrationStatus.COMPLETED
    assert time.monotonic() - start >= 0.4


def test_failure_in_the_switch_over_runs_the_vm_again(virtual_machine: VirtualMachine, tmp_path: Path) -> None:
    state, save = _migrate(virtual_machine, tmp_path, {"pages": 8, "dirtied": [0], "fail_in": "complete"})
    assert state.status is MigrationStatus.FAILED
    assert state.error_desc == "Input/output error"
    assert virtual_machine.run.state is RunState.RUNNING
    assert save.calls[-1] == "cleanup"
    assert _hmp("info migrate").startswith("Migration status: failed (Input/output error)\n")


def test_cancel_during_precopy_leaves_the_vm_running(virtual_machine: VirtualMachine, tmp_path: Path) -> None:
    state = migrate_get_current(virtual_machine)
    state.params.max_bandwidth = 1 << 20
    saves: list[FakeSave] = []

    def factory(_vm: VirtualMachine, f: QEMUFileWriter, mapped_ram: bool) -> FakeSave:
        saves.append(FakeSave(f, 4096, [0]))  # 16 MiB at 1 MiB/s
        return saves[-1]

    state.save_state_factory = factory
    virtual_machine.run.state = RunState.RUNNING
    state.migrate(f"exec:cat > {tmp_path / 'out'}")
    time.sleep(0.5)
    assert state.status is MigrationStatus.ACTIVE
    with pytest.raises(MigrationError, match="^There's a migration process in progress$"):
        state.migrate(f"exec:cat > {tmp_path / 'other'}")
    state.cancel()
    state.wait(10)
    assert state.status is MigrationStatus.CANCELLED
    assert virtual_machine.run.state is RunState.RUNNING
    assert "complete" not in saves[0].calls and saves[0].calls[-1] == "cleanup"


def test_without_dirty_tracking_everything_is_copied_stopped(virtual_machine: VirtualMachine,
                                                             tmp_path: Path) -> None:
    """An accelerator that cannot track the guest's writes (SaveVMState.live False): no pre-copy at all."""
    state = migrate_get_current(virtual_machine)

    def factory(_vm: VirtualMachine, f: QEMUFileWriter, mapped_ram: bool) -> FakeSave:
        save = FakeSave(f, 64, [])
        save.live = False
        saves.append(save)
        return save

    saves: list[FakeSave] = []
    state.save_state_factory = factory
    virtual_machine.run.state = RunState.RUNNING
    state.migrate(f"exec:cat > {tmp_path / 'out'}")
    state.wait(30)
    assert state.status is MigrationStatus.COMPLETED, state.error_desc
    assert saves[0].calls == ["setup", "complete", "cleanup"]  # no sync, no iteration while running
    assert state.ram.precopy_bytes == 0 and state.ram.downtime_bytes == 64 * 4096
    assert not state.live


# --- capabilities ----------------------------------------------------------------------------------


def _listen(vm: VirtualMachine) -> list[tuple[str, object]]:
    events: list[tuple[str, object]] = []
    vm.event_listeners.append(lambda name, data, _stamp: events.append((name, data)))
    return events


def test_no_migration_events_without_the_events_capability(virtual_machine: VirtualMachine,
                                                            tmp_path: Path) -> None:
    events = _listen(virtual_machine)
    state, _save = _migrate(virtual_machine, tmp_path, {"pages": 16, "dirtied": [4, 0]})
    assert state.status is MigrationStatus.COMPLETED
    assert [e for e in events if e[0].startswith("MIGRATION")] == []


def test_migration_and_pass_events_with_the_events_capability(virtual_machine: VirtualMachine,
                                                              tmp_path: Path) -> None:
    events = _listen(virtual_machine)
    migrate_get_current(virtual_machine).params.downtime_limit = 0
    assert _hmp("migrate_set_capability events on") == ""
    state, _save = _migrate(virtual_machine, tmp_path, {"pages": 16, "dirtied": [4, 0]})
    assert state.status is MigrationStatus.COMPLETED
    assert [e for e in events if e[0].startswith("MIGRATION")] == [
        ("MIGRATION", {"status": "setup"}), ("MIGRATION", {"status": "active"}),
        ("MIGRATION_PASS", {"pass": 1}), ("MIGRATION_PASS", {"pass": 2}),
        ("MIGRATION", {"status": "completed"})]
    assert state.ram.dirty_sync_count == 2  # one event per dirty-log sync, as in QEMU


def test_capabilities_hmp_layout_and_refusals(virtual_machine: VirtualMachine) -> None:
    names = [c.value for c in MigrationCapability]
    assert len(names) == 21 and names[5] == "events"
    assert _hmp("info migrate_capabilities") == "".join(f"{name}: off\n" for name in names)
    assert _hmp("migrate_set_capability events on") == ""
    assert "events: on\n" in _hmp("info migrate_capabilities")
    assert _hmp("migrate_set_capability multifd on") == \
        "Error: Migration capability 'multifd' is not supported by pemu\n"
    assert _hmp("migrate_set_capability multifd off") == ""
    assert _hmp("migrate_set_capability nope on") == "Error: Invalid parameter 'nope'\n"
    assert _hmp("migrate_set_capability events maybe") == "Error: Expected 'on' or 'off'\n"
    caps = migrate_get_current(virtual_machine).capabilities
    assert [c for c, on in caps.items() if on] == [MigrationCapability.EVENTS]


def test_capabilities_cannot_change_during_a_migration(virtual_machine: VirtualMachine, tmp_path: Path) -> None:
    state = migrate_get_current(virtual_machine)
    state.params.max_bandwidth = 1 << 20  # 1 MiB/s for 2 MiB: about two seconds
    errors: list[str] = []

    def factory(_vm: VirtualMachine, f: QEMUFileWriter, mapped_ram: bool) -> FakeSave:
        errors.append(_hmp("migrate_set_capability events on"))
        return FakeSave(f, pages=512, dirtied=[0])

    state.save_state_factory = factory
    virtual_machine.run.state = RunState.RUNNING
    state.migrate(f"exec:cat > {tmp_path / 'out'}")
    for _ in range(100):
        if state.status is MigrationStatus.ACTIVE:
            break
        time.sleep(0.01)
    assert _hmp("migrate_set_capability events on") == "Error: There's a migration process in progress\n"
    state.cancel()
    state.wait(30)
    assert not state.capabilities[MigrationCapability.EVENTS]
    assert _hmp("migrate_set_capability events on") == ""
