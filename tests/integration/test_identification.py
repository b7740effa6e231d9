"""How tools identify the emulator: -version, -help, -device help, -cpu help,
-machine help and -accel help in QEMU's shapes (test suites probe these
before they start a guest)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import pemu

PEMU = [sys.executable, "-m", "pemu"]

# QEMU 7.2's shapes, as qemu-system-x86_64 prints them.
VERSION_LINE = re.compile(r"^QEMU emulator version (\d+)\.(\d+)\.(\d+) \((.*)\)$")
COPYRIGHT_LINE = re.compile(r"^Copyright \(c\) \d{4}-\d{4} \S.*$")
DEVICE_LINE = re.compile(r'^name "[^"]+"(, bus [^,]+)?(, alias "[^"]+")?(, desc "[^"]*")?$')
CATEGORY_LINE = re.compile(r"^(Controller/Bridge/Hub|USB|Storage|Network|Input|Display|Sound|Misc|CPU|"
                           r"Watchdog|Uncategorized) devices:$")
CPU_LINE = re.compile(r"^x86 (\S+?)( {2,}.*)?$")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(PEMU + list(args), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return r


def test_version_names_qemu_interface_and_pemu() -> None:
    lines = run("-version").stdout.splitlines()
    assert len(lines) == 2
    m = VERSION_LINE.match(lines[0])
    assert m, lines[0]
    assert (m.group(1), m.group(2), m.group(3)) == ("7", "2", "0")
    assert m.group(4) == f"pemu {pemu.__version__}"
    assert COPYRIGHT_LINE.match(lines[1]), lines[1]


def test_help_starts_with_the_version_lines() -> None:
    out = run("-help").stdout.splitlines()
    assert VERSION_LINE.match(out[0]) and COPYRIGHT_LINE.match(out[1])
    assert out[2].startswith("usage: ")
    assert run("-h").stdout == "\n".join(out) + "\n"


@pytest.mark.parametrize("arg", ["help", "?"])
def test_device_help_in_qemu_format(arg: str) -> None:
    out = run("-device", arg).stdout
    groups = [g for g in out.strip("\n").split("\n\n")]
    assert len(groups) >= 2
    names: dict[str, str] = {}
    for group in groups:
        header, *lines = group.split("\n")
        assert CATEGORY_LINE.match(header), header
        assert lines
        for line in lines:
            assert DEVICE_LINE.match(line), line
            names[line.split('"')[1]] = header
    assert names["isa-serial"] == "Input devices:"   # where QEMU files it
    assert names["ide-hd"] == "Storage devices:"
    assert names["isa-debug-exit"] == "Misc devices:"


def test_cpu_help_in_qemu_format() -> None:
    out = run("-cpu", "help").stdout
    models_text, flags_text = out.split("\n\nRecognized CPUID flags:\n")
    header, *models = models_text.split("\n")
    assert header == "Available CPUs:"
    names = []
    for line in models:
        m = CPU_LINE.match(line)
        assert m, line
        names.append(m.group(1))
        if len(m.group(1)) <= 20:   # the description starts at column 26
            assert len(line) <= 26 or line[26] != " " and line[25] == " "
    # QEMU's order: by name, then the generic models last.
    generic = [n for n in names if n in ("base", "host", "max")]
    assert names[-len(generic):] == generic
    assert names[:-len(generic)] == sorted(names[:-len(generic)])
    flags = flags_text.rstrip("\n").split("\n")
    assert all(line.startswith("  ") and len(line) <= 75 for line in flags)
    words = " ".join(flags).split()
    assert words == sorted(words) and "sse4.2" in words and "vmx" in words


def test_machine_and_accel_help_in_qemu_format() -> None:
    out = run("-machine", "help").stdout.splitlines()
    assert out[0] == "Supported machines are:"
    assert all(re.match(r"^\S+ +\S", line) for line in out[1:])
    out = run("-accel", "help").stdout.splitlines()
    assert out[0] == "Accelerators supported in QEMU binary:"
    assert {line.split()[0] for line in out[1:]} == {"tcg", "kvm"}
