"""Port 0x92, "system control port A" (QEMU's port92 in hw/i386/pc.c).

Bit 1 gates A20 (the fast alternative to the keyboard controller's output
port); bit 0 going from 0 to 1 resets the machine.  Reads return the last
value written, so the guest sees its own A20 setting.
"""

from __future__ import annotations

from collections.abc import Callable

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.migration.vmstate import U8, VMStateDescription, VMStateField
from pemu.util.log import guest_error

PORT92 = 0x92
WINDOW_SIZE = 1

PORT92_RESET = 0x01
PORT92_A20 = 0x02


class Port92:
    def __init__(self, *, reset_request: Callable[[], None] | None = None,
                 a20_out: IRQLine | None = None) -> None:
        self.reset_request = reset_request
        self.a20_out: IRQLine = a20_out if a20_out is not None else NoIRQ()
        self.outport = 0

    @property
    def a20_enabled(self) -> bool:
        return bool(self.outport & PORT92_A20)

    def reset(self) -> None:
        self.outport &= ~PORT92_A20
        self.a20_out.set(0)

    def read(self, offset: int, size: int = 1) -> int:
        if offset != 0 or size != 1:
            guest_error(f"port92: read of size {size} at offset {offset:#x}")
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0xFF
        return self.outport

    def write(self, offset: int, value: int, size: int = 1) -> None:
        if offset != 0 or size != 1:
            guest_error(f"port92: write of size {size} at offset {offset:#x}")
            return
        old = self.outport
        self.outport = value & 0xFF
        if (old ^ self.outport) & PORT92_A20:
            self.a20_out.set(1 if self.a20_enabled else 0)
        if self.outport & PORT92_RESET and not old & PORT92_RESET:
            if self.reset_request is not None:
                self.reset_request()


VMSTATE_PORT92 = VMStateDescription("port92", version_id=1, fields=[VMStateField("outport", U8)])
