"""The MC146818 RTC/CMOS with an injected clock and host time."""

from __future__ import annotations

import calendar
from collections.abc import Callable

import pytest

from pemu.hw.rtc import mc146818rtc as r
from pemu.hw.rtc.mc146818rtc import MC146818RTC, pc_cmos_init_memory
from tests.unit.fakes import EdgeCounter as Line
from tests.unit.fakes import ManualTimer as Timer

NS = 1_000_000_000
# Tuesday 2024-02-27 13:45:58 UTC, 0.25 s into the second.
HOST_NS = calendar.timegm((2024, 2, 27, 13, 45, 58, 0, 0, 0)) * NS + NS // 4


class Rig:
    def __init__(self) -> None:
        self.now = 5 * NS
        self.timers: list[Timer] = []
        self.irq = Line()
        self.rtc = MC146818RTC(self.irq, clock=lambda: self.now, host_time_ns=lambda: HOST_NS,
                               timer_factory=self._timer)

    def _timer(self, cb: Callable[[], None]) -> Timer:
        t = Timer(cb)
        self.timers.append(t)
        return t

    def advance(self, ns: int) -> None:
        end = self.now + ns
        while True:
            due = [t for t in self.timers if 0 <= t.expire <= end]
            if not due:
                break
            t = min(due, key=lambda t: t.expire)
            self.now = max(self.now, t.expire)
            t.expire = -1
            t.cb()
        self.now = end

    def get(self, index: int) -> int:
        self.rtc.write(0, index)
        return self.rtc.read(1)

    def put(self, index: int, value: int) -> None:
        self.rtc.write(0, index)
        self.rtc.write(1, value)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def clock_regs(rig: Rig) -> list[int]:
    return [rig.get(i) for i in (r.RTC_SECONDS, r.RTC_MINUTES, r.RTC_HOURS, r.RTC_DAY_OF_WEEK,
                                 r.RTC_DAY_OF_MONTH, r.RTC_MONTH, r.RTC_YEAR, r.RTC_IBM_CENTURY_BYTE)]


