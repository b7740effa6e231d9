"""QMP against the real pemu process, with QEMU's own client library
(qemu.qmp) on real sockets: every command with a checked result, events,
several monitors and clients, bad input, and QEMUMachine's exact command
line booting the test guest."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from pemu.monitor.qmp_table import QMP_COMMANDS
from pemu.qapi.introspect import schema_problems
from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.harness import GuestProcess

REPO = Path(__file__).resolve().parents[2]


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"pemu exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


class Pemu:
    """A pemu process started with -S and QMP monitors on unix sockets."""

    def __init__(self, tmp_path: Path, extra: list[str]) -> None:
        self.sock = tmp_path / "qmp.sock"
        self.sock2 = tmp_path / "qmp2.sock"
        self.disk = tmp_path / "disk.raw"
        self.disk.write_bytes(bytes(1 << 20))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pemu", "-S", "-display", "none", "-vga", "none", "-monitor", "null",
             "-serial", "null", "-qmp", f"unix:{self.sock},server=on,wait=off",
             "-chardev", f"socket,id=qmp2,path={self.sock2},server=on,wait=off",
             "-mon", "chardev=qmp2,mode=control,pretty=on",
             "-drive", f"file={self.disk},if=none,id=disk0,format=raw", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        for path in (self.sock, self.sock2):  # chardevs and -qmp are set up in no promised order
            _wait_for_socket(path, self.proc)

    def client(self, path: Path | None = None) -> QEMUMonitorProtocol:
        qmp = QEMUMonitorProtocol(str(path or self.sock))
        qmp.settimeout(60)
        greeting = qmp.connect(negotiate=True)
        assert greeting is not None and greeting["QMP"]["capabilities"] == []
        return qmp

    def finish(self) -> int:
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pemu(tmp_path: Path) -> Iterator[Pemu]:
    vm = Pemu(tmp_path, [])
    try:
        yield vm
    finally:
        if vm.proc.poll() is None:
            vm.proc.kill()
            vm.proc.wait()
        for stream in (vm.proc.stdout, vm.proc.stderr):
            if stream is not None:
                stream.close()


def close_after_quit(qmp: QEMUMonitorProtocol) -> None:
    """Close a client whose server quit: EOF is what qemu.qmp reports then (QEMUMachine ignores it too)."""
    try:
        qmp.close()
    except EOFError:
        pass


def _events(qmp: QEMUMonitorProtocol, wanted: list[str], timeout: float = 30) -> list[dict[str, Any]]:
    """Events until the names in ``wanted`` have come, in order."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while [e["event"] for e in got if e["event"] in wanted] != wanted:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"events {wanted} not received; got {got}"
        event = qmp.pull_event(wait=remaining)
        if event is not None:
            got.append(event)
    return got


