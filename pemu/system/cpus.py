"""vCPU threads and their life cycle (QEMU's system/cpus.c and cpus-common.c).

Each vCPU has a thread that asks its accelerator to run guest code and
parks when the VM is stopped, when the guest halts, or after a triple
fault until the machine resets it.  The main thread stops and resumes all
vCPUs (``pause_all_vcpus`` / ``resume_all_vcpus``) and reads or loads
registers only while they are parked (``cpu_synchronize_*``).

Interrupt lines reach a CPU through :func:`cpu_interrupt`, callable from
any thread: it sets a bit in ``interrupt_request`` and kicks the vCPU.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pemu.accel.accel import AccelVCPU, VCPUExit, configure_accelerators, current_accel
from pemu.qapi.events import qapi_event_send
from pemu.system import runstate
from pemu.system.runstate import RunState
from pemu.util import timer
from pemu.util.error import error_report
from pemu.util.log import LOG_GUEST_ERROR, qemu_log, qemu_log_separate, qemu_loglevel_mask
from pemu.util.main_loop import bql
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.hw.core.cpu import CPURunState, CPUState  # a layer above: types only

CPU_INTERRUPT_HARD = 0x0002
CPU_INTERRUPT_NMI = 0x0200
CPU_INTERRUPT_INIT = 0x0400
CPU_INTERRUPT_SIPI = 0x0800

# The main thread waits on this (with the big lock released) for vCPUs to park.
qemu_pause_cond = threading.Condition(bql)
# QEMU's thread-local current_cpu: the CPU a vCPU thread is running now.
_tls = threading.local()


def run_state(cpu: Any) -> CPURunState:
    """What the vCPU thread and the rest of the machine share about ``cpu`` (its declared ``run``)."""
    run: CPURunState = cpu.run
    return run


def all_vcpus() -> list[Any]:
    """The current VM's vCPUs that have a thread."""
    return list(current_vm().cpus)


def qemu_init_vcpu(cpu: Any) -> None:
    """Create the vCPU on the current accelerator and start its (parked) thread."""
    run_state(cpu)
    accel = current_accel()
    if accel is None:
        accel = configure_accelerators()
    vcpu = accel.create_vcpu(cpu)
    if not accel.start_vcpu(cpu, vcpu):
        start_vcpu_thread(cpu, vcpu)


def start_vcpu_thread(cpu: Any, vcpu: AccelVCPU) -> None:
    run = run_state(cpu)
    run.accel_vcpu = vcpu
    run.stopped = True
    thread = threading.Thread(target=_vcpu_thread_fn, args=(cpu,), name=f"CPU {cpu.cpu_index}/TCG", daemon=True)
    run.thread = thread
    cpu_list_add(cpu)
    thread.start()


def cpu_list_add(cpu: Any) -> None:
    """Count ``cpu`` among the machine's vCPUs (its thread is the accelerator's business)."""
    current_vm().cpus.append(cpu)


def qemu_cpu_is_self(cpu: Any) -> bool:
    return run_state(cpu).thread is threading.current_thread()


def set_current_cpu(cpu: Any | None) -> None:
    """On a vCPU thread: the CPU it runs from now on (one thread may run several in turn)."""
    _tls.in_vcpu_thread = True
    _tls.cpu = cpu


def current_cpu() -> Any | None:
    """The CPU this vCPU thread is running, or None on any other thread."""
    return _tls.__dict__.get("cpu")


def qemu_in_vcpu_thread() -> bool:
    return bool(_tls.__dict__.get("in_vcpu_thread"))


def cpu_stop_current() -> None:
    """Stop the calling vCPU: it leaves the accelerator soon and parks (QEMU's cpu_stop_current)."""
    cpu = current_cpu()
    if cpu is None:
        return
    run = run_state(cpu)
    with run.lock:
        run.stop = True
        run.resume_after_hold = False
    if run.accel_vcpu is not None:
        run.accel_vcpu.kick()


def cpu_park(cpu: Any, run: CPURunState) -> None:
    """The vCPU thread parks ``cpu`` after a stop request (call without ``run.lock``)."""
    with bql:
        run.stop = False
        run.stopped = True
        qemu_pause_cond.notify_all()


def _vcpu_thread_fn(cpu: Any) -> None:
    run = run_state(cpu)
    vcpu = run.accel_vcpu
    assert vcpu is not None
    set_current_cpu(cpu)
    while True:
        with run.lock:
            while True:
                if run.unplug:
                    run.exited.set()
                    return
                if run.stop:
                    run.lock.release()
                    try:
                        cpu_park(cpu, run)
                    finally:
                        run.lock.acquire()
                    continue
                if run.stopped:
                    run.lock.wait()
                    continue
                if run.shutdown:
                    run.lock.wait()
                    continue
                if run.halted:
                    if vcpu.has_work():
                        run.halted = False
                        break
                    run.lock.wait()
                    continue
                break
        try:
            reason = vcpu.exec()
        except Exception as e:  # an accelerator bug: contained like a device fault
            contain_fault(f"CPU {cpu.cpu_index}", e)
            continue
        if reason is VCPUExit.HALTED:
            with run.lock:
                run.halted = True
        elif reason is VCPUExit.SHUTDOWN:
            with run.lock:
                run.shutdown = True


