"""Errors reported to the user (QEMU's error_report / Error**).

Bad user input is reported as one line on stderr, prefixed with the program
name as QEMU does ("qemu-system-x86_64: -m foo: Parameter 'size' expects a
size"), and the process exits with status 1.  Code that detects bad input
raises :class:`UserError`; only the top level (``system.main``) prints it.
"""

from __future__ import annotations

import os
import sys


class EarlyExit(Exception):
    """Help or version was printed: exit with this status."""

    def __init__(self, status: int = 0) -> None:
        self.status = status


class UserError(Exception):
    """An error in what the user asked for (options, files, images).

    ``location`` is the option that carried the bad value ("-m foo"); it is
    printed before the message, as QEMU's error location does.
    """

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        if self.location:
            return f"{self.location}: {self.message}"
        return self.message


def prog_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "pemu" if name in ("", "__main__.py", "-c") else name


def error_report(message: str) -> None:
    """Print one error line on stderr, QEMU style."""
    sys.stderr.write(f"{prog_name()}: {message}\n")
    sys.stderr.flush()


def warn_report(message: str) -> None:
    sys.stderr.write(f"{prog_name()}: warning: {message}\n")
    sys.stderr.flush()
