"""The q35 machine as a user sees it before any guest code runs: help texts,
the monitor's views of the machine, and one-line errors for bad input."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.integration.harness import GuestProcess

PEMU = [sys.executable, "-m", "pemu"]


def pemu(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(PEMU + list(args), input=stdin, capture_output=True, text=True, timeout=timeout)


def test_machine_help_lists_q35_and_versions() -> None:
    r = pemu("-machine", "help")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^q35\s+Standard PC \(Q35 \+ ICH9, 2009\) \(alias of pc-q35-7\.2\)$", r.stdout, re.M)
    for version in ("7.2", "7.1", "7.0", "6.2"):
        assert re.search(rf"^pc-q35-{re.escape(version)}\s+Standard PC", r.stdout, re.M)


def test_device_help_lists_devices_and_their_properties() -> None:
    r = pemu("-device", "help")
    assert r.returncode == 0, r.stderr
    assert 'name "isa-serial", bus ISA' in r.stdout
    r = pemu("-device", "isa-serial,help")
    assert r.returncode == 0, r.stderr
    assert "isa-serial options:" in r.stdout and re.search(r"^\s+iobase=<int32>", r.stdout, re.M)


@pytest.fixture(scope="module")
def monitor_session() -> str:
    """The seed's machine, paused, with the monitor on stdio."""
    commands = ["info status", "info mtree", "info mtree -f", "info qom-tree", "info qtree", "quit"]
    r = pemu("-machine", "q35", "-m", "4096", "-S", "-nographic", "-monitor", "stdio",
             stdin="\n".join(commands) + "\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return r.stdout.replace("\r\n", "\n")


def section(output: str, command: str) -> str:
    """What the monitor printed for ``command`` (up to the next prompt)."""
    start = output.index(f"(qemu) {command}\n") + len(f"(qemu) {command}\n")
    end = output.find("(qemu) ", start)
    return output[start:end if end >= 0 else None]


def test_monitor_starts_paused(monitor_session: str) -> None:
    assert section(monitor_session, "info status").strip() == "VM status: paused (prelaunch)"


def test_info_mtree_shows_the_q35_memory_map(monitor_session: str) -> None:
    tree = section(monitor_session, "info mtree")
    expected = [
        # RAM: 2 GiB below 4G, the other 2 GiB from 4G (q35's rule at 4 GiB).
        r"0000000000000000-000000007fffffff \(prio 0, ram\): alias ram-below-4g @pc\.ram 0000000000000000-000000007fffffff",
        r"0000000100000000-000000017fffffff \(prio 0, ram\): alias ram-above-4g @pc\.ram 0000000080000000-00000000ffffffff",
        r"0000000000000000-ffffffffffffffff \(prio -1, i/o\): pci",
        r"00000000000c0000-00000000000dffff \(prio 1, rom\): pc\.rom",
        r"00000000000e0000-00000000000fffff \(prio 1, rom\): alias isa-bios @pc\.bios",
        r"00000000fffc0000-00000000ffffffff \(prio 0, rom\): pc\.bios",
        r"00000000b0000000-00000000bfffffff \(prio 0, i/o\): pcie-mmcfg-mmio",
        r"00000000fec00000-00000000fec00fff \(prio 0, i/o\): ioapic",
        r"00000000fed00000-00000000fed003ff \(prio 0, i/o\): hpet",
        r"00000000fee00000-00000000feefffff \(prio 4096, i/o\): apic-msi",
        r"^address-space: I/O$",
        r"0cf8-0cfb \(prio 0, i/o\): pci-conf-idx",
        r"^memory-region: pc\.ram$",
    ]
    for pattern in expected:
        assert re.search(pattern, tree, re.M), pattern


def test_info_mtree_f_shows_the_flat_view(monitor_session: str) -> None:
    flat = section(monitor_session, "info mtree -f")
    assert re.search(r'^FlatView #\d+\n AS "memory", root: system', flat, re.M)
    # The PAM segments decode to PCI at reset, so pc.rom and the isa-bios
    # alias show through below 1 MiB, between the two pieces of low RAM;
    # with SMRAM closed the VGA window is PCI's, not RAM (as in QEMU).
    for pattern in [
        r"0000000000000000-000000000009ffff \(prio 0, ram\): pc\.ram$",
        r"00000000000a0000-00000000000bffff \(prio 1, i/o\): vga-lowmem$",
        r"00000000000c0000-00000000000dffff \(prio 1, rom\): pc\.rom$",
        r"00000000000e0000-00000000000fffff \(prio 0, rom\): pc\.bios @0000000000020000$",
        r"0000000000100000-000000007fffffff \(prio 0, ram\): pc\.ram @0000000000100000$",
        r"0000000100000000-000000017fffffff \(prio 0, ram\): pc\.ram @0000000080000000$",
    ]:
        assert re.search(pattern, flat, re.M), pattern


def test_info_qom_tree_shows_the_machine(monitor_session: str) -> None:
    tree = section(monitor_session, "info qom-tree")
    for line in ["/machine (pc-q35-7.2-machine)", "/peripheral (container)", "/unattached (container)",
                 "/q35 (q35-pcihost)", "/pcie.0 (PCIE)", "(qemu64-x86_64-cpu)", "(ICH9-LPC)",
                 "/isa.0 (ISA)", "(isa-serial)", "/pc.ram (memory-backend-ram)"]:
        assert line in tree, line


def test_info_qtree_shows_buses_and_devices(monitor_session: str) -> None:
    tree = section(monitor_session, "info qtree")
    assert "bus: main-system-bus" in tree
    assert 'dev: q35-pcihost, id ""' in tree
    assert "bus: pcie.0" in tree and "bus: isa.0" in tree
    assert 'dev: isa-serial, id ""' in tree


def test_monitor_on_a_unix_socket_with_cont_and_quit() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mon.sock")
        vm = GuestProcess(["-machine", "q35", "-m", "256", "-S", "-display", "none", "-nodefaults",
                           "-monitor", f"unix:{path},server=on,wait=off"])
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(path):
                assert time.monotonic() < deadline, vm.tail()
                time.sleep(0.05)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.settimeout(30)
                received = b""

                def until(marker: bytes) -> bytes:
                    nonlocal received
                    while marker not in received:
                        chunk = s.recv(4096)
                        assert chunk, received
                        received += chunk
                    out, _, received = received.partition(marker)
                    return out

                until(b"(qemu) ")
                s.sendall(b"info status\n")
                assert b"VM status: paused (prelaunch)" in until(b"(qemu) ")
                s.sendall(b"stop\n")
                until(b"(qemu) ")
                s.sendall(b"quit\n")
            assert vm.wait(30) == 0
        finally:
            vm.kill()


@pytest.mark.parametrize("args, message", [
    (["-m", "foo"], r"^pemu: -m foo: Parameter 'size' expects"),
    (["-m", "0"], r"^pemu: -m 0: memory size must be greater than zero"),
    (["-machine", "nosuch"], r"^pemu: -machine nosuch: unsupported machine type 'nosuch'"),
    (["-device", "nosuch"], r"^pemu: -device nosuch: 'nosuch' is not a valid device model name"),
    (["-device", "isa-serial,nosuchprop=1"],
     r"^pemu: -device isa-serial,nosuchprop=1: Property 'isa-serial\.nosuchprop' not found"),
    (["-nosuchoption"], r"^pemu: -nosuchoption: invalid option"),
    (["-display", "none", "-m"], r"^pemu: -m: requires an argument"),
    (["-netdev", "nosuch,id=net0"], r"^pemu: -netdev nosuch,id=net0: Parameter 'type' expects a netdev backend type"),
    (["-m", "1G,maxmem=512M"], r"^pemu: -m 1G,maxmem=512M: invalid value of maxmem"),
    (["-cpu", "nosuch"], r"^pemu: -cpu nosuch: unable to find CPU model 'nosuch'"),
    (["-smp", "256"], r"^pemu: .*APIC ID 254 at most without x2APIC$"),
    # -accel properties are QEMU's, checked, never ignored.
    (["-accel", "tcg,foo=bar"], r"^pemu: -accel tcg,foo=bar: Property 'tcg-accel\.foo' not found$"),
    (["-accel", "tcg,kernel-irqchip=off"],
     r"^pemu: -accel tcg,kernel-irqchip=off: Property 'tcg-accel\.kernel-irqchip' not found$"),
    (["-accel", "tcg,thread=multi"], r"^pemu: -accel tcg,thread=multi: thread=multi is not supported by pemu"),
    (["-accel", "tcg,thread=many"], r"^pemu: -accel tcg,thread=many: Invalid 'thread' setting many$"),
    (["-accel", "tcg,tb-size=lots"], r"^pemu: -accel tcg,tb-size=lots: Parameter 'tb-size' expects uint64$"),
    (["-accel", "tcg,split-wx=on"],
     r"^pemu: -accel tcg,split-wx=on: Property 'tcg-accel\.split-wx' is not supported by pemu$"),
    (["-accel", "tcg", "-machine", "q35,accel=kvm"],
     r"^pemu: The -accel and \"-machine accel=\" options are incompatible$"),
    # A port beyond 65535 is refused, not taken modulo 65536.
    (["-monitor", "tcp::99999,server=on,wait=off"],
     r"^pemu: -monitor tcp::99999,server=on,wait=off: port 99999 out of range$"),
    (["-chardev", "socket,id=c0,host=127.0.0.1,port=65536,server=on,wait=off"],
     r"^pemu: -chardev socket,id=c0,host=127\.0\.0\.1,port=65536,server=on,wait=off: port 65536 out of range$"),
    # The CPU type is named, as in QEMU.
    (["-cpu", "qemu64,+nosuchflag"],
     r"^pemu: -cpu qemu64,\+nosuchflag: Property 'qemu64-x86_64-cpu\.nosuchflag' not found$"),
    (["-cpu", "qemu64,nosuchflag=on"], r"^pemu: -cpu qemu64,nosuchflag=on: can't apply global "
     r"qemu64-x86_64-cpu\.nosuchflag=on: Property 'qemu64-x86_64-cpu\.nosuchflag' not found$"),
    (["-cpu", "qemu64,sse4.2=maybe"], r"^pemu: -cpu qemu64,sse4\.2=maybe: can't apply global "
     r"qemu64-x86_64-cpu\.sse4\.2=maybe: Parameter 'sse4\.2' expects 'on' or 'off'$"),
])
def test_bad_input_gives_one_line_and_status_1(args: list[str], message: str) -> None:
    r = pemu(*args, "-S", "-display", "none", "-nodefaults") if args[-1] != "-m" else pemu(*args)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("serial", ["bogus:", "tcp::99999,server=on,wait=off"])
def test_bad_serial_fails_before_the_monitor_greets(serial: str) -> None:
    """The monitor's banner and prompt do not come before the -serial error."""
    r = pemu("-S", "-display", "none", "-nodefaults", "-monitor", "stdio", "-serial", serial)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"pemu: -serial {serial}: ")


