"""The pipe back-end (QEMU's chardev/char-pipe.c): a pair of host FIFOs.

``path=P`` uses ``P.in`` for input and ``P.out`` for output when both
exist, else ``P`` itself for both directions.  The FIFOs are opened
read-write so that opening never waits for the other end; output to a FIFO
nobody reads is buffered up to a limit, then dropped.
"""

from __future__ import annotations

import os

from pemu.chardev.char import ChardevOptions, close_fd_quietly
from pemu.chardev.char_fd import FdChardev
from pemu.chardev.char_file import open_host_file
from pemu.util.error import UserError


class PipeChardev(FdChardev):
    backend_name = "pipe"

    def __init__(self, label: str, path: str) -> None:
        super().__init__(label)
        self.path = path
        self.filename = f"pipe:{path}"
        flags = os.O_RDWR | os.O_NONBLOCK
        self._own_fds: list[int] = []
        if os.path.exists(path + ".in") and os.path.exists(path + ".out"):
            fd_in = open_host_file(path + ".in", flags)
            self._own_fds.append(fd_in)
            try:
                fd_out = open_host_file(path + ".out", flags)
            except UserError:
                close_fd_quietly(fd_in)
                raise
            self._own_fds.append(fd_out)
        else:
            fd_in = fd_out = open_host_file(path, flags)
            self._own_fds.append(fd_in)
        self.set_fds(fd_in, fd_out, out_blocking=False)

    @classmethod
    def from_opts(cls, label: str, opts: ChardevOptions) -> PipeChardev:
        path = opts.get("path")
        if not path:
            raise UserError("chardev: pipe: no filename given")
        return cls(label, path)

    def close(self) -> None:
        super().close()
        for fd in self._own_fds:
            close_fd_quietly(fd)
        self._own_fds.clear()
