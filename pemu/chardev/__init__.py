"""Character device back-ends (QEMU's chardev/): stdio, file, pipe, socket, null, mux."""

from pemu.chardev.char import Chardev, ChrEvent
from pemu.chardev.char_fe import CharBackend
from pemu.chardev.char_mux import MuxChardev, resume_mux_open, suspend_mux_open
from pemu.chardev.registry import (
    qemu_chr_cleanup,
    qemu_chr_delete,
    qemu_chr_find,
    qemu_chr_list,
    qemu_chr_new,
    qemu_chr_new_from_opts,
    qemu_chr_parse_compat,
)

__all__ = [
    "CharBackend",
    "Chardev",
    "ChrEvent",
    "MuxChardev",
    "qemu_chr_cleanup",
    "qemu_chr_delete",
    "qemu_chr_find",
    "qemu_chr_list",
    "qemu_chr_new",
    "qemu_chr_new_from_opts",
    "qemu_chr_parse_compat",
    "resume_mux_open",
    "suspend_mux_open",
]
