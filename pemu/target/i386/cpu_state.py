"""Architectural state of one x86 CPU (QEMU's CPUX86State, target/i386/cpu.h).

This is the accelerator-neutral copy of the CPU registers: the reset state,
what the loader sets up for a direct Linux boot, and what the monitor shows.
While a vCPU runs, the accelerator holds the live state; it copies it here on
``cpu_synchronize_state`` and loads it back on ``cpu_synchronize_post_reset``.

Segment caches keep QEMU's ``flags`` encoding: the descriptor's high dword
masked with 0x00F0FF00 (type, S, DPL, P, AVL, L, D/B, G).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# -- EFLAGS ---------------------------------------------------------------
CF_MASK = 1 << 0
PF_MASK = 1 << 2
AF_MASK = 1 << 4
ZF_MASK = 1 << 6
SF_MASK = 1 << 7
TF_MASK = 1 << 8
IF_MASK = 1 << 9
DF_MASK = 1 << 10
OF_MASK = 1 << 11
IOPL_MASK = 3 << 12
NT_MASK = 1 << 14
RF_MASK = 1 << 16
VM_MASK = 1 << 17
AC_MASK = 1 << 18
VIF_MASK = 1 << 19
VIP_MASK = 1 << 20
ID_MASK = 1 << 21
EFLAGS_FIXED = 1 << 1  # bit 1 always reads as one

# -- control registers -----------------------------------------------------
CR0_PE_MASK = 1 << 0
CR0_MP_MASK = 1 << 1
CR0_EM_MASK = 1 << 2
CR0_TS_MASK = 1 << 3
CR0_ET_MASK = 1 << 4
CR0_NE_MASK = 1 << 5
CR0_WP_MASK = 1 << 16
CR0_AM_MASK = 1 << 18
CR0_NW_MASK = 1 << 29
CR0_CD_MASK = 1 << 30
CR0_PG_MASK = 1 << 31
CR0_RESET = CR0_CD_MASK | CR0_NW_MASK | CR0_ET_MASK  # 0x60000010

CR4_PSE_MASK = 1 << 4
CR4_PAE_MASK = 1 << 5
CR4_PGE_MASK = 1 << 7
CR4_OSFXSR_MASK = 1 << 9
CR4_LA57_MASK = 1 << 12
CR4_SMEP_MASK = 1 << 20
CR4_SMAP_MASK = 1 << 21
CR4_VME_MASK = 1 << 0
CR4_OSXSAVE_MASK = 1 << 18
CR4_PCIDE_MASK = 1 << 17

# -- segment descriptor flags (QEMU's DESC_*_MASK) -------------------------
DESC_TYPE_SHIFT = 8
DESC_A_MASK = 1 << 8
DESC_W_MASK = 1 << 9  # data: writable
DESC_R_MASK = 1 << 9  # code: readable
DESC_C_MASK = 1 << 10  # code: conforming
DESC_CS_MASK = 1 << 11  # code (vs data)
DESC_S_MASK = 1 << 12  # code/data (vs system)
DESC_DPL_SHIFT = 13
DESC_P_MASK = 1 << 15
DESC_L_MASK = 1 << 21
DESC_B_MASK = 1 << 22
DESC_G_MASK = 1 << 23
DESC_FLAGS_MASK = 0x00F0FF00

# -- MSRs ------------------------------------------------------------------
class MSR(IntEnum):
    IA32_TSC = 0x10
    IA32_APICBASE = 0x1B
    IA32_MISC_ENABLE = 0x1A0
    IA32_SYSENTER_CS = 0x174
    IA32_SYSENTER_ESP = 0x175
    IA32_SYSENTER_EIP = 0x176
    PAT = 0x277
    EFER = 0xC0000080
    STAR = 0xC0000081
    LSTAR = 0xC0000082
    CSTAR = 0xC0000083
    FMASK = 0xC0000084
    FSBASE = 0xC0000100
    GSBASE = 0xC0000101
    KERNELGSBASE = 0xC0000102
    TSC_AUX = 0xC0000103
    IA32_TSC_DEADLINE = 0x6E0


class Efer(IntFlag):
    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11


# XCR0: the x87 state is always on.
XSTATE_FP = 1 << 0
XSTATE_SSE = 1 << 1
XSTATE_YMM = 1 << 2
FPUC_RESET = 0x37F
MXCSR_RESET = 0x1F80
DR6_RESET = 0xFFFF0FF0
DR7_RESET = 0x400

MSR_IA32_APICBASE_BSP = 1 << 8
MSR_IA32_APICBASE_ENABLE = 1 << 11
APIC_DEFAULT_ADDRESS = 0xFEE00000
MSR_IA32_MISC_ENABLE_DEFAULT = 1  # fast strings
PAT_RESET = 0x0007040600070406


class X86MPState(IntEnum):
    """What a processor is doing between instructions (KVM's mp_state)."""

    RUNNABLE = 0
    HALTED = 1          # HLT: waits for an interrupt
    WAIT_FOR_SIPI = 2   # an AP after RESET or INIT: waits for a start-up IPI
    SIPI_RECEIVED = 3   # a start-up IPI accepted, not yet taken
    UNINITIALIZED = 4   # an AP after RESET, before its first INIT (KVM does not start it on a SIPI)


class SegReg(IntEnum):
    """Segment register numbers, in QEMU's (and the hardware's) order."""

    ES = 0
    CS = 1
    SS = 2
    DS = 3
    FS = 4
    GS = 5


class Reg(IntEnum):
    RAX = 0
    RCX = 1
    RDX = 2
    RBX = 3
    RSP = 4
    RBP = 5
    RSI = 6
    RDI = 7
    R8 = 8
    R9 = 9
    R10 = 10
    R11 = 11
    R12 = 12
    R13 = 13
    R14 = 14
    R15 = 15


class SegmentCache:
    """A segment register with its hidden part (QEMU's SegmentCache)."""

    __slots__ = ("selector", "base", "limit", "flags")

    def __init__(self, selector: int = 0, base: int = 0, limit: int = 0xFFFF, flags: int = 0) -> None:
        self.selector = selector
        self.base = base
        self.limit = limit
        self.flags = flags

    def _fields(self) -> tuple[int, int, int, int]:
        return (self.selector, self.base, self.limit, self.flags)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentCache):
            return NotImplemented
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        return (f"SegmentCache(selector={self.selector:#x}, base={self.base:#x}, limit={self.limit:#x}, "
                f"flags={self.flags:#x})")

    @property
    def dpl(self) -> int:
        return (self.flags >> DESC_DPL_SHIFT) & 3

    @property
    def present(self) -> bool:
        return bool(self.flags & DESC_P_MASK)

    def copy(self) -> SegmentCache:
        return SegmentCache(self.selector, self.base, self.limit, self.flags)


