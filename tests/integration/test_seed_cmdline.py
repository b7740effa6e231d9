"""The seed's command line end to end (issue 13), with the disk its root needs:

    pemu -machine q35 -m 4096 -device e1000e,netdev=net0
         -netdev user,id=net0,hostfwd=tcp::PORT-:22
         -kernel bzImage -append "root=/dev/sda2" -hda debian.img

booted once per kernel (the one built from linux-source with everything built
in, and Debian's stock kernel with its root initramfs as ``-initrd``) on a
private copy of the Debian systemd image; every check then talks to the
guest's sshd through the forwarded port.  Only a monitor socket is added to
the line (it is how the tests add and remove forwarding rules; pemu has no
display to open, so the line runs headless as it is).  The stock kernel's guest also
carries an IPv6 and a UDP forwarding rule on its ``-netdev`` (the rules'
command-line spelling); the built kernel's guest gets the same rules from
``hostfwd_add`` on the monitor.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.build_disk import DiskImage, RootInitrd
from tests.fixtures.build_kernel import Kernel
from tests.integration.disk_guest import SshTarget, disk_copy, free_tcp_port
from tests.integration.harness import GuestProcess, recv_until

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 600.0
GUEST_UDP_PORT = 5556
TRANSFER = 64 << 20
TRANSFER_SEED = 13
# dmesg lines that must not appear (the list, plus the kernel's other alarms).
BAD_DMESG = re.compile(r"Detected Hardware Unit Hang|WARNING|Call Trace|BUG:|Oops|Kernel panic")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_tcp6_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        return int(probe.getsockname()[1])


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class SeedGuest:
    kernel: str
    vm: GuestProcess
    ssh: SshTarget
    monitor: Path
    ipv6_port: int | None          # [::1]:ipv6_port -> :22, None where ::1 is absent
    udp_port: int                  # udp 127.0.0.1:udp_port -> :GUEST_UDP_PORT
    boot_to_ssh: float

    def hmp(self, command: str) -> str:
        """One command on the human monitor; its output (without the prompts)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(str(self.monitor))
            recv_until(s, b"(qemu) ")
            s.sendall(command.encode() + b"\n")
            out = recv_until(s, b"(qemu) ").decode(errors="replace")
        # The monitor echoes the command line back first (as QEMU's readline does).
        lines = out.removesuffix("(qemu) ").replace("\r", "").split("\n")
        if lines and lines[0].endswith(command):
            lines = lines[1:]
        return "\n".join(lines)


def seed_command_line(*, kernel: Path, initrd: Path | None, image: Path, port: int,
                      extra_hostfwd: str = "") -> list[str]:
    """The seed's line, word for word, with the disk (and -initrd for a modular kernel)."""
    args = ["-machine", "q35", "-m", "4096",
            "-device", "e1000e,netdev=net0",
            "-netdev", f"user,id=net0,hostfwd=tcp::{port}-:22{extra_hostfwd}",
            "-kernel", str(kernel)]
    if initrd is not None:
        args += ["-initrd", str(initrd)]
    return [*args, "-append", "root=/dev/sda2", "-hda", str(image)]


@pytest.fixture(scope="module", params=["built", "stock"])
def seed_guest(request: pytest.FixtureRequest, debian_disk: DiskImage,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedGuest]:
    kind = str(request.param)
    directory = tmp_path_factory.mktemp(f"seed-{kind}")
    disk = disk_copy(debian_disk, directory)
    port, udp_port = free_tcp_port(), free_udp_port()
    ipv6_port = free_tcp6_port() if has_ipv6_loopback() else None
    if kind == "built":
        built: Kernel = request.getfixturevalue("built_kernel")
        kernel, initrd, extra = built.bzimage, None, ""
    else:
        stock: RootInitrd = request.getfixturevalue("root_initrd")
        kernel, initrd = stock.kernel, stock.initrd
        extra = f",hostfwd=udp:127.0.0.1:{udp_port}-:{GUEST_UDP_PORT}"
        if ipv6_port is not None:
            extra += f",hostfwd=tcp:[::1]:{ipv6_port}-:22"
    monitor = directory / "mon.sock"
    vm = GuestProcess([*seed_command_line(kernel=kernel, initrd=initrd, image=disk.image, port=port,
                                          extra_hostfwd=extra),
                       "-monitor", f"unix:{monitor},server=on,wait=off"])
    try:
        ssh = SshTarget(port, debian_disk.key)
        took = ssh.wait_until_up(vm, timeout=BOOT_TIMEOUT)
        guest = SeedGuest(kind, vm, ssh, monitor, ipv6_port, udp_port, took)
        print(f"\n{kind} kernel: boot to ssh {took:.1f} s")
        if kind == "built":
            # The same rules as the stock guest's, from the monitor this time.
            assert guest.hmp(f"hostfwd_add net0 udp:127.0.0.1:{udp_port}-:{GUEST_UDP_PORT}").strip() == ""
            if ipv6_port is not None:
                assert guest.hmp(f"hostfwd_add net0 tcp:[::1]:{ipv6_port}-:22").strip() == ""
        yield guest
    finally:
        vm.kill()


