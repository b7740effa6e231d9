"""The ACPI fixed-hardware register blocks (QEMU's hw/acpi/core.c, ACPIREGS).

PM1 event (status + enable), PM1 control, the PM timer and the GPE0 block,
as a plain object: the board maps each block into I/O space where its
chipset puts it (ICH9: PMBASE+0x00, +0x04, +0x08, +0x20) and forwards
accesses to ``block.read(offset, size)`` / ``block.write(offset, value,
size)``.  Side effects are injected: the SCI line, the sleep request
callback, the clock, and (optionally) a one-shot timer for the PM timer's
overflow event.

pemu has no SMM and no SMI_CMD port: ACPI is always enabled, so SCI_EN
reads as 1 from reset on.

Sleep types follow QEMU, not the ICH9 datasheet: SLP_TYP 0 is S5 (soft
off), which is what the DSDT's ``\\_S5`` package announces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import IntFlag

from pemu.hw.core.irq import IRQLine
from pemu.migration.vmstate import U16, U64, VarBuffer, VMStateDescription, VMStateError, VMStateField
from pemu.util.log import guest_error
from pemu.util.timer import QEMU_CLOCK_VIRTUAL, QEMUTimer, qemu_clock_get_ns

PM_TIMER_FREQUENCY = 3_579_545
"""Hz: the ACPI PM timer runs at the 14.31818 MHz crystal divided by 4."""
NANOSECONDS_PER_SECOND = 1_000_000_000

PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM_TMR_LEN = 4
ICH9_GPE0_LEN = 16
ACPI_GPE0_MAX_HALF = 128  # the most status (or enable) bytes a GPE0 block may have here

S5_SLP_TYP = 0
"""SLP_TYP value announced in \\_S5 and decoded here as soft-off (QEMU's choice)."""
DEFAULT_SLEEP_TYPES: Mapping[int, int] = {S5_SLP_TYP: 5}
"""SLP_TYP -> sleeping state (S-number) understood by this model."""


class Pm1Status(IntFlag):
    TMR_STS = 1 << 0
    BM_STS = 1 << 4
    GBL_STS = 1 << 5
    PWRBTN_STS = 1 << 8
    SLPBTN_STS = 1 << 9
    RTC_STS = 1 << 10
    PCIEXP_WAKE_STS = 1 << 14
    WAK_STS = 1 << 15


class Pm1Enable(IntFlag):
    TMR_EN = 1 << 0
    GBL_EN = 1 << 5
    PWRBTN_EN = 1 << 8
    SLPBTN_EN = 1 << 9
    RTC_EN = 1 << 10
    PCIEXP_WAKE_DIS = 1 << 14


class Pm1Control(IntFlag):
    SCI_EN = 1 << 0
    BM_RLD = 1 << 1
    GBL_RLS = 1 << 2
    SLP_TYP = 7 << 10
    SLP_EN = 1 << 13


PM1_STS_DEFINED = 0
for _status_bit in Pm1Status:
    PM1_STS_DEFINED |= _status_bit
PM1_EN_WRITABLE = 0
for _enable_bit in Pm1Enable:
    PM1_EN_WRITABLE |= _enable_bit
del _status_bit, _enable_bit
PM1_CNT_STORED = Pm1Control.SCI_EN | Pm1Control.BM_RLD | Pm1Control.SLP_TYP
"""Bits that keep their value; GBL_RLS and SLP_EN are write-only, the rest reserved."""
SLP_TYP_SHIFT = 10

# Status bits whose enabled events raise the SCI (PM1 side).
SCI_PM1_EVENTS = (Pm1Status.TMR_STS | Pm1Status.GBL_STS | Pm1Status.PWRBTN_STS
                  | Pm1Status.SLPBTN_STS | Pm1Status.RTC_STS)

_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


class RegisterBlock:
    """A block of little-endian registers reached by byte offset.

    ``registers`` lists (offset, width) pairs covering the block; an access
    may touch part of a register or several registers, each sees its bytes
    (``get`` returns a register's value, ``put(offset, value, byte_mask)``
    stores the written bytes).  Bad sizes and out-of-block accesses are
    guest errors: reads give 0, writes are dropped.
    """

    def __init__(self, name: str, length: int, registers: list[tuple[int, int]],
                 get: Callable[[int], int], put: Callable[[int, int, int], None]) -> None:
        self.name = name
        self.length = length
        self._owner: dict[int, tuple[int, int]] = {}
        for off, width in registers:
            for b in range(off, off + width):
                self._owner[b] = (off, width)
        self._get = get
        self._put = put

    def _check(self, offset: int, size: int, what: str) -> bool:
        if size not in _SIZE_MASK or offset < 0 or offset + size > self.length:
            guest_error(f"acpi: {self.name}: bad {what} of {size} bytes at offset {offset:#x}")
            return False
        return True

    def read(self, offset: int, size: int) -> int:
        if not self._check(offset, size, "read"):
            return 0
        value = 0
        for i in range(size):
            reg = self._owner.get(offset + i)
            if reg is None:
                continue
            reg_off, _ = reg
            byte = (self._get(reg_off) >> (8 * (offset + i - reg_off))) & 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, value: int, size: int) -> None:
        if not self._check(offset, size, "write"):
            return
        value &= _SIZE_MASK[size]
        touched: dict[int, tuple[int, int]] = {}
        for i in range(size):
            reg = self._owner.get(offset + i)
            if reg is None:
                continue
            reg_off, _ = reg
            shift = 8 * (offset + i - reg_off)
            byte = (value >> (8 * i)) & 0xFF
            v, m = touched.get(reg_off, (0, 0))
            touched[reg_off] = (v | byte << shift, m | 0xFF << shift)
        for reg_off, (v, m) in touched.items():
            self._put(reg_off, v, m)


