"""The dirty log on a booting Linux guest: a pre-copy of its RAM, as a live
migration makes it (copy everything, then what each sync reports while the
guest runs, then the last sync's pages with the vCPUs stopped), ends equal to
the RAM, page for page (tests/integration/dirty_log_precopy.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.build_guest import Guest

SCRIPT = Path(__file__).with_name("dirty_log_precopy.py")


def precopy(guest: Guest, *extra: str) -> list[str]:
    args = ["-machine", "q35", "-m", "512", "-display", "none", "-nodefaults", "-kernel", str(guest.kernel),
            "-initrd", str(guest.initrd), "-append", "console=ttyS0", *extra]
    r = subprocess.run([sys.executable, str(SCRIPT), "10", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()[-1].split()


def check(words: list[str]) -> None:
    assert words[0] == "copied" and words[2] == "missed", words
    rounds = [int(n) for n in words[1].split(",")]
    assert sum(rounds[:-1]) > 0, "the guest wrote nothing while the log was on"
    assert words[3] == "0", f"pages the log missed: {words[4:]}"


def test_tcg_precopy_of_a_booting_smp_guest_misses_nothing(guest_images: Guest) -> None:
    check(precopy(guest_images, "-accel", "tcg", "-smp", "2"))


@pytest.mark.kvm
def test_kvm_precopy_of_a_booting_guest_misses_nothing(guest_images: Guest) -> None:
    check(precopy(guest_images, "-accel", "kvm"))
