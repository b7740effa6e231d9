"""-overcommit mem-lock=on|off,cpu-pm=on|off and -machine vmport=on|off|auto:
honoured where pemu can, refused by name where it cannot."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guests.build import PASSED_STATUS, build_test_guest, run_test_guest, tools_available

PEMU = [sys.executable, "-m", "pemu"]


def pemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(PEMU + ["-nodefaults", "-display", "none", "-S", "-monitor", "none", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def starts(*args: str) -> None:
    """The machine is built and its monitor answers; quit."""
    proc = subprocess.Popen(PEMU + ["-nodefaults", "-display", "none", "-S", "-monitor", "stdio", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate("quit\n", timeout=60)
    assert proc.returncode == 0 and err == "", err


@pytest.fixture(scope="module")
def test_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not tools_available():
        pytest.skip("gcc/ld are needed for the test guests")
    return build_test_guest(tmp_path_factory.mktemp("guest"))


def vm_locked_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck line")


@pytest.mark.parametrize("setting, locked", [("mem-lock=on", True), ("mem-lock=off", False)])
def test_mem_lock_locks_guest_ram(test_guest: Path, setting: str, locked: bool) -> None:
    proc = subprocess.Popen(PEMU + ["-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none", "-serial",
                                    "stdio", "-overcommit", setting, "-kernel", str(test_guest),
                                    "-append", "test=idle"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = b""
        while b"idle" not in seen and time.monotonic() < deadline:
            seen += proc.stdout.read1(256)
        assert b"idle" in seen, proc.stderr.read() if proc.stderr else ""
        kib = vm_locked_kib(proc.pid)
        assert (kib >= 64 * 1024) if locked else kib == 0, kib
    finally:
        proc.kill()
        proc.wait()


def test_cpu_pm_is_refused_under_tcg() -> None:
    r = pemu("-accel", "tcg", "-overcommit", "cpu-pm=on")
    assert r.returncode == 1
    assert r.stderr == "pemu: -overcommit cpu-pm=on: cpu-pm=on is not supported with -accel tcg\n"
    starts("-accel", "tcg", "-overcommit", "cpu-pm=off,mem-lock=off", "-overcommit", "mem-lock=off")


@pytest.mark.kvm
def test_cpu_pm_under_kvm_leaves_hlt_to_the_guest(test_guest: Path) -> None:
    """The guest still takes its timer interrupts from HLT with HLT kept in the guest."""
    run = run_test_guest(test_guest, "test=pit", extra=["-overcommit", "cpu-pm=on"])
    assert "pit: 10 ticks" in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS and run.stderr == ""


@pytest.mark.kvm
def test_kvm_disable_exits_capability() -> None:
    from pemu.accel.kvm import kvm_sys as k

    system = k.KVMSystem()
    offered = system.check_extension(k.Cap.X86_DISABLE_EXITS)
    if not offered & k.KVM_X86_DISABLE_EXITS_HLT:
        pytest.skip("this KVM cannot leave HLT to the guest")
    vm = system.create_vm()
    try:
        vm.enable_cap(k.Cap.X86_DISABLE_EXITS, k.KVM_X86_DISABLE_EXITS_HLT)
        with pytest.raises(k.KVMError):
            vm.enable_cap(k.Cap.X86_DISABLE_EXITS, 1 << 31)   # no such exit
    finally:
        vm.close()


@pytest.mark.parametrize("args, message", [
    (["-overcommit", "mem-lock=maybe"], "pemu: -overcommit mem-lock=maybe: Parameter 'mem-lock' expects 'on' or "
                                        "'off'\n"),
    (["-overcommit", "foo=on"], "pemu: -overcommit foo=on: Invalid parameter 'foo'\n"),
    (["-machine", "vmport=on"], "pemu: -machine vmport=on: the VMware I/O port (vmport) is not supported by pemu\n"),
    (["-machine", "vmport=bad"], "pemu: -machine vmport=bad: Parameter 'vmport' does not accept value 'bad'\n"),
])
def test_refused_by_name(args: list[str], message: str) -> None:
    r = pemu(*args)
    assert r.returncode == 1 and r.stderr == message


@pytest.mark.parametrize("value", ["off", "auto"])
def test_vmport_off_and_auto_are_accepted(value: str) -> None:
    starts("-machine", f"vmport={value}")
