"""Stand-ins that device-model tests inject instead of real time and wires."""

from __future__ import annotations

from collections.abc import Callable


class ManualTimer:
    """A timer that only records when it should fire; the test fires it."""

    def __init__(self, cb: Callable[[], None]) -> None:
        self.cb = cb
        self.expire = -1

    def mod_ns(self, expire_ns: int) -> None:
        self.expire = expire_ns

    def delete(self) -> None:
        self.expire = -1

    @property
    def expire_time(self) -> int:
        """QEMUTimer's name for the deadline (what a TIMER state field saves)."""
        return self.expire


class FakeClock:
    """Virtual time that moves only when the test says, running due timers in
    order; usable as a device's ``clock`` and (``.timer``) its timer factory."""

    def __init__(self, start_ns: int = 1_000_000_000, max_fires: int | None = None) -> None:
        self.ns = start_ns
        self.timers: list[ManualTimer] = []
        self.fired = 0
        self.max_fires = max_fires

    def __call__(self) -> int:
        return self.ns

    def timer(self, cb: Callable[[], None]) -> ManualTimer:
        t = ManualTimer(cb)
        self.timers.append(t)
        return t

    def advance(self, delta_ns: int) -> None:
        end = self.ns + delta_ns
        fires = 0
        while self.max_fires is None or fires < self.max_fires:
            due = [t for t in self.timers if 0 <= t.expire <= end]
            if not due:
                break
            t = min(due, key=lambda t: t.expire)
            self.ns = max(self.ns, t.expire)
            t.expire = -1
            self.fired += 1
            fires += 1
            t.cb()
        self.ns = end


class EdgeCounter:
    """An interrupt line that remembers its level and counts rising edges."""

    def __init__(self) -> None:
        self.level = 0
        self.rising = 0

    def set(self, level: int) -> None:
        if level and not self.level:
            self.rising += 1
        self.level = level
