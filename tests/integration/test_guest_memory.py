"""-m larger than the host's RAM starts, as in QEMU; an -m the host cannot map at all is one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PEMU = [sys.executable, "-m", "pemu"]
GiB = 1 << 30


def pemu(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(PEMU + list(args), input=stdin, capture_output=True, text=True, timeout=120)


def overcommit_mode() -> int:
    with open("/proc/sys/vm/overcommit_memory") as f:
        return int(f.read())


@pytest.mark.skipif(overcommit_mode() == 2, reason="vm.overcommit_memory=2 refuses any mapping above the commit limit")
def test_guest_larger_than_host_ram_starts() -> None:
    host_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // GiB
    size = f"{max(64, 2 * host_gib)}G"
    r = pemu("-machine", "q35", "-m", size, "-S", "-display", "none", "-nodefaults", "-monitor", "stdio",
             stdin="info status\nquit\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "VM status: paused (prelaunch)" in r.stdout


def test_guest_memory_that_cannot_be_mapped_is_one_line_and_status_1() -> None:
    r = pemu("-machine", "q35", "-m", "1000000G", "-S", "-display", "none", "-nodefaults")
    assert r.returncode == 1
    assert r.stderr == "pemu: cannot set up guest memory 'pc.ram': Cannot allocate memory\n"
