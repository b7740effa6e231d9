"""The i8042 controller driven as firmware and Linux's i8042/atkbd drivers do."""

from __future__ import annotations

import pytest

from pemu.hw.input import i8042 as k
from pemu.hw.input.i8042 import I8042
from tests.unit.fakes import EdgeCounter as Line


class Rig:
    def __init__(self) -> None:
        self.kbd_irq, self.aux_irq, self.a20 = Line(), Line(), Line()
        self.resets = 0
        self.dev = I8042(self.kbd_irq, self.aux_irq, reset_request=self._reset, a20_out=self.a20)

    def _reset(self) -> None:
        self.resets += 1

    def status(self) -> int:
        return self.dev.command_port.read(0)

    def command(self, cmd: int, *data: int) -> None:
        self.dev.command_port.write(0, cmd)
        for byte in data:
            self.dev.data_port.write(0, byte)

    def send(self, byte: int) -> None:
        self.dev.data_port.write(0, byte)

    def drain(self) -> list[int]:
        out = []
        while self.status() & k.STAT_OBF:
            out.append(self.dev.data_port.read(0))
        return out


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_self_test_answers_55_and_sets_system_flag(rig: Rig) -> None:
    assert not rig.status() & k.STAT_SELFTEST
    rig.command(0xAA)
    assert rig.status() & k.STAT_OBF
    assert rig.drain() == [0x55]
    assert rig.status() & k.STAT_SELFTEST


def test_command_byte_read_write(rig: Rig) -> None:
    rig.command(0x20)
    assert rig.drain() == [k.MODE_KBD_INT | k.MODE_AUX_INT]
    rig.command(0x60, 0x47)
    rig.command(0x20)
    assert rig.drain() == [0x47]
    assert rig.status() & k.STAT_SELFTEST  # SYS bit mirrored into the status


def test_interface_tests_and_aux_enable_bits(rig: Rig) -> None:
    rig.command(0xAB)
    rig.command(0xA9)
    assert rig.drain() == [0x00, 0x00]
    rig.command(0xA7)
    rig.command(0x20)
    assert rig.drain()[0] & k.MODE_DISABLE_AUX
    rig.command(0xA8)
    rig.command(0x20)
    assert not rig.drain()[0] & k.MODE_DISABLE_AUX


def test_aux_loopback_raises_irq12(rig: Rig) -> None:
    """Linux's i8042_check_aux: loop 0xA5 through the AUX path, expect IRQ 12."""
    rig.command(0xD3, 0xA5)
    assert rig.aux_irq.level == 1 and rig.kbd_irq.level == 0
    assert rig.status() & (k.STAT_OBF | k.STAT_AUX_OBF) == k.STAT_OBF | k.STAT_AUX_OBF
    assert rig.drain() == [0xA5]
    assert rig.aux_irq.level == 0


def test_mux_probe_sees_a_plain_loopback(rig: Rig) -> None:
    for byte in (0xF0, 0x56, 0xA4):
        rig.command(0xD3, byte)
        assert rig.drain() == [byte]  # the third equal to 0xA4: "not a MUX"


def test_keyboard_reset_and_identify(rig: Rig) -> None:
    rig.send(0xFF)
    assert rig.kbd_irq.level == 1
    assert rig.drain() == [0xFA, 0xAA]
    rig.send(0xF2)
    assert rig.drain() == [0xFA, 0xAB, 0x83]
    rig.command(0x60, k.MODE_KBD_INT | k.MODE_XLATE)
    rig.send(0xF2)
    assert rig.drain() == [0xFA, 0xAB, 0x41]


def test_keyboard_commands_with_arguments(rig: Rig) -> None:
    rig.send(0xED)
    rig.send(0x07)
    assert rig.drain() == [0xFA, 0xFA]
    assert rig.dev.keyboard.leds == 7
    rig.send(0xF0)
    rig.send(0x00)
    assert rig.drain() == [0xFA, 0xFA, 0x02]
    rig.send(0xF3)
    rig.send(0x20)
    rig.send(0xF4)
    rig.send(0xEE)
    assert rig.drain() == [0xFA, 0xFA, 0xFA, 0xEE]
    rig.send(0x42)  # not a command
    assert rig.drain() == [0xFE]


