"""Character back-ends: real files, FIFOs, sockets and a pty, driven through the main loop."""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pemu.chardev import (
    CharBackend,
    Chardev,
    ChrEvent,
    MuxChardev,
    qemu_chr_cleanup,
    qemu_chr_find,
    qemu_chr_new,
    qemu_chr_new_from_opts,
    qemu_chr_parse_compat,
)
from pemu.chardev.char_mux import MUX_BUFFER_SIZE, mux_help_text
from pemu.system import runstate
from pemu.system.runstate import ShutdownCause
from pemu.util.error import UserError
from pemu.util.main_loop import main_loop

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_registry():
    runstate.take_shutdown_request()
    yield
    qemu_chr_cleanup()
    runstate.take_shutdown_request()


def run_until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        main_loop().run_once(0.05)
    return True


class FakeFrontend:
    """A device front-end that takes at most ``room`` bytes until given more."""

    def __init__(self, chr: Chardev | None, room: int = 1 << 20) -> None:
        self.room = room
        self.received = bytearray()
        self.events: list[ChrEvent] = []
        self.fe = CharBackend(chr)

    def attach(self) -> FakeFrontend:
        self.fe.set_handlers(self.can_read, self.read, self.events.append)
        return self

    def can_read(self) -> int:
        return self.room

    def read(self, data: bytes) -> None:
        assert 0 < len(data) <= self.room, "back-end delivered more than can_read allowed"
        self.received += data
        self.room -= len(data)

    def give_room(self, room: int) -> None:
        self.room = room
        self.fe.accept_input()


class FakeBase(Chardev):
    """A back-end the test feeds by hand; it records what is written to it."""

    backend_name = "fake"

    def __init__(self) -> None:
        super().__init__("fake")
        self.output = bytearray()

    def chr_write(self, data: bytes) -> int:
        self.output += data
        return len(data)


