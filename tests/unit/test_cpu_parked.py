"""cpu_parked: a vCPU taken out of its accelerator for a moment (a register
read, a dirty log sync), with stops and resumes asked for meanwhile honoured
when it ends, and overlapping parks (on a real tcg vCPU running a spin loop)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tcg_harness import Machine, wait_for

from pemu.system import cpus
from pemu.util.timer import qemu_clock_enable_virtual

CODE = 0x10000


@pytest.fixture
def running() -> Iterator[Machine]:
    m = Machine()
    m.load(CODE, b"\xeb\xfe")  # 1: jmp 1b
    m.start_flat32(CODE)
    qemu_clock_enable_virtual(True)
    cpus.resume_all_vcpus()
    assert wait_for(lambda: m.cpu.run.accel_vcpu.vcpu is not None)  # its engine runs
    try:
        yield m
    finally:
        cpus.pause_all_vcpus()
        qemu_clock_enable_virtual(False)
        m.close()


def test_a_running_vcpu_is_parked_for_the_body_and_runs_again_after(running: Machine) -> None:
    run = running.cpu.run
    with cpus.cpu_parked(running.cpu):
        assert run.stopped
    assert not run.stopped and not run.stop


def test_a_stop_asked_for_during_a_park_is_not_undone_by_its_end(running: Machine) -> None:
    run = running.cpu.run
    with cpus.cpu_parked(running.cpu):
        cpus.pause_all_vcpus()  # what vm_stop does
    assert run.stopped


def test_a_resume_asked_for_during_a_park_waits_for_its_end(running: Machine) -> None:
    run = running.cpu.run
    cpus.pause_all_vcpus()
    with cpus.cpu_parked(running.cpu):
        cpus.resume_all_vcpus()  # what vm_start does
        assert run.stopped
    assert not run.stopped


def test_overlapping_parks_keep_the_vcpu_parked_until_the_last_ends(running: Machine) -> None:
    run = running.cpu.run
    first, second = cpus.cpu_parked(running.cpu), cpus.cpu_parked(running.cpu)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert run.stopped  # the second one still holds it
    second.__exit__(None, None, None)
    assert not run.stopped
