"""The test guests under -accel kvm: serial, command line, memory map,
timers from the in-kernel PIT and LAPIC (and from pemu's PIT with
kernel-irqchip=off), two CPUs, port I/O and MMIO, isa-debug-exit codes;
and -accel kvm without a usable /dev/kvm."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.guests.build import PASSED_STATUS, build_test_guest, build_ttext_guest, run_test_guest, tools_available

pytestmark = pytest.mark.skipif(not tools_available(), reason="gcc/ld are needed for the test guests")


@pytest.fixture(scope="module")
def test_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_guest(tmp_path_factory.mktemp("guest"))


@pytest.mark.kvm
@pytest.mark.parametrize("append, expected", [
    ("test=serial", "hello from the test guest\n"),
    ("test=cmdline alpha=1 beta", "test=cmdline alpha=1 beta\n"),
    ("test=mmap", "mmap ok\n"),
    ("test=pit", "pit: 10 ticks\n"),
    ("test=lapic", "lapic: 10 ticks\n"),
    ("test=io", "rtc register d: 80\n"),
])
def test_guest_passes_under_kvm(test_guest: Path, append: str, expected: str) -> None:
    run = run_test_guest(test_guest, append)
    assert expected in run.output, run.output + run.stderr
    assert "TEST PASSED" in run.output
    assert run.status == PASSED_STATUS, run.stderr


@pytest.mark.kvm
def test_memory_map_matches_the_machine(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=mmap", memory="96")
    # 96 MiB: RAM from 1 MiB up to the ACPI tables at the top of low RAM.
    assert "mmap: 0000000000000000-000000000009fbff type 1" in run.output
    upper = int(re.search(r"mem_upper (\d+) KiB", run.output).group(1))
    assert 90 * 1024 < upper < 95 * 1024
    assert run.status == PASSED_STATUS


@pytest.mark.kvm
def test_pit_timer_with_kernel_irqchip_off(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=pit", extra=["-machine", "kernel-irqchip=off"])
    assert "pit: 10 ticks" in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS


@pytest.mark.kvm
def test_kernel_linked_with_ttext_boots_under_kvm(tmp_path: Path) -> None:
    """Its ELF headers' segment at 0xff000 is written into the BIOS area's ROM."""
    run = run_test_guest(build_ttext_guest(tmp_path), "test=serial")
    assert "hello from the test guest" in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS, run.stderr


@pytest.mark.kvm
def test_accel_kernel_irqchip_off_takes_effect(test_guest: Path) -> None:
    """-accel kvm,kernel-irqchip=off is the same setting as -machine kernel-irqchip=off:
    pemu's own PIT drives the timer, and two vCPUs are refused without the in-kernel irqchip."""
    run = run_test_guest(test_guest, "test=pit", accel="kvm,kernel-irqchip=off")
    assert "pit: 10 ticks" in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS
    run = run_test_guest(test_guest, "test=serial", accel="kvm,kernel-irqchip=off", extra=["-smp", "2"])
    assert run.status == 1
    assert run.stderr.count("\n") == 1 and "needs kernel-irqchip=on" in run.stderr, run.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("accel, message", [
    ("kvm,kernel-irqchip=maybe", "pemu: -accel kvm,kernel-irqchip=maybe: Parameter 'kernel-irqchip' does not "
                                 "accept value 'maybe'"),
    ("kvm,kernel-irqchip=split", "pemu: -accel kvm,kernel-irqchip=split: kernel-irqchip=split is not supported"),
    ("kvm,thread=single", "pemu: -accel kvm,thread=single: Property 'kvm-accel.thread' not found"),
    ("kvm,dirty-ring-size=4096", "pemu: -accel kvm,dirty-ring-size=4096: Property 'kvm-accel.dirty-ring-size' "
                                 "is not supported by pemu"),
])
def test_bad_kvm_accel_properties(test_guest: Path, accel: str, message: str) -> None:
    run = run_test_guest(test_guest, "test=serial", accel=accel)
    assert run.status == 1
    assert run.stderr.startswith(message) and run.stderr.count("\n") == 1, run.stderr


