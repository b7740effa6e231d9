"""Shared pytest fixtures: the Debian guest images and the guest launcher."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

# `tests.fixtures` and `tests.integration` must import the same way under
# `pytest` and `python3 -m pytest`, from the repository root or elsewhere.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import pemu  # noqa: E402,F401  (chooses the Unicorn engine before any test imports unicorn)
from pemu.system.vm import VirtualMachine  # noqa: E402
from pemu.util.vm_context import set_current_vm  # noqa: E402
from tests.fixtures.build_guest import DebianToolsMissing, Guest, ensure_guest  # noqa: E402
from tests.integration.harness import GuestProcess, default_guest_args  # noqa: E402

# Test modules may make timers or address spaces as they are imported: they
# belong to this VM, current while pytest collects.
VirtualMachine().activate()


@pytest.fixture(autouse=True)
def virtual_machine() -> Iterator[VirtualMachine]:
    """Every test builds in a VM of its own, destroyed after it: nothing a
    test makes (address spaces, timers, vCPU threads, chardevs, QOM objects)
    is seen by the next one."""
    vm = VirtualMachine()
    previous = vm.activate()
    try:
        yield vm
    finally:
        vm.destroy()
        set_current_vm(previous)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `kvm` skip where /dev/kvm cannot be opened."""
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        return
    skip = pytest.mark.skip(reason="/dev/kvm is not available")
    for item in items:
        if item.get_closest_marker("kvm") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guest_images() -> Guest:
    """The default guest (stock Debian kernel + busybox initramfs), built once.

    Skips only when the Debian packaging tools are missing; any other build
    failure is an error.
    """
    try:
        return ensure_guest()
    except DebianToolsMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def launch_guest(guest_images: Guest) -> Iterator[Callable[..., GuestProcess]]:
    """Start pemu on the default guest; every process is killed at teardown.

    ``launch_guest(extra=("-smp", "1"), append="console=ttyS0 quiet")`` passes
    extra options and a different command line.
    """
    started: list[GuestProcess] = []

    def launch(*, extra: Sequence[str] = (), append: str | None = None,
               memory: str = "512") -> GuestProcess:
        kwargs = {"append": append} if append is not None else {}
        vm = GuestProcess(default_guest_args(guest_images, memory=memory, extra=extra,
                                             **kwargs))
        started.append(vm)
        return vm

    yield launch
    for vm in started:
        vm.kill()
