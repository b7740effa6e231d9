#!/usr/bin/env python3
"""Start-up benchmark: process start to a ready monitor, pemu against QEMU.

Each emulator is started paused with the human monitor on stdio,
``-machine q35 -S -display none -monitor stdio``, with ``quit`` already
waiting on its standard input: the time measured is from starting the
process until it has exited, i.e. built the machine, brought up the monitor,
read the command and quit.  Runs are interleaved (pemu, QEMU, pemu, ...)
after one unmeasured warm-up run of each; the report gives medians, ranges
and the pemu/QEMU ratio as a Markdown table, with the Unicorn engine pemu
would run on.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from boot import BenchError, _first_line, _summary, ensure_qemu, machine_description  # noqa: E402

MACHINE_ARGS = ["-machine", "q35", "-S", "-display", "none", "-monitor", "stdio"]
PYCACHE = Path.home() / ".cache" / "pemu" / "bench-pycache"


@dataclass(frozen=True)
class Sample:
    seconds: float          # process start -> exit
    cpu_seconds: float      # user + system time of the child
    max_rss_kib: int


@dataclass
class Emulator:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    samples: list[Sample] = field(default_factory=list)


def measure(emulator: Emulator, timeout: float) -> Sample:
    """One start: ``quit`` on stdin, wait for the exit, collect its rusage."""
    start = time.monotonic()
    # From the repository root: ``python3 -m`` puts the working directory first on sys.path.
    proc = subprocess.Popen(emulator.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=emulator.env, cwd=REPO_ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"quit\n")
    proc.stdin.close()
    deadline = start + timeout
    while True:  # wait4 for the child's resource usage, with a deadline
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise BenchError(f"{emulator.name} did not quit within {timeout:g} s:\n$ {shlex.join(emulator.argv)}")
        time.sleep(0.0005)
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = proc.stdout.read()
    proc.stdout.close()
    if proc.returncode != 0 or b"(qemu)" not in output:
        raise BenchError(f"{emulator.name} exited with status {proc.returncode}:\n"
                         f"$ {shlex.join(emulator.argv)}\n{output.decode(errors='replace')[-2000:]}")
    return Sample(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def pemu_environment() -> dict[str, str]:
    """pemu from this tree, with its bytecode cached as an installed pemu's is."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def engine_description(python: list[str], env: dict[str, str]) -> str:
    """The engine this pemu would load (PEMU_ENGINE applies), as ``info accel`` names it."""
    code = "from pemu.accel.tcg.engine import engine_info; print(engine_info().describe())"
    try:
        out = subprocess.run([*python, "-c", code], capture_output=True, text=True, timeout=30, env=env,
                             cwd=REPO_ROOT, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def report(emulators: list[Emulator], *, runs: int, engine: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"#### Start to a ready monitor and `quit`, {now}",
        "",
        f"- Machine: {machine_description()}",
        f"- Command line: `{' '.join(MACHINE_ARGS)}`, `quit` on stdin",
        f"- pemu's engine (loaded at a vCPU's first run, so not here): {engine}",
        f"- {runs} interleaved runs each after one warm-up; median (min–max)",
        "",
        "| Emulator | Start to exit (ms) | CPU time (ms) | Max RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for emu in emulators:
        millis = [s.seconds * 1000 for s in emu.samples]
        cpu = [s.cpu_seconds * 1000 for s in emu.samples]
        rss = [s.max_rss_kib / 1024 for s in emu.samples]
        lines.append(f"| {emu.name} | {_summary(millis, '.0f')} | {_summary(cpu, '.0f')} | {_summary(rss, '.0f')} |")
    if len(emulators) == 2:
        pemu, qemu = emulators
        ratios = [statistics.median(getattr(s, field) for s in pemu.samples)
                  / statistics.median(getattr(s, field) for s in qemu.samples)
                  for field in ("seconds", "cpu_seconds", "max_rss_kib")]
        lines.append("| **pemu / QEMU** | " + " | ".join(f"**{r:.2f}×**" for r in ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=21, help="runs per emulator (default 21)")
    parser.add_argument("--pemu-only", action="store_true", help="do not run QEMU")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one start may take (default 60)")
    parser.add_argument("--pemu", default=f"{shlex.quote(sys.executable)} -m pemu",
                        help="command that starts pemu (default: this Python's -m pemu)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        pemu_cmd = shlex.split(args.pemu)
        env = pemu_environment()
        emulators = [Emulator("pemu", pemu_cmd + MACHINE_ARGS, env)]
        engine = engine_description(pemu_cmd[:-2] if pemu_cmd[-2:] == ["-m", "pemu"] else [sys.executable], env)
        if not args.pemu_only:
            qemu = ensure_qemu()
            version = _first_line([qemu, "--version"]).removeprefix("QEMU emulator version ")
            emulators.append(Emulator(f"QEMU {version}", [qemu, *MACHINE_ARGS]))
        for emu in emulators:
            measure(emu, args.timeout)  # warm-up: caches, bytecode
        for run in range(1, args.runs + 1):
            for emu in emulators:
                sample = measure(emu, args.timeout)
                emu.samples.append(sample)
                print(f"bench: run {run}/{args.runs} {emu.name}: {sample.seconds * 1000:.0f} ms",
                      file=sys.stderr, flush=True)
    except (BenchError, subprocess.CalledProcessError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(report(emulators, runs=args.runs, engine=engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
