"""Port 0x61 (speaker / PIT channel 2), port 0x92 (A20, fast reset) and port 0x80."""

from __future__ import annotations

from pemu.hw.audio.pcspk import PCSpeaker
from pemu.hw.misc.ioport80 import IOPort80
from pemu.hw.misc.port92 import Port92


class FakePIT:
    def __init__(self) -> None:
        self.gates: list[tuple[int, int]] = []
        self.out = 0

    def set_gate(self, channel: int, level: int) -> None:
        self.gates.append((channel, level))

    def get_out(self, channel: int, now_ns: int | None = None) -> int:
        assert channel == 2
        return self.out


class Line:
    def __init__(self) -> None:
        self.level = -1

    def set(self, level: int) -> None:
        self.level = level


def test_port61_gate_data_and_out() -> None:
    pit = FakePIT()
    spk = PCSpeaker(pit)
    spk.write(0, 0x03)
    assert pit.gates[-1] == (2, 1) and spk.data_on
    assert spk.read(0) & 0x0F == 0x03
    assert not spk.read(0) & 0x20
    pit.out = 1
    assert spk.read(0) & 0x20
    spk.write(0, 0xF0)  # read-only bits are not stored
    assert pit.gates[-1] == (2, 0)
    assert spk.read(0) & 0x0F == 0


def test_port61_refresh_bit_toggles_on_every_read() -> None:
    spk = PCSpeaker(FakePIT())
    bits = [spk.read(0) & 0x10 for _ in range(4)]
    assert bits == [0x10, 0, 0x10, 0]


def test_port61_bad_access() -> None:
    spk = PCSpeaker(FakePIT())
    assert spk.read(1) == 0xFF
    spk.write(1, 0x01)


def test_port92_a20_and_reset_on_rising_bit0() -> None:
    resets = []
    a20 = Line()
    p = Port92(reset_request=lambda: resets.append(1), a20_out=a20)
    p.write(0, 0x02)
    assert p.a20_enabled and a20.level == 1 and p.read(0) == 0x02
    assert resets == []
    p.write(0, 0x03)
    assert resets == [1]
    p.write(0, 0x03)  # no new rising edge
    assert resets == [1]
    p.write(0, 0x00)
    assert not p.a20_enabled and a20.level == 0
    assert p.read(0, 2) == 0xFFFF


def test_ioport80_is_a_sink() -> None:
    port = IOPort80()
    port.write(0, 0x5A)
    assert port.read(0) == 0xFF
    assert port.read(0, 2) == 0xFFFF
    assert port.last_post_code == 0x5A
