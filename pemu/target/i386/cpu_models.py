"""x86 CPU models and their CPUID (QEMU's builtin_x86_defs, target/i386/cpu.c).

A model is data: vendor, family/model/stepping, the feature words and the
brand string.  ``-cpu NAME,+feat,-feat,feat=on|off`` picks one and edits its
features; then the accelerator removes what it cannot honour (QEMU's
x86_cpu_filter_features) and :meth:`X86CPUModel.cpuid` answers the guest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from pemu.util.error import UserError, warn_report


class FeatureWord(Enum):
    """A CPUID output register that holds feature bits: (leaf, subleaf, register)."""

    CPUID_1_EDX = (0x1, 0, "edx")
    CPUID_1_ECX = (0x1, 0, "ecx")
    CPUID_7_0_EBX = (0x7, 0, "ebx")
    CPUID_7_0_ECX = (0x7, 0, "ecx")
    CPUID_7_0_EDX = (0x7, 0, "edx")
    CPUID_8000_0001_EDX = (0x80000001, 0, "edx")
    CPUID_8000_0001_ECX = (0x80000001, 0, "ecx")
    CPUID_KVM = (0x40000001, 0, "eax")

    @property
    def leaf(self) -> int:
        return self.value[0]

    @property
    def register(self) -> str:
        return self.value[2]


W = FeatureWord

# Feature names as Linux's /proc/cpuinfo and QEMU's -cpu spell them.
FEATURE_NAMES: dict[FeatureWord, tuple[str | None, ...]] = {
    W.CPUID_1_EDX: (
        "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce",
        "cx8", "apic", None, "sep", "mtrr", "pge", "mca", "cmov",
        "pat", "pse36", "pn", "clflush", None, "ds", "acpi", "mmx",
        "fxsr", "sse", "sse2", "ss", "ht", "tm", "ia64", "pbe"),
    W.CPUID_1_ECX: (
        "pni", "pclmulqdq", "dtes64", "monitor", "ds-cpl", "vmx", "smx", "est",
        "tm2", "ssse3", "cid", None, "fma", "cx16", "xtpr", "pdcm",
        None, "pcid", "dca", "sse4.1", "sse4.2", "x2apic", "movbe", "popcnt",
        "tsc-deadline", "aes", "xsave", "osxsave", "avx", "f16c", "rdrand", "hypervisor"),
    W.CPUID_7_0_EBX: (
        "fsgsbase", "tsc-adjust", None, "bmi1", "hle", "avx2", None, "smep",
        "bmi2", "erms", "invpcid", "rtm", None, None, "mpx", None,
        "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma", "pcommit", "clflushopt",
        "clwb", "intel-pt", "avx512pf", "avx512er", "avx512cd", "sha-ni", "avx512bw", "avx512vl"),
    W.CPUID_7_0_ECX: (
        None, "avx512vbmi", "umip", "pku", None, "waitpkg", "avx512vbmi2", None,
        "gfni", "vaes", "vpclmulqdq", "avx512vnni", "avx512bitalg", None, "avx512-vpopcntdq", None,
        "la57", None, None, None, None, None, "rdpid", None,
        None, "cldemote", None, "movdiri", "movdir64b", None, None, None),
    W.CPUID_7_0_EDX: (
        None, None, "avx512-4vnniw", "avx512-4fmaps", "fsrm", None, None, None,
        None, None, "md-clear", None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, "spec-ctrl", "stibp", None, "arch-capabilities", None, "ssbd"),
    W.CPUID_8000_0001_EDX: (
        None, None, None, None, None, None, None, None,
        None, None, None, "syscall", None, None, None, None,
        None, None, None, None, "nx", None, "mmxext", None,
        None, "fxsr-opt", "pdpe1gb", "rdtscp", None, "lm", "3dnowext", "3dnow"),
    W.CPUID_8000_0001_ECX: (
        "lahf-lm", "cmp-legacy", "svm", "extapic", "cr8legacy", "abm", "sse4a", "misalignsse",
        "3dnowprefetch", "osvw", "ibs", "xop", "skinit", "wdt", None, "lwp",
        "fma4", "tce", None, "nodeid-msr", None, "tbm", "topoext", "perfctr-core",
        "perfctr-nb", None, None, None, None, None, None, None),
    W.CPUID_KVM: (
        "kvmclock", "kvm-nopiodelay", "kvm-mmu", "kvmclock", "kvm-asyncpf", "kvm-steal-time",
        "kvm-pv-eoi", "kvm-pv-unhalt", None, "kvm-pv-tlb-flush", "kvm-asyncpf-vmexit",
        "kvm-pv-ipi", "kvm-poll-control", "kvm-pv-sched-yield", "kvm-asyncpf-int", "kvm-msi-ext-dest-id",
        None, None, None, None, None, None, None, None,
        "kvmclock-stable-bit", None, None, None, None, None, None, None),
}

_ALIASES = {"sse3": "pni", "ssse3": "ssse3", "sse4_1": "sse4.1", "sse4_2": "sse4.2", "lahf_lm": "lahf-lm",
            "tsc_deadline": "tsc-deadline", "pclmuldq": "pclmulqdq", "i64": "lm", "nx": "nx", "xd": "nx"}


def _feature_index() -> dict[str, tuple[FeatureWord, int]]:
    index: dict[str, tuple[FeatureWord, int]] = {}
    for word, names in FEATURE_NAMES.items():
        for bit, name in enumerate(names):
            if name and name not in index:
                index[name] = (word, bit)
    return index


FEATURES = _feature_index()


def feature_bits(*names: str) -> dict[FeatureWord, int]:
    words: dict[FeatureWord, int] = {}
    for name in names:
        word, bit = FEATURES[name]
        words[word] = words.get(word, 0) | (1 << bit)
    return words


@dataclass
class X86CPUModel:
    """One CPU model: what CPUID reports, after -cpu options and filtering."""

    name: str
    vendor: str
    family: int
    model: int
    stepping: int
    model_id: str
    features: dict[FeatureWord, int] = field(default_factory=dict)
    level: int = 0xD
    xlevel: int = 0x8000000A
    phys_bits: int = 40
    virt_bits: int = 48
    apic_id: int = 0
    description: str = ""

    def copy(self) -> X86CPUModel:
        return dataclasses.replace(self, features=dict(self.features))

    def has(self, name: str) -> bool:
        word, bit = FEATURES[name]
        return bool(self.features.get(word, 0) >> bit & 1)

    def set_feature(self, name: str, on: bool) -> None:
        word, bit = FEATURES[name]
        value = self.features.get(word, 0)
        self.features[word] = value | (1 << bit) if on else value & ~(1 << bit)

    @property
    def cpuid_version(self) -> int:
        """Leaf 1 EAX (also EDX at reset): stepping, model, family with extensions."""
        family, model = self.family, self.model
        value = self.stepping & 0xF
        value |= (model & 0xF) << 4 | ((model >> 4) & 0xF) << 16
        if family > 0xF:
            value |= 0xF << 8 | ((family - 0xF) & 0xFF) << 20
        else:
            value |= (family & 0xF) << 8
        return value

    def _vendor_regs(self) -> tuple[int, int, int]:
        raw = self.vendor.encode("ascii").ljust(12, b"\0")[:12]
        ebx, edx, ecx = (int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8))
        return ebx, ecx, edx

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """EAX, EBX, ECX, EDX for CPUID(leaf, subleaf)."""
        leaf &= 0xFFFFFFFF
        subleaf &= 0xFFFFFFFF
        f = self.features.get
        if leaf < 0x80000000 and leaf > self.level and not 0x40000000 <= leaf <= 0x4FFFFFFF:
            return 0, 0, 0, 0
        if leaf >= 0x80000000 and leaf > self.xlevel:
            return 0, 0, 0, 0
        if leaf == 0:
            ebx, ecx, edx = self._vendor_regs()
            return self.level, ebx, ecx, edx
        if leaf == 1:
            ebx = (self.apic_id & 0xFF) << 24 | 1 << 16 | 8 << 8
            return self.cpuid_version, ebx, f(W.CPUID_1_ECX, 0), f(W.CPUID_1_EDX, 0)
        if leaf == 4:
            if self.vendor != "GenuineIntel":
                return 0, 0, 0, 0
            caches = {0: (1, 1, 64, 8, 64), 1: (2, 1, 64, 8, 64), 2: (3, 2, 64, 16, 4096), 3: (3, 3, 64, 16, 16384)}
            if subleaf not in caches:
                return 0, 0, 0, 0
            ctype, level, line, ways, sets = caches[subleaf]
            eax = ctype | level << 5 | 1 << 8
            ebx = (line - 1) | (ways - 1) << 22
            return eax, ebx, sets - 1, 0
        if leaf == 7:
            if subleaf != 0:
                return 0, 0, 0, 0
            return 0, f(W.CPUID_7_0_EBX, 0), f(W.CPUID_7_0_ECX, 0), f(W.CPUID_7_0_EDX, 0)
        if leaf == 0xD:
            if not self.has("xsave"):
                return 0, 0, 0, 0
            if subleaf == 0:
                return 0x3, 0x240, 0x240, 0  # x87 and SSE state: legacy area + header
            if subleaf == 1:
                return 0, 0, 0, 0
            return 0, 0, 0, 0
        if 0x40000000 <= leaf <= 0x4FFFFFFF:
            kvm = f(W.CPUID_KVM, 0)
            if not kvm:
                return 0, 0, 0, 0
            if leaf == 0x40000000:
                return 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D  # "KVMKVMKVM"
            if leaf == 0x40000001:
                return kvm, 0, 0, 0
            return 0, 0, 0, 0
        if leaf == 0x80000000:
            ebx, ecx, edx = self._vendor_regs()
            return self.xlevel, ebx, ecx, edx
        if leaf == 0x80000001:
            return self.cpuid_version, 0, f(W.CPUID_8000_0001_ECX, 0), f(W.CPUID_8000_0001_EDX, 0)
        if 0x80000002 <= leaf <= 0x80000004:
            raw = self.model_id.encode("ascii")[:47].ljust(48, b"\0")
            chunk = raw[(leaf - 0x80000002) * 16:][:16]
            regs = [int.from_bytes(chunk[i:i + 4], "little") for i in range(0, 16, 4)]
            return regs[0], regs[1], regs[2], regs[3]
        if leaf == 0x80000005:
            return 0x01FF01FF, 0x01FF01FF, 0x40020140, 0x40020140
        if leaf == 0x80000006:
            return 0, 0x42004200, 0x02008140, 0x00808140
        if leaf == 0x80000008:
            return self.phys_bits | self.virt_bits << 8, 0, 0, 0
        return 0, 0, 0, 0


QEMU64_FEATURES = feature_bits(
    "fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge", "mca", "cmov",
    "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2",
    "pni", "cx16", "hypervisor",
    "lm", "syscall", "nx",
    "lahf-lm", "abm", "sse4a")

# Everything QEMU's TCG implements; the accelerator filter trims it further.
MAX_FEATURES = feature_bits(
    "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge", "mca", "cmov",
    "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "ss",
    "pni", "pclmulqdq", "monitor", "ssse3", "cx16", "sse4.1", "sse4.2", "x2apic", "movbe", "popcnt",
    "tsc-deadline", "aes", "xsave", "avx", "f16c", "rdrand", "hypervisor",
    "fsgsbase", "bmi1", "avx2", "smep", "bmi2", "erms", "adx", "smap", "clflushopt", "clwb",
    "umip", "pku", "rdpid", "la57",
    "lm", "syscall", "nx", "mmxext", "fxsr-opt", "pdpe1gb", "rdtscp",
    "lahf-lm", "cr8legacy", "abm", "sse4a", "3dnowprefetch",
    "kvmclock", "kvm-nopiodelay", "kvm-asyncpf", "kvm-steal-time", "kvm-pv-eoi")

BUILTIN_MODELS: dict[str, X86CPUModel] = {
    "qemu64": X86CPUModel("qemu64", "AuthenticAMD", 15, 107, 1, "QEMU Virtual CPU version 2.5+",
                          QEMU64_FEATURES, description="QEMU Virtual CPU version 2.5+"),
    "max": X86CPUModel("max", "AuthenticAMD", 15, 107, 1, "QEMU TCG CPU version 2.5+",
                       MAX_FEATURES,
                       description="Enables all features supported by the accelerator in the current host"),
    "base": X86CPUModel("base", "AuthenticAMD", 0, 0, 0, "", {}, level=0xD, xlevel=0x80000008,
                        description="base CPU model type with no features enabled"),
}
DEFAULT_MODEL = "qemu64"

# What the Unicorn engine cannot honour (see /work/shared/notes/unicorn-facts.md): the local
# APIC only in xAPIC mode (RDMSR/WRMSR cannot be hooked, so x2APIC and the TSC deadline are unusable), no AVX
# state, no MONITOR/MWAIT wake-up, paravirt leaves that need a hypervisor, and instructions
# the QEMU 5 translator lacks or that need a CR4 bit we do not model.
TCG_UNSUPPORTED = feature_bits(
    "x2apic", "tsc-deadline", "monitor", "avx", "avx2", "f16c", "fma", "xsave", "osxsave",
    "rdrand", "rdseed", "pcid", "invpcid", "fsgsbase", "bmi1", "bmi2", "adx", "smap", "smep", "pku",
    "umip", "la57", "rdpid", "hle", "rtm", "mpx", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
    "avx512ifma", "avx512vbmi", "sha-ni", "ss", "vme", "cr8legacy", "3dnowprefetch",
    "kvmclock", "kvm-nopiodelay", "kvm-mmu", "kvm-asyncpf", "kvm-steal-time", "kvm-pv-eoi",
    "kvm-pv-unhalt", "kvmclock-stable-bit", "spec-ctrl", "arch-capabilities", "ssbd", "stibp", "md-clear")


def x86_cpu_list() -> str:
    """The text of ``-cpu help``."""
    lines = ["Available CPUs:"]
    for name in sorted(BUILTIN_MODELS):
        lines.append(f"  {name:<20} {BUILTIN_MODELS[name].description}")
    lines.append("")
    lines.append("Recognized CPUID flags:")
    names = sorted(n for n in FEATURES)
    for i in range(0, len(names), 8):
        lines.append("  " + " ".join(names[i:i + 8]))
    return "\n".join(lines) + "\n"


def parse_cpu_option(option: str) -> tuple[X86CPUModel, dict[str, bool]]:
    """Parse ``-cpu NAME[,+feat|-feat|feat=on|off]...``.

    Returns the edited model and the features the user asked for explicitly.
    """
    location = f"-cpu {option}"
    name, *props = option.split(",")
    if name not in BUILTIN_MODELS:
        raise UserError(f"unable to find CPU model '{name}'", location)
    model = BUILTIN_MODELS[name].copy()
    type_name = f"{name}-x86_64-cpu"
    requested: dict[str, bool] = {}
    for prop in props:
        if not prop:
            continue
        # QEMU sets "+feat"/"-feat" directly and turns "feat[=value]" into a
        # global property of the CPU type; its errors say which.
        as_global = prop[0] not in "+-"
        if not as_global:
            typed, value = prop[1:], "on" if prop[0] == "+" else "off"
        else:
            typed, _, value = prop.partition("=")
            value = value if "=" in prop else "on"
        prefix = f"can't apply global {type_name}.{typed}={value}: " if as_global else ""
        feat = _ALIASES.get(typed.replace("_", "-"), typed.replace("_", "-"))
        if feat not in FEATURES:
            raise UserError(f"{prefix}Property '{type_name}.{typed}' not found", location)
        if value in ("on", "true", "yes"):
            on = True
        elif value in ("off", "false", "no"):
            on = False
        else:
            raise UserError(f"{prefix}Parameter '{typed}' expects 'on' or 'off'", location)
        model.set_feature(feat, on)
        requested[feat] = on
    return model, requested


def filter_features_for_accel(model: X86CPUModel, unsupported: dict[FeatureWord, int],
                              requested: dict[str, bool] | None = None, accel: str = "tcg") -> X86CPUModel:
    """Remove the features ``accel`` cannot provide; warn for those the user asked for."""
    out = model.copy()
    for word, mask in unsupported.items():
        present = out.features.get(word, 0)
        if not present & mask:
            continue
        for bit in range(32):
            if (present & mask) >> bit & 1:
                fname = FEATURE_NAMES[word][bit]
                if requested and fname and requested.get(fname):
                    leaf, _, reg = word.value
                    warn_report(f"{accel.upper()} doesn't support requested feature: "
                                f"CPUID.{leaf:02X}H:{reg.upper()}.{fname} [bit {bit}]")
        out.features[word] = present & ~mask
    return out


def x86_cpu_model_for(option: str | None, accel: str = "tcg") -> X86CPUModel:
    """The model ``-cpu option`` yields under ``accel`` (default: qemu64)."""
    model, requested = parse_cpu_option(option or DEFAULT_MODEL)
    if accel == "tcg":
        model = filter_features_for_accel(model, TCG_UNSUPPORTED, requested, accel)
    return model


def x86_cpu_model_names() -> list[str]:
    return sorted(BUILTIN_MODELS)


def x86_cpu_model_from_string(option: str) -> X86CPUModel:
    """``-cpu`` text to a model, filtered for the current accelerator (tcg by default)."""
    from pemu.accel.accel import current_accel

    accel = current_accel()
    name = accel.name if accel is not None else "tcg"
    return x86_cpu_model_for(option, name)
