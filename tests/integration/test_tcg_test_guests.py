"""The single-CPU test guests under tcg (no LAPIC there: the timer is the PIT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests.build import PASSED_STATUS, build_test_guest, run_test_guest, tools_available

pytestmark = pytest.mark.skipif(not tools_available(), reason="gcc/ld are needed for the test guests")


@pytest.fixture(scope="module")
def test_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_guest(tmp_path_factory.mktemp("guest"))


@pytest.mark.parametrize("append, expected", [
    ("test=serial", "hello from the test guest\n"),
    ("test=cmdline alpha=1 beta", "test=cmdline alpha=1 beta\n"),
    ("test=mmap", "mmap ok\n"),
    ("test=pit", "pit: 10 ticks\n"),
    ("test=io", "rtc register d: 80\n"),
])
def test_guest_passes_under_tcg(test_guest: Path, append: str, expected: str) -> None:
    run = run_test_guest(test_guest, append, accel="tcg")
    assert expected in run.output, run.output + run.stderr
    assert "TEST PASSED" in run.output
    assert run.status == PASSED_STATUS, run.stderr


@pytest.mark.parametrize("code", [0, 3, 0x7F])
def test_debug_exit_status_under_tcg(test_guest: Path, code: int) -> None:
    run = run_test_guest(test_guest, f"test=exit code={code}", accel="tcg")
    assert run.status == (code << 1) | 1
