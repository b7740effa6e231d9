"""The human monitor (HMP): QEMU's monitor/ directory, the parts pemu needs."""

from pemu.monitor.hmp_cmds import (
    CommandError,
    handle_hmp_command,
    register_powerdown_handler,
    unregister_powerdown_handler,
)
from pemu.monitor.monitor import PROMPT, Monitor, monitor_cleanup, monitor_init_hmp, monitors

__all__ = [
    "PROMPT",
    "CommandError",
    "Monitor",
    "handle_hmp_command",
    "monitor_cleanup",
    "monitor_init_hmp",
    "monitors",
    "register_powerdown_handler",
    "unregister_powerdown_handler",
]
