"""A bug in a device model, injected into the real pemu process (see
fault_injection.py), under tcg and under kvm: the VM stops in the
internal-error state, stderr gets one line naming the device and the access,
the traceback goes to the -D log, and the monitor still answers `info status`
and `quit` (exit status 0)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from tests.guests.build import build_test_guest, tools_available
from tests.integration.harness import GuestProcess

pytestmark = pytest.mark.skipif(not tools_available(), reason="gcc/ld are needed for the test guests")

FAULT_TIMEOUT = 60


@pytest.fixture(scope="module")
def test_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_guest(tmp_path_factory.mktemp("guest"))


def monitor_session(path: Path, commands: list[str]) -> list[str]:
    """Connect to the monitor's socket, run ``commands``; what each printed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.settimeout(30)
        received = b""

        def until_prompt() -> str:
            nonlocal received
            while b"(qemu) " not in received:
                chunk = s.recv(4096)
                if not chunk:
                    break
                received += chunk
            out, _, received = received.partition(b"(qemu) ")
            return out.decode(errors="replace").replace("\r\n", "\n")

        until_prompt()
        answers = []
        for command in commands:
            s.sendall(command.encode() + b"\n")
            answers.append(until_prompt().removeprefix(command + "\n"))
        return answers


def wait_for_stderr_lines(vm: GuestProcess, n: int) -> None:
    deadline = time.monotonic() + FAULT_TIMEOUT
    while vm.stderr.count("\n") < n:
        assert vm.returncode is None and time.monotonic() < deadline, vm.tail()
        time.sleep(0.05)


# (injected handler, the guest's command line, what the line on stderr names)
CASES = [
    pytest.param("mmio-read", "test=io", "device 'hpet', cpu-memory-0 read at 0xfed00000 size 4",
                 id="mmio-read"),
    pytest.param("pio-write", "test=io", "device 'rtc', I/O write at 0x70 size 1 value 0xd", id="pio-write"),
    pytest.param("timer", "test=idle rtc=periodic", "timer callback MC146818RTC._periodic_tick", id="timer"),
    pytest.param("chardev-read", "test=idle", "chardev 'serial0' read handler SerialUART.receive, input b'x'",
                 id="chardev-read"),
]
ACCELS = [
    pytest.param(["-accel", "tcg"], id="tcg"),
    # Two vCPUs: the one that did not fault must stop too.
    pytest.param(["-accel", "kvm", "-smp", "2"], id="kvm", marks=pytest.mark.kvm),
]


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("handler, append, where", CASES)
def test_device_fault_stops_the_vm_and_the_monitor_stays(test_guest: Path, tmp_path: Path, accel: list[str],
                                                         handler: str, append: str, where: str) -> None:
    monitor = tmp_path / "mon.sock"
    log = tmp_path / "pemu.log"
    args = [*accel, "-m", "64", "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-device", "isa-debug-exit", "-monitor", f"unix:{monitor},server=on,wait=off", "-D", str(log),
            "-kernel", str(test_guest), "-append", append]
    with GuestProcess(argv=[sys.executable, "-m", "tests.integration.fault_injection", handler, "--", *args]) as vm:
        if handler == "chardev-read":
            vm.expect("idle", timeout=FAULT_TIMEOUT)
            vm.send("x")
        wait_for_stderr_lines(vm, 1)
        status, _ = monitor_session(monitor, ["info status", "quit"])
        assert vm.wait(30) == 0, vm.tail()
        assert vm.stderr == (f"pemu: fault in {where}: RuntimeError: injected fault; "
                             f"VM stopped (internal-error)\n")
    assert status == "VM status: paused (internal-error)\n"
    text = log.read_text()
    assert f"fault in {where}: RuntimeError: injected fault\nTraceback (most recent call last):\n" in text
    assert text.count("Traceback") == 1


@pytest.mark.parametrize("accel", ACCELS)
def test_after_a_reset_the_guest_runs_again(test_guest: Path, tmp_path: Path, accel: list[str]) -> None:
    """system_reset leaves internal-error for prelaunch (as QEMU), `cont` runs the guest from the
    start, and its next fault is reported again: once per run."""
    monitor = tmp_path / "mon.sock"
    args = [*accel, "-m", "64", "-nodefaults", "-display", "none", "-serial", "stdio",
            "-monitor", f"unix:{monitor},server=on,wait=off", "-kernel", str(test_guest), "-append", "test=io"]
    with GuestProcess(argv=[sys.executable, "-m", "tests.integration.fault_injection", "pio-write", "--",
                            *args]) as vm:
        wait_for_stderr_lines(vm, 1)
        assert monitor_session(monitor, ["cont", "system_reset", "info status"]) == [
            "Error: Resetting the Virtual Machine is required\n", "", "VM status: paused (prelaunch)\n"]
        monitor_session(monitor, ["cont"])
        wait_for_stderr_lines(vm, 2)
        assert monitor_session(monitor, ["info status", "quit"])[0] == "VM status: paused (internal-error)\n"
        assert vm.wait(30) == 0, vm.tail()
        first, second = vm.stderr.splitlines()
        assert first == second and "fault in device 'rtc', I/O write at 0x70" in first


def test_without_a_log_file_stderr_has_only_the_line(test_guest: Path, tmp_path: Path) -> None:
    monitor = tmp_path / "mon.sock"
    args = ["-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-monitor", f"unix:{monitor},server=on,wait=off", "-kernel", str(test_guest), "-append", "test=io"]
    with GuestProcess(argv=[sys.executable, "-m", "tests.integration.fault_injection", "pio-write", "--",
                            *args]) as vm:
        wait_for_stderr_lines(vm, 1)
        monitor_session(monitor, ["quit"])
        assert vm.wait(30) == 0, vm.tail()
        assert vm.stderr.count("\n") == 1 and "Traceback" not in vm.stderr
