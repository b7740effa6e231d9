"""I2C/SMBus (QEMU's hw/i2c): the bus a host controller drives and the
protocol its devices implement.

The bus is a plain map from 7-bit address to device; a transaction to an
address with no device is not acknowledged, which the controller reports
to the guest (the ICH9's DEV_ERR).  Devices implement :class:`SMBusDevice`:
each SMBus command is one call that returns the data or raises
:class:`SMBusNack`.
"""

from __future__ import annotations

from typing import Protocol

SMBUS_ADDRESS_MASK = 0x7F
SMBUS_BLOCK_MAX = 32


class SMBusNack(Exception):
    """The addressed device did not acknowledge (or refused the command)."""


class SMBusDevice(Protocol):
    """One target on the bus; ``read`` is the R/W bit of the address phase."""

    def quick_command(self, read: bool) -> None: ...

    def send_byte(self, value: int) -> None: ...

    def receive_byte(self) -> int: ...

    def write_data(self, command: int, data: bytes) -> None: ...

    def read_data(self, command: int, length: int) -> bytes: ...

    def reset(self) -> None: ...


class SMBusBus:
    """The wires between a host controller and its targets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.devices: dict[int, SMBusDevice] = {}

    def attach(self, address: int, device: SMBusDevice) -> None:
        if not 0 <= address <= SMBUS_ADDRESS_MASK:
            raise ValueError(f"{self.name}: SMBus address {address:#x} is not 7-bit")
        if address in self.devices:
            raise ValueError(f"{self.name}: address {address:#x} is already in use")
        self.devices[address] = device

    def detach(self, address: int) -> None:
        self.devices.pop(address & SMBUS_ADDRESS_MASK, None)

    def find(self, address: int) -> SMBusDevice | None:
        return self.devices.get(address & SMBUS_ADDRESS_MASK)

    def reset(self) -> None:
        """Reset every device on the bus (the controller's reset reaches its bus)."""
        for device in self.devices.values():
            device.reset()
