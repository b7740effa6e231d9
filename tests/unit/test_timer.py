"""QEMUTimer lists: firing order, re-arm and delete, and that re-arming never grows the list."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from pemu.hw.timer.hpet import HPET, HPET_CFG, HPET_CFG_ENABLE, HPET_TN_ENABLE
from pemu.util import timer
from pemu.util.timer import QEMU_CLOCK_REALTIME, QEMU_CLOCK_VIRTUAL, QEMUTimer, TimerList
from pemu.util.vm_context import current_vm
from tests.unit.fakes import EdgeCounter

HOUR_NS = 3600 * timer.NANOSECONDS_PER_SECOND


@pytest.fixture
def made() -> Iterator[list[QEMUTimer]]:
    """Timers a test creates on the process's lists; deleted afterwards."""
    timers: list[QEMUTimer] = []
    yield timers
    for t in timers:
        t.delete()


def check_heap(timers: TimerList) -> None:
    heap = timers.heap
    for i, t in enumerate(heap):
        assert t._index == i
        if i:
            parent = heap[(i - 1) // 2]
            assert parent._key < t._key


def test_random_mods_and_deletes_keep_one_ordered_entry_per_armed_timer(made: list[QEMUTimer]) -> None:
    rng = random.Random(8)
    base = timer.qemu_clock_get_ns(QEMU_CLOCK_REALTIME) + HOUR_NS
    made.extend(QEMUTimer(QEMU_CLOCK_REALTIME, lambda: None) for _ in range(20))
    timers = current_vm().timers.lists[QEMU_CLOCK_REALTIME]
    others = len(timers)
    for _ in range(5000):
        t = rng.choice(made)
        if rng.random() < 0.2:
            t.delete()
        else:
            t.mod_ns(base + rng.randrange(50))  # many equal deadlines: ties fire in arming order
        check_heap(timers)
        assert len(timers) == others + sum(t.pending() for t in made)


def test_expired_timers_fire_in_deadline_then_arming_order(made: list[QEMUTimer]) -> None:
    fired: list[str] = []
    now = timer.qemu_clock_get_ns(QEMU_CLOCK_REALTIME)
    for name, when in [("c", now - 10), ("a", now - 30), ("b", now - 10), ("late", now + HOUR_NS)]:
        t = QEMUTimer(QEMU_CLOCK_REALTIME, lambda name=name: fired.append(name))
        made.append(t)
        t.mod_ns(when)
    made[1].mod_ns(now - 5)         # "a" re-armed later: it moves, it is not duplicated
    made[0].delete()                # "c" cancelled
    assert timer.timerlist_run_expired()
    assert fired == ["b", "a"]
    assert made[3].pending() and not made[1].pending()


def test_callback_may_rearm_its_own_timer(made: list[QEMUTimer]) -> None:
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(1)
        if len(ticks) < 3:
            periodic.mod_ns(timer.qemu_clock_get_ns(QEMU_CLOCK_REALTIME) - 1)

    periodic = QEMUTimer(QEMU_CLOCK_REALTIME, tick)
    made.append(periodic)
    periodic.mod_ns(0)
    while timer.timerlist_run_expired():
        pass
    assert len(ticks) == 3 and not periodic.pending()


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_million_rearms_keep_one_entry_per_timer_and_memory_flat(made: list[QEMUTimer]) -> None:
    # Issue 8: an HPET comparator set far ahead and rewritten in a loop used
    # to add a heap entry per write (+45 MiB for 300 000 writes).
    made.extend(QEMUTimer(QEMU_CLOCK_REALTIME, lambda: None) for _ in range(4))
    entries = timer.timerlist_entries(QEMU_CLOCK_REALTIME)
    far = timer.qemu_clock_get_ns(QEMU_CLOCK_REALTIME) + HOUR_NS
    for t in made:
        t.mod_ns(far)
    before = resident_bytes()
    for i in range(1_000_000):
        made[i & 3].mod_ns(far + (i * 7919) % 100_000)   # later and earlier than the others
    grown = resident_bytes() - before
    assert timer.timerlist_entries(QEMU_CLOCK_REALTIME) == entries + 4
    assert grown < 4 << 20, f"resident memory grew by {grown >> 10} KiB"


def test_hpet_comparator_rewritten_in_a_loop_keeps_one_entry() -> None:
    # The scenario through the device: a comparator far ahead, rewritten in a loop.
    hpet = HPET([EdgeCounter() for _ in range(24)])   # the real virtual-clock timers
    entries = timer.timerlist_entries(QEMU_CLOCK_VIRTUAL)
    try:
        hpet.write(0x100, HPET_TN_ENABLE, 4)               # timer 0: one-shot, enabled
        hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
        for i in range(100_000):
            hpet.write(0x108, 0x7000_0000 + (i & 0xFFFF), 4)   # comparator, ~30 s ahead
        assert timer.timerlist_entries(QEMU_CLOCK_VIRTUAL) == entries + 1
    finally:
        hpet.write(HPET_CFG, 0, 4)
    assert timer.timerlist_entries(QEMU_CLOCK_VIRTUAL) == entries
