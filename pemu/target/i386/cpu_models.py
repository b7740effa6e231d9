"""x86 CPU models and their CPUID (QEMU's builtin_x86_defs, target/i386/cpu.c).

A model is data: vendor, family/model/stepping, the feature words and the
brand string.  ``-cpu NAME,+feat,-feat,feat=on|off`` picks one and edits its
features; then the accelerator removes what it cannot honour (QEMU's
x86_cpu_filter_features) and :meth:`X86CPUModel.cpuid` answers the guest.
"""

from __future__ import annotations

from enum import Enum

from pemu.util.error import UserError, warn_report


class FeatureWord(Enum):
    """A CPUID output register that holds feature bits: (leaf, subleaf, register)."""

    CPUID_1_EDX = (0x1, 0, "edx")
    CPUID_1_ECX = (0x1, 0, "ecx")
    CPUID_6_EAX = (0x6, 0, "eax")
    CPUID_7_0_EBX = (0x7, 0, "ebx")
    CPUID_7_0_ECX = (0x7, 0, "ecx")
    CPUID_7_0_EDX = (0x7, 0, "edx")
    CPUID_7_1_EAX = (0x7, 1, "eax")
    CPUID_D_1_EAX = (0xD, 1, "eax")
    CPUID_8000_0001_EDX = (0x80000001, 0, "edx")
    CPUID_8000_0001_ECX = (0x80000001, 0, "ecx")
    CPUID_8000_0007_EDX = (0x80000007, 0, "edx")
    CPUID_8000_0008_EBX = (0x80000008, 0, "ebx")
    CPUID_SVM = (0x8000000A, 0, "edx")
    CPUID_KVM = (0x40000001, 0, "eax")

    @property
    def leaf(self) -> int:
        return self.value[0]

    @property
    def subleaf(self) -> int:
        return self.value[1]

    @property
    def register(self) -> str:
        return self.value[2]

    @property
    def label(self) -> str:
        """How QEMU's warnings name the register: "CPUID.07H:EBX", "CPUID.0DH:EAX"."""
        return f"CPUID.{self.leaf:02X}H:{self.register.upper()}"


W = FeatureWord

# Feature names by bit, as QEMU 7.2's feature_word_info spells them (-cpu help).
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
        "tsc-deadline", "aes", "xsave", None, "avx", "f16c", "rdrand", "hypervisor"),
    W.CPUID_6_EAX: (
        None, None, "arat", None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None),
    W.CPUID_7_0_EBX: (
        "fsgsbase", "tsc-adjust", "sgx", "bmi1", "hle", "avx2", None, "smep",
        "bmi2", "erms", "invpcid", "rtm", None, None, "mpx", None,
        "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma", "pcommit", "clflushopt",
        "clwb", "intel-pt", "avx512pf", "avx512er", "avx512cd", "sha-ni", "avx512bw", "avx512vl"),
    W.CPUID_7_0_ECX: (
        None, "avx512vbmi", "umip", "pku", None, "waitpkg", "avx512vbmi2", None,
        "gfni", "vaes", "vpclmulqdq", "avx512vnni", "avx512bitalg", None, "avx512-vpopcntdq", None,
        "la57", None, None, None, None, None, "rdpid", None,
        "bus-lock-detect", "cldemote", None, "movdiri", "movdir64b", None, "sgxlc", "pks"),
    W.CPUID_7_0_EDX: (
        None, None, "avx512-4vnniw", "avx512-4fmaps", "fsrm", None, None, None,
        "avx512-vp2intersect", None, "md-clear", None, None, None, "serialize", None,
        "tsx-ldtrk", None, None, "arch-lbr", None, None, "amx-bf16", "avx512-fp16",
        "amx-tile", "amx-int8", "spec-ctrl", "stibp", None, "arch-capabilities", "core-capability", "ssbd"),
    W.CPUID_7_1_EAX: (
        None, None, None, None, "avx-vnni", "avx512-bf16", None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None),
    W.CPUID_D_1_EAX: (
        "xsaveopt", "xsavec", "xgetbv1", "xsaves", "xfd", None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None),
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
    W.CPUID_8000_0007_EDX: (
        None, None, None, None, None, None, None, None,
        "invtsc", None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None,
        None, None, None, None, None, None, None, None),
    W.CPUID_8000_0008_EBX: (
        "clzero", None, "xsaveerptr", None, None, None, None, None,
        None, "wbnoinvd", None, None, "ibpb", None, "ibrs", "amd-stibp",
        None, None, None, None, None, None, None, None,
        "amd-ssbd", "virt-ssbd", "amd-no-ssb", None, None, None, None, None),
    W.CPUID_SVM: (
        "npt", "lbrv", "svm-lock", "nrip-save", "tsc-scale", "vmcb-clean", "flushbyasid", "decodeassists",
        None, None, "pause-filter", None, "pfthreshold", "avic", None, "v-vmsave-vmload",
        "vgif", None, None, None, None, None, None, None,
        None, None, None, None, "svme-addr-chk", None, None, None),
    W.CPUID_KVM: (
        "kvmclock", "kvm-nopiodelay", "kvm-mmu", "kvmclock", "kvm-asyncpf", "kvm-steal-time",
        "kvm-pv-eoi", "kvm-pv-unhalt", None, "kvm-pv-tlb-flush", "kvm-asyncpf-vmexit",
        "kvm-pv-ipi", "kvm-poll-control", "kvm-pv-sched-yield", "kvm-asyncpf-int", "kvm-msi-ext-dest-id",
        None, None, None, None, None, None, None, None,
        "kvmclock-stable-bit", None, None, None, None, None, None, None),
}

