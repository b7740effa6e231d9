"""Run state and the shutdown/reset/powerdown requests (QEMU's system/runstate.c).

Devices and the guest ask for a shutdown or a reset from any thread (a vCPU
thread writing 0xCF9, the ACPI PM1 control register, Ctrl-A x on the
console); the main loop notices the request and acts on it, so no device
ever ends the process itself.

A fault in a device model (an exception out of its handler) is contained by
whoever called the handler (the memory API's dispatch, the main loop, the
character front-end dispatch) with ``pemu.system.cpus.contain_fault``: the VM stops in
the ``internal-error`` state, stderr gets one line, the traceback goes to
the log, and the VMM (main loop, monitor) goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import Enum

from pemu.qapi.events import qapi_event_send
from pemu.util.vm_context import current_vm


class RunState(Enum):
    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    GUEST_PANICKED = "guest-panicked"
    INTERNAL_ERROR = "internal-error"
    IO_ERROR = "io-error"
    INMIGRATE = "inmigrate"  # waiting for an incoming migration (-incoming)
    FINISH_MIGRATE = "finish-migrate"  # stopped for the last copy of an outgoing migration
    POSTMIGRATE = "postmigrate"  # the migration completed: this side stays paused


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


class RunRequests:
    """Shutdown, reset and stop requests waiting for the main loop."""

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


class VMRunState:
    """One VM's run state, its pending requests and its power-button notifiers."""

    def __init__(self) -> None:
        self.state = RunState.PRELAUNCH
        self.requests = RunRequests()
        self.powerdown_notifiers: list[Callable[[], None]] = []
        self.change_state_handlers: list[Callable[[bool, RunState], None]] = []


def vm_run_state() -> VMRunState:
    return current_vm().run


def run_requests() -> RunRequests:
    return current_vm().run.requests


def runstate_get() -> RunState:
    return current_vm().run.state


def runstate_set(new: RunState) -> None:
    current_vm().run.state = new


def runstate_is_running() -> bool:
    return current_vm().run.state == RunState.RUNNING


def shutdown_caused_by_guest(cause: ShutdownCause) -> bool:
    """Whether the guest asked for it (the ``guest`` member of SHUTDOWN and RESET)."""
    return cause in (ShutdownCause.GUEST_SHUTDOWN, ShutdownCause.GUEST_RESET, ShutdownCause.GUEST_PANIC,
                     ShutdownCause.SUBSYSTEM_RESET)


def qapi_event_send_shutdown(cause: ShutdownCause) -> None:
    qapi_event_send("SHUTDOWN", {"guest": shutdown_caused_by_guest(cause), "reason": cause.value})


def qapi_event_send_reset(cause: ShutdownCause) -> None:
    if cause not in (ShutdownCause.NONE, ShutdownCause.SUBSYSTEM_RESET):
        qapi_event_send("RESET", {"guest": shutdown_caused_by_guest(cause), "reason": cause.value})


def _wake(requests: RunRequests) -> None:
    if requests.notify is not None:
        requests.notify()


def qemu_system_shutdown_request(cause: ShutdownCause, exit_status: int = 0) -> None:
    requests = run_requests()
    with requests.lock:
        if requests.shutdown == ShutdownCause.NONE:
            requests.shutdown = cause
            requests.exit_status = exit_status
    _wake(requests)


def qemu_system_reset_request(cause: ShutdownCause) -> None:
    """A guest reset; with -no-reboot it becomes a shutdown, as in QEMU."""
    requests = run_requests()
    if requests.no_reboot and cause != ShutdownCause.SUBSYSTEM_RESET:
        qemu_system_shutdown_request(cause)
        return
    with requests.lock:
        requests.reset = cause
    _wake(requests)


def take_shutdown_request() -> ShutdownCause:
    requests = run_requests()
    with requests.lock:
        cause, requests.shutdown = requests.shutdown, ShutdownCause.NONE
        return cause


def take_reset_request() -> ShutdownCause:
    requests = run_requests()
    with requests.lock:
        cause, requests.reset = requests.reset, ShutdownCause.NONE
        return cause


def qemu_system_vmstop_request(new_state: RunState) -> None:
    """Ask the main loop to stop the VM (a vCPU thread cannot wait for itself to park)."""
    requests = run_requests()
    with requests.lock:
        requests.vmstop = new_state
    _wake(requests)


def take_vmstop_request() -> RunState | None:
    requests = run_requests()
    with requests.lock:
        new_state, requests.vmstop = requests.vmstop, None
        return new_state


# What runs when the VM starts or stops (qemu_add_vm_change_state_handler):
# with the big lock held, on the thread that started or stopped it.
VMChangeStateHandler = Callable[[bool, RunState], None]


def qemu_add_vm_change_state_handler(cb: VMChangeStateHandler) -> None:
    current_vm().run.change_state_handlers.append(cb)


def qemu_del_vm_change_state_handler(cb: VMChangeStateHandler) -> None:
    handlers = current_vm().run.change_state_handlers
    if cb in handlers:
        handlers.remove(cb)


def vm_state_notify(running: bool, new_state: RunState) -> None:
    for cb in list(current_vm().run.change_state_handlers):
        cb(running, new_state)


def qemu_register_powerdown_notifier(cb: Callable[[], None]) -> None:
    """``cb()`` presses the machine's power button (the ACPI PM device registers one)."""
    current_vm().run.powerdown_notifiers.append(cb)


def qemu_unregister_powerdown_notifier(cb: Callable[[], None]) -> None:
    notifiers = current_vm().run.powerdown_notifiers
    if cb in notifiers:
        notifiers.remove(cb)


def qemu_system_powerdown_request() -> bool:
    """Ask the guest to power down (ACPI power button); False if nothing can."""
    notifiers = current_vm().run.powerdown_notifiers
    if notifiers:
        qapi_event_send("POWERDOWN")
    for cb in list(notifiers):
        cb()
    return bool(notifiers)
