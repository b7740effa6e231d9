"""The TCG vCPU: each vCPU is one Unicorn engine (QEMU 5 TCG inside).

Unicorn runs guest code; the host supplies what it lacks (see
/work/shared/notes/unicorn-facts.md): delivery of exceptions and interrupts
(pemu.target.i386.tcg.seg_helper), SYSCALL/SYSENTER, CPUID from the CPU
model, RDTSC from the virtual clock, port I/O and MMIO through the memory
API, HLT idling, and kicks from other threads.

The engine is created as UC_MODE_64 and put into real mode by loading the
saved context of a 16-bit instance (the register API cannot do it).  The
library is pemu's build of Unicorn 2.1.4 when there is one, else the stock
wheel's (pemu.accel.tcg.engine); what it offers is detected at run time.
This module loads it: it is imported when a vCPU first runs (the accelerator
object, pemu.accel.tcg.tcg_all, does not import it).
"""

from __future__ import annotations

import ctypes
from collections import deque
from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_ARG,
    UC_ERR_INSN_INVALID,
    UC_ERR_WRITE_PROT,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_MODE_64,
    Uc,
    UcError,
)
from unicorn import x86_const as ucx
from unicorn.unicorn_py3.unicorn import uclib

from pemu.accel.accel import VCPUExit
from pemu.accel.tcg.cpu_events import tcg_cpu_events
from pemu.accel.tcg.deadline import DeadlineThread
from pemu.accel.tcg.engine import EngineFeature, engine_info
from pemu.accel.tcg.exit_request import TBExitRequest, verify_exit_request
from pemu.accel.tcg.memory_map import UnicornMemoryMap
from pemu.accel.tcg.tcg_accel_ops_rr import RRCPUThread
from pemu.hw.intc.apic_common import MSR_IA32_APICBASE, MSR_IA32_TSC_DEADLINE, MSR_X2APIC_BASE, MSR_X2APIC_END
from pemu.system.memory import (
    FlatView,
    RAMBlock,
    add_ram_write_notifier,
    ram_block_set_dirty,
    remove_ram_write_notifier,
)
from pemu.target.i386.cpu_state import (
    CR0_PG_MASK,
    EFLAGS_FIXED,
    IF_MASK,
    CPUX86State,
    DescriptorTable,
    SegmentCache,
)
from pemu.target.i386.tcg.misc_helper import do_syscall, do_sysenter
from pemu.target.i386.tcg.seg_helper import (
    EXCP0D_GPF,
    EXCP06_ILLOP,
    GuestFault,
    InterruptDelivery,
    TripleFault,
    seg_hflags,
)
from pemu.target.i386.tcg.uc_context import HF, CPUContext, Off, real_mode_context_bytes, verify_context_layout
from pemu.util.log import LOG_GUEST_ERROR, guest_error, qemu_log_mask
from pemu.util.main_loop import bql
from pemu.util.timer import QEMU_CLOCK_VIRTUAL, qemu_clock_get_ns

CPU_INTERRUPT_HARD = 0x0002
CPU_INTERRUPT_NMI = 0x0200
CPU_INTERRUPT_INIT = 0x0400
CPU_INTERRUPT_SIPI = 0x0800
# Requests handled before anything else at the interrupt window.
_CPU_INTERRUPT_SPECIAL = CPU_INTERRUPT_NMI | CPU_INTERRUPT_INIT | CPU_INTERRUPT_SIPI
EXCP02_NMI = 2
EXCP03_INT3 = 3
# TSC rate: 1 GHz, so a TSC tick is a nanosecond of virtual time (the TSC is
# the virtual clock plus an offset); Linux measures the same rate against the
# PIT, which follows the same clock.
TSC_KHZ = 1_000_000
_U64 = 0xFFFFFFFFFFFFFFFF
_U128 = (1 << 128) - 1
_DR_REGS = (ucx.UC_X86_REG_DR0, ucx.UC_X86_REG_DR1, ucx.UC_X86_REG_DR2, ucx.UC_X86_REG_DR3,
            ucx.UC_X86_REG_DR4, ucx.UC_X86_REG_DR5, ucx.UC_X86_REG_DR6, ucx.UC_X86_REG_DR7)
_FP_REGS = (ucx.UC_X86_REG_FP0, ucx.UC_X86_REG_FP1, ucx.UC_X86_REG_FP2, ucx.UC_X86_REG_FP3,
            ucx.UC_X86_REG_FP4, ucx.UC_X86_REG_FP5, ucx.UC_X86_REG_FP6, ucx.UC_X86_REG_FP7)
_YMM_REGS = tuple(getattr(ucx, f"UC_X86_REG_YMM{n}") for n in range(16))
# Exceptions raised by an instruction (INT3, INTO): taken again when it runs again.
_SOFT_EXCEPTIONS = (3, 4)
# What an RDMSR/WRMSR hook returns for an access that must raise #GP(0) at the
# instruction (pemu's engine, patch 0006: UC_PEMU_MSR_GP).
_MSR_GP = 2
# How long the guest may run with an interrupt pending while IF=0 before we look again.
# Short: Linux's schedule() loops (an SMP boot waiting for an AP) have IF=1 only for a
# few instructions per pass, and the engine cannot say when the guest sets IF; at 1 ms
# the boot CPU's ticks were so late that an AP calibrating its delay loop against
# jiffies stalled the -smp 2 boot for 3-50 s.
IRQ_POLL_S = 0.0001
TARGET_PAGE_SIZE = 0x1000
# Written RAM waiting to have its translated code dropped: beyond this many
# pages (a loader writing a kernel, a reset) one flush of the whole cache is
# cheaper than dropping page by page.
CODE_INVALIDATE_MAX_PAGES = 256

