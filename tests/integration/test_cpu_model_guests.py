"""Named CPU models and -cpu host seen from a small guest's CPUID, under tcg
and kvm; -cpu errors as one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guests.build import PASSED_STATUS, build_test_guest, run_test_guest, tools_available


@pytest.fixture(scope="module")
def test_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not tools_available():
        pytest.skip("gcc/ld are needed for the test guests")
    return build_test_guest(tmp_path_factory.mktemp("guest"))


def guest_cpuid(output: str) -> dict[str, int | str]:
    values: dict[str, int | str] = {"vendor": re.search(r"vendor (\w+)", output).group(1)}
    for leaf, regs in re.findall(r"cpuid (\w+): (.*)", output):
        for reg, value in re.findall(r"(\w+)=([0-9a-f]+)", regs):
            values[f"{leaf}.{reg}"] = int(value, 16)
    return values


def test_named_model_under_tcg(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=cpuid", accel="tcg", extra=["-cpu", "Nehalem"])
    assert run.status == PASSED_STATUS, run.output + run.stderr
    cpuid = guest_cpuid(run.output)
    # QEMU 7.2's Nehalem less VME, which TCG turns off by default (QEMU's TCG does too).
    assert cpuid["vendor"] == "GenuineIntel" and cpuid["1.eax"] == 0x106A3
    assert (cpuid["1.ecx"], cpuid["1.edx"]) == (0x80982201, 0x078BFBFD)
    assert run.stderr == ""


def test_named_model_under_tcg_warns_for_what_it_drops(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=cpuid", accel="tcg", extra=["-cpu", "Haswell,+vme"])
    assert run.status == PASSED_STATUS
    assert "pemu: warning: TCG doesn't support requested feature: CPUID.07H:EBX.avx2 [bit 5]\n" in run.stderr
    assert "pemu: warning: TCG doesn't support requested feature: CPUID.01H:EDX.vme [bit 1]\n" in run.stderr
    cpuid = guest_cpuid(run.output)
    assert cpuid["1.eax"] == 0x306C4 and not cpuid["7.ebx"] & (1 << 5) and cpuid["1.ecx"] & (1 << 20)


@pytest.mark.kvm
def test_cpu_host_reports_the_hosts_features(test_guest: Path) -> None:
    from pemu.accel.kvm.kvm_sys import KVMSystem

    supported = {(e.function, e.index): e for e in KVMSystem().supported_cpuid()}
    run = run_test_guest(test_guest, "test=cpuid", extra=["-cpu", "host"])
    assert run.status == PASSED_STATUS, run.output + run.stderr
    cpuid = guest_cpuid(run.output)
    leaf0 = supported[(0, 0)]
    vendor = b"".join(v.to_bytes(4, "little") for v in (leaf0.ebx, leaf0.edx, leaf0.ecx)).decode()
    assert cpuid["vendor"] == vendor
    assert cpuid["1.eax"] == supported[(1, 0)].eax          # the host's family, model and stepping
    for reg in ("ecx", "edx"):
        have = getattr(supported[(1, 0)], reg)
        assert cpuid[f"1.{reg}"] & have == have, f"leaf 1 {reg}: {cpuid[f'1.{reg}']:#x} {have:#x}"
    # What pemu hands KVM_SET_CPUID2 for -cpu host is every bit KVM offers.  (Leaf 7 is
    # checked there, not in the guest: the software KVM of these test machines shows the
    # guest the host's own leaf 7 whatever it is given.)
    from pemu.accel.kvm.kvm_accel import KVMAccel, build_cpuid

    accel = KVMAccel()
    accel.supported_cpuid = list(supported.values())
    entries = {(e.function, e.index): e for e in build_cpuid(accel.host_cpu_model(), accel.supported_cpuid, 0,
                                                             lapic_in_kernel=True)}
    for reg in ("ebx", "ecx", "edx"):
        assert getattr(entries[(7, 0)], reg) == getattr(supported[(7, 0)], reg), reg
    assert entries[(1, 0)].ecx == supported[(1, 0)].ecx and entries[(1, 0)].edx == supported[(1, 0)].edx
    # ... where the default model says what QEMU's qemu64 says.
    run = run_test_guest(test_guest, "test=cpuid")
    assert guest_cpuid(run.output)["1.eax"] == 0x60FB1 and run.stderr == ""


@pytest.mark.kvm
def test_kvm_paravirtual_leaves_on_request(test_guest: Path) -> None:
    run = run_test_guest(test_guest, "test=cpuid", extra=["-cpu", "qemu64,+kvmclock,+kvm-steal-time"])
    cpuid = guest_cpuid(run.output)
    assert "cpuid 40000000: eax=40000001 signature KVMKVMKVM" in run.output, run.output + run.stderr
    assert cpuid["40000001.eax"] & 0b101001 == 0b101001            # kvmclock (bits 0 and 3), steal time
    run = run_test_guest(test_guest, "test=cpuid")
    assert "signature none" in run.output                          # not without asking


@pytest.mark.parametrize("cpu, message", [
    ("qemu64,+foo", "pemu: -cpu qemu64,+foo: Property 'qemu64-x86_64-cpu.foo' not found\n"),
    ("host", "pemu: -cpu host: CPU model 'host' requires KVM or HVF\n"),
    ("Haswell,hv_vapic", "pemu: -cpu Haswell,hv_vapic: can't apply global Haswell-x86_64-cpu.hv-vapic=on: "
                         "Hyper-V enlightenment 'hv-vapic' is not supported by pemu\n"),
])
def test_cpu_errors_are_one_line(cpu: str, message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pemu", "-accel", "tcg", "-cpu", cpu, "-nodefaults", "-display", "none",
                        "-S", "-monitor", "none"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr == message
