"""``-netdev stream`` under a real guest (issue 13): Debian's e1000e driver in
the busybox guest sends and receives through pemu's stream back-end (QEMU's
framing: a 4-byte big-endian length before each frame).

One guest has two NICs: eth0 on a stream to a peer written here, which
answers ARP and ICMP echo for 192.168.77.1 (so a guest ``ping`` that gets its
replies proves frames went both ways); eth1 on a stream to passt, whose DHCP
server hands the guest a lease (skipped where passt is not installed:
``apt-get install passt``).  The back-end's framing, back-pressure and errors
are unit-tested with real sockets in tests/unit/test_net_stream.py.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.harness import GuestProcess, default_guest_args

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 300
PEER_MAC = bytes.fromhex("020000000001")
PEER_IP = bytes([192, 168, 77, 1])
GUEST_IP = "192.168.77.2"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def peer_reply(frame: bytes) -> bytes | None:
    """What the peer at 192.168.77.1 answers to an Ethernet frame, if anything."""
    if len(frame) < 14:
        return None
    src, ethertype = frame[6:12], frame[12:14]
    if ethertype == b"\x08\x06" and len(frame) >= 42:          # ARP
        op, sender_mac, sender_ip, target_ip = frame[20:22], frame[22:28], frame[28:32], frame[38:42]
        if op == b"\x00\x01" and target_ip == PEER_IP:
            arp = (b"\x00\x01\x08\x00\x06\x04\x00\x02" + PEER_MAC + PEER_IP + sender_mac + sender_ip)
            return src + PEER_MAC + b"\x08\x06" + arp
        return None
    if ethertype == b"\x08\x00" and len(frame) >= 34:          # IPv4
        ip = frame[14:]
        header_len = (ip[0] & 0x0F) * 4
        total_len = int.from_bytes(ip[2:4], "big")
        if ip[9] != 1 or ip[16:20] != PEER_IP or len(ip) < total_len:
            return None
        icmp = ip[header_len:total_len]
        if len(icmp) < 8 or icmp[0] != 8:                       # not an echo request
            return None
        reply_icmp = b"\x00\x00\x00\x00" + icmp[4:]
        reply_icmp = reply_icmp[:2] + struct.pack("!H", _checksum(reply_icmp)) + reply_icmp[4:]
        header = bytearray(ip[:header_len])
        header[12:16], header[16:20] = ip[16:20], ip[12:16]
        header[8] = 64
        header[10:12] = b"\0\0"
        header[10:12] = struct.pack("!H", _checksum(bytes(header)))
        return src + PEER_MAC + b"\x08\x00" + bytes(header) + reply_icmp
    return None


class StreamPeer:
    """Listens on a unix socket for pemu's stream client; answers as 192.168.77.1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.received: list[bytes] = []
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, name="stream-peer", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            buffer = b""
            while chunk := conn.recv(65536):
                buffer += chunk
                while len(buffer) >= 4 and len(buffer) >= 4 + (size := int.from_bytes(buffer[:4], "big")):
                    frame, buffer = buffer[4:4 + size], buffer[4 + size:]
                    self.received.append(frame)
                    if (reply := peer_reply(frame)) is not None:
                        conn.sendall(len(reply).to_bytes(4, "big") + reply)
                        self.sent += 1

    def close(self) -> None:
        self.listener.close()


@dataclass
class StreamGuest:
    vm: GuestProcess
    peer: StreamPeer
    passt: subprocess.Popen[bytes] | None


@pytest.fixture(scope="module")
def stream_guest(guest_images: Guest) -> Iterator[StreamGuest]:
    # passt drops root for nobody before it binds its socket: a directory
    # nobody can write to and reach (pytest's tmp_path is private to root).
    directory = Path(tempfile.mkdtemp(prefix="pemu-stream-", dir="/tmp"))
    directory.chmod(0o1777)
    peer = StreamPeer(directory / "peer.sock")
    extra = ["-device", "e1000e,netdev=s0,mac=52:54:00:12:34:70",
             "-netdev", f"stream,id=s0,server=off,addr.type=unix,addr.path={peer.path}"]
    passt: subprocess.Popen[bytes] | None = None
    passt_binary = shutil.which("passt")
    if passt_binary is not None:
        passt_socket = directory / "passt.sock"
        passt = subprocess.Popen([passt_binary, "-f", "-s", str(passt_socket), "-t", "none", "-u", "none"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert passt.stderr is not None
        for line in passt.stderr:   # it says when its socket is bound
            if b"UNIX domain socket bound at" in line:
                break
        else:
            raise AssertionError(f"passt exited with {passt.wait()} before binding its socket")
        extra += ["-device", "e1000e,netdev=s1,mac=52:54:00:12:34:71",
                  "-netdev", f"stream,id=s1,server=off,addr.type=unix,addr.path={passt_socket}"]
    vm = GuestProcess(default_guest_args(guest_images, extra=extra))
    try:
        vm.expect(READY_MARKER, BOOT_TIMEOUT)
        vm.run("modprobe e1000e && sleep 3 && ip link set eth0 up", timeout=120)
        yield StreamGuest(vm, peer, passt)
    finally:
        vm.kill()
        peer.close()
        if passt is not None:
            passt.kill()
            passt.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_stream_carries_frames_to_and_from_a_test_peer(stream_guest: StreamGuest) -> None:
    vm, peer = stream_guest.vm, stream_guest.peer
    vm.run(f"ip addr add {GUEST_IP}/24 dev eth0")
    out = vm.run("busybox ping -c 3 -W 10 192.168.77.1", timeout=120)
    assert "3 packets transmitted, 3 packets received" in out, out
    # The guest's ARP request and its three echo requests reached the peer.
    assert sum(frame[12:14] == b"\x08\x06" for frame in peer.received) >= 1
    assert sum(frame[12:14] == b"\x08\x00" and frame[0:6] == PEER_MAC for frame in peer.received) >= 3
    assert peer.sent >= 4


def test_stream_to_passt_gets_a_dhcp_lease(stream_guest: StreamGuest) -> None:
    if stream_guest.passt is None:
        pytest.skip("passt is not installed (apt-get install passt)")
    vm = stream_guest.vm
    vm.run("ip link set eth1 up")
    out = vm.run("busybox udhcpc -i eth1 -n -q -t 10 -s /bin/true", timeout=180)
    assert "obtained from" in out, out