def test_every_command_with_qemu_qmp(pemu: Pemu, tmp_path: Path) -> None:
    qmp = pemu.client()
    done: set[str] = {"qmp_capabilities"}

    def cmd(command: str, **args: Any) -> Any:
        done.add(command)
        return qmp.cmd(command, **args)

    def err(command: str, **args: Any) -> dict[str, Any]:
        done.add(command)
        reply = qmp.cmd_raw(command, args or None)
        assert "error" in reply, reply
        return reply["error"]

    assert cmd("query-version") == {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "pemu 0.1.0"}
    names = {c["name"] for c in cmd("query-commands")}
    assert names == {c.name for c in QMP_COMMANDS}
    schema = cmd("query-qmp-schema")
    assert schema_problems(schema) == []
    assert {e["name"] for e in schema if e["meta-type"] == "command"} == names
    assert cmd("query-status") == {"running": False, "singlestep": False, "status": "prelaunch"}
    assert cmd("query-name") == {}
    assert cmd("query-uuid") == {"UUID": "00000000-0000-0000-0000-000000000000"}
    machines = {m["name"]: m for m in cmd("query-machines")}
    assert machines["pc-q35-7.2"]["alias"] == "q35" and machines["pc-q35-7.2"]["is-default"]
    kvm = cmd("query-kvm")
    assert kvm == {"enabled": False, "present": os.access("/dev/kvm", os.R_OK | os.W_OK)}
    (cpu,) = cmd("query-cpus-fast")
    assert cpu["cpu-index"] == 0 and cpu["target"] == "x86_64" and cpu["qom-path"].startswith("/machine/")
    assert cpu["props"] == {"socket-id": 0, "core-id": 0, "thread-id": 0}
    (slot,) = cmd("query-hotpluggable-cpus")
    assert slot["qom-path"] == cpu["qom-path"] and slot["type"] == "qemu64-x86_64-cpu"
    (pci_bus,) = cmd("query-pci")
    ids = {(d["slot"], d["function"]): (d["id"]["vendor"], d["id"]["device"]) for d in pci_bus["devices"]}
    assert ids[(0, 0)] == (0x8086, 0x29C0) and ids[(31, 0)] == (0x8086, 0x2918)
    (block,) = cmd("query-block")
    assert block["device"] == "disk0" and not block["removable"]
    assert block["inserted"]["file"] == str(pemu.disk) and block["inserted"]["drv"] == "raw"
    assert block["inserted"]["image"]["virtual-size"] == 1 << 20
    (stats,) = cmd("query-blockstats")
    assert stats["device"] == "disk0" and stats["stats"]["wr_bytes"] == 0
    chardevs = {c["label"]: c for c in cmd("query-chardev")}
    assert chardevs["qmp2"] == {"label": "qmp2", "filename": f"disconnected:unix:{pemu.sock2},server=on",
                                "frontend-open": True}
    props = {p["name"]: p["type"] for p in cmd("qom-list", path="/machine")}
    assert props["hpet"] == "bool"
    assert cmd("qom-get", path="/machine", property="hpet") is True
    assert cmd("qom-set", path="/machine", property="graphics", value=False) == {}
    assert cmd("qom-get", path="/machine", property="graphics") is False
    assert err("qom-get", path="/nowhere", property="x") == {"class": "DeviceNotFound",
                                                            "desc": "Device '/nowhere' not found"}
    types = {t["name"]: t for t in cmd("qom-list-types", implements="machine")}
    assert types["pc-q35-7.2-machine"]["parent"] == "generic-pc-machine" and "device" not in types
    assert any(t.get("abstract") for t in cmd("qom-list-types", abstract=True))
    dev_props = {p["name"]: p for p in cmd("device-list-properties", typename="isa-serial")}
    assert {"iobase", "irq", "chardev"} <= set(dev_props)
    assert err("device-list-properties", typename="nope") == {"class": "DeviceNotFound",
                                                              "desc": "Device 'nope' not found"}
    assert err("device_add", driver="isa-debug-exit") == {"class": "GenericError",
                                                          "desc": "Bus 'isa.0' does not support hotplugging"}
    assert err("device_del", id="nothing")["class"] == "DeviceNotFound"
    assert err("screendump", filename=str(tmp_path / "shot.ppm"))["desc"] == \
        "There is no console to take a screendump from"
    # chardevs at run time
    log = tmp_path / "chr.log"
    assert cmd("chardev-add", id="c1", backend={"type": "file", "data": {"out": str(log)}}) == {}
    assert log.exists()
    assert err("chardev-add", id="c1", backend={"type": "null", "data": {}})["desc"] == \
        "Duplicate ID 'c1' for chardev"
    assert cmd("chardev-remove", id="c1") == {}
    assert err("chardev-remove", id="c1")["desc"] == "Chardev 'c1' not found"
    assert err("chardev-remove", id="qmp2")["desc"] == "Chardev 'qmp2' is busy"
    # net back-ends at run time
    net_sock = tmp_path / "net.sock"
    assert cmd("netdev_add", type="stream", id="n1", server=True,
               addr={"type": "unix", "path": str(net_sock)}) == {}
    assert net_sock.exists()
    assert cmd("set_link", name="n1", up=False) == {}
    assert "n1: index=0,type=stream" in cmd("human-monitor-command", **{"command-line": "info network"})
    assert err("set_link", name="n9", up=True)["class"] == "DeviceNotFound"
    assert cmd("netdev_del", id="n1") == {}
    assert err("netdev_del", id="n1") == {"class": "DeviceNotFound", "desc": "Device 'n1' not found"}
    assert cmd("human-monitor-command", **{"command-line": "info status"}) == "VM status: paused (prelaunch)\r\n"
    # run state and its events
    assert cmd("cont") == {}
    assert cmd("query-status")["status"] == "running"
    assert cmd("stop") == {}
    assert [e["event"] for e in _events(qmp, ["RESUME", "STOP"])] == ["RESUME", "STOP"]
    assert cmd("system_reset") == {}
    reset = _events(qmp, ["RESET"])[-1]
    assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    assert set(reset["timestamp"]) == {"seconds", "microseconds"}
    assert cmd("system_powerdown") == {}
    _events(qmp, ["POWERDOWN"])
    assert cmd("quit") == {}
    shutdown = _events(qmp, ["SHUTDOWN"])[-1]
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert pemu.finish() == 0
    close_after_quit(qmp)
    assert done | {"query-fdsets", "remove-fd"} | MEDIUM_COMMANDS | MIGRATION_COMMANDS == names
    # query-fdsets, remove-fd: test_add_fd_sets_open_as_dev_fdset; MEDIUM_COMMANDS: test_removable_medium_commands;
    # MIGRATION_COMMANDS: test_migration_commands


