"""Assemble small guest programs with GNU as/ld for the CPU tests.

``assemble(source, base)`` returns the flat binary of ``source`` linked at
``base`` (use ``.code16``/``.code32``/``.code64`` inside); results are cached
by content in a temporary directory, so a test run assembles each program
once.  ``have_binutils()`` tells the tests whether to skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.gettempdir()) / f"pemu-guestasm-{os.getuid()}"


def have_binutils() -> bool:
    return all(shutil.which(tool) for tool in ("as", "ld", "objcopy"))


def assemble(source: str, base: int = 0) -> bytes:
    key = hashlib.sha256(f"{base:#x}\n{source}".encode()).hexdigest()[:24]
    _CACHE.mkdir(exist_ok=True)
    out = _CACHE / f"{key}.bin"
    if out.exists():
        return out.read_bytes()
    with tempfile.TemporaryDirectory(dir=_CACHE) as tmp:
        src, obj, elf, binary = (Path(tmp) / n for n in ("p.s", "p.o", "p.elf", "p.bin"))
        src.write_text(source + "\n")
        subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True, capture_output=True, text=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "-Ttext", f"{base:#x}", "-e", f"{base:#x}", "--no-relax",
                        "-z", "noexecstack", "-o", str(elf), str(obj)], check=True, capture_output=True, text=True)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(elf), str(binary)], check=True,
                       capture_output=True, text=True)
        data = binary.read_bytes()
        tmp_out = Path(tmp) / "final"
        tmp_out.write_bytes(data)
        os.replace(tmp_out, out)
    return data