def test_disabled_keyboard_holds_its_data_but_not_the_controllers(rig: Rig) -> None:
    rig.command(0xAD)
    rig.dev.keyboard.queue.append(0x1C)  # a scancode from the keyboard
    rig.command(0xD2, 0x2A)  # a byte the controller writes back as if from the keyboard
    rig.command(0x20)
    assert rig.drain() == [0x2A, k.MODE_KBD_INT | k.MODE_AUX_INT | k.MODE_DISABLE_KBD]
    rig.command(0xAE)
    assert rig.drain() == [0x1C]


def test_aux_loopback_goes_out_while_aux_is_disabled(rig: Rig) -> None:
    """Linux's i8042_check_aux loops a byte back with the AUX port disabled
    and waits for IRQ 12 (QEMU: controller data ignores the disable bit)."""
    rig.command(0xA7)
    rig.command(0xD3, 0x5A)
    assert rig.aux_irq.level == 1 and rig.aux_irq.rising == 1
    assert rig.status() & k.STAT_AUX_OBF
    assert rig.drain() == [0x5A]
    assert rig.aux_irq.level == 0


def test_each_reply_byte_raises_a_new_edge(rig: Rig) -> None:
    """GET ID answers FA AB 83: the edge-triggered PIC must see three interrupts."""
    rig.send(0xF2)
    assert rig.kbd_irq.rising == 1
    assert rig.drain() == [0xFA, 0xAB, 0x83]
    assert rig.kbd_irq.rising == 3 and rig.kbd_irq.level == 0
    assert rig.dev.data_port.read(0) == 0x83  # an empty buffer reads as its last byte


def test_firmware_setup_leaves_a_translated_keyboard(rig: Rig) -> None:
    """As SeaBIOS leaves it: Linux's atkbd then finds "AT Translated Set 2"."""
    rig.command(0x60, 0x00)
    rig.dev.firmware_setup()
    rig.command(0x20)
    assert rig.drain() == [k.MODE_KBD_INT | k.MODE_DISABLE_AUX | k.MODE_XLATE]
    rig.send(0xF2)
    assert rig.drain() == [0xFA, 0xAB, 0x41]
    assert rig.kbd_irq.rising == 4


def test_no_mouse_answers_with_timeout(rig: Rig) -> None:
    rig.command(0xD4, 0xFF)
    assert rig.status() & k.STAT_TIMEOUT
    assert rig.drain() == [0xFE]


def test_reset_pulse_calls_the_callback(rig: Rig) -> None:
    rig.command(0xFF)  # pulse nothing
    assert rig.resets == 0
    rig.command(0xFE)
    assert rig.resets == 1
    rig.command(0xD1, 0x02)  # output port with reset bit low
    assert rig.resets == 2


def test_a20_through_the_output_port(rig: Rig) -> None:
    assert rig.dev.a20_enabled
    rig.command(0xDD)
    assert not rig.dev.a20_enabled and rig.a20.level == 0
    rig.command(0xD0)
    assert rig.drain() == [0x01]
    rig.command(0xD1, 0x03)
    assert rig.dev.a20_enabled and rig.a20.level == 1 and rig.resets == 0


def test_interrupts_follow_the_command_byte(rig: Rig) -> None:
    rig.command(0x60, 0x00)  # no interrupts
    rig.send(0xEE)
    assert rig.kbd_irq.level == 0 and rig.status() & k.STAT_OBF
    rig.command(0x60, k.MODE_KBD_INT)  # reply 0xEE still waiting: IRQ now
    assert rig.kbd_irq.level == 1


def test_hostile_accesses(rig: Rig) -> None:
    assert rig.dev.data_port.read(0) == 0x00  # empty buffer, nothing read yet
    assert rig.dev.data_port.read(1) == 0xFF
    rig.dev.command_port.write(0, 0x1AA, 2)
    for value in range(0xF0):
        rig.command(value)
        rig.send(value)
    rig.drain()
    assert rig.resets == 0
