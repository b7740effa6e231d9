"""The null back-end (QEMU's chardev/char-null.c): output vanishes, no input."""

from __future__ import annotations

from pemu.chardev.char import Chardev, ChardevOptions


class NullChardev(Chardev):
    backend_name = "null"

    @classmethod
    def from_opts(cls, label: str, opts: ChardevOptions) -> NullChardev:
        return cls(label)
