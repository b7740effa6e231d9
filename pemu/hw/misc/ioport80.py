"""Port 0x80, the POST code port, as a sink (QEMU's ioport80 in hw/i386/pc.c).

Linux writes to it for a short I/O delay (io_delay); firmware writes POST
codes.  Writes are dropped and reads return all ones, as in QEMU.  The last
value written is kept, which helps when debugging firmware.
"""

from __future__ import annotations

from pemu.migration.vmstate import U8, VMStateDescription, VMStateField

IOPORT80 = 0x80
WINDOW_SIZE = 1


class IOPort80:
    def __init__(self) -> None:
        self.last_post_code = 0

    def reset(self) -> None:
        self.last_post_code = 0

    def read(self, offset: int, size: int = 1) -> int:
        return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0xFF

    def write(self, offset: int, value: int, size: int = 1) -> None:
        if offset == 0:
            self.last_post_code = value & 0xFF


VMSTATE_IOPORT80 = VMStateDescription("ioport80", version_id=1, fields=[VMStateField("last_post_code", U8)])
