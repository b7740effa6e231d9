"""The PC's legacy ISA devices as QOM/qdev types.

Each type wraps a plain register model (pemu.hw.intc.i8259, pemu.hw.timer.i8254,
pemu.hw.rtc.mc146818rtc, pemu.hw.char.serial, pemu.hw.input.i8042, ...):
realize builds the model with its interrupt lines taken from the ISA bus and
maps its register window into port I/O; reset resets the model.  The names
are QEMU's ("isa-serial", "mc146818rtc", "isa-pit", ...), so -device and
-global address them as in QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pemu.hw.core.irq import IRQLine
from pemu.hw.core.qdev import DeviceClass, Property, device_class_set_props
from pemu.hw.i386 import memmap
from pemu.hw.isa.isa_bus import TYPE_ISA_DEVICE, ISADevice
from pemu.qom.object import ObjectClass, QOMError, TypeInfo, object_class_check, type_register
from pemu.system.runstate import ShutdownCause, qemu_system_reset_request
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.migration.vmstate import VMStateDescription

TYPE_ISA_SERIAL = "isa-serial"
TYPE_I8259 = "isa-i8259"
TYPE_PIT = "isa-pit"
TYPE_PCSPK = "isa-pcspk"
TYPE_MC146818_RTC = "mc146818rtc"
TYPE_I8042 = "i8042"
TYPE_PORT92 = "port92"
TYPE_IOPORT80 = "ioport80"


def _guest_reset() -> None:
    qemu_system_reset_request(ShutdownCause.GUEST_RESET)


def _reset_model(dev: Any) -> None:
    """Device reset of the devices here: reset the register model realize made."""
    dev.model.reset()


def _model_vmsd(name: str, model_vmsd: VMStateDescription) -> VMStateDescription:
    """The QOM device's description: its register model, described in the model's module."""
    from pemu.migration.vmstate import Struct, VMStateDescription, VMStateField

    return VMStateDescription(name, version_id=1, fields=[VMStateField("model", Struct(model_vmsd))])


def _isa_type(name: str, instance_type: type, realize: Callable[[Any], None], desc: str,
              props: list[Property] | None = None, user_creatable: bool = False,
              categories: tuple[str, ...] = ("misc",),
              instance_init: Callable[[Any], None] | None = None,
              vmsd: Callable[[], VMStateDescription] | None = None) -> None:
    """``vmsd`` returns the device's state description (imported when the class is built)."""
    def class_init(klass: ObjectClass, data: Any) -> None:
        dc = object_class_check(klass, DeviceClass)
        dc.realize = realize
        if vmsd is not None:
            dc.vmsd = vmsd()
        dc.reset = _reset_model
        dc.desc = desc
        dc.user_creatable = user_creatable
        dc.categories = categories
        if props:
            device_class_set_props(dc, props)

    type_register(TypeInfo(name, parent=TYPE_ISA_DEVICE, instance_type=instance_type, class_init=class_init,
                           instance_init=instance_init))


# --- 8259 PIC pair ---------------------------------------------------------------------------


class ISAPICState(ISADevice):
    """Both 8259s of the PC (master at 0x20, slave at 0xA0, ELCR at 0x4D0).

    ``int_output`` must be set by the board before realize: it is the INTR
    line to the boot CPU."""

    model: Any
    int_output: IRQLine | None


def _pic_realize(dev: Any) -> None:
    from pemu.hw.intc.i8259 import PICPair

    if dev.int_output is None:
        raise QOMError("isa-i8259: the INTR output is not connected")
    dev.model = pic = PICPair(dev.int_output)
    dev.register_model("pic", memmap.PIC_MASTER_IOBASE, 2, pic.master.read, pic.master.write)
    dev.register_model("pic", memmap.PIC_SLAVE_IOBASE, 2, pic.slave.read, pic.slave.write)
    dev.register_model("elcr", memmap.ELCR_IOBASE, 2, pic.elcr.read, pic.elcr.write)


# --- 8254 PIT and the port 0x61 speaker/gate port -----------------------------------------------------


class ISAPITState(ISADevice):
    model: Any
    iobase: int


