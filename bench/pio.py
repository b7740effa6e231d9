"""Port-I/O exit microbenchmark: pemu vs Debian's qemu-system-x86_64, KVM and TCG.

The test guest (tests/guests, multiboot) does ``count`` byte writes to port
0x80 and exits through isa-debug-exit.  Each emulator runs it with
``count=N`` and ``count=0`` (start-up and shutdown only); the difference
gives exits per second.  Runs are interleaved (pemu, QEMU, pemu, ...) so
both see the same machine load; the table shows medians.

    python3 bench/pio.py [--count 20000] [--runs 3] [--accel kvm,tcg]

QEMU comes from the qemu-system-x86 package (``apt-get install
qemu-system-x86`` if it is missing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.guests.build import build_test_guest  # noqa: E402

QEMU = "qemu-system-x86_64"


def pemu_argv(kernel: Path, accel: str, append: str) -> list[str]:
    return [sys.executable, "-m", "pemu", "-accel", accel, "-m", "64", "-nodefaults", "-display", "none",
            "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit", "-kernel", str(kernel),
            "-append", append]


def qemu_argv(kernel: Path, accel: str, append: str) -> list[str]:
    return [QEMU, "-machine", "q35", "-accel", accel, "-m", "64", "-nodefaults", "-display", "none",
            "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0x501,iosize=2",
            "-kernel", str(kernel), "-append", append]


def timed(argv: list[str], timeout: float) -> float:
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - start
    if proc.returncode != 1:
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def exits_per_second(make_argv, kernel: Path, accel: str, count: int, timeout: float) -> float:
    full = timed(make_argv(kernel, accel, f"test=pio count={count}"), timeout)
    empty = timed(make_argv(kernel, accel, "test=pio count=0"), timeout)
    return count / max(full - empty, 1e-3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="out instructions per run under kvm")
    parser.add_argument("--tcg-count", type=int, default=1000000,
                        help="out instructions per run under tcg (QEMU's TCG needs no exit for port 0x80)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accel", default="kvm,tcg")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    have_qemu = shutil.which(QEMU) is not None
    if not have_qemu:
        print(f"{QEMU} not found: only pemu is measured (apt-get install qemu-system-x86)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        kernel = build_test_guest(Path(tmp))
        rows = []
        for accel in args.accel.split(","):
            if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
                print("skipping kvm: /dev/kvm is not available", file=sys.stderr)
                continue
            count = args.tcg_count if accel == "tcg" else args.count
            pemu_rates: list[float] = []
            qemu_rates: list[float] = []
            for _ in range(args.runs):
                pemu_rates.append(exits_per_second(pemu_argv, kernel, accel, count, args.timeout))
                if have_qemu:
                    qemu_rates.append(exits_per_second(qemu_argv, kernel, accel, count, args.timeout))
            rows.append((accel, count, statistics.median(pemu_rates),
                         statistics.median(qemu_rates) if qemu_rates else None))
    print(f"Port-I/O exits per second (`out` to port 0x80, median of {args.runs} interleaved runs)\n")
    print("| accel | outs per run | pemu exits/s | QEMU exits/s | pemu/QEMU |")
    print("|---|---:|---:|---:|---:|")
    for accel, count, pemu, qemu in rows:
        qemu_text = f"{qemu:,.0f}" if qemu else "n/a"
        ratio = f"{pemu / qemu:.2f}" if qemu else "n/a"
        print(f"| {accel} | {count:,} | {pemu:,.0f} | {qemu_text} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
