"""Which virtual machine the process is working on (QEMU's ``current_machine``).

Every piece of per-VM state (address spaces, RAM blocks, CPUs, timers, run
state, chardevs, monitors, the QOM tree) belongs to one
:class:`~pemu.system.vm.VirtualMachine`.  Code that QEMU reaches through
``current_machine`` or through a global of its own (``address_space_memory``,
``main_loop_tlg``, ``runstate``...) reaches it here: ``current_vm()`` is the
VM being built or run.  Only this pointer is process-wide, and building a
second VM, or destroying one, never touches the first one's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pemu.system.vm import VirtualMachine


class NoVirtualMachine(RuntimeError):
    """Per-VM state was asked for while no VM exists."""


class _Current:
    __slots__ = ("vm",)

    def __init__(self) -> None:
        self.vm: VirtualMachine | None = None


_current = _Current()


def current_vm() -> VirtualMachine:
    vm = _current.vm
    if vm is None:
        raise NoVirtualMachine("no virtual machine: create one (pemu.system.vm.VirtualMachine)")
    return vm


def current_vm_or_none() -> VirtualMachine | None:
    return _current.vm


def set_current_vm(vm: VirtualMachine | None) -> VirtualMachine | None:
    """Make ``vm`` the current one; returns the one it replaces."""
    previous, _current.vm = _current.vm, vm
    return previous
