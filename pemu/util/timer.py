"""Clocks and timers (QEMU's QEMUClock / QEMUTimer, util/qemu-timer.c).

``QEMU_CLOCK_VIRTUAL`` follows the host's monotonic clock while the VM runs
and stands still while it is stopped; device timers (PIT, RTC periodic,
UART timeouts) use it.  ``QEMU_CLOCK_REALTIME`` and ``QEMU_CLOCK_HOST``
always run.  Timer callbacks run on the main-loop thread with the big lock
held; ``timerlist_deadline_ns`` tells the main loop how long it may sleep.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

from pemu.util.vm_context import current_vm

SCALE_NS = 1
SCALE_US = 1000
SCALE_MS = 1000_000
NANOSECONDS_PER_SECOND = 1_000_000_000


class QEMUClockType(IntEnum):
    REALTIME = 0
    VIRTUAL = 1
    HOST = 2


QEMU_CLOCK_REALTIME = QEMUClockType.REALTIME
QEMU_CLOCK_VIRTUAL = QEMUClockType.VIRTUAL
QEMU_CLOCK_HOST = QEMUClockType.HOST


class _VirtualClock:
    """Monotonic time that stops while the VM is stopped.  It starts stopped
    at 0 and runs from the first vm_start, so a VM started with -S sees no
    time pass before ``cont`` (QEMU: cpu_enable_ticks in vm_start)."""

    def __init__(self) -> None:
        self.offset = 0
        self.stopped_at: int | None = 0

    def get_ns(self) -> int:
        if self.stopped_at is not None:
            return self.stopped_at
        return time.monotonic_ns() - self.offset

    def stop(self) -> None:
        if self.stopped_at is None:
            self.stopped_at = time.monotonic_ns() - self.offset

    def start(self) -> None:
        if self.stopped_at is not None:
            self.offset = time.monotonic_ns() - self.stopped_at
            self.stopped_at = None


# Process-wide, as the host's clocks are: where QEMU_CLOCK_REALTIME counts from.
_realtime_base = time.monotonic_ns()


class _MainLoopWakeup:
    """How a newly armed timer wakes the main loop, which is process-wide
    (QEMU's qemu_notify_event)."""

    cb: Callable[[], None] | None = None


_main_loop_wakeup = _MainLoopWakeup()


def qemu_clock_get_ns(clock: QEMUClockType) -> int:
    if clock == QEMUClockType.VIRTUAL:
        return current_vm().timers.virtual.get_ns()
    if clock == QEMUClockType.HOST:
        return time.time_ns()
    return time.monotonic_ns() - _realtime_base


def qemu_clock_get_ms(clock: QEMUClockType) -> int:
    return qemu_clock_get_ns(clock) // SCALE_MS


def qemu_clock_enable_virtual(enabled: bool) -> None:
    """Start or stop the virtual clock (vm_start / vm_stop)."""
    timers = current_vm().timers
    if enabled:
        timers.virtual.start()
    else:
        timers.virtual.stop()
    timers.notify()


class QEMUTimer:
    """A one-shot timer on one clock; re-arm it from its callback for periodic work."""

    __slots__ = ("clock", "cb", "scale", "expire_time", "_key", "_index", "_group")

    def __init__(self, clock: QEMUClockType, cb: Callable[[], None], scale: int = SCALE_NS,
                 group: TimerListGroup | None = None) -> None:
        # The timers of the VM being built unless told otherwise (QEMU's main_loop_tlg).
        self._group = group if group is not None else current_vm().timers
        self.clock = clock
        self.cb = cb
        self.scale = scale
        self.expire_time = -1  # ns; -1 when not pending
        # The list's sort key: expire_time, then arming order (ties fire first
        # armed, first run), as one integer so comparing is one operation.
        self._key = 0
        self._index = -1  # slot in its clock's TimerList; -1 when not on it

    def mod_ns(self, expire_ns: int) -> None:
        self._group.mod(self, max(0, expire_ns))

    def mod(self, expire: int) -> None:
        self.mod_ns(expire * self.scale)

    def delete(self) -> None:
        self._group.delete(self)

    def pending(self) -> bool:
        return self.expire_time >= 0

    def expired(self, now_ns: int) -> bool:
        return 0 <= self.expire_time <= now_ns


class TimerList:
    """The armed timers of one clock (QEMU's QEMUTimerList): a binary heap on
    (expire_time, arming order) in which every timer knows its slot, so
    re-arming or deleting a timer moves or removes its one entry in
    O(log n).  The list never holds more entries than there are armed timers."""

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[QEMUTimer] = []

    def __len__(self) -> int:
        return len(self.heap)

    def earliest(self) -> QEMUTimer | None:
        return self.heap[0] if self.heap else None

    def insert(self, timer: QEMUTimer) -> None:
        timer._index = len(self.heap)
        self.heap.append(timer)
        self._sift_up(timer._index)

    def moved(self, timer: QEMUTimer) -> None:
        """Restore the order after ``timer``'s deadline changed."""
        if not self._sift_up(timer._index):
            self._sift_down(timer._index)

    def remove(self, timer: QEMUTimer) -> None:
        heap = self.heap
        index = timer._index
        last = heap.pop()
        timer._index = -1
        if last is not timer:
            heap[index] = last
            last._index = index
            self.moved(last)

    def _sift_up(self, index: int) -> bool:
        """Move the timer at ``index`` towards the root; True if it moved."""
        heap = self.heap
        timer = heap[index]
        start = index
        while index > 0:
            parent = (index - 1) >> 1
            above = heap[parent]
            if timer._key >= above._key:
                break
            heap[index] = above
            above._index = index
            index = parent
        if index == start:
            return False
        heap[index] = timer
        timer._index = index
        return True

    def _sift_down(self, index: int) -> None:
        heap = self.heap
        size = len(heap)
        timer = heap[index]
        while True:
            child = 2 * index + 1
            if child >= size:
                break
            right = child + 1
            if right < size and heap[right]._key < heap[child]._key:
                child = right
            below = heap[child]
            if below._key >= timer._key:
                break
            heap[index] = below
            below._index = index
            index = child
        heap[index] = timer
        timer._index = index


class TimerListGroup:
    """One VM's clocks and armed timers: one TimerList per clock (QEMU's
    QEMUTimerListGroup), and the VM's virtual clock."""

    def __init__(self) -> None:
        self.virtual = _VirtualClock()
        self.lock = threading.Lock()
        self.lists: dict[QEMUClockType, TimerList] = {c: TimerList() for c in QEMUClockType}
        self.seq = itertools.count()

    def clock_ns(self, clock: QEMUClockType) -> int:
        if clock == QEMUClockType.VIRTUAL:
            return self.virtual.get_ns()
        if clock == QEMUClockType.HOST:
            return time.time_ns()
        return time.monotonic_ns() - _realtime_base

    def notify(self) -> None:
        """Wake the main loop: its next deadline may have moved."""
        cb = _main_loop_wakeup.cb
        if cb is not None:
            cb()

    def mod(self, timer: QEMUTimer, expire_ns: int) -> None:
        with self.lock:
            timers = self.lists[timer.clock]
            earliest = timers.earliest()
            rearm = earliest is None or expire_ns < earliest.expire_time
            timer.expire_time = expire_ns
            timer._key = (expire_ns << 64) | next(self.seq)
            if timer._index < 0:
                timers.insert(timer)
            else:
                timers.moved(timer)
        if rearm:
            self.notify()

    def delete(self, timer: QEMUTimer) -> None:
        with self.lock:
            if timer._index >= 0:
                self.lists[timer.clock].remove(timer)
            timer.expire_time = -1

    def deadline_ns(self) -> int:
        """Nanoseconds until the next timer expires; -1 if none is armed."""
        best = -1
        with self.lock:
            for clock, timers in self.lists.items():
                earliest = timers.earliest()
                if earliest is None:
                    continue
                if clock == QEMUClockType.VIRTUAL and self.virtual.stopped_at is not None:
                    continue
                delta = max(0, earliest.expire_time - self.clock_ns(clock))
                if best < 0 or delta < best:
                    best = delta
        return best

    def run_expired(self, call: Callable[[Callable[[], None]], None] | None = None) -> bool:
        """Run the callbacks of expired timers (through ``call``, the main
        loop's guard, if given); True if any ran."""
        ran = False
        for clock in self.lists:
            if clock == QEMUClockType.VIRTUAL and self.virtual.stopped_at is not None:
                continue
            ran |= self.run_clock(clock, self.clock_ns(clock), call)
        return ran

    def run_clock(self, clock: QEMUClockType, now: int,
                  call: Callable[[Callable[[], None]], None] | None = None) -> bool:
        """Run the callbacks of the timers of ``clock`` due at ``now``."""
        timers = self.lists[clock]
        ran = False
        while True:
            with self.lock:
                timer = timers.earliest()
                if timer is None or timer.expire_time > now:
                    break
                timers.remove(timer)
                timer.expire_time = -1
            if call is None:
                timer.cb()
            else:
                call(timer.cb)
            ran = True
        return ran

    def next_expiry(self, clock: QEMUClockType) -> int:
        """When the earliest timer of ``clock`` expires; -1 if none is armed."""
        with self.lock:
            timer = self.lists[clock].earliest()
            return timer.expire_time if timer is not None else -1


    def clear(self) -> None:
        """Disarm every timer (the VM is being destroyed)."""
        with self.lock:
            for timers in self.lists.values():
                while timers.heap:
                    timer = timers.heap[0]
                    timers.remove(timer)
                    timer.expire_time = -1

    def armed(self) -> int:
        with self.lock:
            return sum(len(timers) for timers in self.lists.values())


def timerlist_deadline_ns() -> int:
    return current_vm().timers.deadline_ns()


def timerlist_run_expired(call: Callable[[Callable[[], None]], None] | None = None) -> bool:
    return current_vm().timers.run_expired(call)


def timerlist_entries(clock: QEMUClockType) -> int:
    """How many entries the clock's timer list holds (one per armed timer)."""
    return len(current_vm().timers.lists[clock])


def timerlist_set_notify(cb: Callable[[], None] | None) -> None:
    """``cb()`` wakes the (process-wide) main loop when a timer is armed earlier."""
    _main_loop_wakeup.cb = cb


def qemu_clock_advance_virtual_time(dest_ns: int) -> int:
    """Move the stopped virtual clock forward to ``dest_ns``, running each
    virtual timer at its own expiry time on the way (QEMU's
    qemu_clock_advance_virtual_time, which qtest's clock_step uses).  Only
    while the VM is stopped; returns the new time."""
    timers = current_vm().timers
    virtual = timers.virtual
    if virtual.stopped_at is None:
        raise RuntimeError("the virtual clock can only be advanced while the VM is stopped")
    while True:
        expiry = timers.next_expiry(QEMUClockType.VIRTUAL)
        if expiry < 0 or expiry > dest_ns:
            break
        virtual.stopped_at = max(virtual.stopped_at, expiry)
        timers.run_clock(QEMUClockType.VIRTUAL, virtual.stopped_at)
    virtual.stopped_at = max(virtual.stopped_at, dest_ns)
    return virtual.stopped_at


# --- what device models take, so tests can drive time -----------------------------


Clock = Callable[[], int]  # now, in nanoseconds


class TimerLike(Protocol):
    """What a device needs of a timer: arm it at an absolute time, or cancel it."""

    def mod_ns(self, expire_ns: int) -> None: ...

    def delete(self) -> None: ...


TimerFactory = Callable[[Callable[[], None]], TimerLike]


def virtual_clock_ns() -> int:
    """The default clock of device models: QEMU_CLOCK_VIRTUAL."""
    return qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)


def virtual_timer(cb: Callable[[], None]) -> TimerLike:
    """The default timer factory of device models: a QEMUTimer on the virtual clock."""
    return QEMUTimer(QEMU_CLOCK_VIRTUAL, cb)
