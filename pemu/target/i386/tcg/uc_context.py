"""The layout of Unicorn 2.1.4's saved CPU context, and fast access to it.

``uc_context_save`` copies QEMU's CPUX86State after a 40-byte header.  That
structure is private to the engine: the offsets below were measured for
``unicorn==2.1.4`` on x86-64 Linux and :func:`verify_context_layout` checks
them at start-up against values set through the public register API, so a
different engine build fails loudly instead of corrupting guest state.

Patching this blob is the only way Unicorn offers to load hidden segment
state and the CPL, to read the error code of an exception, to tell ``int n``
from a fault with the same vector, to see the interrupt shadow, and to reset
``old_exception`` (which QEMU's TCG clears in do_interrupt, a function
Unicorn never calls).
"""

from __future__ import annotations

import ctypes
import functools
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_16, UC_MODE_64, Uc
from unicorn import x86_const as ucx
from unicorn.unicorn_py3.unicorn import uclib

from pemu.target.i386.cpu_state import SegmentCache

UNICORN_VERSION = "2.1.4"
CONTEXT_HEADER = 40
CONTEXT_SIZE = 5608


class Off(IntEnum):
    """Byte offsets inside QEMU's CPUX86State as Unicorn 2.1.4 saves it."""

    REGS = 0
    EIP = 128
    EFLAGS = 136  # control bits only; arithmetic flags are lazy
    HFLAGS = 176
    HFLAGS2 = 180
    SEGS = 184  # ES CS SS DS FS GS, SEG_SIZE each
    LDT = 328
    TR = 352
    GDT = 376
    IDT = 400
    CR = 424  # cr[0..4], 8 bytes each
    EFER = 592
    SYSENTER_CS = 4800
    SYSENTER_ESP = 4808
    SYSENTER_EIP = 4816
    STAR = 4824
    LSTAR = 4840
    CSTAR = 4848
    FMASK = 4856
    KERNELGSBASE = 4864
    TSC_AUX = 4896
    XCR0 = 4904
    MISC_ENABLE = 4920
    PAT = 5280
    ERROR_CODE = 5384
    EXCEPTION_IS_INT = 5388
    EXCEPTION_NEXT_EIP = 5392
    OLD_EXCEPTION = 5496


SEG_SIZE = 24
_SEG = struct.Struct("<IIQII")  # selector, pad, base, limit, flags
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class HF(IntEnum):
    """QEMU's env->hflags bits."""

    CPL_MASK = 3
    INHIBIT_IRQ = 1 << 3
    CS32 = 1 << 4
    SS32 = 1 << 5
    ADDSEG = 1 << 6
    PE = 1 << 7
    LMA = 1 << 14
    CS64 = 1 << 15
    OSFXSR = 1 << 22


class ContextLayoutError(RuntimeError):
    """The engine's private state layout is not the one pemu was written for."""


