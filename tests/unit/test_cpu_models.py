"""QEMU's named x86 CPU models: CPUID leaves 1, 7 and 0x80000001 of each as
QEMU 7.2 defines it, the accelerator filters with QEMU's warnings, and -cpu
parsing (+feat, -feat, feat=on|off, vendor=, phys-bits=, check/enforce,
migratable, hv-*) with QEMU's errors."""

from __future__ import annotations

import pytest

from pemu.target.i386.cpu_models import (
    BUILTIN_MODELS,
    FEATURES,
    TCG_UNSUPPORTED,
    FeatureWord,
    X86CPUModel,
    parse_cpu_option,
    x86_cpu_list,
    x86_cpu_model_for,
)
from pemu.util.error import UserError

# What a guest's CPUID returned under QEMU 7.2 (qemu-system-x86_64 -accel tcg
# -cpu NAME on pc-q35-7.2, read by tests/guests' "cpuid" test), with the bits QEMU
# named in its "TCG doesn't support requested feature" warnings put back, and
# VME (which QEMU's TCG turns off by default) as the models define it:
# (name, leaf 1 EAX, leaf 1 ECX, leaf 1 EDX, leaf 7 EBX, ECX, EDX, leaf 0x80000001 ECX, EDX).
QEMU_7_2_CPUID = [
    ("qemu64", 0x00060fb1, 0x80002001, 0x078bfbfd, 0x00000000, 0x00000000, 0x00000000, 0x00000005, 0x2193fbfd),
    ("qemu32", 0x00000663, 0x80000001, 0x0781abfd, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
    ("kvm64", 0x00000f61, 0x80002001, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x20100800),
    ("kvm32", 0x00000f61, 0x80000001, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000),
    ("Nehalem", 0x000106a3, 0x80982201, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x00000001, 0x20100800),
    ("Westmere", 0x000206c1, 0x82982203, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x00000001, 0x20100800),
    ("SandyBridge", 0x000206a1, 0x97b82203, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x00000001, 0x28100800),
    ("IvyBridge", 0x000306a9, 0xf7b82203, 0x078bfbff, 0x00000281, 0x00000000, 0x00000000, 0x00000001, 0x28100800),
    ("Haswell", 0x000306c4, 0xf7fa3203, 0x078bfbff, 0x00000fb9, 0x00000000, 0x00000000, 0x00000021, 0x28100800),
    ("Broadwell", 0x000306d2, 0xf7fa3203, 0x078bfbff, 0x001c0fb9, 0x00000000, 0x00000000, 0x00000121, 0x28100800),
    ("Skylake-Client", 0x000506e3, 0xf7fa3203, 0x078bfbff, 0x001c0fb9, 0x00000000, 0x00000000, 0x00000121, 0x28100800),
    ("Skylake-Server", 0x00050654, 0xf7fa3203, 0x078bfbff, 0xd19f0fb9, 0x00000008, 0x00000000, 0x00000121, 0x2c100800),
    ("Cascadelake-Server", 0x00050656, 0xf7fa3203, 0x078bfbff, 0xd19f0fb9, 0x00000808, 0x84000000, 0x00000121, 0x2c100800),
    ("Icelake-Server", 0x00080660, 0xf7fa3203, 0x078bfbff, 0xd19f0fb9, 0x00015f4e, 0x84000000, 0x00000121, 0x2c100800),
    ("EPYC", 0x00800f12, 0xf6d8320b, 0x078bfbff, 0x209c01a9, 0x00000000, 0x00000000, 0x004003f5, 0x2fd3fbff),
    ("Opteron_G1", 0x00000f61, 0x80000001, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x2193fbff),
    ("Opteron_G2", 0x00000f61, 0x80002001, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x00000005, 0x2193fbff),
    ("Opteron_G3", 0x00100f23, 0x80802009, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x000000e5, 0x2993fbff),
    ("Opteron_G4", 0x00600f12, 0x96982203, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x000109e5, 0x2d93fbff),
    ("Opteron_G5", 0x00600f20, 0xb6983203, 0x078bfbff, 0x00000000, 0x00000000, 0x00000000, 0x002109e5, 0x2d93fbff),
]


@pytest.mark.parametrize("name, eax1, ecx1, edx1, ebx7, ecx7, edx7, ecx_ext, edx_ext", QEMU_7_2_CPUID,
                         ids=[row[0] for row in QEMU_7_2_CPUID])
def test_model_cpuid_as_qemu_defines_it(name: str, eax1: int, ecx1: int, edx1: int, ebx7: int, ecx7: int,
                                        edx7: int, ecx_ext: int, edx_ext: int) -> None:
    model = BUILTIN_MODELS[name]
    assert model.cpuid(1)[0] == eax1
    assert model.cpuid(1)[2:] == (ecx1, edx1)
    if model.level >= 7:
        assert model.cpuid(7)[1:] == (ebx7, ecx7, edx7)
    else:
        assert (ebx7, ecx7, edx7) == (0, 0, 0) and model.cpuid(7) == (0, 0, 0, 0)
    if model.xlevel >= 0x80000001:
        assert model.cpuid(0x80000001)[2:] == (ecx_ext, edx_ext)


def test_every_model_qemu_names_is_there_with_its_versioned_name() -> None:
    text = x86_cpu_list()
    for name in ("qemu64", "qemu32", "kvm64", "max", "host", "base", "Nehalem", "Westmere", "SandyBridge",
                 "IvyBridge", "Haswell", "Broadwell", "Skylake-Client", "Skylake-Server", "Cascadelake-Server",
                 "Icelake-Server", "EPYC", "Opteron_G1", "Opteron_G2", "Opteron_G3", "Opteron_G4", "Opteron_G5"):
        assert f"\nx86 {name} " in text, name
    assert "x86 Haswell               (alias configured by machine type)\n" in text
    assert "x86 Haswell-v1            Intel Core Processor (Haswell)\n" in text
    assert parse_cpu_option("Haswell-v1")[0] == parse_cpu_option("Haswell")[0]


def test_feature_table_is_consistent() -> None:
    for name, (word, bit) in FEATURES.items():
        assert 0 <= bit < 32 and isinstance(word, FeatureWord), name
    # A few bits checked against the SDM/APM.
    for name, word, bit in [("sse4.2", FeatureWord.CPUID_1_ECX, 20), ("avx2", FeatureWord.CPUID_7_0_EBX, 5),
                            ("avx512vnni", FeatureWord.CPUID_7_0_ECX, 11), ("ssbd", FeatureWord.CPUID_7_0_EDX, 31),
                            ("lm", FeatureWord.CPUID_8000_0001_EDX, 29), ("arat", FeatureWord.CPUID_6_EAX, 2),
                            ("xsaveopt", FeatureWord.CPUID_D_1_EAX, 0), ("invtsc", FeatureWord.CPUID_8000_0007_EDX, 8),
                            ("npt", FeatureWord.CPUID_SVM, 0), ("avx512-bf16", FeatureWord.CPUID_7_1_EAX, 5)]:
        assert FEATURES[name] == (word, bit), name


def test_named_model_under_tcg_warns_for_each_dropped_feature(capsys: pytest.CaptureFixture[str]) -> None:
    model = x86_cpu_model_for("Haswell", "tcg", check_model=True)
    err = capsys.readouterr().err.splitlines()
    assert "pemu: warning: TCG doesn't support requested feature: CPUID.01H:ECX.x2apic [bit 21]" in err
    assert "pemu: warning: TCG doesn't support requested feature: CPUID.07H:EBX.avx2 [bit 5]" in err
    assert "pemu: warning: TCG doesn't support requested feature: CPUID.0DH:EAX.xsaveopt [bit 0]" in err
    assert not any("vme" in line for line in err)   # turned off by TCG's defaults, silently, as QEMU does
    assert not any(model.features.get(w, 0) & mask for w, mask in TCG_UNSUPPORTED.items())
    assert model.has("sse4.2") and model.has("aes") and not model.has("avx2") and not model.has("vme")


def test_default_model_is_narrowed_silently(capsys: pytest.CaptureFixture[str]) -> None:
    model = x86_cpu_model_for(None, "tcg")
    assert capsys.readouterr().err == ""
    assert not model.has("svm") and model.has("lm") and model.has("hypervisor")
    x86_cpu_model_for("qemu64,+svm", "tcg")
    assert "TCG doesn't support requested feature: CPUID.80000001H:ECX.svm [bit 2]" in capsys.readouterr().err


def test_max_is_what_the_accelerator_offers_without_a_word(capsys: pytest.CaptureFixture[str]) -> None:
    model = x86_cpu_model_for("max", "tcg", check_model=True)
    assert capsys.readouterr().err == "" and model.has("sse4.2") and not model.has("x2apic")
    x86_cpu_model_for("max,+avx2", "tcg", check_model=True)
    assert capsys.readouterr().err == "pemu: warning: TCG doesn't support requested feature: CPUID.07H:EBX.avx2 [bit 5]\n"


def test_check_off_and_enforce(capsys: pytest.CaptureFixture[str]) -> None:
    x86_cpu_model_for("Haswell,check=off", "tcg", check_model=True)
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError, match="^TCG doesn't support requested features$"):
        x86_cpu_model_for("qemu64,+avx2,enforce=on", "tcg")
    assert "CPUID.07H:EBX.avx2 [bit 5]" in capsys.readouterr().err
    x86_cpu_model_for("qemu64,enforce=on", "tcg")          # nothing dropped: starts


