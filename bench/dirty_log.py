#!/usr/bin/env python3
"""What the dirty log costs the guest's stores (pemu.system.dirty_log), in process.

A flat 32-bit guest on the software CPU stores to a buffer in a loop and
counts its passes in RAM.  Each mode runs the guest for a fixed time:

- ``off``: the log is off (the normal case);
- ``on``: the log is on and never synced (after its first pass every page is
  dirty and its stores run inline again);
- ``on+sync``: the log is on and synced every ``--interval`` ms from another
  thread, as a live migration does (each sync takes the vCPU out of its
  engine and re-arms the synced pages, whose next store takes the slow path).

Workloads: ``sweep`` stores one dword per page of 16 MiB (the worst case: one
slow-path store per page and pass after each sync); ``dense`` fills 1 MiB with
``rep stosl``.  Modes are interleaved, ``--runs`` times; the report gives the
median passes per second, the ratio to ``off``, and the median sync time.

    python3 bench/dirty_log.py [--seconds 1] [--runs 3] [--interval 20]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "unit"))

import pemu  # noqa: E402,F401  (chooses the engine before unicorn is imported)
from pemu.system import cpus  # noqa: E402
from pemu.system.dirty_log import (  # noqa: E402
    memory_global_dirty_log_start,
    memory_global_dirty_log_stop,
    memory_global_dirty_log_sync,
)
from pemu.system.memory import AddressSpace  # noqa: E402
from pemu.system.vm import VirtualMachine  # noqa: E402
from pemu.util.timer import qemu_clock_enable_virtual  # noqa: E402

CODE, COUNTER, BUF = 0x10000, 0x1000, 0x400000
WORKLOADS = {
    "sweep": f"""
    .code32
    1:  mov ${BUF:#x}, %edi
        mov $4096, %ecx
    2:  movl %eax, (%edi)
        add $0x1000, %edi
        loop 2b
        incl {COUNTER:#x}
        jmp 1b""",
    "dense": f"""
    .code32
        cld
    1:  mov ${BUF:#x}, %edi
        mov $0x40000, %ecx
        rep stosl
        incl {COUNTER:#x}
        jmp 1b""",
}
MODES = ("off", "on", "on+sync")


def run_mode(memory: AddressSpace, vm: VirtualMachine, mode: str, seconds: float, interval: float,
             sync_times: list[float]) -> float:
    """Passes per second of the guest in ``mode`` (``memory``: its RAM's address space)."""
    if mode != "off":
        assert memory_global_dirty_log_start(vm), "this engine cannot log (build pemu's engine)"
    before = struct.unpack("<I", memory.read(COUNTER, 4))[0]
    stop = threading.Event()

    def syncer() -> None:
        while not stop.wait(interval):
            t0 = time.perf_counter()
            memory_global_dirty_log_sync(vm)
            sync_times.append(time.perf_counter() - t0)

    thread = threading.Thread(target=syncer) if mode == "on+sync" else None
    qemu_clock_enable_virtual(True)
    cpus.resume_all_vcpus()
    start = time.perf_counter()
    if thread is not None:
        thread.start()
    time.sleep(seconds)
    stop.set()
    if thread is not None:
        thread.join()
    cpus.pause_all_vcpus()
    elapsed = time.perf_counter() - start
    qemu_clock_enable_virtual(False)
    after = struct.unpack("<I", memory.read(COUNTER, 4))[0]
    memory_global_dirty_log_stop(vm)
    return (after - before) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="guest run time per mode and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=20.0, help="ms between syncs in on+sync")
    args = parser.parse_args(argv)

    from tcg_harness import Machine

    from pemu.accel.tcg.engine import engine_info

    print(f"engine: {engine_info().describe()}")
    print("| workload | mode | passes/s (median) | ratio to off | median sync |")
    print("|---|---|---:|---:|---:|")
    for name, source in WORKLOADS.items():
        vm = VirtualMachine()
        previous = vm.activate()
        m = Machine(ram_size=32 << 20)
        try:
            m.asm(CODE, source)
            m.start_flat32(CODE)
            rates: dict[str, list[float]] = {mode: [] for mode in MODES}
            sync_times: list[float] = []
            for _ in range(args.runs):
                for mode in MODES:
                    rates[mode].append(run_mode(m.memory, vm, mode, args.seconds, args.interval / 1000, sync_times))
            off = statistics.median(rates["off"])
            for mode in MODES:
                rate = statistics.median(rates[mode])
                sync = f"{statistics.median(sync_times) * 1e3:.2f} ms" if mode == "on+sync" and sync_times else ""
                print(f"| {name} | {mode} | {rate:.1f} | {rate / off:.2f} | {sync} |", flush=True)
        finally:
            m.close()
            vm.destroy()
            if previous is not None:
                previous.activate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
