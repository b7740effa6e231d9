"""QEMU's qemu_log: the -d item list and -D logfile.

Guest errors (accesses to nothing, bad register writes, bad DMA
descriptors) are logged under ``LOG_GUEST_ERROR`` and never stop the VM.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

LOG_GUEST_ERROR = 1 << 0
LOG_UNIMP = 1 << 1
LOG_INT = 1 << 2
LOG_CPU_RESET = 1 << 3
LOG_IOPORT = 1 << 4

LOG_ITEMS: dict[str, tuple[int, str]] = {
    "guest_errors": (LOG_GUEST_ERROR,
                     "log when the guest OS does something invalid (eg accessing a\nnon-existent register)"),
    "unimp": (LOG_UNIMP, "log unimplemented functionality"),
    "int": (LOG_INT, "show interrupts/exceptions in short format"),
    "cpu_reset": (LOG_CPU_RESET, "show CPU state before CPU resets"),
    "ioport": (LOG_IOPORT, "show all I/O port accesses"),
}

# Process-wide, as in QEMU (-d and -D are options of the process, not of a VM).
_mask = 0
_file: TextIO = sys.stderr
_lock = threading.Lock()


def qemu_loglevel_mask(mask: int) -> bool:
    return bool(_mask & mask)


def qemu_log_mask(mask: int, message: str) -> None:
    """Log ``message`` if any bit of ``mask`` was enabled with -d."""
    if _mask & mask:
        qemu_log(message)


def qemu_log(message: str) -> None:
    if not message.endswith("\n"):
        message += "\n"
    with _lock:
        _file.write(message)
        _file.flush()


def qemu_log_separate() -> bool:
    """True when the log is a file of its own (-D), not stderr."""
    return _file is not sys.stderr


def guest_error(message: str) -> None:
    qemu_log_mask(LOG_GUEST_ERROR, message)


def qemu_str_to_log_mask(items: str) -> int:
    """Parse the -d argument; raises ValueError naming the first bad item."""
    mask = 0
    for item in items.split(","):
        if not item:
            continue
        if item == "all":
            for bit, _ in LOG_ITEMS.values():
                mask |= bit
            continue
        if item not in LOG_ITEMS:
            raise ValueError(item)
        mask |= LOG_ITEMS[item][0]
    return mask


def qemu_set_log(mask: int) -> None:
    global _mask
    _mask = mask


def qemu_set_log_filename(path: str) -> None:
    global _file
    _file = open(path, "a", buffering=1)


def log_help() -> str:
    lines = ["Log items (comma separated):"]
    for name, (_, desc) in LOG_ITEMS.items():
        lines.append(f"{name:<10} {desc}")
    return "\n".join(lines) + "\n"
