"""In-process microbenchmark of the memory API's single-access path.

Times ``AddressSpace.dispatch_read``/``dispatch_write`` on a device register
(an I/O region owned by a QOM device, as on the board) and on RAM, with no
CPU: the cost every MMIO/PIO exit pays in pemu's dispatch, before and after
a change to it.

    python3 bench/dispatch.py [--n 300000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pemu.hw.core.qdev import TYPE_DEVICE, qdev_new  # noqa: E402
from pemu.qom.object import TypeInfo, type_register  # noqa: E402
from pemu.system.memory import AddressSpace, MemoryRegion, MemoryRegionOps  # noqa: E402
from pemu.system.vm import VirtualMachine  # noqa: E402

TYPE_BENCH = "bench-dispatch-device"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000, help="accesses per timed run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    VirtualMachine().activate()  # the device and the regions belong to a VM
    type_register(TypeInfo(TYPE_BENCH, parent=TYPE_DEVICE))
    dev = qdev_new(TYPE_BENCH)
    regs = bytearray(16)

    def read(offset: int, size: int) -> int:
        return regs[offset]

    def write(offset: int, value: int, size: int) -> None:
        regs[offset] = value & 0xFF

    root = MemoryRegion.container("bench", 0x10000)
    root.add_subregion(0x80, MemoryRegion.io("bench-port", 16, MemoryRegionOps(read, write, 1, 4), owner=dev))
    root.add_subregion(0x1000, MemoryRegion.ram("bench-ram", 0x1000))
    space = AddressSpace(root, "bench")
    n = args.n

    def io_write() -> None:
        w = space.dispatch_write
        for _ in range(n):
            w(0x80, 0x55, 1)

    def io_read() -> None:
        r = space.dispatch_read
        for _ in range(n):
            r(0x80, 1)

    def ram_write() -> None:
        w = space.dispatch_write
        for _ in range(n):
            w(0x1000, 0x55, 4)

    # CPU time of this thread, best of the runs: the machine is shared, and
    # what is compared is the work done per access, not the wait for a core.
    print(f"{'path':<12} {'CPU ns/access (min of ' + str(args.runs) + ')':>30} {'median':>8}")
    for name, fn in (("io write", io_write), ("io read", io_read), ("ram write", ram_write)):
        times = []
        for _ in range(args.runs):
            t0 = time.thread_time()
            fn()
            times.append((time.thread_time() - t0) / n * 1e9)
        print(f"{name:<12} {min(times):>30.1f} {statistics.median(times):>8.1f}")
    space.destroy()


if __name__ == "__main__":
    main()