def test_ssh_uname(seed_guest: SeedGuest) -> None:
    result = seed_guest.ssh.run("uname -a")
    assert result.stdout.startswith("Linux "), result.stdout
    # The right kernel: the built one says so in its version string ("6.1.x", no "-amd64").
    assert ("-amd64" in result.stdout) == (seed_guest.kernel == "stock"), result.stdout


def test_dhcp_address(seed_guest: SeedGuest) -> None:
    out = seed_guest.ssh.run("ip -4 addr show").stdout
    assert re.search(r"inet 10\.0\.2\.15/24 .*dynamic", out), out


def test_root_is_sda2_ext4(seed_guest: SeedGuest) -> None:
    mounts = seed_guest.ssh.run("mount").stdout
    assert re.search(r"^/dev/sda2 on / type ext4 \(rw", mounts, re.MULTILINE), mounts


def test_e1000e_bound_link_up_dmesg_clean(seed_guest: SeedGuest) -> None:
    dmesg = seed_guest.ssh.run("dmesg").stdout
    assert re.search(r"e1000e 0000:00:0\w\.0 \w+: Intel\(R\) PRO/1000 Network Connection", dmesg), dmesg
    assert re.search(r"e1000e 0000:00:0\w\.0 \w+: NIC Link is Up 1000 Mbps Full Duplex", dmesg), dmesg
    bad = [line for line in dmesg.splitlines() if BAD_DMESG.search(line)]
    assert bad == []


def test_64_mib_round_trip_keeps_sha256(seed_guest: SeedGuest, tmp_path: Path) -> None:
    data = random.Random(TRANSFER_SEED).randbytes(TRANSFER)
    digest = hashlib.sha256(data).hexdigest()
    ssh = seed_guest.ssh
    ssh.run("cat > /root/blob", input=data, timeout=900)
    assert ssh.run("sha256sum /root/blob").stdout.split()[0] == digest
    back = ssh.run_bytes("cat /root/blob", timeout=900)
    ssh.run("rm -f /root/blob")
    assert len(back) == TRANSFER
    assert hashlib.sha256(back).hexdigest() == digest


# A UDP echo server in perl-base (Essential, so in every Debian image; the image
# has no socat, nc or python3): each datagram comes back upper-cased to its sender.
UDP_ECHO = (
    "perl -MIO::Socket::INET -e '"
    "$s = IO::Socket::INET->new(LocalPort => %d, Proto => q(udp)) or die; "
    "print qq(ready\\n); $| = 1; "
    "for (1..%d) { $s->recv($d, 65535); $s->send(uc $d) }'"
)


def test_udp_hostfwd_carries_datagrams_both_ways(seed_guest: SeedGuest) -> None:
    count = 3
    ssh = seed_guest.ssh
    server = subprocess.Popen(ssh.argv(UDP_ECHO % (GUEST_UDP_PORT, count)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == b"ready\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(30)
            for n in range(count):
                s.sendto(b"datagram %d" % n, ("127.0.0.1", seed_guest.udp_port))
                reply, _ = s.recvfrom(65535)
                assert reply == b"DATAGRAM %d" % n
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
        server.wait()


def test_ipv6_hostfwd_reaches_sshd(seed_guest: SeedGuest) -> None:
    if seed_guest.ipv6_port is None:
        pytest.skip("this host has no IPv6 loopback (::1)")
    over_v6 = SshTarget(seed_guest.ipv6_port, seed_guest.ssh.key, host="::1")
    # The guest's SLAAC address comes with its router advertisement: give it time.
    deadline = time.monotonic() + 120
    while not over_v6.answers() and time.monotonic() < deadline:
        time.sleep(2)
    assert over_v6.run("uname -n").stdout.strip() != ""
    peer = over_v6.run("echo $SSH_CONNECTION").stdout.split()
    assert peer[0].startswith("fec0::"), peer  # slirp's IPv6 host address, fec0::2


def test_hostfwd_add_and_remove_take_effect(seed_guest: SeedGuest) -> None:
    port = free_tcp_port()
    extra = SshTarget(port, seed_guest.ssh.key)
    assert not extra.answers(timeout=15)
    assert seed_guest.hmp(f"hostfwd_add net0 tcp:127.0.0.1:{port}-:22").strip() == ""
    assert extra.run("echo through-the-added-rule").stdout == "through-the-added-rule\n"
    assert seed_guest.hmp(f"hostfwd_remove net0 tcp:127.0.0.1:{port}").strip() == (
        f"host forwarding rule for tcp:127.0.0.1:{port} removed")
    with socket.socket() as s:  # nothing listens there any more
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert not extra.answers(timeout=15)
    assert seed_guest.ssh.answers()  # the seed's own rule is untouched