def test_kvm_filter_names_the_host(capsys: pytest.CaptureFixture[str]) -> None:
    unsupported = {FeatureWord.CPUID_7_0_EBX: 1 << 5}
    model = x86_cpu_model_for("Haswell", "kvm", unsupported=unsupported, check_model=True)
    assert capsys.readouterr().err == "pemu: warning: host doesn't support requested feature: CPUID.07H:EBX.avx2 [bit 5]\n"
    assert not model.has("avx2") and model.has("x2apic")


@pytest.mark.parametrize("option, check", [
    ("qemu64,+sse4.2,-nx,popcnt=on,sse4_1=yes,lahf_lm=off", lambda m: m.has("sse4.2") and m.has("popcnt")
     and m.has("sse4.1") and not m.has("nx") and not m.has("lahf-lm")),
    ("qemu64,sse3=off,xd=off,i64=off", lambda m: not m.has("pni") and not m.has("nx") and not m.has("lm")),
    ("qemu64,-sse2,+sse2", lambda m: not m.has("sse2")),          # "-feat" is applied after "+feat"
    ("qemu64,vendor=GenuineIntel", lambda m: m.cpuid(0)[1:] == (0x756E6547, 0x6C65746E, 0x49656E69)),
    ("qemu64,phys-bits=36", lambda m: m.cpuid(0x80000008)[0] & 0xFF == 36),
    ("qemu64,model-id=Some CPU,family=6,model=0x3c,stepping=4", lambda m: m.cpuid(1)[0] == 0x306C4),
    ("max,migratable=off", lambda m: m.migratable is False),
])
def test_cpu_options(option: str, check: object) -> None:
    model, _ = parse_cpu_option(option)
    assert callable(check) and check(model)


