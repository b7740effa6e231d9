"""-netdev user on libslirp, in-process with a test NIC: real frames, real host sockets."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pemu.net import slirp  # noqa: E402  (libslirp itself is loaded on first use)
from pemu.net.net import NET_QUEUE_MAX_FRAMES, NetState, info_network, qemu_send_packet
from pemu.util.error import UserError
from pemu.util.main_loop import main_loop
from tests.unit.netframes import (
    GUEST_MAC,
    TestNic,
    arp_request,
    dhcp_discover,
    dhcp_reply,
    ethertype,
    tcp,
    tcp_fields,
    udp,
)


def _libslirp_present() -> bool:
    from pemu.net import libslirp

    try:
        libslirp.libslirp()
    except libslirp.LibslirpMissing:
        return False
    return True


pytestmark = pytest.mark.skipif(not _libslirp_present(), reason="libslirp0 is not installed")


class Rig:
    def __init__(self, hostfwds: list[str] | None = None, opts: dict[str, str] | None = None) -> None:
        self.net = NetState(vm_running=lambda: True)
        self.loop = main_loop()  # the chardevs of guestfwd watch their fds there
        self.user = slirp.SlirpNetClient(self.net, "net0", opts or {}, self.loop, hostfwds or [])
        self.nic = TestNic(self.net)
        self.nic.peer, self.user.peer = self.user, self.nic

    def send(self, frame: bytes) -> None:
        qemu_send_packet(self.nic, frame)

    def run_until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        import time

        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, "timed out"
            self.loop.run_once(0.02)

    def close(self) -> None:
        self.net.cleanup()


@pytest.fixture
def rig() -> Rig:
    r = Rig()
    yield r
    r.close()


def free_port(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(family, kind) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_struct_sizes_match_the_header(tmp_path: Path) -> None:
    import ctypes

    from pemu.net import libslirp as ls

    if not Path("/usr/include/slirp/libslirp.h").exists() or shutil.which("gcc") is None:
        pytest.skip("libslirp-dev (the header) or gcc is not installed")
    src = tmp_path / "sizes.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <slirp/libslirp.h>\n"
        "int main(void){printf(\"%zu %zu %zu %zu %zu %zu %zu\\n\", sizeof(SlirpConfig), sizeof(SlirpCb),"
        " offsetof(SlirpConfig, vprefix_addr6), offsetof(SlirpConfig, vhostname),"
        " offsetof(SlirpConfig, if_mtu), offsetof(SlirpConfig, disable_dhcp),"
        " offsetof(SlirpCb, timer_new_opaque)); return 0;}\n")
    exe = tmp_path / "sizes"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    ours = [ctypes.sizeof(ls.SlirpConfig), ctypes.sizeof(ls.SlirpCb), ls.SlirpConfig.vprefix_addr6.offset,
            ls.SlirpConfig.vhostname.offset, ls.SlirpConfig.if_mtu.offset, ls.SlirpConfig.disable_dhcp.offset,
            ls.SlirpCb.timer_new_opaque.offset]
    assert [int(x) for x in out] == ours


def test_dhcp_offers_the_guest_address(rig: Rig) -> None:
    rig.send(dhcp_discover())
    rig.run_until(lambda: any(dhcp_reply(f) for f in rig.nic.frames))
    replies = [dhcp_reply(f) for f in rig.nic.frames if dhcp_reply(f)]
    assert replies[0] == (2, "10.0.2.15", "10.0.2.2")  # DHCPOFFER


def test_dhcp_follows_net_and_dhcpstart() -> None:
    r = Rig(opts={"net": "192.168.76.0/24", "dhcpstart": "192.168.76.9"})
    try:
        r.send(dhcp_discover())
        r.run_until(lambda: any(dhcp_reply(f) for f in r.nic.frames))
        assert dhcp_reply(r.nic.frames[0]) == (2, "192.168.76.9", "192.168.76.2")
        assert "net=192.168.76.0,restrict=off" in info_network(r.net)
    finally:
        r.close()


def test_arp_for_the_gateway(rig: Rig) -> None:
    rig.send(arp_request("10.0.2.15", "10.0.2.2"))
    rig.run_until(lambda: any(ethertype(f) == 0x0806 for f in rig.nic.frames))
    reply = next(f for f in rig.nic.frames if ethertype(f) == 0x0806)
    assert reply[0:6] == GUEST_MAC
    assert reply[20:22] == b"\x00\x02"  # ARP reply
    assert socket.inet_ntoa(reply[28:32]) == "10.0.2.2"


def _learn_guest_mac(r: Rig) -> None:
    # slirp answers a host connection only once it knows the guest's MAC (ARP/DHCP).
    r.send(dhcp_discover())
    r.run_until(lambda: any(dhcp_reply(f) for f in r.nic.frames))
    r.nic.frames.clear()


def _syn_to(r: Rig, port: int) -> tuple[str, str, int, int, int, int, int, bytes]:
    def found() -> bool:
        return any((t := tcp_fields(f)) and t[3] == port and t[6] & 0x02 for f in r.nic.frames)

    r.run_until(found)
    return next(t for f in r.nic.frames if (t := tcp_fields(f)) and t[3] == port)


def test_tcp_hostfwd_full_connection() -> None:
    port = free_port()
    r = Rig([f"tcp:127.0.0.1:{port}-:22"])
    try:
        _learn_guest_mac(r)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.setblocking(False)
        src, dst, sport, dport, seq, _ack, flags, _ = _syn_to(r, 22)
        assert (dst, dport) == ("10.0.2.15", 22) and src == "10.0.2.2"
        assert flags & 0x02
        # The test NIC plays the guest's TCP: SYN-ACK, then data, then reads the host's data.
        gseq = 1000
        r.nic.frames.clear()
        frame = tcp("10.0.2.15", src, 22, sport, gseq, seq + 1, 0x12)
        r.send(bytes(GUEST_MAC[::-1]) + GUEST_MAC + b"\x08\x00" + frame)
        r.run_until(lambda: any((t := tcp_fields(f)) and t[6] & 0x10 for f in r.nic.frames))
        gseq += 1
        r.send(b"\x52\x55\x0a\x00\x02\x02" + GUEST_MAC + b"\x08\x00"
               + tcp("10.0.2.15", src, 22, sport, gseq, seq + 1, 0x18, b"SSH-2.0-test\r\n"))
        got = b""

        def host_read() -> bool:
            nonlocal got
            try:
                got += client.recv(100)
            except BlockingIOError:
                pass
            return got == b"SSH-2.0-test\r\n"

        r.run_until(host_read)
        r.nic.frames.clear()
        client.sendall(b"hello guest")
        r.run_until(lambda: any((t := tcp_fields(f)) and t[7] == b"hello guest" for f in r.nic.frames))
        client.close()
    finally:
        r.close()


def test_udp_hostfwd_reaches_the_guest() -> None:
    port = free_port(kind=socket.SOCK_DGRAM)
    r = Rig([f"udp:127.0.0.1:{port}-:5353"])
    try:
        _learn_guest_mac(r)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"ping", ("127.0.0.1", port))
            r.run_until(lambda: any(f[23:24] == b"\x11" and f.endswith(b"ping") for f in r.nic.frames))
        frame = next(f for f in r.nic.frames if f.endswith(b"ping"))
        assert socket.inet_ntoa(frame[30:34]) == "10.0.2.15"
        assert frame[36:38] == (5353).to_bytes(2, "big")
    finally:
        r.close()


def neighbour_advert(ns: bytes, target: bytes) -> bytes:
    """The guest's answer to slirp's neighbour solicitation for ``target``."""
    import struct

    from tests.unit.netframes import checksum

    router_mac, router_ip = ns[6:12], ns[22:38]
    icmp = struct.pack("!BBHI", 136, 0, 0, 0x60000000) + target + b"\x02\x01" + GUEST_MAC
    pseudo = target + router_ip + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + target + router_ip
    return router_mac + GUEST_MAC + b"\x86\xdd" + ip6 + icmp


def test_ipv6_hostfwd_beyond_qemu() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    port = free_port(socket.AF_INET6)
    r = Rig([f"tcp:[::1]:{port}-:22"])
    try:
        _learn_guest_mac(r)
        client = socket.create_connection(("::1", port), timeout=5)
        # libslirp looks the guest's IPv6 address (SLAAC from its MAC) up by neighbour solicitation.
        target = socket.inet_pton(socket.AF_INET6, "fec0::5054:ff:fe12:3456")
        r.run_until(lambda: any(f[12:14] == b"\x86\xdd" and f[54] == 135 and f[62:78] == target
                                for f in r.nic.frames))
        ns = next(f for f in r.nic.frames if f[12:14] == b"\x86\xdd" and f[54] == 135)
        r.nic.frames.clear()
        r.send(neighbour_advert(ns, target))
        # ... then the SYN to the guest's port 22 over IPv6.
        r.run_until(lambda: any(f[12:14] == b"\x86\xdd" and f[20] == 6 and f[38:54] == target
                                and f[56:58] == b"\x00\x16" and f[67] & 0x02 for f in r.nic.frames))
        client.close()
    finally:
        r.close()


def test_hostfwd_add_and_remove_take_effect(rig: Rig) -> None:
    _learn_guest_mac(rig)
    port = free_port()
    rig.user.add_hostfwd(f"tcp:127.0.0.1:{port}-:2222")
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    _syn_to(rig, 2222)
    client.close()
    assert rig.user.remove_hostfwd(f"tcp:127.0.0.1:{port}")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not rig.user.remove_hostfwd(f"tcp:127.0.0.1:{port}")


def test_port_in_use_is_qemus_error(rig: Rig) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=rf"^Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:22'$"):
            rig.user.add_hostfwd(f"tcp:127.0.0.1:{port}-:22")


@pytest.mark.parametrize("rule, reason", [
    ("tcp", "No : separators"),
    ("icmp::1-:2", "Bad protocol name"),
    ("tcp:1.2.3.x:1-:2", "Bad host address"),
    ("tcp::5", "Bad host port separator"),
    ("tcp::x-:2", "Bad host port"),
    ("tcp::1-2", "Missing guest address"),
    ("tcp::1-1.2.3.4.5:2", "Bad guest address"),
    ("tcp::1-:0", "Bad guest port"),
    ("tcp:[::1:1-:2", "Bad host address"),
])
def test_malformed_hostfwd(rig: Rig, rule: str, reason: str) -> None:
    with pytest.raises(UserError) as e:
        rig.user.add_hostfwd(rule)
    assert e.value.message == f"Invalid host forwarding rule '{rule}' ({reason})"


def test_refusing_nic_makes_slirp_hold_frames_bounded_then_flushed(rig: Rig) -> None:
    _learn_guest_mac(rig)
    rig.nic.accepting = False
    # Many ARP requests from the guest: slirp answers each; the NIC refuses them all.
    count = NET_QUEUE_MAX_FRAMES + 200
    for i in range(count):
        rig.send(arp_request("10.0.2.15", "10.0.2.2"))
        if i % 100 == 0:
            rig.loop.run_once(0)
    rig.run_until(lambda: len(rig.user._input) == 0 and len(rig.nic.incoming_queue) >= NET_QUEUE_MAX_FRAMES)
    assert not rig.nic.frames
    assert len(rig.nic.incoming_queue) == NET_QUEUE_MAX_FRAMES  # bounded
    assert rig.nic.incoming_queue.dropped > 0
    rig.nic.start_accepting()
    assert len(rig.nic.frames) == NET_QUEUE_MAX_FRAMES
    assert len(rig.nic.incoming_queue) == 0


def test_guest_flood_into_slirp_is_held_not_grown(rig: Rig) -> None:
    # Without the main loop running, the NIC's transmit queue towards slirp fills, then the NIC is held.
    from pemu.net.net import qemu_send_packet_async

    held: list[int] = []
    frame = udp("10.0.2.15", "10.0.2.2", 1234, 9, b"x" * 100)
    frame = b"\x52\x55\x0a\x00\x02\x02" + GUEST_MAC + b"\x08\x00" + frame
    results = [qemu_send_packet_async(rig.nic, frame, lambda nc, n: held.append(n)) for _ in range(400)]
    assert results.count(0) == 400 - slirp.SLIRP_INPUT_QUEUE_MAX
    assert len(rig.user._input) == slirp.SLIRP_INPUT_QUEUE_MAX
    rig.run_until(lambda: len(held) == 400 - slirp.SLIRP_INPUT_QUEUE_MAX)


def _guest_tcp_connect(r: Rig, dst: str, dport: int) -> tuple[int, int]:
    """The test NIC opens a TCP connection to dst:dport; returns (our next seq, their next seq)."""
    gw = b"\x52\x55\x0a\x00\x02\x02"
    r.nic.frames.clear()
    r.send(gw + GUEST_MAC + b"\x08\x00" + tcp("10.0.2.15", dst, 40000, dport, 5000, 0, 0x02))
    r.run_until(lambda: any((t := tcp_fields(f)) and t[6] & 0x12 == 0x12 for f in r.nic.frames))
    synack = next(t for f in r.nic.frames if (t := tcp_fields(f)) and t[6] & 0x12 == 0x12)
    their = synack[4] + 1
    r.send(gw + GUEST_MAC + b"\x08\x00" + tcp("10.0.2.15", dst, 40000, dport, 5001, their, 0x10))
    return 5001, their


def test_guestfwd_to_a_tcp_chardev() -> None:
    from pemu.chardev.registry import qemu_chr_cleanup

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        r = Rig()
        try:
            _learn_guest_mac(r)
            r.user.add_guestfwd(f"tcp:10.0.2.100:1234-tcp:127.0.0.1:{port}")
            host, _ = listener.accept()
            host.settimeout(5)
            seq, their = _guest_tcp_connect(r, "10.0.2.100", 1234)
            gw = b"\x52\x55\x0a\x00\x02\x02"
            r.send(gw + GUEST_MAC + b"\x08\x00"
                   + tcp("10.0.2.15", "10.0.2.100", 40000, 1234, seq, their, 0x18, b"to the chardev"))
            got = b""
            while got != b"to the chardev":
                r.loop.run_once(0.02)
                host.setblocking(False)
                try:
                    got += host.recv(100)
                except BlockingIOError:
                    pass
            r.nic.frames.clear()
            host.sendall(b"from the chardev")
            r.run_until(lambda: any((t := tcp_fields(f)) and t[7] == b"from the chardev" for f in r.nic.frames))
            host.close()
        finally:
            r.close()
            qemu_chr_cleanup()


@pytest.mark.parametrize("rule", ["udp:10.0.2.100:1-tcp:x:1", "tcp:10.0.2.100:0-null", "tcp:1.2.3.x:5-null",
                                  "tcp:10.0.2.100:5"])
def test_malformed_guestfwd(rig: Rig, rule: str) -> None:
    with pytest.raises(UserError) as e:
        rig.user.add_guestfwd(rule)
    assert e.value.message == f"Invalid guest forwarding rule '{rule}'"


def test_addressing_defaults_and_errors() -> None:
    a = slirp.parse_addressing({})
    assert (str(a.net), str(a.host), str(a.dhcp_start), str(a.dns)) == ("10.0.2.0/24", "10.0.2.2", "10.0.2.15",
                                                                       "10.0.2.3")
    assert (str(a.net6), str(a.host6), str(a.dns6)) == ("fec0::/64", "fec0::2", "fec0::3")
    b = slirp.parse_addressing({"ipv6-prefix": "fd00:1::", "ipv6-prefixlen": "48"})
    assert str(b.net6) == "fd00:1::/48" and str(b.host6) == "fd00:1::2"
    for opts, message in [
        ({"host": "10.0.3.2"}, "The host address '10.0.3.2' is not in the network 10.0.2.0/24"),
        ({"ipv4": "off", "ipv6": "off"}, "IPv4 and IPv6 cannot both be disabled"),
        ({"ipv6-net": "fec0::/64", "ipv6-prefix": "fec0::"},
         "ipv6-net and ipv6-prefix/ipv6-prefixlen are mutually exclusive"),
        ({"ipv6-host": "fec1::2"}, "IPv6 Host doesn't belong to network"),
        ({"restrict": "maybe"}, "Parameter 'restrict' expects 'on' or 'off'"),
    ]:
        with pytest.raises(UserError) as e:
            if "restrict" in opts:
                slirp.SlirpNetClient(NetState(), "n", opts, main_loop())
            else:
                slirp.parse_addressing(opts)
        assert e.value.message == message


def _dhcp_options(frame: bytes) -> dict[int, bytes]:
    from tests.unit.netframes import ip_payload

    options = ip_payload(frame)[3][8 + 240:]
    found: dict[int, bytes] = {}
    i = 0
    while i < len(options) and options[i] != 0xFF:
        if options[i] == 0:
            i += 1
            continue
        found[options[i]] = options[i + 2:i + 2 + options[i + 1]]
        i += 2 + options[i + 1]
    return found


def test_dhcp_carries_hostname_domain_and_search_list() -> None:
    net = NetState(vm_running=lambda: True)
    loop = main_loop()
    user = slirp.SlirpNetClient(net, "net0", {"hostname": "guesty", "domainname": "example.test"}, loop,
                                dnssearch=["a.example", "b.example"])
    nic = TestNic(net)
    nic.peer, user.peer = user, nic
    try:
        qemu_send_packet(nic, dhcp_discover())
        import time

        end = time.monotonic() + 5
        while not nic.frames:
            assert time.monotonic() < end
            loop.run_once(0.02)
        options = _dhcp_options(nic.frames[0])
        assert options[12] == b"guesty"
        assert options[15] == b"example.test"
        assert b"\x01a\x07example\x00" in options[119] and b"\x01b" in options[119]
    finally:
        net.cleanup()
