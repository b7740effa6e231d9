"""The gratuitous RARP a NIC sends after a migration (QEMU's net/announce.c)."""

from __future__ import annotations

import struct

from pemu.net.announce import AnnounceTimer, announce_delays_ms, announce_frame, announce_nics, qemu_announce_self
from pemu.net.net import NetClientState, NetState
from pemu.net.nic import NICState
from pemu.util.timer import QEMU_CLOCK_REALTIME, qemu_clock_get_ns

MAC = bytes.fromhex("525400123456")


class Wire(NetClientState):
    driver = "wire"

    def __init__(self, net: NetState) -> None:
        super().__init__(net, "wire", "wire0")
        self.frames: list[bytes] = []

    def receive(self, data: bytes) -> int:
        self.frames.append(bytes(data))
        return len(data)


def test_the_frame_is_a_broadcast_rarp_request_reverse_about_the_nic() -> None:
    frame = announce_frame(MAC)
    assert len(frame) == 60 and frame[:6] == b"\xff" * 6 and frame[6:12] == MAC
    assert frame[12:14] == b"\x80\x35"
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 3)
    assert frame[22:28] == MAC and frame[28:32] == bytes(4) and frame[32:38] == MAC and frame[38:42] == bytes(4)
    assert frame[42:] == bytes(18)


def test_rounds_spread_like_qemus_defaults() -> None:
    assert announce_delays_ms() == [50, 150, 250, 350, 450]
    assert announce_delays_ms(rounds=8) == [50, 150, 250, 350, 450, 550, 550, 550]


def test_every_nic_with_a_peer_and_a_link_announces() -> None:
    net = NetState(vm_running=lambda: True)
    wire = Wire(net)
    nic = NICState(net, "e1000e", None, MAC, lambda data: len(data), lambda: True)
    nic.peer, wire.peer = wire, nic
    lonely = NICState(net, "e1000e", None, bytes.fromhex("525400000002"), lambda data: len(data), lambda: True)
    assert lonely.peer is None
    assert announce_nics(net) == 1 and wire.frames == [announce_frame(MAC)]
    nic.link_down = True
    assert announce_nics(net) == 0 and len(wire.frames) == 1


def test_the_timer_sends_one_round_per_delay_then_stops() -> None:
    net = NetState(vm_running=lambda: True)
    wire = Wire(net)
    nic = NICState(net, "e1000e", None, MAC, lambda data: len(data), lambda: True)
    nic.peer, wire.peer = wire, nic
    before = qemu_clock_get_ns(QEMU_CLOCK_REALTIME)
    announcer = qemu_announce_self(net)
    assert isinstance(announcer, AnnounceTimer)
    try:
        assert 50_000_000 <= announcer.timer.expire_time - before < 1_000_000_000
        for n in range(5):
            armed = announcer.timer.expire_time
            announcer.timer.cb()  # what the main loop does when each deadline passes
            assert len(wire.frames) == n + 1
            if n < 4:
                assert announcer.timer.expire_time >= armed + 100_000_000  # the next round, later
            else:
                assert announcer.timer.expire_time == armed  # not re-armed after the last round
        assert announcer.rounds_sent == 5
    finally:
        announcer.cancel()
    assert announcer.timer.expire_time == -1
