"""pemu: a machine emulator and virtual machine monitor in Python, built on QEMU's architecture."""

__version__ = "0.1.0"
# The QEMU release whose command line, monitor and device interface pemu follows.
QEMU_INTERFACE_VERSION = "7.2.0"


def version_banner() -> str:
    """The two lines QEMU prints for -version and at the top of -help, in its
    shape: tools match the first line against ``QEMU emulator version X.Y.Z``."""
    return (f"QEMU emulator version {QEMU_INTERFACE_VERSION} (pemu {__version__})\n"
            "Copyright (c) 2025-2026 the pemu developers\n")

# The unicorn binding loads its library on first import: choose pemu's engine
# build (or the stock one) before anything imports it.
from pemu.accel.tcg.engine import select_engine as _select_engine  # noqa: E402

_select_engine()