def _pit_realize(dev: Any) -> None:
    from pemu.hw.timer.i8254 import PIT

    dev.model = pit = PIT(dev.get_irq(0))
    dev.register_model("pit", dev.iobase, 4, pit.read, pit.write)


class PCSpkState(ISADevice):
    model: Any
    pit: Any  # the ISAPITState whose channel 2 drives the speaker


def _pcspk_realize(dev: Any) -> None:
    from pemu.hw.audio.pcspk import PCSpeaker

    if dev.pit is None:
        raise QOMError("isa-pcspk: no PIT connected")
    dev.model = spk = PCSpeaker(dev.pit.model)
    dev.register_model("pcspk", memmap.PCSPK_IOBASE, 1, spk.read, spk.write)


# --- MC146818 RTC ---------------------------------------------------------------------------


class RTCState(ISADevice):
    model: Any
    iobase: int


def _rtc_realize(dev: Any) -> None:
    from pemu.hw.rtc.mc146818rtc import MC146818RTC

    dev.model = rtc = MC146818RTC(dev.get_irq(memmap.RTC_ISA_IRQ))
    dev.register_model("rtc", dev.iobase, 2, rtc.read, rtc.write)


# --- 16550A UART -----------------------------------------------------------------------------


class ISASerialState(ISADevice):
    model: Any
    index: int
    iobase: int
    irq: int
    chardev: str
    chr: Any  # the Chardev set by the board (serial_hd) or found by the chardev property
    backend: Any


def _serial_realize(dev: Any) -> None:
    from pemu.chardev import CharBackend
    from pemu.chardev.registry import qemu_chr_find
    from pemu.hw.char.serial import SerialUART

    if not 0 <= dev.index < len(memmap.COM_IOBASES):
        raise QOMError(f"Max. supported number of ISA serial ports is {len(memmap.COM_IOBASES)}.")
    if dev.iobase < 0:
        dev.iobase = memmap.COM_IOBASES[dev.index]
    if dev.irq < 0:
        dev.irq = memmap.COM_IRQS[dev.index]
    iobase, irq = dev.iobase, dev.irq
    chr_ = dev.chr
    if chr_ is None and dev.chardev:
        chr_ = qemu_chr_find(dev.chardev)
        if chr_ is None:
            raise QOMError(f"Property 'isa-serial.chardev' can't find value '{dev.chardev}'")
    if chr_ is not None:
        dev.chardev = chr_.label
    dev.backend = backend = CharBackend(chr_) if chr_ is not None else None
    dev.model = model = SerialUART(dev.get_irq(irq), backend,
                                    on_can_receive=backend.accept_input if backend else None,
                                    name=f"serial{dev.index}")
    if backend is not None:
        backend.set_handlers(model.can_receive, model.receive, None)
    dev.register_model("serial", iobase, 8, model.read, model.write)


def _serial_init(obj: Any) -> None:
    obj.chr = None
    obj.backend = None
    vm = current_vm()  # ports are numbered per VM, COM1 first (QEMU: serial_isa_realizefn's index)
    obj.index = vm.isa_serial_count
    vm.isa_serial_count += 1


# --- i8042 keyboard controller, port 0x92, port 0x80 -------------------------------------------------


class I8042State(ISADevice):
    model: Any


def _i8042_realize(dev: Any) -> None:
    from pemu.hw.input.i8042 import I8042

    dev.model = kbd = I8042(dev.get_irq(1), dev.get_irq(12), reset_request=_guest_reset)
    dev.register_model("i8042-data", memmap.I8042_DATA, 1, kbd.data_port.read, kbd.data_port.write)
    dev.register_model("i8042-cmd", memmap.I8042_CMD, 1, kbd.command_port.read, kbd.command_port.write)


class Port92State(ISADevice):
    model: Any


def _port92_realize(dev: Any) -> None:
    from pemu.hw.misc.port92 import Port92

    dev.model = p = Port92(reset_request=_guest_reset)
    dev.register_model("port92", memmap.PORT92, 1, p.read, p.write)


class IOPort80State(ISADevice):
    model: Any


def _ioport80_realize(dev: Any) -> None:
    from pemu.hw.misc.ioport80 import IOPort80

    dev.model = p = IOPort80()
    dev.register_model("ioport80", memmap.IOPORT80, 1, p.read, p.write)


