"""A whole VM's state as sections of one stream (QEMU's migration/savevm.c).

What is saved, in order:

* the virtual clock (QEMU's "timer" section), so that every deadline saved
  by a device means the same instant on the destination;
* every realized device of the VM, walking its QOM tree in creation order,
  each in a section named by its canonical QOM path, with the device class's
  :attr:`~pemu.hw.core.qdev.DeviceClass.vmsd`;
* guest RAM (:mod:`pemu.migration.ram`).

A device class without a description blocks saving
(:class:`MigrationBlocked`, QEMU's "State blocked by non-migratable device").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pemu.hw.core.qdev import DeviceClass, DeviceState
from pemu.migration.vmstate import U64, VMStateDescription, VMStateError, VMStateField
from pemu.qom.object import Object

if TYPE_CHECKING:
    from pemu.system.vm import VirtualMachine


class MigrationBlocked(Exception):
    """Something in the VM cannot be saved (one line naming it)."""


def migratable_devices(vm: VirtualMachine) -> list[tuple[str, DeviceState, VMStateDescription]]:
    """Every realized device of ``vm`` with its canonical QOM path and its
    description, in QOM tree (creation) order; MigrationBlocked names the
    first device that has no description."""
    found: list[tuple[str, DeviceState, VMStateDescription]] = []
    if vm.qom_root is None:
        return found

    def walk(obj: Object, path: str) -> None:
        for name, child in obj.children():
            child_path = f"{path}/{name}"
            if isinstance(child, DeviceState) and child.realized:
                vmsd = _device_class(child).vmsd
                if vmsd is None:
                    raise MigrationBlocked(f"State blocked by non-migratable device '{child_path}' "
                                           f"({child.typename})")
                found.append((child_path, child, vmsd))
            walk(child, child_path)

    walk(vm.qom_root, "")
    return found


def _device_class(dev: DeviceState) -> DeviceClass:
    klass = dev.klass
    assert isinstance(klass, DeviceClass)
    return klass


# --- the virtual clock ("timer") -------------------------------------------------------


class _ClockState:
    """The saved view of the VM's virtual clock: its value while the VM is stopped."""

    def __init__(self, vm: VirtualMachine) -> None:
        self.vm = vm
        self.virtual_ns = 0

    def pre_save(self) -> None:
        virtual = self.vm.timers.virtual
        if virtual.stopped_at is None:
            raise VMStateError("the virtual clock is saved while the VM runs")
        self.virtual_ns = virtual.stopped_at

    def post_load(self, version_id: int) -> None:
        virtual = self.vm.timers.virtual
        if virtual.stopped_at is None:
            raise VMStateError("state loaded into a running VM")
        virtual.stopped_at = self.virtual_ns


def _clock_pre_save(obj: Any) -> None:
    obj.pre_save()


def _clock_post_load(obj: Any, version_id: int) -> None:
    obj.post_load(version_id)


VMSTATE_TIMERS = VMStateDescription(
    "timer", version_id=1,
    fields=[VMStateField("virtual_ns", U64)],
    pre_save=_clock_pre_save, post_load=_clock_post_load)


def clock_state(vm: VirtualMachine) -> _ClockState:
    """The object the "timer" section saves from and loads into."""
    return _ClockState(vm)
