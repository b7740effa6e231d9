"""A thread that runs one action when a deadline passes (one deadline at a time).

The tcg accelerator needs two such timers outside the virtual clock: the
round-robin time slice and the look-again deadline of an interrupt that waits
for IF=1.  Both must act while the vCPU thread is inside the engine, so each
is a small host thread of its own.
"""

from __future__ import annotations

import threading
import time


class DeadlineThread:
    """Calls :meth:`expired` (with ``cond`` held) when the armed deadline passes."""

    def __init__(self, name: str) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.deadline: float | None = None
        self.done = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _arm_locked(self, seconds: float) -> None:
        """Set the deadline ``seconds`` from now; the caller holds ``cond``."""
        self.deadline = time.monotonic() + seconds
        self.cond.notify()

    def cancel(self) -> None:
        with self.cond:
            self.deadline = None

    def stop(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify()
        if self.thread is not threading.current_thread():
            self.thread.join(1)  # a destroyed VM leaves no thread behind

    def expired(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        with self.cond:
            while not self.done:
                if self.deadline is None:
                    self.cond.wait()
                    continue
                remaining = self.deadline - time.monotonic()
                if remaining > 0:
                    self.cond.wait(remaining)
                    continue
                self.deadline = None
                self.expired()
