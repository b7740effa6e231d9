"""CPU models, -cpu parsing, the tcg feature filter, the accelerator registry, reset state."""

from __future__ import annotations

import struct

import pytest

from pemu.accel.accel import AccelOps, AccelRequest, configure_accelerators
from pemu.target.i386.cpu_models import TCG_UNSUPPORTED, parse_cpu_option, x86_cpu_list, x86_cpu_model_for
from pemu.target.i386.cpu_state import CPUX86State, Reg, SegReg
from pemu.target.i386.tcg.uc_context import verify_context_layout
from pemu.util.error import UserError


def brand(model) -> bytes:
    raw = b"".join(struct.pack("<4I", *model.cpuid(leaf)) for leaf in (0x80000002, 0x80000003, 0x80000004))
    return raw.rstrip(b"\0")


def test_qemu64_identity() -> None:
    m = x86_cpu_model_for("qemu64")
    assert brand(m) == b"QEMU Virtual CPU version 2.5+"
    eax, ebx, ecx, edx = m.cpuid(0)
    assert struct.pack("<3I", ebx, edx, ecx) == b"AuthenticAMD"
    assert m.cpuid(1)[0] == 0x00060FB1  # family 15 model 107 stepping 1
    assert m.cpuid(0x80000001)[3] & (1 << 29)  # long mode
    assert m.cpuid(0x80000008)[0] & 0xFF == 40


def test_tcg_filter_hides_what_unicorn_cannot_honour() -> None:
    m = x86_cpu_model_for("max", "tcg")
    for name in ("x2apic", "tsc-deadline", "avx", "avx2", "xsave", "monitor", "kvmclock"):
        assert not m.has(name), name
    for name in ("apic", "sse4.2", "aes", "pclmulqdq", "popcnt", "lm", "nx", "syscall", "rdtscp", "cx16"):
        assert m.has(name), name
    assert m.cpuid(0x40000000) == (0, 0, 0, 0)
    assert not any(m.features.get(w, 0) & mask for w, mask in TCG_UNSUPPORTED.items())


def test_cpu_option_parsing_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    model, req = parse_cpu_option("qemu64,+sse4.2,-nx,popcnt=on")
    assert model.has("sse4.2") and model.has("popcnt") and not model.has("nx")
    assert req == {"sse4.2": True, "nx": False, "popcnt": True}
    x86_cpu_model_for("qemu64,+avx", "tcg")
    assert "doesn't support requested feature" in capsys.readouterr().err
    with pytest.raises(UserError, match="unable to find CPU model 'pentium9'"):
        parse_cpu_option("pentium9")
    with pytest.raises(UserError, match="bogus"):
        parse_cpu_option("qemu64,+bogus")
    assert "qemu64" in x86_cpu_list() and "sse4.2" in x86_cpu_list()


def test_accelerator_selection() -> None:
    assert configure_accelerators("tcg").name == "tcg"
    assert configure_accelerators("tcg", smp_cpus=8).supports_smp  # every vCPU in turn on one thread
    with pytest.raises(UserError, match="invalid accelerator xen"):
        configure_accelerators("xen")
    # kvm may or may not work here; the fallback must end on tcg either way
    assert configure_accelerators("kvm:tcg").name in ("kvm", "tcg")
    configure_accelerators("tcg")


def test_accel_properties_are_checked_per_accelerator(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    def tcg(*props: tuple[str, str]) -> AccelOps:
        return configure_accelerators([AccelRequest("tcg", props, "-accel tcg,...")])

    assert tcg(("thread", "single"), ("tb-size", "64")).tb_size_mib == 64
    for props, message in [
        ((("foo", "bar"),), "-accel tcg,...: Property 'tcg-accel.foo' not found"),
        ((("kernel-irqchip", "off"),), "-accel tcg,...: Property 'tcg-accel.kernel-irqchip' not found"),
        ((("thread", "multi"),), "-accel tcg,...: thread=multi is not supported by pemu"),
        ((("thread", "x"),), "-accel tcg,...: Invalid 'thread' setting x"),
        ((("tb-size", "-1"),), "-accel tcg,...: Parameter 'tb-size' expects uint64"),
        ((("tb-size", "4096"),), "-accel tcg,...: tb-size 4096 MiB is too large"),
        ((("split-wx", "on"),), "-accel tcg,...: Property 'tcg-accel.split-wx' is not supported by pemu"),
    ]:
        with pytest.raises(UserError) as info:
            tcg(*props)
        assert str(info.value).startswith(message)
    # Properties of an accelerator that is not available are not looked at (QEMU's order).
    monkeypatch.setenv("PEMU_KVM_DEVICE", str(tmp_path / "no-kvm"))
    fallback = configure_accelerators([AccelRequest("kvm", (("nosuch", "1"),)), AccelRequest("tcg")])
    assert fallback.name == "tcg"
    configure_accelerators("tcg")


def test_tb_size_sizes_the_engine_translation_cache() -> None:
    from tcg_harness import Machine

    m = Machine(accel=[AccelRequest("tcg", (("tb-size", "48"),))])
    try:
        assert m.vcpu.uc.ctl_get_tcg_buffer_size() == 48 << 20
    finally:
        m.close()
        configure_accelerators("tcg")


def test_reset_and_flat32_state() -> None:
    env = CPUX86State(cpuid_version=0x60FB1)
    env.reset()
    cs = env.segs[SegReg.CS]
    assert (cs.selector, cs.base, env.rip) == (0xF000, 0xFFFF0000, 0xFFF0)
    assert env.cr0 == 0x60000010 and env.regs[Reg.RDX] == 0x60FB1 and env.cpl == 0
    env.set_protected_mode_flat32(0x100000, esi=0x7000)
    assert env.cr0 & 1 and env.segs[SegReg.CS].limit == 0xFFFFFFFF and env.regs[Reg.RSI] == 0x7000
    assert env.rip == 0x100000 and not env.rflags & (1 << 9)


def test_context_layout_self_test_passes() -> None:
    verify_context_layout()
