"""-netdev stream / dgram / socket with real sockets and a test NIC."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pemu.net import stream
from pemu.net.net import NetClientState, NetState, info_network, qemu_send_packet
from pemu.util.error import UserError
from pemu.util.main_loop import MainLoop
from tests.unit.netframes import TestNic


class Rig:
    def __init__(self, kind: str, opts: dict[str, str]) -> None:
        self.net = NetState(vm_running=lambda: True)
        self.loop = MainLoop()
        self.backend: NetClientState = stream.net_init(kind, self.net, "net0", opts, self.loop)
        self.nic = TestNic(self.net)
        self.nic.peer, self.backend.peer = self.backend, self.nic

    def run_until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, "timed out"
            self.loop.run_once(0.02)


@pytest.fixture
def rigs() -> list[Rig]:
    made: list[Rig] = []
    yield made
    for r in made:
        r.net.cleanup()


def read_frame(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 4:
        header += sock.recv(4 - len(header))
    (length,) = struct.unpack("!I", header)
    data = b""
    while len(data) < length:
        data += sock.recv(length - len(data))
    return data


def frame(i: int) -> bytes:
    return bytes(range(6)) * 2 + b"\x08\x00" + f"frame {i}".encode().ljust(46, b".")


def _stream_server(rigs: list[Rig], opts: dict[str, str]) -> tuple[Rig, socket.socket]:
    r = Rig("stream", {"server": "on", **opts})
    rigs.append(r)
    assert isinstance(r.backend, stream.StreamNetClient)
    family = socket.AF_UNIX if opts["addr.type"] == "unix" else socket.AF_INET
    peer = socket.socket(family, socket.SOCK_STREAM)
    peer.connect(r.backend.local_address())
    r.run_until(lambda: r.backend.conn is not None)  # type: ignore[attr-defined]
    return r, peer


@pytest.mark.parametrize("addr", ["inet", "unix"])
def test_stream_carries_frames_both_ways(rigs: list[Rig], tmp_path: Path, addr: str) -> None:
    opts = ({"addr.type": "inet", "addr.host": "127.0.0.1", "addr.port": "0"} if addr == "inet"
            else {"addr.type": "unix", "addr.path": str(tmp_path / "s")})
    r, peer = _stream_server(rigs, opts)
    with peer:
        # peer -> guest: two frames in one write, one split across writes
        peer.sendall(struct.pack("!I", 60) + frame(1) + struct.pack("!I", 60) + frame(2)[:10])
        r.run_until(lambda: len(r.nic.frames) == 1)
        peer.sendall(frame(2)[10:])
        r.run_until(lambda: len(r.nic.frames) == 2)
        assert list(r.nic.frames) == [frame(1), frame(2)]
        # guest -> peer
        qemu_send_packet(r.nic, frame(3))
        assert read_frame(peer) == frame(3)
        assert "connection from" in info_network(r.net)


def test_stream_client_connects_to_a_listening_peer(rigs: list[Rig]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        r = Rig("stream", {"addr.type": "inet", "addr.host": "127.0.0.1", "addr.port": str(port)})
        rigs.append(r)
        peer, _ = listener.accept()
        with peer:
            qemu_send_packet(r.nic, frame(7))
            assert read_frame(peer) == frame(7)
            peer.sendall(struct.pack("!I", 60) + frame(8))
            r.run_until(lambda: list(r.nic.frames) == [frame(8)])


def test_stream_holds_when_the_nic_refuses_then_resumes(rigs: list[Rig]) -> None:
    r, peer = _stream_server(rigs, {"addr.type": "inet", "addr.host": "127.0.0.1", "addr.port": "0"})
    with peer:
        r.nic.accepting = False
        data = b"".join(struct.pack("!I", 60) + frame(i) for i in range(50))
        peer.sendall(data)
        r.run_until(lambda: len(r.nic.incoming_queue) == 1)
        for _ in range(10):
            r.loop.run_once(0.01)
        assert len(r.nic.incoming_queue) == 1  # held: one frame waits, the rest stay in the socket
        r.nic.start_accepting()
        r.run_until(lambda: len(r.nic.frames) == 50)
        assert list(r.nic.frames) == [frame(i) for i in range(50)]


def test_stream_frame_too_big_disconnects(rigs: list[Rig]) -> None:
    r, peer = _stream_server(rigs, {"addr.type": "inet", "addr.host": "127.0.0.1", "addr.port": "0"})
    with peer:
        peer.sendall(struct.pack("!I", 1 << 30))
        r.run_until(lambda: r.backend.conn is None)  # type: ignore[attr-defined]
        assert "listening on 127.0.0.1:" in info_network(r.net)
        assert not r.nic.frames


def test_dgram_one_frame_per_datagram(rigs: list[Rig]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        r = Rig("dgram", {"local.type": "inet", "local.host": "127.0.0.1", "local.port": "0",
                          "remote.type": "inet", "remote.host": "127.0.0.1",
                          "remote.port": str(peer.getsockname()[1])})
        rigs.append(r)
        qemu_send_packet(r.nic, frame(1))
        assert peer.recv(2000) == frame(1)
        assert isinstance(r.backend, stream.DgramNetClient)
        peer.sendto(frame(2), r.backend.sock.getsockname())
        r.run_until(lambda: list(r.nic.frames) == [frame(2)])


def test_socket_listen_and_connect_pair(rigs: list[Rig]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Rig("socket", {"listen": f"127.0.0.1:{port}"})
    rigs.append(server)
    client = Rig("socket", {"connect": f"127.0.0.1:{port}"})
    rigs.append(client)
    server.run_until(lambda: server.backend.conn is not None)  # type: ignore[attr-defined]
    qemu_send_packet(client.nic, frame(5))
    server.run_until(lambda: list(server.nic.frames) == [frame(5)])
    assert "type=socket" in info_network(server.net)


def test_socket_udp(rigs: list[Rig]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        r = Rig("socket", {"udp": f"127.0.0.1:{peer.getsockname()[1]}", "localaddr": "127.0.0.1:0"})
        rigs.append(r)
        qemu_send_packet(r.nic, frame(9))
        assert peer.recv(2000) == frame(9)


@pytest.mark.parametrize("kind, opts, message", [
    ("stream", {"addr.type": "inet", "addr.host": "127.0.0.1"}, "Parameter 'addr.port' is missing"),
    ("stream", {"addr.type": "vsock"}, "Parameter 'addr.type' does not accept value 'vsock'"),
    ("stream", {"addr.type": "unix", "addr.path": "/nonexistent/dir/s"},
     "can't connect socket to /nonexistent/dir/s: No such file or directory"),
    ("socket", {}, "exactly one of listen=, connect=, mcast= or udp= is required"),
    ("socket", {"mcast": "230.0.0.1:1234"}, "socket mcast= is not supported by pemu yet"),
    ("dgram", {"local.type": "inet", "local.host": "127.0.0.1", "local.port": "0", "x": "1"},
     "Invalid parameter 'x'"),
])
def test_bad_options(kind: str, opts: dict[str, str], message: str) -> None:
    with pytest.raises(UserError) as e:
        stream.net_init(kind, NetState(), "n", opts, MainLoop())
    assert e.value.message == message
