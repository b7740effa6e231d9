"""The SMBus EEPROM (SPD) model: one address pointer, wrapping at 256, reset to its initial contents."""

from __future__ import annotations

import pytest

from pemu.hw.i2c import SMBusBus
from pemu.hw.i2c.smbus_eeprom import SMBUS_EEPROM_SIZE, SMBusEEPROM, smbus_eeprom_init


def test_pointer_set_by_command_and_advanced_by_reads() -> None:
    e = SMBusEEPROM(bytes(range(256)))
    assert e.read_data(0x10, 2) == b"\x10\x11"
    assert e.receive_byte() == 0x12          # current-address read continues
    e.send_byte(0xFF)
    assert e.receive_byte() == 0xFF
    assert e.receive_byte() == 0x00          # wraps at 256


def test_writes_wrap_and_reset_restores_the_contents() -> None:
    e = SMBusEEPROM(b"\x80\x08")
    e.write_data(0xFE, b"\x01\x02\x03")
    assert e.read_data(0xFE, 3) == b"\x01\x02\x03"
    assert e.read_data(0x00, 2) == b"\x03\x08"
    e.reset()
    assert e.read_data(0x00, 2) == b"\x80\x08" and e.data[0xFE:] == b"\0\0" and e.offset == 2


@pytest.mark.parametrize("length", [-1, 0, 1, 300])
def test_read_length_is_bounded(length: int) -> None:
    assert len(SMBusEEPROM().read_data(0, length)) == max(0, min(length, SMBUS_EEPROM_SIZE))


def test_init_puts_eight_at_0x50_and_refuses_more() -> None:
    bus = SMBusBus("i2c")
    eeproms = smbus_eeprom_init(bus, 8, bytes([7]) * 300)
    assert sorted(bus.devices) == list(range(0x50, 0x58))
    assert bus.find(0x50) is eeproms[0] and eeproms[1].data[:44] == bytes([7]) * 44 and eeproms[1].data[44] == 0
    with pytest.raises(ValueError):
        smbus_eeprom_init(SMBusBus("i2c"), 9)
    with pytest.raises(ValueError):
        SMBusEEPROM(bytes(257))
