"""The main loop (QEMU's util/main-loop.c) and the big QEMU lock.

One thread runs :func:`MainLoop.run`: it waits on file descriptors (character
back-ends, the monitor, sockets) and on the next timer deadline, then runs
fd handlers, bottom halves and expired timers, all with the big lock held.
vCPU threads take the same lock around device accesses, so device models
never see two threads at once.

A handler that raises is passed with its exception to ``on_handler_fault``,
which the machine sets to its fault policy (stop the VM, report once); the
loop itself goes on.  Without one the exception propagates.
"""

from __future__ import annotations

import os
import selectors
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Protocol

from pemu.util import timer

# The big QEMU lock (BQL), process-wide as in QEMU.  Re-entrant: a device callback may call back into
# code that takes it again.
bql = threading.RLock()

FdHandler = Callable[[], None]
# (what failed, e.g. "timer callback RTC._periodic_tick", the exception)
HandlerFault = Callable[[str, Exception], None]


def handler_name(cb: Callable[..., object]) -> str:
    """A handler's name for messages: Class.method for a bound method (also
    when bound to arguments by functools.partial)."""
    if isinstance(cb, partial):
        cb = cb.func
    owner = getattr(cb, "__self__", None)
    func = getattr(cb, "__func__", None)
    if owner is not None and func is not None:
        return f"{type(owner).__name__}.{func.__name__}"
    return getattr(cb, "__qualname__", None) or repr(cb)


def _bind_dispatch(source: PollSource, events: list[int]) -> Callable[[], None]:
    """``source.dispatch(events)`` as a handler, bound to this source and its events."""
    return lambda: source.dispatch(events)


class PollSource(Protocol):
    """A library with its own sockets polled around each wait (slirp's
    slirp_pollfds_fill / slirp_pollfds_poll): ``fill`` names the fds and
    selector events to wait for and a timeout in seconds (or None);
    ``dispatch`` gets the ready events, one per filled fd, after the wait."""

    def fill(self) -> tuple[list[tuple[int, int]], float | None]: ...

    def dispatch(self, ready: list[int]) -> None: ...


class MainLoop:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.handlers: dict[int, tuple[FdHandler | None, FdHandler | None]] = {}
        self.bottom_halves: deque[Callable[[], None]] = deque()
        self.bh_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.on_handler_fault: HandlerFault | None = None
        self.poll_sources: list[PollSource] = []
        timer.timerlist_set_notify(self.notify)

    # -- file descriptors ---------------------------------------------------
    def set_fd_handler(self, fd: int, read: FdHandler | None, write: FdHandler | None = None) -> None:
        """Install (or with both None, remove) the handlers of ``fd``."""
        if fd in self.handlers:
            self.selector.unregister(fd)
            del self.handlers[fd]
        if read is None and write is None:
            self.notify()
            return
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        self.handlers[fd] = (read, write)
        self.selector.register(fd, events, fd)
        self.notify()

    # -- bottom halves --------------------------------------------------------
    def bh_schedule(self, cb: Callable[[], None]) -> None:
        """Run ``cb`` on the main-loop thread soon; callable from any thread."""
        with self.bh_lock:
            self.bottom_halves.append(cb)
        self.notify()

    def notify(self) -> None:
        """Wake the loop from another thread (qemu_notify_event)."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    # -- running -------------------------------------------------------------
    def run_once(self, max_wait_s: float | None = None) -> None:
        deadline = timer.timerlist_deadline_ns()
        wait = None if deadline < 0 else deadline / 1e9
        if self.bottom_halves:
            wait = 0.0
        if max_wait_s is not None:
            wait = max_wait_s if wait is None else min(wait, max_wait_s)
        polled: list[tuple[PollSource, list[int]]] = []
        registered: list[int] = []
        for source in self.poll_sources:
            fds, timeout = source.fill()
            if timeout is not None:
                wait = timeout if wait is None else min(wait, timeout)
            events = [0] * len(fds)
            polled.append((source, events))
            for index, (fd, mask) in enumerate(fds):
                if mask and fd not in self.handlers and fd not in registered:
                    self.selector.register(fd, mask, (events, index))
                    registered.append(fd)
        try:
            ready = self.selector.select(wait)
        except InterruptedError:
            ready = []
        for fd in registered:
            self.selector.unregister(fd)
        for key, mask in ready:
            if isinstance(key.data, tuple):
                events, index = key.data
                events[index] |= mask
        with bql:
            for source, events in polled:
                self.call_handler("poll source", _bind_dispatch(source, events))
            for key, mask in ready:
                if isinstance(key.data, tuple):
                    continue
                if key.data is None:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    continue
                handlers = self.handlers.get(key.data)
                if handlers is None:
                    continue
                read, write = handlers
                if mask & selectors.EVENT_READ and read:
                    self.call_handler("fd read handler", read)
                if mask & selectors.EVENT_WRITE and write:
                    self.call_handler("fd write handler", write)
            while True:
                with self.bh_lock:
                    if not self.bottom_halves:
                        break
                    cb = self.bottom_halves.popleft()
                self.call_handler("bottom half", cb)
            timer.timerlist_run_expired(self._call_timer_cb)

    def call_handler(self, kind: str, cb: Callable[[], None]) -> None:
        """Run one handler; if it raises, hand the fault to ``on_handler_fault``."""
        try:
            cb()
        except Exception as exc:
            if self.on_handler_fault is None:
                raise
            self.on_handler_fault(f"{kind} {handler_name(cb)}", exc)

    def _call_timer_cb(self, cb: Callable[[], None]) -> None:
        self.call_handler("timer callback", cb)

    def run(self, done: Callable[[], bool]) -> None:
        while not done():
            self.run_once()


_main_loop: MainLoop | None = None


def main_loop() -> MainLoop:
    """The process's main loop, created on first use: process-wide, as in
    QEMU; it runs the timers of the current VM (pemu.util.vm_context)."""
    global _main_loop
    if _main_loop is None:
        _main_loop = MainLoop()
    return _main_loop
