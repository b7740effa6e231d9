"""The High Precision Event Timer (QEMU's hw/timer/hpet.c), IA-PC HPET spec 1.0a.

One block at 0xFED00000: a 64-bit main counter at 100 MHz and three
comparators.  General capabilities read 0x8086A201 (vendor 8086, legacy
replacement capable, 64-bit counter, 3 timers, revision 1) and a period of
10,000,000 fs.  With LEG_RT_CNF set, timer 0 drives IRQ 0 and timer 1
IRQ 8 (the PIT's and the RTC's lines) and the PIT's output is cut off through
the ``pit_enabled`` callback; otherwise each timer drives the GSI in its
route field, among those its route capability allows.

The counter is computed from the virtual clock (an offset while enabled,
a stored value while halted), so reading it costs nothing and nothing ticks.
Timers are armed on the clock for the next comparator match; a periodic
timer whose period is shorter than :data:`MIN_PERIOD_NS` is re-armed no
faster than that (late interrupts coalesce, as the PIT's do).

:class:`HPET` is the register model with its clock, timer factory and
interrupt lines passed in; "hpet" is the sysbus QOM type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from pemu.hw.core.irq import IRQLine
from pemu.hw.core.qdev import DeviceClass, Property, device_class_set_props
from pemu.hw.core.sysbus import TYPE_SYS_BUS_DEVICE, SysBusDevice
from pemu.migration import vmstate as vms
from pemu.migration.vmstate import (
    BOOL,
    TIMER,
    Struct,
    VMStateDescription,
    VMStateError,
    VMStateField,
    vmstate_load_state,
    vmstate_save_state,
)
from pemu.qom.object import Object, ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps
from pemu.util.log import guest_error
from pemu.util.timer import Clock, TimerFactory, TimerLike, virtual_clock_ns, virtual_timer

if TYPE_CHECKING:
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter

HPET_BASE = 0xFED00000
HPET_LEN = 0x400
HPET_CLK_PERIOD_NS = 10                 # 100 MHz
HPET_PERIOD_FS = HPET_CLK_PERIOD_NS * 1_000_000
HPET_MIN_TIMERS = 3
HPET_MAX_TIMERS = 32
HPET_NUM_IRQ_ROUTES = 32
HPET_DEFAULT_INTCAP = 0x00FF0104        # q35: GSIs 2, 8 and 16-23
MIN_PERIOD_NS = 10_000

# General registers.
HPET_ID = 0x000
HPET_PERIOD = 0x004
HPET_CFG = 0x010
HPET_STATUS = 0x020
HPET_COUNTER = 0x0F0
HPET_TN_BASE = 0x100
HPET_TN_STRIDE = 0x20
HPET_TN_CFG = 0x00
HPET_TN_CMP = 0x08
HPET_TN_ROUTE = 0x10

HPET_CFG_ENABLE = 0x001
HPET_CFG_LEGACY = 0x002
HPET_CFG_WRITE_MASK = 0x003

HPET_TN_TYPE_LEVEL = 0x002
HPET_TN_ENABLE = 0x004
HPET_TN_PERIODIC = 0x008
HPET_TN_PERIODIC_CAP = 0x010
HPET_TN_SIZE_CAP = 0x020
HPET_TN_SETVAL = 0x040
HPET_TN_32BIT = 0x100
HPET_TN_INT_ROUTE_SHIFT = 9
HPET_TN_INT_ROUTE_MASK = 0x3E00
HPET_TN_FSB_ENABLE = 0x4000
HPET_TN_FSB_CAP = 0x8000
HPET_TN_CFG_WRITE_MASK = 0x7F4E

RTC_ISA_IRQ = 8
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


def _ns_to_ticks(ns: int) -> int:
    return ns // HPET_CLK_PERIOD_NS


def _ticks_to_ns(ticks: int) -> int:
    return ticks * HPET_CLK_PERIOD_NS


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class HPETTimer:
    """One HPET comparator: its configuration, comparator and period registers."""

    def __init__(self, tn: int) -> None:
        self.tn = tn
        self.config = 0
        self.cmp = U64
        self.fsb = 0
        self.period = 0
        self.wrap_flag = False
        self.qemu_timer: TimerLike | None = None

    @property
    def periodic(self) -> bool:
        return bool(self.config & HPET_TN_PERIODIC)

    @property
    def enabled(self) -> bool:
        return bool(self.config & HPET_TN_ENABLE)

    @property
    def is_32bit(self) -> bool:
        return bool(self.config & HPET_TN_32BIT)

    @property
    def route(self) -> int:
        return (self.config & HPET_TN_INT_ROUTE_MASK) >> HPET_TN_INT_ROUTE_SHIFT


class HPET:
    """The register block.  ``irqs[n]`` is GSI n as this device sees it."""

    def __init__(self, irqs: Sequence[IRQLine], *, num_timers: int = HPET_MIN_TIMERS,
                 intcap: int = HPET_DEFAULT_INTCAP, clock: Clock = virtual_clock_ns,
                 timer_factory: TimerFactory = virtual_timer,
                 pit_enabled: Callable[[bool], None] | None = None) -> None:
        if not HPET_MIN_TIMERS <= num_timers <= HPET_MAX_TIMERS:
            raise ValueError(f"hpet: {num_timers} timers (must be {HPET_MIN_TIMERS}-{HPET_MAX_TIMERS})")
        self.irqs = list(irqs)
        self.num_timers = num_timers
        self.intcap = intcap & U32
        self.clock = clock
        self.pit_enabled = pit_enabled
        self.timers = [HPETTimer(i) for i in range(num_timers)]
        for t in self.timers:
            t.qemu_timer = timer_factory(partial(self._timer_expired, t))
        self.capability = (0x8086A001 | ((num_timers - 1) << 8) | (HPET_PERIOD_FS << 32))
        self.config = 0
        self.isr = 0
        self.hpet_counter = 0
        self.hpet_offset = 0
        self.reset()

    # -- state ----------------------------------------------------------------------
    def reset(self) -> None:
        for t in self.timers:
            self._del_timer(t)
            t.cmp = U64
            t.config = HPET_TN_PERIODIC_CAP | HPET_TN_SIZE_CAP | (self.intcap << 32)
            t.period = 0
            t.fsb = 0
            t.wrap_flag = False
        self.hpet_counter = 0
        self.hpet_offset = 0
        self.config = 0
        self.isr = 0
        if self.pit_enabled is not None:
            self.pit_enabled(True)

    @property
    def enabled(self) -> bool:
        return bool(self.config & HPET_CFG_ENABLE)

    @property
    def legacy(self) -> bool:
        return bool(self.config & HPET_CFG_LEGACY)

    def get_ticks(self) -> int:
        if not self.enabled:
            return self.hpet_counter
        return (_ns_to_ticks(self.clock()) + self.hpet_offset) & U64

    # -- interrupts -----------------------------------------------------------------
    def _route_of(self, t: HPETTimer) -> int:
        if t.tn <= 1 and self.legacy:
            return 0 if t.tn == 0 else RTC_ISA_IRQ
        return t.route

    def _irq(self, route: int) -> IRQLine | None:
        if route < len(self.irqs):
            return self.irqs[route]
        guest_error(f"hpet: interrupt route {route} is not connected")
        return None

    def _update_irq(self, t: HPETTimer, set_: bool) -> None:
        route = self._route_of(t)
        line = self._irq(route)
        mask = 1 << t.tn
        if not set_ or not t.enabled or not self.enabled:
            self.isr &= ~mask
            if line is not None:
                line.set(0)
        elif t.config & HPET_TN_TYPE_LEVEL:
            self.isr |= mask
            if line is not None:
                line.set(1)
        else:
            self.isr &= ~mask
            if line is not None:
                line.set(1)
                line.set(0)

    # -- comparators ----------------------------------------------------------------
    def _diff(self, t: HPETTimer, current: int) -> int:
        if t.is_32bit:
            diff = _signed((t.cmp & U32) - (current & U32), 32)
        else:
            diff = _signed(t.cmp - current, 64)
        return diff if diff > 0 else 1

    def _arm(self, t: HPETTimer, diff_ticks: int) -> None:
        delay = _ticks_to_ns(diff_ticks)
        if t.periodic:
            delay = max(delay, MIN_PERIOD_NS)
        assert t.qemu_timer is not None
        t.qemu_timer.mod_ns(self.clock() + delay)

    def _set_timer(self, t: HPETTimer) -> None:
        current = self.get_ticks()
        t.wrap_flag = False
        diff = self._diff(t, current)
        # In 32-bit one-shot mode the counter's wrap also interrupts.
        if t.is_32bit and not t.periodic:
            wrap_diff = U32 - (current & U32)
            if wrap_diff < diff:
                diff = wrap_diff
                t.wrap_flag = True
        self._arm(t, diff)

    def _del_timer(self, t: HPETTimer) -> None:
        if t.qemu_timer is not None:
            t.qemu_timer.delete()

    def _timer_expired(self, t: HPETTimer) -> None:
        if not (t.enabled and self.enabled):
            return
        current = self.get_ticks()
        if t.periodic and t.period:
            bits = 32 if t.is_32bit else 64
            late = _signed(current - t.cmp, bits)
            if late >= 0:
                # This match is being delivered now: step the comparator past
                # the counter in one go (a tiny period after a long pause
                # must not loop millions of times).
                steps = late // t.period + 1
                t.cmp = (t.cmp + steps * t.period) & ((1 << bits) - 1)
            self._arm(t, self._diff(t, current))
        elif t.is_32bit and not t.periodic and t.wrap_flag:
            t.wrap_flag = False
            self._arm(t, self._diff(t, current))
        self._update_irq(t, True)

    # -- registers ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size == 8 and not offset & 7:
            return self._read32(offset) | (self._read32(offset + 4) << 32)
        if size != 4 or offset & 3:
            guest_error(f"hpet: invalid read of size {size} at {offset:#x}")
            return 0
        return self._read32(offset)

    def write(self, offset: int, value: int, size: int) -> None:
        if size == 8 and not offset & 7:
            self._write32(offset, value & U32)
            self._write32(offset + 4, (value >> 32) & U32)
            return
        if size != 4 or offset & 3:
            guest_error(f"hpet: invalid write of size {size} at {offset:#x}")
            return
        self._write32(offset, value & U32)

    def _timer_at(self, offset: int) -> tuple[HPETTimer, int] | None:
        if offset < HPET_TN_BASE:
            return None
        index, reg = divmod(offset - HPET_TN_BASE, HPET_TN_STRIDE)
        if index >= self.num_timers:
            guest_error(f"hpet: access to timer {index}, which does not exist")
            return None
        return self.timers[index], reg

    def _read32(self, offset: int) -> int:
        if offset >= HPET_TN_BASE:
            found = self._timer_at(offset)
            if found is None:
                return 0
            t, reg = found
            value = {HPET_TN_CFG: t.config, HPET_TN_CMP: t.cmp, HPET_TN_ROUTE: t.fsb}.get(reg & ~4)
            if value is None:
                guest_error(f"hpet: read of reserved timer register {offset:#x}")
                return 0
            return (value >> (32 if reg & 4 else 0)) & U32
        base, high = offset & ~4, bool(offset & 4)
        if base == HPET_ID:
            value = self.capability
        elif base == HPET_CFG:
            value = self.config
        elif base == HPET_STATUS:
            value = self.isr
        elif base == HPET_COUNTER:
            value = self.get_ticks()
        else:
            guest_error(f"hpet: read of reserved register {offset:#x}")
            return 0
        return (value >> (32 if high else 0)) & U32

    def _write32(self, offset: int, value: int) -> None:
        if offset >= HPET_TN_BASE:
            found = self._timer_at(offset)
            if found is not None:
                self._write_timer(found[0], found[1], value)
            return
        if offset == HPET_ID or offset == HPET_PERIOD:
            guest_error("hpet: write to the read-only capabilities register")
        elif offset == HPET_CFG:
            self._write_config(value)
        elif offset == HPET_CFG + 4 or offset == HPET_STATUS + 4:
            pass
        elif offset == HPET_STATUS:
            cleared = value & self.isr
            for t in self.timers:
                if cleared & (1 << t.tn):
                    self._update_irq(t, False)
        elif offset in (HPET_COUNTER, HPET_COUNTER + 4):
            if self.enabled:
                guest_error("hpet: counter written while the HPET is enabled (ignored)")
                return
            if offset == HPET_COUNTER:
                self.hpet_counter = (self.hpet_counter & ~U32 & U64) | value
            else:
                self.hpet_counter = (self.hpet_counter & U32) | (value << 32)
        else:
            guest_error(f"hpet: write to reserved register {offset:#x}")

    def _write_config(self, value: int) -> None:
        old = self.config
        new = (old & ~HPET_CFG_WRITE_MASK) | (value & HPET_CFG_WRITE_MASK)
        self.config = new
        if not old & HPET_CFG_ENABLE and new & HPET_CFG_ENABLE:
            # Counting starts from the stored value.
            self.hpet_offset = (self.hpet_counter - _ns_to_ticks(self.clock())) & U64
            for t in self.timers:
                if t.enabled and self.isr & (1 << t.tn):
                    self._update_irq(t, True)
                if t.enabled:
                    self._set_timer(t)
        elif old & HPET_CFG_ENABLE and not new & HPET_CFG_ENABLE:
            self.hpet_counter = (_ns_to_ticks(self.clock()) + self.hpet_offset) & U64
            for t in self.timers:
                self._del_timer(t)
        if not old & HPET_CFG_LEGACY and new & HPET_CFG_LEGACY:
            if self.pit_enabled is not None:
                self.pit_enabled(False)
            for route in (0, RTC_ISA_IRQ):
                if route < len(self.irqs):
                    self.irqs[route].set(0)
        elif old & HPET_CFG_LEGACY and not new & HPET_CFG_LEGACY:
            if self.irqs:
                self.irqs[0].set(0)
            if self.pit_enabled is not None:
                self.pit_enabled(True)

    def _write_timer(self, t: HPETTimer, reg: int, value: int) -> None:
        if reg == HPET_TN_CFG:
            old = t.config
            new_low = ((old & U32) & ~HPET_TN_CFG_WRITE_MASK) | (value & HPET_TN_CFG_WRITE_MASK)
            if not old & HPET_TN_FSB_CAP:
                new_low &= ~HPET_TN_FSB_ENABLE
            if not old & HPET_TN_PERIODIC_CAP:
                new_low &= ~HPET_TN_PERIODIC
            route = (new_low & HPET_TN_INT_ROUTE_MASK) >> HPET_TN_INT_ROUTE_SHIFT
            if not (self.intcap >> route) & 1:
                guest_error(f"hpet: timer {t.tn} routed to GSI {route}, which its capability does not allow")
            t.config = (old & ~U32 & U64) | new_low
            if new_low & HPET_TN_32BIT:
                t.cmp &= U32
                t.period &= U32
            if not new_low & HPET_TN_TYPE_LEVEL and self.isr & (1 << t.tn):
                self._update_irq(t, False)
            if not old & HPET_TN_ENABLE and new_low & HPET_TN_ENABLE:
                if self.enabled:
                    self._set_timer(t)
            elif old & HPET_TN_ENABLE and not new_low & HPET_TN_ENABLE:
                self._del_timer(t)
                self._update_irq(t, False)
        elif reg == HPET_TN_CFG + 4:
            pass  # the route capability is read-only
        elif reg in (HPET_TN_CMP, HPET_TN_CMP + 4):
            high = reg == HPET_TN_CMP + 4
            if t.is_32bit:
                if high:
                    return
                value &= U32
            shift = 32 if high else 0
            keep = ~(U32 << shift) & U64
            sets_cmp = not t.periodic or bool(t.config & HPET_TN_SETVAL)
            if sets_cmp:
                t.cmp = (t.cmp & keep) | (value << shift)
            # The low half of a periodic timer always sets the period; the
            # high half sets either the comparator or the period (as QEMU).
            if t.periodic and (not high or not sets_cmp):
                if t.is_32bit:
                    value = min(value, U32 >> 1)
                t.period = (t.period & keep) | (value << shift)
            t.config &= ~HPET_TN_SETVAL
            if self.enabled and t.enabled:
                self._set_timer(t)
        elif reg in (HPET_TN_ROUTE, HPET_TN_ROUTE + 4):
            shift = 32 if reg & 4 else 0
            t.fsb = (t.fsb & ~(U32 << shift) & U64) | (value << shift)
        else:
            guest_error(f"hpet: write to reserved timer register {reg:#x} of timer {t.tn}")


# --- migration (QEMU's vmstate_hpet) ------------------------------------------------------
# hpet_offset is the counter's offset from the virtual clock (in ticks); the
# virtual clock is restored before the devices, so the counter reads on from
# where it was.  The comparators' timers are loaded as deadlines.  The PIT's
# "cut off by legacy replacement" flag is the PIT's own state: nothing is
# re-routed on load.

VMSTATE_HPET_TIMER = VMStateDescription(
    "hpet_timer", version_id=1,
    fields=[
        VMStateField("config", vms.U64),
        VMStateField("cmp", vms.U64),
        VMStateField("fsb", vms.U64),
        VMStateField("period", vms.U64),
        VMStateField("wrap_flag", BOOL),
        VMStateField("qemu_timer", TIMER),
    ])


class _HPETTimers:
    """A field kind: the comparators, their count first; a stream with
    another count than this HPET's (its "timers" property) is refused."""

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        vms.U8.save(f, len(value))
        for t in value:
            vmstate_save_state(f, VMSTATE_HPET_TIMER, t)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        count = vms.U8.load(f, None, where)
        if count != len(current):
            raise VMStateError(f"{where}: {count} timers in the stream, this HPET has {len(current)}")
        for i, t in enumerate(current):
            vmstate_load_state(f, VMSTATE_HPET_TIMER, t, VMSTATE_HPET_TIMER.version_id, f"{where}[{i}]")
        return current


