"""The single-CPU test guests under tcg (no LAPIC there: the timer is the PIT)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.guests.build import PASSED_STATUS, build_test_guest, build_ttext_guest, run_test_guest, tools_available

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


def test_kernel_linked_with_ttext_boots_under_tcg(tmp_path: Path) -> None:
    """`ld -Ttext=0x100000` puts the ELF headers in a LOAD segment of their own
    at 0xff000, in the BIOS area: loaded there, as QEMU does, not refused."""
    kernel = build_ttext_guest(tmp_path)
    first_load = first_load_segment_paddr(kernel)
    assert first_load == 0xFF000, hex(first_load)
    run = run_test_guest(kernel, "test=serial", accel="tcg")
    assert "hello from the test guest" in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS, run.stderr


def first_load_segment_paddr(kernel: Path) -> int:
    """p_paddr of the first PT_LOAD of an ELF32 file, read with struct alone."""
    image = kernel.read_bytes()
    phoff, = struct.unpack_from("<I", image, 28)
    phentsize, phnum = struct.unpack_from("<HH", image, 42)
    for i in range(phnum):
        p_type, _, _, p_paddr = struct.unpack_from("<IIII", image, phoff + i * phentsize)
        if p_type == 1:
            return p_paddr
    raise AssertionError("no PT_LOAD segment")
