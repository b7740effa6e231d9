"""Build pemu's engine: Unicorn's source distribution + pemu's patches, x86 only.

``python3 -m pemu.accel.tcg.engine build`` fetches ``unicorn==2.1.4``'s
source distribution with pip (checked against its sha256), unpacks it,
applies ``patches/*.patch`` in order, builds the x86 engine with cmake and
installs ``libunicorn.so.2`` into ``~/.cache/pemu/engine/<key>/``
(:func:`pemu.accel.tcg.engine.engine_key`).  An existing build for the same
key is reused, so a second run costs nothing.  Needs cmake, make, a C
compiler and ``patch``.  One progress line while it builds; the compiler's
output goes to a log file, whose tail is shown if the build fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TextIO

from pemu.accel.tcg.engine import (
    LIBRARY_NAME,
    SDIST_SHA256,
    UNICORN_VERSION,
    built_engine_dir,
    cache_root,
    engine_key,
    patches,
)

SDIST_NAME = f"unicorn-{UNICORN_VERSION}.tar.gz"
REQUIRED_TOOLS = ("cmake", "make", "cc", "patch")
_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")


class BuildError(Exception):
    """The engine could not be built; the message is one line for the user."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(dest_dir: Path, out: TextIO) -> Path:
    """The source archive, downloaded once into ``dest_dir`` and checked."""
    sdist = dest_dir / SDIST_NAME
    if sdist.is_file() and _sha256(sdist) == SDIST_SHA256:
        return sdist
    dest_dir.mkdir(parents=True, exist_ok=True)
    print(f"engine: downloading the unicorn {UNICORN_VERSION} source distribution", file=out, flush=True)
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
               f"unicorn=={UNICORN_VERSION}", "-d", tmp]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        got = Path(tmp) / SDIST_NAME
        if result.returncode != 0 or not got.is_file():
            last = (result.stdout.strip().splitlines() or ["no output"])[-1]
            raise BuildError(f"pip could not download unicorn=={UNICORN_VERSION}'s sources: {last}")
        digest = _sha256(got)
        if digest != SDIST_SHA256:
            raise BuildError(f"{SDIST_NAME} has sha256 {digest}, expected {SDIST_SHA256}")
        os.replace(got, sdist)
    return sdist


def unpack(sdist: Path, work: Path) -> Path:
    with tarfile.open(sdist) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(work, filter="data")
        else:
            for member in tar.getmembers():
                if member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                    raise BuildError(f"{sdist.name}: unsafe member {member.name!r}")
            tar.extractall(work)
    return work / f"unicorn-{UNICORN_VERSION}"


