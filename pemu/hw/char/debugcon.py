"""isa-debugcon (QEMU's hw/char/debugcon.c): the Bochs-style debug console.

One byte-wide port (0xE9 by default; SeaBIOS logs to 0x402, hence
``-global isa-debugcon.iobase=0x402``): every byte written goes to the
character back-end, a read returns the ``readback`` value (0xE9, which is how
a guest detects the port).  ``-debugcon CHARDEV`` creates one on a back-end
named "debugcon".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.hw.core.qdev import DeviceClass, Property, device_class_set_props
from pemu.hw.isa.isa_bus import TYPE_ISA_DEVICE, ISADevice
from pemu.migration.vmstate import vmstate_no_state
from pemu.qom.object import ObjectClass, QOMError, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps

TYPE_ISA_DEBUGCON = "isa-debugcon"
DEBUGCON_DEFAULT_IOBASE = 0xE9
DEBUGCON_DEFAULT_READBACK = 0xE9
DEBUGCON_CHARDEV_LABEL = "debugcon"   # the back-end -debugcon makes


class Debugcon:
    """The port: ``output(byte)`` takes each byte the guest writes."""

    def __init__(self, output: Callable[[bytes], object], readback: int = DEBUGCON_DEFAULT_READBACK) -> None:
        self.output = output
        self.readback = readback & 0xFF

    def reset(self) -> None:
        pass

    def read(self, offset: int, size: int) -> int:
        return self.readback

    def write(self, offset: int, value: int, size: int) -> None:
        self.output(bytes((value & 0xFF,)))


class ISADebugconState(ISADevice):
    model: Debugcon
    iobase: int
    chardev: str
    readback: int
    backend: Any  # pemu.chardev.CharBackend


def _debugcon_realize(obj: Any) -> None:
    from pemu.chardev import CharBackend
    from pemu.chardev.registry import qemu_chr_find

    dev = object_check(obj, ISADebugconState)
    if not dev.chardev:
        raise QOMError("Can't create debugcon device, empty char device")
    chr_ = qemu_chr_find(dev.chardev)
    if chr_ is None:
        raise QOMError(f"Property 'isa-debugcon.chardev' can't find value '{dev.chardev}'")
    if not 0 <= dev.iobase <= 0xFFFF:
        raise QOMError(f"isa-debugcon: iobase {dev.iobase:#x} is outside the I/O space")
    dev.backend = backend = CharBackend(chr_)
    dev.model = model = Debugcon(backend.write, dev.readback)
    dev.register_ioport(dev.iobase, MemoryRegion.io(
        TYPE_ISA_DEBUGCON, 1, MemoryRegionOps(model.read, model.write, 1, 1, False, 1, 1), owner=dev))


def _debugcon_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.realize = _debugcon_realize
    dc.vmsd = vmstate_no_state(TYPE_ISA_DEBUGCON)  # bytes go out at once; readback is a property
    dc.user_creatable = True
    dc.categories = ("misc",)
    device_class_set_props(dc, [Property("iobase", "uint32", DEBUGCON_DEFAULT_IOBASE),
                                Property("chardev", "str", ""),
                                Property("readback", "uint32", DEBUGCON_DEFAULT_READBACK)])


type_register(TypeInfo(TYPE_ISA_DEBUGCON, parent=TYPE_ISA_DEVICE, instance_type=ISADebugconState,
                       class_init=_debugcon_class_init))