class CPUContext:
    """One reusable saved context of a Unicorn instance, patched in place.

    ``save()`` snapshots the engine's CPU state into the buffer, the
    accessors read and patch it, and ``restore()`` loads it back.  No
    allocation happens on these paths.
    """

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self._handle = uc._uch
        size = uclib.uc_context_size(self._handle)
        if size != CONTEXT_SIZE:
            raise ContextLayoutError(f"Unicorn context is {size} bytes, expected {CONTEXT_SIZE} "
                                     f"(unicorn=={UNICORN_VERSION})")
        self._owner = uc.context_save()  # keeps the allocation alive
        self._ptr = self._owner.context
        addr = ctypes.cast(self._ptr, ctypes.c_void_p).value
        assert addr is not None
        raw = (ctypes.c_char * (size - CONTEXT_HEADER)).from_address(addr + CONTEXT_HEADER)
        self._raw = raw
        self.buf = memoryview(raw).cast("B")

    # -- transfer -----------------------------------------------------------
    def save(self) -> None:
        uclib.uc_context_save(self._handle, self._ptr)

    def restore(self) -> None:
        uclib.uc_context_restore(self._handle, self._ptr)

    # -- scalar fields ---------------------------------------------------------
    def u64(self, off: int) -> int:
        return _U64.unpack_from(self.buf, off)[0]

    def set_u64(self, off: int, value: int) -> None:
        _U64.pack_into(self.buf, off, value & 0xFFFFFFFFFFFFFFFF)

    def u32(self, off: int) -> int:
        return _U32.unpack_from(self.buf, off)[0]

    def set_u32(self, off: int, value: int) -> None:
        _U32.pack_into(self.buf, off, value & 0xFFFFFFFF)

    def reg(self, n: int) -> int:
        return _U64.unpack_from(self.buf, 8 * n)[0]

    def set_reg(self, n: int, value: int) -> None:
        _U64.pack_into(self.buf, 8 * n, value & 0xFFFFFFFFFFFFFFFF)

    @property
    def eip(self) -> int:
        return _U64.unpack_from(self.buf, Off.EIP)[0]

    @eip.setter
    def eip(self, value: int) -> None:
        _U64.pack_into(self.buf, Off.EIP, value & 0xFFFFFFFFFFFFFFFF)

    @property
    def eflags(self) -> int:
        """The control part of EFLAGS (IF, TF, DF, IOPL, NT, RF, VM, AC...)."""
        return _U32.unpack_from(self.buf, Off.EFLAGS)[0]

    @eflags.setter
    def eflags(self, value: int) -> None:
        _U32.pack_into(self.buf, Off.EFLAGS, value & 0xFFFFFFFF)

    @property
    def hflags(self) -> int:
        return _U32.unpack_from(self.buf, Off.HFLAGS)[0]

    @hflags.setter
    def hflags(self, value: int) -> None:
        _U32.pack_into(self.buf, Off.HFLAGS, value & 0xFFFFFFFF)

    def cr(self, n: int) -> int:
        return _U64.unpack_from(self.buf, Off.CR + 8 * n)[0]

    def set_cr(self, n: int, value: int) -> None:
        _U64.pack_into(self.buf, Off.CR + 8 * n, value & 0xFFFFFFFFFFFFFFFF)

    @property
    def error_code(self) -> int:
        return _I32.unpack_from(self.buf, Off.ERROR_CODE)[0] & 0xFFFFFFFF

    @property
    def exception_is_int(self) -> bool:
        return _I32.unpack_from(self.buf, Off.EXCEPTION_IS_INT)[0] != 0

    @property
    def exception_next_eip(self) -> int:
        return _U64.unpack_from(self.buf, Off.EXCEPTION_NEXT_EIP)[0]

    @property
    def old_exception(self) -> int:
        return _I32.unpack_from(self.buf, Off.OLD_EXCEPTION)[0]

    @old_exception.setter
    def old_exception(self, value: int) -> None:
        _I32.pack_into(self.buf, Off.OLD_EXCEPTION, value)

    # -- segments --------------------------------------------------------------
    def seg(self, n: int) -> SegmentCache:
        sel, _, base, limit, flags = _SEG.unpack_from(self.buf, Off.SEGS + SEG_SIZE * n)
        return SegmentCache(sel, base, limit, flags)

    def set_seg(self, n: int, seg: SegmentCache) -> None:
        self._pack_seg(Off.SEGS + SEG_SIZE * n, seg)

    def table(self, off: int) -> SegmentCache:
        """LDT, TR (full caches) or GDT/IDT (base and limit only)."""
        sel, _, base, limit, flags = _SEG.unpack_from(self.buf, off)
        return SegmentCache(sel, base, limit, flags)

    def set_table(self, off: int, seg: SegmentCache) -> None:
        self._pack_seg(off, seg)

    def _pack_seg(self, off: int, seg: SegmentCache) -> None:
        _SEG.pack_into(self.buf, off, seg.selector & 0xFFFF, 0, seg.base & 0xFFFFFFFFFFFFFFFF,
                       seg.limit & 0xFFFFFFFF, seg.flags & 0xFFFFFFFF)


@functools.cache
def real_mode_context_bytes() -> bytes:
    """The saved context of a fresh 16-bit instance (real mode, CPL 0); made once."""
    uc16 = Uc(UC_ARCH_X86, UC_MODE_16)
    return bytes(uc16.context_save())


@dataclass
class _Probe:
    seen: list[tuple[int, bool, int]]


_verified = False