def recv_until(sock: socket.socket, expected: bytes, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < len(expected):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# -- file, null, pipe --------------------------------------------------------------


def test_file_backend_writes_and_truncates(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    path.write_bytes(b"old contents\n")
    chr = qemu_chr_new_from_opts({"backend": "file", "id": "f0", "path": str(path)})
    fe = FakeFrontend(chr).attach()
    assert fe.events == [ChrEvent.OPENED]
    assert fe.fe.write(b"Linux version 6.1\r\n") == 19
    fe.fe.write(b"login: ")
    assert path.read_bytes() == b"Linux version 6.1\r\nlogin: "
    assert qemu_chr_find("f0") is chr


def test_file_backend_append(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    path.write_bytes(b"first run\n")
    chr = qemu_chr_new(label="serial0", filename=f"file:{path}")
    assert chr is not None
    chr.write(b"second run\n")
    qemu_chr_cleanup()
    chr = qemu_chr_new_from_opts({"backend": "file", "id": "f1", "path": str(path), "append": "on"})
    chr.write(b"third run\n")
    assert path.read_bytes() == b"second run\nthird run\n"


def test_file_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^chardev: file: no filename given$"):
        qemu_chr_new_from_opts({"backend": "file", "id": "f"})
    missing = tmp_path / "no-such-dir" / "log"
    with pytest.raises(UserError, match=f"^Could not open '{missing}': No such file or directory$"):
        qemu_chr_new_from_opts({"backend": "file", "id": "f", "path": str(missing)})
    assert qemu_chr_find("f") is None


def test_null_backend_swallows_output_and_opens() -> None:
    chr = qemu_chr_new("null0", "null")
    assert chr is not None
    fe = FakeFrontend(chr).attach()
    assert fe.fe.write(b"x" * 100) == 100
    assert fe.events == [ChrEvent.OPENED]
    main_loop().run_once(0)
    assert fe.received == b""


def test_logfile_copies_output(tmp_path: Path) -> None:
    log = tmp_path / "copy.log"
    chr = qemu_chr_new_from_opts({"backend": "null", "id": "n", "logfile": str(log)})
    chr.write(b"hello")
    assert log.read_bytes() == b"hello"


def test_pipe_backend_both_ways(tmp_path: Path) -> None:
    base = tmp_path / "guest"
    os.mkfifo(f"{base}.in")
    os.mkfifo(f"{base}.out")
    chr = qemu_chr_new("p", f"pipe:{base}")
    fe = FakeFrontend(chr).attach()
    reader = os.open(f"{base}.out", os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(f"{base}.in", os.O_WRONLY | os.O_NONBLOCK)
    try:
        fe.fe.write(b"to host")
        assert os.read(reader, 100) == b"to host"
        os.write(writer, b"to guest")
        assert run_until(lambda: fe.received == b"to guest")
    finally:
        os.close(reader)
        os.close(writer)


def test_pipe_output_nobody_reads_is_bounded(tmp_path: Path) -> None:
    base = tmp_path / "lonely"
    os.mkfifo(base)
    chr = qemu_chr_new("p", f"pipe:{base}")
    assert chr is not None
    # The FIFO is opened read-write by pemu itself, so it fills and then drops.
    taken = sum(chr.write(b"z" * 65536) for _ in range(8))
    assert 65536 <= taken < 8 * 65536


# -- sockets --------------------------------------------------------------------


def test_unix_server_nowait_accepts_later_and_limits_input(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    chr = qemu_chr_new("serial0", f"unix:{path},server=on,wait=off")
    assert chr is not None and chr.filename == f"disconnected:unix:{path},server=on"
    fe = FakeFrontend(chr, room=4).attach()
    assert fe.events == []  # nobody connected yet
    assert fe.fe.write(b"lost") == 4  # dropped while disconnected

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    assert run_until(lambda: ChrEvent.OPENED in fe.events)
    assert chr.filename.startswith(f"unix:{path},server=on")

    client.sendall(b"hello world")
    assert run_until(lambda: len(fe.received) == 4)
    for _ in range(5):
        main_loop().run_once(0.01)
    assert fe.received == b"hell"  # the front-end's limit holds
    assert chr.input_pending == 7
    fe.give_room(3)
    assert fe.received == b"hello w"
    fe.give_room(100)
    assert fe.received == b"hello world"

    fe.fe.write(b"guest says hi")
    assert recv_until(client, b"guest says hi") == b"guest says hi"

    client.close()
    assert run_until(lambda: ChrEvent.CLOSED in fe.events)
    assert chr.filename.startswith("disconnected:")
    # The server listens again: a second client gets through.
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.connect(str(path))
    assert run_until(lambda: fe.events.count(ChrEvent.OPENED) == 2)
    second.sendall(b"again")
    assert run_until(lambda: fe.received.endswith(b"again"))
    second.close()
    qemu_chr_cleanup()
    assert not path.exists()


def test_tcp_server_ephemeral_port() -> None:
    chr = qemu_chr_new_from_opts(
        {"backend": "socket", "id": "t", "host": "127.0.0.1", "port": "0", "server": "on", "wait": "off"}
    )
    fe = FakeFrontend(chr).attach()
    host, port = chr.local_address
    assert host == "127.0.0.1" and port > 0
    client = socket.create_connection(("127.0.0.1", port))
    try:
        assert run_until(lambda: ChrEvent.OPENED in fe.events)
        client.sendall(b"ping")
        assert run_until(lambda: fe.received == b"ping")
        fe.fe.write(b"pong")
        assert recv_until(client, b"pong") == b"pong"
    finally:
        client.close()


def test_tcp_compat_server_nowait() -> None:
    chr = qemu_chr_new("serial0", "tcp:127.0.0.1:0,server,nowait")
    assert chr is not None
    host, port = chr.local_address
    client = socket.create_connection((host, port))
    fe = FakeFrontend(chr).attach()
    try:
        assert run_until(lambda: ChrEvent.OPENED in fe.events)
    finally:
        client.close()


def test_unix_server_wait_blocks_until_client(tmp_path: Path) -> None:
    path = tmp_path / "wait.sock"
    connected = threading.Event()

    def client() -> None:
        # Retry until the server listens: a client that gave up would leave the
        # server blocked in accept() for good (it waits for a client, wait=on).
        deadline = time.monotonic() + 60
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        sock.sendall(b"early")
        connected.wait(3)
        sock.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        chr = qemu_chr_new_from_opts({"backend": "socket", "id": "w", "path": str(path), "server": "on"})
        assert chr.be_open  # creation returned only once the client was there
        fe = FakeFrontend(chr).attach()
        assert fe.events == [ChrEvent.OPENED]
        assert run_until(lambda: fe.received == b"early")
    finally:
        connected.set()
        thread.join()


def test_tcp_client_mode_exchanges_bytes() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        chr = qemu_chr_new_from_opts({"backend": "socket", "id": "c", "host": "127.0.0.1", "port": str(port)})
        fe = FakeFrontend(chr).attach()
        assert fe.events == [ChrEvent.OPENED]
        peer, _ = listener.accept()
        peer.sendall(b"from server")
        assert run_until(lambda: fe.received == b"from server")
        fe.fe.write(b"from client")
        assert recv_until(peer, b"from client") == b"from client"
        peer.close()
        assert run_until(lambda: ChrEvent.CLOSED in fe.events)
        assert fe.fe.write(b"dropped") == 7
    finally:
        listener.close()


def test_client_connect_refused() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(UserError, match=f"^Failed to connect to '127.0.0.1:{port}': Connection refused$"):
        qemu_chr_new("serial0", f"tcp:127.0.0.1:{port}")
    assert qemu_chr_find("serial0") is None


def test_unix_client_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "nobody.sock"
    with pytest.raises(UserError, match=f"^Failed to connect to '{path}': No such file or directory$"):
        qemu_chr_new_from_opts({"backend": "socket", "id": "u", "path": str(path)})


def test_socket_option_errors() -> None:
    cases = [
        ({"backend": "socket", "id": "s", "host": "localhost"}, "chardev: socket: no port given"),
        ({"backend": "socket", "id": "s"}, "chardev: socket: no host given"),
        (
            {"backend": "socket", "id": "s", "path": "/tmp/x", "host": "h", "port": "1"},
            "None or one of 'path', 'fd' or 'host' option required.",
        ),
        (
            {"backend": "socket", "id": "s", "host": "127.0.0.1", "port": "1", "wait": "off"},
            "'wait' option is incompatible with socket in client connect mode",
        ),
        (
            {"backend": "socket", "id": "s", "host": "127.0.0.1", "port": "1", "server": "maybe"},
            "Parameter 'server' expects 'on' or 'off'",
        ),
        ({"backend": "socket", "id": "s", "path": "/tmp/" + "x" * 120, "server": "on"}, "is too long"),
    ]
    for opts, message in cases:
        with pytest.raises(UserError) as info:
            qemu_chr_new_from_opts(opts)
        assert message in info.value.message, opts


def test_server_in_use_port() -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(UserError, match="^Failed to bind socket: Address already in use$"):
            qemu_chr_new("s", f"tcp:127.0.0.1:{port},server=on,wait=off")
    finally:
        holder.close()


# -- mux --------------------------------------------------------------------------


def make_mux() -> tuple[FakeBase, MuxChardev, FakeFrontend, FakeFrontend]:
    base = FakeBase()
    base.open()
    mux = MuxChardev("mux0", base)
    mux.open()
    monitor = FakeFrontend(mux).attach()
    console = FakeFrontend(mux).attach()  # the last to attach gets the focus, as in QEMU
    return base, mux, console, monitor


def test_mux_output_from_all_and_input_to_focus() -> None:
    base, mux, console, monitor = make_mux()
    assert console.events == [ChrEvent.MUX_IN, ChrEvent.OPENED]
    assert monitor.events == [ChrEvent.MUX_IN, ChrEvent.OPENED, ChrEvent.MUX_OUT]
    console.fe.write(b"guest ")
    monitor.fe.write(b"(qemu) ")
    assert base.output == b"guest (qemu) "
    base.push_input(b"ls\r")
    assert console.received == b"ls\r" and monitor.received == b""


def test_mux_ctrl_a_c_switches_focus() -> None:
    base, mux, console, monitor = make_mux()
    console.events.clear()
    monitor.events.clear()
    base.push_input(b"ab\x01cinfo\x01cz")
    assert console.received == b"abz"
    assert monitor.received == b"info"
    assert console.events == [ChrEvent.MUX_OUT, ChrEvent.MUX_IN]
    assert monitor.events == [ChrEvent.MUX_IN, ChrEvent.MUX_OUT]
    # The escape may also be split across reads.
    base.push_input(b"\x01")
    base.push_input(b"c?")
    assert monitor.received == b"info?"


def test_mux_ctrl_a_x_requests_shutdown() -> None:
    base, mux, console, monitor = make_mux()
    base.push_input(b"\x01x")
    assert runstate.take_shutdown_request() is ShutdownCause.HOST_UI
    assert base.output.endswith(b"pemu: Terminated\n\r")
    assert console.received == b""


def test_mux_ctrl_a_ctrl_a_is_literal_and_help() -> None:
    base, mux, console, monitor = make_mux()
    base.push_input(b"\x01\x01\x01h")
    assert console.received == b"\x01"
    assert base.output == mux_help_text()
    assert b"C-a x    exit emulator\n\r" in base.output
    assert b"C-a C-a  sends C-a\n\r" in base.output
    assert runstate.take_shutdown_request() is ShutdownCause.NONE


def test_mux_break_goes_to_focus() -> None:
    base, mux, console, monitor = make_mux()
    base.push_input(b"\x01b")
    assert console.events[-1] is ChrEvent.BREAK
    assert ChrEvent.BREAK not in monitor.events


def test_mux_buffers_for_a_full_frontend_and_still_escapes() -> None:
    base, mux, console, monitor = make_mux()
    console.room = 0
    base.push_input(b"x" * 100)
    # The mux holds MUX_BUFFER_SIZE bytes; the rest stays pending in the base.
    assert console.received == b""
    assert base.input_pending == 100 - MUX_BUFFER_SIZE
    console.give_room(10)
    assert console.received == b"x" * 10
    console.give_room(1000)
    assert console.received == b"x" * 100
    console.room = 0
    base.push_input(b"\x01x")
    assert runstate.take_shutdown_request() is ShutdownCause.HOST_UI


def test_mux_timestamps_toggle() -> None:
    base, mux, console, monitor = make_mux()
    base.push_input(b"\x01t")
    console.fe.write(b"one\ntwo\n")
    console.fe.write(b"three")
    lines = bytes(base.output).split(b"\n")
    assert lines[0] == b"one"
    assert lines[1].startswith(b"[00:00:00.") and lines[1].endswith(b"] two")
    assert lines[2].startswith(b"[00:00:00.") and lines[2].endswith(b"] three")


def test_mux_limit_of_frontends() -> None:
    base, mux, console, monitor = make_mux()
    CharBackend(mux)
    CharBackend(mux)
    with pytest.raises(UserError, match="too many uses of multiplexed chardev 'mux0' \\(maximum is 4\\)"):
        CharBackend(mux)


def test_mon_prefix_over_a_real_socket(tmp_path: Path) -> None:
    path = tmp_path / "mon.sock"
    chr = qemu_chr_new("compat_monitor0", f"mon:unix:{path},server=on,wait=off")
    assert isinstance(chr, MuxChardev)
    assert qemu_chr_find("compat_monitor0-base") is chr.base
    monitor = FakeFrontend(chr).attach()
    console = FakeFrontend(chr).attach()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    try:
        assert run_until(lambda: ChrEvent.OPENED in console.events and ChrEvent.OPENED in monitor.events)
        client.sendall(b"root\r\x01cquit\r")
        assert run_until(lambda: monitor.received == b"quit\r")
        assert console.received == b"root\r"
        console.fe.write(b"login: ")
        assert recv_until(client, b"login: ") == b"login: "
        client.sendall(b"\x01x")
        assert run_until(lambda: runstate.run_requests().shutdown is ShutdownCause.HOST_UI)
    finally:
        client.close()


# -- registry and compat strings ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stdio", {"backend": "stdio"}),
        ("null", {"backend": "null"}),
        ("file:/tmp/serial.log", {"backend": "file", "path": "/tmp/serial.log"}),
        ("pipe:/tmp/guest", {"backend": "pipe", "path": "/tmp/guest"}),
        (
            "unix:/tmp/s.sock,server=on,wait=off",
            {"backend": "socket", "path": "/tmp/s.sock", "server": "on", "wait": "off"},
        ),
        (
            "tcp:localhost:4444,server=on,wait=off",
            {"backend": "socket", "host": "localhost", "port": "4444", "server": "on", "wait": "off"},
        ),
        ("tcp::5555,server,nowait", {"backend": "socket", "host": "", "port": "5555", "server": "on", "wait": "off"}),
        ("tcp:10.0.0.1:23", {"backend": "socket", "host": "10.0.0.1", "port": "23"}),
        ("mon:stdio", {"backend": "stdio", "mux": "on", "signal": "off"}),
        ("mon:tcp::4444,server=on,wait=off", {"backend": "socket", "host": "", "port": "4444", "mux": "on",
                                              "server": "on", "wait": "off"}),
    ],
)
def test_parse_compat(text: str, expected: dict[str, str]) -> None:
    assert qemu_chr_parse_compat("serial0", text) == {"id": "serial0", **expected}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vc", "'vc' is not supported"),
        ("vc:80Cx24C", "'vc' is not supported"),
        ("bogus", "'bogus' is not a valid char driver"),
        ("tcp:nohostport", "'tcp:nohostport' is not a valid char driver"),
        ("unix:/tmp/x,colour=blue", "Invalid parameter 'colour'"),
    ],
)
def test_parse_compat_errors(text: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        qemu_chr_parse_compat("serial0", text)
    assert message in info.value.message


def test_mon_prefix_refused_where_not_permitted() -> None:
    with pytest.raises(UserError, match="^mon: isn't supported in this context$"):
        qemu_chr_parse_compat("x", "mon:stdio", permit_mux_mon=False)


def test_none_and_chardev_references() -> None:
    assert qemu_chr_new("serial0", "none") is None
    chr = qemu_chr_new_from_opts({"backend": "null", "id": "con"})
    assert qemu_chr_new("serial0", "chardev:con") is chr
    with pytest.raises(UserError, match='^chardev "nope" not found$'):
        qemu_chr_new("serial1", "chardev:nope")


def test_registry_errors() -> None:
    cases = [
        ({"backend": "x", "id": "a"}, "'x' is not a valid char driver name"),
        ({"backend": "null"}, "chardev: no id specified"),
        ({"id": "a"}, 'chardev: "a" missing backend'),
        ({"backend": "null", "id": "a", "colour": "blue"}, "Invalid parameter 'colour'"),
        ({"backend": "mux", "id": "m"}, "chardev: mux: no chardev given"),
        ({"backend": "mux", "id": "m", "chardev": "ghost"}, "mux: base chardev ghost not found"),
        ({"backend": "pipe", "id": "p"}, "chardev: pipe: no filename given"),
    ]
    for opts, message in cases:
        with pytest.raises(UserError) as info:
            qemu_chr_new_from_opts(opts)
        assert info.value.message == message, opts
    qemu_chr_new_from_opts({"backend": "null", "id": "a"})
    with pytest.raises(UserError, match="^Duplicate ID 'a' for chardev$"):
        qemu_chr_new_from_opts({"backend": "null", "id": "a"})


def test_one_frontend_per_plain_chardev() -> None:
    chr = qemu_chr_new_from_opts({"backend": "null", "id": "busy"})
    first = CharBackend(chr)
    with pytest.raises(UserError, match="^Device 'busy' is in use$"):
        CharBackend(chr)
    first.deinit()
    CharBackend(chr)  # free again


def test_frontend_without_chardev_drops_output() -> None:
    fe = CharBackend(None)
    assert fe.write(b"nowhere") == 7
    assert not fe.backend_connected()
    fe.set_handlers(lambda: 1, lambda data: None)
    fe.accept_input()


# -- stdio (in a child process: it owns fds 0 and 1) ------------------------------

STDIO_CHILD = textwrap.dedent(
    """
    import os, sys, termios, time
    from pemu.chardev import CharBackend, qemu_chr_new, qemu_chr_cleanup
    from pemu.util.error import UserError
    from pemu.util.main_loop import main_loop
    from pemu.system.vm import VirtualMachine

    VirtualMachine().activate()

    chr = qemu_chr_new("serial0", sys.argv[1])
    try:
        qemu_chr_new("serial1", "stdio")
    except UserError as exc:
        second = str(exc)
    tty = os.isatty(0)
    lflag = termios.tcgetattr(0)[3] if tty else 0
    raw = tty and not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
    got = bytearray()
    events = []
    fe = CharBackend(chr)
    fe.set_handlers(lambda: 64, got.extend, events.append)
    fe.write(b"READY\\n")
    deadline = time.monotonic() + 5
    while b"END" not in got and time.monotonic() < deadline:
        main_loop().run_once(0.05)
    qemu_chr_cleanup()
    restored = tty and bool(termios.tcgetattr(0)[3] & termios.ICANON)
    sys.stdout.write(f"RESULT raw={raw} restored={restored} got={bytes(got)!r} second={second!r}\\n")
    sys.stdout.flush()
    """
)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_stdio_raw_mode_on_a_pty_and_restored() -> None:
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-c", STDIO_CHILD, "mon:stdio"],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=_child_env(), start_new_session=True,
    )
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 10
        sent = False
        while b"RESULT" not in output or not output.endswith(b"\n"):
            if time.monotonic() > deadline:
                break
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    break
            if not sent and b"READY" in output:
                # Ctrl-C must reach the front-end (signal=off), not kill pemu.
                os.write(master, b"ab\x03END")
                sent = True
        child.wait(timeout=10)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, child.stderr.read() if child.stderr else ""
    assert b"raw=True restored=True got=b'ab\\x03END'" in output
    assert b"cannot use stdio by multiple character devices" in output


def test_stdio_pass_through_and_eof_on_a_pipe() -> None:
    result = subprocess.run(
        [sys.executable, "-c", STDIO_CHILD, "stdio"],
        input=b"typed text END", capture_output=True, env=_child_env(), timeout=15,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"READY\n")
    assert b"raw=False restored=False got=b'typed text END'" in result.stdout


@pytest.mark.parametrize("stdin_kind", ["empty-pipe", "devnull"])
def test_stdio_eof_is_not_an_error(stdin_kind: str) -> None:
    script = STDIO_CHILD.replace('b"END" not in got', 'time.monotonic() < deadline - 4.7')
    stdin: dict[str, object] = {"stdin": subprocess.DEVNULL} if stdin_kind == "devnull" else {"input": b""}
    result = subprocess.run(
        [sys.executable, "-c", script, "stdio"], capture_output=True, env=_child_env(), timeout=15, **stdin,
    )
    assert result.returncode == 0, result.stderr
    assert b"got=b''" in result.stdout


def test_stdio_reads_a_regular_file(tmp_path: Path) -> None:
    """epoll refuses regular files: they are read from bottom halves instead."""
    source = tmp_path / "typed.txt"
    source.write_bytes(b"x" * 10000 + b"END")
    with source.open("rb") as stdin:
        result = subprocess.run(
            [sys.executable, "-c", STDIO_CHILD, "stdio"],
            stdin=stdin, capture_output=True, env=_child_env(), timeout=15,
        )
    assert result.returncode == 0, result.stderr
    assert b"got=b'" + b"x" * 10000 + b"END'" in result.stdout
