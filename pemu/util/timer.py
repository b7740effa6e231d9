"""Clocks and timers (QEMU's QEMUClock / QEMUTimer, util/qemu-timer.c).

``QEMU_CLOCK_VIRTUAL`` follows the host's monotonic clock while the VM runs
and stands still while it is stopped; device timers (PIT, RTC periodic,
UART timeouts) use it.  ``QEMU_CLOCK_REALTIME`` and ``QEMU_CLOCK_HOST``
always run.  Timer callbacks run on the main-loop thread with the big lock
held; ``timerlist_deadline_ns`` tells the main loop how long it may sleep.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from enum import IntEnum
from typing import Callable, Protocol

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


_virtual = _VirtualClock()
_realtime_base = time.monotonic_ns()


def qemu_clock_get_ns(clock: QEMUClockType) -> int:
    if clock == QEMUClockType.VIRTUAL:
        return _virtual.get_ns()
    if clock == QEMUClockType.HOST:
        return time.time_ns()
    return time.monotonic_ns() - _realtime_base


def qemu_clock_get_ms(clock: QEMUClockType) -> int:
    return qemu_clock_get_ns(clock) // SCALE_MS


def qemu_clock_enable_virtual(enabled: bool) -> None:
    """Start or stop the virtual clock (vm_start / vm_stop)."""
    if enabled:
        _virtual.start()
    else:
        _virtual.stop()
    _timers.notify()


class QEMUTimer:
    """A one-shot timer on one clock; re-arm it from its callback for periodic work."""

    __slots__ = ("clock", "cb", "scale", "expire_time", "_seq")

    def __init__(self, clock: QEMUClockType, cb: Callable[[], None], scale: int = SCALE_NS) -> None:
        self.clock = clock
        self.cb = cb
        self.scale = scale
        self.expire_time = -1  # ns; -1 when not pending
        self._seq = -1

    def mod_ns(self, expire_ns: int) -> None:
        _timers.mod(self, max(0, expire_ns))

    def mod(self, expire: int) -> None:
        self.mod_ns(expire * self.scale)

    def delete(self) -> None:
        _timers.delete(self)

    def pending(self) -> bool:
        return self.expire_time >= 0

    def expired(self, now_ns: int) -> bool:
        return 0 <= self.expire_time <= now_ns


class _TimerLists:
    """All armed timers, in one heap per clock, with lazy deletion."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.heaps: dict[QEMUClockType, list[tuple[int, int, QEMUTimer]]] = {c: [] for c in QEMUClockType}
        self.seq = itertools.count()
        self.notify_cb: Callable[[], None] | None = None

    def notify(self) -> None:
        if self.notify_cb is not None:
            self.notify_cb()

    def mod(self, timer: QEMUTimer, expire_ns: int) -> None:
        with self.lock:
            heap = self.heaps[timer.clock]
            earliest = heap[0][0] if heap else None
            timer.expire_time = expire_ns
            timer._seq = next(self.seq)
            heapq.heappush(heap, (expire_ns, timer._seq, timer))
            rearm = earliest is None or expire_ns < earliest
        if rearm:
            self.notify()

    def delete(self, timer: QEMUTimer) -> None:
        with self.lock:
            timer.expire_time = -1
            timer._seq = -1

    def _prune(self, heap: list[tuple[int, int, QEMUTimer]]) -> None:
        while heap and heap[0][2]._seq != heap[0][1]:
            heapq.heappop(heap)

    def deadline_ns(self) -> int:
        """Nanoseconds until the next timer expires; -1 if none is armed."""
        best = -1
        with self.lock:
            for clock, heap in self.heaps.items():
                self._prune(heap)
                if not heap:
                    continue
                if clock == QEMUClockType.VIRTUAL and _virtual.stopped_at is not None:
                    continue
                delta = max(0, heap[0][0] - qemu_clock_get_ns(clock))
                if best < 0 or delta < best:
                    best = delta
        return best

    def run_expired(self) -> bool:
        """Run the callbacks of expired timers; True if any ran."""
        ran = False
        for clock in self.heaps:
            if clock == QEMUClockType.VIRTUAL and _virtual.stopped_at is not None:
                continue
            ran |= self.run_clock(clock, qemu_clock_get_ns(clock))
        return ran

    def run_clock(self, clock: QEMUClockType, now: int) -> bool:
        """Run the callbacks of the timers of ``clock`` due at ``now``."""
        heap = self.heaps[clock]
        ran = False
        while True:
            with self.lock:
                self._prune(heap)
                if not heap or heap[0][0] > now:
                    break
                _, _, timer = heapq.heappop(heap)
                timer.expire_time = -1
                timer._seq = -1
            timer.cb()
            ran = True
        return ran

    def next_expiry(self, clock: QEMUClockType) -> int:
        """When the earliest timer of ``clock`` expires; -1 if none is armed."""
        with self.lock:
            heap = self.heaps[clock]
            self._prune(heap)
            return heap[0][0] if heap else -1


_timers = _TimerLists()


def timerlist_deadline_ns() -> int:
    return _timers.deadline_ns()


def timerlist_entries(clock: QEMUClockType) -> int:
    """How many entries the clock's timer list holds, stale ones included."""
    with _timers.lock:
        return len(_timers.heaps[clock])


def timerlist_run_expired() -> bool:
    return _timers.run_expired()


def timerlist_set_notify(cb: Callable[[], None] | None) -> None:
    _timers.notify_cb = cb


def qemu_clock_advance_virtual_time(dest_ns: int) -> int:
    """Move the stopped virtual clock forward to ``dest_ns``, running each
    virtual timer at its own expiry time on the way (QEMU's
    qemu_clock_advance_virtual_time, which qtest's clock_step uses).  Only
    while the VM is stopped; returns the new time."""
    if _virtual.stopped_at is None:
        raise RuntimeError("the virtual clock can only be advanced while the VM is stopped")
    while True:
        expiry = _timers.next_expiry(QEMUClockType.VIRTUAL)
        if expiry < 0 or expiry > dest_ns:
            break
        _virtual.stopped_at = max(_virtual.stopped_at, expiry)
        _timers.run_clock(QEMUClockType.VIRTUAL, _virtual.stopped_at)
    _virtual.stopped_at = max(_virtual.stopped_at, dest_ns)
    return _virtual.stopped_at


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