# QEMU's other spellings of the same features (after "_" became "-", as QEMU's
# feat2prop does).
_ALIASES = {"sse3": "pni", "pclmuldq": "pclmulqdq", "sse4-1": "sse4.1", "sse4-2": "sse4.2", "i64": "lm",
            "xd": "nx", "ffxsr": "fxsr-opt"}

# On AMD CPUs CPUID[8000_0001].EDX repeats these bits of CPUID[1].EDX (QEMU's
# CPUID_EXT2_AMD_ALIASES): fpu vme de pse tsc msr pae mce cx8 apic mtrr pge mca
# cmov pat pse36 mmx fxsr.
AMD_ALIASED_1_EDX = 0x0183F3FF


def _feature_index() -> dict[str, tuple[FeatureWord, int]]:
    index: dict[str, tuple[FeatureWord, int]] = {}
    for word, names in FEATURE_NAMES.items():
        for bit, name in enumerate(names):
            if name and name not in index:
                index[name] = (word, bit)
    return index


FEATURES = _feature_index()
# Names that stand for more than one bit: "kvmclock" is both of KVM's clock MSR
# pairs (bits 0 and 3), as QEMU's property of that name sets both.
_MORE_BITS: dict[str, tuple[tuple[FeatureWord, int], ...]] = {"kvmclock": ((W.CPUID_KVM, 3),)}


def _bits_of(name: str) -> tuple[tuple[FeatureWord, int], ...]:
    return (FEATURES[name], *_MORE_BITS.get(name, ()))


def feature_bits(*names: str) -> dict[FeatureWord, int]:
    words: dict[FeatureWord, int] = {}
    for name in names:
        for word, bit in _bits_of(name):
            words[word] = words.get(word, 0) | (1 << bit)
    return words


def canonical_feature(name: str) -> str:
    """QEMU's spelling of a feature typed on -cpu ("sse4_2" is "sse4.2")."""
    dashed = name.replace("_", "-")
    return _ALIASES.get(dashed, dashed)