def _hpet_post_load(hpet: HPET, version_id: int) -> None:
    if hpet.config & ~HPET_CFG_WRITE_MASK:
        raise VMStateError(f"configuration {hpet.config:#x} sets reserved bits")
    if hpet.isr >> hpet.num_timers:
        raise VMStateError(f"interrupt status {hpet.isr:#x} names timers this HPET does not have")
    caps = HPET_TN_PERIODIC_CAP | HPET_TN_SIZE_CAP | (hpet.intcap << 32)
    for t in hpet.timers:
        if t.config & ~HPET_TN_CFG_WRITE_MASK & U64 != caps:
            raise VMStateError(f"timer {t.tn}: configuration {t.config:#x} does not match its capabilities")
        if t.is_32bit and (t.cmp > U32 or t.period > U32):
            raise VMStateError(f"timer {t.tn}: 64-bit comparator or period in 32-bit mode")


VMSTATE_HPET_MODEL = VMStateDescription(
    "hpet-model", version_id=1,
    fields=[
        VMStateField("config", vms.U64),
        VMStateField("isr", vms.U64),
        VMStateField("hpet_counter", vms.U64),
        VMStateField("hpet_offset", vms.U64),
        VMStateField("timers", _HPETTimers()),
    ],
    post_load=_hpet_post_load)

