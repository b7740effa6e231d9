#!/usr/bin/env python3
"""Cost of one external interrupt on the software CPU: raise, delivery, handler, iretq.

A small 64-bit guest (the long-mode machine of tests/unit/test_tcg_longmode.py:
RAM, a port-I/O stub, an IDT whose vector 0x20 handler counts in memory and
returns with ``iretq``) runs ``count`` iterations of a loop in which an OUT to
port 0x80 raises the CPU's interrupt line from inside the engine's I/O hook,
as a device model does (the 8250's THRE interrupt, a LAPIC timer, an MSI),
and then waits for its handler to have run:

- ``if1``: the guest runs with IF=1, so the interrupt is taken at the next
  block boundary;
- ``if0``: the OUT is made with IF=0 and the guest opens its interrupt window
  two instructions later (``sti; nop``), as Linux does leaving a spinlock
  taken with interrupts off.  pemu's engine stops there by itself (patch 0008,
  irq-window); the stock engine is stopped at once and then polls every
  100 µs for IF=1.

The same loops with an OUT to another port in place of the interrupt (and the
handler's increment made in line) are the baselines; the difference over ``count``
is the cost of one interrupt, in microseconds of the process's CPU time and of
wall time (the stock engine's poll waits rather than works); medians of
``runs`` interleaved runs.

    python3 bench/interrupts.py [--count 20000] [--runs 5]

``PEMU_ENGINE=stock`` measures the stock engine.  Needs GNU binutils.
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
from test_tcg_longmode import IDT, build, gate  # noqa: E402

from pemu.system import cpus  # noqa: E402
from pemu.system.vm import VirtualMachine  # noqa: E402

RAISE_PORT = 0x80
HANDLER, COUNTER = 0x20000, 0x30000

# Vector 0x20: count the interrupt in memory and return.
HANDLER_SOURCE = f"""
    .code64
    incl {COUNTER}
    iretq
"""

# Each iteration raises one interrupt and waits until its handler has run,
# so that every iteration costs one delivery (a pending interrupt raised
# again before it is taken would merge with it).  The baselines make the
# same exits and the handler's increment in line.
LOOPS = {
    "if1": f"""
    sti
1:  inc %edi
    out %al, $0x80
2:  cmp %edi, {COUNTER}
    jne 2b
""",
    "if1-base": f"""
    sti
1:  inc %edi
    out %al, $0x81
    incl {COUNTER}
2:  cmp %edi, {COUNTER}
    jne 2b
""",
    "if0": f"""
1:  inc %edi
    cli
    out %al, $0x80
    sti
    nop
2:  cmp %edi, {COUNTER}
    jne 2b
""",
    "if0-base": f"""
1:  inc %edi
    cli
    out %al, $0x81
    sti
    nop
    incl {COUNTER}
2:  cmp %edi, {COUNTER}
    jne 2b
""",
}


def loop_source(body: str, count: int) -> str:
    return f"""
    mov ${count}, %esi
    xor %edi, %edi
{body}
    dec %esi
    jnz 1b
    cli
    out %al, $0xf4
    hlt
"""


def run_once(machine: Machine, name: str, count: int) -> tuple[float, float]:
    machine.ports.done.clear()
    machine.ports.writes.clear()
    build(machine, loop_source(LOOPS[name], count))
    machine.asm(HANDLER, HANDLER_SOURCE)
    machine.load(IDT + 0x20 * 16, gate(HANDLER))
    machine.load(COUNTER, bytes(4))
    cpu_start, wall_start = time.process_time(), time.monotonic()
    machine.run_until_done(timeout=600)
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start
    taken = int.from_bytes(machine.memory.read(COUNTER, 4), "little")
    if taken != count:
        raise SystemExit(f"bench: {name}: the handler counted {taken}, not {count}")
    return cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    VirtualMachine().activate()  # the CPU and its clocks belong to a VM
    machine = Machine()
    machine.ports.handlers[RAISE_PORT] = lambda _: cpus.cpu_interrupt(machine.cpu, cpus.CPU_INTERRUPT_HARD)
    try:
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in LOOPS}
        for _ in range(args.runs):
            for name in LOOPS:
                samples[name].append(run_once(machine, name, args.count))
    finally:
        machine.close()
    from pemu.accel.tcg.engine import engine_info

    print(f"One external interrupt on the software CPU ({engine_info().describe()}; "
          f"{args.count:,} per run, median of {args.runs} runs)\n")
    print("| case | CPU µs per interrupt | wall µs per interrupt |")
    print("|---|---:|---:|")
    for name in ("if1", "if0"):
        cpu = statistics.median(s[0] for s in samples[name]) - statistics.median(s[0] for s in samples[f"{name}-base"])
        wall = statistics.median(s[1] for s in samples[name]) - statistics.median(s[1] for s in samples[f"{name}-base"])
        print(f"| {name} | {cpu / args.count * 1e6:.1f} | {wall / args.count * 1e6:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
