"""The KVM binding's structures and ioctl numbers against the kernel headers,
and the accelerator's pure helpers (slot planning, GSI routing, CPUID, segments)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pemu.accel.kvm import kvm_sys as k
from pemu.accel.kvm.kvm_accel import (
    KVMMemoryListener,
    SlotMapping,
    build_cpuid,
    pc_gsi_routing,
    plan_slots,
    segment_from_kvm,
    segment_to_kvm,
)
from pemu.target.i386.cpu_models import x86_cpu_model_for
from pemu.target.i386.cpu_state import CPUX86State, SegReg

_C_NAMES = {
    k.kvm_userspace_memory_region: "struct kvm_userspace_memory_region",
    k.kvm_dirty_log: "struct kvm_dirty_log", k.kvm_regs: "struct kvm_regs",
    k.kvm_segment: "struct kvm_segment", k.kvm_dtable: "struct kvm_dtable", k.kvm_sregs: "struct kvm_sregs",
    k.kvm_fpu: "struct kvm_fpu", k.kvm_msr_entry: "struct kvm_msr_entry", k.kvm_msrs: "struct kvm_msrs",
    k.kvm_cpuid_entry2: "struct kvm_cpuid_entry2", k.kvm_cpuid2: "struct kvm_cpuid2",
    k.kvm_irq_level: "struct kvm_irq_level", k.kvm_pit_config: "struct kvm_pit_config",
    k.kvm_irq_routing_entry: "struct kvm_irq_routing_entry", k.kvm_irq_routing: "struct kvm_irq_routing",
    k.kvm_msi: "struct kvm_msi", k.kvm_interrupt: "struct kvm_interrupt", k.kvm_mp_state: "struct kvm_mp_state",
    k.kvm_lapic_state: "struct kvm_lapic_state", k.kvm_run: "struct kvm_run",
    k.kvm_vcpu_events: "struct kvm_vcpu_events", k.kvm_debugregs: "struct kvm_debugregs",
    k.kvm_xsave: "struct kvm_xsave", k.kvm_xcrs: "struct kvm_xcrs", k.kvm_irqchip: "struct kvm_irqchip",
    k.kvm_pit_state2: "struct kvm_pit_state2", k.kvm_pit_channel_state: "struct kvm_pit_channel_state",
}


@pytest.fixture(scope="module")
def kernel_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if not shutil.which("gcc") or not os.path.exists("/usr/include/linux/kvm.h"):
        pytest.skip("gcc and the kernel headers are needed")
    lines = [f'printf("size {c} %zu\\n", sizeof({c}));' for c in _C_NAMES.values()]
    lines += [f'printf("ioctl {name} %lu\\n", (unsigned long)KVM_{name});' for name in k.Ioctl.__members__]
    lines.append('printf("offset run.u %zu\\n", offsetof(struct kvm_run, io));')
    src = tmp_path_factory.mktemp("kvmh") / "facts.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void){"
                   + "".join(lines) + "return 0;}\n")
    exe = src.with_suffix("")
    subprocess.run(["gcc", str(src), "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


def test_structure_sizes_match_the_kernel(kernel_facts: dict[str, int]) -> None:
    for struct, c_name in _C_NAMES.items():
        if struct is k.kvm_run:
            continue  # the kernel's union holds larger members; we map the page and use the prefix
        assert ctypes.sizeof(struct) == kernel_facts[f"size {c_name}"], c_name
    assert k.kvm_run.u.offset == kernel_facts["offset run.u"]


def test_ioctl_numbers_match_the_kernel(kernel_facts: dict[str, int]) -> None:
    for name, member in k.Ioctl.__members__.items():
        assert member.value == kernel_facts[f"ioctl {name}"], name


@dataclass
class _Block:
    host_addr: int


@dataclass
class _MR:
    ram_block: _Block | None


@dataclass
class _FR:
    start: int
    size: int
    mr: _MR
    offset_in_region: int
    readonly: bool


def test_plan_slots_takes_whole_pages_of_ram_and_rom() -> None:
    ram = _MR(_Block(0x7F0000000000))
    rom = _MR(_Block(0x7F1000000000))
    io = _MR(None)
    ranges = [_FR(0, 0xA0000, ram, 0, False), _FR(0xA0000, 0x20000, io, 0, False),
              _FR(0xC0000, 0x800, ram, 0xC0000, False),  # sub-page: stays MMIO
              _FR(0x100000, 0x100100, ram, 0x100000, False), _FR(0xFFFF0000, 0x10000, rom, 0, True)]
    assert plan_slots(ranges) == [
        SlotMapping(0, 0xA0000, 0x7F0000000000, False),
        SlotMapping(0x100000, 0x100000, 0x7F0000100000, False),
        SlotMapping(0xFFFF0000, 0x10000, 0x7F1000000000, True),
    ]


class _FakeVM:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, int, int]] = []

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host: int, flags: int = 0) -> None:
        self.calls.append((slot, gpa, size, host, flags))


def test_listener_removes_then_adds_only_changed_slots() -> None:
    vm = _FakeVM()
    listener = KVMMemoryListener(vm, readonly_supported=True, max_slots=8)  # type: ignore[arg-type]
    ram = _MR(_Block(0x10000000))
    listener.flatview_changed(None, [_FR(0, 0x10000, ram, 0, False), _FR(0x20000, 0x10000, ram, 0x20000, True)])
    assert vm.calls == [(0, 0, 0x10000, 0x10000000, 0), (1, 0x20000, 0x10000, 0x10020000, k.KVM_MEM_READONLY)]
    vm.calls.clear()
    # The ROM range becomes RAM (a PAM change): its slot goes, a new one comes; slot 0 stays.
    listener.flatview_changed(None, [_FR(0, 0x10000, ram, 0, False), _FR(0x20000, 0x10000, ram, 0x20000, False)])
    assert vm.calls == [(1, 0x20000, 0, 0x10020000, 0), (1, 0x20000, 0x10000, 0x10020000, 0)]


def test_gsi_routing_puts_the_pit_on_ioapic_pin_2() -> None:
    entries = pc_gsi_routing()
    ioapic = {e.gsi: e.u.irqchip.pin for e in entries if e.u.irqchip.irqchip == k.KVM_IRQCHIP_IOAPIC}
    pic = {e.gsi: (e.u.irqchip.irqchip, e.u.irqchip.pin) for e in entries if e.u.irqchip.irqchip != k.KVM_IRQCHIP_IOAPIC}
    assert ioapic[0] == 2 and 2 not in ioapic and ioapic[9] == 9 and ioapic[23] == 23
    assert pic[0] == (k.KVM_IRQCHIP_PIC_MASTER, 0) and pic[12] == (k.KVM_IRQCHIP_PIC_SLAVE, 4) and 2 not in pic


def test_cpuid_masks_features_with_kvms_and_sets_the_apic_id() -> None:
    model = x86_cpu_model_for("qemu64", "kvm")
    supported = [k.kvm_cpuid_entry2(function=0, eax=0x1F), k.kvm_cpuid_entry2(function=1, ecx=0xFFFFFFFF,
                                                                             edx=0xFFFFFFFF & ~(1 << 25)),
                 k.kvm_cpuid_entry2(function=0x40000000, eax=0x40000001)]
    entries = {e.function: e for e in build_cpuid(model, supported, apic_id=3, lapic_in_kernel=True)}
    assert 0x40000000 not in entries
    leaf1 = entries[1]
    assert leaf1.ebx >> 24 == 3
    assert not leaf1.edx & (1 << 25)  # SSE: the model has it, KVM does not
    assert leaf1.edx & (1 << 9)  # APIC
    no_lapic = {e.function: e for e in build_cpuid(model, supported, 0, lapic_in_kernel=False)}
    assert not no_lapic[1].edx & (1 << 9)
    # kernel-irqchip=off with pemu's own APIC: the xAPIC, without x2APIC or TSC-deadline.
    userspace = build_cpuid(model, supported, 0, lapic_in_kernel=False, userspace_apic=True)
    leaf1 = {e.function: e for e in userspace}[1]
    assert leaf1.edx & (1 << 9) and not leaf1.ecx & (1 << 21 | 1 << 24)
    assert entries[0].eax == model.level


def test_segments_round_trip_through_kvm_format() -> None:
    env = CPUX86State()
    for seg in (env.segs[SegReg.CS], env.segs[SegReg.DS], env.tr):
        out = k.kvm_segment()
        segment_to_kvm(seg, out)
        assert segment_from_kvm(out) == seg
    cs = k.kvm_segment()
    segment_to_kvm(env.segs[SegReg.CS], cs)
    assert (cs.type, cs.present, cs.s, cs.base, cs.selector) == (0xB, 1, 1, 0xFFFF0000, 0xF000)


@pytest.mark.kvm
def test_a_vcpu_starts_at_the_reset_vector() -> None:
    system = k.KVMSystem()
    try:
        vm = system.create_vm()
        vcpu = vm.create_vcpu(0)
        assert vcpu.get_regs().rip == 0xFFF0
        assert vcpu.get_sregs().cs.base == 0xFFFF0000
        vcpu.close()
        vm.close()
    finally:
        system.close()


def test_missing_device_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        k.KVMSystem(str(tmp_path / "nothing"))
