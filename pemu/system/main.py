"""The program's entry point (QEMU's system/main.c): qemu_init, the main loop, cleanup."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from pemu.system.vl import main_with_args

    status = main_with_args(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # vCPU threads may still sit in the engine: leave without waiting for them.
    os._exit(status)


if __name__ == "__main__":
    main()
