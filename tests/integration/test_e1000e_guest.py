"""The e1000e NIC under Debian's own driver: one guest booted with
``-device e1000e,netdev=n0 -netdev user,...,hostfwd=...`` serves every check
(the driver binds with MSI-X, DHCP gives 10.0.2.15, the link comes up, a few
MiB go each way through a TCP hostfwd with their sha256 kept, datagrams reach
the guest through a UDP hostfwd, set_link takes the link down and up, dmesg
stays clean, then the driver is reloaded with MSI and with INTx, and binds again
after a reboot).  A second,
short boot without local APICs checks that the NIC then offers INTx only."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.harness import PROMPT, GuestProcess, default_guest_args, recv_until

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 300
GUEST_TCP_PORT = 5555
GUEST_UDP_PORT = 5556
TRANSFER = 4 << 20
BAD_DMESG = re.compile(r"BUG|Oops|panic|Call Trace|WARNING|Hardware Unit Hang|Falling back")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NetGuest:
    def __init__(self, vm: GuestProcess, tcp_port: int, udp_port: int, monitor: Path) -> None:
        self.vm, self.tcp_port, self.udp_port, self.monitor = vm, tcp_port, udp_port, monitor

    def hmp(self, command: str) -> str:
        """One command on the human monitor's socket; its output."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.monitor))
            recv_until(s, b"(qemu) ")
            s.sendall(command.encode() + b"\n")
            return recv_until(s, b"(qemu) ").decode(errors="replace")


@pytest.fixture(scope="module")
def net_guest(guest_images: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetGuest]:
    tcp_port, udp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    monitor = tmp_path_factory.mktemp("e1000e") / "mon.sock"
    netdev = (f"user,id=n0,hostfwd=tcp:127.0.0.1:{tcp_port}-:{GUEST_TCP_PORT},"
              f"hostfwd=udp:127.0.0.1:{udp_port}-:{GUEST_UDP_PORT}")
    vm = GuestProcess(default_guest_args(guest_images, extra=(
        "-device", "e1000e,netdev=n0", "-netdev", netdev, "-monitor", f"unix:{monitor},server=on,wait=off")))
    try:
        vm.expect(READY_MARKER, BOOT_TIMEOUT)
        vm.run("modprobe e1000e && ip link set eth0 up", timeout=120)
        yield NetGuest(vm, tcp_port, udp_port, monitor)
    finally:
        vm.kill()


def test_driver_binds_with_msix_and_link_comes_up(net_guest: NetGuest) -> None:
    vm = net_guest.vm
    log = vm.run("sleep 3; dmesg | grep e1000e", timeout=60)
    assert "eth0: Intel(R) PRO/1000 Network Connection" in log
    assert "52:54:00:12:34:56" in log
    assert re.search(r"eth0: NIC Link is Up 1000 Mbps Full Duplex", log), log
    interrupts = vm.run("grep eth0 /proc/interrupts")
    assert "eth0-rx-0" in interrupts and "eth0-tx-0" in interrupts  # three MSI-X vectors
    assert "PCI-MSI" in interrupts


def test_dhcp_gives_the_slirp_address(net_guest: NetGuest) -> None:
    vm = net_guest.vm
    out = vm.run("busybox udhcpc -i eth0 -n -q -s /bin/true", timeout=120)
    assert "lease of 10.0.2.15 obtained from 10.0.2.2" in out
    vm.run("ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2")
    assert "10.0.2.15/24" in vm.run("ip addr show eth0")