def _notify(run: CPURunState) -> None:
    with run.lock:
        run.lock.notify_all()


def qemu_cpu_kick(cpu: Any) -> None:
    run = run_state(cpu)
    _notify(run)
    if run.accel_vcpu is not None:
        run.accel_vcpu.kick()


def cpu_interrupt(cpu: Any, mask: int) -> None:
    """Raise interrupt request bits (the PIC's INTR line: CPU_INTERRUPT_HARD)."""
    run = run_state(cpu)
    with run.lock:
        run.interrupt_request |= mask
        if not run.stopped:  # a parked thread looks at interrupt_request when resumed
            run.lock.notify_all()
    if run.accel_vcpu is not None:
        run.accel_vcpu.handle_interrupt(mask)


def cpu_reset_interrupt(cpu: Any, mask: int) -> None:
    run = run_state(cpu)
    with run.lock:
        run.interrupt_request &= ~mask


def _stop_one(cpu: Any, temporary: bool = False) -> None:
    run = run_state(cpu)
    with run.lock:
        if not temporary:
            run.resume_after_hold = False  # a temporary park ending must not resume it
        if run.stopped or run.thread is None:
            run.stopped = True
            return
        run.stop = True
        run.lock.notify_all()
    if run.accel_vcpu is not None:
        run.accel_vcpu.kick()


def _wait_stopped(cpus: list[Any]) -> None:
    with bql:
        while not all(run_state(c).stopped for c in cpus):
            for c in cpus:
                vcpu = run_state(c).accel_vcpu
                if not run_state(c).stopped and vcpu is not None:
                    vcpu.kick()
            qemu_pause_cond.wait(0.05)


def pause_all_vcpus() -> None:
    """Stop every vCPU and wait until all are parked (releases the big lock meanwhile)."""
    cpus = all_vcpus()
    for cpu in cpus:
        _stop_one(cpu)
    _wait_stopped(cpus)


def resume_all_vcpus() -> None:
    for cpu in all_vcpus():
        cpu_resume(cpu)


def cpu_resume(cpu: Any) -> None:
    run = run_state(cpu)
    with run.lock:
        if run.held:
            run.resume_after_hold = True  # when the temporary parks end
            return
        run.stop = False
        run.stopped = False
        run.lock.notify_all()


def all_vcpus_paused() -> bool:
    return all(run_state(c).stopped for c in all_vcpus())


class _Parked:
    """Run something on another thread with one vCPU parked, restoring its state after.

    Parks may overlap (a monitor reading registers during a migration's
    sync): the vCPU stays parked until the last ends.  A stop asked for
    meanwhile (``stop``, a migration's vm_stop) is not undone by the end of
    the park, and a resume asked for meanwhile (``cont``) waits for it.
    """

    def __init__(self, cpu: Any) -> None:
        self.cpu = cpu
        self.holding = False

    def __enter__(self) -> None:
        run = run_state(self.cpu)
        if run.thread is None or qemu_cpu_is_self(self.cpu):
            return
        with run.lock:
            if run.held == 0:
                run.resume_after_hold = not (run.stopped or run.stop)
            run.held += 1
            self.holding = True
            running = not run.stopped
        if running:
            _stop_one(self.cpu, temporary=True)
            _wait_stopped([self.cpu])

    def __exit__(self, *exc: object) -> None:
        if not self.holding:
            return
        run = run_state(self.cpu)
        with run.lock:
            run.held -= 1
            if run.held or not run.resume_after_hold:
                return
            run.stop = False
            run.stopped = False
            run.lock.notify_all()


def cpu_parked(cpu: Any) -> _Parked:
    """``with cpu_parked(cpu):`` runs its body with ``cpu`` out of its
    accelerator (parked, then resumed if it was running); on the vCPU's own
    thread, or with it stopped, it is out already."""
    return _Parked(cpu)


def cpu_synchronize_state(cpu: Any) -> None:
    """Copy the live registers into ``cpu.env`` (before the monitor reads them)."""
    run = run_state(cpu)
    if run.accel_vcpu is None:
        return
    with _Parked(cpu):
        run.accel_vcpu.get_state()


