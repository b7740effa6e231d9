"""The q35 fuzzer (tests/fuzz/q35_fuzz.py): a short seeded pass over every
surface finds nothing, and each of its checks reports a bug planted in a
device.  The long pass is a documented command (README, "Fuzzing")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FUZZER = ROOT / "tests" / "fuzz" / "q35_fuzz.py"
SURFACES = ["pio", "mmio", "fw_cfg_dma", "pci_config", "timers", "testdevs", "ahci", "e1000e"]



def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def fuzz(tmp_path: Path, *args: str, prelude: str = "") -> tuple[int, dict[str, Any], str]:
    """Run the fuzzer in a fresh interpreter (one board per process), after ``prelude``."""
    out = tmp_path / "result.json"
    script = (f"import sys\nsys.path.insert(0, {str(FUZZER.parent)!r})\nimport q35_fuzz\n{prelude}\n"
              f"sys.exit(q35_fuzz.main({[*args, '--json', str(out)]!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def test_short_seeded_pass_finds_nothing(tmp_path: Path) -> None:
    status, result, output = fuzz(tmp_path, "--seed", "1", "--ops", "3000", "--time", "60")
    assert [r["surface"] for r in result["results"]] == SURFACES
    assert all(r["ops"] == 3000 for r in result["results"]), output
    assert result["findings"] == [], output
    assert status == 0


PLANTED = """
from pemu.hw.misc.ioport80 import IOPort80
from pemu.util.timer import QEMU_CLOCK_VIRTUAL, QEMUTimer
from pemu.system.physmem import address_space_memory
import time

leaked = []
once = set()

def planted_write(self, offset, value, size=1):
    code = value % 8
    if code == 1:
        raise ZeroDivisionError("planted")
    if code == 2 and "stall" not in once:
        once.add("stall")
        time.sleep(30)                                   # a stall: the watchdog must cut it short
    if code == 3:
        address_space_memory().write_rom(0xFFFFFFF0, bytes([value & 0xFF]))  # a device scribbling on the BIOS
    if code == 4:
        for _ in range(100):                             # timers armed and never freed
            t = QEMUTimer(QEMU_CLOCK_VIRTUAL, lambda: None)
            t.mod_ns(1 << 60)
            leaked.append(t)
    if code == 5 and "rss" not in once:
        once.add("rss")
        leaked.append(bytearray(48 << 20))               # memory that is never given back
        leaked[-1][::4096] = b"x" * len(leaked[-1][::4096])

IOPort80.write = planted_write
"""


def test_each_check_reports_a_planted_bug(tmp_path: Path) -> None:
    status, result, output = fuzz(tmp_path, "--seed", "1", "--surface", "pio", "--ops", "20000", "--time", "120",
                                  "--hang", "1", "--slow-op", "0.5", "--timer-entries", "1000", "--rss-growth", "40",
                                  "--check-every", "100",
                                  prelude=PLANTED)
    kinds = {f["kind"] for f in result["findings"]}
    assert {"hang", "slow", "rom", "timer-list", "rss"} <= kinds, output
    # The planted exception escapes, or is contained at the dispatch and stops the VM: either is reported.
    faults = [f for f in result["findings"] if f["kind"] in ("exception", "internal-error")]
    assert faults and all(f["op"].startswith("('out', 128,") for f in faults), output
    assert status == 1


MIGRATION_FUZZER = ROOT / "tests" / "fuzz" / "migration_fuzz.py"


def migration_fuzz(tmp_path: Path, *args: str, prelude: str = "") -> tuple[int, dict[str, Any], str]:
    """Run the migration-stream fuzzer in a fresh interpreter, after ``prelude``."""
    out = tmp_path / "migration.json"
    script = (f"import sys\nsys.path.insert(0, {str(MIGRATION_FUZZER.parent)!r})\nimport migration_fuzz\n{prelude}\n"
              f"sys.exit(migration_fuzz.main({[*args, '--json', str(out)]!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=600)
    assert out.exists(), proc.stderr
    return proc.returncode, json.loads(out.read_text()), proc.stdout + proc.stderr


def test_migration_stream_short_seeded_pass_finds_nothing(tmp_path: Path) -> None:
    status, result, output = migration_fuzz(tmp_path, "--seed", "1", "--iterations", "300", "--time", "60")
    assert result["loaded"] > 0 and result["refused"] > 0, output
    assert result["findings"] == [], output
    assert status == 0


# A device that trusts a loaded value: port 0x80 reads a table at the last POST code the stream gives.
PLANTED_MIGRATION = """
from pemu.hw.misc.ioport80 import IOPort80

def planted_read(self, offset, size=1):
    return bytes(0x80)[self.last_post_code]      # IndexError once the stream says 0x80 or more

def planted_write(self, offset, value, size=1):
    self.last_post_code = value & 0x7F           # the guest cannot get there: only the stream can

IOPort80.read = planted_read
IOPort80.write = planted_write
"""


def test_migration_fuzzer_reports_a_planted_bug(tmp_path: Path) -> None:
    status, result, output = migration_fuzz(tmp_path, "--seed", "1", "--iterations", "3000", "--time", "120",
                                            prelude=PLANTED_MIGRATION)
    # The planted IndexError escapes, or is contained at the dispatch and stops the VM: either is reported,
    # and only after a stream whose ioport80 section was changed.
    assert result["findings"], output
    assert all(f["kind"] in ("exception", "internal-error") and f["section"].endswith("(ioport80)")
               for f in result["findings"]), output
    assert status == 1
