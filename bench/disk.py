#!/usr/bin/env python3
"""Disk throughput inside the guest, through the q35's AHCI controller: pemu against QEMU.

Boots the default test guest (Debian's stock kernel, busybox initramfs) on each
emulator with the same command line plus ``-drive file=IMG,format=raw,cache=C``
(a fresh sparse image per boot), loads ``ahci`` and ``sd_mod``, and times, with
the host's clock from sending the command to the shell's next prompt:

- sequential write: ``dd if=/dev/zero of=/dev/sda bs=1M count=N conv=fsync``;
- sequential read: ``dd if=/dev/sda of=/dev/null bs=1M count=N`` after dropping the page cache;
- 4 KiB reads: ``dd if=/dev/sda of=/dev/null bs=4k count=K iflag=direct`` (O_DIRECT, one request
  at a time; busybox has no random-read tool, so the offsets are sequential).

Runs are interleaved (pemu, QEMU, pemu, ...); the table has medians (min-max) and
pemu/QEMU ratios.  QEMU's AHCI offers NCQ, pemu's does not; at one request at a
time that makes no difference to the pattern.

    python3 bench/disk.py                 # 3 runs each, 64 MiB, cache=writeback
    python3 bench/disk.py -n 5 --mib 128 --cache none
    python3 bench/disk.py --pemu-only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot import ensure_qemu, machine_description, utc_now  # noqa: E402
from tests.fixtures.build_guest import READY_MARKER, ensure_guest  # noqa: E402
from tests.integration.harness import GuestProcess  # noqa: E402

MiB = 1 << 20
PATTERNS = ("write", "read", "4k-read")


def run_once(emulator: str, qemu: str | None, kernel: Path, initrd: Path, cache: str, mib: int,
             reads_4k: int, timeout: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pemu-disk-bench-") as tmp:
        image = Path(tmp) / "disk.raw"
        with open(image, "wb") as f:
            f.truncate((mib + 16) * MiB)
        args = ["-machine", "q35", "-m", "512", "-nographic", "-kernel", str(kernel), "-initrd", str(initrd),
                "-append", "console=ttyS0", "-drive", f"file={image},format=raw,cache={cache}"]
        vm = (GuestProcess(args) if emulator == "pemu" else
              GuestProcess(argv=[qemu or "qemu-system-x86_64", "-accel", "tcg", *args]))
        try:
            vm.expect(READY_MARKER, timeout)
            vm.run("modprobe ahci; modprobe sd_mod; i=0; while [ ! -b /dev/sda ] && [ $i -lt 100 ]; do "
                   "sleep 0.1; i=$((i+1)); done", timeout)
            commands = {
                "write": f"dd if=/dev/zero of=/dev/sda bs=1M count={mib} conv=fsync 2>/dev/null",
                "read": f"dd if=/dev/sda of=/dev/null bs=1M count={mib} 2>/dev/null",
                "4k-read": f"dd if=/dev/sda of=/dev/null bs=4k count={reads_4k} iflag=direct 2>/dev/null",
            }
            result: dict[str, float] = {}
            for pattern in PATTERNS:
                vm.run("sync; echo 3 > /proc/sys/vm/drop_caches", timeout)
                start = time.monotonic()
                vm.run(commands[pattern], timeout)
                elapsed = time.monotonic() - start
                result[pattern] = reads_4k / elapsed if pattern == "4k-read" else mib / elapsed
            return result
        finally:
            vm.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--runs", type=int, default=3)
    p.add_argument("--mib", type=int, default=64, help="MiB written and read sequentially (default 64)")
    p.add_argument("--reads-4k", type=int, default=2048, help="4 KiB direct reads (default 2048)")
    p.add_argument("--cache", default="writeback")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--pemu-only", action="store_true")
    args = p.parse_args(argv)
    guest = ensure_guest()
    qemu = None if args.pemu_only else ensure_qemu()
    emulators = ["pemu"] + ([] if args.pemu_only else ["qemu"])
    samples: dict[str, dict[str, list[float]]] = {e: {pat: [] for pat in PATTERNS} for e in emulators}
    for n in range(args.runs):
        for emulator in emulators:
            print(f"run {n + 1}/{args.runs}: {emulator}", file=sys.stderr, flush=True)
            for pattern, value in run_once(emulator, qemu, guest.kernel, guest.initrd, args.cache, args.mib,
                                           args.reads_4k, args.timeout).items():
                samples[emulator][pattern].append(value)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    print(f"### In-guest disk throughput, {utc_now()}\n\n{machine_description()}\n")
    print(f"Guest: {guest.release}, `-drive format=raw,cache={args.cache}` on the q35's AHCI, {args.runs} runs, "
          f"{args.mib} MiB sequential, {args.reads_4k} x 4 KiB O_DIRECT reads. MiB/s, or reads/s for 4 KiB.\n")
    header = "| pattern | pemu |" + (" QEMU | pemu/QEMU |" if qemu else "")
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for pattern in PATTERNS:
        row = f"| {pattern} | {cell(samples['pemu'][pattern])} |"
        if qemu:
            ratio = statistics.median(samples["pemu"][pattern]) / statistics.median(samples["qemu"][pattern])
            row += f" {cell(samples['qemu'][pattern])} | {ratio:.2f} |"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