def test_requested_features_are_recorded() -> None:
    _, requested = parse_cpu_option("qemu64,+sse4.2,-nx,popcnt=on")
    assert requested == {"sse4.2": True, "nx": False, "popcnt": True}


def test_mixing_plus_and_property_warns_as_qemu(capsys: pytest.CaptureFixture[str]) -> None:
    parse_cpu_option("qemu64,+sse4.2,sse4.2=off")
    assert capsys.readouterr().err == (
        'pemu: warning: Ambiguous CPU model string. Don\'t mix both "+sse4.2" and "sse4.2=off"\n'
        "pemu: warning: Compatibility of ambiguous CPU model strings won't be kept on future QEMU versions\n")


@pytest.mark.parametrize("option, message", [
    ("nosuch", "unable to find CPU model 'nosuch'"),
    ("qemu64,+foo", "Property 'qemu64-x86_64-cpu.foo' not found"),
    ("qemu64,-foo", "Property 'qemu64-x86_64-cpu.foo' not found"),
    ("qemu64,foo", "can't apply global qemu64-x86_64-cpu.foo=on: Property 'qemu64-x86_64-cpu.foo' not found"),
    ("qemu64,foo=on", "can't apply global qemu64-x86_64-cpu.foo=on: Property 'qemu64-x86_64-cpu.foo' not found"),
    ("qemu64,sse4.2=maybe", "can't apply global qemu64-x86_64-cpu.sse4.2=maybe: Parameter 'sse4.2' expects "
                            "'on' or 'off'"),
    ("qemu64,vendor=abc", "can't apply global qemu64-x86_64-cpu.vendor=abc: Property '.vendor' doesn't take "
                          "value 'abc'"),
    ("qemu64,phys-bits=99", "phys-bits should be between 32 and 52  (but is 99)"),
    ("qemu64,migratable=on", "can't apply global qemu64-x86_64-cpu.migratable=on: Property "
                             "'qemu64-x86_64-cpu.migratable' not found"),
    ("qemu64,hv_relaxed", "can't apply global qemu64-x86_64-cpu.hv-relaxed=on: Hyper-V enlightenment "
                          "'hv-relaxed' is not supported by pemu"),
    ("qemu64,hv-xyz=on", "can't apply global qemu64-x86_64-cpu.hv-xyz=on: Property 'qemu64-x86_64-cpu.hv-xyz' "
                         "not found"),
    ("host", "CPU model 'host' requires KVM or HVF"),
])
def test_cpu_option_errors(option: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        parse_cpu_option(option)
    assert info.value.message == message
    assert info.value.location == f"-cpu {option}"


def test_host_model_comes_from_the_accelerator() -> None:
    host = X86CPUModel("host", "AuthenticAMD", 25, 1, 1, "Some AMD CPU",
                       {FeatureWord.CPUID_1_EDX: 0x178BFBFF, FeatureWord.CPUID_7_0_EBX: 0x209C01A9}, migratable=True)
    model = x86_cpu_model_for("host", "kvm", unsupported={}, host_model=host)
    assert model.cpuid(1)[0] == 0xA00F11 and model.cpuid(7)[1] == 0x209C01A9
    with pytest.raises(UserError, match="host-phys-bits=on needs"):
        x86_cpu_model_for("qemu64,host-phys-bits=on", "tcg")


def test_kvm_paravirtual_features_are_offered_when_asked_and_kvm_lists_them() -> None:
    from pemu.accel.kvm import kvm_sys as k
    from pemu.accel.kvm.kvm_accel import build_cpuid

    model, _ = parse_cpu_option("qemu64,+kvmclock,+kvm-steal-time,+kvm-pv-unhalt")
    assert model.features[FeatureWord.CPUID_KVM] == (1 << 0) | (1 << 3) | (1 << 5) | (1 << 7)  # kvmclock: both bits
    supported = [k.kvm_cpuid_entry2(function=0, eax=0xD), k.kvm_cpuid_entry2(function=0x40000000, eax=0x40000001),
                 k.kvm_cpuid_entry2(function=0x40000001, eax=(1 << 0) | (1 << 3) | (1 << 5))]
    entries = {e.function: e for e in build_cpuid(model, supported, apic_id=0, lapic_in_kernel=True)}
    assert (entries[0x40000000].ebx, entries[0x40000000].ecx, entries[0x40000000].edx) == (
        0x4B4D564B, 0x564B4D56, 0x4D)                                                  # "KVMKVMKVM"
    assert entries[0x40000001].eax == (1 << 0) | (1 << 3) | (1 << 5)                   # pv-unhalt: not listed
    plain = {e.function for e in build_cpuid(parse_cpu_option("qemu64")[0], supported, 0, lapic_in_kernel=True)}
    assert 0x40000000 not in plain and 0x40000001 not in plain
