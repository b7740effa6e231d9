#!/usr/bin/env python3
"""Bare-loop benchmark: ALU, store, load and copy loops, pemu's software CPU against QEMU's TCG.

Each loop is a tiny 32-bit multiboot kernel (assembled here with GNU as/ld)
that runs its loop and leaves through ``isa-debug-exit``; an empty kernel
measures the emulator's start-up and exit.  Both emulators boot the same
kernels with the same command line.  A loop's time is the median CPU time
(user + system, from ``wait4``) of its kernel minus the empty kernel's;
runs are interleaved (every kernel on every emulator, then again) so a
change in the machine's load hits all alike.  pemu runs once per engine
(``PEMU_ENGINE=patched`` and ``stock``, see pemu/accel/tcg/engine).
The report is a Markdown table; see bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO_ROOT = Path(__file__).resolve().parents[1]

from boot import BenchError, _first_line, ensure_qemu, machine_description, utc_now  # noqa: E402

ITERATIONS = 300_000_000
COPY_ROUNDS = 300  # of 1 MiB each
# The copy's destination is 1 MiB + 64 KiB after its source, so the two pages
# in use at a time do not share an entry of the 256-entry TLB.  "copy-aliased"
# puts them 4 MiB apart: every access then misses the TLB (both emulators
# have the same direct-mapped TLB) and runs the slow path.
BUF, BUF2, BUF_ALIASED = 0x400000, 0x510000, 0x800000
ALIASED_ROUNDS = 50

LOOPS: dict[str, tuple[str, str]] = {
    "empty": ("start-up and exit only", ""),
    "alu": (f"{ITERATIONS // 1_000_000} M rounds of add, xor, rol, add", f"""
    mov ${ITERATIONS}, %ecx
1:  add %ecx, %eax
    xor %eax, %edx
    rol $3, %edx
    add %edx, %ebx
    dec %ecx
    jnz 1b
