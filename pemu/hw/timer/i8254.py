"""The Intel 8254 programmable interval timer (QEMU's hw/timer/i8254.c).

Three 16-bit down counters clocked at 1.193182 MHz, at ports 0x40-0x42 with
the mode/command register at 0x43.  Channel 0 drives ISA IRQ 0, channel 2's
gate and output reach port 0x61 (see :mod:`pemu.hw.audio.pcspk`).

Nothing ticks: each channel remembers when its count was loaded and derives
its counter value and OUT level from the clock when asked.  Only channel 0
keeps a timer, armed for its next OUT change; the timer's callback computes
the state at the current time on the absolute grid of the load time, so
periodic modes never drift.  IRQ0 is edge-triggered at the PIC, so when OUT
rose at least once since the last callback the line is lowered first, which
also folds several missed periods into one interrupt rather than replaying
them.  Callbacks are at least ``MIN_IRQ_INTERVAL_NS`` apart, so a guest
programming a tiny count gets a bounded interrupt rate, not a timer storm.
The HPET in legacy replacement mode takes IRQ 0 over and cuts channel 0 off
through :meth:`PIT.irq_control` (QEMU's pit_irq_control).
"""

from __future__ import annotations

from enum import IntEnum

from pemu.hw.core.irq import IRQLine
from pemu.migration.vmstate import (
    BOOL,
    I64,
    U8,
    U16,
    U64,
    Enum,
    Optional,
    StructList,
    UInt,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.util.log import guest_error
from pemu.util.timer import (
    NANOSECONDS_PER_SECOND,
    Clock,
    TimerFactory,
    virtual_clock_ns,
    virtual_timer,
)

PIT_BASE = 0x40
WINDOW_SIZE = 4
CONTROL_OFFSET = 3
PIT_FREQ = 1_193_182  # Hz
NUM_CHANNELS = 3

# Bound on how often channel 0's timer may fire (10 kHz): far above any
# HZ a guest uses, far below a rate that would starve the vCPU.
MIN_IRQ_INTERVAL_NS = 100_000

# Control word bits.
CW_BCD = 0x01
READ_BACK_CHANNEL = 3
READ_BACK_NO_COUNT = 0x20
READ_BACK_NO_STATUS = 0x10
# Read-back status byte bits.
STATUS_OUT = 0x80
STATUS_NULL_COUNT = 0x40




def ns_to_ticks(ns: int) -> int:
    return ns * PIT_FREQ // NANOSECONDS_PER_SECOND


def ticks_to_ns(ticks: int) -> int:
    """The first nanosecond at which ``ticks`` PIT clocks have elapsed."""
    return -(-ticks * NANOSECONDS_PER_SECOND // PIT_FREQ)


class Access(IntEnum):
    """Control word bits 5:4 (RW): which bytes of the count the port moves."""

    LATCH = 0
    LOBYTE = 1
    HIBYTE = 2
    WORD = 3


class ByteState(IntEnum):
    LOBYTE = 1
    HIBYTE = 2
    WORD_LOW = 3   # word access, low byte next
    WORD_HIGH = 4  # word access, high byte next


def _start_state(access: Access) -> ByteState:
    return ByteState(int(access))


def _from_bcd(value: int) -> int:
    result = 0
    for shift in (12, 8, 4, 0):
        result = result * 10 + min((value >> shift) & 0xF, 9)
    return result


def _to_bcd(value: int) -> int:
    value %= 10000
    result = 0
    for shift in (0, 4, 8, 12):
        result |= (value % 10) << shift
        value //= 10
    return result


class PITChannel:
    """One counter.  ``count`` is the binary initial count, 1..0x10000."""

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.gate = gate
        self.mode = 3
        self.bcd = False
        self.access: Access = Access.WORD
        self.read_state: ByteState = ByteState.WORD_LOW
        self.write_state: ByteState = ByteState.WORD_LOW
        self.write_latch = 0
        self.count = 0x10000
        self.loaded = False  # a count was written since the control word
        self.load_ns = 0
        self.frozen_ticks: int | None = None  # counting stopped by a low gate
        self.triggered = False  # modes 1 and 5: a gate rising edge started the count
        self.latched_count: int | None = None
        self.latched_state: ByteState = ByteState.WORD_LOW
        self.latched_status: int | None = None
        self.irq: IRQLine | None = None
        self.edges_seen = 0
        self.last_fire_ns = -(1 << 62)

    # -- the counter as a function of time ----------------------------------
    def period(self) -> int:
        """The count the periodic modes wrap at (2 at least: 1 is illegal there)."""
        return max(self.count, 2)

    def elapsed(self, now_ns: int) -> int:
        if not self.loaded:
            return 0
        if self.frozen_ticks is not None:
            return self.frozen_ticks
        return ns_to_ticks(max(0, now_ns - self.load_ns))

    def _waiting_for_trigger(self) -> bool:
        return self.mode in (1, 5) and not self.triggered

    def counter_value(self, now_ns: int) -> int:
        if not self.loaded or self._waiting_for_trigger():
            return self.count & 0xFFFF
        d = self.elapsed(now_ns)
        if self.mode == 2:
            return self.period() - d % self.period()
        if self.mode == 3:
            return (self.period() - (2 * d) % self.period()) & 0xFFFF
        return (self.count - d) & 0xFFFF

    def out(self, now_ns: int) -> int:
        if not self.loaded:
            return 0 if self.mode == 0 else 1
        d = self.elapsed(now_ns)
        match self.mode:
            case 0:
                return int(d >= self.count)
            case 1:
                return int(not self.triggered or d >= self.count)
            case 2:
                return int(not self.gate or d % self.period() != self.period() - 1)
            case 3:
                return int(not self.gate or d % self.period() < (self.period() + 1) // 2)
            case 4:
                return int(d != self.count)
            case _:
                return int(not self.triggered or d != self.count)

    def rising_edges(self, d: int) -> int:
        """How many times OUT rose between the count load and ``d`` ticks later."""
        if not self.loaded or self._waiting_for_trigger():
            return 0
        if self.mode in (2, 3):
            return d // self.period()
        if self.mode in (0, 1):
            return int(d >= self.count)
        return int(d > self.count)

    def next_event_tick(self, d: int) -> int | None:
        """The tick of the next OUT change that matters for the IRQ, after ``d``."""
        if not self.loaded or self.frozen_ticks is not None or self._waiting_for_trigger():
            return None
        if self.mode in (2, 3):
            period = self.period()
            base = d - d % period
            half = (period + 1) // 2
            if self.mode == 3 and d - base < half:
                return base + half
            return base + period  # mode 2: only the rising edge at reload raises IRQ0
        if self.mode in (0, 1):
            return self.count if d < self.count else None
        if d < self.count:
            return self.count
        if d == self.count:
            return self.count + 1
        return None

    def status_byte(self, now_ns: int) -> int:
        return ((self.out(now_ns) << 7) | (0 if self.loaded else STATUS_NULL_COUNT)
                | (int(self.access) << 4) | (self.mode << 1) | int(self.bcd))


class PIT:
    """The 8254 with its register window (offsets 0-2 counters, 3 control)."""

    def __init__(self, irq0: IRQLine | None = None, *, clock: Clock = virtual_clock_ns,
                 timer_factory: TimerFactory = virtual_timer) -> None:
        self.clock = clock
        self.channels = [PITChannel(i, gate=(i != 2)) for i in range(NUM_CHANNELS)]
        self.channels[0].irq = irq0
        self.irq_timer = timer_factory(self._irq_timer_cb)
        self.irq_disabled = False
        self.reset()

    def reset(self) -> None:
        now = self.clock()
        for ch in self.channels:
            ch.mode = 3
            ch.bcd = False
            ch.access = Access.WORD
            ch.read_state = ch.write_state = ByteState.WORD_LOW
            ch.latched_count = None
            ch.latched_status = None
            ch.gate = ch.index != 2
            self._load_count(ch, 0, now)

    # -- public helpers for port 0x61 and the board -------------------------------
    def set_gate(self, channel: int, level: int) -> None:
        ch = self.channels[channel]
        new = bool(level)
        if new == ch.gate:
            return
        now = self.clock()
        if ch.loaded:
            if ch.mode in (0, 4):
                if new:
                    if ch.frozen_ticks is not None:
                        ch.load_ns = now - ticks_to_ns(ch.frozen_ticks)
                        ch.frozen_ticks = None
                else:
                    ch.frozen_ticks = ch.elapsed(now)
            elif ch.mode in (2, 3):
                if new:
                    self._restart(ch, now)
                else:
                    ch.frozen_ticks = ch.elapsed(now)
            elif new:
                ch.triggered = True
                self._restart(ch, now)
        ch.gate = new
        self._update_irq(ch, now)

    def irq_control(self, enable: bool) -> None:
        """Connect or cut channel 0's output from IRQ 0 (the HPET's legacy
        replacement route takes the line over while it is cut)."""
        self.irq_disabled = not enable
        ch = self.channels[0]
        if enable:
            now = self.clock()
            ch.edges_seen = ch.rising_edges(ch.elapsed(now))  # edges while cut off are lost
            self._update_irq(ch, now)
        else:
            self.irq_timer.delete()

    def get_gate(self, channel: int) -> int:
        return int(self.channels[channel].gate)

    def get_out(self, channel: int, now_ns: int | None = None) -> int:
        return self.channels[channel].out(self.clock() if now_ns is None else now_ns)

    # -- register window ------------------------------------------------------------
    def read(self, offset: int, size: int = 1) -> int:
        value = 0
        for i in range(size):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def write(self, offset: int, value: int, size: int = 1) -> None:
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, offset: int) -> int:
        if not 0 <= offset < WINDOW_SIZE:
            guest_error(f"i8254: read at offset {offset:#x} outside the window")
            return 0xFF
        if offset == CONTROL_OFFSET:
            return 0  # the mode register is write-only
        ch = self.channels[offset]
        if ch.latched_status is not None:
            value = ch.latched_status
            ch.latched_status = None
            return value
        if ch.latched_count is not None:
            count = ch.latched_count
            if ch.latched_state == ByteState.WORD_LOW:
                ch.latched_state = ByteState.WORD_HIGH
                return count & 0xFF
            ch.latched_count = None
            return (count >> 8) & 0xFF if ch.latched_state in (ByteState.HIBYTE, ByteState.WORD_HIGH) \
                else count & 0xFF
        count = self._visible_count(ch, self.clock())
        match ch.read_state:
            case ByteState.LOBYTE:
                return count & 0xFF
            case ByteState.HIBYTE:
                return (count >> 8) & 0xFF
            case ByteState.WORD_LOW:
                ch.read_state = ByteState.WORD_HIGH
                return count & 0xFF
            case _:
                ch.read_state = ByteState.WORD_LOW
                return (count >> 8) & 0xFF

    @staticmethod
    def _visible_count(ch: PITChannel, now: int) -> int:
        value = ch.counter_value(now)
        return _to_bcd(value) if ch.bcd else value

    def _write_byte(self, offset: int, value: int) -> None:
        if not 0 <= offset < WINDOW_SIZE:
            guest_error(f"i8254: write {value:#04x} at offset {offset:#x} outside the window")
            return
        now = self.clock()
        if offset == CONTROL_OFFSET:
            self._write_control(value, now)
            return
        ch = self.channels[offset]
        match ch.write_state:
            case ByteState.LOBYTE:
                self._load_count(ch, value, now)
            case ByteState.HIBYTE:
                self._load_count(ch, value << 8, now)
            case ByteState.WORD_LOW:
                ch.write_latch = value
                ch.write_state = ByteState.WORD_HIGH
            case _:
                self._load_count(ch, ch.write_latch | (value << 8), now)
                ch.write_state = ByteState.WORD_LOW

    def _write_control(self, value: int, now: int) -> None:
        channel = value >> 6
        if channel == READ_BACK_CHANNEL:
            for ch in self.channels:
                if not value & (2 << ch.index):
                    continue
                if not value & READ_BACK_NO_COUNT:
                    self._latch_count(ch, now)
                if not value & READ_BACK_NO_STATUS and ch.latched_status is None:
                    ch.latched_status = ch.status_byte(now)
            return
        ch = self.channels[channel]
        access = Access((value >> 4) & 3)
        if access == Access.LATCH:
            self._latch_count(ch, now)
            return
        mode = (value >> 1) & 7
        ch.mode = mode - 4 if mode >= 6 else mode  # 6 and 7 alias 2 and 3
        ch.bcd = bool(value & CW_BCD)
        ch.access = access
        ch.read_state = ch.write_state = _start_state(access)
        ch.latched_count = None
        ch.latched_status = None
        ch.loaded = False
        ch.frozen_ticks = None
        ch.triggered = False
        self._update_irq(ch, now)

    def _latch_count(self, ch: PITChannel, now: int) -> None:
        if ch.latched_count is not None:
            return  # a second latch before the read is ignored
        ch.latched_count = self._visible_count(ch, now)
        ch.latched_state = _start_state(ch.access)

    def _load_count(self, ch: PITChannel, raw: int, now: int) -> None:
        raw &= 0xFFFF
        if ch.bcd:
            count = _from_bcd(raw) or 10000
        else:
            count = raw or 0x10000
        ch.count = count
        ch.loaded = True
        ch.triggered = False
        self._restart(ch, now)
        if not ch.gate and ch.mode in (0, 2, 3, 4):
            ch.frozen_ticks = 0
        self._update_irq(ch, now)

    @staticmethod
    def _restart(ch: PITChannel, now: int) -> None:
        ch.load_ns = now
        ch.frozen_ticks = None
        ch.edges_seen = 0

    # -- channel 0's interrupt ---------------------------------------------------------
    def _irq_timer_cb(self) -> None:
        ch = self.channels[0]
        now = self.clock()
        ch.last_fire_ns = now
        self._update_irq(ch, now)

    def _update_irq(self, ch: PITChannel, now: int) -> None:
        if ch.irq is None or self.irq_disabled:
            return
        d = ch.elapsed(now)
        edges = ch.rising_edges(d)
        out = ch.out(now)
        if edges != ch.edges_seen:
            # OUT rose since we last looked (it may be low again by now, with a
            # clamped tiny count): make sure the PIC sees one rising edge.
            ch.edges_seen = edges
            ch.irq.set(0)
            ch.irq.set(1)
        ch.irq.set(out)
        self._arm_irq_timer(ch, d, now)

    def _arm_irq_timer(self, ch: PITChannel, d: int, now: int) -> None:
        """Arm channel 0's timer for its next OUT change after ``d`` ticks."""
        tick = ch.next_event_tick(d)
        if tick is None:
            self.irq_timer.delete()
            return
        when = ch.load_ns + ticks_to_ns(tick)
        self.irq_timer.mod_ns(max(when, ch.last_fire_ns + MIN_IRQ_INTERVAL_NS, now + 1))

    def post_load(self) -> None:
        """Re-arm channel 0's timer from the loaded channel (QEMU's
        pit_post_load).  The line itself is not touched: the PIC's and I/O
        APIC's saved state already hold what it did."""
        ch = self.channels[0]
        if ch.irq is None or self.irq_disabled:
            self.irq_timer.delete()
            return
        now = self.clock()
        self._arm_irq_timer(ch, ch.elapsed(now), now)


# --- migration (QEMU's vmstate_pit_common) -------------------------------------------------
# load_ns, frozen_ticks and last_fire_ns are virtual-clock times: the virtual
# clock is restored before the devices, so they keep their meaning.

_STATES_OF_ACCESS = {
    Access.LOBYTE: (ByteState.LOBYTE,),
    Access.HIBYTE: (ByteState.HIBYTE,),
    Access.WORD: (ByteState.WORD_LOW, ByteState.WORD_HIGH),
}


def _channel_post_load(ch: PITChannel, version_id: int) -> None:
    states = _STATES_OF_ACCESS.get(ch.access)
    if states is None:
        raise VMStateError(f"channel {ch.index}: access mode {ch.access.name} is no programmed mode")
    if ch.read_state not in states or ch.write_state not in states:
        raise VMStateError(f"channel {ch.index}: byte states {ch.read_state.name}/{ch.write_state.name} "
                           f"do not belong to access mode {ch.access.name}")
    if ch.bcd and ch.count > 10000:
        raise VMStateError(f"channel {ch.index}: BCD count {ch.count} above 10000")


VMSTATE_PIT_CHANNEL = VMStateDescription(
    "i8254-channel", version_id=1,
    fields=[
        VMStateField("count", UInt(17), check=range(1, 0x10001)),
        VMStateField("mode", U8, check=range(6)),
        VMStateField("bcd", BOOL),
        VMStateField("access", Enum(Access)),
        VMStateField("read_state", Enum(ByteState)),
        VMStateField("write_state", Enum(ByteState)),
        VMStateField("write_latch", U8),
        VMStateField("loaded", BOOL),
        VMStateField("load_ns", I64),
        VMStateField("frozen_ticks", Optional(U64)),
        VMStateField("triggered", BOOL),
        VMStateField("latched_count", Optional(U16)),
        VMStateField("latched_state", Enum(ByteState)),
        VMStateField("latched_status", Optional(U8)),
        VMStateField("gate", BOOL),
        VMStateField("edges_seen", U64),
        VMStateField("last_fire_ns", I64),
    ],
    post_load=_channel_post_load)


def _pit_post_load(pit: PIT, version_id: int) -> None:
    pit.post_load()


VMSTATE_PIT = VMStateDescription(
    "i8254", version_id=1,
    fields=[
        VMStateField("channels", StructList(VMSTATE_PIT_CHANNEL, NUM_CHANNELS)),
        VMStateField("irq_disabled", BOOL),
    ],
    post_load=_pit_post_load)