@pytest.mark.kvm
def test_two_cpus_report_in(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=smp cpus=2", extra=["-smp", "2"], timeout=90)
    assert "ap: cpu with apic id 1 is up" in run.output, run.output + run.stderr
    assert "smp: 2 cpus up" in run.output
    assert run.status == PASSED_STATUS


@pytest.mark.kvm
@pytest.mark.parametrize("code", [1, 5, 0x7F])
def test_debug_exit_status(test_guest: Path, code: int) -> None:
    run = run_test_guest(test_guest, f"test=exit code={code}")
    assert run.status == (code << 1) | 1, run.stderr


@pytest.mark.kvm
def test_smp_needs_the_in_kernel_irqchip(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=serial", extra=["-smp", "2", "-machine", "kernel-irqchip=off"])
    assert run.status == 1
    assert run.stderr.count("\n") == 1 and "kernel-irqchip=on" in run.stderr


def test_missing_kvm_device_is_one_line_error(test_guest: Path, tmp_path: Path) -> None:
    run = run_test_guest(test_guest, "test=serial", env={"PEMU_KVM_DEVICE": str(tmp_path / "no-kvm")})
    assert run.status == 1
    assert run.stderr.count("\n") == 1, run.stderr
    assert "Could not access KVM kernel module: No such file or directory" in run.stderr
    assert run.output == ""


def test_kvm_tcg_falls_back_to_tcg(test_guest: Path, tmp_path: Path) -> None:
    run = run_test_guest(test_guest, "test=serial", accel="kvm:tcg",
                         env={"PEMU_KVM_DEVICE": str(tmp_path / "no-kvm")})
    assert "hello from the test guest" in run.output, run.stderr
    assert run.status == PASSED_STATUS


# -- Debian's uncompressed vmlinux through its PVH entry --------------------------------------------

from tests.fixtures.build_guest import READY_MARKER, Guest  # noqa: E402
from tests.fixtures.vmlinux import ensure_vmlinux  # noqa: E402
from tests.integration.harness import GuestProcess  # noqa: E402


@pytest.fixture(scope="module")
def vmlinux(guest_images: Guest) -> Path:
    return ensure_vmlinux(Path(guest_images.kernel))


@pytest.mark.kvm
@pytest.mark.guest
def test_vmlinux_pvh_prints_banner_and_e820_under_kvm(vmlinux: Path) -> None:
    args = ["-accel", "kvm", "-machine", "q35", "-m", "256", "-nodefaults", "-nographic", "-serial", "stdio",
            "-display", "none", "-kernel", str(vmlinux), "-append", "earlyprintk=serial console=ttyS0"]
    with GuestProcess(args) as vm:
        vm.expect(r"Linux version 6\.\S+", timeout=150)
        vm.expect(r"BIOS-e820: \[mem 0x0000000000100000-0x000000000ffdffff\] usable", timeout=60)
        vm.expect(r"BIOS-e820: \[mem 0x00000000b0000000-0x00000000bfffffff\] reserved", timeout=60)


@pytest.mark.guest
def test_vmlinux_pvh_boots_to_the_shell_under_tcg(vmlinux: Path, guest_images: Guest) -> None:
    args = ["-accel", "tcg", "-machine", "q35", "-m", "512", "-nographic", "-kernel", str(vmlinux),
            "-initrd", str(guest_images.initrd), "-append", "console=ttyS0"]
    with GuestProcess(args) as vm:
        vm.expect(READY_MARKER, timeout=300)


@pytest.mark.kvm
def test_bad_kernel_under_kvm_is_one_line(tmp_path: Path) -> None:
    """The vCPUs made before the kernel is refused are taken down cleanly
    (their kvm_run views were once left exported: a BufferError traceback)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a kernel")
    r = subprocess.run([sys.executable, "-m", "pemu", "-accel", "kvm", "-nodefaults", "-display", "none",
                        "-kernel", str(bad)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1
    assert r.stderr == "pemu: kernel image is too short to be a Linux bzImage (12 bytes)\n"
