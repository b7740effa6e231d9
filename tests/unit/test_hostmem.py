"""memory-backend-ram: guest RAM is reserved lazily (MAP_NORESERVE), as in QEMU."""

from __future__ import annotations

import os

import pytest

import pemu.backends.hostmem  # noqa: F401  (registers the types)
from pemu.qom.object import QOMError
from pemu.qom.object_interfaces import user_creatable_add

GiB = 1 << 30


def host_ram() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def overcommit_mode() -> int:
    with open("/proc/sys/vm/overcommit_memory") as f:
        return int(f.read())


@pytest.mark.skipif(overcommit_mode() == 2, reason="vm.overcommit_memory=2 refuses any mapping above the commit limit")
def test_guest_ram_larger_than_the_host_is_mapped_lazily() -> None:
    # Without MAP_NORESERVE (0 in Python < 3.13's mmap) the kernel's overcommit
    # heuristic refused this mapping with ENOMEM.
    size = max(64 * GiB, 2 * host_ram() // GiB * GiB)
    backend = user_creatable_add("memory-backend-ram", "i8-bounds-big", {"size": str(size)})
    try:
        view = backend.get_memory().ram_block.view  # type: ignore[attr-defined,union-attr]
        assert len(view) == size
        view[size - 1] = 0x5A   # one page of it is real memory now
        assert view[size - 1] == 0x5A and view[0] == 0
    finally:
        backend.unparent()


def test_guest_ram_beyond_the_address_space_is_one_clear_error() -> None:
    # 1000000 GiB: more than a 47-bit user address space can hold.
    with pytest.raises(QOMError, match=r"^cannot set up guest memory 'i8-bounds-huge': Cannot allocate memory$"):
        user_creatable_add("memory-backend-ram", "i8-bounds-huge", {"size": str(1_000_000 * GiB)})