# Instruction hooks registered through the C API: the binding's own wrappers
# cost a Python-level dispatch per event, and it refuses RDTSC/RDTSCP.
_HOOK_INSN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)
_HOOK_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
_HOOK_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                                ctypes.c_void_p)
_uc_hook_add = uclib.uc_hook_add
_uc_reg_read = uclib.uc_reg_read
_uc_reg_write = uclib.uc_reg_write
_uc_reg_write_batch = uclib.uc_reg_write_batch
# pemu's engine (patch 0007) drops translated code by guest-physical range;
# the stock engine has no such entry point (see TCGVCPU._invalidate_code).
_uc_invalidate_phys: Any = None
if engine_info().has(EngineFeature.PHYS_INVALIDATE):
    _uc_invalidate_phys = uclib.uc_pemu_invalidate_phys_range
    _uc_invalidate_phys.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
    _uc_invalidate_phys.restype = ctypes.c_int


# pemu's engine (patch 0008) stops by itself when the guest opens its interrupt
# window (IF=1, no shadow) while told an interrupt is pending, from any thread
# and without stopping a guest that runs with IF=0; on the stock engine the
# vCPU is kicked out and polls every IRQ_POLL_S instead (see TCGVCPU.exec).
_uc_set_irq_pending: Any = None
if engine_info().has(EngineFeature.IRQ_WINDOW):
    _uc_set_irq_pending = uclib.uc_pemu_set_irq_pending
    _uc_set_irq_pending.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    _uc_set_irq_pending.restype = None


# pemu's engine (patch 0009) logs the pages the guest writes (the dirty log).
_uc_dirty_log_start: Any = None
_uc_dirty_log_sync: Any = None
_uc_dirty_log_stop: Any = None
if engine_info().has(EngineFeature.DIRTY_LOG):
    _uc_dirty_log_start = uclib.uc_pemu_dirty_log_start
    _uc_dirty_log_start.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
    _uc_dirty_log_start.restype = ctypes.c_int
    _uc_dirty_log_sync = uclib.uc_pemu_dirty_log_sync
    _uc_dirty_log_sync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    _uc_dirty_log_sync.restype = ctypes.c_int
    _uc_dirty_log_stop = uclib.uc_pemu_dirty_log_stop
    _uc_dirty_log_stop.argtypes = [ctypes.c_void_p]
    _uc_dirty_log_stop.restype = None


def engine_stops_at_irq_window() -> bool:
    """True on pemu's engine with patch 0008: a pending interrupt is taken at
    the first block boundary with IF=1, not at the next 100 us poll."""
    return _uc_set_irq_pending is not None


def engine_invalidates_by_physical_address() -> bool:
    """True on pemu's engine with patch 0007: a DMA write drops only the code
    of its pages with paging on too (the stock engine flushes everything then)."""
    return _uc_invalidate_phys is not None


class _RAMAccess:
    """Guest-physical RAM through the CPU's AddressSpace (for the page walk and frames).

    Remembers the last RAM range it hit, so the four reads of a page walk
    usually skip the FlatView lookup.
    """

    def __init__(self, space: Any) -> None:
        self.space = space
        self._flatview: Any = None
        self._hit: tuple[int, int, memoryview, bool, RAMBlock | None, int] = (0, 0, memoryview(b""), True, None, 0)

    def _range(self, paddr: int, size: int) -> tuple[int, int, memoryview, bool, RAMBlock | None, int] | None:
        start, end, view, readonly, block, offset = hit = self._hit
        flatview = self.space.flatview
        if flatview is self._flatview and start <= paddr and paddr + size <= end:
            return hit
        fr = flatview.lookup(paddr)
        if fr is None or fr.mr.ram_block is None or paddr + size > fr.start + fr.size:
            return None
        block = fr.mr.ram_block
        view = block.view[fr.offset_in_region:fr.offset_in_region + fr.size]
        self._flatview = flatview
        self._hit = hit = (fr.start, fr.start + fr.size, view, fr.readonly, block, fr.offset_in_region)
        return hit

    def read(self, paddr: int, size: int) -> bytes | None:
        hit = self._range(paddr, size)
        if hit is None:
            return None
        off = paddr - hit[0]
        return hit[2][off:off + size].tobytes()

    def write(self, paddr: int, data: bytes) -> bool:
        hit = self._range(paddr, len(data))
        if hit is None or hit[3]:
            return False
        off = paddr - hit[0]
        hit[2][off:off + len(data)] = data
        block = hit[4]
        if block is not None and block.dirty_bitmap is not None:  # the CPU's write: logged
            ram_block_set_dirty(block, hit[5] + off, len(data))
        return True


class _IRQPoll(DeadlineThread):
    """Asks the vCPU out of the engine after a delay (an interrupt waits for IF=1).

    Unicorn cannot tell us when the guest sets IF, so while an interrupt is
    pending with IF clear the vCPU runs with a deadline and looks again.
    ``fired`` tells the vCPU it was this.
    """

    def __init__(self, exit_request: TBExitRequest) -> None:
        self.exit_request = exit_request
        self.fired = False
        super().__init__("tcg-irq-poll")

    def schedule(self, delay_s: float) -> None:
        with self.cond:
            self.fired = False
            self._arm_locked(delay_s)

    def expired(self) -> None:
        self.fired = True
        self.exit_request.request()


