#!/usr/bin/env python3
"""Stress: consecutive boots of the Debian test guest, each loading kernel modules.

Module loading is where stale translated code shows (the kernel writes
module text, then runs it): an engine that misses a code write crashes
there.  Each boot waits for the guest's marker, loads the initramfs's
modules with ``modprobe``, checks they are listed in ``/proc/modules``,
reads a file of the fw_cfg module, checks ``dmesg`` for oopses and powers
off; the boots alternate between the direct and the firmware path.  One line
per boot; exit status 0 when every boot was clean.

    python3 bench/stress_boots.py              # 10 boots on whichever engine pemu picks
    PEMU_ENGINE=stock python3 bench/stress_boots.py -n 4
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.build_guest import GUEST_MODULES, READY_MARKER, ensure_guest  # noqa: E402
from tests.integration.harness import GuestError, GuestProcess, default_guest_args  # noqa: E402

SEABIOS = "/usr/share/seabios/bios-256k.bin"
BAD = re.compile(r"BUG|Oops|Call Trace|general protection|segfault|invalid opcode|Kernel panic|Unable to handle")


def one_boot(args: list[str], timeout: float) -> str:
    """'' if the boot was clean, else what went wrong."""
    with GuestProcess(args) as vm:
        try:
            vm.expect(READY_MARKER, timeout)
            for module in GUEST_MODULES:
                vm.run(f"modprobe {module}", timeout=60)
            loaded = {line.split()[0] for line in vm.run("cat /proc/modules", timeout=60).splitlines() if line}
            missing = [m for m in GUEST_MODULES if m not in loaded and m != "lpc_ich"]
            if missing:
                return f"modules not loaded: {missing}"
            if not vm.run("cat /sys/firmware/qemu_fw_cfg/rev", timeout=30).strip():
                return "qemu_fw_cfg: no revision"
            bad = [line for line in vm.run("dmesg", timeout=60).splitlines() if BAD.search(line)]
            if bad:
                return "dmesg: " + " | ".join(bad[:5])
            vm.sendline("poweroff -f")
            status = vm.wait(60)
            if status != 0:
                return f"exit status {status} after poweroff"
        except GuestError as e:
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n{vm.tail(1500)}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--boots", type=int, default=10, help="boots (default 10)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to the marker (default 300)")
    args = parser.parse_args(argv)
    guest = ensure_guest()
    base = default_guest_args(guest)
    failures = 0
    for i in range(args.boots):
        path = "firmware" if i % 2 else "direct"
        start = time.monotonic()
        problem = one_boot(base + (["-bios", SEABIOS] if path == "firmware" else []), args.timeout)
        status = "clean" if not problem else f"FAILED: {problem}"
        failures += bool(problem)
        print(f"boot {i + 1}/{args.boots} ({path}): {time.monotonic() - start:.1f} s, "
              f"{len(GUEST_MODULES)} modprobes: {status}", flush=True)
    print(f"{args.boots - failures}/{args.boots} boots clean")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
