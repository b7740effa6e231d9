"""Run pemu with a fault injected into one real device model (for the tests only).

    python -m tests.integration.fault_injection HANDLER -- PEMU-ARGS...

From its first call on, the chosen handler raises ``RuntimeError("injected
fault")`` instead of doing its work:

    mmio-read     the HPET's register read       (a memory read at 0xfed00000)
    pio-write     the RTC's port write            (an I/O write at 0x70)
    timer         the RTC's periodic-interrupt timer callback
    chardev-read  the 16550's receive handler     (input on its chardev)

The class is patched in this process before pemu builds the machine, then
pemu's own ``main`` runs unchanged: the fault travels through the real
accelerator, vCPU threads, main loop and monitor.  Nothing of this is part
of pemu itself: no option, environment variable or device type ships for it.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from pemu.hw.char.serial import SerialUART
from pemu.hw.rtc.mc146818rtc import MC146818RTC
from pemu.hw.timer.hpet import HPET

INJECTIONS: dict[str, tuple[type, str]] = {
    "mmio-read": (HPET, "read"),
    "pio-write": (MC146818RTC, "write"),
    "timer": (MC146818RTC, "_periodic_tick"),
    "chardev-read": (SerialUART, "receive"),
}


def inject(handler: str) -> None:
    cls, name = INJECTIONS[handler]
    original = getattr(cls, name)

    @functools.wraps(original)
    def faulty(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault")

    setattr(cls, name, faulty)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in INJECTIONS or argv[1] != "--":
        sys.exit(f"usage: python -m tests.integration.fault_injection {{{','.join(INJECTIONS)}}} -- PEMU-ARGS")
    inject(argv[0])
    sys.argv = ["pemu", *argv[2:]]
    from pemu.system.main import main as pemu_main

    pemu_main()


if __name__ == "__main__":
    main(sys.argv[1:])
