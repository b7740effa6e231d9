"""-netdev tap on a real TAP interface (needs /dev/net/tun and CAP_NET_ADMIN)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time

import pytest

from pemu.net.net import NetState, qemu_send_packet
from pemu.net.tap import TUN_PATH, TapNetClient
from pemu.util.error import UserError
from pemu.util.main_loop import MainLoop
from tests.unit.netframes import TestNic

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
ETH_P_EXPERIMENTAL = 0x88B5  # IEEE 802 local experimental ethertype: nothing else uses it


def _tap_usable() -> str | None:
    if not os.path.exists(TUN_PATH):
        return f"{TUN_PATH} does not exist"
    try:
        net = NetState()
        tap = TapNetClient(net, "probe", {"script": "no", "downscript": "no"}, MainLoop())
    except UserError as e:
        return e.message
    tap.delete()
    return None


@pytest.fixture
def tap_rig():  # noqa: ANN201
    reason = _tap_usable()
    if reason is not None:
        pytest.skip(f"tap unusable here: {reason}")
    net = NetState(vm_running=lambda: True)
    loop = MainLoop()
    name = f"pemut{os.getpid() % 100000}"
    tap = TapNetClient(net, "net0", {"ifname": name, "script": "no", "downscript": "no"}, loop)
    nic = TestNic(net)
    nic.peer, tap.peer = tap, nic
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH22x", name.encode(), 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | IFF_UP))
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_EXPERIMENTAL))
    raw.bind((name, ETH_P_EXPERIMENTAL))
    raw.settimeout(5)
    yield tap, nic, loop, raw, name
    raw.close()
    net.cleanup()


def frame(text: bytes) -> bytes:
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", ETH_P_EXPERIMENTAL) \
        + text.ljust(46, b".")


def test_tap_carries_frames_both_ways(tap_rig) -> None:  # noqa: ANN001
    tap, nic, loop, raw, name = tap_rig
    assert tap.ifname == name
    qemu_send_packet(nic, frame(b"guest to host"))
    assert raw.recv(2000) == frame(b"guest to host")
    raw.send(frame(b"host to guest"))
    end = time.monotonic() + 5
    while not any(f == frame(b"host to guest") for f in nic.frames):
        assert time.monotonic() < end
        loop.run_once(0.02)


def test_tap_errors_are_qemus() -> None:
    with pytest.raises(UserError, match=r"^Invalid parameter 'bogus'$"):
        TapNetClient(NetState(), "t", {"bogus": "1"}, MainLoop())
    with pytest.raises(UserError, match=r"^Parameter 'ifname' expects"):
        TapNetClient(NetState(), "t", {"ifname": "x" * 20}, MainLoop())
