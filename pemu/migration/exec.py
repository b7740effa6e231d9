"""The ``exec:CMD`` transport (QEMU's migration/exec.c): the stream goes to
the standard input of ``sh -c CMD`` (outgoing) or comes from its standard
output (incoming), e.g. ``migrate "exec:gzip > vm.gz"`` and
``-incoming "exec:gzip -dc vm.gz"``.

The command never gets pemu's own standard input (the guest's console may be
on it); its standard error is pemu's, so its complaints reach the user.
"""

from __future__ import annotations

import subprocess
from typing import BinaryIO, cast

from pemu.migration.channel import FdSink, IncomingChannel, MigrationChannelError, OutgoingChannel

# How long an outgoing command may take to exit after the stream ended.
EXIT_WAIT_S = 60.0


def _spawn(command: str, outgoing: bool) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE if outgoing else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if outgoing else subprocess.PIPE,
            close_fds=True)
    except OSError as e:
        raise MigrationChannelError(f"Failed to start the command '{command}': {e.strerror or e}") from None


class ExecOutgoing(OutgoingChannel):
    def __init__(self, command: str) -> None:
        self.command = command
        self.proc = _spawn(command, outgoing=True)
        assert self.proc.stdin is not None
        self._sink = FdSink(self.proc.stdin.fileno())
        self._closed = False

    @property
    def sink(self) -> FdSink:
        return self._sink

    def shutdown(self) -> None:
        # A write blocked on the pipe returns (EPIPE) once the command is gone.
        if self.proc.poll() is None:
            self.proc.kill()

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            status = self.proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise MigrationChannelError(f"the command '{self.command}' did not exit") from None
        if status != 0:
            raise MigrationChannelError(f"the command '{self.command}' exited with status {status}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class ExecIncoming(IncomingChannel):
    def __init__(self, command: str) -> None:
        self.command = command
        self.proc = _spawn(command, outgoing=False)
        self._closed = False

    @property
    def source(self) -> BinaryIO:
        stdout = self.proc.stdout
        assert stdout is not None
        return cast(BinaryIO, stdout)  # a BufferedReader on the pipe

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
