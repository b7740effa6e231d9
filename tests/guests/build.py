"""Build the test guests (tests/guests/*.S, *.c) with the host's gcc/as/ld.

``build_test_guest(outdir)`` returns the path of the multiboot ELF kernel
(the test it runs is chosen on its command line); ``build_ttext_guest(outdir)``
the same guest linked with ``ld -Ttext=0x100000`` instead of guest.ld.  Nothing is cached in the repository: the tests build into a
temporary directory.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent
LINKER_SCRIPT = GUEST_DIR / "guest.ld"
CFLAGS = ["-m32", "-ffreestanding", "-fno-pic", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
          "-mno-sse", "-mno-mmx", "-mgeneral-regs-only", "-nostdlib", "-O2", "-Wall", "-Werror"]


class GuestToolsMissing(RuntimeError):
    pass


def tools_available() -> bool:
    return all(shutil.which(t) for t in ("gcc", "ld"))


def _compile(outdir: Path, sources: tuple[str, ...]) -> list[str]:
    if not tools_available():
        raise GuestToolsMissing("gcc and ld are needed to build the test guests")
    outdir.mkdir(parents=True, exist_ok=True)
    objs = []
    for src in sources:
        obj = outdir / (src.rsplit(".", 1)[0] + ".o")
        subprocess.run(["gcc", *CFLAGS, "-c", str(GUEST_DIR / src), "-o", str(obj)], check=True,
                       capture_output=True, text=True)
        objs.append(str(obj))
    return objs


def build_test_guest(outdir: Path) -> Path:
    objs = _compile(outdir, ("boot.S", "guest.c"))
    kernel = outdir / "test-guest.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(LINKER_SCRIPT), "-nostdlib", "-o", str(kernel), *objs],
                   check=True, capture_output=True, text=True)
    return kernel


def build_lowseg_guest(outdir: Path) -> Path:
    """The same guest with a segment of its own at 0x9000 (guest-lowseg.ld), where
    pemu once put the multiboot information."""
    objs = _compile(outdir, ("boot.S", "guest.c"))
    kernel = outdir / "test-guest-lowseg.elf"
    # -n: no page alignment in the file, so the multiboot header stays in the first 8 KiB.
    subprocess.run(["ld", "-m", "elf_i386", "-n", "-T", str(GUEST_DIR / "guest-lowseg.ld"), "-nostdlib", "-o", str(kernel),
                    *objs], check=True, capture_output=True, text=True)
    return kernel


def build_ttext_guest(outdir: Path) -> Path:
    """The same guest linked as many hobby kernels are, with ``ld -Ttext=0x100000``
    and no linker script: its first LOAD segment holds only the ELF headers, at 0xff000."""
    objs = _compile(outdir, ("text_header.S", "boot.S", "guest.c"))
    kernel = outdir / "test-guest-ttext.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "boot32", "-z", "noexecstack", "-nostdlib",
                    "-o", str(kernel), *objs], check=True, capture_output=True, text=True)
    return kernel


# -- running a test guest ----------------------------------------------------------------

import os  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402

REPO_ROOT = GUEST_DIR.parents[1]
PASSED_STATUS = 1  # isa-debug-exit with 0: (0 << 1) | 1


@dataclass
class GuestRun:
    status: int
    output: str
    stderr: str


def run_test_guest(kernel: Path, append: str, *, accel: str = "kvm", extra: list[str] | None = None,
                   memory: str = "64", timeout: float = 60, env: dict[str, str] | None = None) -> GuestRun:
    """Run pemu on a test guest until it exits through isa-debug-exit (serial on stdout)."""
    argv = [sys.executable, "-m", "pemu", "-accel", accel, "-m", memory, "-nodefaults", "-nographic",
            "-serial", "stdio", "-display", "none", "-no-reboot", "-device", "isa-debug-exit",
            "-kernel", str(kernel), "-append", append, *(extra or [])]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=REPO_ROOT,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    return GuestRun(proc.returncode, proc.stdout.decode(errors="replace").replace("\r\n", "\n"),
                    proc.stderr.decode(errors="replace"))
