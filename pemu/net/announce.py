"""Self-announcement after a migration (QEMU's net/announce.c).

When a VM resumes on another host, the switches in front of its tap, socket
or stream back-end still send its frames to the old port.  Each NIC
therefore sends a few gratuitous RARP frames (RFC 903 "request reverse",
from and about its own MAC address, to the broadcast address): any learning
bridge on the way notes where the address is now.  QEMU does it in rounds
spread over about a second; so does :func:`qemu_announce_self`.

With ``-netdev user`` the frames reach libslirp, which has no use for them
(its virtual network has no switch): harmless, and cheap.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pemu.util.timer import QEMU_CLOCK_REALTIME, QEMUTimer, qemu_clock_get_ns

if TYPE_CHECKING:
    from pemu.net.net import NetState

ETH_P_RARP = 0x8035
ARPHRD_ETHER = 1
ETH_P_IP = 0x0800
RARP_REQUEST_REVERSE = 3
ETH_ZLEN = 60
BROADCAST = b"\xff" * 6

# QEMU's announce parameters (announce-initial, -max, -rounds, -step), in milliseconds.
ANNOUNCE_INITIAL_MS = 50
ANNOUNCE_MAX_MS = 550
ANNOUNCE_ROUNDS = 5
ANNOUNCE_STEP_MS = 100


def announce_frame(mac: bytes) -> bytes:
    """The gratuitous RARP frame a NIC with address ``mac`` sends (padded to the minimum frame)."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address has 6 bytes, not {len(mac)}")
    rarp = struct.pack("!HHBBH6s4s6s4s", ARPHRD_ETHER, ETH_P_IP, 6, 4, RARP_REQUEST_REVERSE,
                       mac, bytes(4), mac, bytes(4))
    frame = BROADCAST + mac + struct.pack("!H", ETH_P_RARP) + rarp
    return frame.ljust(ETH_ZLEN, b"\0")


def announce_delays_ms(rounds: int = ANNOUNCE_ROUNDS, initial_ms: int = ANNOUNCE_INITIAL_MS,
                       max_ms: int = ANNOUNCE_MAX_MS, step_ms: int = ANNOUNCE_STEP_MS) -> list[int]:
    """How long to wait before each round: the initial delay, then ``step_ms`` more each round, at most ``max_ms``."""
    return [min(initial_ms + n * step_ms, max_ms) for n in range(rounds)]


def announce_nics(net: NetState) -> int:
    """One round: every NIC of ``net`` sends its frame to its peer; returns how many did."""
    from pemu.net.net import qemu_send_packet
    from pemu.net.nic import NICState

    sent = 0
    for nc in list(net.clients):
        if isinstance(nc, NICState) and nc.peer is not None and not nc.link_down:
            qemu_send_packet(nc, announce_frame(nc.macaddr))
            sent += 1
    return sent


class AnnounceTimer:
    """The rounds of one announcement, on the realtime clock (they go out
    while the VM runs or not, as QEMU's do)."""

    def __init__(self, net: NetState, delays_ms: list[int]) -> None:
        self.net = net
        self.delays_ms = list(delays_ms)
        self.rounds_sent = 0
        self.timer = QEMUTimer(QEMU_CLOCK_REALTIME, self._round)
        self._arm()

    def _arm(self) -> None:
        if self.rounds_sent < len(self.delays_ms):
            delay_ns = self.delays_ms[self.rounds_sent] * 1_000_000
            self.timer.mod_ns(qemu_clock_get_ns(QEMU_CLOCK_REALTIME) + delay_ns)

    def _round(self) -> None:
        announce_nics(self.net)
        self.rounds_sent += 1
        self._arm()

    def cancel(self) -> None:
        self.timer.delete()


def qemu_announce_self(net: NetState) -> AnnounceTimer:
    """Start announcing every NIC of ``net`` (the destination, once the
    migrated VM is loaded); the caller keeps the timer to cancel it."""
    return AnnounceTimer(net, announce_delays_ms())
