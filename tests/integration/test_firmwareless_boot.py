"""Direct (firmware-less) multiboot boots leave what firmware would: the ACPI
RSDP in the BIOS area where guests scan for it, and the multiboot
information out of the kernel's way (a kernel with a segment at 0x9000, where
pemu once put it and refused such kernels, boots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guests.build import PASSED_STATUS, build_lowseg_guest, build_test_guest, run_test_guest, tools_available

ACCELS = ["tcg", pytest.param("kvm", marks=pytest.mark.kvm)]
pytestmark = pytest.mark.skipif(not tools_available(), reason="gcc/ld are needed for the test guests")


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("guest")
    return build_test_guest(out / "plain"), build_lowseg_guest(out / "lowseg")


@pytest.mark.parametrize("accel", ACCELS)
def test_guest_scanning_the_bios_area_finds_the_rsdp(guests: tuple[Path, Path], accel: str) -> None:
    run = run_test_guest(guests[0], "test=rsdp", accel=accel)
    assert "rsdp: found at 000f0000 revision 2" in run.output, run.output + run.stderr
    assert "rsdp ok" in run.output and run.status == PASSED_STATUS


def test_no_rsdp_without_acpi(guests: tuple[Path, Path]) -> None:
    run = run_test_guest(guests[0], "test=rsdp", accel="tcg", extra=["-machine", "acpi=off"])
    assert "rsdp: not found" in run.output and run.status == (0x52 << 1) | 1


@pytest.mark.parametrize("accel", ACCELS)
def test_kernel_with_a_segment_where_the_information_used_to_go_boots(guests: tuple[Path, Path],
                                                                       accel: str) -> None:
    run = run_test_guest(guests[1], "test=lowseg", accel=accel)
    assert "lowseg: marker at 00009000" in run.output, run.output + run.stderr
    assert "lowseg: marker intact" in run.output and run.status == PASSED_STATUS
    run = run_test_guest(guests[1], "test=mmap", accel=accel)   # and its information is whole
    assert "mmap ok" in run.output and run.status == PASSED_STATUS