def _pic_vmsd() -> VMStateDescription:
    from pemu.hw.intc.i8259 import VMSTATE_PIC_PAIR

    return _model_vmsd(TYPE_I8259, VMSTATE_PIC_PAIR)


def _pit_vmsd() -> VMStateDescription:
    from pemu.hw.timer.i8254 import VMSTATE_PIT

    return _model_vmsd(TYPE_PIT, VMSTATE_PIT)


def _pcspk_vmsd() -> VMStateDescription:
    from pemu.hw.audio.pcspk import VMSTATE_PCSPK

    return _model_vmsd(TYPE_PCSPK, VMSTATE_PCSPK)


def _rtc_vmsd() -> VMStateDescription:
    from pemu.hw.rtc.mc146818rtc import VMSTATE_MC146818RTC

    return _model_vmsd(TYPE_MC146818_RTC, VMSTATE_MC146818RTC)


def _i8042_vmsd() -> VMStateDescription:
    from pemu.hw.input.i8042 import VMSTATE_I8042

    return _model_vmsd(TYPE_I8042, VMSTATE_I8042)


def _port92_vmsd() -> VMStateDescription:
    from pemu.hw.misc.port92 import VMSTATE_PORT92

    return _model_vmsd(TYPE_PORT92, VMSTATE_PORT92)


def _ioport80_vmsd() -> VMStateDescription:
    from pemu.hw.misc.ioport80 import VMSTATE_IOPORT80

    return _model_vmsd(TYPE_IOPORT80, VMSTATE_IOPORT80)


def _serial_vmsd() -> VMStateDescription:
    from pemu.hw.char.serial import VMSTATE_SERIAL

    return _model_vmsd(TYPE_ISA_SERIAL, VMSTATE_SERIAL)


def _register() -> None:
    _isa_type(TYPE_I8259, ISAPICState, _pic_realize, "ISA PIC pair (8259)", instance_init=_pic_init,
              vmsd=_pic_vmsd)
    _isa_type(TYPE_PIT, ISAPITState, _pit_realize, "ISA PIT (8254)",
              [Property("iobase", "uint32", memmap.PIT_IOBASE)], vmsd=_pit_vmsd)
    _isa_type(TYPE_PCSPK, PCSpkState, _pcspk_realize, "PC speaker and PIT gate port (0x61)",
              instance_init=_pcspk_init, vmsd=_pcspk_vmsd)
    _isa_type(TYPE_MC146818_RTC, RTCState, _rtc_realize, "MC146818 RTC/CMOS",
              [Property("iobase", "uint32", memmap.RTC_IOBASE)], vmsd=_rtc_vmsd)
    _isa_type(TYPE_I8042, I8042State, _i8042_realize, "i8042 keyboard controller", categories=("input",),
              vmsd=_i8042_vmsd)
    _isa_type(TYPE_PORT92, Port92State, _port92_realize, "port 0x92 (A20, fast reset)", vmsd=_port92_vmsd)
    _isa_type(TYPE_IOPORT80, IOPort80State, _ioport80_realize, "port 0x80 (POST code sink)",
              vmsd=_ioport80_vmsd)
    from pemu.hw.misc.debugexit import register_debug_exit_type

    register_debug_exit_type()

    def serial_class_init(klass: ObjectClass, data: Any) -> None:
        dc = object_class_check(klass, DeviceClass)
        dc.realize = _serial_realize
        dc.reset = _reset_model
        dc.desc = "16550A UART on the ISA bus"
        dc.vmsd = _serial_vmsd()
        dc.categories = ("input",)
        device_class_set_props(dc, [
            Property("index", "uint32", None),
            Property("iobase", "int32", -1),
            Property("irq", "int32", -1),
            Property("chardev", "str", ""),
        ])

    type_register(TypeInfo(TYPE_ISA_SERIAL, parent=TYPE_ISA_DEVICE, instance_type=ISASerialState,
                           class_init=serial_class_init, instance_init=_serial_init))


def _pic_init(obj: Any) -> None:
    obj.int_output = None


def _pcspk_init(obj: Any) -> None:
    obj.pit = None


_register()