VMSTATE_HPET = VMStateDescription("hpet", version_id=1, fields=[VMStateField("model", Struct(VMSTATE_HPET_MODEL))])


# --- fw_cfg and the QOM device -----------------------------------------------------------------


def hpet_fw_cfg_bytes(capability_low: int, base: int = HPET_BASE) -> bytes:
    """The FW_CFG_HPET item: a count and 8 packed {u32 id, u64 address, u16
    min_tick, u8 page_prot} entries, of which the first describes this HPET."""
    entry = struct.pack("<IQHB", capability_low & U32, base, 0, 0)
    return struct.pack("<B", 1) + entry + bytes(len(entry) * 7)


TYPE_HPET = "hpet"


class HPETState(SysBusDevice):
    """The sysbus device: MMIO region 0 is the register block, IRQ n is GSI n."""

    model: HPET
    num_timers: int
    intcap: int
    pit_enabled_cb: Callable[[bool], None] | None


class _SysbusIRQ:
    """GSI n of the device, looked up when it fires (the board connects after realize)."""

    def __init__(self, dev: HPETState, n: int) -> None:
        self.dev, self.n = dev, n

    def set(self, level: int) -> None:
        self.dev.irqs[self.n].set(level)


def _hpet_pit_enabled(dev: HPETState, on: bool) -> None:
    if dev.pit_enabled_cb is not None:
        dev.pit_enabled_cb(on)


