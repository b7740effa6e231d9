"""The program's entry point (QEMU's system/main.c): qemu_init, the main loop, cleanup."""

from __future__ import annotations

import gc
import os
import sys


def _collect_from_now_on() -> None:
    """The VM is built: what start-up made lives as long as the process, so it
    goes where the cyclic collector does not walk it again (gc.freeze)."""
    gc.freeze()
    gc.enable()


def main() -> None:
    # Start-up (the modules, their classes, the machine) allocates objects that
    # live as long as the process; the cyclic collector would walk them over and
    # over while they are made (5 ms of a 90 ms start).  It runs again once the
    # VM is built.
    gc.disable()
    from pemu.system.vl import main_with_args

    status = main_with_args(sys.argv[1:], on_built=_collect_from_now_on)
    sys.stdout.flush()
    sys.stderr.flush()
    # vCPU threads may still sit in the engine: leave without waiting for them.
    os._exit(status)


if __name__ == "__main__":
    main()
