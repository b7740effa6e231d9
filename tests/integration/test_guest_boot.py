"""Debian's stock kernel booted directly on the q35 machine under tcg, to a
busybox shell typed at over the serial console.

Full boots are slow, so there are two: one guest (512 MiB) serves the shell,
interrupt, dmesg, reboot and power-off checks; a second (4 GiB, -no-reboot)
checks RAM above 4 GiB and that a reboot then ends pemu.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.harness import GuestProcess, default_guest_args

pytestmark = pytest.mark.guest

BOOT_TIMEOUT = 300
BAD_DMESG = re.compile(r"BUG|Oops|panic|Call Trace|WARNING")


def timer_count(interrupts: str) -> int:
    """The local APIC timer's count (the LOC line) in /proc/interrupts: once
    Linux has calibrated it, it ticks there and IRQ 0 (the PIT) falls silent."""
    m = re.search(r"^\s*LOC:\s+(\d+)", interrupts, re.M)
    assert m, interrupts
    return int(m.group(1))


@pytest.fixture(scope="module")
def guest(guest_images: Guest) -> Iterator[GuestProcess]:
    vm = GuestProcess(default_guest_args(guest_images))
    try:
        vm.expect(READY_MARKER, BOOT_TIMEOUT)
        yield vm
    finally:
        vm.kill()


def test_shell_runs_the_debian_kernel(guest: GuestProcess, guest_images: Guest) -> None:
    assert guest.run("uname -r").strip() == guest_images.release


def test_timer_interrupts_keep_coming(guest: GuestProcess) -> None:
    first = timer_count(guest.run("cat /proc/interrupts"))
    guest.run("sleep 1")
    second = timer_count(guest.run("cat /proc/interrupts"))
    assert second > first


def test_dmesg_is_clean(guest: GuestProcess) -> None:
    log = guest.run("dmesg", timeout=60)
    assert "Linux version" in log
    bad = [line for line in log.splitlines() if BAD_DMESG.search(line)]
    assert bad == []


def test_keyboard_is_found_translated_as_after_seabios(guest: GuestProcess) -> None:
    """Direct boot leaves the i8042 command byte as SeaBIOS would (translation on)."""
    log = guest.run("dmesg", timeout=60)
    keyboard_lines = [line for line in log.splitlines() if "serio" in line or "atkbd" in line]
    assert "AT Translated Set 2 keyboard" in log, keyboard_lines


def test_reboot_boots_again_then_poweroff_ends_pemu(guest: GuestProcess) -> None:
    guest.run("echo before-reboot")
    guest.sendline("reboot -f")
    # The same kernel comes up a second time on the same pemu process.
    guest.expect(r"Linux version", BOOT_TIMEOUT)
    guest.expect(READY_MARKER, BOOT_TIMEOUT)
    assert guest.run("echo after-reboot").strip() == "after-reboot"
    guest.expect(r"pemu# ", 30)
    guest.sendline("poweroff -f")
    assert guest.wait(60) == 0


def test_4g_guest_sees_its_memory_and_no_reboot_ends_pemu(guest_images: Guest) -> None:
    vm = GuestProcess(default_guest_args(guest_images, memory="4096", extra=("-no-reboot",)))
    try:
        vm.expect(READY_MARKER, BOOT_TIMEOUT)
        meminfo = vm.run("cat /proc/meminfo")
        m = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
        assert m, meminfo
        total_kib = int(m.group(1))
        # About 4 GiB: the kernel keeps a little for itself.
        assert 3_800_000 < total_kib <= 4 * 1024 * 1024
        vm.expect(r"pemu# ", 30)
        vm.sendline("reboot -f")
        assert vm.wait(60) == 0
    finally:
        vm.kill()
