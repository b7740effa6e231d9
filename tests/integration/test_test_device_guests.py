"""QEMU's test and debug devices driven by small guests under tcg and kvm:
edu (factorial, INTx status, DMA both ways, MSI through the LAPIC),
pc-testdev (scratch ports, memory window, an interrupt raised from its IRQ
port), pci-testdev (found, BARs sized, its MMIO and port I/O tests), and the
debug console capturing SeaBIOS's log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guests.build import PASSED_STATUS, build_test_guest, run_test_guest, tools_available

SEABIOS = "/usr/share/seabios/bios-256k.bin"
ACCELS = ["tcg", pytest.param("kvm", marks=pytest.mark.kvm)]
PEMU = [sys.executable, "-m", "pemu"]


@pytest.fixture(scope="module")
def test_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not tools_available():
        pytest.skip("gcc/ld are needed for the test guests")
    return build_test_guest(tmp_path_factory.mktemp("guest"))


@pytest.mark.parametrize("accel", ACCELS)
def test_edu_factorial_dma_and_msi(test_guest: Path, accel: str) -> None:
    run = run_test_guest(test_guest, "test=edu", accel=accel, extra=["-device", "edu"], timeout=120)
    for line in ("edu: id 010000ed", "edu: 10! = 3628800", "edu: intx ok", "edu: dma ok", "edu: msis 2"):
        assert line in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS, run.output + run.stderr


@pytest.mark.kvm
def test_edu_msi_with_the_userspace_irqchip(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=edu", extra=["-device", "edu", "-machine", "kernel-irqchip=off"],
                         timeout=120)
    assert "edu: msis 2" in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS


@pytest.mark.parametrize("accel", ACCELS)
def test_pc_testdev_ports_memory_and_irq(test_guest: Path, accel: str) -> None:
    run = run_test_guest(test_guest, "test=pctestdev", accel=accel, extra=["-device", "pc-testdev"], timeout=120)
    assert "pc-testdev: irq 3 interrupts 1" in run.output, run.output + run.stderr
    assert run.status == PASSED_STATUS, run.output + run.stderr


@pytest.mark.parametrize("accel", ACCELS)
def test_pci_testdev_found_sized_and_counted(test_guest: Path, accel: str) -> None:
    run = run_test_guest(test_guest, "test=pcitestdev", accel=accel, extra=["-device", "pci-testdev"], timeout=120)
    assert "pci-testdev: bar0 4096 bytes of memory, bar1 256 ports" in run.output, run.output + run.stderr
    assert "mmio-no-eventfd 1, portio-wildcard-eventfd 1" in run.output
    assert run.status == PASSED_STATUS


def test_without_the_device_the_guest_says_so(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=edu", accel="tcg")
    assert "edu: not found" in run.output and run.status == (0x20 << 1) | 1


@pytest.mark.skipif(not os.path.isfile(SEABIOS), reason="needs Debian's seabios package")
@pytest.mark.parametrize("accel", ACCELS)
def test_debugcon_captures_seabios_log(tmp_path: Path, accel: str) -> None:
    log = tmp_path / "seabios.log"
    proc = subprocess.Popen(PEMU + ["-accel", accel, "-m", "128", "-nodefaults", "-display", "none",
                                    "-monitor", "none", "-bios", SEABIOS, "-debugcon", f"file:{log}",
                                    "-global", "isa-debugcon.iobase=0x402"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        text = ""
        while time.monotonic() < deadline and "Found QEMU fw_cfg" not in text:
            time.sleep(0.2)
            text = log.read_text(errors="replace") if log.exists() else ""
            assert proc.poll() is None, proc.communicate()
        # SeaBIOS's own log, which it writes only to port 0x402 when it finds the debug console.
        assert text.startswith("SeaBIOS (version"), text[:500]
        assert "Found QEMU fw_cfg" in text
    finally:
        proc.kill()
        proc.wait()


def test_debugcon_options_and_errors(tmp_path: Path) -> None:
    def pemu(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(PEMU + ["-nodefaults", "-display", "none", "-S", "-monitor", "none", *args],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    r = pemu("-debugcon", "null", "-debugcon", "null")
    assert r.returncode == 1
    assert r.stderr == ("pemu: -debugcon null: please use -device isa-debugcon,chardev=xxx "
                        "for multiple debugcon ports\n")
    r = pemu("-device", "isa-debugcon")
    assert r.returncode == 1 and r.stderr == ("pemu: -device isa-debugcon: "
                                              "Can't create debugcon device, empty char device\n")
    r = pemu("-device", "isa-debugcon,chardev=nope")
    assert r.returncode == 1 and "can't find value 'nope'" in r.stderr and r.stderr.count("\n") == 1
    r = pemu("-debugcon", "bogus:x")
    assert r.returncode == 1 and r.stderr.startswith("pemu: -debugcon bogus:x: ") and r.stderr.count("\n") == 1


def test_test_device_modules_load_only_when_named() -> None:
    """A machine without them does not import the test devices (start-up time);
    -device NAME and -device help do."""
    script = ("import sys\nfrom pemu.system import vl\n"
              "vl.qemu_init(['-nodefaults', '-display', 'none', '-S'] + sys.argv[1:])\n"
              "print(sorted(m for m in sys.modules if m in ('pemu.hw.misc.edu', 'pemu.hw.misc.pc_testdev', "
              "'pemu.hw.misc.pci_testdev', 'pemu.hw.char.debugcon')))\n")

    def loaded(*args: str) -> str:
        r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert loaded() == "[]"
    assert loaded("-device", "edu") == "['pemu.hw.misc.edu']"
    assert loaded("-debugcon", "null") == "['pemu.hw.char.debugcon']"
