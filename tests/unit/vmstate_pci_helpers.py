"""Save → load → compare for the PCI and chipset device descriptions: a
device's state saved in one VM is loaded into a fresh device of a second
VM (its own memory map, clock and QOM tree), saved again and compared."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pemu.migration.vmstate import VMStateDescription, vmstate_load_bytes, vmstate_save_bytes
from pemu.system.memory import AddressSpace
from pemu.system.vm import VirtualMachine
from pemu.util.vm_context import set_current_vm


@contextmanager
def current(vm: VirtualMachine) -> Iterator[VirtualMachine]:
    """Make ``vm`` the current VM for the block (building or driving its devices)."""
    previous = vm.activate()
    try:
        yield vm
    finally:
        set_current_vm(previous)


@contextmanager
def destination_vm() -> Iterator[VirtualMachine]:
    """A second, fresh VM (the migration's destination), destroyed afterwards;
    the caller switches to it with :func:`current`."""
    vm = VirtualMachine()
    try:
        yield vm
    finally:
        vm.destroy()


def round_trip(vmsd: VMStateDescription, src: Any, dst: Any) -> bytes:
    """Save ``src``, load the bytes into ``dst`` and check that ``dst`` saves
    the very same bytes; returns them."""
    data = vmstate_save_bytes(vmsd, src)
    vmstate_load_bytes(vmsd, dst, data)
    assert vmstate_save_bytes(vmsd, dst) == data, f"{vmsd.name}: the loaded device saves other bytes"
    return data


def flat_map(space: AddressSpace) -> list[tuple[int, int, str, int, bool]]:
    """An address space's flat view by region names (comparable across VMs)."""
    return [(fr.start, fr.size, fr.mr.name, fr.offset_in_region, fr.readonly) for fr in space.flatview]
