"""The MC146818 real-time clock and its CMOS memory (QEMU's hw/rtc/mc146818rtc.c).

Ports 0x70 (index; bit 7 is the NMI mask, not part of the index) and 0x71
(data).  The clock starts from the host's UTC time and then advances with
the VM's virtual clock: the RTC time is an offset on that clock, and the
time registers are encoded (BCD or binary, 12 or 24 hour, per register B)
when the guest reads them.  While register B's SET bit is on, or the
divider is held in reset, the time stands still and the registers are plain
memory the guest may rewrite; the clock restarts from what they hold.

Interrupts (IRQ 8): periodic (register A's rate select, PIE), alarm (AIE)
and update-ended (UIE) each set a flag in register C, and register C's
read clears the flags and lowers the line.  Timers run only for enabled
interrupts; the periodic and update flags of disabled interrupts are
computed when register C is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.migration.vmstate import (
    BOOL,
    I64,
    TIMER,
    U8,
    U32,
    U64,
    Buffer,
    Optional,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.util.log import guest_error
from pemu.util.timer import (
    NANOSECONDS_PER_SECOND,
    TimerLike,
)
from pemu.util.timer import virtual_clock_ns as _virtual_clock_ns
from pemu.util.timer import virtual_timer as _virtual_timer

if TYPE_CHECKING:
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter

RTC_BASE = 0x70
RTC_IRQ = 8
WINDOW_SIZE = 2
CMOS_SIZE = 128
INDEX_MASK = 0x7F  # bit 7 of the index write is NMI disable

# Register indexes.
RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_REG_A = 0x0A
RTC_REG_B = 0x0B
RTC_REG_C = 0x0C
RTC_REG_D = 0x0D
REG_EQUIPMENT_BYTE = 0x14
RTC_IBM_CENTURY_BYTE = 0x32

CLOCK_REGISTERS = frozenset({RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK,
                             RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_IBM_CENTURY_BYTE})

REG_A_UIP = 0x80
REG_A_DV_MASK = 0x70
REG_A_DV_NORMAL = 0x20   # 32.768 kHz time base
REG_A_DV_RESET = 0x60    # 11x: divider chain held in reset
REG_A_RATE_MASK = 0x0F

REG_B_SET = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_B_SQWE = 0x08
REG_B_DM = 0x04      # 1: binary, 0: BCD
REG_B_24H = 0x02
REG_B_DSE = 0x01

REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10
REG_C_MASK = REG_C_PF | REG_C_AF | REG_C_UF

REG_D_VRT = 0x80

ALARM_DONT_CARE = 0xC0
RTC_FREQ = 32768
UIP_WINDOW_NS = 244_000  # UIP is set this long before each update
DIVIDER_RESTART_NS = 500_000_000  # the first update comes 500 ms after leaving reset

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB




def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def days_in_month(year: int, month: int) -> int:
    return 29 if month == 2 and _is_leap(year) else _MONTH_DAYS[month - 1]


def days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a (proleptic Gregorian) date, negative before it."""
    # Count from 1 March of year 0, so that a leap day ends its "year".
    y = year - 1 if month <= 2 else year
    era_days = y * 365 + y // 4 - y // 100 + y // 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1  # 1 March = 0
    return era_days + day_of_year - 719468  # 719468: 0000-03-01 to 1970-01-01


def _from_bcd(value: int) -> int:
    return ((value >> 4) & 0xF) * 10 + (value & 0xF)