def test_bcd_24h_from_host_time_then_advancing(rig: Rig) -> None:
    assert clock_regs(rig) == [0x58, 0x45, 0x13, 0x03, 0x27, 0x02, 0x24, 0x20]
    rig.advance(NS * 3 // 4)
    assert rig.get(r.RTC_SECONDS) == 0x59
    rig.advance(NS)
    assert clock_regs(rig)[:3] == [0x00, 0x46, 0x13]


def test_binary_and_12_hour_formats(rig: Rig) -> None:
    rig.put(r.RTC_REG_B, r.REG_B_DM)  # binary, 12 hour
    assert clock_regs(rig) == [58, 45, 0x80 | 1, 3, 27, 2, 24, 20]
    rig.put(r.RTC_REG_B, 0)  # BCD, 12 hour
    assert rig.get(r.RTC_HOURS) == 0x81


def test_nmi_bit_is_not_part_of_the_index(rig: Rig) -> None:
    rig.rtc.write(0, 0x80 | r.RTC_REG_D)
    assert rig.rtc.read(1) == r.REG_D_VRT
    assert rig.rtc.nmi_disabled
    assert rig.rtc.read(0) == 0xFF


def test_guest_sets_the_time_with_set_bit(rig: Rig) -> None:
    rig.put(r.RTC_REG_B, r.REG_B_SET | r.REG_B_24H)
    rig.put(r.RTC_HOURS, 0x08)
    rig.put(r.RTC_MINUTES, 0x00)
    rig.put(r.RTC_SECONDS, 0x00)
    rig.put(r.RTC_YEAR, 0x30)
    rig.advance(10 * NS)  # held while SET
    assert rig.get(r.RTC_SECONDS) == 0x00
    rig.put(r.RTC_REG_B, r.REG_B_24H)
    rig.advance(NS)
    assert clock_regs(rig)[:3] == [0x01, 0x00, 0x08]
    assert rig.get(r.RTC_YEAR) == 0x30
    assert rig.rtc.rtc_ns() // NS == calendar.timegm((2030, 2, 27, 8, 0, 1, 0, 0, 0))


def test_invalid_time_from_guest_is_rejected_without_exception(rig: Rig) -> None:
    rig.put(r.RTC_REG_B, r.REG_B_SET | r.REG_B_24H)
    rig.put(r.RTC_MONTH, 0x13)
    rig.put(r.RTC_DAY_OF_MONTH, 0xFF)
    rig.put(r.RTC_REG_B, r.REG_B_24H)
    assert rig.get(r.RTC_YEAR) == 0x24  # the clock kept its old time


def test_uip_bit_just_before_the_update(rig: Rig) -> None:
    assert not rig.get(r.RTC_REG_A) & r.REG_A_UIP
    rig.advance(NS * 3 // 4 - 200_000)
    assert rig.get(r.RTC_REG_A) == r.REG_A_UIP | 0x26
    rig.advance(300_000)
    assert rig.get(r.RTC_REG_A) == 0x26


def test_periodic_interrupt_timing_and_reg_c_clear(rig: Rig) -> None:
    rig.put(r.RTC_REG_A, 0x26)  # 1024 Hz
    rig.put(r.RTC_REG_B, r.REG_B_24H | r.REG_B_PIE)
    rig.advance(NS // 1024 - 1000)
    assert rig.irq.level == 0
    rig.advance(2000)
    assert rig.irq.level == 1
    assert rig.get(r.RTC_REG_C) == r.REG_C_IRQF | r.REG_C_PF
    assert rig.irq.level == 0
    assert rig.get(r.RTC_REG_C) == 0
    start = rig.irq.rising
    for _ in range(1024):
        rig.advance(NS // 1024)
        rig.get(r.RTC_REG_C)
    assert rig.irq.rising - start == pytest.approx(1024, abs=1)


def test_periodic_flag_without_interrupt_is_computed_on_read(rig: Rig) -> None:
    rig.put(r.RTC_REG_A, 0x2F)  # 2 Hz, PIE off
    rig.get(r.RTC_REG_C)
    rig.advance(NS // 2 + 1)
    assert rig.get(r.RTC_REG_C) == r.REG_C_PF
    assert rig.irq.level == 0


def test_update_ended_and_alarm_interrupts(rig: Rig) -> None:
    rig.put(r.RTC_SECONDS_ALARM, 0x00)
    rig.put(r.RTC_MINUTES_ALARM, 0x46)
    rig.put(r.RTC_HOURS_ALARM, 0xC0)  # any hour
    rig.put(r.RTC_REG_A, 0x20)  # no periodic flag
    rig.put(r.RTC_REG_B, r.REG_B_24H | r.REG_B_UIE | r.REG_B_AIE)
    rig.advance(NS * 3 // 4 + 1)
    assert rig.irq.level == 1
    assert rig.get(r.RTC_REG_C) == r.REG_C_IRQF | r.REG_C_UF
    rig.advance(NS)  # 13:46:00: the alarm time
    assert rig.get(r.RTC_REG_C) == r.REG_C_IRQF | r.REG_C_UF | r.REG_C_AF
    rig.advance(NS)
    assert rig.get(r.RTC_REG_C) == r.REG_C_IRQF | r.REG_C_UF


def test_enabling_an_interrupt_with_its_flag_set_raises(rig: Rig) -> None:
    rig.put(r.RTC_REG_A, 0x20)
    rig.get(r.RTC_REG_C)
    rig.advance(NS)  # an update passed with UIE off
    assert rig.irq.level == 0
    rig.put(r.RTC_REG_B, r.REG_B_24H | r.REG_B_UIE)
    assert rig.irq.level == 1
    assert rig.get(r.RTC_REG_C) == r.REG_C_IRQF | r.REG_C_UF
    assert rig.irq.level == 0


def test_divider_reset_holds_then_updates_500ms_later(rig: Rig) -> None:
    rig.put(r.RTC_REG_A, 0x70)  # divider in reset
    rig.advance(5 * NS)
    assert rig.get(r.RTC_SECONDS) == 0x58
    rig.put(r.RTC_REG_A, 0x26)
    rig.advance(NS // 2 - 1000)
    assert rig.get(r.RTC_SECONDS) == 0x58
    rig.advance(2000)
    assert rig.get(r.RTC_SECONDS) == 0x59


def test_cmos_ram_and_reset(rig: Rig) -> None:
    rig.put(0x40, 0xAB)
    assert rig.get(0x40) == 0xAB
    rig.rtc.set_cmos(0x7F, 0x1FF)
    assert rig.get(0x7F) == 0xFF
    rig.put(r.RTC_REG_B, r.REG_B_24H | r.REG_B_PIE)
    rig.rtc.reset()
    assert rig.get(r.RTC_REG_B) == r.REG_B_24H and rig.get(0x40) == 0xAB
    with pytest.raises(ValueError):
        rig.rtc.set_cmos(0x80, 0)


def test_bad_accesses(rig: Rig) -> None:
    assert rig.rtc.read(2) == 0xFF
    assert rig.rtc.read(1, 2) == 0xFFFF
    rig.rtc.write(3, 0)
    rig.put(r.RTC_REG_C, 0xFF)
    rig.put(r.RTC_REG_D, 0)
    assert rig.get(r.RTC_REG_D) == r.REG_D_VRT
    for value in range(256):
        rig.put(r.RTC_REG_A, value)
        rig.put(r.RTC_REG_B, value)
        rig.put(r.RTC_HOURS, value)
        rig.get(r.RTC_HOURS)
        rig.get(r.RTC_REG_C)
        rig.advance(1_000_000)


def cmos_bytes(rtc: MC146818RTC, *indexes: int) -> list[int]:
    return [rtc.get_cmos(i) for i in indexes]


def test_cmos_memory_bytes_512mib(rig: Rig) -> None:
    pc_cmos_init_memory(rig.rtc, below_4g_mem_size=512 << 20, above_4g_mem_size=0, cpu_count=1)
    c = rig.rtc
    assert cmos_bytes(c, 0x15, 0x16) == [0x80, 0x02]          # 640 KiB
    assert cmos_bytes(c, 0x17, 0x18, 0x30, 0x31) == [0xFF] * 4  # capped at 65535 KiB
    assert cmos_bytes(c, 0x34, 0x35) == [0x00, 0x1F]          # (512-16) MiB / 64 KiB = 7936
    assert cmos_bytes(c, 0x5B, 0x5C, 0x5D, 0x5F) == [0, 0, 0, 0]
    assert c.get_cmos(0x14) == 0x06


def test_cmos_memory_bytes_4gib_split_2g_2g(rig: Rig) -> None:
    pc_cmos_init_memory(rig.rtc, below_4g_mem_size=2 << 30, above_4g_mem_size=2 << 30, cpu_count=4)
    c = rig.rtc
    assert cmos_bytes(c, 0x34, 0x35) == [0x00, 0x7F]          # 32512
    assert cmos_bytes(c, 0x5B, 0x5C, 0x5D) == [0x00, 0x80, 0x00]  # 2 GiB / 64 KiB = 32768
    assert c.get_cmos(0x5F) == 3


def test_cmos_memory_bytes_small_guest(rig: Rig) -> None:
    pc_cmos_init_memory(rig.rtc, below_4g_mem_size=8 << 20, above_4g_mem_size=0, cpu_count=1)
    c = rig.rtc
    assert cmos_bytes(c, 0x17, 0x18) == [0x00, 0x1C]  # 7168 KiB
    assert cmos_bytes(c, 0x34, 0x35) == [0, 0]


@pytest.mark.parametrize("date, days", [
    ((1970, 1, 1), 0),
    ((1969, 12, 31), -1),
    ((2000, 2, 29), 11016),
    ((2000, 3, 1), 11017),
    ((2026, 11, 30), 20787),
    ((2100, 3, 1), 47541),
    ((1, 1, 1), -719162),
])
def test_days_since_epoch(date: tuple[int, int, int], days: int) -> None:
    from pemu.hw.rtc.mc146818rtc import days_since_epoch

    assert days_since_epoch(*date) == days


@pytest.mark.parametrize("year, month, days", [
    (2024, 2, 29), (2023, 2, 28), (1900, 2, 28), (2000, 2, 29), (2023, 4, 30),
])
def test_days_in_month(year: int, month: int, days: int) -> None:
    from pemu.hw.rtc.mc146818rtc import days_in_month

    assert days_in_month(year, month) == days