def test_several_monitors_and_clients(pemu: Pemu) -> None:
    first = pemu.client()
    pretty = socket.socket(socket.AF_UNIX)
    pretty.connect(str(pemu.sock2))
    pretty.settimeout(30)
    greeting = b""
    while not greeting.endswith(b"}\r\n}\r\n"):
        greeting += pretty.recv(4096)
    assert greeting.startswith(b'{\r\n    "QMP": {\r\n')  # -mon ...,pretty=on
    pretty.sendall(b'{"execute": "qmp_capabilities", "id": 1}\n')
    reply = b""
    while b'"id": 1' not in reply:
        reply += pretty.recv(4096)
    assert json.loads(reply) == {"return": {}, "id": 1}
    # An event reaches both clients.
    first.cmd("cont")
    assert _events(first, ["RESUME"])[-1]["event"] == "RESUME"
    events = b""
    while b"RESUME" not in events:
        events += pretty.recv(4096)
    # The first client leaves; another connects to the same monitor and negotiates again.
    first.close()
    second = pemu.client()
    assert second.cmd("query-status")["running"] is True
    second.cmd("quit")
    pretty.close()
    assert pemu.finish() == 0
    close_after_quit(second)


def _raw_exchange(sock: socket.socket, data: bytes) -> dict[str, Any]:
    sock.sendall(data)
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
    (line,) = buf.decode().splitlines()
    reply: dict[str, Any] = json.loads(line)
    return reply


