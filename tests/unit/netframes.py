"""Ethernet/IPv4/ARP/DHCP/TCP frames built and parsed by the net tests (and a test NIC)."""

from __future__ import annotations

import socket
import struct
from collections import deque

from pemu.net.net import NetClientState, NetState, qemu_flush_queued_packets

GUEST_MAC = bytes.fromhex("525400123456")
BROADCAST = b"\xff" * 6


class TestNic(NetClientState):
    """A NIC for the tests (not shipped): keeps what it receives; can refuse."""

    driver = "nic"
    __test__ = False

    def __init__(self, net: NetState, name: str = "testnic", mac: bytes = GUEST_MAC) -> None:
        super().__init__(net, "test-nic", name)
        self.mac = mac
        self.frames: deque[bytes] = deque()
        self.accepting = True
        self.info_str = f"model=test-nic,macaddr={':'.join(f'{b:02x}' for b in mac)}"

    def can_receive(self) -> bool:
        return self.accepting

    def receive(self, data: bytes) -> int:
        if not self.accepting:
            return 0
        self.frames.append(data)
        return len(data)

    def start_accepting(self) -> None:
        self.accepting = True
        qemu_flush_queued_packets(self)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 1) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(header) + len(payload))
    csum = checksum(pseudo + header + payload)
    header = header[:16] + struct.pack("!H", csum) + header[18:]
    return ipv4(src, dst, 6, header + payload)


def dhcp_discover(mac: bytes = GUEST_MAC, xid: int = 0x12345678) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4), bytes(4), bytes(4),
                        bytes(4), mac + bytes(10), bytes(64), bytes(128))
    options = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\xff"
    return ether(BROADCAST, mac, 0x0800, udp("0.0.0.0", "255.255.255.255", 68, 67, bootp + options))


def arp_request(sender_ip: str, target_ip: str, mac: bytes = GUEST_MAC) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton(sender_ip), bytes(6),
                      socket.inet_aton(target_ip))
    return ether(BROADCAST, mac, 0x0806, arp)


def ethertype(frame: bytes) -> int:
    return int(struct.unpack("!H", frame[12:14])[0])


def ip_payload(frame: bytes) -> tuple[int, str, str, bytes]:
    """(protocol, src, dst, payload) of an IPv4 frame."""
    ihl = (frame[14] & 0xF) * 4
    proto = frame[23]
    src = socket.inet_ntoa(frame[26:30])
    dst = socket.inet_ntoa(frame[30:34])
    total = struct.unpack("!H", frame[16:18])[0]
    return proto, src, dst, frame[14 + ihl:14 + total]


def dhcp_reply(frame: bytes) -> tuple[int, str, str] | None:
    """(message type, yiaddr, server) of a DHCP reply frame, else None."""
    if ethertype(frame) != 0x0800:
        return None
    proto, src, _dst, payload = ip_payload(frame)
    if proto != 17 or struct.unpack("!H", payload[2:4])[0] != 68:
        return None
    bootp = payload[8:]
    yiaddr = socket.inet_ntoa(bootp[16:20])
    options = bootp[240:]
    msg_type = 0
    i = 0
    while i < len(options) and options[i] != 0xFF:
        if options[i] == 0:
            i += 1
            continue
        code, length = options[i], options[i + 1]
        if code == 53:
            msg_type = options[i + 2]
        i += 2 + length
    return msg_type, yiaddr, src


def tcp_fields(frame: bytes) -> tuple[str, str, int, int, int, int, int, bytes] | None:
    """(src, dst, sport, dport, seq, ack, flags, payload) of a TCP frame, else None."""
    if ethertype(frame) != 0x0800:
        return None
    proto, src, dst, payload = ip_payload(frame)
    if proto != 6:
        return None
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", payload[:14])
    return src, dst, sport, dport, seq, ack, flags, payload[(off >> 4) * 4:]
