"""Debian's kernel on the PC's interrupt architecture under tcg: the local
APICs, the I/O APIC and the MADT, with one, two and four CPUs run in turn on
one host thread.

One boot per CPU count serves every check for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.harness import GuestProcess, default_guest_args, smp_append

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 600
BAD_DMESG = re.compile(r"(?i:warning)|BUG|Call Trace|APIC error|falling back")


@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda n: f"smp{n}")
def smp_guest(request: pytest.FixtureRequest, guest_images: Guest) -> Iterator[tuple[GuestProcess, int]]:
    ncpus: int = request.param
    vm = GuestProcess(default_guest_args(guest_images, append=smp_append(),
                                         extra=["-smp", str(ncpus)]))
    try:
        vm.expect(READY_MARKER, BOOT_TIMEOUT)
        yield vm, ncpus
    finally:
        vm.kill()


def local_timer_counts(interrupts: str) -> list[int]:
    """The per-CPU counts of the LOC line of /proc/interrupts."""
    m = re.search(r"^\s*LOC:((?:\s+\d+)+)", interrupts, re.M)
    assert m, interrupts
    return [int(n) for n in m.group(1).split()]


def test_every_cpu_is_online(smp_guest: tuple[GuestProcess, int]) -> None:
    vm, n = smp_guest
    assert vm.run("cat /sys/devices/system/cpu/online").strip() == ("0" if n == 1 else f"0-{n - 1}")
    assert vm.run("nproc").strip() == str(n)


def test_interrupts_come_through_the_io_apic_and_local_timers(smp_guest: tuple[GuestProcess, int]) -> None:
    vm, n = smp_guest
    first = vm.run("cat /proc/interrupts")
    assert re.search(r"^\s*0:.*IO-APIC\s+2-edge\s+timer", first, re.M), first
    assert re.search(r"IO-APIC\s+4-edge\s+ttyS0", first), first
    vm.run("sleep 1")
    second = vm.run("cat /proc/interrupts")
    before, after = local_timer_counts(first), local_timer_counts(second)
    assert len(before) == len(after) == n
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)


def test_madt_is_there(smp_guest: tuple[GuestProcess, int]) -> None:
    vm, _ = smp_guest
    assert vm.run("test -e /sys/firmware/acpi/tables/APIC && echo present").strip() == "present"


def test_busy_loop_pinned_to_each_cpu_completes(smp_guest: tuple[GuestProcess, int]) -> None:
    vm, n = smp_guest
    # Field 39 of /proc/self/stat is the CPU the reading process (cat, pinned
    # like its shell) runs on.  taskset is an applet of the guest's busybox
    # (not linked by name in its /bin).
    loop = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; set -- $(cat /proc/self/stat); echo ran-on-${39}"
    jobs = " ".join(f"busybox taskset {1 << cpu:#x} sh -c '{loop}' &" for cpu in range(n))
    out = vm.run(f"{jobs} wait", timeout=120)
    assert sorted(re.findall(r"ran-on-(\d+)", out)) == sorted(str(cpu) for cpu in range(n)), out


def test_dmesg_is_clean(smp_guest: tuple[GuestProcess, int]) -> None:
    vm, n = smp_guest
    log = vm.run("dmesg", timeout=60)
    assert "Linux version" in log
    assert "APIC: Switch to symmetric I/O mode setup" in log
    if n > 1:
        assert f"smp: Brought up 1 node, {n} CPUs" in log
    assert [line for line in log.splitlines() if BAD_DMESG.search(line)] == []
