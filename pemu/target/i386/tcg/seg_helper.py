"""Interrupt and exception delivery (QEMU's target/i386/tcg/seg_helper.c).

Unicorn reports exceptions and ``int n`` but does not deliver them: this
module does what the processor does on the way into a handler, in real,
protected and long mode: it reads the gate from the IVT/IDT, checks it,
switches to the inner stack from the TSS (or an IST stack), pushes the
frame and an error code, and loads CS:RIP (and SS) with their hidden parts
and the new CPL.  A fault while doing so is combined with the first one as
the hardware does (#DF, then a triple fault, which resets the machine).

All state lives in a :class:`~pemu.target.i386.tcg.uc_context.CPUContext`
that the caller has just saved and restores afterwards.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pemu.target.i386.cpu_state import (
    AC_MASK,
    CR0_PE_MASK,
    DESC_B_MASK,
    DESC_C_MASK,
    DESC_CS_MASK,
    DESC_DPL_SHIFT,
    DESC_FLAGS_MASK,
    DESC_L_MASK,
    DESC_P_MASK,
    DESC_S_MASK,
    DESC_W_MASK,
    IF_MASK,
    NT_MASK,
    RF_MASK,
    TF_MASK,
    VM_MASK,
    SegmentCache,
    SegReg,
)
from pemu.target.i386.tcg.mmu import PageFault, PhysAccessError, PhysMemory, translate
from pemu.target.i386.tcg.uc_context import HF, CPUContext, Off
from pemu.util.log import LOG_INT, guest_error, qemu_log, qemu_loglevel_mask

EXCP00_DIVZ = 0
EXCP01_DB = 1
EXCP02_NMI = 2
EXCP03_INT3 = 3
EXCP06_ILLOP = 6
EXCP08_DBLE = 8
EXCP0A_TSS = 10
EXCP0B_NOSEG = 11
EXCP0C_STACK = 12
EXCP0D_GPF = 13
EXCP0E_PAGE = 14
EXCP11_ALGN = 17

# Exceptions that push an error code in protected and long mode.
_HAS_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
_CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_GATE16 = struct.Struct("<IIII")
_GATE8 = struct.Struct("<II")


class GuestFault(Exception):
    """An exception raised while delivering another one."""

    def __init__(self, vector: int, error_code: int = 0, cr2: int | None = None) -> None:
        super().__init__(f"exception {vector:#x} ({error_code:#x})")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down."""


def _gp(code: int = 0) -> GuestFault:
    return GuestFault(EXCP0D_GPF, code & 0xFFFF)


def descriptor_flags(e2: int) -> int:
    return e2 & DESC_FLAGS_MASK


def descriptor_base(e1: int, e2: int) -> int:
    return (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000)


def descriptor_limit(e1: int, e2: int) -> int:
    limit = (e1 & 0xFFFF) | (e2 & 0x000F0000)
    if e2 & (1 << 23):
        limit = (limit << 12) | 0xFFF
    return limit


def seg_hflags(hflags: int, cr0: int, eflags: int, cs: SegmentCache, ss: SegmentCache,
               ds: SegmentCache, es: SegmentCache) -> int:
    """Recompute the segment-derived hflags (CPL, CS32, SS32, CS64, ADDSEG)."""
    hflags &= ~(HF.CPL_MASK | HF.CS32 | HF.SS32 | HF.CS64 | HF.ADDSEG)
    if hflags & HF.LMA and cs.flags & DESC_L_MASK:
        hflags |= HF.CS32 | HF.CS64
    elif cs.flags & DESC_B_MASK:
        hflags |= HF.CS32
    if cr0 & CR0_PE_MASK:
        hflags |= 3 if eflags & VM_MASK else (ss.flags >> DESC_DPL_SHIFT) & 3
    if ss.flags & DESC_B_MASK:
        hflags |= HF.SS32
    if hflags & HF.CS64:
        pass
    elif not cr0 & CR0_PE_MASK or eflags & VM_MASK or not hflags & HF.CS32:
        hflags |= HF.ADDSEG
    elif ds.base | es.base | ss.base:
        hflags |= HF.ADDSEG
    return hflags


