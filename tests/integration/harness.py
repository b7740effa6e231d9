"""Drive a real guest over the serial console of an emulator process.

``GuestProcess`` starts ``python -m pemu ARGS`` (or any argv, e.g. QEMU for a
comparison), with the guest's serial console on the process's stdin/stdout
(``-nographic``).  A reader thread collects everything the process prints;
``expect`` waits for a regular expression in it, ``run`` types a shell command
at the guest's prompt and returns what it printed::

    with GuestProcess(default_guest_args(guest)) as vm:
        vm.expect(READY_MARKER, timeout=120)
        assert vm.run("uname -r") == guest.release
        vm.sendline("poweroff -f")
        assert vm.wait(30) == 0

All text is decoded as UTF-8 (undecodable bytes become U+FFFD).
"""

from __future__ import annotations

import codecs
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.fixtures.build_guest import DEFAULT_APPEND, PROMPT, READY_MARKER, Guest

__all__ = [
    "GuestProcess", "GuestError", "GuestTimeout", "GuestExited",
    "default_guest_args", "recv_until", "smp_append", "LPJ", "PROMPT", "READY_MARKER",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_TAIL_CHARS = 3000
# Terminal control sequences the shell's line editor may emit (CSI ... final).
_CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


class GuestError(AssertionError):
    """The guest did not do what the test waited for. Carries the output tail."""


class GuestTimeout(GuestError):
    pass


class GuestExited(GuestError):
    pass


def recv_until(s: socket.socket, marker: bytes) -> bytes:
    """What ``s`` sends up to and including ``marker`` (less if it closes first),
    e.g. a monitor's reply up to its next "(qemu) " prompt."""
    data = b""
    while not data.endswith(marker):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def hmp_command(monitor: str | os.PathLike[str], command: str, timeout: float = 60.0) -> str:
    """Send one command to the human monitor on the unix socket ``monitor``;
    its reply without the echoed command line and the next prompt."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(monitor))
        recv_until(s, b"(qemu) ")
        s.sendall(command.encode() + b"\n")
        reply = recv_until(s, b"(qemu) ").decode(errors="replace").replace("\r\n", "\n")
    return reply.removesuffix("(qemu) ").split("\n", 1)[-1]


def default_guest_args(guest: Guest, *, append: str = DEFAULT_APPEND,
                       memory: str = "512", extra: Sequence[str] = ()) -> list[str]:
    """The README's machine: q35, 512 MiB, serial console on stdio."""
    return ["-machine", "q35", "-m", memory, "-nographic",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
            "-append", append, *extra]


LPJ = 4_000_000   # the TSC's 1 GHz over HZ=250: what the boot CPU computes from the TSC


def smp_append(append: str = DEFAULT_APPEND) -> str:
    """The kernel command line of an SMP boot under tcg.

    On an engine without pemu's patch 0008 (irq-window) a pending timer
    interrupt waits for pemu's 100 us poll to find the guest with IF=1; the
    boot CPU idling in schedule() advances jiffies rarely, and an AP
    calibrating its delay loop against them can stall the boot for minutes
    (README, "Interrupts and SMP").  There ``lpj=`` skips the calibration, as
    the kernel suggests for platforms with late interrupts.
    """
    from pemu.accel.tcg.engine import EngineFeature, engine_info, select_engine

    select_engine()  # the engine the pemu subprocess will load
    if engine_info().has(EngineFeature.IRQ_WINDOW):
        return append
    return f"{append} lpj={LPJ}"


class GuestProcess:
    """An emulator process whose serial console is this object's stdin/stdout.

    ``args`` are passed to ``python -m pemu``; give ``argv`` instead to run
    any other command line (exactly one of the two).
    """

    def __init__(self, args: Sequence[str] | None = None, *,
                 argv: Sequence[str] | None = None,
                 env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        if (args is None) == (argv is None):
            raise TypeError("give either args (for pemu) or argv, not both")
        self.argv = list(argv) if argv is not None else [
            sys.executable, "-m", "pemu", *args]
        self._cond = threading.Condition()
        self._output = ""           # everything decoded so far
        self._stderr = ""
        self._cursor = 0            # where the next expect() starts looking
        self._eof = False
        self.start_time = time.monotonic()
        child_env = dict(os.environ if env is None else env)
        # `python -m pemu` must find this checkout even when not pip-installed.
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPO_ROOT), child_env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=child_env, cwd=cwd or _REPO_ROOT,
            bufsize=0, start_new_session=True)
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, False),
                             name="guest-stdout", daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, True),
                             name="guest-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    # -- output collection --------------------------------------------------

    def _pump(self, stream, is_stderr: bool) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                chunk = os.read(stream.fileno(), 65536)
            except OSError:
                chunk = b""
            text = decoder.decode(chunk, final=not chunk)
            with self._cond:
                if is_stderr:
                    self._stderr += text
                else:
                    self._output += text
                    if not chunk:
                        self._eof = True
                self._cond.notify_all()
            if not chunk:
                return

    @property
    def output(self) -> str:
        """Everything the process wrote to stdout so far."""
        with self._cond:
            return self._output

    @property
    def stderr(self) -> str:
        with self._cond:
            return self._stderr

    def tail(self, chars: int = _TAIL_CHARS) -> str:
        with self._cond:
            out = self._output[-chars:]
            err = self._stderr[-chars:]
        text = f"--- console (last {chars} chars) ---\n{out}"
        if err:
            text += f"\n--- stderr ---\n{err}"
        return text

    # -- waiting --------------------------------------------------------------

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        """Wait for pattern in the output after the previous match; return the match.

        Raises GuestTimeout after timeout seconds, GuestExited if the process
        closes its output first; both carry the output's tail.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._output, self._cursor)
                if match is not None:
                    self._cursor = match.end()
                    return match
                if self._eof:
                    raise GuestExited(
                        f"process exited (status {self.proc.poll()}) before "
                        f"{regex.pattern!r} appeared\n{self._tail_locked()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestTimeout(
                        f"{regex.pattern!r} did not appear within {timeout:g} s\n"
                        f"{self._tail_locked()}")
                self._cond.wait(remaining)

    def _tail_locked(self) -> str:
        text = f"--- console (last {_TAIL_CHARS} chars) ---\n{self._output[-_TAIL_CHARS:]}"
        if self._stderr:
            text += f"\n--- stderr ---\n{self._stderr[-_TAIL_CHARS:]}"
        return text

    # -- input -----------------------------------------------------------------

    def send(self, text: str) -> None:
        try:
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise GuestExited(f"cannot type into an exited process\n{self.tail()}") from None

    def sendline(self, text: str = "") -> None:
        """Type text and Enter (a single '\\n'; the guest tty maps '\\r' alike)."""
        if "\n" in text or "\r" in text:
            raise ValueError("sendline takes one line; call it once per line")
        self.send(text + "\n")

    def run(self, command: str, timeout: float = 30.0) -> str:
        """Run command at the guest shell's prompt and return its output.

        Waits for the prompt first (unless the previous run() left us at one),
        types the command, skips its echo, and returns what was printed up to
        the next prompt, with line ends normalised to '\\n' and the final line
        end removed.
        """
        prompt = re.escape(PROMPT)
        self.expect(prompt, timeout)
        self.sendline(command)
        # The echo is the typed line (perhaps with editor control sequences)
        # ending in the Enter; the command's output starts after it.
        echo = self.expect(r"[^\n]*\n", timeout)
        echoed = _CONTROL_SEQUENCE.sub("", echo.group()).replace("\r", "").rstrip("\n")
        if not echoed.endswith(command):
            raise GuestError(f"expected the echo of {command!r}, got {echoed!r}\n{self.tail()}")
        start = self._cursor
        end_match = self.expect(prompt, timeout)
        with self._cond:
            raw = self._output[start:end_match.start()]
        # Leave the prompt unconsumed so the next run() finds it.
        self._cursor = end_match.start()
        text = _CONTROL_SEQUENCE.sub("", raw).replace("\r\n", "\n").replace("\r", "")
        return text.removesuffix("\n")

    # -- process control ---------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; its status. subprocess.TimeoutExpired on timeout."""
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Stop the process (if still running) and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:     # pragma: no cover - stuck in the kernel
            pass
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> GuestProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()

    def __del__(self) -> None:  # last resort: never leave an emulator behind
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
