"""isa-debug-exit (QEMU's hw/misc/debugexit.c): a port that ends pemu.

A guest write of V to the port makes pemu exit with status (V << 1) | 1,
so a test kernel's verdict reaches the shell and 0 stays out of reach of
the guest.  The device only asks for the shutdown; the main loop ends the
process (no device ever exits by itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.hw.core.qdev import DeviceClass, Property, device_class_set_props
from pemu.hw.isa.isa_bus import TYPE_ISA_DEVICE, ISADevice
from pemu.migration.vmstate import vmstate_no_state
from pemu.qom.object import ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.runstate import ShutdownCause, qemu_system_shutdown_request

TYPE_ISA_DEBUG_EXIT = "isa-debug-exit"
DEFAULT_IOBASE = 0x501
DEFAULT_IOSIZE = 2
MAX_IOSIZE = 4


def debug_exit_status(value: int, size: int) -> int:
    """The process exit status for a write of ``value`` (``size`` bytes wide)."""
    value &= (1 << (8 * size)) - 1
    return ((value << 1) | 1) & 0xFFFFFFFF


class DebugExit:
    """The register model: any write requests the shutdown; reads float."""

    def __init__(self, request_exit: Callable[[int], None] | None = None) -> None:
        self.request_exit = request_exit or (
            lambda status: qemu_system_shutdown_request(ShutdownCause.GUEST_SHUTDOWN, exit_status=status))

    def reset(self) -> None:
        pass

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        if size not in (1, 2, 4):
            size = 4
        self.request_exit(debug_exit_status(value, size))


class ISADebugExitState(ISADevice):
    model: Any
    iobase: int
    iosize: int


def _debug_exit_realize(dev: Any) -> None:
    if not 1 <= dev.iosize <= MAX_IOSIZE:
        raise QOMError(f"isa-debug-exit: iosize must be between 1 and {MAX_IOSIZE}")
    if not 0 <= dev.iobase <= 0xFFFF - dev.iosize + 1:
        raise QOMError(f"isa-debug-exit: iobase {dev.iobase:#x} is outside the I/O space")
    dev.model = model = DebugExit()
    dev.register_model("isa-debug-exit", dev.iobase, dev.iosize, model.read, model.write, max_access=4)


def _debug_exit_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = _debug_exit_realize
    dc.vmsd = vmstate_no_state(TYPE_ISA_DEBUG_EXIT)
    dc.reset = lambda dev: object_check(dev, ISADebugExitState).model.reset()
    dc.desc = "ISA debug exit port (exits with (value << 1) | 1)"
    dc.user_creatable = True
    dc.categories = ("misc",)
    device_class_set_props(dc, [Property("iobase", "uint32", DEFAULT_IOBASE),
                                Property("iosize", "uint32", DEFAULT_IOSIZE)])


def register_debug_exit_type() -> None:
    type_register(TypeInfo(TYPE_ISA_DEBUG_EXIT, parent=TYPE_ISA_DEVICE, instance_type=ISADebugExitState,
                           class_init=_debug_exit_class_init))