def real_mode_segment(selector: int,
                      flags: int = DESC_P_MASK | DESC_S_MASK | DESC_W_MASK | DESC_A_MASK) -> SegmentCache:
    selector &= 0xFFFF
    return SegmentCache(selector, selector << 4, 0xFFFF, flags)


def _flat_segment(selector: int, code: bool) -> SegmentCache:
    type_bits = (DESC_CS_MASK | DESC_R_MASK) if code else DESC_W_MASK
    flags = DESC_G_MASK | DESC_B_MASK | DESC_P_MASK | DESC_S_MASK | DESC_A_MASK | type_bits
    return SegmentCache(selector, 0, 0xFFFFFFFF, flags)


class DescriptorTable:
    """GDTR / IDTR."""

    __slots__ = ("base", "limit")

    def __init__(self, base: int = 0, limit: int = 0xFFFF) -> None:
        self.base = base
        self.limit = limit


class CPUX86State:
    """The registers of one x86-64 CPU, in their state after RESET#."""

    regs: list[int]
    rip: int
    rflags: int

    segs: list[SegmentCache]
    ldt: SegmentCache
    tr: SegmentCache
    gdt: DescriptorTable
    idt: DescriptorTable

    cr0: int
    cr2: int
    cr3: int
    cr4: int
    cr8: int
    efer: int

    star: int
    lstar: int
    cstar: int
    fmask: int
    kernel_gs_base: int
    sysenter_cs: int
    sysenter_esp: int
    sysenter_eip: int
    tsc: int
    tsc_aux: int
    apic_base: int
    pat: int
    misc_enable: int

    # Debug, x87, SSE and AVX state.  The x87 registers are kept as FXSAVE
    # lays them out: ``fpregs[i]`` is ST(i) (80 bits), ``fptag`` the abridged
    # tag (bit n set: physical register n is not empty).
    dr: list[int]
    fpuc: int
    fpus: int
    fptag: int
    fpop: int
    fpip: int
    fpdp: int
    fpregs: list[int]
    mxcsr: int
    xmm: list[int]     # XMM0-15, 128 bits each
    ymmh: list[int]    # the upper halves of YMM0-15 (AVX)
    xcr0: int
    tsc_deadline: int  # IA32_TSC_DEADLINE, when the accelerator keeps the local APIC

    # Events between two instructions (KVM's kvm_vcpu_events): what is being
    # delivered, what waits, and what is blocked.
    interrupt_shadow: bool   # after STI / MOV SS: no interrupt before the next instruction
    exception_injected: int  # vector of an exception being delivered, or -1
    exception_has_error_code: bool
    exception_error_code: int
    interrupt_injected: int  # vector of an external interrupt being delivered, or -1
    interrupt_soft: bool     # ... a software interrupt (INT n), whose delivery restarts it
    nmi_injected: bool
    nmi_pending: bool
    nmi_masked: bool         # inside an NMI handler: NMIs blocked until IRET
    init_pending: bool       # an INIT latched (to be taken at the next boundary)
    sipi_vector: int
    mp_state: X86MPState
    smm: bool                # in system management mode (pemu has none: such a state is refused)
    smi_pending: bool
    # KVM's in-kernel local APIC, its register page as KVM_GET_LAPIC gives it
    # (None when the local APIC is pemu's own device).
    kernel_lapic: bytes | None

    a20_mask: int
    halted: bool

    def __init__(self, cpuid_version: int = 0x000006F1) -> None:
        # Family/model/stepping reported in EDX at reset; the CPU model sets it.
        self.cpuid_version = cpuid_version
        self.reset()

    # -- convenience accessors ------------------------------------------------
    def seg(self, reg: SegReg) -> SegmentCache:
        return self.segs[reg]

    @property
    def cpl(self) -> int:
        """Current privilege level, as the hardware tracks it (SS.DPL; 0 in real mode)."""
        if not self.cr0 & CR0_PE_MASK:
            return 0
        if self.rflags & VM_MASK:
            return 3
        return self.segs[SegReg.SS].dpl

    @property
    def long_mode_active(self) -> bool:
        return bool(self.efer & Efer.LMA)

    # -- architectural states ------------------------------------------------
    def reset(self, bsp: bool = True) -> None:
        """The state after RESET# (Intel SDM Vol. 3, 9.1.1)."""
        self.regs = [0] * 16
        self.regs[Reg.RDX] = self.cpuid_version
        self.rip = 0xFFF0
        self.rflags = EFLAGS_FIXED
        self.segs = [real_mode_segment(0) for _ in SegReg]
        cs = self.segs[SegReg.CS]
        cs.selector = 0xF000
        cs.base = 0xFFFF0000
        cs.flags = DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_R_MASK | DESC_A_MASK
        self.ldt = SegmentCache(0, 0, 0xFFFF, DESC_P_MASK | (2 << DESC_TYPE_SHIFT))
        self.tr = SegmentCache(0, 0, 0xFFFF, DESC_P_MASK | (11 << DESC_TYPE_SHIFT))
        self.gdt = DescriptorTable(0, 0xFFFF)
        self.idt = DescriptorTable(0, 0xFFFF)
        self.cr0 = CR0_RESET
        self.cr2 = self.cr3 = self.cr4 = self.cr8 = 0
        self.efer = 0
        self.star = self.lstar = self.cstar = self.fmask = self.kernel_gs_base = 0
        self.sysenter_cs = self.sysenter_esp = self.sysenter_eip = 0
        self.tsc = 0
        self.tsc_aux = 0
        self.apic_base = APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE
        if bsp:
            self.apic_base |= MSR_IA32_APICBASE_BSP
        self.pat = PAT_RESET
        self.misc_enable = MSR_IA32_MISC_ENABLE_DEFAULT
        self.dr = [0, 0, 0, 0, 0, 0, DR6_RESET, DR7_RESET]
        self.fpuc = FPUC_RESET
        self.fpus = 0
        self.fptag = 0
        self.fpop = self.fpip = self.fpdp = 0
        self.fpregs = [0] * 8
        self.mxcsr = MXCSR_RESET
        self.xmm = [0] * 16
        self.ymmh = [0] * 16
        self.xcr0 = XSTATE_FP
        self.tsc_deadline = 0
        self.kernel_lapic = None
        self.reset_events()
        self.mp_state = X86MPState.RUNNABLE if bsp else X86MPState.UNINITIALIZED
        self.a20_mask = ~0
        self.halted = False

    def reset_events(self) -> None:
        """No event in delivery, pending or blocked."""
        self.interrupt_shadow = False
        self.exception_injected = -1
        self.exception_has_error_code = False
        self.exception_error_code = 0
        self.interrupt_injected = -1
        self.interrupt_soft = False
        self.nmi_injected = self.nmi_pending = self.nmi_masked = False
        self.init_pending = False
        self.sipi_vector = 0
        self.smm = self.smi_pending = False

    def set_protected_mode_flat32(self, eip: int, esi: int = 0) -> None:
        """Flat 32-bit protected mode, paging off, interrupts off.

        The entry state of the Linux 32-bit boot protocol and of PVH: CS
        selector 0x10 and data selectors 0x18 with base 0 and a 4 GiB limit,
        ESI pointing at the boot parameters (or the PVH start info in EBX,
        which the caller sets in ``regs``).
        """
        self.segs[SegReg.CS] = _flat_segment(0x10, code=True)
        for reg in (SegReg.DS, SegReg.ES, SegReg.SS, SegReg.FS, SegReg.GS):
            self.segs[reg] = _flat_segment(0x18, code=False)
        self.tr = SegmentCache(0, 0, 0xFFFF, DESC_P_MASK | (11 << DESC_TYPE_SHIFT))
        self.cr0 = (self.cr0 | CR0_PE_MASK) & ~CR0_PG_MASK
        self.efer &= ~(Efer.LMA | Efer.LME)
        self.rflags = EFLAGS_FIXED
        self.rip = eip & 0xFFFFFFFF
        self.regs[Reg.RSI] = esi & 0xFFFFFFFF
        self.halted = False