def cpu_synchronize_post_reset(cpu: Any) -> None:
    """Load ``cpu.env`` into the accelerator (after reset or a loader changed it)."""
    run = run_state(cpu)
    with run.lock:
        run.halted = cpu.env.halted
        run.shutdown = False
        run.interrupt_request &= ~CPU_INTERRUPT_NMI
    if run.accel_vcpu is None:
        return
    with _Parked(cpu):
        run.accel_vcpu.put_state()


def cpu_synchronize_post_init(cpu: Any) -> None:
    """Load all of ``cpu.env`` into the accelerator after an incoming
    migration or a snapshot was loaded (QEMU's cpu_synchronize_post_init);
    the target has set what the vCPU thread keeps (halted, pending requests).
    The VM is stopped: the vCPU has the state before it runs again."""
    run = run_state(cpu)
    with run.lock:
        run.shutdown = False
    if run.accel_vcpu is None:
        return
    with _Parked(cpu):
        run.accel_vcpu.put_state()


def cpu_reset(cpu: CPUState) -> None:
    cpu.reset()


def destroy_vcpu(cpu: Any) -> None:
    """Stop and join the thread of ``cpu`` and free its accelerator state."""
    run = run_state(cpu)
    with run.lock:
        run.unplug = True
        run.lock.notify_all()
    if run.accel_vcpu is not None:
        run.accel_vcpu.kick()
    thread = run.thread
    if thread is not None and thread is not threading.current_thread():
        run.exited.wait(5)
        # A thread that runs several vCPUs in turn ends with the last of them.
        if not any(other.run.thread is thread for other in current_vm().cpus if other is not cpu):
            thread.join(5)
    if run.accel_vcpu is not None:
        run.accel_vcpu.destroy()
        run.accel_vcpu = None
    vm_cpus = current_vm().cpus
    if cpu in vm_cpus:
        vm_cpus.remove(cpu)


# --- starting and stopping the VM (QEMU keeps these in system/cpus.c too) ------

def vm_start() -> None:
    """Start (or continue) the guest: the virtual clock runs, vCPUs run."""
    run = runstate.vm_run_state()
    if run.state == RunState.RUNNING:
        return
    with run.requests.lock:
        run.requests.fault_reported = False
    qapi_event_send("RESUME")  # sent now, the vCPUs resume just after (as QEMU)
    run.state = RunState.RUNNING
    timer.qemu_clock_enable_virtual(True)
    runstate.vm_state_notify(True, RunState.RUNNING)
    resume_all_vcpus()


def vm_stop(new_state: RunState = RunState.PAUSED) -> None:
    """Stop the guest: vCPUs parked, the virtual clock stands still.

    On a vCPU thread (a device fault in its MMIO or port access) the stop is
    left to the main loop, and this vCPU stops at once.
    """
    if qemu_in_vcpu_thread():
        runstate.qemu_system_vmstop_request(new_state)
        cpu_stop_current()
        return
    run = runstate.vm_run_state()
    if run.state != RunState.RUNNING:
        if new_state != run.state and run.state != RunState.PRELAUNCH:
            run.state = new_state
        return
    pause_all_vcpus()
    timer.qemu_clock_enable_virtual(False)
    run.state = new_state
    runstate.vm_state_notify(False, new_state)
    qapi_event_send("STOP")


# The exception's text in the one-line report is cut to this length (the log has it all).
FAULT_DETAIL_MAX = 200


def contain_fault(where: str, exc: BaseException) -> None:
    """A handler raised ``exc`` while serving ``where`` ("device 'hpet',
    cpu-memory-0 read at 0xfed00000 size 4"): stop the VM in ``internal-error``.

    Called by the code that called the handler, on any thread; it never
    raises.  The first fault since the VM last started gets one line on
    stderr (with or without ``-d``); its traceback goes to the log when there
    is one (``-D``, or ``-d guest_errors`` on stderr).  Later faults, until
    the VM is started again, only go to the log, as one line each; each
    still stops the vCPU it happened on.
    """
    requests = runstate.run_requests()
    with requests.lock:
        first = not requests.fault_reported
        requests.fault_reported = True
    import traceback  # only when something went wrong: not worth its import at start

    detail = " ".join(traceback.format_exception_only(exc)[-1].split())
    if len(detail) > FAULT_DETAIL_MAX:
        detail = detail[:FAULT_DETAIL_MAX] + "..."
    message = f"fault in {where}: {detail}"
    if first:
        error_report(f"{message}; VM stopped (internal-error)")
    if qemu_log_separate() or qemu_loglevel_mask(LOG_GUEST_ERROR):
        if first:
            qemu_log(message + "\n" + "".join(traceback.format_exception(exc)))
        else:
            qemu_log(message)
    if runstate.runstate_get() == RunState.PRELAUNCH:
        runstate.runstate_set(RunState.INTERNAL_ERROR)  # nothing runs yet: only `cont` must be refused
    else:
        vm_stop(RunState.INTERNAL_ERROR)