class InterruptDelivery:
    """Delivers exceptions and interrupts into the guest for one vCPU.

    ``read_rflags`` returns the full RFLAGS (the arithmetic flags are only
    known to the engine); ``mem`` is guest-physical RAM.
    """

    def __init__(self, ctx: CPUContext, mem: PhysMemory, read_rflags: Callable[[], int]) -> None:
        self.ctx = ctx
        self.mem = mem
        self.read_rflags = read_rflags
        self.count = 0
        self._pg: tuple[int, int, int, bool] | None = None  # paging registers, per delivery

    # -- public entry ------------------------------------------------------------
    def deliver(self, vector: int, *, is_int: bool, error_code: int, next_eip: int, is_hw: bool = False) -> None:
        """Deliver ``vector`` with the state in ``ctx``; raises TripleFault.

        ``is_int``: a software ``int n``/``int3``/``into`` (gate DPL checked,
        return address ``next_eip``, no error code).  ``is_hw``: an external
        interrupt (no error code).
        """
        self.count += 1
        self._pg = None
        previous: int | None = None if (is_int or is_hw) else vector
        while True:
            try:
                if qemu_loglevel_mask(LOG_INT):
                    qemu_log(f"interrupt {vector:#x} is_int={int(is_int)} ec={error_code:#x} pc={self.ctx.eip:#x}")
                self._do_interrupt(vector, is_int, error_code, next_eip, is_hw)
                self.ctx.old_exception = -1
                return
            except GuestFault as fault:
                if fault.cr2 is not None:
                    self.ctx.set_cr(2, fault.cr2)
                vector, error_code = self._combine(previous, fault.vector, fault.error_code)
                previous = vector
                is_int = is_hw = False
                next_eip = self.ctx.eip

    @staticmethod
    def _combine(first: int | None, second: int, error_code: int) -> tuple[int, int]:
        if first == EXCP08_DBLE:
            raise TripleFault()
        if first is None:
            return second, error_code
        if (first in _CONTRIBUTORY and second in _CONTRIBUTORY) or \
                (first == EXCP0E_PAGE and (second in _CONTRIBUTORY or second == EXCP0E_PAGE)):
            return EXCP08_DBLE, 0
        return second, error_code

    # -- memory helpers ------------------------------------------------------------
    def _paging(self) -> tuple[int, int, int, bool]:
        pg = self._pg
        if pg is None:
            ctx = self.ctx
            pg = self._pg = (ctx.cr(0), ctx.cr(3), ctx.cr(4), bool(ctx.hflags & HF.LMA))
        return pg

    def _phys(self, laddr: int, write: bool) -> int:
        cr0, cr3, cr4, lma = self._paging()
        try:
            return translate(self.mem, laddr, cr0=cr0, cr3=cr3, cr4=cr4, long_mode=lma, write=write)
        except PageFault as pf:
            raise GuestFault(EXCP0E_PAGE, pf.error_code, cr2=pf.laddr) from None
        except PhysAccessError:
            raise _gp(0) from None

    def read_linear(self, laddr: int, size: int) -> bytes:
        out = b""
        while size:
            chunk = min(size, 0x1000 - (laddr & 0xFFF))
            data = self.mem.read(self._phys(laddr, False), chunk)
            if data is None:
                raise _gp(0)
            out += data
            laddr += chunk
            size -= chunk
        return out

    def write_linear(self, laddr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            chunk = min(len(data) - pos, 0x1000 - ((laddr + pos) & 0xFFF))
            if not self.mem.write(self._phys(laddr + pos, True), data[pos:pos + chunk]):
                raise _gp(0)
            pos += chunk

    def _load_descriptor(self, selector: int, exc: int = EXCP0D_GPF) -> tuple[int, int]:
        ctx = self.ctx
        table = ctx.table(Off.LDT) if selector & 4 else ctx.table(Off.GDT)
        index = selector & ~7
        if index + 7 > table.limit:
            raise GuestFault(exc, selector & 0xFFFC)
        return _GATE8.unpack(self.read_linear(table.base + index, 8))

    # -- modes -----------------------------------------------------------------------
    def _do_interrupt(self, vector: int, is_int: bool, error_code: int, next_eip: int, is_hw: bool) -> None:
        ctx = self.ctx
        ret_eip = next_eip if is_int else ctx.eip
        if not ctx.cr(0) & CR0_PE_MASK:
            self._do_interrupt_real(vector, ret_eip)
            return
        has_error = not is_int and not is_hw and vector in _HAS_ERROR_CODE
        if ctx.hflags & HF.LMA:
            self._do_interrupt64(vector, is_int, has_error, error_code, ret_eip)
        else:
            self._do_interrupt_protected(vector, is_int, has_error, error_code, ret_eip)

    def _do_interrupt_real(self, vector: int, ret_eip: int) -> None:
        ctx = self.ctx
        idt = ctx.table(Off.IDT)
        if vector * 4 + 3 > idt.limit:
            raise _gp(vector * 8 + 2)
        offset, selector = struct.unpack("<HH", self.read_linear(idt.base + vector * 4, 4))
        ss = ctx.seg(SegReg.SS)
        sp = ctx.reg(4)
        cs = ctx.seg(SegReg.CS)
        rflags = self.read_rflags()
        # Push FLAGS, CS, IP: the frame grows down from SP, wrapping at 64 KiB.
        for word in (rflags & 0xFFFF, cs.selector, ret_eip & 0xFFFF):
            sp = (sp - 2) & 0xFFFF
            self.write_linear(ss.base + sp, _U16.pack(word))
        ctx.set_reg(4, (ctx.reg(4) & ~0xFFFF) | sp)
        ctx.eflags = ctx.eflags & ~(IF_MASK | TF_MASK | AC_MASK | RF_MASK)
        cs.selector = selector
        cs.base = selector << 4
        ctx.set_seg(SegReg.CS, cs)
        ctx.eip = offset

    def _tss_stack32(self, dpl: int) -> tuple[int, int]:
        tr = self.ctx.table(Off.TR)
        if not tr.flags & DESC_P_MASK:
            raise GuestFault(EXCP0A_TSS, tr.selector & 0xFFFC)
        is32 = bool((tr.flags >> 8) & 8)
        index = (dpl * 4 + 2) << int(is32)
        size = 4 << int(is32)
        if index + size - 1 > tr.limit:
            raise GuestFault(EXCP0A_TSS, tr.selector & 0xFFFC)
        raw = self.read_linear(tr.base + index, size)
        if is32:
            esp, ss = struct.unpack("<II", raw)
        else:
            esp, ss = struct.unpack("<HH", raw)
        return ss & 0xFFFF, esp

    def _code_segment(self, selector: int) -> tuple[SegmentCache, int]:
        if not selector & 0xFFFC:
            raise _gp(0)
        e1, e2 = self._load_descriptor(selector)
        flags = descriptor_flags(e2)
        if not flags & DESC_S_MASK or not flags & DESC_CS_MASK:
            raise _gp(selector)
        dpl = (flags >> DESC_DPL_SHIFT) & 3
        if not flags & DESC_P_MASK:
            raise GuestFault(EXCP0B_NOSEG, selector & 0xFFFC)
        return SegmentCache(selector, descriptor_base(e1, e2), descriptor_limit(e1, e2), flags), dpl

    def _read_gate_checks(self, vector: int, is_int: bool, e2: int, cpl: int) -> int:
        dpl = (e2 >> DESC_DPL_SHIFT) & 3
        if is_int and dpl < cpl:
            raise _gp(vector * 8 + 2)
        if not e2 & DESC_P_MASK:
            raise GuestFault(EXCP0B_NOSEG, vector * 8 + 2)
        return dpl

    def _do_interrupt_protected(self, vector: int, is_int: bool, has_error: bool, error_code: int,
                                ret_eip: int) -> None:
        ctx = self.ctx
        idt = ctx.table(Off.IDT)
        if vector * 8 + 7 > idt.limit:
            raise _gp(vector * 8 + 2)
        e1, e2 = _GATE8.unpack(self.read_linear(idt.base + vector * 8, 8))
        gate_type = (e2 >> 8) & 0x1F
        if gate_type == 5:
            guest_error(f"interrupt {vector:#x}: task gates are not supported")
            raise _gp(vector * 8 + 2)
        if gate_type not in (6, 7, 14, 15):
            raise _gp(vector * 8 + 2)
        cpl = ctx.hflags & HF.CPL_MASK
        eflags_ctl = ctx.eflags
        vm86 = bool(eflags_ctl & VM_MASK)
        self._read_gate_checks(vector, is_int, e2, cpl)
        selector = e1 >> 16
        offset = (e2 & 0xFFFF0000) | (e1 & 0xFFFF)
        cs, dpl = self._code_segment(selector)
        if dpl > cpl:
            raise _gp(selector)
        old_ss = ctx.seg(SegReg.SS)
        old_cs = ctx.seg(SegReg.CS)
        old_esp = ctx.reg(4)
        inner = not cs.flags & DESC_C_MASK and dpl < cpl
        if inner:
            ss_sel, esp = self._tss_stack32(dpl)
            if not ss_sel & 0xFFFC or (ss_sel & 3) != dpl:
                raise GuestFault(EXCP0A_TSS, ss_sel & 0xFFFC)
            s1, s2 = self._load_descriptor(ss_sel, EXCP0A_TSS)
            ss_flags = descriptor_flags(s2)
            if ((ss_flags >> DESC_DPL_SHIFT) & 3) != dpl or not ss_flags & DESC_S_MASK or \
                    ss_flags & DESC_CS_MASK or not ss_flags & DESC_W_MASK:
                raise GuestFault(EXCP0A_TSS, ss_sel & 0xFFFC)
            if not ss_flags & DESC_P_MASK:
                raise GuestFault(EXCP0C_STACK, ss_sel & 0xFFFC)
            ss = SegmentCache(ss_sel, descriptor_base(s1, s2), descriptor_limit(s1, s2), ss_flags)
        elif vm86:
            raise _gp(selector)
        else:
            ss, esp = old_ss, old_esp
        esp_mask = 0xFFFFFFFF if ss.flags & DESC_B_MASK else 0xFFFF
        width = 4 if gate_type & 8 else 2
        pack = _U32.pack if width == 4 else _U16.pack
        rflags = self.read_rflags()
        words: list[int] = []
        if inner:
            if vm86:
                words += [ctx.seg(SegReg.GS).selector, ctx.seg(SegReg.FS).selector,
                          ctx.seg(SegReg.DS).selector, ctx.seg(SegReg.ES).selector]
            words += [old_ss.selector, old_esp]
        words += [rflags, old_cs.selector, ret_eip]
        if has_error:
            words.append(error_code)
        sp = esp
        for word in words:
            sp = (sp - width) & esp_mask
            self.write_linear(ss.base + sp, pack(word & ((1 << (8 * width)) - 1)))
        # Commit: nothing below can fault.
        clear = TF_MASK | VM_MASK | RF_MASK | NT_MASK
        if not gate_type & 1:
            clear |= IF_MASK
        eflags_ctl &= ~clear
        ctx.eflags = eflags_ctl
        if inner and vm86:
            for reg in (SegReg.ES, SegReg.DS, SegReg.FS, SegReg.GS):
                ctx.set_seg(reg, SegmentCache(0, 0, 0, 0))
        new_cpl = dpl if inner else cpl
        cs.selector = (selector & 0xFFFC) | new_cpl
        ctx.set_seg(SegReg.CS, cs)
        if inner:
            ctx.set_seg(SegReg.SS, ss)
        ctx.set_reg(4, (esp & ~esp_mask) | sp)
        ctx.eip = offset if width == 4 else offset & 0xFFFF
        self._update_hflags(eflags_ctl)

    def _do_interrupt64(self, vector: int, is_int: bool, has_error: bool, error_code: int,
                        ret_eip: int) -> None:
        ctx = self.ctx
        idt = ctx.table(Off.IDT)
        if vector * 16 + 15 > idt.limit:
            raise _gp(vector * 8 + 2)
        e1, e2, e3, _ = _GATE16.unpack(self.read_linear(idt.base + vector * 16, 16))
        gate_type = (e2 >> 8) & 0x1F
        if gate_type not in (14, 15):
            raise _gp(vector * 8 + 2)
        cpl = ctx.hflags & HF.CPL_MASK
        self._read_gate_checks(vector, is_int, e2, cpl)
        selector = e1 >> 16
        offset = (e3 << 32) | (e2 & 0xFFFF0000) | (e1 & 0xFFFF)
        ist = e2 & 7
        cs, dpl = self._code_segment(selector)
        if not cs.flags & DESC_L_MASK or cs.flags & DESC_B_MASK or dpl > cpl:
            raise _gp(selector)
        inner = not cs.flags & DESC_C_MASK and dpl < cpl
        old_rsp = ctx.reg(4)
        old_ss = ctx.seg(SegReg.SS)
        old_cs = ctx.seg(SegReg.CS)
        if inner or ist:
            tr = ctx.table(Off.TR)
            index = 36 + 8 * (ist - 1) if ist else 4 + 8 * dpl
            if not tr.flags & DESC_P_MASK or index + 7 > tr.limit:
                raise GuestFault(EXCP0A_TSS, tr.selector & 0xFFFC)
            rsp = _U64.unpack(self.read_linear(tr.base + index, 8))[0]
        else:
            rsp = old_rsp
        rsp &= ~0xF
        rflags = self.read_rflags()
        words = [old_ss.selector, old_rsp, rflags, old_cs.selector, ret_eip]
        if has_error:
            words.append(error_code)
        frame = b"".join(_U64.pack(w & 0xFFFFFFFFFFFFFFFF) for w in reversed(words))
        rsp = (rsp - len(frame)) & 0xFFFFFFFFFFFFFFFF
        self.write_linear(rsp, frame)
        clear = TF_MASK | VM_MASK | RF_MASK | NT_MASK
        if not gate_type & 1:
            clear |= IF_MASK
        eflags_ctl = ctx.eflags & ~clear
        ctx.eflags = eflags_ctl
        new_cpl = dpl if inner else cpl
        if inner:
            ctx.set_seg(SegReg.SS, SegmentCache(new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT))
        cs.selector = (selector & 0xFFFC) | new_cpl
        ctx.set_seg(SegReg.CS, cs)
        ctx.set_reg(4, rsp)
        ctx.eip = offset
        self._update_hflags(eflags_ctl)

    def _update_hflags(self, eflags_ctl: int) -> None:
        ctx = self.ctx
        ctx.hflags = seg_hflags(ctx.hflags & ~HF.INHIBIT_IRQ, ctx.cr(0), eflags_ctl, ctx.seg(SegReg.CS),
                                ctx.seg(SegReg.SS), ctx.seg(SegReg.DS), ctx.seg(SegReg.ES))
