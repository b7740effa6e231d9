"""Sending QAPI events (QEMU's generated qapi_event_send_* and
monitor_qapi_event_emit): a named event with optional data, stamped with the
host time, to every listener of the current VM (its QMP monitors).

This module is imported by the run-state code, so it stays small: no JSON,
no schema.  The events' data types are declared with the commands
(pemu.monitor.qmp_cmds.QMP_EVENTS) for query-qmp-schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pemu.util.vm_context import current_vm_or_none

# (event name, data or None, (seconds, microseconds)) -> None
EventListener = Callable[[str, "dict[str, Any] | None", "tuple[int, int]"], None]


def qapi_event_send(name: str, data: dict[str, Any] | None = None) -> None:
    """Emit event ``name`` to the current VM's listeners (nothing without a VM or listeners)."""
    vm = current_vm_or_none()
    if vm is None or not vm.event_listeners:
        return
    now = time.time()
    seconds = int(now)
    stamp = (seconds, int((now - seconds) * 1_000_000))
    for listener in list(vm.event_listeners):
        listener(name, data, stamp)
