"""q35's split of RAM around the PCI hole, table-tested."""

from __future__ import annotations

import pytest

from pemu.hw.i386.pc_q35 import q35_ram_split
from pemu.qom.object import QOMError

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize("ram, align, max_below, below, above", [
    (128 * MiB, True, 0, 128 * MiB, 0),
    (512 * MiB, True, 0, 512 * MiB, 0),
    # Just under the MMCONFIG window: everything stays below 4G.
    (0xB0000000 - MiB, True, 0, 0xB0000000 - MiB, 0),
    # At the window: 2 GiB below, the rest above (gigabyte alignment).
    (0xB0000000, True, 0, 2 * GiB, 0xB0000000 - 2 * GiB),
    (4 * GiB, True, 0, 2 * GiB, 2 * GiB),
    (24 * GiB, True, 0, 2 * GiB, 22 * GiB),
    # Old machine types without gigabyte alignment fill up to the window.
    (4 * GiB, False, 0, 0xB0000000, 4 * GiB - 0xB0000000),
    # max-ram-below-4g lowers the limit.
    (4 * GiB, True, 1 * GiB, 1 * GiB, 3 * GiB),
    (512 * MiB, True, 256 * MiB, 256 * MiB, 256 * MiB),
])
def test_q35_ram_split(ram: int, align: bool, max_below: int, below: int, above: int) -> None:
    assert q35_ram_split(ram, align, max_below) == (below, above)


def test_max_ram_below_4g_above_4g_is_refused() -> None:
    with pytest.raises(QOMError):
        q35_ram_split(GiB, True, 5 * GiB)
