"""The local APIC of a software CPU (QEMU's hw/intc/apic.c; Intel SDM vol. 3, chapter 11).

:class:`APIC` is the register file of one processor's APIC with its timer:
reachable as the 4 KiB xAPIC page (:meth:`APIC.read`/:meth:`APIC.write`,
offsets within the page) and, in x2APIC mode, as MSRs 0x800-0x8FF
(:meth:`APIC.read_msr`/:meth:`APIC.write_msr`).  Interrupts are accepted
into IRR/ISR as 256-bit integers, so the highest pending vector is one
``bit_length()``; the CPU side asks :meth:`APIC.has_interrupt` and takes
one with :meth:`APIC.get_interrupt` at each interrupt window.

The timer counts APIC bus cycles of :data:`APIC_BUS_CYCLE_NS` (1 GHz, as
QEMU's and KVM's) from an injected clock; its current count is computed,
nothing ticks.  Periodic timers are re-armed no faster than
:data:`MIN_TIMER_PERIOD_NS` (as KVM's ``min_timer_period_us``): a guest
cannot make the VMM spin on one.

:class:`APICMemory` is the handler of the region at 0xFEE00000 that QEMU
calls "apic-msi": a CPU's access reaches its own APIC, a device's write
(or a write outside the APIC page's registers) is an MSI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pemu.hw.core.qdev import DeviceClass, DeviceState
from pemu.hw.intc.apic_common import (
    APIC_BROADCAST_X2APIC,
    APIC_DEFAULT_ADDRESS,
    APIC_DESTMODE_LOGICAL,
    APIC_DESTMODE_PHYSICAL,
    APIC_DFR_FLAT,
    APIC_DM_EXTINT,
    APIC_DM_FIXED,
    APIC_DM_INIT,
    APIC_DM_LOWEST,
    APIC_DM_NMI,
    APIC_DM_SMI,
    APIC_DM_STARTUP,
    APIC_ESR_ILLEGAL_ADDRESS,
    APIC_ESR_RECV_ILLEGAL_VECTOR,
    APIC_ESR_SEND_ILLEGAL_VECTOR,
    APIC_ICR_DELIV_SHIFT,
    APIC_ICR_DEST_MODE,
    APIC_ICR_LEVEL_ASSERT,
    APIC_ICR_SHORTHAND_SHIFT,
    APIC_ICR_TRIGGER,
    APIC_ICR_WRITABLE,
    APIC_LVT_DELIV_STS,
    APIC_LVT_ERROR,
    APIC_LVT_LEVEL_TRIGGER,
    APIC_LVT_LINT0,
    APIC_LVT_LINT1,
    APIC_LVT_MASKED,
    APIC_LVT_NB,
    APIC_LVT_PERFORM,
    APIC_LVT_REMOTE_IRR,
    APIC_LVT_THERMAL,
    APIC_LVT_TIMER,
    APIC_LVT_TIMER_MODE,
    APIC_LVT_TIMER_SHIFT,
    APIC_PAGE_SIZE,
    APIC_SH_NONE,
    APIC_SH_SELF,
    APIC_SPACE_SIZE,
    APIC_SPURIO_ENABLED,
    APIC_SPURIO_FOCUS_DISABLED,
    APIC_TRIGGER_EDGE,
    APIC_TRIGGER_LEVEL,
    APIC_VERSION,
    APICCPU,
    MSR_IA32_APICBASE_BASE,
    MSR_IA32_APICBASE_BSP,
    MSR_IA32_APICBASE_ENABLE,
    MSR_IA32_APICBASE_EXTD,
    MSR_X2APIC_BASE,
    TYPE_APIC_COMMON,
    APICBus,
    APICCommon,
    APICCommonState,
    NoCPU,
    TimerMode,
)
from pemu.migration.vmstate import (
    BOOL,
    I64,
    Array,
    Struct,
    UInt,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.migration.vmstate import U8 as VM_U8
from pemu.migration.vmstate import U32 as VM_U32
from pemu.migration.vmstate import U64 as VM_U64
from pemu.qom.object import ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps
from pemu.util.log import guest_error
from pemu.util.timer import Clock, TimerFactory, virtual_clock_ns, virtual_timer

if TYPE_CHECKING:
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter

APIC_BUS_CYCLE_NS = 1
MIN_TIMER_PERIOD_NS = 200_000
U32 = 0xFFFFFFFF

# Register indices: the xAPIC offset >> 4, also the x2APIC MSR - 0x800.
REG_ID = 0x02
REG_VERSION = 0x03
REG_TPR = 0x08
REG_APR = 0x09
REG_PPR = 0x0A
REG_EOI = 0x0B
REG_RRD = 0x0C
REG_LDR = 0x0D
REG_DFR = 0x0E
REG_SVR = 0x0F
REG_ISR = 0x10
REG_TMR = 0x18
REG_IRR = 0x20
REG_ESR = 0x28
REG_LVT_CMCI = 0x2F
REG_ICR_LOW = 0x30
REG_ICR_HIGH = 0x31
REG_LVT = 0x32          # 0x32..0x37: timer, thermal, perf, LINT0, LINT1, error
REG_TIMER_INITIAL = 0x38
REG_TIMER_CURRENT = 0x39
REG_TIMER_DIVIDE = 0x3E
REG_SELF_IPI = 0x3F      # x2APIC only

# The bits of each LVT a guest can write (the rest are read-only or reserved).
_LVT_WRITABLE = {
    APIC_LVT_TIMER: 0x000100FF | APIC_LVT_TIMER_MODE,
    APIC_LVT_THERMAL: 0x000107FF,
    APIC_LVT_PERFORM: 0x000107FF,
    APIC_LVT_LINT0: 0x0001A7FF,
    APIC_LVT_LINT1: 0x0001A7FF,
    APIC_LVT_ERROR: 0x000100FF,
}
_SVR_WRITABLE = 0x3FF    # vector, software enable, focus disable (no EOI-broadcast suppression)
_DIVIDE_WRITABLE = 0xB


def _divide_shift(divide_conf: int) -> int:
    """Divide configuration bits 3,1:0 → log2 of the divisor (0b111 divides by 1)."""
    v = (divide_conf & 3) | ((divide_conf >> 1) & 4)
    return (v + 1) & 7


class APIC(APICCommon):
    """One processor's local APIC.

    ``cpu`` is the processor (see :class:`APICCPU`); ``bus`` is set when the
    machine's :class:`APICBus` attaches it.  ``tsc_to_ns`` turns a TSC value
    into a deadline on ``clock`` for the TSC-deadline mode (by default the
    TSC counts nanoseconds of that clock).
    """

    def __init__(self, apic_id: int = 0, *, bsp: bool = False, cpu: APICCPU | None = None,
                 clock: Clock = virtual_clock_ns, timer_factory: TimerFactory = virtual_timer,
                 version: int = APIC_VERSION, tsc_deadline: bool = True,
                 tsc_to_ns: Callable[[int], int] | None = None, phys_bits: int = 40) -> None:
        super().__init__(apic_id, bsp=bsp, phys_bits=phys_bits)
        self.cpu: APICCPU = cpu if cpu is not None else NoCPU()
        self.bus: APICBus | None = None
        self.clock = clock
        self.version = version & 0xFF
        self.tsc_deadline_supported = tsc_deadline
        self.tsc_to_ns = tsc_to_ns if tsc_to_ns is not None else (lambda tsc: tsc)
        self.timer = timer_factory(self._timer_expired)
        self.timer_expiry = -1          # ns, when armed
        self._lvt_mask = dict(_LVT_WRITABLE)
        if not tsc_deadline:
            self._lvt_mask[APIC_LVT_TIMER] &= ~(2 << APIC_LVT_TIMER_SHIFT)
        self.irq_pending = False        # the level last given to cpu.apic_irq_changed
        self.saved_initial_apic_id = apic_id  # what a loaded stream says the APIC ID is (checked)
        self.lint0_level = 0            # the 8259's INTR output, as last seen on LINT0
        self._reset_registers()
        self.wait_for_sipi = not bsp

    # -- reset --------------------------------------------------------------------------
    def _reset_registers(self) -> None:
        self.tpr = 0
        self.spurious_vec = 0xFF
        self.log_dest = 0
        self.dest_mode = APIC_DFR_FLAT
        self.isr = 0
        self.irr = 0
        self.tmr = 0
        self.lvt = [APIC_LVT_MASKED] * APIC_LVT_NB
        self.esr = 0                    # what a read returns (latched by the last write)
        self.esr_pending = 0            # errors since then
        self.icr_low = 0
        self.icr_high = 0
        self.divide_conf = 0
        self.count_shift = _divide_shift(0)
        self.initial_count = 0
        self.initial_count_load_time = 0
        self.tsc_deadline = 0
        self.timer.delete()
        self.timer_expiry = -1
        self.sipi_vector = 0
        self._update_irq()

    def reset(self) -> None:
        """Power-on and RESET: xAPIC mode at the default base, enabled."""
        self.apicbase = APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | (self.apicbase & MSR_IA32_APICBASE_BSP)
        self.id = self.initial_apic_id & 0xFF
        self.init_reset()

    def firmware_virtual_wire(self) -> None:
        """What firmware leaves on the BSP (SeaBIOS does it): LINT0 as ExtINT,
        so the 8259 reaches the processor through the APIC, and LINT1 as NMI.
        Reset itself masks every LVT, as QEMU's does since 2.4; a board that
        starts a kernel without firmware calls this."""
        self.lvt[APIC_LVT_LINT0] = APIC_DM_EXTINT << 8
        self.lvt[APIC_LVT_LINT1] = APIC_DM_NMI << 8
        self._update_irq()

    def init_reset(self) -> None:
        """An INIT: the registers return to their reset values, except the
        APIC ID and IA32_APIC_BASE; an AP then waits for a start-up IPI."""
        self._reset_registers()
        self.wait_for_sipi = not self.is_bsp

    # -- derived registers --------------------------------------------------------------
    @property
    def sw_enabled(self) -> bool:
        return bool(self.spurious_vec & APIC_SPURIO_ENABLED)

    @property
    def focus_enabled(self) -> bool:
        return not self.spurious_vec & APIC_SPURIO_FOCUS_DISABLED

    @property
    def physical_id(self) -> int:
        return self.initial_apic_id if self.x2apic_mode else self.id

    @property
    def ldr(self) -> int:
        return self.x2apic_ldr if self.x2apic_mode else self.log_dest << 24

    def get_ppr(self) -> int:
        isrv = self.isr.bit_length() - 1
        isr_class = (isrv & 0xF0) if isrv >= 0 else 0
        return self.tpr if (self.tpr & 0xF0) >= isr_class else isr_class

    def get_apr(self) -> int:
        irrv = self.irr.bit_length() - 1
        isrv = self.isr.bit_length() - 1
        irr_class = (irrv & 0xF0) if irrv >= 0 else 0
        isr_class = (isrv & 0xF0) if isrv >= 0 else 0
        if (self.tpr & 0xF0) >= irr_class and (self.tpr & 0xF0) > isr_class:
            return self.tpr
        return max(self.tpr & 0xF0, isr_class, irr_class)

    def match_logical(self, dest: int, wide: bool) -> bool:
        if self.x2apic_mode:
            ldr = self.x2apic_ldr
            if not wide:
                # An 8-bit logical message (I/O APIC, MSI): cluster in the
                # high nibble, members below.
                dest = ((dest >> 4) << 16) | (dest & 0xF)
            if dest == 0xFFFFFFFF:
                return True
            return (dest >> 16) == (ldr >> 16) and bool(dest & ldr & 0xFFFF)
        if dest == 0xFF:
            return True
        if self.dest_mode == APIC_DFR_FLAT:
            return bool(dest & self.log_dest)
        return (dest & 0xF0) == (self.log_dest & 0xF0) and bool(dest & self.log_dest & 0x0F)

    # -- interrupt acceptance -----------------------------------------------------------
    def _update_irq(self) -> None:
        pending = self.has_interrupt()
        if pending != self.irq_pending:
            self.irq_pending = pending
            self.cpu.apic_irq_changed(pending)

    def has_interrupt(self) -> bool:
        """Whether a fixed interrupt can be delivered now (QEMU's apic_irq_pending > 0)."""
        irr = self.irr
        if not irr or not self.spurious_vec & APIC_SPURIO_ENABLED:
            return False
        isrv = self.isr.bit_length() - 1
        isr_class = (isrv & 0xF0) if isrv >= 0 else 0
        tpr_class = self.tpr & 0xF0
        return ((irr.bit_length() - 1) & 0xF0) > (tpr_class if tpr_class >= isr_class else isr_class)

    def get_interrupt(self) -> int:
        """The INTA cycle: the highest deliverable vector moves from IRR to ISR;
        -1 if there is none (then the CPU asks the 8259 if :meth:`accept_pic_intr`)."""
        if not self.has_interrupt():
            return -1
        vector = self.irr.bit_length() - 1
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        self._update_irq()
        return vector

    def set_irq(self, vector: int, trigger_mode: int) -> None:
        """Accept a fixed interrupt into IRR (and TMR for level)."""
        if vector < 16:
            self._error(APIC_ESR_RECV_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self.irr |= bit
        if trigger_mode == APIC_TRIGGER_LEVEL:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self._update_irq()

    def accept_message(self, delivery_mode: int, vector: int, trigger_mode: int) -> None:
        """A message on the bus addressed to this APIC."""
        if delivery_mode == APIC_DM_FIXED or delivery_mode == APIC_DM_LOWEST:
            if not self.sw_enabled:
                return  # a software-disabled APIC accepts no fixed interrupts
            self.set_irq(vector, trigger_mode)
        elif delivery_mode == APIC_DM_NMI:
            self.cpu.apic_nmi()
        elif delivery_mode == APIC_DM_SMI:
            self.cpu.apic_smi()
        elif delivery_mode == APIC_DM_INIT:
            self.cpu.apic_init()
        elif delivery_mode == APIC_DM_STARTUP:
            if self.wait_for_sipi:
                self.wait_for_sipi = False
                self.sipi_vector = vector
                self.cpu.apic_sipi(vector)
        elif delivery_mode == APIC_DM_EXTINT:
            self.cpu.apic_extint()
        else:
            guest_error(f"apic {self.initial_apic_id}: message with reserved delivery mode {delivery_mode}")

    def eoi(self) -> None:
        isrv = self.isr.bit_length() - 1
        if isrv < 0:
            return
        bit = 1 << isrv
        self.isr &= ~bit
        if self.tmr & bit:
            for n in (APIC_LVT_LINT0, APIC_LVT_LINT1):
                if self.lvt[n] & APIC_LVT_REMOTE_IRR and self.lvt[n] & 0xFF == isrv:
                    self.lvt[n] &= ~APIC_LVT_REMOTE_IRR
                    if n == APIC_LVT_LINT0 and self.lint0_level:
                        self.local_deliver(n)   # still asserted: again
            if self.bus is not None:
                self.bus.eoi_broadcast(isrv)
        self._update_irq()

    def _error(self, bits: int) -> None:
        self.esr_pending |= bits
        self.local_deliver(APIC_LVT_ERROR)

    def local_deliver(self, n: int) -> None:
        """An LVT source fired (QEMU's apic_local_deliver)."""
        lvt = self.lvt[n]
        if lvt & APIC_LVT_MASKED:
            return
        mode = (lvt >> 8) & 7
        if mode == APIC_DM_FIXED:
            trigger = APIC_TRIGGER_EDGE
            if n in (APIC_LVT_LINT0, APIC_LVT_LINT1) and lvt & APIC_LVT_LEVEL_TRIGGER:
                if lvt & APIC_LVT_REMOTE_IRR:
                    return   # the last one is not EOIed yet
                trigger = APIC_TRIGGER_LEVEL
                self.lvt[n] = lvt | APIC_LVT_REMOTE_IRR
            vector = lvt & 0xFF
            if vector < 16:
                # An illegal vector in an LVT; report it once, without recursing
                # through the error LVT itself.
                if n != APIC_LVT_ERROR:
                    self._error(APIC_ESR_RECV_ILLEGAL_VECTOR)
                else:
                    self.esr_pending |= APIC_ESR_RECV_ILLEGAL_VECTOR
                return
            self.set_irq(vector, trigger)
        elif mode == APIC_DM_NMI:
            self.cpu.apic_nmi()
        elif mode == APIC_DM_SMI:
            self.cpu.apic_smi()
        elif mode == APIC_DM_EXTINT:
            self.cpu.apic_extint()
        elif mode == APIC_DM_INIT:
            self.cpu.apic_init()

    # -- the LINT pins (the 8259's INTR on LINT0, NMI on LINT1) ---------------------------
    def accept_pic_intr(self) -> bool:
        """Whether the 8259's output reaches this processor (QEMU's apic_accept_pic_intr):
        with the APIC globally disabled LINT0 is the INTR pin, otherwise when LINT0 is unmasked."""
        return not self.hw_enabled or not self.lvt[APIC_LVT_LINT0] & APIC_LVT_MASKED

    def deliver_pic_intr(self, level: int) -> None:
        """The 8259's INTR output changed."""
        self.lint0_level = level
        if not self.hw_enabled:
            if level:
                self.cpu.apic_extint()
            return
        if level:
            self.local_deliver(APIC_LVT_LINT0)
            return
        lvt = self.lvt[APIC_LVT_LINT0]
        if (lvt >> 8) & 7 == APIC_DM_FIXED and lvt & APIC_LVT_LEVEL_TRIGGER:
            bit = 1 << (lvt & 0xFF)
            if self.irr & bit:
                # Withdrawn before it was serviced: no EOI will come for it.
                self.irr &= ~bit
                self.lvt[APIC_LVT_LINT0] = lvt & ~APIC_LVT_REMOTE_IRR
                self._update_irq()

    def deliver_nmi(self) -> None:
        """The LINT1 pin (an NMI button, the watchdog)."""
        if not self.hw_enabled:
            self.cpu.apic_nmi()
        else:
            self.local_deliver(APIC_LVT_LINT1)

    # -- IA32_APIC_BASE mode changes ----------------------------------------------------
    def _mode_changed(self, old_mode: int, new_mode: int) -> None:
        if not new_mode & MSR_IA32_APICBASE_ENABLE:
            # Globally disabled: state as after reset, and no interrupts.
            self._reset_registers()
            self.spurious_vec &= ~APIC_SPURIO_ENABLED
        elif new_mode & MSR_IA32_APICBASE_EXTD and not old_mode & MSR_IA32_APICBASE_EXTD:
            self.log_dest = 0   # the LDR is now derived from the x2APIC ID
        self._update_irq()

    # -- the timer ---------------------------------------------------------------------
    @property
    def timer_mode(self) -> int:
        return (self.lvt[APIC_LVT_TIMER] & APIC_LVT_TIMER_MODE) >> APIC_LVT_TIMER_SHIFT

    def _ticks(self, now: int) -> int:
        return max(0, now - self.initial_count_load_time) // APIC_BUS_CYCLE_NS >> self.count_shift

    def _ticks_to_ns(self, ticks: int) -> int:
        return (ticks << self.count_shift) * APIC_BUS_CYCLE_NS

    def get_current_count(self) -> int:
        mode = self.timer_mode
        if mode == TimerMode.TSC_DEADLINE or not self.initial_count:
            return 0
        d = self._ticks(self.clock())
        if mode == TimerMode.PERIODIC:
            return self.initial_count - d % self.initial_count
        return max(0, self.initial_count - d)

    def _arm(self, expiry: int) -> None:
        self.timer_expiry = expiry
        self.timer.mod_ns(expiry)

    def _disarm(self) -> None:
        self.timer_expiry = -1
        self.timer.delete()

    def _timer_update(self, now: int) -> None:
        """Arm the timer for the count's next zero after ``now`` (or stop it)."""
        mode = self.timer_mode
        if mode == TimerMode.TSC_DEADLINE:
            if self.tsc_deadline:
                self._arm(self.tsc_to_ns(self.tsc_deadline))
            else:
                self._disarm()
            return
        if not self.initial_count or not self.hw_enabled:
            self._disarm()
            return
        d = self._ticks(now)
        if mode == TimerMode.PERIODIC:
            period_ns = self._ticks_to_ns(self.initial_count)
            next_reload = (d // self.initial_count + 1) * self.initial_count
            expiry = self.initial_count_load_time + self._ticks_to_ns(next_reload)
            if period_ns < MIN_TIMER_PERIOD_NS:
                expiry = max(expiry, now + MIN_TIMER_PERIOD_NS)
            self._arm(expiry)
        elif d < self.initial_count:
            self._arm(self.initial_count_load_time + self._ticks_to_ns(self.initial_count))
        else:
            self._disarm()

    def _timer_expired(self) -> None:
        self.timer_expiry = -1
        if self.timer_mode == TimerMode.TSC_DEADLINE:
            self.tsc_deadline = 0
            self.local_deliver(APIC_LVT_TIMER)
            return
        self.local_deliver(APIC_LVT_TIMER)
        if self.timer_mode == TimerMode.PERIODIC:
            self._timer_update(self.clock())

    def set_tsc_deadline(self, tsc: int) -> None:
        """A WRMSR to IA32_TSC_DEADLINE: ignored unless the timer is in
        TSC-deadline mode; 0 disarms."""
        if self.timer_mode != TimerMode.TSC_DEADLINE:
            return
        self.tsc_deadline = tsc & ((1 << 64) - 1)
        self._timer_update(self.clock())

    def get_tsc_deadline(self) -> int:
        return self.tsc_deadline if self.timer_mode == TimerMode.TSC_DEADLINE else 0

    # -- registers -----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        """A read within the xAPIC page."""
        if self.x2apic_mode:
            return 0  # the MMIO interface is off in x2APIC mode
        if offset & 0xF or size != 4:
            guest_error(f"apic {self.initial_apic_id}: {size}-byte read at {offset:#x} returns 0")
            return 0
        value = self._read_reg(offset >> 4, False)
        return 0 if value is None else value

    def write(self, offset: int, value: int, size: int) -> None:
        if self.x2apic_mode:
            return
        if size != 4 or offset & 0xF:
            guest_error(f"apic {self.initial_apic_id}: {size}-byte write at {offset:#x} ignored")
            return
        self._write_reg(offset >> 4, value & U32, False)

    def read_msr(self, msr: int) -> int | None:
        """RDMSR of an x2APIC register; None means #GP."""
        if not self.x2apic_mode:
            return None
        index = msr - MSR_X2APIC_BASE
        if index == REG_ICR_LOW:
            return (self.icr_high << 32) | self.icr_low
        if index in (REG_EOI, REG_SELF_IPI, REG_ICR_HIGH, REG_DFR, REG_APR, REG_RRD):
            return None
        return self._read_reg(index, True)

    def write_msr(self, msr: int, value: int) -> bool:
        """WRMSR of an x2APIC register; False means #GP."""
        if not self.x2apic_mode:
            return False
        index = msr - MSR_X2APIC_BASE
        if index == REG_ICR_LOW:
            if value & ~(APIC_ICR_WRITABLE | (U32 << 32)) & ((1 << 64) - 1):
                return False
            self.icr_high = (value >> 32) & U32
            self._write_icr(value & U32, True)
            return True
        if index in (REG_ID, REG_VERSION, REG_PPR, REG_LDR, REG_DFR, REG_ICR_HIGH, REG_TIMER_CURRENT,
                     REG_APR, REG_RRD) or REG_ISR <= index < REG_ESR:
            return False
        if value >> 32:
            return False
        if index in (REG_EOI, REG_ESR) and value:
            return False   # x2APIC: EOI and ESR take only 0
        if index == REG_SELF_IPI:
            if value & ~0xFF:
                return False
            self._send_self_ipi(value & 0xFF)
            return True
        return self._write_reg(index, value, True)

    def _read_reg(self, index: int, x2: bool) -> int | None:
        if index == REG_ID:
            return self.x2apic_id if x2 else self.id << 24
        if index == REG_VERSION:
            return self.version | ((APIC_LVT_NB - 1) << 16)
        if index == REG_TPR:
            return self.tpr
        if index == REG_APR:
            return self.get_apr()
        if index == REG_PPR:
            return self.get_ppr()
        if index == REG_EOI:
            return 0
        if index == REG_LDR:
            return self.x2apic_ldr if x2 else self.log_dest << 24
        if index == REG_DFR:
            return (self.dest_mode << 28) | 0x0FFFFFFF
        if index == REG_SVR:
            return self.spurious_vec
        if REG_ISR <= index < REG_ISR + 8:
            return (self.isr >> ((index - REG_ISR) * 32)) & U32
        if REG_TMR <= index < REG_TMR + 8:
            return (self.tmr >> ((index - REG_TMR) * 32)) & U32
        if REG_IRR <= index < REG_IRR + 8:
            return (self.irr >> ((index - REG_IRR) * 32)) & U32
        if index == REG_ESR:
            return self.esr
        if index == REG_ICR_LOW:
            return self.icr_low
        if index == REG_ICR_HIGH:
            return self.icr_high
        if REG_LVT <= index < REG_LVT + APIC_LVT_NB:
            return self.lvt[index - REG_LVT]
        if index == REG_TIMER_INITIAL:
            return self.initial_count
        if index == REG_TIMER_CURRENT:
            return self.get_current_count()
        if index == REG_TIMER_DIVIDE:
            return self.divide_conf
        if x2:
            return None
        self._error(APIC_ESR_ILLEGAL_ADDRESS)
        return None

    def _write_reg(self, index: int, value: int, x2: bool) -> bool:
        if index == REG_ID:
            if not x2:
                self.id = value >> 24
        elif index == REG_TPR:
            self.tpr = value & 0xFF
            self._update_irq()
        elif index == REG_EOI:
            self.eoi()
        elif index == REG_LDR:
            if not x2:
                self.log_dest = value >> 24
        elif index == REG_DFR:
            if not x2:
                self.dest_mode = value >> 28
        elif index == REG_SVR:
            self.spurious_vec = value & _SVR_WRITABLE
            if not self.sw_enabled:
                # Software disabled: every LVT is masked and stays so.
                for n in range(APIC_LVT_NB):
                    self.lvt[n] |= APIC_LVT_MASKED
            self._update_irq()
        elif index == REG_ESR:
            self.esr = self.esr_pending
            self.esr_pending = 0
        elif index == REG_ICR_LOW:
            self._write_icr(value, False)
        elif index == REG_ICR_HIGH:
            self.icr_high = value & 0xFF000000
        elif REG_LVT <= index < REG_LVT + APIC_LVT_NB:
            self._write_lvt(index - REG_LVT, value)
        elif index == REG_TIMER_INITIAL:
            if self.timer_mode != TimerMode.TSC_DEADLINE:
                now = self.clock()
                self.initial_count = value
                self.initial_count_load_time = now
                self._timer_update(now)
        elif index == REG_TIMER_DIVIDE:
            self._write_divide(value)
        elif index in (REG_VERSION, REG_APR, REG_PPR, REG_RRD, REG_TIMER_CURRENT) \
                or REG_ISR <= index < REG_ESR:
            pass   # read-only in xAPIC mode: writes are dropped
        elif x2 or index == REG_SELF_IPI:
            return False
        else:
            self._error(APIC_ESR_ILLEGAL_ADDRESS)
        return True

    def _write_lvt(self, n: int, value: int) -> None:
        old = self.lvt[n]
        mask = self._lvt_mask[n]
        new = (old & ~mask) | (value & mask)
        if not self.sw_enabled:
            new |= APIC_LVT_MASKED
        if n == APIC_LVT_TIMER and (new & APIC_LVT_TIMER_MODE) == APIC_LVT_TIMER_MODE:
            new &= ~APIC_LVT_TIMER_MODE   # mode 3 is reserved: one-shot
        self.lvt[n] = new
        if n == APIC_LVT_TIMER:
            old_mode = (old & APIC_LVT_TIMER_MODE) >> APIC_LVT_TIMER_SHIFT
            new_mode = (new & APIC_LVT_TIMER_MODE) >> APIC_LVT_TIMER_SHIFT
            if (old_mode == TimerMode.TSC_DEADLINE) != (new_mode == TimerMode.TSC_DEADLINE):
                # Switching to or from TSC-deadline disarms the timer.
                self.initial_count = 0
                self.tsc_deadline = 0
            self._timer_update(self.clock())
        elif n == APIC_LVT_LINT0 and not new & APIC_LVT_MASKED and old & APIC_LVT_MASKED \
                and self.lint0_level:
            # Unmasking LINT0 while the 8259's output is high delivers it.
            self.local_deliver(APIC_LVT_LINT0)

    def _write_divide(self, value: int) -> None:
        now = self.clock()
        elapsed = self._ticks(now)
        self.divide_conf = value & _DIVIDE_WRITABLE
        self.count_shift = _divide_shift(self.divide_conf)
        # The count goes on from where it is, now at the new rate.
        self.initial_count_load_time = now - self._ticks_to_ns(elapsed)
        if self.timer_mode != TimerMode.TSC_DEADLINE:
            self._timer_update(now)

    # -- IPIs ----------------------------------------------------------------------------
    def _write_icr(self, value: int, x2: bool) -> None:
        self.icr_low = value & APIC_ICR_WRITABLE
        vector = value & 0xFF
        delivery_mode = (value >> APIC_ICR_DELIV_SHIFT) & 7
        dest_mode = APIC_DESTMODE_LOGICAL if value & APIC_ICR_DEST_MODE else APIC_DESTMODE_PHYSICAL
        trigger_mode = APIC_TRIGGER_LEVEL if value & APIC_ICR_TRIGGER else APIC_TRIGGER_EDGE
        shorthand = (value >> APIC_ICR_SHORTHAND_SHIFT) & 3
        dest = self.icr_high if x2 else self.icr_high >> 24
        if delivery_mode == APIC_DM_INIT and trigger_mode == APIC_TRIGGER_LEVEL \
                and not value & APIC_ICR_LEVEL_ASSERT:
            return   # INIT level de-assert: only synchronises arbitration IDs
        if delivery_mode in (3, APIC_DM_EXTINT):
            guest_error(f"apic {self.initial_apic_id}: IPI with reserved delivery mode {delivery_mode} dropped")
            return
        if delivery_mode in (APIC_DM_FIXED, APIC_DM_LOWEST) and vector < 16:
            self._error(APIC_ESR_SEND_ILLEGAL_VECTOR)
            return
        if self.bus is None:
            if shorthand == APIC_SH_SELF or (shorthand == APIC_SH_NONE and dest == self.physical_id):
                self.accept_message(delivery_mode, vector, trigger_mode)
            return
        self.bus.send_ipi(self, shorthand, dest, dest_mode, delivery_mode, vector, trigger_mode, wide=x2)

    def _send_self_ipi(self, vector: int) -> None:
        if vector < 16:
            self._error(APIC_ESR_SEND_ILLEGAL_VECTOR)
            return
        self.accept_message(APIC_DM_FIXED, vector, APIC_TRIGGER_EDGE)


# --- migration (QEMU's vmstate_apic_common) --------------------------------------------


class _Bits256:
    """IRR, ISR or TMR: 256 bits, big-endian."""

    __slots__ = ()

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        f.put_buffer(int(value).to_bytes(32, "big"))

    def load(self, f: QEMUFileReader, current: Any, where: str) -> int:
        value = int.from_bytes(f.get_buffer(32), "big")
        if value & 0xFFFF:
            raise VMStateError(f"{where}: vectors 0-15 set ({value & 0xFFFF:#06x}); they are not interrupts")
        return value


_BITS256 = _Bits256()
_LVT_STATUS = APIC_LVT_DELIV_STS | APIC_LVT_REMOTE_IRR
_RESERVED_LVT_MODES = (3, 6)    # and LOWEST (1), which no LVT may use


def _check_lvt(values: list[int]) -> bool:
    for n, value in enumerate(values):
        if value & ~(_LVT_WRITABLE[n] | _LVT_STATUS):
            return False
        if (value >> 8) & 7 in _RESERVED_LVT_MODES + (APIC_DM_LOWEST,) and n != APIC_LVT_TIMER:
            return False
    return (values[APIC_LVT_TIMER] & APIC_LVT_TIMER_MODE) != APIC_LVT_TIMER_MODE


def _apic_post_load(apic: APIC, version_id: int) -> None:
    """Check the fields against each other and this APIC, then re-derive
    what follows from them: the divider's shift, the timer's expiry, and the
    CPU's interrupt request line (raised again if an interrupt is deliverable)."""
    if apic.saved_initial_apic_id != apic.initial_apic_id:
        raise VMStateError(f"initial_apic_id: the stream's APIC is {apic.saved_initial_apic_id}, "
                           f"this one is {apic.initial_apic_id}")
    reserved = ~(MSR_IA32_APICBASE_BASE | MSR_IA32_APICBASE_EXTD | MSR_IA32_APICBASE_ENABLE
                 | MSR_IA32_APICBASE_BSP) | ~((1 << apic.phys_bits) - 1)
    if apic.apicbase & reserved & ((1 << 64) - 1):
        raise VMStateError(f"apicbase: reserved bits set in {apic.apicbase:#x}")
    if apic.apicbase & MSR_IA32_APICBASE_EXTD and not apic.apicbase & MSR_IA32_APICBASE_ENABLE:
        raise VMStateError(f"apicbase: {apic.apicbase:#x} has x2APIC mode with the APIC disabled")
    mode = apic.timer_mode
    if mode == TimerMode.TSC_DEADLINE and not apic.tsc_deadline_supported:
        raise VMStateError("lvt: TSC-deadline timer mode on an APIC without it")
    apic.count_shift = _divide_shift(apic.divide_conf)
    expiry = apic.timer_expiry
    if expiry >= 0 and mode != TimerMode.TSC_DEADLINE and not apic.initial_count:
        raise VMStateError("timer_expiry: the timer is armed with no initial count")
    if expiry >= 0 and mode == TimerMode.TSC_DEADLINE and not apic.tsc_deadline:
        raise VMStateError("timer_expiry: the timer is armed with no TSC deadline")
    if expiry >= 0:
        apic.timer.mod_ns(expiry)   # the virtual clock was restored first: the same instant
    else:
        apic.timer.delete()
    apic.irq_pending = apic.has_interrupt()
    apic.cpu.apic_irq_changed(apic.irq_pending)


VMSTATE_APIC = VMStateDescription(
    "apic", version_id=1,
    fields=[
        VMStateField("saved_initial_apic_id", VM_U32),
        VMStateField("apicbase", VM_U64),
        VMStateField("id", VM_U8),
        VMStateField("tpr", VM_U8),
        VMStateField("spurious_vec", UInt(10)),
        VMStateField("log_dest", VM_U8),
        VMStateField("dest_mode", UInt(4), check=(0, APIC_DFR_FLAT)),
        VMStateField("isr", _BITS256),
        VMStateField("tmr", _BITS256),
        VMStateField("irr", _BITS256),
        VMStateField("lvt", Array(VM_U32, APIC_LVT_NB), check=_check_lvt),
        VMStateField("esr", VM_U8),
        VMStateField("esr_pending", VM_U8),
        VMStateField("icr_low", VM_U32, check=lambda v: not v & ~APIC_ICR_WRITABLE),
        VMStateField("icr_high", VM_U32),
        VMStateField("divide_conf", VM_U8, check=lambda v: not v & ~_DIVIDE_WRITABLE),
        VMStateField("initial_count", VM_U32),
        VMStateField("initial_count_load_time", I64),
        VMStateField("tsc_deadline", VM_U64),
        VMStateField("timer_expiry", I64, check=lambda v: v >= -1),
        VMStateField("sipi_vector", VM_U8),
        VMStateField("wait_for_sipi", BOOL),
        VMStateField("lint0_level", BOOL),
    ],
    post_load=_apic_post_load)


# --- the MMIO window -----------------------------------------------------------------


class APICMemory:
    """The handlers of the 1 MiB "apic-msi" region at 0xFEE00000 (one for
    the machine).  ``current_apic`` names the APIC of the CPU making the
    access (None for a device, i.e. DMA).  Writes by a device, and writes
    outside the APIC page's registers (offset 0 or beyond 0xFFF), are MSIs on
    ``bus``; as in QEMU both share the window because neither uses the
    other's addresses."""

    def __init__(self, bus: APICBus, current_apic: Callable[[], APIC | None]) -> None:
        self.bus = bus
        self.current_apic = current_apic

    def read(self, offset: int, size: int) -> int:
        if offset >= APIC_PAGE_SIZE:
            return 0
        apic = self.current_apic()
        if apic is None:
            return 0
        return apic.read(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        apic = self.current_apic()
        if apic is None or offset >= APIC_PAGE_SIZE or offset >> 4 == 0:
            if size != 4:
                guest_error(f"apic: {size}-byte MSI write at {APIC_DEFAULT_ADDRESS + offset:#x} dropped")
                return
            self.bus.send_msi(APIC_DEFAULT_ADDRESS + offset, value & U32)
            return
        apic.write(offset, value, size)

    def ops(self) -> MemoryRegionOps:
        return MemoryRegionOps(self.read, self.write, 1, 4, False, 1, 4)

    def region(self, owner: object | None = None) -> MemoryRegion:
        return MemoryRegion.io("apic-msi", APIC_SPACE_SIZE, self.ops(), owner=owner)


# --- QOM ------------------------------------------------------------------------------


TYPE_APIC = "apic"


def _apic_realize(dev: Any) -> None:
    if not 0 <= dev.apic_id < APIC_BROADCAST_X2APIC:
        raise QOMError(f"apic: APIC ID {dev.apic_id} is invalid")
    dev.model = APIC(dev.apic_id, version=dev.version)


class APICState(APICCommonState):
    """The emulated local APIC (TYPE_APIC): its model is an APIC."""

    model: APIC


def _apic_reset(dev: DeviceState) -> None:
    object_check(dev, APICState).model.reset()


VMSTATE_APIC_DEVICE = VMStateDescription("apic-device", version_id=1,
                                         fields=[VMStateField("model", Struct(VMSTATE_APIC))])


def _apic_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = _apic_realize
    dc.reset = _apic_reset
    dc.desc = "local APIC (userspace)"
    dc.vmsd = VMSTATE_APIC_DEVICE


type_register(TypeInfo(TYPE_APIC, parent=TYPE_APIC_COMMON, instance_type=APICState,
                       class_init=_apic_class_init))