def _hpet_init(obj: Object) -> None:
    object_check(obj, HPETState).pit_enabled_cb = None


def _hpet_realize(dev: Any) -> None:
    if not HPET_MIN_TIMERS <= dev.num_timers <= HPET_MAX_TIMERS:
        raise QOMError(f"hpet: 'timers' must be between {HPET_MIN_TIMERS} and {HPET_MAX_TIMERS}")
    for _ in range(HPET_NUM_IRQ_ROUTES):
        dev.init_irq()
    dev.model = HPET([_SysbusIRQ(dev, n) for n in range(HPET_NUM_IRQ_ROUTES)],
                     num_timers=dev.num_timers, intcap=dev.intcap,
                     pit_enabled=lambda on: _hpet_pit_enabled(dev, on))
    ops = MemoryRegionOps(dev.model.read, dev.model.write, 4, 8, False, 4, 8)
    dev.init_mmio(MemoryRegion.io("hpet", HPET_LEN, ops, owner=dev))


def _hpet_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = _hpet_realize
    dc.vmsd = VMSTATE_HPET
    dc.reset = lambda dev: object_check(dev, HPETState).model.reset()
    dc.desc = "HPET"
    dc.user_creatable = False
    device_class_set_props(dc, [
        Property("timers", "uint8", HPET_MIN_TIMERS, attr="num_timers"),
        Property("hpet-intcap", "uint32", HPET_DEFAULT_INTCAP, attr="intcap"),
    ])


type_register(TypeInfo(TYPE_HPET, parent=TYPE_SYS_BUS_DEVICE, instance_type=HPETState,
                       instance_init=_hpet_init, class_init=_hpet_class_init))
