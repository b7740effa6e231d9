"""Round-robin vCPUs on one host thread (QEMU's accel/tcg/tcg-accel-ops-rr.c).

Every vCPU of the machine has its own engine instance; one host thread runs
them in turn, each until it halts, is kicked, or its time slice ends.  The
engine is left only at a block boundary (the exit request), so one guest
instruction never interleaves with another CPU's: guest atomics stay atomic,
which several engines on several threads would not give (see
/work/shared/notes/unicorn-facts.md).  A halted vCPU is skipped until it has
work; with every vCPU halted the thread sleeps.

All the vCPUs share one condition as their ``run.lock``, so any request to
any of them (an interrupt, a stop, a resume) wakes the thread.
"""

from __future__ import annotations

import threading
from typing import Any

from pemu.accel.accel import VCPUExit
from pemu.accel.tcg.deadline import DeadlineThread

# How long one vCPU runs while another could: short, because a Linux guest
# often spins waiting for another CPU (a lock holder, an IPI's answer).
TIME_SLICE_S = 0.004


class _SliceTimer(DeadlineThread):
    """Ends the running vCPU's time slice: one thread, one deadline at a time."""

    def __init__(self) -> None:
        self.target: Any = None
        super().__init__("tcg-rr-slice")

    def arm(self, vcpu: Any, seconds: float) -> None:
        with self.cond:
            self.target = vcpu
            self._arm_locked(seconds)

    def disarm(self) -> None:
        with self.cond:
            self.deadline = None
            self.target = None

    def expired(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            target.request_exit()


class RRCPUThread:
    """The one thread of a machine's tcg vCPUs (owned by the accelerator)."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.cpus: list[Any] = []
        self.running: Any = None     # the vCPU (TCGVCPUHandle) in the engine now
        self.slice_wanted = False    # whether the running vCPU's turn has a time limit
        self.slice = _SliceTimer()
        self.thread = threading.Thread(target=self._thread_fn, name="CPU 0..N/TCG", daemon=True)
        self._started = False

    def add(self, cpu: Any, vcpu: Any) -> None:
        """Take ``cpu`` on (parked, as the VM starts stopped)."""
        from pemu.system.cpus import cpu_list_add, run_state

        run = run_state(cpu)
        run.lock = self.cond
        run.accel_vcpu = vcpu
        run.stopped = True
        run.thread = self.thread
        vcpu.rr = self
        with self.cond:
            self.cpus.append(cpu)
        cpu_list_add(cpu)
        if not self._started:
            self._started = True
            self.thread.start()

    def begin_slice(self, vcpu: Any) -> None:
        """``vcpu`` (the running one) has forgotten earlier stop requests and
        is about to enter its engine: its time slice starts now.  Armed here,
        not before exec(), so that a slice ending early cannot be forgotten
        with them (the vCPU would then run until something else stops it)."""
        if self.slice_wanted:
            self.slice.arm(vcpu, TIME_SLICE_S)

    def kick_running(self, cpu: Any) -> None:
        """``cpu`` has something to do: end the running vCPU's turn if it is
        another one (QEMU's rr_kick_vcpu_thread)."""
        running = self.running
        if running is not None and running.cpu is not cpu:
            running.request_exit()

    # -- the thread --------------------------------------------------------------------
    def _pick(self, start: int) -> tuple[Any, int, int] | None:
        """With ``cond`` held: the next vCPU to run from position ``start``,
        its position and how many could run; parks the stopped ones and
        sleeps while none can run.  None when all are unplugged."""
        from pemu.system.cpus import cpu_park

        while True:
            cpus = self.cpus
            if not cpus:
                return None
            n = len(cpus)
            chosen: tuple[Any, int] | None = None
            runnable = 0
            parked = False
            for i in range(n):
                pos = (start + i) % n
                cpu = cpus[pos]
                run = cpu.run
                if run.unplug:
                    continue
                if run.stop:
                    self.cond.release()
                    try:
                        cpu_park(cpu, run)
                    finally:
                        self.cond.acquire()
                    parked = True
                    break
                if run.stopped or run.shutdown:
                    continue
                if run.halted:
                    if not run.accel_vcpu.has_work():
                        continue
                    run.halted = False
                runnable += 1
                if chosen is None:
                    chosen = (cpu, pos)
            if parked:
                continue
            self._reap_unplugged()
            if chosen is not None:
                return chosen[0], chosen[1], runnable
            if not self.cpus:
                return None
            self.cond.wait()

    def _reap_unplugged(self) -> None:
        for cpu in [c for c in self.cpus if c.run.unplug]:
            self.cpus.remove(cpu)
            cpu.run.exited.set()

    def _thread_fn(self) -> None:
        from pemu.system.cpus import set_current_cpu

        start = 0
        while True:
            with self.cond:
                picked = self._pick(start)
                if picked is None:
                    break
            cpu, pos, runnable = picked
            run = cpu.run
            vcpu = run.accel_vcpu
            set_current_cpu(cpu)
            self.running = vcpu
            self.slice_wanted = runnable > 1 or len(self.cpus) > 1
            try:
                reason = vcpu.exec()
            except Exception as e:  # an accelerator bug: contained like a device fault
                from pemu.system.cpus import contain_fault

                reason = VCPUExit.KICKED
                contain_fault(f"CPU {cpu.cpu_index}", e)
            finally:
                self.running = None
                self.slice.disarm()
            if reason is VCPUExit.HALTED:
                with self.cond:
                    run.halted = True
            elif reason is VCPUExit.SHUTDOWN:
                with self.cond:
                    run.shutdown = True
            start = pos + 1
        self.slice.stop()
        self.slice.thread.join()
