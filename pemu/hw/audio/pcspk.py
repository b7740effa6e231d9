"""Port 0x61, the PC speaker / NMI status and control port (QEMU's hw/audio/pcspk.c).

No sound is produced.  What the guest needs is the PIT channel 2 plumbing:
bit 0 drives the channel 2 gate, bit 1 enables the speaker data, bit 4
toggles on every read (the DRAM refresh indicator Linux's udelay fallbacks
wait on) and bit 5 reflects channel 2's OUT, which Linux polls to calibrate
the TSC.
"""

from __future__ import annotations

from typing import Protocol

from pemu.migration.vmstate import U8, VMStateDescription, VMStateField
from pemu.util.log import guest_error

PCSPK_PORT = 0x61
WINDOW_SIZE = 1

GATE2 = 0x01
SPEAKER_DATA = 0x02
WRITABLE = 0x0F        # gate, speaker data, parity and I/O check enables
REFRESH_TOGGLE = 0x10
OUT2 = 0x20
PIT_SPEAKER_CHANNEL = 2


class SpeakerPIT(Protocol):
    """What the speaker port needs of the 8254."""

    def set_gate(self, channel: int, level: int) -> None: ...
    def get_out(self, channel: int, now_ns: int | None = None) -> int: ...


class PCSpeaker:
    def __init__(self, pit: SpeakerPIT) -> None:
        self.pit = pit
        self.control = 0
        self.refresh = 0

    @property
    def data_on(self) -> bool:
        return bool(self.control & SPEAKER_DATA)

    def reset(self) -> None:
        self.control = 0
        self.refresh = 0
        self.pit.set_gate(PIT_SPEAKER_CHANNEL, 0)

    def read(self, offset: int, size: int = 1) -> int:
        if offset != 0 or size != 1:
            guest_error(f"pcspk: read of size {size} at offset {offset:#x}")
            return (1 << (8 * size)) - 1 if 0 < size <= 8 else 0xFF
        self.refresh ^= REFRESH_TOGGLE
        out = OUT2 if self.pit.get_out(PIT_SPEAKER_CHANNEL) else 0
        return (self.control & WRITABLE) | self.refresh | out

    def write(self, offset: int, value: int, size: int = 1) -> None:
        if offset != 0:
            guest_error(f"pcspk: write at offset {offset:#x}")
            return
        self.control = value & WRITABLE
        self.pit.set_gate(PIT_SPEAKER_CHANNEL, self.control & GATE2)


VMSTATE_PCSPK = VMStateDescription(
    "pcspk", version_id=1,
    fields=[
        VMStateField("control", U8, check=lambda v: not v & ~WRITABLE),
        VMStateField("refresh", U8, check=(0, REFRESH_TOGGLE)),
    ])
"""The port's own bits; channel 2's gate is the PIT's state (QEMU's vmstate_spk)."""
