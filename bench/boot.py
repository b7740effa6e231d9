#!/usr/bin/env python3
"""Boot benchmark: pemu against QEMU's TCG on the same guest.

Measures, for each emulator, the wall time from starting the process to the
guest's ``PEMU-GUEST-READY`` line on the serial console, and the process's
maximum resident set size (from ``wait4``).  Runs are interleaved (pemu,
QEMU, pemu, QEMU, ...) so that a change in the machine's load hits both
alike; the report gives medians, ranges and the pemu/QEMU ratio as a
Markdown table.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import selectors
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.build_guest import (  # noqa: E402
    DEFAULT_APPEND,
    READY_MARKER,
    ensure_guest,
)

QEMU_BINARY = "qemu-system-x86_64"
SEABIOS = "/usr/share/seabios/bios-256k.bin"
QEMU_PACKAGE = "qemu-system-x86"
_TAIL_BYTES = 4000


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Sample:
    seconds: float          # process start -> marker on the console
    max_rss_kib: int        # ru_maxrss of the child (KiB on Linux)
    cpu_seconds: float = 0.0  # user + system time of the child, to its kill after the marker


@dataclass
class Emulator:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    samples: list[Sample] = field(default_factory=list)


def guest_args(kernel: Path, initrd: Path, append: str, smp: int = 1) -> list[str]:
    return ["-machine", "q35", "-m", "512", "-smp", str(smp), "-nographic",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]


def measure(emulator: Emulator, timeout: float) -> Sample:
    """One boot: start, wait for the marker, kill, collect its rusage."""
    marker = READY_MARKER.encode()
    seen = bytearray()
    found_at: float | None = None
    start = time.monotonic()
    proc = subprocess.Popen(emulator.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=emulator.env,
                            start_new_session=True)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while found_at is None:
                remaining = start + timeout - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    break
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                # Keep a window large enough to catch a marker split across reads.
                seen += chunk
                if marker in seen:
                    found_at = time.monotonic()
                del seen[:-_TAIL_BYTES]
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # wait4, not Popen.wait: the child's resource usage is the point.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stdout.close()
    if found_at is None:
        why = (f"timed out after {timeout:g} s" if time.monotonic() - start >= timeout
               else f"exited with status {proc.returncode}")
        tail = seen.decode(errors="replace")
        raise BenchError(f"{emulator.name} {why} before {READY_MARKER}:\n"
                         f"$ {shlex.join(emulator.argv)}\n{tail}")
    return Sample(found_at - start, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def ensure_qemu() -> str:
    if path := shutil.which(QEMU_BINARY):
        return path
    print(f"bench: installing {QEMU_PACKAGE} with apt-get", file=sys.stderr)
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", QEMU_PACKAGE]):
        subprocess.run(prefix + argv, check=True, env=env, stdout=subprocess.DEVNULL)
    if path := shutil.which(QEMU_BINARY):
        return path
    raise BenchError(f"{QEMU_BINARY} still not found after installing {QEMU_PACKAGE}")


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def machine_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0))
    return (f"nproc {nproc}, {model}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _summary(values: list[float], fmt: str) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, fmt)
    return f"{middle:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def report(emulators: list[Emulator], *, runs: int, release: str, append: str, smp: int = 1) -> str:
    now = utc_now()
    lines = [
        f"### Boot to `{READY_MARKER}`, {now}",
        "",
        f"- Machine: {machine_description()}",
        f"- Guest: Debian kernel {release} + busybox initramfs; "
        f"`-machine q35 -m 512 -smp {smp} -nographic -append \"{append}\"`",
        f"- {runs} interleaved runs each; median (min–max)",
        "",
        "| Emulator | Time to marker (s) | CPU time (s) | Max RSS (MiB) | time / QEMU's |",
        "|---|---:|---:|---:|---:|",
    ]
    qemu = next((e for e in emulators if e.name.startswith("QEMU")), None)
    for emu in emulators:
        seconds = [s.seconds for s in emu.samples]
        cpu = [s.cpu_seconds for s in emu.samples]
        rss = [s.max_rss_kib / 1024 for s in emu.samples]
        ratio = ""
        if qemu is not None and emu is not qemu:
            ratio = (f"**{statistics.median(seconds) / statistics.median(s.seconds for s in qemu.samples):.2f}×**")
        lines.append(f"| {emu.name} | {_summary(seconds, '.1f')} | {_summary(cpu, '.1f')} | "
                     f"{_summary(rss, '.0f')} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=5, help="runs per emulator (default 5)")
    parser.add_argument("--pemu-only", action="store_true", help="do not run QEMU")
    parser.add_argument("--qemu-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one boot may take (default 900)")
    parser.add_argument("--kernel", type=Path, help="kernel (default: the test guest's)")
    parser.add_argument("--initrd", type=Path, help="initrd (default: the test guest's)")
    parser.add_argument("--append", default=DEFAULT_APPEND,
                        help=f"kernel command line (default {DEFAULT_APPEND!r})")
    parser.add_argument("--smp", type=int, default=1, help="CPUs of the guest, for both emulators (default 1)")
    parser.add_argument("--pemu", default=f"{shlex.quote(sys.executable)} -m pemu",
                        help="command that starts pemu (default: this Python's -m pemu)")
    parser.add_argument("--paths", default="direct",
                        help="pemu's boot paths, comma-separated: direct (pemu loads the kernel), firmware "
                             "(-bios, SeaBIOS boots it over fw_cfg as in QEMU) (default direct)")
    parser.add_argument("--bios", default=SEABIOS, help=f"firmware of the firmware path (default {SEABIOS})")
    parser.add_argument("--engines", default="",
                        help="pemu's engines, comma-separated: patched, stock (PEMU_ENGINE; default: "
                             "whichever pemu picks)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.smp < 1:
        parser.error("--smp must be at least 1")
    if args.pemu_only and args.qemu_only:
        parser.error("--pemu-only and --qemu-only exclude each other")

    try:
        if (args.kernel is None) != (args.initrd is None):
            parser.error("give both --kernel and --initrd, or neither")
        if args.kernel is None:
            guest = ensure_guest()
            kernel, initrd, release = guest.kernel, guest.initrd, guest.release
        else:
            kernel, initrd, release = args.kernel, args.initrd, args.kernel.name
        common = guest_args(kernel, initrd, args.append, args.smp)

        emulators: list[Emulator] = []
        if not args.qemu_only:
            paths = [p for p in args.paths.split(",") if p]
            if not paths or set(paths) - {"direct", "firmware"}:
                parser.error("--paths takes direct and/or firmware")
            engines = [e for e in args.engines.split(",") if e] or [""]
            if set(engines) - {"", "patched", "stock"}:
                parser.error("--engines takes patched and/or stock")
            for engine in engines:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
                if engine:
                    env["PEMU_ENGINE"] = engine
                    env.pop("LIBUNICORN_PATH", None)
                for path in paths:
                    extra = ["-bios", args.bios] if path == "firmware" else []
                    label = ", ".join(x for x in (f"{path} boot" if len(paths) > 1 or path != "direct" else "",
                                                  f"{engine} engine" if engine else "") if x)
                    emulators.append(Emulator(f"pemu ({label})" if label else "pemu",
                                              shlex.split(args.pemu) + common + extra, env))
        if not args.pemu_only:
            qemu = ensure_qemu()
            version = _first_line([qemu, "--version"]).removeprefix("QEMU emulator version ")
            emulators.append(Emulator(f"QEMU {version} (`-accel tcg`; SeaBIOS + linuxboot_dma)",
                                      [qemu, "-accel", "tcg", *common]))

        for run in range(1, args.runs + 1):
            for emu in emulators:
                sample = measure(emu, args.timeout)
                emu.samples.append(sample)
                print(f"bench: run {run}/{args.runs} {emu.name}: {sample.seconds:.2f} s, "
                      f"max RSS {sample.max_rss_kib / 1024:.0f} MiB", file=sys.stderr, flush=True)
    except (BenchError, subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(report(emulators, runs=args.runs, release=release, append=args.append, smp=args.smp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