def test_bad_input_on_a_real_socket(pemu: Pemu) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(pemu.sock))
    sock.settimeout(60)
    buf = b""
    while not buf.endswith(b"\r\n"):
        buf += sock.recv(4096)
    assert _raw_exchange(sock, b'{"execute": "query-status"}\n')["error"] == {
        "class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}
    assert _raw_exchange(sock, b'{"execute": "qmp_capabilities"}\n') == {"return": {}}
    cases = [
        (b'{"execute": "query-status",,}\n', "JSON parse error, expecting value"),
        (b'"just a string"\n', "QMP input must be a JSON object"),
        (b'{"execute": "no-such-command", "id": 5}\n', "The command no-such-command has not been found"),
        (b'{"execute": "qom-list", "arguments": {"path": 42}}\n',
         "Invalid parameter type for 'path', expected: string"),
        (b'{"execute": "query-status", "arguments": {"verbose": true}}\n', "Parameter 'verbose' is unexpected"),
        (b'{"execute": "human-monitor-command", "arguments": {"command-line": "' + b"x" * (10 << 20) + b'"}}\n',
         "JSON token size limit exceeded"),
    ]
    for data, desc in cases:
        reply = _raw_exchange(sock, data)
        assert reply["error"]["desc"] == desc
    # The connection and the VM carry on.
    assert _raw_exchange(sock, b'{"execute": "query-status", "id": "x"}\n') == {
        "return": {"running": False, "singlestep": False, "status": "prelaunch"}, "id": "x"}
    sock.close()
    qmp = pemu.client()
    qmp.cmd("quit")
    assert pemu.finish() == 0
    close_after_quit(qmp)


def test_qemu_machine_launcher_boots_the_guest(guest_images: Guest, tmp_path: Path) -> None:
    """pemu started exactly as QEMU's QEMUMachine starts QEMU: the monitor on an
    inherited socket pair, the console on a socket server, stdin /dev/null."""
    ours, theirs = socket.socketpair()
    console_path = tmp_path / "console.sock"
    args = [sys.executable, "-m", "pemu",
            "-display", "none", "-vga", "none",
            "-chardev", f"socket,id=mon,fd={theirs.fileno()}",
            "-mon", "chardev=mon,mode=control",
            "-machine", "q35",
            "-chardev", f"socket,id=console,path={console_path},server=on,wait=off",
            "-serial", "chardev:console",
            "-m", "512", "-kernel", str(guest_images.kernel), "-initrd", str(guest_images.initrd),
            "-append", "console=ttyS0"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=[theirs.fileno()], cwd=REPO)
    theirs.close()
    try:
        qmp = QEMUMonitorProtocol(ours)
        qmp.settimeout(60)
        qmp.connect(negotiate=True)
        _wait_for_socket(console_path, proc)
        console = socket.socket(socket.AF_UNIX)
        console.connect(str(console_path))
        console.settimeout(240)
        text = b""
        while READY_MARKER.encode() not in text:
            chunk = console.recv(65536)
            assert chunk, f"console closed: {text[-2000:]!r}"
            text += chunk
        assert qmp.cmd("query-status")["status"] == "running"
        # The busybox guest has no acpid: the button press is reported, the guest ignores it.
        qmp.cmd("system_powerdown")
        _events(qmp, ["POWERDOWN"])
        qmp.cmd("quit")
        assert _events(qmp, ["SHUTDOWN"])[-1]["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert proc.wait(30) == 0
        close_after_quit(qmp)
        console.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ours.close()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_qmp_shell_completes_and_runs_commands(pemu: Pemu, tmp_path: Path) -> None:
    """qemu.qmp's qmp-shell: completion from query-commands, its key=value syntax."""
    from qemu.qmp.qmp_shell import QMPShell

    shell = QMPShell(str(pemu.sock))
    shell._histfile = str(tmp_path / "history")
    shell.settimeout(60)
    shell.connect(negotiate=True)
    shell._fill_completion()
    assert shell._completer.complete("query-qmp", 0) == "query-qmp-schema"
    assert shell._completer.complete("qom-", 0) is not None
    request = shell._build_cmd("qom-get path=/machine property=hpet")
    assert request is not None
    assert shell.cmd_obj(request)["return"] is True
    shell.cmd("quit")
    assert pemu.finish() == 0
    close_after_quit(shell)


def test_qmp_on_stdio() -> None:
    """-qmp stdio: requests on stdin, replies and events on stdout."""
    requests = (b'{"execute": "qmp_capabilities"}\n{"execute": "query-status", "id": 1}\n'
                b'{"execute": "quit"}\n')
    r = subprocess.run([sys.executable, "-m", "pemu", "-S", "-display", "none", "-nodefaults", "-qmp", "stdio"],
                       input=requests, capture_output=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.decode().split("\r\n") if line]
    assert "QMP" in lines[0]
    assert lines[1:4] == [{"return": {}},
                          {"return": {"running": False, "singlestep": False, "status": "prelaunch"}, "id": 1},
                          {"return": {}}]
    assert lines[4]["event"] == "SHUTDOWN"


def test_monitor_connecting_as_a_client(tmp_path: Path) -> None:
    """Older QEMUMachine: Python listens, the emulator connects (-chardev socket,path=...)."""
    path = tmp_path / "mon.sock"
    qmp = QEMUMonitorProtocol(str(path), server=True)
    proc = subprocess.Popen([sys.executable, "-m", "pemu", "-S", "-display", "none", "-vga", "none",
                             "-chardev", f"socket,id=mon,path={path}", "-mon", "chardev=mon,mode=control",
                             "-serial", "null", "-monitor", "null", "-machine", "q35"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        qmp.accept(timeout=60)
        assert qmp.cmd("query-status")["status"] == "prelaunch"
        qmp.cmd("quit")
        assert proc.wait(30) == 0
        close_after_quit(qmp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


MEDIUM_COMMANDS = {"eject", "blockdev-change-medium", "block_resize"}
MIGRATION_COMMANDS = {"migrate", "migrate_cancel", "migrate-incoming", "query-migrate", "migrate-set-parameters",
                      "query-migrate-parameters", "migrate-set-capabilities", "query-migrate-capabilities"}


def test_migration_commands(pemu: Pemu, tmp_path: Path) -> None:
    """A paused VM moved over tcp to a second process started with -incoming defer, by QMP alone:
    parameters, errors, migrate-incoming, the MIGRATION events, query-migrate on both sides."""
    src = pemu.client()
    assert src.cmd_raw("query-migrate") == {"return": {}}
    assert src.cmd_raw("query-migrate-parameters")["return"] == {"downtime-limit": 300, "max-bandwidth": 134217728}
    assert src.cmd_raw("migrate-set-parameters", {"downtime-limit": 100})["return"] == {}
    assert src.cmd_raw("migrate-set-parameters", {"downtime-limit": 2000001})["error"]["desc"] == \
        "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000000 ms"
    assert src.cmd_raw("query-migrate-parameters")["return"]["downtime-limit"] == 100
    assert src.cmd_raw("migrate", {"uri": "foo:bar"})["error"]["desc"] == \
        "Parameter 'uri' expects a valid migration protocol"
    assert src.cmd_raw("migrate-incoming", {"uri": "tcp::4444"})["error"]["desc"] == \
        "'-incoming' was not specified on the command line"
    assert src.cmd_raw("migrate_cancel") == {"return": {}}
    caps = src.cmd_raw("query-migrate-capabilities")["return"]
    assert len(caps) == 21 and {"capability": "events", "state": False} in caps
    assert not any(c["state"] for c in caps)
    assert src.cmd_raw("migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-ram", "state": True}]}
                       )["error"]["desc"] == "Migration capability 'postcopy-ram' is not supported by pemu"
    assert src.cmd_raw("migrate-set-capabilities", {"capabilities": [{"capability": "nope", "state": True}]}
                       )["error"]["desc"] == "Parameter 'capability' does not accept value 'nope'"
    # QEMU sends MIGRATION events only with the 'events' capability (libvirt turns it on)
    on = {"capabilities": [{"capability": "events", "state": True}, {"capability": "xbzrle", "state": False}]}
    assert src.cmd_raw("migrate-set-capabilities", on)["return"] == {}
    assert {"capability": "events", "state": True} in src.cmd_raw("query-migrate-capabilities")["return"]
    (tmp_path / "dst").mkdir()
    dst_vm = Pemu(tmp_path / "dst", ["-incoming", "defer"])
    try:
        dst = dst_vm.client()
        assert dst.cmd_raw("query-status")["return"]["status"] == "inmigrate"
        assert dst.cmd_raw("migrate-set-capabilities", on)["return"] == {}
        assert dst.cmd_raw("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})["return"] == {}
        assert dst.cmd_raw("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})["error"]["desc"] == \
            "The incoming migration has already been started"
        info = dst.cmd_raw("query-migrate")["return"]
        assert info["status"] == "setup"
        (address,) = info["socket-address"]
        assert address["type"] == "inet" and address["host"] == "127.0.0.1"
        assert src.cmd_raw("migrate", {"uri": f"tcp:127.0.0.1:{address['port']}"})["return"] == {}
        events = _events(src, ["MIGRATION", "MIGRATION", "MIGRATION"])  # no STOP: it was not running (-S)
        statuses = [e["data"]["status"] for e in events if e["event"] == "MIGRATION"]
        assert statuses == ["setup", "active", "completed"]
        done = src.cmd_raw("query-migrate")["return"]
        assert done["status"] == "completed" and done["downtime"] >= 0 and done["ram"]["total"] > 0
        assert src.cmd_raw("query-status")["return"]["status"] == "postmigrate"
        _events(dst, ["MIGRATION"])  # completed
        for _ in range(100):
            if dst.cmd_raw("query-migrate")["return"].get("status") == "completed":
                break
            time.sleep(0.1)
        assert dst.cmd_raw("query-status")["return"]["status"] == "paused"  # -S: loaded, not started
        assert dst.cmd_raw("cont")["return"] == {}
        assert dst.cmd_raw("query-status")["return"]["status"] == "running"
        assert src.cmd_raw("cont")["return"] == {}  # the source may run again too (its image back)
        assert src.cmd_raw("query-status")["return"]["status"] == "running"
        close_after_quit(dst)
    finally:
        dst_vm.proc.kill()
        dst_vm.proc.wait()
    src.close()


def test_removable_medium_commands(tmp_path: Path) -> None:
    """eject and blockdev-change-medium on a CD-ROM's drive, by backend name and by qdev id;
    block_resize of the raw disk (QMP and HMP) and of the read-only CD-ROM."""
    first, second = tmp_path / "first.iso", tmp_path / "second.iso"
    first.write_bytes(bytes(2048 * 16))
    second.write_bytes(bytes(2048 * 32))
    vm = Pemu(tmp_path, ["-drive", f"file={first},format=raw,if=none,id=cd0,media=cdrom",
                         "-device", "ide-cd,drive=cd0,bus=ide.2,id=cdrom"])
    try:
        qmp = vm.client()

        def cd() -> dict[str, Any]:
            return next(b for b in qmp.cmd("query-block") if b["device"] == "cd0")

        assert cd()["removable"] and cd()["tray_open"] is False and cd()["qdev"] == "cdrom"
        assert cd()["inserted"]["file"] == str(first)
        assert qmp.cmd("eject", device="cd0") == {}
        assert "inserted" not in cd() and cd()["tray_open"] is True
        assert qmp.cmd("blockdev-change-medium", id="cdrom", filename=str(second), format="raw") == {}
        assert cd()["inserted"]["file"] == str(second) and cd()["inserted"]["image"]["virtual-size"] == 2048 * 32
        assert cd()["tray_open"] is False
        for args, cls, desc in [
            ({"device": "cd0", "id": "cdrom"}, "GenericError", "Need exactly one of 'device' and 'id'"),
            ({}, "GenericError", "Need exactly one of 'device' and 'id'"),
            ({"device": "nope"}, "DeviceNotFound", "Device 'nope' not found"),
            ({"id": "nope"}, "DeviceNotFound", "Device 'nope' not found"),
            ({"device": "disk0"}, "GenericError", "Device 'disk0' is not removable"),
        ]:
            reply = qmp.cmd_raw("eject", args)
            assert reply["error"] == {"class": cls, "desc": desc}, (args, reply)
        assert qmp.cmd("block_resize", device="disk0", size=3 << 20) == {}
        assert vm.disk.stat().st_size == 3 << 20
        assert qmp.cmd("human-monitor-command", **{"command-line": "block_resize disk0 2M"}) == ""
        assert vm.disk.stat().st_size == 2 << 20
        assert qmp.cmd_raw("block_resize", {"device": "cd0", "size": 1 << 20})["error"]["desc"] == \
            "Block node is read-only"
        reply = qmp.cmd_raw("blockdev-change-medium", {"device": "cd0", "filename": str(tmp_path / "missing.iso")})
        assert reply["error"]["class"] == "GenericError" and "missing.iso" in reply["error"]["desc"]
        qmp.cmd("quit")
        assert vm.finish() == 0
        close_after_quit(qmp)
    finally:
        if vm.proc.poll() is None:
            vm.proc.kill()
            vm.proc.wait()


def test_add_fd_sets_open_as_dev_fdset(tmp_path: Path) -> None:
    """-add-fd: an inherited pipe opened by path as /dev/fdset/2 (a monitor's
    banner goes through it); query-fdsets lists it, remove-fd drops it."""
    read_end, write_end = os.pipe()
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen([sys.executable, "-m", "pemu", "-S", "-display", "none", "-nodefaults",
                             "-add-fd", f"fd={write_end},set=2,opaque=banner",
                             "-chardev", "file,id=f,path=/dev/fdset/2", "-mon", "chardev=f",
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=[write_end], cwd=REPO)
    os.close(write_end)
    try:
        _wait_for_socket(sock, proc)
        assert os.read(read_end, 4096).startswith(b"pemu 0.1.0 monitor")
        qmp = QEMUMonitorProtocol(str(sock))
        qmp.settimeout(60)
        qmp.connect(negotiate=True)
        (fdset,) = qmp.cmd("query-fdsets")
        assert fdset["fdset-id"] == 2 and fdset["fds"][0]["opaque"] == "banner"
        fd = fdset["fds"][0]["fd"]
        assert qmp.cmd("remove-fd", **{"fdset-id": 2, "fd": fd}) == {}
        assert qmp.cmd("query-fdsets") == []
        assert qmp.cmd_raw("remove-fd", {"fdset-id": 2})["error"]["desc"] == \
            "File descriptor named 'fdset-id:2' not found"
        qmp.cmd("quit")
        assert proc.wait(30) == 0
        close_after_quit(qmp)
    finally:
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize(("option", "message"), [
    ("fd=1,set=1", "fd cannot be a standard I/O stream"),
    ("fd=99,set=1", "fd is not valid or already in use"),
    ("set=1", "fd option is required and must be non-negative"),
])
def test_add_fd_errors(option: str, message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pemu", "-S", "-nodefaults", "-add-fd", option],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 1
    assert r.stderr == f"pemu: -add-fd {option}: {message}\n"


def test_qmp_option_errors() -> None:
    for argv, message in [
        (["-mon", "chardev=nope,mode=control"], 'pemu: -mon nope: chardev "nope" not found'),
        (["-chardev", "null,id=c", "-mon", "chardev=c,mode=weird"],
         "pemu: -mon chardev=c,mode=weird: Parameter 'mode' does not accept value 'weird'"),
        (["-chardev", "null,id=c", "-mon", "chardev=c,pretty=on"],
         "pemu: -mon chardev=c,pretty=on: 'pretty' is not compatible with HMP monitors"),
        (["-vga", "std"], "pemu: -vga std: VGA card 'std' is not supported by pemu (it has no display): use -vga none"),
        (["-chardev", "socket,id=m,fd=x"], "pemu: -chardev socket,id=m,fd=x: Parameter 'fd' expects a file "
                                         "descriptor number, not 'x'"),
    ]:
        r = subprocess.run([sys.executable, "-m", "pemu", "-S", "-nodefaults", *argv],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert (r.returncode, r.stderr) == (1, message + "\n"), argv


def test_powerdown_then_shutdown_on_a_guest_that_honours_the_button(
        launch_guest: Callable[..., GuestProcess], tmp_path: Path) -> None:
    """system_powerdown presses the ACPI power button: POWERDOWN, then the guest
    powers off through ACPI, so SHUTDOWN says guest=true, guest-shutdown.

    The busybox guest loads the ACPI button driver (which enables the
    button's event) and, having no acpid, runs a shell loop in its place that
    waits for the SCI the press raises (the "acpi" line of /proc/interrupts)."""
    sock = tmp_path / "qmp.sock"
    vm = launch_guest(extra=("-qmp", f"unix:{sock},server=on,wait=off"))
    vm.expect(READY_MARKER, timeout=240)
    vm.run("modprobe button; a=$(grep acpi /proc/interrupts); echo armed")
    vm.sendline('(while [ "$(grep acpi /proc/interrupts)" = "$a" ]; do sleep 0.2; done; poweroff -f) &')
    qmp = QEMUMonitorProtocol(str(sock))
    qmp.settimeout(120)
    qmp.connect(negotiate=True)
    assert qmp.cmd("system_powerdown") == {}
    events = _events(qmp, ["POWERDOWN", "SHUTDOWN"], timeout=120)
    assert events[-1]["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert vm.wait(60) == 0
    close_after_quit(qmp)
