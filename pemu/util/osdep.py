"""Host OS services the emulator asks for by name (QEMU's util/osdep.c and os-posix.c).

``qemu_open`` opens host files as QEMU does: a path ``/dev/fdset/N`` takes a
duplicate of a descriptor of the VM's fd set N (``-add-fd``) with the wanted
access mode instead of opening a file.  ``os_mlock`` serves
``-overcommit mem-lock=on``.
"""

from __future__ import annotations

import os

from pemu.util.vm_context import current_vm_or_none

FDSET_PREFIX = "/dev/fdset/"
MCL_CURRENT = 1
MCL_FUTURE = 2


def qemu_open(path: str, flags: int, mode: int = 0o666) -> int:
    """os.open, or a descriptor of an fd set; raises OSError as os.open does."""
    if not path.startswith(FDSET_PREFIX):
        return os.open(path, flags | os.O_CLOEXEC, mode)
    text = path[len(FDSET_PREFIX):]
    vm = current_vm_or_none()
    fdsets = vm.fdsets if vm is not None else None
    if not text.isdigit() or fdsets is None:
        raise FileNotFoundError(2, os.strerror(2), path)
    return fdsets.dup_fd(int(text), flags)


def os_mlock() -> None:
    """Lock the process's memory, present and future, into RAM.

    Raises OSError when the host refuses."""
    import ctypes  # only -overcommit mem-lock=on needs it: kept off the start path

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
