"""Per-event cost of the software CPU's exits into Python: RDTSC, IN, OUT, CPUID.

A small guest (32-bit flat mode, on the same tiny machine the TCG unit tests
use: RAM and a port-I/O stub, no board) runs ``count`` iterations of a loop
around one instruction; the same loop with a ``nop`` in its place is the
baseline.  The difference over ``count`` is the cost of one event, in
microseconds of the process's CPU time (so that other load on a shared
machine counts less than in wall time); the median of ``runs`` runs, interleaved.

    python3 bench/events.py [--count 200000] [--runs 5] [--events rdtsc,in,out,cpuid]

Needs GNU binutils (``as``, ``ld``, ``objcopy``) to assemble the guest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))

from tcg_harness import Machine  # noqa: E402

CODE = 0x10000
EVENTS = {
    "nop": "nop",
    "rdtsc": "rdtsc",
    "in": "in $0x80, %al",
    "out": "out %al, $0x80",
    "cpuid": "xor %eax, %eax\n    cpuid",
}


def loop_source(insn: str, count: int) -> str:
    return f"""
    mov ${count}, %esi
1:  {insn}
    dec %esi
    jnz 1b
    out %al, $0xf4
    hlt
    """


def run_once(machine: Machine, insn: str, count: int) -> float:
    machine.ports.done.clear()
    machine.ports.writes.clear()
    machine.asm(CODE, loop_source(insn, count))
    machine.start_flat32(CODE)
    start = time.process_time()
    machine.run_until_done(timeout=600)
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", default="rdtsc,in,out,cpuid")
    args = parser.parse_args()
    events = args.events.split(",")
    for name in events:
        if name not in EVENTS:
            parser.error(f"unknown event {name!r} (choose from {', '.join(EVENTS)})")
    machine = Machine(ram_size=1 << 20)
    try:
        samples: dict[str, list[float]] = {name: [] for name in ["nop", *events]}
        for _ in range(args.runs):
            for name in samples:
                samples[name].append(run_once(machine, EVENTS[name], args.count))
    finally:
        machine.close()
    base = statistics.median(samples["nop"])
    print(f"CPU time of one event on the software CPU ({args.count:,} per run, median of {args.runs} runs)\n")
    print("| event | CPU µs per event |")
    print("|---|---:|")
    for name in events:
        cost = (statistics.median(samples[name]) - base) / args.count * 1e6
        print(f"| {name} | {cost:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
