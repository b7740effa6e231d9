"""pemu: a machine emulator and virtual machine monitor in Python, built on QEMU's architecture."""

__version__ = "0.1.0"

# The unicorn binding loads its library on first import: choose pemu's engine
# build (or the stock one) before anything imports it.
from pemu.accel.tcg.engine import select_engine as _select_engine  # noqa: E402

_select_engine()
