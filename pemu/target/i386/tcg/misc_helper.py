"""SYSCALL and SYSENTER transitions (QEMU's helper_syscall / helper_sysenter).

Unicorn treats both as no-ops unless hooked; these functions perform the
privilege change on a saved context.  They return the new full RFLAGS (the
caller loads it through the register API, which also updates the lazily
kept arithmetic and direction flags) or raise GuestFault.
"""

from __future__ import annotations

from pemu.target.i386.cpu_state import (
    DESC_A_MASK,
    DESC_B_MASK,
    DESC_CS_MASK,
    DESC_G_MASK,
    DESC_L_MASK,
    DESC_P_MASK,
    DESC_R_MASK,
    DESC_S_MASK,
    DESC_W_MASK,
    IF_MASK,
    RF_MASK,
    VM_MASK,
    Efer,
    SegmentCache,
    SegReg,
)
from pemu.target.i386.tcg.seg_helper import EXCP0D_GPF, EXCP06_ILLOP, GuestFault, seg_hflags
from pemu.target.i386.tcg.uc_context import HF, CPUContext, Off

_CODE_FLAGS = DESC_G_MASK | DESC_P_MASK | DESC_S_MASK | DESC_CS_MASK | DESC_R_MASK | DESC_A_MASK
_DATA_FLAGS = DESC_G_MASK | DESC_B_MASK | DESC_P_MASK | DESC_S_MASK | DESC_W_MASK | DESC_A_MASK


def _flat(selector: int, flags: int) -> SegmentCache:
    return SegmentCache(selector, 0, 0xFFFFFFFF, flags)


def _load_cs_ss(ctx: CPUContext, cs: SegmentCache, ss: SegmentCache, eflags_ctl: int) -> None:
    ctx.set_seg(SegReg.CS, cs)
    ctx.set_seg(SegReg.SS, ss)
    ctx.eflags = eflags_ctl
    ctx.hflags = seg_hflags(ctx.hflags, ctx.cr(0), eflags_ctl, cs, ss, ctx.seg(SegReg.DS), ctx.seg(SegReg.ES))


def do_syscall(ctx: CPUContext, rflags: int, next_eip: int) -> int:
    """SYSCALL from the state in ``ctx``; returns the new RFLAGS."""
    efer = ctx.u64(Off.EFER)
    if not efer & Efer.SCE:
        raise GuestFault(EXCP06_ILLOP)
    star = ctx.u64(Off.STAR)
    selector = (star >> 32) & 0xFFFC
    if ctx.hflags & HF.LMA:
        ctx.set_reg(1, next_eip)  # RCX
        ctx.set_reg(11, rflags & ~RF_MASK)  # R11
        code64 = bool(ctx.hflags & HF.CS64)
        fmask = ctx.u64(Off.FMASK) & 0xFFFFFFFF
        new_rflags = rflags & ~(fmask | RF_MASK)
        cs = _flat(selector, _CODE_FLAGS | DESC_L_MASK)
        ss = _flat(selector + 8, _DATA_FLAGS)
        _load_cs_ss(ctx, cs, ss, ctx.eflags & ~(fmask | RF_MASK))
        ctx.eip = ctx.u64(Off.LSTAR) if code64 else ctx.u64(Off.CSTAR)
        return new_rflags
    ctx.set_reg(1, next_eip & 0xFFFFFFFF)
    new_rflags = rflags & ~(IF_MASK | RF_MASK | VM_MASK)
    cs = _flat(selector, _CODE_FLAGS | DESC_B_MASK)
    ss = _flat(selector + 8, _DATA_FLAGS)
    _load_cs_ss(ctx, cs, ss, ctx.eflags & ~(IF_MASK | RF_MASK | VM_MASK))
    ctx.eip = star & 0xFFFFFFFF
    return new_rflags


def do_sysenter(ctx: CPUContext, rflags: int) -> int:
    """SYSENTER: to CPL 0 at SYSENTER_CS:SYSENTER_EIP; returns the new RFLAGS."""
    cs_sel = ctx.u32(Off.SYSENTER_CS) & 0xFFFC
    if not cs_sel:
        raise GuestFault(EXCP0D_GPF, 0)
    new_rflags = rflags & ~(VM_MASK | IF_MASK | RF_MASK)
    if ctx.hflags & HF.LMA:
        cs = _flat(cs_sel, _CODE_FLAGS | DESC_L_MASK)
    else:
        cs = _flat(cs_sel, _CODE_FLAGS | DESC_B_MASK)
    ss = _flat(cs_sel + 8, _DATA_FLAGS)
    _load_cs_ss(ctx, cs, ss, ctx.eflags & ~(VM_MASK | IF_MASK | RF_MASK))
    esp = ctx.u64(Off.SYSENTER_ESP)
    eip = ctx.u64(Off.SYSENTER_EIP)
    if not ctx.hflags & HF.LMA:
        esp &= 0xFFFFFFFF
        eip &= 0xFFFFFFFF
    ctx.set_reg(4, esp)
    ctx.eip = eip
    return new_rflags