def apply_patches(source: Path, log: TextIO) -> None:
    for patch in patches():
        log.write(f"--- applying {patch.name}\n")
        log.flush()
        result = subprocess.run(["patch", "-p1", "--batch", "--forward", "-i", str(patch)], cwd=source,
                                stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise BuildError(f"{patch.name} does not apply to unicorn {UNICORN_VERSION}")


class _Progress:
    """One line: rewritten in place on a terminal, a line per 10 % elsewhere (CI logs)."""

    def __init__(self, out: TextIO, what: str) -> None:
        self.out = out
        self.what = what
        self.tty = out.isatty()
        self.start = time.monotonic()
        self.shown = -1

    def update(self, percent: int) -> None:
        step = percent if self.tty else percent // 10 * 10
        if step <= self.shown:
            return
        self.shown = step
        line = f"engine: {self.what}: {step:3d}% ({time.monotonic() - self.start:.0f} s)"
        if self.tty:
            self.out.write("\r" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty and self.shown >= 0:
            self.out.write("\n")
            self.out.flush()


def _run_logged(cmd: list[str], cwd: Path, log: TextIO, progress: _Progress | None) -> None:
    log.write("+ " + " ".join(cmd) + "\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for raw in proc.stdout:
        log.write(raw.decode(errors="replace"))
        m = _PERCENT.match(raw)
        if m and progress is not None:
            progress.update(int(m.group(1)))
    if proc.wait() != 0:
        raise BuildError(f"'{' '.join(cmd[:3])}...' failed")


def compile_engine(source: Path, build: Path, jobs: int, log: TextIO, out: TextIO) -> Path:
    build.mkdir(parents=True, exist_ok=True)
    _run_logged(["cmake", str(source / "src"), "-DCMAKE_BUILD_TYPE=Release", "-DUNICORN_ARCH=x86",
                 "-DUNICORN_BUILD_TESTS=OFF", "-DUNICORN_INSTALL=OFF", "-DBUILD_SHARED_LIBS=ON"],
                build, log, None)
    progress = _Progress(out, f"building Unicorn {UNICORN_VERSION} (x86) with {len(patches())} pemu patches")
    progress.update(0)
    try:
        _run_logged(["cmake", "--build", ".", "--target", "unicorn", "--", f"-j{jobs}"], build, log, progress)
    finally:
        progress.done()
    library = build / LIBRARY_NAME
    if not library.is_file():
        raise BuildError(f"the build made no {LIBRARY_NAME}")
    return library


def check_engine(directory: Path) -> int:
    """Load the installed library in a fresh interpreter; its uc_pemu_features() mask."""
    code = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); f = lib.uc_pemu_features; "
            "f.restype = ctypes.c_uint32; print(f())")
    result = subprocess.run([sys.executable, "-c", code, str(directory / LIBRARY_NAME)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"the built engine does not load: {result.stderr.strip().splitlines()[-1:]}")
    return int(result.stdout)


def build_engine(jobs: int | None = None, force: bool = False, out: TextIO = sys.stdout) -> Path:
    """Make sure pemu's engine for the current patches is built; its directory."""
    dest = built_engine_dir()
    if (dest / LIBRARY_NAME).is_file() and not force:
        print(f"engine: pemu's Unicorn {UNICORN_VERSION} is built ({dest})", file=out, flush=True)
        return dest
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise BuildError(f"building pemu's engine needs {', '.join(missing)} (Debian: apt-get install "
                         f"cmake make gcc patch)")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pemu may be building the same engine
        if (dest / LIBRARY_NAME).is_file() and not force:
            print(f"engine: pemu's Unicorn {UNICORN_VERSION} is built ({dest})", file=out, flush=True)
            return dest
        started = time.monotonic()
        sdist = fetch_sdist(root / "src", out)
        work = Path(tempfile.mkdtemp(prefix=f"build-{engine_key()}-", dir=root))
        log_path = work / "build.log"
        ok = False
        try:
            with log_path.open("w") as log:
                source = unpack(sdist, work)
                apply_patches(source, log)
                library = compile_engine(source, work / "build", jobs or os.cpu_count() or 1, log, out)
            staging = Path(tempfile.mkdtemp(prefix="install-", dir=root))
            shutil.copy2(library, staging / LIBRARY_NAME)
            features = check_engine(staging)
            elapsed = time.monotonic() - started
            (staging / "BUILD-INFO").write_text(
                f"unicorn {UNICORN_VERSION} + {', '.join(p.name for p in patches())}\n"
                f"key {engine_key()}\nfeatures {features:#x}\nbuilt in {elapsed:.0f} s\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
            ok = True
        except BuildError as e:
            tail = log_path.read_text(errors="replace").splitlines()[-15:] if log_path.exists() else []
            kept = work.with_name(work.name + "-failed")
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(work, kept)
            raise BuildError(f"{e} (log: {kept / 'build.log'})\n" + "\n".join(tail)) from None
        finally:
            if ok:
                shutil.rmtree(work, ignore_errors=True)
    print(f"engine: built pemu's Unicorn {UNICORN_VERSION} in {elapsed:.0f} s ({dest})", file=out, flush=True)
    return dest
