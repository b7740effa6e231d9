#!/usr/bin/env python3
"""Block layer throughput: pemu's BlockBackend against QEMU's block layer (`qemu-img bench`).

Same image format, cache mode and request pattern on both sides, no guest:
sequential 1 MiB reads and writes over the image, and 4 KiB random reads.
pemu runs the requests through ``BlockBackend.pread/pwrite`` (the path the
disk controller's worker thread takes); QEMU through ``qemu-img bench``
(its coroutine block layer, queue depth 1).  Prints a Markdown table.

    python3 bench/block.py                 # raw and qcow2, 256 MiB, cache=writeback
    python3 bench/block.py --size 64 --cache none
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pemu.block.block import bdrv_open  # noqa: E402
from pemu.block.block_backend import BlockBackend  # noqa: E402
from pemu.block.block_int import CACHE_MODES  # noqa: E402

MiB = 1 << 20


def pemu_run(path: str, fmt: str, cache: str, size: int, pattern: str, count: int) -> float:
    mode = CACHE_MODES[cache]
    blk = BlockBackend(bdrv_open(path, fmt, False, mode), "bench", writeback=mode.writeback,
                       schedule_completion=lambda cb: cb())
    rng = random.Random(1)
    buf = bytearray(MiB if pattern != "randread" else 4096)
    data = os.urandom(MiB)
    start = time.perf_counter()
    try:
        for i in range(count):
            if pattern == "write":
                assert blk.pwrite((i * MiB) % size, data) == 0
            elif pattern == "read":
                assert blk.pread((i * MiB) % size, buf) == 0
            else:
                assert blk.pread(rng.randrange(size // 4096) * 4096, buf) == 0
        if pattern == "write":
            assert blk.flush() == 0
    finally:
        elapsed = time.perf_counter() - start
        blk.close()
    return elapsed


def qemu_run(path: str, fmt: str, cache: str, size: int, pattern: str, count: int) -> float:
    args = ["qemu-img", "bench", "-f", fmt, "-t", cache, "-c", str(count), "-d", "1"]
    if pattern == "randread":
        # qemu-img bench has no random pattern: 4 KiB requests striding across the image instead
        args += ["-s", "4096", "-S", str(size // count // 4096 * 4096 or 4096)]
    else:
        args += ["-s", str(MiB)] + (["-w"] if pattern == "write" else [])
    out = subprocess.run([*args, path], check=True, capture_output=True, text=True).stdout
    # "Run completed in 0.123 seconds." (the requests only, not the process start-up)
    return float(out.split("Run completed in ")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image size in MiB")
    parser.add_argument("--cache", default="writeback", choices=sorted(CACHE_MODES))
    parser.add_argument("--ios", type=int, default=4000, help="random 4 KiB reads")
    args = parser.parse_args()
    size = args.size * MiB
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        for fmt in ("raw", "qcow2"):
            path = os.path.join(tmp, f"bench.{fmt}")
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, str(size)], check=True)
            for pattern, count, unit in (("write", args.size, "MiB/s"), ("read", args.size, "MiB/s"),
                                         ("randread", args.ios, "IOPS")):
                pemu_s = pemu_run(path, fmt, args.cache, size, pattern, count)
                qemu_s = qemu_run(path, fmt, args.cache, size, pattern, count)
                pemu_rate, qemu_rate = count / pemu_s, count / qemu_s
                rows.append((fmt, pattern, unit, pemu_rate, qemu_rate))
                print(f"{fmt} {pattern}: pemu {pemu_rate:.0f} {unit}, qemu-img {qemu_rate:.0f} {unit}",
                      file=sys.stderr)
    print(f"cache={args.cache}, {args.size} MiB image, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| format | pattern | unit | pemu | qemu-img bench | pemu/QEMU |")
    print("|---|---|---|---|---|---|")
    for fmt, pattern, unit, pemu_rate, qemu_rate in rows:
        print(f"| {fmt} | {pattern} | {unit} | {pemu_rate:.0f} | {qemu_rate:.0f} | {pemu_rate / qemu_rate:.2f} |")


if __name__ == "__main__":
    main()
