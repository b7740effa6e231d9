"""Migratable state of the i8042 (with the PS/2 keyboard's queue), port 0x92
and port 0x80: save, load into fresh devices, compare, run on; refusals."""

from __future__ import annotations

from collections import deque

import pytest

from pemu.hw.input import i8042 as k
from pemu.hw.input.i8042 import VMSTATE_I8042, KbdCommand
from pemu.hw.misc.ioport80 import VMSTATE_IOPORT80, IOPort80
from pemu.hw.misc.port92 import VMSTATE_PORT92, Port92
from pemu.migration.vmstate import vmstate_load_bytes, vmstate_save_bytes
from tests.unit.test_i8042 import Rig
from tests.unit.vmstate_helpers import assert_refused, patched, roundtrip, saved_with


def _busy() -> Rig:
    rig = Rig()
    rig.command(k.Command.SELF_TEST)            # 0x55 in the output buffer
    rig.command(k.Command.WRITE_KBD_OBUF, 0x77)  # a byte queued behind it
    rig.send(KbdCommand.GET_ID)                 # ACK + two ID bytes on the keyboard's queue
    rig.send(KbdCommand.SET_LEDS)               # ACK; the keyboard waits for the LED byte
    rig.command(k.Command.WRITE_MODE)           # the controller waits for the command byte
    return rig


def test_i8042_roundtrip_and_queued_bytes_drain_after_load() -> None:
    src, dst = _busy(), Rig()
    roundtrip(VMSTATE_I8042, src.dev, dst.dev)
    assert dst.status() == src.status()
    dst.kbd_irq.rising = 0
    # Run on: the pending command byte write, then the queued bytes in order,
    # each raising IRQ 1 again after the previous one was read.
    for rig in (src, dst):
        rig.send(k.MODE_KBD_INT | k.MODE_XLATE)
    assert dst.drain() == src.drain() == [0x55, 0x77, 0xFA, 0xAB, 0x83, 0xFA]
    assert dst.kbd_irq.rising == 5     # the first byte's edge was made before the save
    dst.send(0x07)                                # the LED byte the keyboard was waiting for
    assert dst.dev.keyboard.leds == 7 and dst.drain() == [0xFA]


@pytest.mark.parametrize(("path", "value", "match"), [
    ("keyboard.scancode_set", 4, "scancode_set"),
    ("keyboard.leds", 8, "leds"),
    ("keyboard.expecting", KbdCommand.ECHO, "expecting"),
    ("expecting", k.Command.SELF_TEST, "expecting"),
    ("_kbd_level", 2, "_kbd_level"),
])
def test_i8042_refuses_impossible_state(path: str, value: object, match: str) -> None:
    data = saved_with(VMSTATE_I8042, _busy().dev, path, value)
    assert_refused(VMSTATE_I8042, Rig().dev, data, match)


def test_i8042_empty_buffer_after_a_mouse_byte_round_trips() -> None:
    """Reading a mouse byte leaves the buffer empty with its AUX mark: a
    state every booted guest reaches, so it must load."""
    src = Rig()
    src.dev.aux_queue.append(0x08)
    src.dev._update()
    assert src.dev.obuf_aux and src.dev.read_data() == 0x08
    assert src.dev.obuf is None and src.dev.obuf_aux
    dst = Rig()
    vmstate_load_bytes(VMSTATE_I8042, dst.dev, vmstate_save_bytes(VMSTATE_I8042, src.dev))
    assert dst.dev.obuf is None and dst.dev.read_status() == src.dev.read_status()


@pytest.mark.parametrize("queue", ["keyboard.queue", "aux_queue", "controller_queue"])
def test_i8042_refuses_a_queue_longer_than_the_device_keeps(queue: str) -> None:
    src = Rig()
    item: object = (0xC3, True) if queue == "controller_queue" else 0xC3
    item_bytes = b"\xc3\x01" if queue == "controller_queue" else b"\xc3"
    full = saved_with(VMSTATE_I8042, src.dev, queue, deque([item] * k.QUEUE_LIMIT))
    limit = k.QUEUE_LIMIT.to_bytes(4, "big")
    data = patched(full, limit + item_bytes * k.QUEUE_LIMIT,
                   (k.QUEUE_LIMIT + 1).to_bytes(4, "big") + item_bytes * (k.QUEUE_LIMIT + 1))
    assert_refused(VMSTATE_I8042, Rig().dev, data, "exceeds the maximum")


def test_port92_and_ioport80_roundtrip() -> None:
    p92, p80 = Port92(), IOPort80()
    p92.write(0, 0x02)
    p80.write(0, 0x5A)
    d92, d80 = Port92(), IOPort80()
    roundtrip(VMSTATE_PORT92, p92, d92)
    roundtrip(VMSTATE_IOPORT80, p80, d80)
    assert d92.read(0) == 0x02 and d92.a20_enabled and d80.last_post_code == 0x5A
    # Run on: a rising bit 0 still resets the machine; a cleared bit 1 still gates A20.
    resets: list[int] = []
    d92.reset_request = lambda: resets.append(1)
    d92.write(0, 0x03)
    d92.write(0, 0x00)
    assert resets == [1] and not d92.a20_enabled
    assert vmstate_save_bytes(VMSTATE_PORT92, d92) == b"\x00"
