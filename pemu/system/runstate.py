"""Run state and the shutdown/reset/powerdown requests (QEMU's system/runstate.c).

Devices and the guest ask for a shutdown or a reset from any thread (a vCPU
thread writing 0xCF9, the ACPI PM1 control register, Ctrl-A x on the
console); the main loop notices the request and acts on it, so no device
ever ends the process itself.

A fault in a device model (an exception out of its handler) is contained by
whoever called the handler (the memory API's dispatch, the main loop, the
character front-end dispatch) with :func:`contain_fault`: the VM stops in
the ``internal-error`` state, stderr gets one line, the traceback goes to
the log, and the VMM (main loop, monitor) goes on.
"""

from __future__ import annotations

import threading
import traceback
from enum import Enum
from typing import Callable

from pemu.util.error import error_report
from pemu.util.log import LOG_GUEST_ERROR, qemu_log, qemu_log_separate, qemu_loglevel_mask


class RunState(Enum):
    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    GUEST_PANICKED = "guest-panicked"
    INTERNAL_ERROR = "internal-error"


class ShutdownCause(Enum):
    NONE = "none"
    HOST_ERROR = "host-error"
    HOST_QMP_QUIT = "host-qmp-quit"
    HOST_QMP_SYSTEM_RESET = "host-qmp-system-reset"
    HOST_SIGNAL = "host-signal"
    HOST_UI = "host-ui"
    GUEST_SHUTDOWN = "guest-shutdown"
    GUEST_RESET = "guest-reset"
    GUEST_PANIC = "guest-panic"
    SUBSYSTEM_RESET = "subsystem-reset"


class _Requests:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shutdown = ShutdownCause.NONE
        self.reset = ShutdownCause.NONE
        self.exit_status = 0
        self.notify: Callable[[], None] | None = None
        self.no_reboot = False
        self.no_shutdown = False
        # A stop asked for on a vCPU thread, done by the main loop (qemu_system_vmstop_request).
        self.vmstop: RunState | None = None
        # A fault was reported since the VM last started: later ones are not.
        self.fault_reported = False


requests = _Requests()
state = RunState.PRELAUNCH


def runstate_set(new: RunState) -> None:
    global state
    state = new


def runstate_is_running() -> bool:
    return state == RunState.RUNNING


def _wake() -> None:
    if requests.notify is not None:
        requests.notify()


def qemu_system_shutdown_request(cause: ShutdownCause, exit_status: int = 0) -> None:
    with requests.lock:
        if requests.shutdown == ShutdownCause.NONE:
            requests.shutdown = cause
            requests.exit_status = exit_status
    _wake()


def qemu_system_reset_request(cause: ShutdownCause) -> None:
    """A guest reset; with -no-reboot it becomes a shutdown, as in QEMU."""
    if requests.no_reboot and cause != ShutdownCause.SUBSYSTEM_RESET:
        qemu_system_shutdown_request(cause)
        return
    with requests.lock:
        requests.reset = cause
    _wake()


def take_shutdown_request() -> ShutdownCause:
    with requests.lock:
        cause, requests.shutdown = requests.shutdown, ShutdownCause.NONE
        return cause


def take_reset_request() -> ShutdownCause:
    with requests.lock:
        cause, requests.reset = requests.reset, ShutdownCause.NONE
        return cause


def qemu_system_vmstop_request(new_state: RunState) -> None:
    """Ask the main loop to stop the VM (a vCPU thread cannot wait for itself to park)."""
    with requests.lock:
        requests.vmstop = new_state
    _wake()


def take_vmstop_request() -> RunState | None:
    with requests.lock:
        new_state, requests.vmstop = requests.vmstop, None
        return new_state


def vm_start() -> None:
    """Start (or continue) the guest: the virtual clock runs, vCPUs run."""
    from pemu.system import cpus
    from pemu.util.timer import qemu_clock_enable_virtual

    if state == RunState.RUNNING:
        return
    with requests.lock:
        requests.fault_reported = False
    runstate_set(RunState.RUNNING)
    qemu_clock_enable_virtual(True)
    vm_state_notify(True, RunState.RUNNING)
    cpus.resume_all_vcpus()


def vm_stop(new_state: RunState = RunState.PAUSED) -> None:
    """Stop the guest: vCPUs parked, the virtual clock stands still.

    On a vCPU thread (a device fault in its MMIO or port access) the stop is
    left to the main loop, and this vCPU stops at once.
    """
    from pemu.system import cpus
    from pemu.util.timer import qemu_clock_enable_virtual

    if cpus.qemu_in_vcpu_thread():
        qemu_system_vmstop_request(new_state)
        cpus.cpu_stop_current()
        return
    if state != RunState.RUNNING:
        if new_state != state and state != RunState.PRELAUNCH:
            runstate_set(new_state)
        return
    cpus.pause_all_vcpus()
    qemu_clock_enable_virtual(False)
    runstate_set(new_state)
    vm_state_notify(False, new_state)


# What runs when the VM starts or stops (qemu_add_vm_change_state_handler):
# with the big lock held, on the thread that started or stopped it.
VMChangeStateHandler = Callable[[bool, RunState], None]
_vm_change_state_handlers: list[VMChangeStateHandler] = []


def qemu_add_vm_change_state_handler(cb: VMChangeStateHandler) -> None:
    _vm_change_state_handlers.append(cb)


def qemu_del_vm_change_state_handler(cb: VMChangeStateHandler) -> None:
    if cb in _vm_change_state_handlers:
        _vm_change_state_handlers.remove(cb)


def vm_state_notify(running: bool, new_state: RunState) -> None:
    for cb in list(_vm_change_state_handlers):
        cb(running, new_state)


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
    with requests.lock:
        first = not requests.fault_reported
        requests.fault_reported = True
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
    if state == RunState.PRELAUNCH:
        runstate_set(RunState.INTERNAL_ERROR)  # nothing runs yet: only `cont` must be refused
    else:
        vm_stop(RunState.INTERNAL_ERROR)


_powerdown_notifiers: list[Callable[[], None]] = []


def qemu_register_powerdown_notifier(cb: Callable[[], None]) -> None:
    """``cb()`` presses the machine's power button (the ACPI PM device registers one)."""
    _powerdown_notifiers.append(cb)


def qemu_unregister_powerdown_notifier(cb: Callable[[], None]) -> None:
    if cb in _powerdown_notifiers:
        _powerdown_notifiers.remove(cb)


def qemu_system_powerdown_request() -> bool:
    """Ask the guest to power down (ACPI power button); False if nothing can."""
    for cb in list(_powerdown_notifiers):
        cb()
    return bool(_powerdown_notifiers)
