"""-netdev through the real binary: bad input is one line and status 1; the monitor's net commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

ENV = dict(os.environ)


def pemu(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pemu", "-display", "none", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, env=ENV)


@pytest.mark.parametrize("args, message", [
    (["-netdev", "foo,id=n"], "pemu: -netdev foo,id=n: Parameter 'type' expects a netdev backend type"),
    (["-netdev", "user,id=net0,hostfwd=tcp::5555:22"],
     "pemu: -netdev user,id=net0,hostfwd=tcp::5555:22: "
     "Invalid host forwarding rule 'tcp::5555:22' (Bad host port separator)"),
    (["-netdev", "user,id=net0", "-netdev", "user,id=net0"],
     "pemu: -netdev user,id=net0: Duplicate ID 'net0' for netdev"),
    (["-netdev", "user,id=net0", "-device", "e1000e,netdev=net9"],
     "pemu: -device e1000e,netdev=net9: Property 'e1000e.netdev' can't find value 'net9'"),
    (["-netdev", "user,id=net0", "-device", "e1000e,netdev=net0", "-device", "e1000e,netdev=net0"],
     "pemu: -device e1000e,netdev=net0: Property 'e1000e.netdev' can't take value 'net0', it's in use"),
    (["-device", "e1000e,mac=01:00:00:00:00:01"],
     "pemu: -device e1000e,mac=01:00:00:00:00:01: Property 'e1000e.mac' doesn't take value '01:00:00:00:00:01'"),
    (["-nic", "user,model=rtl8139"], "pemu: -nic user,model=rtl8139: NIC model 'rtl8139' is not supported by pemu yet"),
    (["-net", "nic,model=virtio-net-pci", "-net", "user"],
     "pemu: -net nic,model=virtio-net-pci: NIC model 'virtio-net-pci' is not supported by pemu yet"),
    (["-netdev", "user,id=n,bogus=1"], "pemu: -netdev user,id=n,bogus=1: Invalid parameter 'bogus'"),
])
def test_bad_input_is_one_line_and_status_1(args: list[str], message: str) -> None:
    result = pemu(*args)
    assert result.returncode == 1
    assert result.stderr == message + "\n"


def test_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = pemu("-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22")
    assert result.returncode == 1
    assert result.stderr == (f"pemu: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22: "
                             f"Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:22'\n")


def test_monitor_hostfwd_add_remove_and_info_network() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    commands = (f"hostfwd_add net0 tcp:127.0.0.1:{port}-:22\ninfo network\n"
                f"hostfwd_remove net0 tcp:127.0.0.1:{port}\nhostfwd_remove net0 tcp:127.0.0.1:{port}\n"
                "set_link net0 off\nquit\n")
    result = pemu("-S", "-netdev", "user,id=net0", "-monitor", "stdio", stdin=commands)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "net0: index=0,type=user,net=10.0.2.0,restrict=off" in out
    assert f"host forwarding rule for tcp:127.0.0.1:{port} removed" in out
    assert f"could not remove host forwarding rule 'tcp:127.0.0.1:{port}'" in out


def test_info_network_shows_hubs_and_backends(tmp_path) -> None:  # noqa: ANN001
    sock = tmp_path / "s"
    result = pemu("-S", "-net", "user", "-netdev", f"stream,id=st0,server=on,addr.type=unix,addr.path={sock}",
                  "-monitor", "stdio", stdin="info network\nquit\n")
    assert result.returncode == 0, result.stderr
    assert "hub 0\n \\ hub0port0: user.0: index=0,type=user,net=10.0.2.0,restrict=off\n" in result.stdout
    assert f"st0: index=0,type=stream,listening on {sock}\n" in result.stdout
    assert result.stderr == ("pemu: warning: hub 0 with no nics\npemu: warning: netdev st0 has no peer\n")


@pytest.mark.parametrize("args, lines", [
    (["-device", "e1000e,netdev=n0,mac=52:54:00:aa:bb:cc", "-netdev", "user,id=n0"],
     ["e1000e.0: index=0,type=nic,model=e1000e,macaddr=52:54:00:aa:bb:cc",
      " \\ n0: index=0,type=user,net=10.0.2.0,restrict=off"]),
    (["-nic", "user"],
     ["e1000e.0: index=0,type=nic,model=e1000e,macaddr=52:54:00:12:34:56",
      " \\ __org.qemu.nic0: index=0,type=user,net=10.0.2.0,restrict=off"]),
    (["-net", "nic", "-net", "user"],
     ["hub 0", " \\ hub0port1: user.0: index=0,type=user,net=10.0.2.0,restrict=off",
      " \\ hub0port0: e1000e.0: index=0,type=nic,model=e1000e,macaddr=52:54:00:12:34:56"]),
])
def test_e1000e_nics_are_made_and_linked(args: list[str], lines: list[str]) -> None:
    result = pemu("-S", "-machine", "q35", *args, "-monitor", "stdio", stdin="info network\ninfo qtree\nquit\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for line in lines:
        assert line + "\n" in result.stdout, result.stdout
    assert "class Ethernet controller, addr 00:01.0, pci id 8086:10d3 (sub 8086:0000)" in result.stdout
