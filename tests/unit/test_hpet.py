"""HPET registers, counter and comparators against an injected clock."""

from __future__ import annotations

import pytest

from pemu.hw.timer.hpet import (
    HPET,
    HPET_CFG,
    HPET_CFG_ENABLE,
    HPET_CFG_LEGACY,
    HPET_COUNTER,
    HPET_ID,
    HPET_STATUS,
    HPET_TN_32BIT,
    HPET_TN_ENABLE,
    HPET_TN_PERIODIC,
    HPET_TN_SETVAL,
    HPET_TN_TYPE_LEVEL,
    hpet_fw_cfg_bytes,
)
from tests.unit.fakes import EdgeCounter, FakeClock


def timer_reg(n: int, reg: int) -> int:
    return 0x100 + 0x20 * n + reg


@pytest.fixture
def rig() -> tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]:
    clock = FakeClock(5_000_000_000, max_fires=10_000)
    lines = [EdgeCounter() for _ in range(24)]
    pit: list[bool] = []
    hpet = HPET(lines, clock=clock, timer_factory=clock.timer, pit_enabled=pit.append)
    return hpet, clock, lines, pit


def test_capabilities(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, *_ = rig
    assert hpet.read(HPET_ID, 4) == 0x8086A201
    assert hpet.read(HPET_ID + 4, 4) == 10_000_000
    assert hpet.read(HPET_ID, 8) == (10_000_000 << 32) | 0x8086A201
    cfg = hpet.read(timer_reg(0, 0), 8)
    assert cfg & 0x30 == 0x30            # periodic and 64-bit capable
    assert cfg >> 32 == 0x00FF0104       # route capability
    hpet.write(HPET_ID, 0, 4)            # read-only
    assert hpet.read(HPET_ID, 4) == 0x8086A201
    assert hpet.read(HPET_ID, 2) == 0    # bad size: logged, 0
    assert hpet_fw_cfg_bytes(0x8086A201)[:13] == bytes([1]) + (0x8086A201).to_bytes(4, "little") + (0xFED00000).to_bytes(8, "little")


def test_counter_runs_only_when_enabled(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, clock, *_ = rig
    assert hpet.read(HPET_COUNTER, 4) == 0
    clock.advance(1000)
    assert hpet.read(HPET_COUNTER, 4) == 0
    hpet.write(HPET_COUNTER, 500, 4)
    hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
    clock.advance(1000)                      # 100 ticks of 10 ns
    assert hpet.read(HPET_COUNTER, 8) == 600
    hpet.write(HPET_COUNTER, 0, 4)           # ignored while enabled
    assert hpet.read(HPET_COUNTER, 4) == 600
    hpet.write(HPET_CFG, 0, 4)
    clock.advance(1000)
    assert hpet.read(HPET_COUNTER, 4) == 600
    hpet.write(HPET_COUNTER + 4, 1, 4)
    assert hpet.read(HPET_COUNTER, 8) == (1 << 32) | 600


def test_one_shot_comparator_level_and_status(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, clock, lines, _ = rig
    hpet.write(timer_reg(2, 0), HPET_TN_ENABLE | HPET_TN_TYPE_LEVEL | (20 << 9), 4)
    hpet.write(timer_reg(2, 8), 1000, 8)
    hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
    clock.advance(9_990)
    assert lines[20].level == 0
    clock.advance(10)
    assert lines[20].level == 1 and hpet.read(HPET_STATUS, 4) == 0b100
    hpet.write(HPET_STATUS, 0b100, 4)          # write 1 to clear
    assert lines[20].level == 0 and hpet.read(HPET_STATUS, 4) == 0
    clock.advance(1_000_000)                   # one-shot: no second interrupt
    assert lines[20].rising == 1


def test_periodic_timer_with_setval(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, clock, lines, _ = rig
    # As Linux programs it: 32-bit mode, SETVAL, then the first match, then the period.
    hpet.write(timer_reg(2, 0), HPET_TN_ENABLE | HPET_TN_PERIODIC | HPET_TN_SETVAL | HPET_TN_32BIT | (2 << 9), 4)
    hpet.write(timer_reg(2, 8), 100_000, 4)    # first match and period: 1 ms
    assert hpet.read(timer_reg(2, 0), 4) & HPET_TN_SETVAL == 0
    hpet.write(timer_reg(2, 8), 50_000, 4)     # without SETVAL: only the period changes
    assert hpet.read(timer_reg(2, 8), 8) == 100_000
    hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
    clock.advance(1_000_000)
    assert lines[2].rising == 1
    assert hpet.read(timer_reg(2, 8), 8) == 150_000
    clock.advance(5_000_000)
    assert lines[2].rising == 11


def test_periodic_catches_up_without_looping(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, clock, lines, _ = rig
    hpet.write(timer_reg(2, 0), HPET_TN_ENABLE | HPET_TN_PERIODIC | HPET_TN_SETVAL | (2 << 9), 4)
    hpet.write(timer_reg(2, 8), 1, 4)          # a 10 ns period: re-armed at most every 10 us
    hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
    clock.ns += 10**9                          # the host stalled for a second
    clock.advance(0)
    assert lines[2].rising == 1
    assert hpet.read(timer_reg(2, 8), 8) > hpet.read(HPET_COUNTER, 8) - 1


def test_32bit_mode_truncates(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, clock, lines, _ = rig
    hpet.write(timer_reg(1, 8), 0x1_2345_6789, 8)
    hpet.write(timer_reg(1, 0), HPET_TN_32BIT, 4)
    assert hpet.read(timer_reg(1, 8), 8) == 0x2345_6789
    hpet.write(timer_reg(1, 0xC), 0xFFFF, 4)   # high half ignored in 32-bit mode
    assert hpet.read(timer_reg(1, 8), 8) == 0x2345_6789


def test_legacy_replacement_routes_and_pit(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, clock, lines, pit = rig
    hpet.write(HPET_CFG, HPET_CFG_ENABLE | HPET_CFG_LEGACY, 4)
    assert pit == [True, False]                # reset enables, legacy mode cuts the PIT off
    hpet.write(timer_reg(0, 0), HPET_TN_ENABLE, 4)
    hpet.write(timer_reg(1, 0), HPET_TN_ENABLE, 4)
    now = hpet.read(HPET_COUNTER, 8)
    hpet.write(timer_reg(0, 8), now + 100, 8)
    hpet.write(timer_reg(1, 8), now + 200, 8)
    clock.advance(3_000)
    assert lines[0].rising == 1 and lines[8].rising == 1
    hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
    assert pit[-1] is True


def test_disabling_timer_stops_it(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, clock, lines, _ = rig
    hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
    hpet.write(timer_reg(2, 0), HPET_TN_ENABLE | (3 << 9), 4)
    hpet.write(timer_reg(2, 8), hpet.read(HPET_COUNTER, 8) + 100, 8)
    hpet.write(timer_reg(2, 0), 3 << 9, 4)
    clock.advance(10_000)
    assert lines[3].rising == 0


def test_bad_accesses_do_not_raise(rig: tuple[HPET, FakeClock, list[EdgeCounter], list[bool]]) -> None:
    hpet, *_ = rig
    hpet.write(timer_reg(7, 0), 0xFFFFFFFF, 4)   # no such timer
    assert hpet.read(timer_reg(7, 0), 4) == 0
    hpet.write(0x3FC, 1, 4)
    hpet.write(timer_reg(0, 0), 31 << 9 | HPET_TN_ENABLE, 4)  # route outside the capability: logged
    hpet.write(HPET_CFG, HPET_CFG_ENABLE, 4)
    hpet.write(timer_reg(0, 8), 1, 4)
    hpet.write(3, 1, 4)
