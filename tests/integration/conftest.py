"""Session fixtures for the disk guests: images, kernels, the root initramfs.

Each one builds its product on first use (minutes for the kernel, seconds to a
minute for an image) and finds it in the cache afterwards; ``.ci/run`` builds
them all before pytest starts.  A test that asks for one gets it or an error:
a build failure is a test error, never a skip.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.build_disk import (
    DiskImage,
    RootInitrd,
    StockParts,
    ensure_disk,
    ensure_root_initrd,
    ensure_stock_parts,
)
from tests.fixtures.build_kernel import Kernel, ensure_kernel
from tests.fixtures.recipes import logger
from tests.integration.disk_guest import disk_copy


@pytest.fixture(scope="session")
def built_kernel() -> Kernel:
    """The kernel built from Debian's linux-source-6.1 with AHCI, ext4, e1000e built in."""
    return ensure_kernel(verbose=False)


@pytest.fixture(scope="session")
def stock_parts() -> StockParts:
    """Debian's stock kernel package unpacked (with kmod's indexes) and busybox-static."""
    return ensure_stock_parts(logger("build_disk", False))


@pytest.fixture(scope="session")
def root_initrd() -> RootInitrd:
    """Debian's stock kernel and the initramfs that mounts root= (ahci, sd_mod, ext4)."""
    return ensure_root_initrd(verbose=False)


@pytest.fixture(scope="session")
def small_disk() -> DiskImage:
    """The cached busybox + dropbear image (read it, or boot a disk_copy of it)."""
    return ensure_disk("small", verbose=False)


@pytest.fixture(scope="session")
def debian_disk() -> DiskImage:
    """The cached Debian minbase + systemd + openssh-server image."""
    return ensure_disk("debian", verbose=False)


@pytest.fixture
def writable_disk(tmp_path: Path) -> Callable[[DiskImage], DiskImage]:
    """``writable_disk(debian_disk)``: a private copy in tmp_path to boot read-write."""
    return lambda disk: disk_copy(disk, tmp_path)