class TCGVCPU:
    """One x86 vCPU on a Unicorn engine.  All methods but ``kick`` run on the vCPU thread."""

    def __init__(self, cpu: Any, tb_size: int = 0) -> None:
        verify_context_layout()
        verify_exit_request()
        self.cpu = cpu
        self.run = cpu.run
        self.env: CPUX86State = cpu.env
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        if tb_size:
            self.uc.ctl_set_tcg_buffer_size(tb_size)  # before the engine initialises on first use
        self.ctx = CPUContext(self.uc)
        self._load_blob(real_mode_context_bytes())
        self._rflags = ctypes.c_uint64()
        self._reg = ctypes.c_uint64()
        # RDTSC's result: EDX:EAX in one batched register write.
        self._tsc_lo, self._tsc_hi = ctypes.c_uint64(), ctypes.c_uint64()
        self._tsc_regs = (ctypes.c_int * 2)(ucx.UC_X86_REG_RAX, ucx.UC_X86_REG_RDX)
        self._tsc_vals = (ctypes.c_void_p * 2)(ctypes.addressof(self._tsc_lo), ctypes.addressof(self._tsc_hi))
        self.delivery = InterruptDelivery(self.ctx, _RAMAccess(cpu.memory), self.read_rflags)
        self.exits = 0
        self.kick_pending = False
        self.tb_flush_pending = False
        self.shutdown_pending = False
        self.tsc_offset = 0
        # Guest-physical [start, end) ranges of RAM the VMM wrote (DMA), whose
        # translated code goes before the guest runs again; filled by any
        # thread, emptied by the vCPU thread.
        self.code_invalidate: deque[tuple[int, int]] = deque()
        self._code_invalidate_pages = 0
        # Where each RAM block shows in the CPU's view, for the flat view it was computed from.
        self._ram_layout: tuple[FlatView | None, dict[RAMBlock, list[tuple[int, int, int]]]] = (None, {})
        # Mapped at the first run (memory_map.apply_pending), when the board is built.
        self.memory_map = UnicornMemoryMap(self.uc, cpu.memory, self._memory_changed)
        self._install_hooks()
        add_ram_write_notifier(self._ram_written)
        self.irq_poll = _IRQPoll(self.exit_request)
        self.rr: RRCPUThread | None = None  # the thread running this vCPU in turn with the others
        self._dirty_log_blocks: tuple[RAMBlock, ...] = ()  # what the engine logs, in its order

    # -- raw register access (no allocation) ------------------------------------------
    def read_rflags(self) -> int:
        _uc_reg_read(self.uc._uch, ucx.UC_X86_REG_RFLAGS, ctypes.byref(self._rflags))
        return self._rflags.value

    def write_rflags(self, value: int) -> None:
        self._rflags.value = value | EFLAGS_FIXED
        _uc_reg_write(self.uc._uch, ucx.UC_X86_REG_RFLAGS, ctypes.byref(self._rflags))

    def _read_reg(self, reg: int) -> int:
        _uc_reg_read(self.uc._uch, reg, ctypes.byref(self._reg))
        return self._reg.value

    def _write_reg(self, reg: int, value: int) -> None:
        self._reg.value = value & 0xFFFFFFFFFFFFFFFF
        _uc_reg_write(self.uc._uch, reg, ctypes.byref(self._reg))

    def _load_blob(self, blob: bytes) -> None:
        self.ctx.buf[:] = blob[40:]
        self.ctx.restore()

    # -- hooks ------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        uc = self.uc
        self.exit_request = TBExitRequest(uc)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, ucx.UC_X86_INS_SYSCALL)
        uc.hook_add(UC_HOOK_INSN, self._on_sysenter, None, 1, 0, ucx.UC_X86_INS_SYSENTER)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, ucx.UC_X86_INS_CPUID)
        # The frequent ones go straight from the engine to these methods.
        self._c_hooks: list[Any] = []
        self._add_insn_hook(_HOOK_IN_CB(self._on_in), ucx.UC_X86_INS_IN)
        self._add_insn_hook(_HOOK_OUT_CB(self._on_out), ucx.UC_X86_INS_OUT)
        self._add_insn_hook(_HOOK_INSN_CB(self._on_rdtsc), ucx.UC_X86_INS_RDTSC)
        self._add_insn_hook(_HOOK_INSN_CB(self._on_rdtscp), ucx.UC_X86_INS_RDTSCP)
        # pemu's engine (patch 0006) lets the local APIC's MSRs be modelled:
        # IA32_APIC_BASE, the x2APIC registers and IA32_TSC_DEADLINE.
        if self.cpu.apic is not None and engine_info().has(EngineFeature.MSR_HOOKS):
            self._add_insn_hook(_HOOK_INSN_CB(self._on_rdmsr), ucx.UC_X86_INS_RDMSR)
            self._add_insn_hook(_HOOK_INSN_CB(self._on_wrmsr), ucx.UC_X86_INS_WRMSR)

    def _add_insn_hook(self, cb: Any, insn: int) -> None:
        self._c_hooks.append(cb)  # the engine holds only a raw pointer: keep the thunk alive
        handle = ctypes.c_size_t()
        err = _uc_hook_add(self.uc._uch, ctypes.byref(handle), UC_HOOK_INSN, ctypes.cast(cb, ctypes.c_void_p),
                           None, ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
        if err:
            raise UcError(err)

    def _on_interrupt(self, uc: Uc, intno: int, _: object) -> None:
        ctx = self.ctx
        ctx.save()
        if intno == EXCP03_INT3 and ctx.exception_is_int and self._stale_int3(ctx):
            return
        try:
            self.delivery.deliver(intno & 0xFF, is_int=ctx.exception_is_int, error_code=ctx.error_code,
                                  next_eip=ctx.exception_next_eip)
        except TripleFault:
            self._triple_fault(intno)
            return
        ctx.restore()

    def _stale_int3(self, ctx: CPUContext) -> bool:
        """An ``int3`` that is no longer in guest memory: another vCPU patched
        the code after this engine translated it (Linux's text_poke_bp puts an
        int3 in, then takes it out again; each engine invalidates only what its
        own writes touch).  Then the translations are dropped and the
        instruction runs again from memory, instead of a stray #BP."""
        address = ctx.seg(1).base + ctx.exception_next_eip - 1
        try:
            if self.delivery.read_linear(address, 1) == b"\xcc":
                return False
        except GuestFault:
            return False
        ctx.eip = ctx.exception_next_eip - 1
        ctx.restore()
        self.tb_flush_pending = True
        self.kick()
        return True

    def _triple_fault(self, intno: int) -> None:
        from pemu.system.runstate import ShutdownCause, qemu_system_reset_request

        guest_error(f"CPU {self.cpu.cpu_index}: triple fault (last exception {intno:#x}), resetting")
        self.shutdown_pending = True
        self.exit_request.request()
        qemu_system_reset_request(ShutdownCause.GUEST_RESET)

    def _on_in(self, uch: int, port: int, size: int, _: object) -> int:
        try:
            with bql:
                return self.cpu.io.dispatch_read(port & 0xFFFF, size)
        except Exception as e:
            qemu_log_mask(LOG_GUEST_ERROR, f"tcg: in {port:#x}/{size}: {e!r}")
            return (1 << (8 * size)) - 1

    def _on_out(self, uch: int, port: int, size: int, value: int, _: object) -> None:
        try:
            with bql:
                self.cpu.io.dispatch_write(port & 0xFFFF, value, size)  # dispatch masks to size
        except Exception as e:
            qemu_log_mask(LOG_GUEST_ERROR, f"tcg: out {port:#x}/{size}: {e!r}")

    def _fault_in_insn_hook(self, fault: GuestFault) -> None:
        # Unicorn adds the instruction length to EIP after an instruction hook.
        try:
            self.delivery.deliver(fault.vector, is_int=False, error_code=fault.error_code, next_eip=self.ctx.eip)
        except TripleFault:
            self._triple_fault(fault.vector)
            return
        self.ctx.eip -= 2
        self.ctx.restore()

    def _on_syscall(self, uc: Uc, _: object) -> None:
        ctx = self.ctx
        ctx.save()
        rflags = self.read_rflags()
        try:
            new_rflags = do_syscall(ctx, rflags, ctx.eip + 2)
        except GuestFault as fault:
            self._fault_in_insn_hook(fault)
            return
        ctx.eip -= 2
        ctx.restore()
        self.write_rflags(new_rflags)

    def _on_sysenter(self, uc: Uc, _: object) -> None:
        ctx = self.ctx
        ctx.save()
        try:
            new_rflags = do_sysenter(ctx, self.read_rflags())
        except GuestFault as fault:
            self._fault_in_insn_hook(fault)
            return
        ctx.eip -= 2
        ctx.restore()
        self.write_rflags(new_rflags)

    def _on_cpuid(self, uc: Uc, _: object) -> int:
        leaf = self._read_reg(ucx.UC_X86_REG_EAX) & 0xFFFFFFFF
        subleaf = self._read_reg(ucx.UC_X86_REG_ECX) & 0xFFFFFFFF
        eax, ebx, ecx, edx = self.cpu.model.cpuid(leaf, subleaf)
        self._write_reg(ucx.UC_X86_REG_RAX, eax)
        self._write_reg(ucx.UC_X86_REG_RBX, ebx)
        self._write_reg(ucx.UC_X86_REG_RCX, ecx)
        self._write_reg(ucx.UC_X86_REG_RDX, edx)
        return 1

    def _on_rdmsr(self, uch: int, user_data: int) -> int:
        """RDMSR of an APIC MSR (1: handled here); other MSRs are the engine's."""
        msr = self._read_reg(ucx.UC_X86_REG_RCX) & 0xFFFFFFFF
        apic = self.cpu.apic
        value: int | None
        with bql:
            if msr == MSR_IA32_APICBASE:
                value = apic.get_base()
            elif msr == MSR_IA32_TSC_DEADLINE:
                deadline = apic.get_tsc_deadline()
                value = (deadline + self.tsc_offset) & _U64 if deadline else 0
            elif MSR_X2APIC_BASE <= msr <= MSR_X2APIC_END:
                value = apic.read_msr(msr)
            else:
                return 0
        if value is None:
            return _MSR_GP
        self._write_reg(ucx.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        self._write_reg(ucx.UC_X86_REG_RDX, value >> 32)
        return 1

    def _on_wrmsr(self, uch: int, user_data: int) -> int:
        """WRMSR of an APIC MSR (1: handled here); other MSRs are the engine's."""
        msr = self._read_reg(ucx.UC_X86_REG_RCX) & 0xFFFFFFFF
        value = ((self._read_reg(ucx.UC_X86_REG_RDX) & 0xFFFFFFFF) << 32
                 | self._read_reg(ucx.UC_X86_REG_RAX) & 0xFFFFFFFF)
        apic = self.cpu.apic
        with bql:
            if msr == MSR_IA32_APICBASE:
                ok = apic.set_base(value)
            elif msr == MSR_IA32_TSC_DEADLINE:
                # The APIC counts in the virtual clock's time; this vCPU's TSC runs ahead by tsc_offset.
                apic.set_tsc_deadline((value - self.tsc_offset) & _U64 if value else 0)
                ok = True
            elif MSR_X2APIC_BASE <= msr <= MSR_X2APIC_END:
                ok = apic.write_msr(msr, value)
            else:
                return 0
        return 1 if ok else _MSR_GP

    def tsc_now(self) -> int:
        return (qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) + self.tsc_offset) & _U64

    def _on_rdtsc(self, uch: int, user_data: int) -> int:
        # Kept to one clock read and one engine call: Linux reads the TSC often.
        tsc = (qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) + self.tsc_offset) & _U64
        self._tsc_lo.value = tsc & 0xFFFFFFFF
        self._tsc_hi.value = tsc >> 32
        _uc_reg_write_batch(uch, self._tsc_regs, self._tsc_vals, 2)
        return 1

    def _on_rdtscp(self, uch: int, user_data: int) -> int:
        self._on_rdtsc(uch, user_data)
        self.ctx.save()
        self._write_reg(ucx.UC_X86_REG_RCX, self.ctx.u64(Off.TSC_AUX) & 0xFFFFFFFF)
        return 1

    # -- notifications from other threads ------------------------------------------------
    def _memory_changed(self) -> None:
        self.kick()

    def _ram_written(self, block: RAMBlock, offset: int, length: int) -> None:
        """The VMM wrote ``length`` bytes of ``block`` (DMA, a loader): the
        code translated from them goes before the guest runs again, the rest
        of the translation cache stays (QEMU's tb_invalidate_phys_range)."""
        ranges = self._phys_ranges(block, offset, length)
        pages = sum((end - 1) // TARGET_PAGE_SIZE - start // TARGET_PAGE_SIZE + 1 for start, end in ranges)
        self._code_invalidate_pages += pages
        if self._code_invalidate_pages > CODE_INVALIDATE_MAX_PAGES:
            self.tb_flush_pending = True
        else:
            self.code_invalidate.extend(ranges)
        if ranges:
            self.kick()

    def _phys_ranges(self, block: RAMBlock, offset: int, length: int) -> list[tuple[int, int]]:
        """The guest-physical ranges where the CPU sees [offset, offset+length) of ``block``."""
        flatview = self.cpu.memory.flatview
        seen, layout = self._ram_layout
        if seen is not flatview:
            layout = {}
            for fr in flatview:
                if fr.mr.ram_block is not None:
                    layout.setdefault(fr.mr.ram_block, []).append((fr.offset_in_region, fr.size, fr.start))
            self._ram_layout = (flatview, layout)
        out = []
        end = offset + length
        for block_start, size, phys in layout.get(block, ()):
            lo, hi = max(offset, block_start), min(end, block_start + size)
            if lo < hi:
                out.append((phys + lo - block_start, phys + hi - block_start))
        return out

    def _invalidate_code(self, paging: bool) -> None:
        """Drop the translated code of the written ranges (vCPU thread).

        pemu's engine takes guest-physical ranges (QEMU's
        tb_invalidate_phys_range).  The stock engine's range invalidation
        (``ctl_remove_cache``) takes a *virtual* address, resolves it through
        the CPU's current translation to a RAM offset and assumes the rest of
        the range follows it; so it is given one page at a time, and only
        while paging is off, when virtual is physical.  With paging on the
        written pages cannot be named to it, and the whole cache is flushed."""
        uc = self.uc
        queue = self.code_invalidate
        self._code_invalidate_pages = 0
        if _uc_invalidate_phys is not None:
            handle = uc._uch
            while queue:
                start, end = queue.popleft()
                if _uc_invalidate_phys(handle, start, end):
                    raise UcError(UC_ERR_ARG)
            return
        if paging:
            queue.clear()
            uc.ctl_flush_tb()
            return
        while queue:
            start, end = queue.popleft()
            for page in range(start & -TARGET_PAGE_SIZE, end, TARGET_PAGE_SIZE):
                uc.ctl_remove_cache(page, page + TARGET_PAGE_SIZE)

    def handle_interrupt(self, mask: int) -> None:
        """``mask`` was raised in the CPU's interrupt requests (any thread, also
        from inside hooks; QEMU's tcg_handle_interrupt).

        An external interrupt alone does not stop the guest on pemu's engine:
        the engine is told one is pending and stops by itself where the guest
        can take it (IF=1, no interrupt shadow), so a vCPU running with IF=0
        (an interrupt handler feeding the UART, a spinlock with interrupts
        off) keeps its turn.  Anything else, and everything on the stock
        engine, is a kick."""
        if mask == CPU_INTERRUPT_HARD and _uc_set_irq_pending is not None:
            _uc_set_irq_pending(self.uc._uch, True)
            rr = self.rr
            if rr is not None:
                rr.kick_running(self.cpu)
            return
        self.kick()

    def request_exit(self) -> None:
        """End the vCPU's turn at the next block start (its time slice is over)."""
        self.exit_request.request()

    def kick(self) -> None:
        """Make the vCPU leave the engine soon (any thread, also from inside hooks)."""
        self.kick_pending = True
        self.exit_request.request()
        rr = self.rr
        if rr is not None:
            rr.kick_running(self.cpu)

    # -- the run loop (called by pemu.system.cpus) ------------------------------------
    def has_work(self) -> bool:
        request = self.run.interrupt_request
        if request & _CPU_INTERRUPT_SPECIAL:
            return True
        if request & CPU_INTERRUPT_HARD:
            self.ctx.save()
            return bool(self.ctx.eflags & IF_MASK)
        return False

    def exec(self) -> VCPUExit:
        """Run guest code until something needs the vCPU thread's attention.

        On pemu's engine an interrupt that waits for IF=1 stops the engine
        when the guest sets IF; it is delivered and the guest resumed here,
        within the same turn (QEMU's cpu_exec() does it between blocks)."""
        uc = self.uc
        ctx = self.ctx
        # Disarm first, then forget old kicks: a kick from now on re-arms the
        # request, so it either shows in kick_pending below or stops the engine.
        self.exit_request.clear()
        self.kick_pending = False
        if self.rr is not None:
            self.rr.begin_slice(self)
        window = _uc_set_irq_pending is not None
        if self.memory_map.apply_pending():
            self.tb_flush_pending = True
        if self.tb_flush_pending:
            self.tb_flush_pending = False
            self.code_invalidate.clear()  # the flush covers what is queued so far
            self._code_invalidate_pages = 0
            uc.ctl_flush_tb()
        while True:
            if window:
                # Cleared before interrupt_request is read: an interrupt raised
                # from now on sets it again (handle_interrupt).
                _uc_set_irq_pending(uc._uch, False)
            ctx.save()
            if self.code_invalidate:
                self._invalidate_code(bool(ctx.cr(0) & CR0_PG_MASK))
            poll = False
            request = self.run.interrupt_request
            if request & _CPU_INTERRUPT_SPECIAL:
                reason = self._special_interrupt(request)
                if reason is not None:
                    return reason
            if request & CPU_INTERRUPT_HARD:
                if ctx.eflags & IF_MASK and not ctx.hflags & HF.INHIBIT_IRQ:
                    if not self._deliver_external():
                        return VCPUExit.SHUTDOWN
                elif window:
                    _uc_set_irq_pending(uc._uch, True)
                else:
                    poll = True
                    self.irq_poll.schedule(IRQ_POLL_S)
            if self.kick_pending:
                if poll:
                    self.irq_poll.cancel()
                return VCPUExit.KICKED
            try:
                uc.emu_start(ctx.eip, 0)
                error = None
            except UcError as e:
                error = e
            except Exception as e:  # a hook's exception, re-raised by the binding
                error = None
                qemu_log_mask(LOG_GUEST_ERROR, f"tcg: hook error: {e!r}")
            finally:
                self.exits += 1
            if poll:
                self.irq_poll.cancel()
            if self.shutdown_pending:
                self.shutdown_pending = False
                return VCPUExit.SHUTDOWN
            if error is not None:
                return self._engine_error(error)
            if self.kick_pending or (poll and self.irq_poll.fired):
                return VCPUExit.KICKED
            # A stop requested (the time slice's end) comes first: the byte before RIP
            # is 0xF4 (HLT) by chance once in 256 stops, and taking such a stop for a
            # HLT with IF=0 would park the vCPU for good.
            if self.exit_request.armed:
                return VCPUExit.KICKED
            if self._after_hlt():
                return VCPUExit.HALTED
            if not window:
                return VCPUExit.KICKED
            if not (self.run.interrupt_request & CPU_INTERRUPT_HARD and ctx.eflags & IF_MASK
                    and not ctx.hflags & HF.INHIBIT_IRQ):
                return VCPUExit.KICKED  # not a stop for the interrupt window
            # The guest opened its interrupt window: take the interrupt and go on.

    def _after_hlt(self) -> bool:
        ctx = self.ctx
        ctx.save()
        cs = ctx.seg(1)
        try:
            return self.delivery.read_linear(cs.base + ctx.eip - 1, 1) == b"\xf4"
        except GuestFault:
            return False

    def _special_interrupt(self, request: int) -> VCPUExit | None:
        """INIT, start-up IPI and NMI, in that order (QEMU's x86_cpu_exec_interrupt).
        Returns how exec ends, or None to go on running."""
        from pemu.system.cpus import cpu_reset_interrupt
        from pemu.target.i386.cpu import x86_cpu_do_init, x86_cpu_do_sipi

        cpu = self.cpu
        if request & CPU_INTERRUPT_INIT:
            # A start-up IPI accepted meanwhile is taken next.
            cpu_reset_interrupt(cpu, CPU_INTERRUPT_INIT)
            with bql:
                x86_cpu_do_init(cpu, bool(self.run.interrupt_request & CPU_INTERRUPT_SIPI))
            self.put_state()
            return VCPUExit.HALTED if cpu.env.halted else VCPUExit.KICKED
        if request & CPU_INTERRUPT_SIPI:
            # Raised only by an APIC that was waiting for it (after INIT or reset).
            cpu_reset_interrupt(cpu, CPU_INTERRUPT_SIPI)
            with bql:
                x86_cpu_do_sipi(cpu)
            self.put_state()
            return VCPUExit.KICKED
        cpu_reset_interrupt(cpu, CPU_INTERRUPT_NMI)
        ctx = self.ctx
        try:
            self.delivery.deliver(EXCP02_NMI, is_int=False, error_code=0, next_eip=ctx.eip, is_hw=True)
        except TripleFault:
            self._triple_fault(EXCP02_NMI)
            self.shutdown_pending = False
            return VCPUExit.SHUTDOWN
        ctx.restore()
        return None

    def _deliver_external(self) -> bool:
        get_vector = self.cpu.get_pic_interrupt
        if get_vector is None:
            return True
        with bql:
            vector = get_vector()
        if vector is None or vector < 0:
            return True
        ctx = self.ctx
        try:
            self.delivery.deliver(vector & 0xFF, is_int=False, error_code=0, next_eip=ctx.eip, is_hw=True)
        except TripleFault:
            self._triple_fault(vector)
            self.shutdown_pending = False
            return False
        ctx.restore()
        return True

    def _engine_error(self, error: UcError, rom_write_dropped: bool = False) -> VCPUExit:
        if error.errno == UC_ERR_WRITE_PROT and not rom_write_dropped:
            return self._step_dropping_rom_writes()
        ctx = self.ctx
        ctx.save()
        if error.errno == UC_ERR_INSN_INVALID:
            vector, code = EXCP06_ILLOP, 0
        else:
            guest_error(f"CPU {self.cpu.cpu_index}: {error} at {ctx.seg(1).base + ctx.eip:#x}; raising #GP")
            vector, code = EXCP0D_GPF, 0
        try:
            self.delivery.deliver(vector, is_int=False, error_code=code, next_eip=ctx.eip)
        except TripleFault:
            self._triple_fault(vector)
            self.shutdown_pending = False
            return VCPUExit.SHUTDOWN
        ctx.restore()
        return VCPUExit.KICKED

    def _step_dropping_rom_writes(self) -> VCPUExit:
        """The guest wrote to ROM: run that one instruction with the write dropped."""
        ctx = self.ctx
        ctx.save()
        uc = self.uc
        uc.ctl_flush_tb()  # the step must translate a fresh one-instruction block
        try:
            with self.exit_request.exits_after_each_access():
                self.memory_map.run_dropping_rom_writes(lambda: uc.emu_start(ctx.eip, 0, 0, 1))
        except UcError as e:
            return self._engine_error(e, rom_write_dropped=True)
        if self.shutdown_pending:
            self.shutdown_pending = False
            return VCPUExit.SHUTDOWN
        return VCPUExit.KICKED

    # -- state transfer ------------------------------------------------------------------
    def get_state(self) -> None:
        ctx = self.ctx
        env = self.env
        ctx.save()
        env.regs = [ctx.reg(i) for i in range(16)]
        env.rip = ctx.eip
        env.rflags = self.read_rflags()
        env.segs = [ctx.seg(i) for i in range(6)]
        env.ldt = ctx.table(Off.LDT)
        env.tr = ctx.table(Off.TR)
        gdt, idt = ctx.table(Off.GDT), ctx.table(Off.IDT)
        env.gdt = DescriptorTable(gdt.base, gdt.limit)
        env.idt = DescriptorTable(idt.base, idt.limit)
        env.cr0, env.cr2, env.cr3, env.cr4 = ctx.cr(0), ctx.cr(2), ctx.cr(3), ctx.cr(4)
        env.efer = ctx.u64(Off.EFER)
        env.star, env.lstar, env.cstar = ctx.u64(Off.STAR), ctx.u64(Off.LSTAR), ctx.u64(Off.CSTAR)
        env.fmask, env.kernel_gs_base = ctx.u64(Off.FMASK), ctx.u64(Off.KERNELGSBASE)
        env.sysenter_cs = ctx.u32(Off.SYSENTER_CS)
        env.sysenter_esp, env.sysenter_eip = ctx.u64(Off.SYSENTER_ESP), ctx.u64(Off.SYSENTER_EIP)
        env.pat, env.tsc_aux, env.misc_enable = ctx.u64(Off.PAT), ctx.u64(Off.TSC_AUX), ctx.u64(Off.MISC_ENABLE)
        env.xcr0 = ctx.u64(Off.XCR0)
        env.tsc = self.tsc_now()
        env.halted = self.run.halted
        self._get_fpu_state(env)
        self._get_events(env, ctx)

    def _get_fpu_state(self, env: CPUX86State) -> None:
        """Debug registers, x87, SSE and the AVX upper halves, through the register API."""
        uc = self.uc
        env.dr = [uc.reg_read(reg) for reg in _DR_REGS]
        env.fpuc = uc.reg_read(ucx.UC_X86_REG_FPCW) & 0xFFFF
        env.fpus = uc.reg_read(ucx.UC_X86_REG_FPSW) & 0xFFFF
        tags = uc.reg_read(ucx.UC_X86_REG_FPTAG)
        env.fptag = sum(1 << n for n in range(8) if (tags >> (2 * n)) & 3 != 3)
        top = (env.fpus >> 11) & 7
        physical = []
        for reg in _FP_REGS:
            mantissa, exponent = uc.reg_read(reg)
            physical.append((exponent & 0xFFFF) << 64 | mantissa)
        env.fpregs = [physical[(top + i) & 7] for i in range(8)]
        env.fpop = uc.reg_read(ucx.UC_X86_REG_FOP) & 0x7FF
        env.fpip = uc.reg_read(ucx.UC_X86_REG_FIP)
        env.fpdp = uc.reg_read(ucx.UC_X86_REG_FDP)
        env.mxcsr = uc.reg_read(ucx.UC_X86_REG_MXCSR) & 0xFFFFFFFF
        ymm = [uc.reg_read(reg) for reg in _YMM_REGS]
        env.xmm = [value & _U128 for value in ymm]
        env.ymmh = [value >> 128 for value in ymm]

    def _get_events(self, env: CPUX86State, ctx: CPUContext) -> None:
        """Between two instructions nothing is half delivered here (the host
        delivers synchronously): only the interrupt shadow and what the vCPU
        thread has not taken yet (see cpu_events.tcg_cpu_events)."""
        tcg_cpu_events(self.cpu, env)
        env.interrupt_shadow = bool(ctx.hflags & HF.INHIBIT_IRQ)

    def put_state(self) -> None:
        env = self.env
        uc = self.uc
        ctx = self.ctx
        self._load_blob(real_mode_context_bytes())
        uc.msr_write(0xC0000080, env.efer & ~0x400)
        self._write_reg(ucx.UC_X86_REG_CR4, env.cr4)
        self._write_reg(ucx.UC_X86_REG_CR3, env.cr3)
        self._write_reg(ucx.UC_X86_REG_CR0, env.cr0)
        ctx.save()
        for i, value in enumerate(env.regs):
            ctx.set_reg(i, value)
        ctx.eip = env.rip
        for i, seg in enumerate(env.segs):
            ctx.set_seg(i, seg)
        ctx.set_table(Off.LDT, env.ldt)
        ctx.set_table(Off.TR, env.tr)
        ctx.set_table(Off.GDT, SegmentCache(0, env.gdt.base, env.gdt.limit, 0))
        ctx.set_table(Off.IDT, SegmentCache(0, env.idt.base, env.idt.limit, 0))
        ctx.set_cr(2, env.cr2)
        for off, value in ((Off.STAR, env.star), (Off.LSTAR, env.lstar), (Off.CSTAR, env.cstar),
                           (Off.FMASK, env.fmask), (Off.KERNELGSBASE, env.kernel_gs_base),
                           (Off.SYSENTER_ESP, env.sysenter_esp), (Off.SYSENTER_EIP, env.sysenter_eip),
                           (Off.PAT, env.pat), (Off.TSC_AUX, env.tsc_aux), (Off.MISC_ENABLE, env.misc_enable)):
            ctx.set_u64(off, value)
        ctx.set_u32(Off.SYSENTER_CS, env.sysenter_cs)
        ctx.set_u64(Off.XCR0, env.xcr0)
        ctx.eflags = env.rflags & ~0x8D5  # arithmetic flags are loaded through the API below
        ctx.hflags = seg_hflags(ctx.hflags & ~HF.INHIBIT_IRQ, env.cr0, env.rflags, env.segs[1], env.segs[2],
                                env.segs[3], env.segs[0]) | (HF.INHIBIT_IRQ if env.interrupt_shadow else 0)
        ctx.old_exception = -1
        ctx.restore()
        self.write_rflags(env.rflags)
        self._put_fpu_state(env)
        self.tsc_offset = (env.tsc - qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)) if env.tsc else 0
        self.shutdown_pending = False
        self.tb_flush_pending = True
        self._put_injected_event(env)

    def _put_fpu_state(self, env: CPUX86State) -> None:
        uc = self.uc
        for reg, value in zip(_DR_REGS, env.dr, strict=True):
            uc.reg_write(reg, value & _U64)
        top = (env.fpus >> 11) & 7
        uc.reg_write(ucx.UC_X86_REG_FPCW, env.fpuc & 0xFFFF)
        uc.reg_write(ucx.UC_X86_REG_FPSW, env.fpus & 0xFFFF)
        uc.reg_write(ucx.UC_X86_REG_FPTAG, sum(0 if env.fptag >> n & 1 else 3 << (2 * n) for n in range(8)))
        for i in range(8):
            value = env.fpregs[(i - top) & 7]   # physical register i is ST((i - top) mod 8)
            uc.reg_write(_FP_REGS[i], (value & _U64, (value >> 64) & 0xFFFF))
        uc.reg_write(ucx.UC_X86_REG_FOP, env.fpop & 0x7FF)
        uc.reg_write(ucx.UC_X86_REG_FIP, env.fpip & _U64)
        uc.reg_write(ucx.UC_X86_REG_FDP, env.fpdp & _U64)
        uc.reg_write(ucx.UC_X86_REG_MXCSR, env.mxcsr & 0xFFFFFFFF)
        for reg, low, high in zip(_YMM_REGS, env.xmm, env.ymmh, strict=True):
            uc.reg_write(reg, (high & _U128) << 128 | (low & _U128))

    def _put_injected_event(self, env: CPUX86State) -> None:
        """An event another accelerator was delivering when its state was
        taken (KVM stops a vCPU between the start and the end of a delivery)
        is delivered now.  A software interrupt or INT3/INTO is not: its
        instruction is where RIP points and raises it again."""
        vector: int | None = None
        error_code = 0
        if env.exception_injected >= 0 and env.exception_injected not in _SOFT_EXCEPTIONS:
            vector = env.exception_injected
            error_code = env.exception_error_code if env.exception_has_error_code else 0
        elif env.nmi_injected:
            vector = EXCP02_NMI
        elif env.interrupt_injected >= 0 and not env.interrupt_soft:
            vector = env.interrupt_injected
        if vector is None:
            return
        ctx = self.ctx
        ctx.save()
        try:
            self.delivery.deliver(vector, is_int=False, error_code=error_code, next_eip=ctx.eip,
                                  is_hw=vector != env.exception_injected)
        except TripleFault:
            self._triple_fault(vector)
            return
        ctx.restore()

    # -- the dirty log (pemu's engine, patch 0009; called with the vCPU out of the engine) --
    def log_start(self, blocks: tuple[RAMBlock, ...]) -> None:
        """Log the pages of ``blocks`` this engine writes, by host address:
        every mapping of a block (aliases, remaps) logs into the same bits."""
        ranges = (ctypes.c_uint64 * (2 * len(blocks)))()
        for i, block in enumerate(blocks):
            ranges[2 * i], ranges[2 * i + 1] = block.host_addr, block.size
        if _uc_dirty_log_start(self.uc._uch, ranges, len(blocks)):
            raise UcError(UC_ERR_ARG)
        self._dirty_log_blocks = blocks

    def log_sync(self, bitmaps: dict[RAMBlock, bytearray]) -> None:
        """OR the pages written since the last sync into ``bitmaps`` and forget them."""
        for index, block in enumerate(self._dirty_log_blocks):
            bitmap = bitmaps.get(block)
            if bitmap is None:
                continue
            buf = (ctypes.c_uint8 * len(bitmap)).from_buffer(bitmap)
            try:
                if _uc_dirty_log_sync(self.uc._uch, index, buf, None):
                    raise UcError(UC_ERR_ARG)
            finally:
                del buf  # the bytearray stays exported while the ctypes array lives

    def log_stop(self) -> None:
        _uc_dirty_log_stop(self.uc._uch)
        self._dirty_log_blocks = ()

    def destroy(self) -> None:
        self.irq_poll.stop()
        try:
            self.cpu.memory.remove_listener(self.memory_map)
        except ValueError:
            pass
        remove_ram_write_notifier(self._ram_written)

