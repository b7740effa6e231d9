"""Timer re-arm microbenchmark (pemu.util.timer): the cost of ``mod_ns`` and
of running expired timers, the main loop's hot path for the PIT, HPET,
serial port and RTC.

Three cases, each the median of ``--runs`` runs, in nanoseconds per operation:

- **re-arm far**: ``timers`` armed timers (the board's usual handful), one of
  them re-armed over and over further in the future (an HPET comparator
  rewritten in a loop);
- **re-arm near**: the same, alternating between the earliest and the latest
  deadline (the timer moves through the whole list each time);
- **fire**: arm a timer in the past and run the expired ones (a periodic
  device re-arming from its callback).

After the runs it prints the number of entries on the clock's list, which
should be the number of armed timers.

    python3 bench/timers.py [--ops 200000] [--timers 8] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pemu.system.vm import VirtualMachine  # noqa: E402
from pemu.util import timer  # noqa: E402

CLOCK = timer.QEMU_CLOCK_REALTIME
HOUR_NS = 3600 * timer.NANOSECONDS_PER_SECOND


def per_op_ns(run: Callable[[int], None], ops: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        run(ops)
        samples.append((time.perf_counter_ns() - start) / ops)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--timers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    VirtualMachine().activate()  # the timers belong to a VM
    now = timer.qemu_clock_get_ns(CLOCK)
    others = [timer.QEMUTimer(CLOCK, lambda: None) for _ in range(args.timers - 1)]
    for i, other in enumerate(others):
        other.mod_ns(now + HOUR_NS + i * 1000)
    subject = timer.QEMUTimer(CLOCK, lambda: None)

    def rearm_far(n: int) -> None:
        base = now + 2 * HOUR_NS
        mod = subject.mod_ns
        for i in range(n):
            mod(base + i)

    def rearm_near(n: int) -> None:
        mod = subject.mod_ns
        for i in range(n):
            mod(now + (i & 1) * 3 * HOUR_NS + HOUR_NS // 2)

    def fire(n: int) -> None:
        past = timer.qemu_clock_get_ns(CLOCK) - 1
        mod = subject.mod_ns
        run = timer.timerlist_run_expired
        for _ in range(n):
            mod(past)
            run()

    results = {
        "re-arm far": per_op_ns(rearm_far, args.ops, args.runs),
        "re-arm near": per_op_ns(rearm_near, args.ops, args.runs),
        "fire": per_op_ns(fire, max(1, args.ops // 4), args.runs),
    }
    print(f"timers on the clock: {args.timers}; {args.ops} operations per run, median of {args.runs} runs")
    print("| case | ns per operation |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.0f} |")
    subject.mod_ns(now + HOUR_NS)
    print(f"list entries after the runs: {timer.timerlist_entries(CLOCK)} (armed timers: {args.timers})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