def _connect(port: int, timeout: float = 60.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        # slirp accepts before the guest listens: a refused guest connection closes at once.
        s.settimeout(0.5)
        try:
            if s.recv(1, socket.MSG_PEEK) == b"" and time.monotonic() < deadline:
                s.close()
                time.sleep(0.5)
                continue
        except TimeoutError:
            pass
        s.settimeout(timeout)
        return s


def test_tcp_hostfwd_carries_megabytes_both_ways(net_guest: NetGuest) -> None:
    vm = net_guest.vm
    data = os.urandom(TRANSFER)
    digest = hashlib.sha256(data).hexdigest()
    # host -> guest
    vm.expect(re.escape(PROMPT), 30)
    vm.sendline(f"busybox nc -l -p {GUEST_TCP_PORT} > /tmp/in; sha256sum /tmp/in")
    time.sleep(1)
    with _connect(net_guest.tcp_port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    vm.expect(digest, 300)
    # guest -> host: the same file back
    vm.expect(re.escape(PROMPT), 30)
    vm.sendline(f"busybox nc -l -p {GUEST_TCP_PORT} < /tmp/in")
    time.sleep(1)
    received = bytearray()
    with _connect(net_guest.tcp_port) as s:
        while len(received) < TRANSFER:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            received += chunk
    assert len(received) == TRANSFER
    assert hashlib.sha256(received).hexdigest() == digest
    vm.run("true", timeout=60)


def _udp_no_ports(vm: GuestProcess) -> int:
    lines = [line.split() for line in vm.run("grep Udp: /proc/net/snmp").splitlines() if line.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("NoPorts")])


def test_udp_hostfwd_reaches_the_guest(net_guest: NetGuest) -> None:
    vm = net_guest.vm
    before = _udp_no_ports(vm)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for n in range(5):
            s.sendto(b"datagram %d" % n, ("127.0.0.1", net_guest.udp_port))
            time.sleep(0.2)
    time.sleep(1)
    # Nothing listens on the guest's port: each datagram is counted there as NoPorts.
    assert _udp_no_ports(vm) - before == 5


def _wait_dmesg(vm: GuestProcess, pattern: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = len(re.findall(pattern, vm.run("dmesg | grep e1000e", timeout=60)))
        if found >= count or time.monotonic() > deadline:
            assert found >= count, f"{pattern!r} {found} times, not {count}"
            return
        time.sleep(1)


def test_set_link_takes_the_link_down_and_up(net_guest: NetGuest) -> None:
    vm = net_guest.vm
    ups = len(re.findall("NIC Link is Up", vm.run("dmesg | grep e1000e", timeout=60)))
    net_guest.hmp("set_link n0 off")
    _wait_dmesg(vm, "NIC Link is Down", 1)
    assert "NO-CARRIER" in vm.run("ip link show eth0")
    net_guest.hmp("set_link n0 on")
    _wait_dmesg(vm, "NIC Link is Up", ups + 1)


def test_dmesg_is_clean(net_guest: NetGuest) -> None:
    log = net_guest.vm.run("dmesg", timeout=60)
    bad = [line for line in log.splitlines() if BAD_DMESG.search(line)]
    assert bad == []


@pytest.mark.parametrize("mode, kind", [(1, "PCI-MSI"), (0, "IO-APIC")])
def test_driver_works_with_msi_and_with_intx(net_guest: NetGuest, mode: int, kind: str) -> None:
    vm = net_guest.vm
    vm.run(f"rmmod e1000e; modprobe e1000e IntMode={mode} && ip link set eth0 up && sleep 3", timeout=120)
    lines = [line for line in vm.run("grep eth0 /proc/interrupts").splitlines() if line.strip()]
    assert len(lines) == 1 and kind in lines[0], lines   # one vector, of that kind
    out = vm.run("busybox udhcpc -i eth0 -n -q -s /bin/true", timeout=120)
    assert "lease of 10.0.2.15 obtained" in out


def test_after_a_reboot_the_driver_binds_again_with_msix(net_guest: NetGuest) -> None:
    vm = net_guest.vm
    vm.run("echo before-reboot")
    vm.sendline("reboot -f")                      # with the NIC up: its reset must undo MSI-X and the rings
    vm.expect(r"Linux version", BOOT_TIMEOUT)
    vm.expect(READY_MARKER, BOOT_TIMEOUT)
    vm.run("modprobe e1000e && ip link set eth0 up && sleep 3", timeout=120)
    assert "eth0-rx-0" in vm.run("grep eth0 /proc/interrupts")
    assert "lease of 10.0.2.15 obtained" in vm.run("busybox udhcpc -i eth0 -n -q -s /bin/true", timeout=120)
    bad = [line for line in vm.run("dmesg", timeout=60).splitlines() if BAD_DMESG.search(line)]
    assert bad == []


def test_without_local_apics_the_nic_offers_intx_only(launch_guest: Callable[..., GuestProcess]) -> None:
    vm = launch_guest(extra=("-cpu", "qemu64,-apic", "-device", "e1000e,netdev=n0", "-netdev", "user,id=n0"))
    vm.expect(READY_MARKER, BOOT_TIMEOUT)
    vm.run("modprobe e1000e && ip link set eth0 up && sleep 3", timeout=120)
    assert "XT-PIC" in vm.run("grep eth0 /proc/interrupts")
    # No MSI or MSI-X capability in its list: Linux falls back to legacy INTx quietly.
    log = vm.run("dmesg | grep e1000e", timeout=60)
    assert "Falling back to legacy interrupts" in log
    assert "lease of 10.0.2.15 obtained" in vm.run("busybox udhcpc -i eth0 -n -q -s /bin/true", timeout=120)
    bad = [line for line in vm.run("dmesg", timeout=60).splitlines() if re.search(r"WARNING|Call Trace", line)]
    assert bad == []