class X86CPUModel:
    """One CPU model: what CPUID reports, after -cpu options and filtering."""

    def __init__(self, name: str, vendor: str, family: int, model: int, stepping: int, model_id: str,
                 features: dict[FeatureWord, int] | None = None, *, level: int = 0xD, xlevel: int = 0x8000000A,
                 phys_bits: int = 40, virt_bits: int = 48, apic_id: int = 0, description: str = "",
                 check: bool = True, enforce: bool = False, host_phys_bits: bool = False,
                 migratable: bool | None = None) -> None:
        self.name = name
        self.vendor = vendor
        self.family = family
        self.model = model
        self.stepping = stepping
        self.model_id = model_id
        self.features: dict[FeatureWord, int] = {} if features is None else features
        self.level = level
        self.xlevel = xlevel
        self.phys_bits = phys_bits
        self.virt_bits = virt_bits
        self.apic_id = apic_id
        self.description = description
        # -cpu properties beyond the features (QEMU's X86CPU properties of the same names).
        self.check = check  # warn about each feature the accelerator drops
        self.enforce = enforce  # ... and refuse to start then
        self.host_phys_bits = host_phys_bits
        self.migratable = migratable  # host and max only: leave out what cannot migrate (invtsc)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, X86CPUModel):
            return NotImplemented
        return vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"X86CPUModel({', '.join(f'{key}={value!r}' for key, value in vars(self).items())})"

    def copy(self) -> X86CPUModel:
        """A model to edit: the same values, its own features."""
        return X86CPUModel(self.name, self.vendor, self.family, self.model, self.stepping, self.model_id,
                           dict(self.features), level=self.level, xlevel=self.xlevel, phys_bits=self.phys_bits,
                           virt_bits=self.virt_bits, apic_id=self.apic_id, description=self.description,
                           check=self.check, enforce=self.enforce, host_phys_bits=self.host_phys_bits,
                           migratable=self.migratable)

    def has(self, name: str) -> bool:
        word, bit = FEATURES[name]
        return bool(self.features.get(word, 0) >> bit & 1)

    def set_feature(self, name: str, on: bool) -> None:
        for word, bit in _bits_of(name):
            value = self.features.get(word, 0)
            self.features[word] = value | (1 << bit) if on else value & ~(1 << bit)

    def feature_names(self) -> list[str]:
        """The names of the features set, in CPUID order."""
        return [name for word, names in FEATURE_NAMES.items() for bit, name in enumerate(names)
                if name and self.features.get(word, 0) >> bit & 1 and FEATURES[name] == (word, bit)]

    @property
    def is_amd(self) -> bool:
        return self.vendor in ("AuthenticAMD", "HygonGenuine")

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
        if leaf == 6:
            return f(W.CPUID_6_EAX, 0), 0, 0, 0
        if leaf == 7:
            if subleaf == 0:
                max_subleaf = 1 if f(W.CPUID_7_1_EAX, 0) else 0
                return max_subleaf, f(W.CPUID_7_0_EBX, 0), f(W.CPUID_7_0_ECX, 0), f(W.CPUID_7_0_EDX, 0)
            if subleaf == 1:
                return f(W.CPUID_7_1_EAX, 0), 0, 0, 0
            return 0, 0, 0, 0
        if leaf == 0xD:
            if not self.has("xsave"):
                return 0, 0, 0, 0
            if subleaf == 0:
                return 0x3, 0x240, 0x240, 0  # x87 and SSE state: legacy area + header
            if subleaf == 1:
                return f(W.CPUID_D_1_EAX, 0), 0, 0, 0
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
            edx = f(W.CPUID_8000_0001_EDX, 0)
            if self.is_amd:
                edx |= f(W.CPUID_1_EDX, 0) & AMD_ALIASED_1_EDX
            return self.cpuid_version, 0, f(W.CPUID_8000_0001_ECX, 0), edx
        if 0x80000002 <= leaf <= 0x80000004:
            raw = self.model_id.encode("ascii", "replace")[:47].ljust(48, b"\0")
            chunk = raw[(leaf - 0x80000002) * 16:][:16]
            regs = [int.from_bytes(chunk[i:i + 4], "little") for i in range(0, 16, 4)]
            return regs[0], regs[1], regs[2], regs[3]
        if leaf == 0x80000005:
            return 0x01FF01FF, 0x01FF01FF, 0x40020140, 0x40020140
        if leaf == 0x80000006:
            return 0, 0x42004200, 0x02008140, 0x00808140
        if leaf == 0x80000007:
            return 0, 0, 0, f(W.CPUID_8000_0007_EDX, 0)
        if leaf == 0x80000008:
            return self.phys_bits | self.virt_bits << 8, f(W.CPUID_8000_0008_EBX, 0), 0, 0
        if leaf == 0x8000000A:
            if not self.has("svm"):
                return 0, 0, 0, 0
            return 1, 0x10, 0, f(W.CPUID_SVM, 0)  # SVM revision 1, 16 ASIDs
        return 0, 0, 0, 0


# --- the models -------------------------------------------------------------------------------
#
# QEMU 7.2's builtin_x86_defs (the "-v1" definitions, which `-cpu NAME` gives on
# pc-q35-7.2) as data: vendor, family, model, stepping, CPUID levels, model id
# and the features.  QEMU adds "hypervisor" to every named model.


def _model(name: str, vendor: str, family: int, model: int, stepping: int, level: int, xlevel: int,
           model_id: str, features: str, description: str | None = None) -> X86CPUModel:
    return X86CPUModel(name, vendor, family, model, stepping, model_id,
                       feature_bits(*features.split(), "hypervisor"), level=level, xlevel=xlevel,
                       description=model_id if description is None else description)


