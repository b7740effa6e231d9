"""A 256-byte SMBus EEPROM, as the SPD EEPROMs of memory modules (QEMU's
hw/i2c/smbus_eeprom.c).

The device keeps one 8-bit address pointer.  A write sets the pointer from
its first byte (the SMBus command) and stores the rest from there; a read
returns the byte at the pointer and advances it; both wrap at 256.  Reset
restores the initial contents (QEMU does the same: nothing is persistent).

QEMU's q35 puts eight of them at 0x50-0x57 with no contents given, so
every byte reads 0 (``smbus_eeprom_init(smbus, 8, NULL, 0)``);
:func:`smbus_eeprom_init` does the same here.
"""

from __future__ import annotations

from pemu.hw.i2c import SMBusBus
from pemu.migration.vmstate import U8, Buffer, VMStateDescription, VMStateField

SMBUS_EEPROM_SIZE = 256
SMBUS_EEPROM_BASE_ADDRESS = 0x50
SMBUS_EEPROM_MAX = 8


class SMBusEEPROM:
    """One EEPROM; ``init_data`` is what it holds after every reset."""

    def __init__(self, init_data: bytes = b"") -> None:
        if len(init_data) > SMBUS_EEPROM_SIZE:
            raise ValueError(f"smbus-eeprom: {len(init_data)} bytes of contents (at most {SMBUS_EEPROM_SIZE})")
        self.init_data = bytes(init_data).ljust(SMBUS_EEPROM_SIZE, b"\0")
        self.data = bytearray(self.init_data)
        self.offset = 0

    def reset(self) -> None:
        self.data[:] = self.init_data
        self.offset = 0

    def _next(self) -> int:
        value = self.data[self.offset]
        self.offset = (self.offset + 1) % SMBUS_EEPROM_SIZE
        return value

    # -- SMBusDevice ------------------------------------------------------------------
    def quick_command(self, read: bool) -> None:
        pass  # acknowledged, nothing to do

    def send_byte(self, value: int) -> None:
        self.offset = value & 0xFF

    def receive_byte(self) -> int:
        return self._next()

    def write_data(self, command: int, data: bytes) -> None:
        self.offset = command & 0xFF
        for byte in data:
            self.data[self.offset] = byte & 0xFF
            self.offset = (self.offset + 1) % SMBUS_EEPROM_SIZE

    def read_data(self, command: int, length: int) -> bytes:
        self.offset = command & 0xFF
        return bytes(self._next() for _ in range(max(0, min(length, SMBUS_EEPROM_SIZE))))


# Its contents (a guest may write them) and the address pointer (QEMU's vmstate_smbus_eeprom).
VMSTATE_SMBUS_EEPROM = VMStateDescription("smbus-eeprom", version_id=1, fields=[
    VMStateField("data", Buffer(SMBUS_EEPROM_SIZE)),
    VMStateField("offset", U8),
])


def smbus_eeprom_init(bus: SMBusBus, count: int, contents: bytes = b"") -> list[SMBusEEPROM]:
    """Attach ``count`` EEPROMs at 0x50 upwards; ``contents`` is laid out across
    them, 256 bytes each (QEMU's smbus_eeprom_init)."""
    if not 0 <= count <= SMBUS_EEPROM_MAX:
        raise ValueError(f"smbus_eeprom_init: {count} EEPROMs (at most {SMBUS_EEPROM_MAX})")
    eeproms = []
    for i in range(count):
        chunk = contents[i * SMBUS_EEPROM_SIZE:(i + 1) * SMBUS_EEPROM_SIZE]
        eeprom = SMBusEEPROM(chunk)
        bus.attach(SMBUS_EEPROM_BASE_ADDRESS + i, eeprom)
        eeproms.append(eeprom)
    return eeproms
