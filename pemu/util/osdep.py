"""Host OS services the emulator asks for by name (QEMU's os-posix.c)."""

from __future__ import annotations

import ctypes
import os

MCL_CURRENT = 1
MCL_FUTURE = 2


def os_mlock() -> None:
    """Lock the process's memory, present and future, into RAM
    (-overcommit mem-lock=on).  Raises OSError when the host refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
