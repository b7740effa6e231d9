"""Bad kernel, initrd and command-line input: one clear line on stderr and
exit status 1, before any guest code runs."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.build_guest import Guest


def pemu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pemu", "-S", "-display", "none", "-nodefaults", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def one_error_line(r: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory: pytest.TempPathFactory, guest_images: Guest) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-kernels")
    kernel = guest_images.kernel.read_bytes()
    files = {
        "elf": b"\x7fELF" + bytes(8000),
        "truncated": kernel[:0x400],
        "empty": b"",
    }
    old = bytearray(kernel[:0x8000])
    old[0x206:0x208] = struct.pack("<H", 0x0201)  # boot protocol 2.01
    files["old"] = bytes(old)
    paths = {}
    for name, data in files.items():
        paths[name] = d / name
        paths[name].write_bytes(data)
    big = d / "big-initrd"
    with open(big, "wb") as f:
        f.truncate(100 << 20)
    paths["big-initrd"] = big
    return paths


def test_missing_kernel() -> None:
    one_error_line(pemu("-kernel", "/nonexistent/vmlinuz"),
                   r"^pemu: could not load kernel '/nonexistent/vmlinuz': No such file or directory$")


@pytest.mark.parametrize("name, pattern", [
    ("elf", r"not a Linux bzImage"),
    ("empty", r"too short to be a Linux bzImage"),
    ("truncated", r"kernel image is truncated"),
    ("old", r"boot protocol 2\.01 is too old \(2\.06 or newer is required\)"),
])
def test_bad_kernel_image(bad_images: dict[str, Path], name: str, pattern: str) -> None:
    one_error_line(pemu("-kernel", str(bad_images[name])), r"^pemu: .*" + pattern)


def test_missing_initrd(guest_images: Guest) -> None:
    one_error_line(pemu("-kernel", str(guest_images.kernel), "-initrd", "/nonexistent/initrd"),
                   r"^pemu: could not load initrd '/nonexistent/initrd'")


def test_initrd_that_does_not_fit(guest_images: Guest, bad_images: dict[str, Path]) -> None:
    one_error_line(pemu("-m", "128", "-kernel", str(guest_images.kernel), "-initrd", str(bad_images["big-initrd"])),
                   r"^pemu: initrd is too large")


def test_command_line_too_long(guest_images: Guest) -> None:
    one_error_line(pemu("-kernel", str(guest_images.kernel), "-append", "x" * 3000),
                   r"^pemu: kernel command line too long \(3000 bytes, this kernel accepts at most \d+\)")


def test_not_enough_ram_for_the_kernel(guest_images: Guest) -> None:
    one_error_line(pemu("-m", "64", "-kernel", str(guest_images.kernel)), r"^pemu: not enough RAM for the kernel")


def test_initrd_without_kernel(guest_images: Guest) -> None:
    one_error_line(pemu("-initrd", str(guest_images.initrd)), r"^pemu: -initrd or -append only allowed with -kernel")