def _to_bcd(value: int) -> int:
    return ((value // 10 % 10) << 4) | (value % 10)


class _Fields(NamedTuple):
    """A calendar time, as the RTC's date and time registers hold it."""

    second: int
    minute: int
    hour: int
    weekday: int  # 1 = Sunday
    day: int
    month: int
    year: int     # full year


class MC146818RTC:
    def __init__(self, irq: IRQLine | None = None, *, clock: Callable[[], int] = _virtual_clock_ns,
                 host_time_ns: Callable[[], int] = time.time_ns,
                 timer_factory: Callable[[Callable[[], None]], TimerLike] = _virtual_timer) -> None:
        self.irq: IRQLine = irq if irq is not None else NoIRQ()
        self.clock = clock
        self.cmos = bytearray(CMOS_SIZE)
        self.index = 0
        self.nmi_disabled = False
        self.cmos[RTC_REG_A] = REG_A_DV_NORMAL | 0x06
        self.cmos[RTC_REG_B] = REG_B_24H
        self.cmos[RTC_REG_D] = REG_D_VRT
        now = clock()
        self._clock_base = now
        self._rtc_base_ns = host_time_ns()
        self._held_ns: int | None = None
        self._last_flags_ns = now
        self._irq_level = 0
        self.periodic_timer = timer_factory(self._periodic_tick)
        self.update_timer = timer_factory(self._update_tick)
        self._periodic_next_tick = 0
        self._materialize(self.rtc_ns(now))
        self._rearm_timers(now)

    # -- time keeping ----------------------------------------------------------------
    def running(self) -> bool:
        return (not self.cmos[RTC_REG_B] & REG_B_SET
                and (self.cmos[RTC_REG_A] & REG_A_DV_MASK) <= REG_A_DV_NORMAL)

    def rtc_ns(self, now: int | None = None) -> int:
        """RTC time, in nanoseconds since the epoch (UTC)."""
        if self._held_ns is not None:
            return self._held_ns
        if now is None:
            now = self.clock()
        return self._rtc_base_ns + (now - self._clock_base)

    def _set_rtc_ns(self, rtc_ns: int, now: int) -> None:
        self._rtc_base_ns = rtc_ns
        self._clock_base = now

    def _binary(self) -> bool:
        return bool(self.cmos[RTC_REG_B] & REG_B_DM)

    def _encode(self, value: int) -> int:
        return value & 0xFF if self._binary() else _to_bcd(value)

    def _decode(self, raw: int) -> int:
        return raw if self._binary() else _from_bcd(raw)

    def _encode_hour(self, hour: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)

    def _decode_hour(self, raw: int) -> int:
        if self.cmos[RTC_REG_B] & REG_B_24H:
            return self._decode(raw)
        hour = self._decode(raw & 0x7F) % 12
        return hour + 12 if raw & 0x80 else hour

    @staticmethod
    def _fields_at(rtc_ns: int) -> _Fields:
        seconds = rtc_ns // NANOSECONDS_PER_SECOND
        tm = time.gmtime(seconds)
        return _Fields(tm.tm_sec, tm.tm_min, tm.tm_hour, (tm.tm_wday + 1) % 7 + 1,
                       tm.tm_mday, tm.tm_mon, tm.tm_year)

    def _encoded_clock(self, rtc_ns: int) -> dict[int, int]:
        f = self._fields_at(rtc_ns)
        return {
            RTC_SECONDS: self._encode(f.second),
            RTC_MINUTES: self._encode(f.minute),
            RTC_HOURS: self._encode_hour(f.hour),
            RTC_DAY_OF_WEEK: self._encode(f.weekday),
            RTC_DAY_OF_MONTH: self._encode(f.day),
            RTC_MONTH: self._encode(f.month),
            RTC_YEAR: self._encode(f.year % 100),
            RTC_IBM_CENTURY_BYTE: self._encode(f.year // 100),
        }

    def _materialize(self, rtc_ns: int) -> None:
        for index, value in self._encoded_clock(rtc_ns).items():
            self.cmos[index] = value

    def _seconds_from_registers(self) -> int | None:
        c = self.cmos
        year = self._decode(c[RTC_IBM_CENTURY_BYTE]) * 100 + self._decode(c[RTC_YEAR])
        month = self._decode(c[RTC_MONTH])
        day = self._decode(c[RTC_DAY_OF_MONTH])
        hour = self._decode_hour(c[RTC_HOURS])
        minute = self._decode(c[RTC_MINUTES])
        second = self._decode(c[RTC_SECONDS])
        if not (1 <= year and 1 <= month <= 12 and 1 <= day <= days_in_month(year, month)
                and 0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 60):
            guest_error(f"mc146818rtc: invalid date/time {year:04}-{month:02}-{day:02} "
                        f"{hour:02}:{minute:02}:{second:02} in the clock registers")
            return None
        return ((days_since_epoch(year, month, day) * 24 + hour) * 60 + minute) * 60 + second

    def _stop(self, now: int) -> None:
        held = self.rtc_ns(now)
        self._materialize(held)
        self._held_ns = held

    def _start(self, now: int, phase_ns: int) -> None:
        held = self._held_ns if self._held_ns is not None else self.rtc_ns(now)
        seconds = self._seconds_from_registers()
        if seconds is None:
            seconds = held // NANOSECONDS_PER_SECOND
        self._held_ns = None
        self._set_rtc_ns(seconds * NANOSECONDS_PER_SECOND + phase_ns, now)

    # -- interrupts ------------------------------------------------------------------
    def _update_irq(self) -> None:
        c = self.cmos[RTC_REG_C]
        enabled = self.cmos[RTC_REG_B] & (REG_B_PIE | REG_B_AIE | REG_B_UIE)
        # PIE, AIE and UIE sit at the same bit positions as PF, AF and UF.
        if c & REG_C_MASK & enabled:
            self.cmos[RTC_REG_C] = c | REG_C_IRQF
            level = 1
        else:
            level = 0
        if level != self._irq_level:
            self._irq_level = level
            self.irq.set(level)

    def _raise_flags(self, flags: int) -> None:
        self.cmos[RTC_REG_C] |= flags
        self._update_irq()

    def _period_ticks(self) -> int:
        """Periodic interrupt period in 32.768 kHz ticks; 0 when off."""
        rate = self.cmos[RTC_REG_A] & REG_A_RATE_MASK
        if rate == 0 or (self.cmos[RTC_REG_A] & REG_A_DV_RESET) == REG_A_DV_RESET:
            return 0
        if rate <= 2:
            rate += 7  # rates 1 and 2 repeat 8 and 9 with a 32.768 kHz base
        return 1 << (rate - 1)

    @staticmethod
    def _ticks_at(now: int) -> int:
        return now * RTC_FREQ // NANOSECONDS_PER_SECOND

    @staticmethod
    def _ns_at_tick(tick: int) -> int:
        return -(-tick * NANOSECONDS_PER_SECOND // RTC_FREQ)

    def _rearm_timers(self, now: int) -> None:
        period = self._period_ticks()
        if period and self.cmos[RTC_REG_B] & REG_B_PIE:
            self._periodic_next_tick = (self._ticks_at(now) // period + 1) * period
            self.periodic_timer.mod_ns(self._ns_at_tick(self._periodic_next_tick))
        else:
            self.periodic_timer.delete()
        if self.running() and self.cmos[RTC_REG_B] & (REG_B_UIE | REG_B_AIE):
            self.update_timer.mod_ns(self._next_update_ns(now))
        else:
            self.update_timer.delete()

    def _next_update_ns(self, now: int) -> int:
        into_second = self.rtc_ns(now) % NANOSECONDS_PER_SECOND
        return now + NANOSECONDS_PER_SECOND - into_second

    def _periodic_tick(self) -> None:
        now = self.clock()
        self._raise_flags(REG_C_PF)
        period = self._period_ticks()
        if not period or not self.cmos[RTC_REG_B] & REG_B_PIE:
            return
        # Next grid point after both the one just served and now: late callbacks coalesce.
        tick = max(self._periodic_next_tick, self._ticks_at(now))
        self._periodic_next_tick = (tick // period + 1) * period
        self.periodic_timer.mod_ns(self._ns_at_tick(self._periodic_next_tick))

    def _alarm_matches(self, rtc_ns: int) -> bool:
        current = self._encoded_clock(rtc_ns)
        for alarm, value in ((RTC_SECONDS_ALARM, RTC_SECONDS), (RTC_MINUTES_ALARM, RTC_MINUTES),
                             (RTC_HOURS_ALARM, RTC_HOURS)):
            wanted = self.cmos[alarm]
            if (wanted & ALARM_DONT_CARE) != ALARM_DONT_CARE and wanted != current[value]:
                return False
        return True

    def _update_tick(self) -> None:
        now = self.clock()
        if not self.running():
            return
        flags = REG_C_UF
        if self._alarm_matches(self.rtc_ns(now)):
            flags |= REG_C_AF
        self._raise_flags(flags)
        if self.cmos[RTC_REG_B] & (REG_B_UIE | REG_B_AIE):
            self.update_timer.mod_ns(self._next_update_ns(now))

    def _collect_flags(self, now: int) -> None:
        """Set PF and UF for the periods and updates that passed without a timer."""
        flags = 0
        period = self._period_ticks()
        if period and self._ticks_at(now) // period != self._ticks_at(self._last_flags_ns) // period:
            flags |= REG_C_PF
        if self.running():
            rtc_now = self.rtc_ns(now)
            elapsed = now - self._last_flags_ns
            if rtc_now // NANOSECONDS_PER_SECOND != (rtc_now - elapsed) // NANOSECONDS_PER_SECOND:
                flags |= REG_C_UF
        self._last_flags_ns = now
        self.cmos[RTC_REG_C] |= flags

    def _read_reg_c(self, now: int) -> int:
        self._collect_flags(now)
        self._update_irq()
        value = self.cmos[RTC_REG_C]
        self.cmos[RTC_REG_C] = 0
        self._update_irq()
        return value

    # -- CMOS access ------------------------------------------------------------------
    def set_cmos(self, index: int, value: int) -> None:
        """Board-side write of a CMOS byte (firmware configuration)."""
        if not 0 <= index < CMOS_SIZE:
            raise ValueError(f"CMOS index {index:#x} out of range")
        self.cmos[index] = value & 0xFF

    def get_cmos(self, index: int) -> int:
        if not 0 <= index < CMOS_SIZE:
            raise ValueError(f"CMOS index {index:#x} out of range")
        return self.cmos[index]

    def _read_data(self, index: int) -> int:
        now = self.clock()
        if index in CLOCK_REGISTERS and self._held_ns is None:
            return self._encoded_clock(self.rtc_ns(now))[index]
        if index == RTC_REG_A:
            value = self.cmos[RTC_REG_A] & ~REG_A_UIP
            if self.running() and (self.rtc_ns(now) % NANOSECONDS_PER_SECOND
                                   >= NANOSECONDS_PER_SECOND - UIP_WINDOW_NS):
                value |= REG_A_UIP
            return value
        if index == RTC_REG_C:
            return self._read_reg_c(now)
        return self.cmos[index]

    def _write_data(self, index: int, value: int) -> None:
        now = self.clock()
        if index in CLOCK_REGISTERS:
            if self._held_ns is None:
                into_second = self.rtc_ns(now) % NANOSECONDS_PER_SECOND
                self._materialize(self.rtc_ns(now))
                self.cmos[index] = value
                seconds = self._seconds_from_registers()
                if seconds is not None:
                    self._set_rtc_ns(seconds * NANOSECONDS_PER_SECOND + into_second, now)
                self._rearm_timers(now)
            else:
                self.cmos[index] = value
            return
        if index == RTC_REG_A:
            self._write_reg_a(value, now)
        elif index == RTC_REG_B:
            self._write_reg_b(value, now)
        elif index in (RTC_REG_C, RTC_REG_D):
            guest_error(f"mc146818rtc: write {value:#04x} to read-only register {index:#x}")
        else:
            self.cmos[index] = value

    def _write_reg_a(self, value: int, now: int) -> None:
        was_reset = (self.cmos[RTC_REG_A] & REG_A_DV_RESET) == REG_A_DV_RESET
        self._change_control(RTC_REG_A, value & ~REG_A_UIP, now,
                             restart_phase_ns=DIVIDER_RESTART_NS if was_reset else None)

    def _write_reg_b(self, value: int, now: int) -> None:
        if value & REG_B_SET:
            value &= ~REG_B_UIE  # setting SET clears UIE
        self._change_control(RTC_REG_B, value, now, restart_phase_ns=None)

    def _change_control(self, index: int, value: int, now: int, restart_phase_ns: int | None) -> None:
        """Write register A or B, stopping or restarting the clock on the way."""
        self._collect_flags(now)  # an interrupt enabled with its flag set fires at once
        if self.running():
            # Materialize with the old format: the registers keep what the
            # last update wrote until the guest rewrites them.
            self._stop(now)
            self.cmos[index] = value
            if self.running():  # still running: nothing was really stopped
                held = self._held_ns
                assert held is not None
                self._held_ns = None
                self._set_rtc_ns(held, now)
        else:
            self.cmos[index] = value
            if self.running():
                held = self._held_ns if self._held_ns is not None else self.rtc_ns(now)
                phase = restart_phase_ns if restart_phase_ns is not None else held % NANOSECONDS_PER_SECOND
                self._start(now, phase)
        self._update_irq()
        self._rearm_timers(now)

    # -- register window ----------------------------------------------------------------
    def read(self, offset: int, size: int = 1) -> int:
        if size != 1 or offset not in (0, 1):
            guest_error(f"mc146818rtc: read of size {size} at offset {offset:#x}")
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0xFF
        if offset == 0:
            return 0xFF  # the index register is write-only
        return self._read_data(self.index)

    def write(self, offset: int, value: int, size: int = 1) -> None:
        if size != 1 or offset not in (0, 1):
            guest_error(f"mc146818rtc: write of size {size} at offset {offset:#x}")
            return
        value &= 0xFF
        if offset == 0:
            self.index = value & INDEX_MASK
            self.nmi_disabled = bool(value & 0x80)
        else:
            self._write_data(self.index, value)

    def reset(self) -> None:
        """System reset: the CMOS and clock survive, interrupts are disabled."""
        self.cmos[RTC_REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_UIE | REG_B_SQWE)
        self.cmos[RTC_REG_C] = 0
        self._update_irq()
        self._rearm_timers(self.clock())


# --- migration (QEMU's vmstate_rtc_mc146818rtc) ---------------------------------------------
# The RTC's time is an offset on the virtual clock (``_rtc_base_ns`` at
# ``_clock_base``), and the virtual clock is restored before the devices:
# the guest's wall clock goes on from where the source left it, as QEMU's
# does with -rtc clock=vm.  Nothing is taken from the destination's host clock.

# The times the clock registers can express: 0001-01-01 to the end of 9999,
# with a year's slack for a clock left running past it.
_RTC_MIN_S = days_since_epoch(1, 1, 1) * 86400
_RTC_MAX_S = days_since_epoch(10001, 1, 1) * 86400


class _EpochNs:
    """A field kind: a time in nanoseconds from the epoch, as signed seconds
    and nanoseconds (a clock the guest set to year 9999 does not fit 64 bits of ns)."""

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        seconds, ns = divmod(int(value), NANOSECONDS_PER_SECOND)
        I64.save(f, seconds)
        U32.save(f, ns)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> int:
        seconds = I64.load(f, None, where)
        ns = U32.load(f, None, where)
        if ns >= NANOSECONDS_PER_SECOND:
            raise VMStateError(f"{where}: {ns} ns is more than a second")
        return seconds * NANOSECONDS_PER_SECOND + ns


EPOCH_NS = _EpochNs()


def _rtc_post_load(rtc: MC146818RTC, version_id: int) -> None:
    seconds = rtc.rtc_ns() // NANOSECONDS_PER_SECOND
    if not _RTC_MIN_S <= seconds < _RTC_MAX_S:
        raise VMStateError(f"RTC time {seconds} s from the epoch is outside years 1-10000")


VMSTATE_MC146818RTC = VMStateDescription(
    "mc146818rtc", version_id=1,
    fields=[
        VMStateField("cmos", Buffer(CMOS_SIZE)),
        VMStateField("index", U8, check=range(CMOS_SIZE)),
        VMStateField("nmi_disabled", BOOL),
        VMStateField("_clock_base", I64),
        VMStateField("_rtc_base_ns", EPOCH_NS),
        VMStateField("_held_ns", Optional(EPOCH_NS)),
        VMStateField("_last_flags_ns", I64),
        VMStateField("_irq_level", U8, check=(0, 1)),
        VMStateField("_periodic_next_tick", U64),
        VMStateField("periodic_timer", TIMER),
        VMStateField("update_timer", TIMER),
    ],
    post_load=_rtc_post_load)


def pc_cmos_init_memory(rtc: MC146818RTC, *, below_4g_mem_size: int, above_4g_mem_size: int,
                        cpu_count: int, floppy_count: int = 0) -> None:
    """Fill the CMOS bytes firmware reads to size memory (QEMU's pc_cmos_init)."""
    base_kib = min(below_4g_mem_size // KiB, 640)
    rtc.set_cmos(0x15, base_kib & 0xFF)
    rtc.set_cmos(0x16, base_kib >> 8)
    extended_kib = (below_4g_mem_size - MiB) // KiB if below_4g_mem_size > MiB else 0
    extended_kib = min(extended_kib, 0xFFFF)
    for low, high in ((0x17, 0x18), (0x30, 0x31)):
        rtc.set_cmos(low, extended_kib & 0xFF)
        rtc.set_cmos(high, extended_kib >> 8)
    above_16m = (below_4g_mem_size - 16 * MiB) // (64 * KiB) if below_4g_mem_size > 16 * MiB else 0
    above_16m = min(above_16m, 0xFFFF)
    rtc.set_cmos(0x34, above_16m & 0xFF)
    rtc.set_cmos(0x35, above_16m >> 8)
    above_4g = min(above_4g_mem_size // (64 * KiB), 0xFFFFFF)
    rtc.set_cmos(0x5B, above_4g & 0xFF)
    rtc.set_cmos(0x5C, (above_4g >> 8) & 0xFF)
    rtc.set_cmos(0x5D, above_4g >> 16)
    rtc.set_cmos(0x5F, max(cpu_count - 1, 0) & 0xFF)
    equipment = 0x02 | 0x04  # FPU present, PS/2 mouse port
    if floppy_count > 0:
        equipment |= 0x01 | ((min(floppy_count, 4) - 1) << 6)
    rtc.set_cmos(REG_EQUIPMENT_BYTE, equipment)
