#!/usr/bin/env python3
"""Migration benchmark: snapshot, restore and live migration, pemu against QEMU.

Each run boots the default test guest (512 MiB, its busybox shell idle) once
per emulator and moves it along a chain, as a user would:

1. **live**: the booted process migrates over tcp to a second process on
   127.0.0.1 with the default parameters (128 MiB/s, 300 ms): the source's
   ``total time`` and ``downtime`` from ``info migrate``;
2. **snapshot**: the destination saves to a file from the human monitor
   (pemu: ``file:PATH``, the mapped-ram layout; QEMU 7.2, which has no
   ``file:``: ``exec:cat > PATH``), with ``max-bandwidth`` raised to 100 GiB/s
   on both so that the limit does not decide; the snapshot's size on disk and
   the ``total time`` of ``info migrate`` (QEMU's HMP ``migrate`` itself
   returns only at its next status poll, once a second);
3. **restore**: a new process with ``-incoming`` (pemu: ``file:PATH``; QEMU:
   ``exec:cat PATH``): time from starting the process until its monitor
   says ``running``, then until the guest's shell answers a command.

Runs are interleaved (pemu, QEMU, pemu, ...); the report is a Markdown table
of medians (min–max) with the pemu/QEMU ratios.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_ROOT))

from boot import BenchError, _first_line, _summary, ensure_qemu, machine_description, utc_now  # noqa: E402

from tests.fixtures.build_guest import PROMPT, READY_MARKER, ensure_guest  # noqa: E402

BOOT_TIMEOUT = 600.0
STEP_TIMEOUT = 600.0
SNAPSHOT_BANDWIDTH = "100G"


@dataclass
class Result:
    snapshot_mib: float
    save_s: float
    restore_running_s: float
    restore_shell_s: float
    live_total_ms: float
    live_downtime_ms: float


@dataclass
class Emulator:
    name: str
    argv: list[str]
    snapshot_uri: str  # with {path}
    restore_uri: str  # with {path}
    results: list[Result] = field(default_factory=list)


class Process:
    """An emulator with the guest's console on a pipe and the monitor on a unix socket."""

    def __init__(self, argv: list[str], monitor: Path) -> None:
        self.monitor = monitor
        self.start = time.monotonic()
        self.proc = subprocess.Popen([*argv, "-monitor", f"unix:{monitor},server=on,wait=off"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.output = b""

    def expect(self, pattern: bytes, timeout: float) -> None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while not regex.search(self.output):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None and \
                    self.proc.stderr else ""
                raise BenchError(f"{pattern!r} did not come:\n{self.output[-1500:].decode(errors='replace')}\n{err}")
            chunk = self.proc.stdout.read(65536)
            if chunk:
                self.output += chunk
            else:
                time.sleep(0.002)

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def hmp(self, command: str, timeout: float = STEP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(self.monitor))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError(f"no monitor at {self.monitor}") from None
                time.sleep(0.002)
        with s:
            s.settimeout(timeout)
            _recv_until(s, b"(qemu) ")
            s.sendall(command.encode() + b"\n")
            return _recv_until(s, b"(qemu) ").decode(errors="replace").replace("\r", "")

    def wait_running(self) -> None:
        while "running" not in self.hmp("info status"):
            if self.proc.poll() is not None:
                raise BenchError(f"exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}"
                                 if self.proc.stderr else "exited")
            time.sleep(0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _recv_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while not data.endswith(marker):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _info_ms(info: str, key: str) -> float:
    m = re.search(rf"^{key}: (\d+) ms$", info, re.M)
    if not m:
        raise BenchError(f"no '{key}' in info migrate:\n{info}")
    return float(m.group(1))


def run_chain(emulator: Emulator, guest_args: list[str], workdir: Path) -> Result:
    base = [*emulator.argv, *guest_args]
    snapshot = workdir / f"{emulator.name.split()[0]}.snapshot"
    snapshot.unlink(missing_ok=True)
    processes: list[Process] = []
    try:
        first = Process(base, workdir / "a.mon")
        processes.append(first)
        first.expect(READY_MARKER.encode(), BOOT_TIMEOUT)
        first.type("\n")
        first.expect(re.escape(PROMPT).encode(), 60)

        port = _free_port()
        live = Process([*base, "-incoming", f"tcp:127.0.0.1:{port}"], workdir / "b.mon")
        processes.append(live)
        live.hmp("info status")  # listening
        first.hmp(f"migrate tcp:127.0.0.1:{port}")
        info = first.hmp("info migrate")
        if "Migration status: completed" not in info:
            raise BenchError(f"{emulator.name}: the live migration did not complete:\n{info}")
        live.wait_running()
        first.kill()

        live.hmp(f"migrate_set_parameter max-bandwidth {SNAPSHOT_BANDWIDTH}")
        reply = live.hmp(f'migrate "{emulator.snapshot_uri.format(path=snapshot)}"')
        saved = live.hmp("info migrate")
        if "completed" not in saved:
            raise BenchError(f"{emulator.name}: the snapshot did not complete: {reply}")
        # The emulator's own total time: QEMU's HMP `migrate` returns at its next 1 s status poll.
        save_s = _info_ms(saved, "total time") / 1000
        live.hmp("quit")
        live.proc.wait(60)
        size = snapshot.stat().st_blocks * 512 / (1 << 20)  # what it takes on disk (mapped-ram files are sparse)

        restored = Process([*base, "-incoming", emulator.restore_uri.format(path=snapshot)], workdir / "c.mon")
        processes.append(restored)
        restored.wait_running()
        running_s = time.monotonic() - restored.start
        restored.type("echo restored-$((6*7))\n")
        restored.expect(rb"restored-42", 120)
        shell_s = time.monotonic() - restored.start
        return Result(size, save_s, running_s, shell_s, _info_ms(info, "total time"), _info_ms(info, "downtime"))
    finally:
        for proc in processes:
            proc.kill()
        snapshot.unlink(missing_ok=True)


def report(emulators: list[Emulator], runs: int) -> str:
    pemu, qemu = emulators[0], emulators[-1]
    rows = [
        ("snapshot size (MiB on disk)", "snapshot_mib", ".0f"),
        ("save: `migrate` to a file, total time (s)", "save_s", ".2f"),
        ("restore: process start to `running` (s)", "restore_running_s", ".2f"),
        ("restore: process start to the shell's answer (s)", "restore_shell_s", ".2f"),
        ("live migration over tcp: total time (ms)", "live_total_ms", ".0f"),
        ("live migration over tcp: downtime (ms)", "live_downtime_ms", ".0f"),
    ]
    lines = [
        f"#### Migration of the 512 MiB test guest, {utc_now()}",
        "",
        f"- Machine: {machine_description()}",
        f"- {runs} interleaved runs each; median (min–max); pemu snapshots to `file:` (mapped-ram), QEMU 7.2 to "
        "`exec:cat > FILE`; live: default parameters (128 MiB/s, 300 ms)",
        "",
        f"| | {pemu.name} | {qemu.name} | pemu / QEMU |" if len(emulators) > 1 else f"| | {pemu.name} |",
        "|---|---:|---:|---:|" if len(emulators) > 1 else "|---|---:|",
    ]
    import statistics

    for label, attr, fmt in rows:
        values = [[float(getattr(r, attr)) for r in e.results] for e in emulators]
        cells = [_summary(v, fmt) for v in values]
        if len(emulators) > 1:
            ratio = statistics.median(values[0]) / max(statistics.median(values[1]), 1e-9)
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | **{ratio:.2f}×** |")
        else:
            lines.append(f"| {label} | {cells[0]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--runs", type=int, default=3)
    parser.add_argument("--pemu-only", action="store_true")
    args = parser.parse_args(argv)
    guest = ensure_guest()
    guest_args = ["-machine", "q35", "-m", "512", "-nographic", "-kernel", str(guest.kernel),
                  "-initrd", str(guest.initrd), "-append", "console=ttyS0"]
    emulators = [Emulator("pemu", [sys.executable, "-m", "pemu"], "file:{path}", "file:{path}")]
    if not args.pemu_only:
        qemu = ensure_qemu()
        version = _first_line([qemu, "--version"]).removeprefix("QEMU emulator version ")
        emulators.append(Emulator(f"QEMU {version.split()[0]}", [qemu, "-accel", "tcg"],
                                  "exec:cat > {path}", "exec:cat {path}"))
    with tempfile.TemporaryDirectory(prefix="pemu-bench-migrate-") as tmp:
        for run in range(args.runs):
            for emulator in emulators:
                print(f"bench: {emulator.name} run {run + 1}/{args.runs}", file=sys.stderr)
                try:
                    result = run_chain(emulator, guest_args, Path(tmp))
                except BenchError as e:
                    print(f"bench: {emulator.name}: {e}\n$ {shlex.join(emulator.argv)}", file=sys.stderr)
                    return 1
                print(f"bench:   {result}", file=sys.stderr)
                emulator.results.append(result)
    sys.stdout.write(report(emulators, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
