"""The file back-end (QEMU's chardev/char-file.c): output goes to a host file.

``path=`` names the file, created if missing; it is truncated unless
``append=on``.  The optional ``input-path=`` is read as input.
"""

from __future__ import annotations

import os

from pemu.chardev.char import ChardevOptions, close_fd_quietly
from pemu.chardev.char_fd import FdChardev
from pemu.util.error import UserError
from pemu.util.osdep import qemu_open


def open_host_file(path: str, flags: int, mode: int = 0o666) -> int:
    """qemu_open (a path, or /dev/fdset/N) with QEMU's error wording."""
    try:
        return qemu_open(path, flags, mode)
    except OSError as exc:
        raise UserError(f"Could not open '{path}': {exc.strerror}") from None


class FileChardev(FdChardev):
    backend_name = "file"

    def __init__(self, label: str, path: str, append: bool = False, input_path: str | None = None) -> None:
        super().__init__(label)
        self.path = path
        self.filename = f"file:{path}"
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._out_fd = open_host_file(path, flags)
        self._in_fd: int | None = None
        if input_path is not None:
            try:
                self._in_fd = open_host_file(input_path, os.O_RDONLY)
            except UserError:
                close_fd_quietly(self._out_fd)
                raise
        self.set_fds(self._in_fd, self._out_fd, out_blocking=True)

    @classmethod
    def from_opts(cls, label: str, opts: ChardevOptions) -> FileChardev:
        path = opts.get("path")
        if not path:
            raise UserError("chardev: file: no filename given")
        return cls(label, path, append=opts.get_bool("append", False), input_path=opts.get("input-path"))

    def close(self) -> None:
        super().close()
        close_fd_quietly(self._out_fd)
        if self._in_fd is not None:
            close_fd_quietly(self._in_fd)
            self._in_fd = None
