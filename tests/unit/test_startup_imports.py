"""What building a paused q35 machine imports: the subsystems a start does not use stay unimported.

Start-up time is measured in bench/startup.py; these tests keep the lazy imports
that time depends on from coming back unnoticed (each module named here was once
imported at every start).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pemu.accel.tcg.engine import recorded_engine_key

REPO = Path(__file__).resolve().parents[2]
PAUSED_Q35 = ["-machine", "q35", "-S", "-display", "none"]

# Module (or package) -> when it is imported instead.
LAZY = {
    "hashlib": "pemu's engine cache key is read from its note (engine.recorded_engine_key)",
    "unicorn": "the engine is loaded at a vCPU's first run",
    "ctypes": "a RAM block's host address is computed when an accelerator maps it",
    "pemu.block": "with the first -drive or -blockdev (MachineState.block_devices)",
    "pemu.net": "with the first -netdev, -nic or -net",
    "pemu.accel.kvm": "with -accel kvm",
    "pemu.accel.tcg.tcg_accel": "when the tcg accelerator is set up for a vCPU",
    "pemu.hw.i386.linux_boot": "with -kernel",
    "pemu.chardev.char_socket": "with a socket chardev",
    "json": "with -blockdev's JSON form or a QMP monitor",
    "tempfile": "with -snapshot or a temporary image",
    "concurrent": "with a drive's I/O thread",
    "traceback": "when a device model faults",
    "uuid": "with -smbios type=1,uuid=",
    "socket": "with a socket chardev, a netdev or a QMP server",
    # dataclasses imports inspect (and with it ast, dis, tokenize): records on the start path are
    # slotted classes or NamedTuples; the subsystems loaded later (block, net) may use dataclasses.
    "dataclasses": "with a subsystem the start does not use (block, net, kvm)",
    "pathlib": "with the engine's build (engine.build) or an option naming a file (block, -kernel)",
    "inspect": "left to what needs it (dataclasses, typing.get_type_hints), not the start",
}


def _imported(names: set[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for lazy in LAZY:
        hits = sorted(n for n in names if n == lazy or n.startswith(lazy + "."))
        if hits:
            found[lazy] = hits
    return found


def _env() -> dict[str, str]:
    # The first start after the patches change hashes them and notes the key; the starts tested are later ones.
    recorded_engine_key()
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_building_a_paused_machine_imports_no_lazy_subsystem() -> None:
    code = ("import sys; from pemu.system.vl import qemu_init; "
            f"qemu_init({PAUSED_Q35 + ['-monitor', 'none']!r}); "
            "print('\\n'.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    modules = set(result.stdout.split())
    assert "pemu.hw.i386.pc_q35" in modules  # the machine was built
    found = _imported(modules)
    assert not found, "\n".join(f"{m} imported ({', '.join(h)}); should be {LAZY[m]}" for m, h in found.items())
    # Without a monitor, none of the monitor is imported.
    assert not [m for m in modules if m.startswith("pemu.monitor")]


def test_start_to_a_ready_monitor_imports_no_lazy_subsystem() -> None:
    """bench/startup.py's command line: ``python -m pemu ... -monitor stdio``, ``quit`` on stdin."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pemu", *PAUSED_Q35, "-monitor", "stdio"],
                            input="quit\n", cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(qemu)" in result.stdout
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    assert "pemu.monitor.monitor" in modules  # -X importtime reported the start's imports
    found = _imported(modules)
    assert not found, "\n".join(f"{m} imported ({', '.join(h)}); should be {LAZY[m]}" for m, h in found.items())