"""),
    "store": (f"{ITERATIONS // 1_000_000} M byte stores over 64 KiB", f"""
    mov ${BUF:#x}, %edi
    mov ${ITERATIONS}, %ecx
1:  mov %ecx, %esi
    and $0xffff, %esi
    mov %al, (%edi,%esi)
    dec %ecx
    jnz 1b
"""),
    "load": (f"{ITERATIONS // 1_000_000} M byte loads over 64 KiB", f"""
    mov ${BUF:#x}, %edi
    mov ${ITERATIONS}, %ecx
1:  mov %ecx, %esi
    and $0xffff, %esi
    add (%edi,%esi), %al
    dec %ecx
    jnz 1b
"""),
    "copy": (f"{COPY_ROUNDS} × 1 MiB `rep movsl`", f"""
    mov ${COPY_ROUNDS}, %ebx
2:  mov ${BUF:#x}, %esi
    mov ${BUF2:#x}, %edi
    mov ${(1 << 20) // 4}, %ecx
    cld
    rep movsl
    dec %ebx
    jnz 2b
"""),
    "copy-aliased": (f"{ALIASED_ROUNDS} × 1 MiB `rep movsl`, source and destination 4 MiB apart", f"""
    mov ${ALIASED_ROUNDS}, %ebx
2:  mov ${BUF:#x}, %esi
    mov ${BUF_ALIASED:#x}, %edi
    mov ${(1 << 20) // 4}, %ecx
    cld
    rep movsl
    dec %ebx
    jnz 2b
"""),
}

KERNEL_TEMPLATE = """
    .section .text
    .code32
    .globl _start
    .align 4
    .long 0x1BADB002, 0, -0x1BADB002    # multiboot header: ELF kernel, no flags
_start:
    mov $0x200000, %esp
{body}
    mov $0x20, %eax
    out %al, $0xf4                      # isa-debug-exit: exit status (0x20 << 1) | 1
    hlt
"""
EXIT_STATUS = 0x41  # not 1, which is also an emulator's error exit


def build_kernel(name: str, body: str, directory: Path) -> Path:
    src, obj, elf = (directory / f"{name}.{ext}" for ext in ("s", "o", "elf"))
    src.write_text(KERNEL_TEMPLATE.format(body=body))
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext-segment", "0x100000", "-e", "_start", "-z", "max-page-size=0x1000",
                    "-z", "noexecstack", "-o", str(elf), str(obj)], check=True, capture_output=True)
    return elf


@dataclass
class Emulator:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cpu: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)


def raise_if_bad(emu: Emulator, kernel: Path, status: int, stderr: bytes) -> None:
    if status != EXIT_STATUS:
        raise BenchError(f"{emu.name}: {kernel.name} exited with {status}, not {EXIT_STATUS}:\n"
                         f"{stderr.decode(errors='replace')[-2000:]}")


def measure(emu: Emulator, kernel: Path, timeout: float) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``kernel`` (the process, start to exit)."""
    argv = [*emu.argv, "-machine", "q35", "-m", "64", "-display", "none", "-serial", "null",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(kernel)]
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=emu.env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise BenchError(f"{emu.name}: {kernel.name} timed out after {timeout:g} s")
            time.sleep(0.005)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        raise_if_bad(emu, kernel, proc.returncode, err.read())
    return wall, usage.ru_utime + usage.ru_stime


def report(emulators: list[Emulator], runs: int) -> str:
    lines = [
        f"### Bare loops, {utc_now()}",
        "",
        f"- Machine: {machine_description()}",
        "- 32-bit multiboot kernels, `-machine q35 -m 64 -device isa-debug-exit`; "
        f"{runs} interleaved runs each; CPU seconds (user + system) of the loop: the kernel's median "
        "minus the empty kernel's; wall seconds beside",
        "",
        "| Loop | " + " | ".join(e.name for e in emulators) + " | " +
        " | ".join(f"{e.name} / QEMU" for e in emulators[:-1]) + " |",
        "|---|" + "---:|" * (2 * len(emulators) - 1),
    ]
    for loop, (what, _) in LOOPS.items():
        cells = []
        cpu_of = {}
        for emu in emulators:
            cpu = statistics.median(emu.cpu[loop])
            wall = statistics.median(emu.wall[loop])
            if loop != "empty":
                cpu -= statistics.median(emu.cpu["empty"])
                wall -= statistics.median(emu.wall["empty"])
            cpu_of[emu.name] = cpu
            cells.append(f"{cpu:.2f} ({wall:.2f} wall)")
        qemu = cpu_of[emulators[-1].name]
        ratios = [f"**{cpu_of[e.name] / qemu:.2f}×**" if loop != "empty" and qemu > 0 else "" for e in emulators[:-1]]
        lines.append(f"| {loop}: {what} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=5, help="runs per kernel and emulator (default 5)")
    parser.add_argument("--engines", default="patched,stock",
                        help="pemu engines to measure, comma-separated (default patched,stock)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take (default 300)")
    args = parser.parse_args(argv)
    try:
        qemu = ensure_qemu()
        version = _first_line([qemu, "--version"]).removeprefix("QEMU emulator version ").split(" ")[0]
        emulators = []
        for engine in [e for e in args.engines.split(",") if e]:
            env = {**os.environ, "PEMU_ENGINE": engine, "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
            env.pop("LIBUNICORN_PATH", None)
            emulators.append(Emulator(f"pemu ({engine} engine)", [sys.executable, "-m", "pemu"], env))
        emulators.append(Emulator(f"QEMU {version}", [qemu, "-accel", "tcg"]))
        with tempfile.TemporaryDirectory() as tmp:
            kernels = {name: build_kernel(name, body, Path(tmp)) for name, (_, body) in LOOPS.items()}
            for run in range(1, args.runs + 1):
                for name, kernel in kernels.items():
                    for emu in emulators:
                        wall, cpu = measure(emu, kernel, args.timeout)
                        emu.cpu.setdefault(name, []).append(cpu)
                        emu.wall.setdefault(name, []).append(wall)
                        print(f"bench: run {run}/{args.runs} {name} {emu.name}: {cpu:.2f} s CPU, {wall:.2f} s wall",
                              file=sys.stderr, flush=True)
    except (BenchError, subprocess.CalledProcessError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(report(emulators, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