_NAMED_MODELS = [
    _model("qemu64", "AuthenticAMD", 15, 107, 1, 0xD, 0x8000000A, "QEMU Virtual CPU version 2.5+",
           "fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni cx16 syscall nx lm lahf-lm svm"),
    _model("qemu32", "GenuineIntel", 6, 6, 3, 0x4, 0x80000004, "QEMU Virtual CPU version 2.5+",
           "fpu de pse tsc msr pae mce cx8 apic sep pge cmov pat mmx fxsr sse sse2 pni"),
    _model("kvm64", "GenuineIntel", 15, 6, 1, 0xD, 0x80000008, "Common KVM processor",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni cx16 syscall nx lm"),
    _model("kvm32", "GenuineIntel", 15, 6, 1, 0x5, 0x80000008, "Common 32-bit KVM processor",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 pni"),
    _model("Nehalem", "GenuineIntel", 6, 26, 3, 0xB, 0x80000008, "Intel Core i7 9xx (Nehalem Class Core i7)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni ssse3 cx16 sse4.1 sse4.2 popcnt syscall nx lm lahf-lm"),
    _model("Westmere", "GenuineIntel", 6, 44, 1, 0xB, 0x80000008, "Westmere E56xx/L56xx/X56xx (Nehalem-C)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 cx16 sse4.1 sse4.2 popcnt aes syscall nx lm lahf-lm arat"),
    _model("SandyBridge", "GenuineIntel", 6, 42, 1, 0xD, 0x80000008, "Intel Xeon E312xx (Sandy Bridge)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 cx16 sse4.1 sse4.2 x2apic popcnt tsc-deadline aes xsave avx "
           "syscall nx rdtscp lm lahf-lm xsaveopt arat"),
    _model("IvyBridge", "GenuineIntel", 6, 58, 9, 0xD, 0x80000008, "Intel Xeon E3-12xx v2 (Ivy Bridge)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 cx16 sse4.1 sse4.2 x2apic popcnt tsc-deadline aes xsave avx f16c rdrand "
           "syscall nx rdtscp lm lahf-lm fsgsbase smep erms xsaveopt arat"),
    _model("Haswell", "GenuineIntel", 6, 60, 4, 0xD, 0x80000008, "Intel Core Processor (Haswell)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 fma cx16 pcid sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave avx "
           "f16c rdrand syscall nx rdtscp lm lahf-lm abm fsgsbase bmi1 hle avx2 smep bmi2 erms invpcid rtm "
           "xsaveopt arat"),
    _model("Broadwell", "GenuineIntel", 6, 61, 2, 0xD, 0x80000008, "Intel Core Processor (Broadwell)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 fma cx16 pcid sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave avx "
           "f16c rdrand syscall nx rdtscp lm lahf-lm abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep bmi2 erms "
           "invpcid rtm rdseed adx smap xsaveopt arat"),
    _model("Skylake-Client", "GenuineIntel", 6, 94, 3, 0xD, 0x80000008, "Intel Core Processor (Skylake)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 fma cx16 pcid sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave avx "
           "f16c rdrand syscall nx rdtscp lm lahf-lm abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep bmi2 erms "
           "invpcid rtm rdseed adx smap xsaveopt xsavec xgetbv1 arat"),
    _model("Skylake-Server", "GenuineIntel", 6, 85, 4, 0xD, 0x80000008, "Intel Xeon Processor (Skylake)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 fma cx16 pcid sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave avx "
           "f16c rdrand syscall nx pdpe1gb rdtscp lm lahf-lm abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep "
           "bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl "
           "pku xsaveopt xsavec xgetbv1 arat"),
    _model("Cascadelake-Server", "GenuineIntel", 6, 85, 6, 0xD, 0x80000008, "Intel Xeon Processor (Cascadelake)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 fma cx16 pcid sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave avx "
           "f16c rdrand syscall nx pdpe1gb rdtscp lm lahf-lm abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep "
           "bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl "
           "pku avx512vnni spec-ctrl ssbd xsaveopt xsavec xgetbv1 arat"),
    _model("Icelake-Server", "GenuineIntel", 6, 134, 0, 0xD, 0x80000008, "Intel Xeon Processor (Icelake)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 fma cx16 pcid sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave avx "
           "f16c rdrand syscall nx pdpe1gb rdtscp lm lahf-lm abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep "
           "bmi2 erms invpcid rtm avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl "
           "avx512vbmi umip pku avx512vbmi2 gfni vaes vpclmulqdq avx512vnni avx512bitalg avx512-vpopcntdq la57 "
           "spec-ctrl ssbd wbnoinvd xsaveopt xsavec xgetbv1 arat"),
    _model("EPYC", "AuthenticAMD", 23, 1, 2, 0xD, 0x8000001E, "AMD EPYC Processor",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq monitor ssse3 fma cx16 sse4.1 sse4.2 movbe popcnt aes xsave avx f16c rdrand syscall "
           "nx mmxext fxsr-opt pdpe1gb rdtscp lm lahf-lm svm cr8legacy abm sse4a misalignsse 3dnowprefetch osvw "
           "topoext fsgsbase bmi1 avx2 smep bmi2 rdseed adx smap clflushopt sha-ni xsaveopt xsavec xgetbv1 arat "
           "npt nrip-save"),
    _model("Opteron_G1", "AuthenticAMD", 15, 6, 1, 0x5, 0x80000008, "AMD Opteron 240 (Gen 1 Class Opteron)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni syscall nx lm"),
    _model("Opteron_G2", "AuthenticAMD", 15, 6, 1, 0x5, 0x8000000A, "AMD Opteron 22xx (Gen 2 Class Opteron)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni cx16 syscall nx lm lahf-lm svm"),
    _model("Opteron_G3", "AuthenticAMD", 16, 2, 3, 0x5, 0x8000000A, "AMD Opteron 23xx (Gen 3 Class Opteron)",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni monitor cx16 popcnt syscall nx rdtscp lm lahf-lm svm abm sse4a misalignsse"),
    _model("Opteron_G4", "AuthenticAMD", 21, 1, 2, 0xD, 0x8000001A, "AMD Opteron 62xx class CPU",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 cx16 sse4.1 sse4.2 popcnt aes xsave avx syscall nx pdpe1gb rdtscp lm lahf-lm "
           "svm abm sse4a misalignsse 3dnowprefetch xop fma4 npt nrip-save"),
    _model("Opteron_G5", "AuthenticAMD", 21, 2, 0, 0xD, 0x8000001A, "AMD Opteron 63xx class CPU",
           "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
           "pni pclmulqdq ssse3 fma cx16 sse4.1 sse4.2 popcnt aes xsave avx f16c syscall nx pdpe1gb rdtscp lm "
           "lahf-lm svm abm sse4a misalignsse 3dnowprefetch xop fma4 tbm npt nrip-save"),
]

# Everything pemu's software CPU can offer; the accelerator's filter trims it further.
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

GENERIC_MODELS = ("base", "host", "max")
BUILTIN_MODELS: dict[str, X86CPUModel] = {m.name: m for m in _NAMED_MODELS}
BUILTIN_MODELS["max"] = X86CPUModel("max", "AuthenticAMD", 15, 107, 1, "QEMU TCG CPU version 2.5+", MAX_FEATURES,
                                    description="Enables all features supported by the accelerator in the "
                                                "current host", migratable=True)
BUILTIN_MODELS["base"] = X86CPUModel("base", "AuthenticAMD", 0, 0, 0, "", {}, level=0xD, xlevel=0x80000008,
                                     description="base CPU model type with no features enabled")
# -cpu host takes everything from the accelerator (AccelOps.host_cpu_model); this is its -cpu help entry.
BUILTIN_MODELS["host"] = X86CPUModel("host", "", 0, 0, 0, "", {},
                                     description="processor with all supported host features ")
# QEMU's versioned names: NAME-v1 is what NAME means on pc-q35-7.2.
VERSIONED_MODELS = {f"{m.name}-v1": m.name for m in _NAMED_MODELS}
DEFAULT_MODEL = "qemu64"
ALIAS_DESCRIPTION = "(alias configured by machine type)"

# What the Unicorn engine cannot honour (see /work/shared/notes/unicorn-facts.md): the local
# APIC only in xAPIC mode (RDMSR/WRMSR cannot be hooked, so x2APIC and the TSC deadline are unusable), no AVX
# state, no MONITOR/MWAIT wake-up, paravirt leaves that need a hypervisor, and instructions
# the QEMU 5 translator lacks or that need a CR4 bit we do not model.
TCG_UNSUPPORTED = feature_bits(
    "x2apic", "tsc-deadline", "monitor", "avx", "avx2", "f16c", "fma", "xsave",
    "rdrand", "rdseed", "pcid", "invpcid", "fsgsbase", "bmi1", "bmi2", "adx", "smap", "smep", "pku",
    "umip", "la57", "rdpid", "hle", "rtm", "mpx", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
    "avx512ifma", "avx512vbmi", "sha-ni", "ss", "vme", "cr8legacy", "3dnowprefetch",
    "kvmclock", "kvm-nopiodelay", "kvm-mmu", "kvm-asyncpf", "kvm-steal-time", "kvm-pv-eoi",
    "kvm-pv-unhalt", "kvmclock-stable-bit", "spec-ctrl", "arch-capabilities", "ssbd", "stibp", "md-clear",
    # beyond the engine's translator or pemu's model of the machine:
    "svm", "npt", "nrip-save", "vmx", "smx", "xsaveopt", "xsavec", "xgetbv1", "xsaves", "avx512vbmi2",
    "gfni", "vaes", "vpclmulqdq", "avx512vnni", "avx512bitalg", "avx512-vpopcntdq", "avx512-4vnniw",
    "avx512-4fmaps", "avx512pf", "avx512er", "avx512-bf16", "avx-vnni", "avx512-fp16", "amx-bf16", "amx-tile",
    "amx-int8", "xop", "fma4", "tbm", "misalignsse", "osvw", "topoext", "wbnoinvd", "clzero", "waitpkg",
    "movdiri", "movdir64b", "cldemote", "serialize", "tsx-ldtrk", "arch-lbr", "sgx", "sgxlc", "pks",
    "intel-pt", "invtsc", "arat", "lwp", "ibs", "skinit", "wdt", "tce", "xsaveerptr", "fsrm",
    "avx512-vp2intersect", "core-capability", "bus-lock-detect", "xfd", "ibpb", "ibrs", "amd-stibp",
    "amd-ssbd", "virt-ssbd", "amd-no-ssb", "pcommit", "tsc-adjust", "dtes64", "ds-cpl", "est", "tm2",
    "xtpr", "pdcm", "dca", "cid", "pn", "ds", "acpi", "ht", "tm", "ia64", "pbe", "3dnowext", "3dnow",
    "cmp-legacy", "extapic", "nodeid-msr", "perfctr-core", "perfctr-nb", "lbrv", "svm-lock", "tsc-scale",
    "vmcb-clean", "flushbyasid", "decodeassists", "pause-filter", "pfthreshold", "avic", "v-vmsave-vmload",
    "vgif", "svme-addr-chk", "kvm-pv-tlb-flush", "kvm-asyncpf-vmexit", "kvm-pv-ipi", "kvm-poll-control",
    "kvm-pv-sched-yield", "kvm-asyncpf-int", "kvm-msi-ext-dest-id")

# What an accelerator turns off before the user's -cpu options apply, silently
# (QEMU's tcg_default_props and kvm_default_props; pemu's software CPU adds svm).
ACCEL_DEFAULT_FEATURES: dict[str, dict[str, bool]] = {
    "tcg": {"vme": False, "svm": False},
    "kvm": {"acpi": False, "monitor": False, "svm": False},
}

# QEMU's Hyper-V enlightenments (hv-*): recognised on -cpu, not offered by pemu.
HYPERV_PROPERTIES = frozenset((
    "hv-relaxed", "hv-vapic", "hv-time", "hv-crash", "hv-reset", "hv-vpindex", "hv-runtime", "hv-synic",
    "hv-stimer", "hv-stimer-direct", "hv-frequencies", "hv-reenlightenment", "hv-tlbflush", "hv-tlbflush-ext",
    "hv-tlbflush-direct", "hv-evmcs", "hv-ipi", "hv-avic", "hv-emsr-bitmap", "hv-xmm-input", "hv-spinlocks",
    "hv-vendor-id", "hv-passthrough", "hv-enforce-cpuid", "hv-no-nonarch-coresharing", "hv-syndbg",
    "hv-version-id-build", "hv-version-id-major", "hv-version-id-minor", "hv-version-id-spack",
    "hv-version-id-sbranch", "hv-version-id-snumber"))


def _wrap_words(words: list[str], width: int = 75, indent: str = "  ") -> list[str]:
    """Words in lines of at most ``width`` columns, each line indented (QEMU's
    listflags layout for ``-cpu help``)."""
    lines: list[str] = []
    line = indent
    for word in words:
        if line != indent and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent
        line = line + word if line == indent else f"{line} {word}"
    if line != indent:
        lines.append(line)
    return lines


def x86_cpu_model_names() -> list[str]:
    """Every name -cpu takes, in QEMU's -cpu help order: by name, the generic
    base, host and max last."""
    names = list(BUILTIN_MODELS) + list(VERSIONED_MODELS)
    return sorted(names, key=lambda name: (name in GENERIC_MODELS, name))


def x86_cpu_list() -> str:
    """The text of ``-cpu help`` in QEMU's shape: ``x86 NAME  DESCRIPTION``
    (the name padded to 20 columns), then the recognized CPUID flags."""
    lines = ["Available CPUs:"]
    for name in x86_cpu_model_names():
        if name in VERSIONED_MODELS:
            description = BUILTIN_MODELS[VERSIONED_MODELS[name]].description
        elif name in GENERIC_MODELS:
            description = BUILTIN_MODELS[name].description
        else:
            description = ALIAS_DESCRIPTION
        lines.append(f"x86 {name:<20}  {description}".rstrip())
    lines += ["", "Recognized CPUID flags:"]
    lines += _wrap_words(sorted(FEATURES))
    return "\n".join(lines) + "\n"


# --- -cpu MODEL,options ---------------------------------------------------------------------------


def _parse_bool(value: str) -> bool | None:
    return {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}.get(value)


def parse_cpu_option(option: str, host_model: X86CPUModel | None = None) -> tuple[X86CPUModel, dict[str, bool]]:
    """Parse ``-cpu NAME[,+feat|-feat|feat=on|off|prop=value]...`` as QEMU's
    x86_cpu_parse_featurestr does.

    Returns the edited model and the features the user set explicitly.
    ``host_model`` is the accelerator's ``-cpu host`` (None: it has none).
    """
    location = f"-cpu {option}"
    name, *props = option.split(",")
    name = VERSIONED_MODELS.get(name, name)
    if name not in BUILTIN_MODELS:
        raise UserError(f"unable to find CPU model '{name}'", location)
    if name == "host":
        if host_model is None:
            raise UserError("CPU model 'host' requires KVM or HVF", location)
        model = host_model.copy()
    else:
        model = BUILTIN_MODELS[name].copy()
    type_name = f"{name}-x86_64-cpu"
    requested: dict[str, bool] = {}
    plus: list[str] = []
    minus: list[str] = []
    for prop in props:
        if not prop:
            continue
        if prop[0] in "+-":
            feat = canonical_feature(prop[1:])
            if feat not in FEATURES:
                raise UserError(f"Property '{type_name}.{prop[1:]}' not found", location)
            (plus if prop[0] == "+" else minus).append(feat)
            continue
        # "key[=value]" is a global property of the CPU type; QEMU's errors say so.
        key, _, value = prop.partition("=")
        value = value if "=" in prop else "on"
        typed = key
        key = canonical_feature(key)
        prefix = f"can't apply global {type_name}.{key}={value}: "
        if key in FEATURES or key in ("check", "enforce", "host-phys-bits", "migratable"):
            on = _parse_bool(value)
            if on is None:
                raise UserError(f"{prefix}Parameter '{key}' expects 'on' or 'off'", location)
            if key in FEATURES:
                model.set_feature(key, on)
                requested[key] = on
            elif key == "migratable":
                if name not in ("host", "max"):
                    raise UserError(f"{prefix}Property '{type_name}.{key}' not found", location)
                model.migratable = on
            else:
                setattr(model, key.replace("-", "_"), on)
        elif key == "vendor":
            if len(value) != 12 or not value.isascii():
                raise UserError(f"{prefix}Property '.vendor' doesn't take value '{value}'", location)
            model.vendor = value
        elif key == "model-id":
            model.model_id = value
        elif key in ("phys-bits", "family", "model", "stepping", "level", "xlevel"):
            try:
                number = int(value, 0)
            except ValueError:
                raise UserError(f"{prefix}Parameter '{key}' expects an integer", location) from None
            limits = {"family": 0xFF + 0xF, "model": 0xFF, "stepping": 0xF, "phys-bits": 0xFFFFFFFF,
                      "level": 0xFFFFFFFF, "xlevel": 0xFFFFFFFF}
            if not 0 <= number <= limits[key]:
                raise UserError(f"{prefix}Property '.{key}' doesn't take value '{value}'", location)
            setattr(model, key.replace("-", "_"), number)
        elif key in HYPERV_PROPERTIES:
            raise UserError(f"{prefix}Hyper-V enlightenment '{key}' is not supported by pemu", location)
        else:
            raise UserError(f"{prefix}Property '{type_name}.{typed}' not found", location)
    for feat in plus:
        if requested.get(feat) is False:
            _warn_ambiguous(f"+{feat}", f"{feat}=off")
        model.set_feature(feat, True)
        requested[feat] = True
    for feat in minus:
        if requested.get(feat) is True:
            _warn_ambiguous(f"-{feat}", f"{feat}=on")
        model.set_feature(feat, False)
        requested[feat] = False
    if not 32 <= model.phys_bits <= 52:
        raise UserError(f"phys-bits should be between 32 and 52  (but is {model.phys_bits})", location)
    return model, requested


def _warn_ambiguous(legacy: str, prop: str) -> None:
    warn_report(f'Ambiguous CPU model string. Don\'t mix both "{legacy}" and "{prop}"')
    warn_report("Compatibility of ambiguous CPU model strings won't be kept on future QEMU versions")


def apply_accel_defaults(model: X86CPUModel, accel: str, requested: dict[str, bool]) -> None:
    """The accelerator's default feature settings, where the user set nothing."""
    for feat, on in ACCEL_DEFAULT_FEATURES.get(accel, {}).items():
        if feat not in requested:
            model.set_feature(feat, on)


def filter_features_for_accel(model: X86CPUModel, unsupported: dict[FeatureWord, int],
                              requested: dict[str, bool] | None = None, accel: str = "tcg",
                              check_model: bool = False) -> X86CPUModel:
    """Remove the features ``accel`` cannot provide (QEMU's x86_cpu_filter_features),
    with QEMU's warning for each: every dropped one when ``check_model`` (the
    user chose the model), else those the user asked for by name.  With
    ``enforce`` any dropped feature stops the start."""
    out = model.copy()
    subject = "TCG" if accel == "tcg" else "host"
    dropped = False
    for word, mask in unsupported.items():
        present = out.features.get(word, 0)
        if not present & mask:
            continue
        for bit in range(32):
            if (present & mask) >> bit & 1:
                fname = FEATURE_NAMES[word][bit] if word in FEATURE_NAMES else None
                label = fname or f"bit{bit}"
                if model.check and (check_model or model.enforce or (requested and requested.get(label))):
                    warn_report(f"{subject} doesn't support requested feature: {word.label}.{label} [bit {bit}]")
                dropped = True
        out.features[word] = present & ~mask
    if dropped and model.enforce:
        raise UserError(f"{subject[0].upper() + subject[1:]} doesn't support requested features")
    return out


def x86_cpu_model_for(option: str | None, accel: str = "tcg", *, unsupported: dict[FeatureWord, int] | None = None,
                      host_model: X86CPUModel | None = None, check_model: bool = False) -> X86CPUModel:
    """The model ``-cpu option`` yields under ``accel`` (default: qemu64)."""
    model, requested = parse_cpu_option(option or DEFAULT_MODEL, host_model)
    if model.name in ("max", "host"):
        check_model = False  # "all the accelerator offers": only what was asked for by name is missed
    apply_accel_defaults(model, accel, requested)
    if accel == "tcg":
        if model.host_phys_bits:
            raise UserError("host-phys-bits=on needs an accelerator that runs on the host's CPU (kvm)",
                            f"-cpu {option}")
        unsupported = TCG_UNSUPPORTED if unsupported is None else unsupported
    if unsupported:
        model = filter_features_for_accel(model, unsupported, requested, accel, check_model)
    if model.migratable and model.name in ("host", "max"):
        model.set_feature("invtsc", False)
    return model


def x86_cpu_model_from_string(option: str, check_model: bool = False) -> X86CPUModel:
    """``-cpu`` text to a model, filtered for the current accelerator (tcg by default)."""
    from pemu.accel.accel import current_accel

    accel = current_accel()
    if accel is None:
        return x86_cpu_model_for(option, "tcg", check_model=check_model)
    model = x86_cpu_model_for(option, accel.name, unsupported=accel.cpu_model_filter(),
                              host_model=accel.host_cpu_model(), check_model=check_model)
    if model.host_phys_bits:
        model.phys_bits = accel.host_phys_bits() or model.phys_bits
    return model