def verify_context_layout() -> None:
    """Check every offset in :class:`Off` against the public API, once per process.

    Raises :class:`ContextLayoutError` naming the first field that moved.
    """
    global _verified
    if _verified:
        return
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    ctx = CPUContext(uc)

    def expect(name: str, got: int, want: int) -> None:
        if got != want:
            raise ContextLayoutError(
                f"Unicorn context field {name}: read {got:#x}, expected {want:#x}; "
                f"pemu needs unicorn=={UNICORN_VERSION}")

    gprs = [ucx.UC_X86_REG_RAX, ucx.UC_X86_REG_RCX, ucx.UC_X86_REG_RDX, ucx.UC_X86_REG_RBX,
            ucx.UC_X86_REG_RSP, ucx.UC_X86_REG_RBP, ucx.UC_X86_REG_RSI, ucx.UC_X86_REG_RDI,
            ucx.UC_X86_REG_R8, ucx.UC_X86_REG_R9, ucx.UC_X86_REG_R10, ucx.UC_X86_REG_R11,
            ucx.UC_X86_REG_R12, ucx.UC_X86_REG_R13, ucx.UC_X86_REG_R14, ucx.UC_X86_REG_R15]
    for i, r in enumerate(gprs):
        uc.reg_write(r, 0x1111_0000_0000 + i * 0x101)
    uc.reg_write(ucx.UC_X86_REG_RIP, 0x4242_0000_1234)
    uc.reg_write(ucx.UC_X86_REG_CR3, 0x7_3000)
    uc.reg_write(ucx.UC_X86_REG_CR2, 0xDEAD_B000)
    uc.reg_write(ucx.UC_X86_REG_GDTR, (0, 0x12_3456_7000, 0x7F, 0))
    uc.reg_write(ucx.UC_X86_REG_IDTR, (0, 0x98_7654_3000, 0xFFF, 0))
    uc.reg_write(ucx.UC_X86_REG_FS_BASE, 0x5555_0000)
    msrs = {Off.STAR: 0xC0000081, Off.LSTAR: 0xC0000082, Off.CSTAR: 0xC0000083, Off.FMASK: 0xC0000084,
            Off.KERNELGSBASE: 0xC0000102, Off.SYSENTER_ESP: 0x175, Off.SYSENTER_EIP: 0x176,
            Off.PAT: 0x277, Off.TSC_AUX: 0xC0000103, Off.MISC_ENABLE: 0x1A0}
    for n, msr in enumerate(msrs.values()):
        uc.msr_write(msr, 0x0000_0077_0000_1000 + n)
    uc.msr_write(0x174, 0x1234)
    ctx.save()
    for i in range(16):
        expect(f"regs[{i}]", ctx.reg(i), 0x1111_0000_0000 + i * 0x101)
    expect("eip", ctx.eip, 0x4242_0000_1234)
    expect("cr3", ctx.cr(3), 0x7_3000)
    expect("cr2", ctx.cr(2), 0xDEAD_B000)
    expect("gdt.base", ctx.table(Off.GDT).base, 0x12_3456_7000)
    expect("gdt.limit", ctx.table(Off.GDT).limit, 0x7F)
    expect("idt.base", ctx.table(Off.IDT).base, 0x98_7654_3000)
    expect("fs.base", ctx.seg(4).base, 0x5555_0000)
    for n, off in enumerate(msrs):
        expect(off.name, ctx.u64(off), 0x0000_0077_0000_1000 + n)
    expect("sysenter_cs", ctx.u32(Off.SYSENTER_CS), 0x1234)
    expect("efer", ctx.u64(Off.EFER), uc.msr_read(0xC0000080))

    _verify_xcr0()

    # Real mode: segment caches, hflags, the exception fields of `int n`.
    uc.context_restore(_context_from_bytes(uc, real_mode_context_bytes()))
    ctx.save()
    cs = ctx.seg(1)
    expect("cs.limit", cs.limit, 0xFFFF)
    expect("cs.flags", cs.flags, 0x9B00)
    expect("hflags", ctx.hflags, HF.ADDSEG)
    expect("old_exception", ctx.old_exception, -1)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0x100, b"\xcd\x41\xf4")  # int 0x41; hlt
    probe = _Probe([])

    def on_intr(u: Uc, intno: int, _: object) -> None:
        ctx.save()
        probe.seen.append((intno, ctx.exception_is_int, ctx.exception_next_eip))
        u.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.reg_write(ucx.UC_X86_REG_RSP, 0x800)
    uc.emu_start(0x100, 0, count=4)
    if probe.seen != [(0x41, True, 0x102)]:
        raise ContextLayoutError(f"Unicorn exception fields: saw {probe.seen}; pemu needs unicorn=={UNICORN_VERSION}")
    _verified = True


def _verify_xcr0() -> None:
    """XCR0 has no register in the API: XSETBV writes it, the context shows it."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    ctx = CPUContext(uc)
    uc.mem_map(0x1000, 0x1000)
    # xor ecx,ecx; xor edx,edx; mov eax,1; xsetbv; hlt; mov eax,3; xsetbv; hlt
    uc.mem_write(0x1000, bytes.fromhex("31c931d2b8010000000f01d1f4b8030000000f01d1f4"))
    uc.reg_write(ucx.UC_X86_REG_CR4, uc.reg_read(ucx.UC_X86_REG_CR4) | 1 << 18)  # CR4.OSXSAVE
    seen = []
    for start in (0x1000, 0x100D):
        uc.emu_start(start, 0, count=4)
        ctx.save()
        seen.append(ctx.u64(Off.XCR0))
    if seen != [1, 3]:
        raise ContextLayoutError(f"Unicorn context field xcr0: read {seen}, expected [1, 3]; "
                                 f"pemu needs unicorn=={UNICORN_VERSION}")


def _context_from_bytes(uc: Uc, data: bytes) -> Any:  # a UcContext
    ctx = uc.context_save()
    ctypes.memmove(ctx.context, data, len(data))
    return ctx
