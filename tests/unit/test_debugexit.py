"""isa-debug-exit: the status a write produces, and that it only requests the shutdown."""

from __future__ import annotations

import pytest

from pemu.hw.misc.debugexit import DebugExit, debug_exit_status
from pemu.system import runstate
from pemu.system.runstate import ShutdownCause


@pytest.mark.parametrize("value, size, status", [(0, 1, 1), (1, 1, 3), (0x7F, 1, 0xFF), (0x1FF, 1, 0x1FF),
                                                 (0x1234, 2, 0x2469), (0xFFFFFFFF, 4, 0xFFFFFFFF)])
def test_status_is_value_shifted_with_low_bit_set(value: int, size: int, status: int) -> None:
    assert debug_exit_status(value, size) == status


def test_write_requests_exit_with_status() -> None:
    seen: list[int] = []
    dev = DebugExit(seen.append)
    assert dev.read(0, 1) == 0
    dev.write(0, 5, 1)
    assert seen == [11]


def test_default_request_goes_through_runstate() -> None:
    runstate.take_shutdown_request()
    DebugExit().write(1, 3, 1)
    assert runstate.run_requests().exit_status == 7
    assert runstate.take_shutdown_request() == ShutdownCause.GUEST_SHUTDOWN
