"""Containment of a fault (an exception) in device code, in-process: the
memory API's dispatch, the main loop's handlers, the character front-end
dispatch and the vCPU thread all hand it to cpus.contain_fault, which
stops the VM in internal-error, reports once and logs the traceback."""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Any

import pytest

from pemu.accel.accel import VCPUExit
from pemu.chardev import CharBackend, Chardev
from pemu.hw.core.cpu import CPURunState
from pemu.system import cpus, runstate, vl
from pemu.system.memory import AddressSpace, MemoryRegion, MemoryRegionOps, MemTxResult
from pemu.system.runstate import RunState
from pemu.util import log, timer
from pemu.util.main_loop import main_loop
from pemu.util.vm_context import current_vm

FAULT = RuntimeError("injected fault")


def boom(*args: object) -> Any:
    raise FAULT


class Fixture:
    """The VM's run state, with vm_stop's effects on vCPUs and the clock recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.paused = 0
        self.clock_enabled: list[bool] = []
        runstate.runstate_set(RunState.RUNNING)  # in the test's own VM (tests/conftest.py)
        monkeypatch.setattr(cpus, "pause_all_vcpus", self._pause)
        monkeypatch.setattr(cpus, "resume_all_vcpus", lambda: None)
        monkeypatch.setattr(timer, "qemu_clock_enable_virtual", self.clock_enabled.append)
        monkeypatch.setattr(log, "_file", io.StringIO())
        monkeypatch.setattr(log, "_mask", 0)

    def _pause(self) -> None:
        self.paused += 1

    def stderr_lines(self) -> list[str]:
        return self.capsys.readouterr().err.splitlines()


@pytest.fixture
def vm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Fixture:
    return Fixture(monkeypatch, capsys)


def faulty_space(name: str) -> AddressSpace:
    root = MemoryRegion.container(f"{name}-root", 1 << 32)
    root.add_subregion(0x70, MemoryRegion.io("broken", 0x10, MemoryRegionOps(boom, boom)))
    root.add_subregion(0x100, MemoryRegion.ram(f"{name}-ram", 0x1000))
    return AddressSpace(root, name)


@pytest.mark.parametrize("access, result, where", [
    (lambda s: s.dispatch_read(0x70, 1), 0xFF, "device 'broken', I/O read at 0x70 size 1"),
    (lambda s: s.dispatch_read(0x74, 4), 0xFFFFFFFF, "device 'broken', I/O read at 0x74 size 4"),
    (lambda s: s.dispatch_write(0x72, 0x1234, 2), None, "device 'broken', I/O write at 0x72 size 2 value 0x1234"),
    (lambda s: s.dispatch_write(0x70, 0x1FF, 1), None, "device 'broken', I/O write at 0x70 size 1 value 0xff"),
    # A buffer access (DMA) reaches the device by its widest valid access that
    # fits: the first one (2 bytes, up to the region's end) faults, and the
    # whole buffer reads as all ones.
    (lambda s: s.read(0x7E, 4), b"\xff" * 4, "device 'broken', I/O read at 0x7e size 2"),
    (lambda s: s.write(0x7C, b"\x01\x02\x03\x04"), MemTxResult.ERROR,
     "device 'broken', I/O write at 0x7c size 4 value 0x4030201"),
])
def test_fault_in_a_device_handler_stops_the_vm_with_one_line(vm: Fixture, access: Any, result: Any,
                                                              where: str) -> None:
    space = faulty_space("I/O")
    try:
        assert access(space) == result
    finally:
        space.destroy()
    assert runstate.runstate_get() == RunState.INTERNAL_ERROR
    assert vm.paused == 1 and vm.clock_enabled == [False]
    lines = vm.stderr_lines()
    assert len(lines) == 1
    assert lines[0].endswith(f": fault in {where}: RuntimeError: injected fault; VM stopped (internal-error)")


def test_only_the_first_fault_is_reported_until_the_vm_runs_again(vm: Fixture) -> None:
    space = faulty_space("I/O")
    try:
        space.dispatch_write(0x70, 1, 1)
        space.dispatch_read(0x70, 1)
        assert len(vm.stderr_lines()) == 1
        assert runstate.runstate_get() == RunState.INTERNAL_ERROR
        # Once the VM runs again (after a reset), a fault is reported again.
        runstate.runstate_set(RunState.PAUSED)
        cpus.vm_start()
        space.dispatch_read(0x70, 1)
        assert len(vm.stderr_lines()) == 1
    finally:
        space.destroy()


def test_the_traceback_goes_to_the_log_file(vm: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    logfile = io.StringIO()
    monkeypatch.setattr(log, "_file", logfile)  # as -D sets it
    space = faulty_space("I/O")
    try:
        space.dispatch_read(0x70, 1)
        space.dispatch_read(0x71, 1)
    finally:
        space.destroy()
    text = logfile.getvalue()
    assert text.startswith("fault in device 'broken', I/O read at 0x70 size 1: RuntimeError: injected fault\n"
                           "Traceback (most recent call last):\n")
    assert text.count("Traceback") == 1  # the second fault: one line in the log, nothing on stderr
    assert text.endswith("fault in device 'broken', I/O read at 0x71 size 1: RuntimeError: injected fault\n")
    assert len(vm.stderr_lines()) == 1


def test_without_a_log_file_the_traceback_needs_guest_errors(vm: Fixture, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setattr(log, "_file", sys.stderr)
    space = faulty_space("I/O")
    try:
        space.dispatch_read(0x70, 1)
        assert "Traceback" not in capsys.readouterr().err
        runstate.run_requests().fault_reported = False
        monkeypatch.setattr(log, "_mask", log.LOG_GUEST_ERROR)
        monkeypatch.setattr(log, "_file", sys.stderr)
        space.dispatch_read(0x70, 1)
        assert "Traceback (most recent call last)" in capsys.readouterr().err
    finally:
        space.destroy()


def test_a_fault_before_the_vm_ever_ran_leaves_it_in_internal_error(vm: Fixture) -> None:
    runstate.runstate_set(RunState.PRELAUNCH)
    space = faulty_space("I/O")
    try:
        space.dispatch_read(0x70, 1)
    finally:
        space.destroy()
    assert runstate.runstate_get() == RunState.INTERNAL_ERROR
    assert vm.paused == 0


def test_a_long_or_multiline_exception_text_stays_one_short_line(vm: Fixture) -> None:
    cpus.contain_fault("device 'x'", ValueError("a\nb " + "y" * 1000))
    (line,) = vm.stderr_lines()
    assert "ValueError: a b yyy" in line and len(line) < 400
    assert line.endswith("...; VM stopped (internal-error)")


# -- the main loop ------------------------------------------------------------------------------


@pytest.fixture
def loop_faults(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Exception]]:
    faults: list[tuple[str, Exception]] = []
    monkeypatch.setattr(main_loop(), "on_handler_fault", lambda where, exc: faults.append((where, exc)))
    return faults


class Device:
    def tick(self) -> None:
        raise FAULT


def test_a_faulting_bottom_half_is_contained_and_the_loop_goes_on(loop_faults: list[Any]) -> None:
    loop = main_loop()
    ran: list[str] = []
    loop.bh_schedule(Device().tick)
    loop.bh_schedule(lambda: ran.append("next"))
    loop.run_once(0)
    assert loop_faults == [("bottom half Device.tick", FAULT)]
    assert ran == ["next"]


def test_a_faulting_timer_callback_is_contained(loop_faults: list[Any]) -> None:
    t = timer.QEMUTimer(timer.QEMU_CLOCK_REALTIME, Device().tick)
    t.mod_ns(0)
    main_loop().run_once(0)
    assert loop_faults == [("timer callback Device.tick", FAULT)]


def test_a_faulting_fd_handler_is_contained(loop_faults: list[Any]) -> None:
    loop = main_loop()
    r, w = os.pipe()
    try:
        loop.set_fd_handler(r, Device().tick)
        os.write(w, b"x")
        deadline = time.monotonic() + 5
        while not loop_faults and time.monotonic() < deadline:
            loop.run_once(0.05)
        assert loop_faults[0] == ("fd read handler Device.tick", FAULT)
    finally:
        loop.set_fd_handler(r, None)
        os.close(r)
        os.close(w)


def test_the_machine_installs_its_policy_in_the_main_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = main_loop()
    monkeypatch.setattr(loop, "on_handler_fault", None)
    monkeypatch.setattr(vl, "main_loop_should_exit", lambda vm: True)
    vl.qemu_main_loop(current_vm())
    assert loop.on_handler_fault is cpus.contain_fault


# -- character front-ends --------------------------------------------------------------------------


def test_a_faulting_chardev_read_handler_is_contained(vm: Fixture) -> None:
    chr = Chardev("serial9")
    fe = CharBackend(chr)
    uart = type("SerialModel", (), {"can_receive": lambda self: 16, "receive": boom})()
    fe.set_handlers(uart.can_receive, uart.receive)
    assert chr.push_input(b"hello")  # the input is taken (and dropped), not left pending
    assert runstate.runstate_get() == RunState.INTERNAL_ERROR
    (line,) = vm.stderr_lines()
    assert ": fault in chardev 'serial9' read handler SerialModel.boom, input b'hello': RuntimeError" in line


def test_a_faulting_chardev_can_read_handler_takes_nothing(vm: Fixture) -> None:
    chr = Chardev("serial9")
    fe = CharBackend(chr)
    fe.set_handlers(boom, lambda data: None)
    assert not chr.push_input(b"x")
    assert runstate.runstate_get() == RunState.INTERNAL_ERROR


# -- vCPU threads ---------------------------------------------------------------------------------------


class FakeVCPU:
    """An accelerator vCPU whose guest does one access to a broken device (or whose exec raises)."""

    def __init__(self, access: Any) -> None:
        self.access = access
        self.kicks = 0
        self.runs = 0

    def exec(self) -> VCPUExit:
        self.runs += 1
        self.access()
        return VCPUExit.KICKED

    def has_work(self) -> bool:
        return False

    def kick(self) -> None:
        self.kicks += 1

    def handle_interrupt(self, mask: int) -> None:
        self.kick()

    def get_state(self) -> None: ...

    def put_state(self) -> None: ...

    def destroy(self) -> None: ...


class FakeCPU:
    cpu_index = 7

    def __init__(self) -> None:
        self.run = CPURunState()


def run_on_vcpu_thread(access: Any) -> tuple[FakeCPU, FakeVCPU]:
    cpu, vcpu = FakeCPU(), FakeVCPU(access)
    cpus.start_vcpu_thread(cpu, vcpu)
    cpus.cpu_resume(cpu)
    deadline = time.monotonic() + 5
    while runstate.run_requests().vmstop is None or not cpus.run_state(cpu).stopped:
        assert time.monotonic() < deadline, "the vCPU did not stop"
        time.sleep(0.01)
    return cpu, vcpu


@pytest.mark.parametrize("access, where", [
    ("mmio", "device 'broken', cpu-memory read at 0x74 size 4"),
    ("exec", "CPU 7"),  # a bug in the accelerator itself
])
def test_a_fault_on_a_vcpu_thread_stops_that_vcpu_and_the_main_loop_stops_the_vm(
        vm: Fixture, access: str, where: str) -> None:
    space = faulty_space("cpu-memory")
    cpu = None
    try:
        cpu, vcpu = run_on_vcpu_thread((lambda: space.dispatch_read(0x74, 4)) if access == "mmio" else boom)
        assert threading.current_thread() is threading.main_thread()
        assert vcpu.runs == 1 and vcpu.kicks >= 1  # stopped at once, not run again
        # The vCPU thread does not wait for the others: the main loop stops the VM.
        assert runstate.runstate_get() == RunState.RUNNING and vm.paused == 0
        assert runstate.take_vmstop_request() == RunState.INTERNAL_ERROR
        (line,) = vm.stderr_lines()
        assert f": fault in {where}: RuntimeError: injected fault; VM stopped (internal-error)" in line
    finally:
        if cpu is not None:
            cpus.destroy_vcpu(cpu)
        space.destroy()


class FakeVM:
    """The test's VM, with a machine that only the stubbed reset sees."""

    def __init__(self) -> None:
        self.run = runstate.vm_run_state()
        self.machine = object()


def test_the_main_loop_carries_out_a_stop_request(vm: Fixture) -> None:
    runstate.qemu_system_vmstop_request(RunState.INTERNAL_ERROR)
    assert not vl.main_loop_should_exit(FakeVM())  # type: ignore[arg-type]
    assert runstate.runstate_get() == RunState.INTERNAL_ERROR and vm.paused == 1


def test_a_reset_after_an_internal_error_allows_cont(vm: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vl, "qemu_system_reset", lambda machine: None)
    runstate.runstate_set(RunState.INTERNAL_ERROR)
    runstate.qemu_system_reset_request(runstate.ShutdownCause.HOST_QMP_SYSTEM_RESET)
    assert not vl.main_loop_should_exit(FakeVM())  # type: ignore[arg-type]
    assert runstate.runstate_get() == RunState.PRELAUNCH
