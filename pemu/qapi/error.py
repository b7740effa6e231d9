"""Errors a command reports (QEMU's Error with its QapiErrorClass)."""

from __future__ import annotations

from enum import Enum


class ErrorClass(Enum):
    """QEMU's QapiErrorClass: the ``class`` member of a QMP error reply."""

    GENERIC_ERROR = "GenericError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DEVICE_NOT_ACTIVE = "DeviceNotActive"
    DEVICE_NOT_FOUND = "DeviceNotFound"
    KVM_MISSING_CAP = "KVMMissingCap"


class QMPError(Exception):
    """A command failed: QMP replies ``{"error": {"class", "desc"}}``, the human
    monitor prints "Error: desc"."""

    def __init__(self, desc: str, error_class: ErrorClass = ErrorClass.GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def __str__(self) -> str:
        return self.desc


def device_not_found(desc: str) -> QMPError:
    return QMPError(desc, ErrorClass.DEVICE_NOT_FOUND)