def test_memory_backend_object_backs_the_ram() -> None:
    r = pemu("-machine", "q35,memory-backend=mem0", "-m", "256", "-object",
             "memory-backend-ram,id=mem0,size=256M", "-S", "-nographic", "-nodefaults",
             "-monitor", "stdio", stdin="info mtree\nquit\n")
    assert r.returncode == 0, r.stderr
    assert "alias ram-below-4g @mem0 0000000000000000-000000000fffffff" in r.stdout


def test_maxmem_makes_room_for_hotplugged_memory() -> None:
    r = pemu("-m", "1G,slots=2,maxmem=4G", "-S", "-nographic", "-nodefaults", "-monitor", "stdio",
             stdin="info mtree\nquit\n")
    assert r.returncode == 0, r.stderr
    # Hot-plug memory sits above 4G, after RAM, 1 GiB aligned, sized maxmem - memory.
    assert "0000000100000000-00000001bfffffff (prio 0, i/o): device-memory" in r.stdout
    assert "ram-above-4g" not in r.stdout


def test_global_and_device_properties_reach_the_device() -> None:
    r = pemu("-M", "q35", "-m", "256", "-S", "-nographic", "-nodefaults", "-monitor", "stdio",
             "-global", "isa-serial.irq=3", "-device", "isa-serial,id=com2,iobase=0x2f8",
             stdin="info qtree\nquit\n")
    assert r.returncode == 0, r.stderr
    tree = r.stdout.replace("\r\n", "\n")
    block = tree[tree.index('dev: isa-serial, id "com2"'):]
    assert re.search(r"^\s+iobase = 760 \(0x2f8\)$", block, re.M)
    assert re.search(r"^\s+irq = 3 \(0x3\)$", block, re.M)


def test_machine_type_and_accel_as_machine_properties() -> None:
    r = pemu("-machine", "type=q35,accel=tcg", "-m", "128", "-S", "-nographic", "-nodefaults",
             "-monitor", "stdio", stdin="info status\nquit\n")
    assert r.returncode == 0, r.stderr
    assert "VM status: paused (prelaunch)" in r.stdout


def test_bad_global_property_is_one_line() -> None:
    r = pemu("-S", "-display", "none", "-nodefaults", "-global", "isa-serial.nosuch=1", "-device", "isa-serial")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Property 'isa-serial.nosuch' not found" in r.stderr


SEABIOS = "/usr/share/seabios/bios-256k.bin"


@pytest.mark.skipif(not os.path.isfile(SEABIOS), reason="needs Debian's seabios package")
def test_nographic_puts_the_firmware_banner_on_the_serial_console() -> None:
    # -nographic implies graphics=off, as in QEMU, so SeaBIOS writes to COM1.
    vm = GuestProcess(["-machine", "q35", "-m", "256", "-nographic", "-bios", SEABIOS])
    try:
        vm.expect(r"SeaBIOS \(version", 120)
        vm.expect(r"No bootable device", 120)
    finally:
        vm.kill()
