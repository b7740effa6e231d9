"""Interrupt lines (QEMU's qemu_irq).

A device raises and lowers its output lines; what is at the other end (a
PIC input, an IOAPIC pin, a test's recorder) is injected when the board is
wired.  Devices depend only on the :class:`IRQLine` protocol, so a unit test
can pass any object with a ``set(level)`` method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class IRQLine(Protocol):
    def set(self, level: int) -> None: ...


IRQHandler = Callable[[int, int], None]  # (n, level)


class IRQ:
    """One input line of a device: ``set(level)`` calls ``handler(n, level)``."""

    __slots__ = ("handler", "n")

    def __init__(self, handler: IRQHandler, n: int = 0) -> None:
        self.handler = handler
        self.n = n

    def set(self, level: int) -> None:
        self.handler(self.n, level)

    def raise_(self) -> None:
        self.handler(self.n, 1)

    def lower(self) -> None:
        self.handler(self.n, 0)

    def pulse(self) -> None:
        self.handler(self.n, 1)
        self.handler(self.n, 0)


class NoIRQ:
    """An unconnected line: setting it does nothing."""

    __slots__ = ()

    def set(self, level: int) -> None:
        pass


def qemu_allocate_irqs(handler: IRQHandler, count: int) -> list[IRQ]:
    return [IRQ(handler, n) for n in range(count)]


class SplitIRQ:
    """One output fanned out to several inputs (QEMU's TYPE_SPLIT_IRQ)."""

    __slots__ = ("outputs",)

    def __init__(self, *outputs: IRQLine) -> None:
        self.outputs = list(outputs)

    def set(self, level: int) -> None:
        for out in self.outputs:
            out.set(level)
