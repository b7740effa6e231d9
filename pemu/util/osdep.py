"""Opening host files the way QEMU's util/osdep.c qemu_open does: a path
``/dev/fdset/N`` takes a duplicate of a descriptor of the VM's fd set N
(``-add-fd``) with the wanted access mode instead of opening a file."""

from __future__ import annotations

import os

from pemu.util.vm_context import current_vm_or_none

FDSET_PREFIX = "/dev/fdset/"


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