class AcpiPmRegs:
    """PM1 event/control, PM timer and GPE0 of one ACPI platform."""

    def __init__(self, sci: IRQLine, on_sleep: Callable[[int], None], *,
                 clock_ns: Callable[[], int] | None = None,
                 arm_timer: Callable[[int | None], None] | None = None,
                 timer_32bit: bool = False, gpe0_len: int = ICH9_GPE0_LEN,
                 sleep_types: Mapping[int, int] = DEFAULT_SLEEP_TYPES) -> None:
        """``clock_ns`` defaults to the virtual clock; ``arm_timer(ns or None)``
        (re)arms or cancels a one-shot that must call :meth:`timer_expired`.
        Without a ``clock_ns``, a QEMUTimer on the virtual clock is used;
        with a custom clock and no ``arm_timer``, TMR_STS is only updated
        when the status is read (no SCI for the timer by itself).
        """
        if gpe0_len <= 0 or gpe0_len % 2 or gpe0_len > 2 * ACPI_GPE0_MAX_HALF:
            raise ValueError(f"GPE0 block length {gpe0_len} must be even, non-zero and at most "
                             f"{2 * ACPI_GPE0_MAX_HALF}")
        self.sci = sci
        self.on_sleep = on_sleep
        self.sleep_types = dict(sleep_types)
        self.timer_bits = 32 if timer_32bit else 24
        self._clock_ns = clock_ns or (lambda: qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL))
        self._timer: QEMUTimer | None = None
        if arm_timer is None and clock_ns is None:
            self._timer = QEMUTimer(QEMU_CLOCK_VIRTUAL, self.timer_expired)
            arm_timer = self._arm_qemu_timer
        self._arm_timer = arm_timer
        self._gpe_half = gpe0_len // 2

        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = int(Pm1Control.SCI_EN)
        self.gpe0_sts = bytearray(self._gpe_half)
        self.gpe0_en = bytearray(self._gpe_half)
        self._sci_level: int | None = None
        self._next_overflow = 0

        self.evt = RegisterBlock("PM1_EVT", PM1_EVT_LEN, [(0, 2), (2, 2)],
                                 self._evt_get, self._evt_put)
        self.cnt = RegisterBlock("PM1_CNT", PM1_CNT_LEN, [(0, 2)],
                                 lambda _off: self.pm1_cnt, self._cnt_put)
        self.tmr = RegisterBlock("PM_TMR", PM_TMR_LEN, [(0, 4)],
                                 lambda _off: self.timer_value(), self._tmr_put)
        self.gpe0 = RegisterBlock("GPE0", gpe0_len, [(i, 1) for i in range(gpe0_len)],
                                  self._gpe_get, self._gpe_put)
        self.reset()

    # --- state -------------------------------------------------------------

    def reset(self) -> None:
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = int(Pm1Control.SCI_EN)
        self.gpe0_sts[:] = bytes(self._gpe_half)
        self.gpe0_en[:] = bytes(self._gpe_half)
        self._next_overflow = self._overflow_after(self._ticks())
        self._rearm()
        self.update_sci()

    def update_sci(self) -> None:
        pm1 = self.pm1_sts & self.pm1_en & SCI_PM1_EVENTS
        gpe = any(s & e for s, e in zip(self.gpe0_sts, self.gpe0_en, strict=True))
        level = 1 if (pm1 or gpe) else 0
        if level != self._sci_level:
            self._sci_level = level
            self.sci.set(level)

    @property
    def sci_level(self) -> int:
        return self._sci_level or 0

    # --- events from the board -----------------------------------------------

    def power_button(self) -> None:
        """The power button was pressed (system_powerdown)."""
        self.pm1_sts |= Pm1Status.PWRBTN_STS
        self.update_sci()

    def gpe_raise(self, bit: int) -> None:
        """Set GPE0 status bit ``bit`` (a hotplug or wake event)."""
        if not 0 <= bit < 8 * self._gpe_half:
            raise ValueError(f"GPE0 bit {bit} outside a {self._gpe_half}-byte status block")
        self.gpe0_sts[bit // 8] |= 1 << (bit % 8)
        self.update_sci()

    # --- PM timer ----------------------------------------------------------------

    def _ticks(self) -> int:
        return self._clock_ns() * PM_TIMER_FREQUENCY // NANOSECONDS_PER_SECOND

    def timer_value(self) -> int:
        return self._ticks() & ((1 << self.timer_bits) - 1)

    def _overflow_after(self, ticks: int) -> int:
        """The first tick count after ``ticks`` where the timer's top bit changes."""
        half = 1 << (self.timer_bits - 1)
        return (ticks // half + 1) * half

    def _poll_overflow(self) -> None:
        ticks = self._ticks()
        if ticks >= self._next_overflow:
            self.pm1_sts |= Pm1Status.TMR_STS
            self._next_overflow = self._overflow_after(ticks)

    def _rearm(self) -> None:
        if self._arm_timer is None:
            return
        if self.pm1_en & Pm1Enable.TMR_EN:
            ns = -(-self._next_overflow * NANOSECONDS_PER_SECOND // PM_TIMER_FREQUENCY)
            self._arm_timer(ns)
        else:
            self._arm_timer(None)

    def _arm_qemu_timer(self, ns: int | None) -> None:
        assert self._timer is not None
        if ns is None:
            self._timer.delete()
        else:
            self._timer.mod_ns(ns)

    def timer_expired(self) -> None:
        """The overflow one-shot fired."""
        self._poll_overflow()
        self._rearm()
        self.update_sci()

    # --- register access ---------------------------------------------------------

    def _evt_get(self, off: int) -> int:
        if off == 0:
            self._poll_overflow()
            return self.pm1_sts
        return self.pm1_en

    def _evt_put(self, off: int, value: int, mask: int) -> None:
        if off == 0:
            self._poll_overflow()
            self.pm1_sts &= ~(value & mask & PM1_STS_DEFINED)
        else:
            self.pm1_en = (self.pm1_en & ~mask) | (value & mask & PM1_EN_WRITABLE)
            self._rearm()
        self.update_sci()

    def _cnt_put(self, _off: int, value: int, mask: int) -> None:
        new = (self.pm1_cnt & ~mask) | (value & mask)
        self.pm1_cnt = (new & PM1_CNT_STORED) | Pm1Control.SCI_EN
        if value & mask & Pm1Control.SLP_EN:
            slp_typ = (new & Pm1Control.SLP_TYP) >> SLP_TYP_SHIFT
            state = self.sleep_types.get(slp_typ)
            if state is None:
                guest_error(f"acpi: PM1_CNT: sleep requested with unsupported SLP_TYP {slp_typ}")
            else:
                self.on_sleep(state)

    def _tmr_put(self, _off: int, value: int, mask: int) -> None:
        guest_error(f"acpi: PM_TMR is read-only (write of {value & mask:#x} ignored)")

    def _gpe_get(self, off: int) -> int:
        if off < self._gpe_half:
            return self.gpe0_sts[off]
        return self.gpe0_en[off - self._gpe_half]

    def _gpe_put(self, off: int, value: int, mask: int) -> None:
        byte = value & mask & 0xFF
        if off < self._gpe_half:
            self.gpe0_sts[off] &= ~byte & 0xFF
        else:
            self.gpe0_en[off - self._gpe_half] = byte
        self.update_sci()


# --- migration (QEMU's vmstate_acpi / vmstate_ich9_pm) -----------------------------------------


def _acpi_pm_post_load(pm: AcpiPmRegs, version_id: int) -> None:
    """Checks what the registers could not hold and rebuilds what is derived.

    The PM timer is the virtual clock itself (restored before the devices),
    so it reads on from where the source left it; the next overflow must be
    one the timer reaches (a multiple of half its range, not beyond the next
    one from now), and its one-shot is armed for it again.  The SCI level
    is recomputed without driving the line: the interrupt controllers hold
    their input levels in their own state."""
    if len(pm.gpe0_sts) != pm._gpe_half or len(pm.gpe0_en) != pm._gpe_half:
        raise VMStateError(f"GPE0 blocks of {len(pm.gpe0_sts)} and {len(pm.gpe0_en)} bytes, "
                           f"this PM block has {pm._gpe_half}")
    half = 1 << (pm.timer_bits - 1)
    if pm._next_overflow % half or pm._next_overflow > pm._overflow_after(pm._ticks()):
        raise VMStateError(f"PM timer overflow at tick {pm._next_overflow:#x}, which a "
                           f"{pm.timer_bits}-bit timer at tick {pm._ticks():#x} cannot have next")
    pm._sci_level = 1 if (pm.pm1_sts & pm.pm1_en & SCI_PM1_EVENTS
                          or any(s & e for s, e in zip(pm.gpe0_sts, pm.gpe0_en, strict=True))) else 0
    pm._rearm()


VMSTATE_ACPI_PM = VMStateDescription("acpi-pm", version_id=1, fields=[
    VMStateField("pm1_sts", U16, check=lambda v: not v & ~PM1_STS_DEFINED),
    VMStateField("pm1_en", U16, check=lambda v: not v & ~PM1_EN_WRITABLE),
    VMStateField("pm1_cnt", U16, check=lambda v: not v & ~PM1_CNT_STORED and bool(v & Pm1Control.SCI_EN)),
    VMStateField("gpe0_sts", VarBuffer(ACPI_GPE0_MAX_HALF)),
    VMStateField("gpe0_en", VarBuffer(ACPI_GPE0_MAX_HALF)),
    VMStateField("_next_overflow", U64),
], post_load=_acpi_pm_post_load)
