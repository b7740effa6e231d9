"""Save → load → compare for the PCI and chipset device descriptions: a
device's state saved in one VM is loaded into a fresh device of a second
VM (its own memory map, clock and QOM tree), saved again and compared."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


def flat_map(space: AddressSpace) -> list[tuple[int, int, str, int, bool]]:
    """An address space's flat view by region names (comparable across VMs)."""
    return [(fr.start, fr.size, fr.mr.name, fr.offset_in_region, fr.readonly) for fr in space.flatview]


# --- two q35 boards in one interpreter (the type registry is per process) ----------------

BOARD_ARGS = ["-machine", "q35", "-m", "128", "-nodefaults", "-display", "none", "-S"]

TWO_BOARDS_PRELUDE = """
import json
from pemu.migration.savevm import VMSTATE_TIMERS, clock_state
from pemu.migration.vmstate import VMStateError, vmstate_load_bytes, vmstate_save_bytes
from pemu.system import vl
from pemu.util import timer

src = vl.qemu_init(SRC_ARGS)
dst = vl.qemu_init(DST_ARGS)
result = {}

def on(vm):
    vm.activate()
    return vm

def find(vm, typename):
    def walk(o):
        for _, child in o.children():
            if child.typename == typename:
                return child
            found = walk(child)
            if found is not None:
                return found
        return None
    found = walk(vm.qom_root)
    assert found is not None, typename
    return found

def io(vm):
    return vm.machine.cpus[0].io

def mem(vm):
    return vm.machine.cpus[0].memory

def cfg_addr(devfn, off):
    return 0x80000000 | (devfn << 8) | (off & 0xFC)

def cfg_read(vm, devfn, off, size=4):
    on(vm)
    io(vm).dispatch_write(0xCF8, cfg_addr(devfn, off), 4)
    return io(vm).dispatch_read(0xCFC + (off & 3), size)

def cfg_write(vm, devfn, off, value, size=4):
    on(vm)
    io(vm).dispatch_write(0xCF8, cfg_addr(devfn, off), 4)
    io(vm).dispatch_write(0xCFC + (off & 3), value, size)

def config_dump(vm, devfn, length=256):
    return [cfg_read(vm, devfn, off) for off in range(0, length, 4)]

def flat(space):
    return [(fr.start, fr.size, fr.mr.name, fr.offset_in_region, fr.readonly) for fr in space.flatview]

def maps(vm):
    on(vm)
    return flat(mem(vm)), flat(io(vm))

def advance(vm, ns):
    on(vm)
    return timer.qemu_clock_advance_virtual_time(timer.qemu_clock_get_ns(timer.QEMU_CLOCK_VIRTUAL) + ns)

def now(vm):
    on(vm)
    return timer.qemu_clock_get_ns(timer.QEMU_CLOCK_VIRTUAL)

def save(typenames):
    '''The source's virtual clock and the named devices, as the stream orders them.'''
    on(src)
    sections = [vmstate_save_bytes(VMSTATE_TIMERS, clock_state(src))]
    for name in typenames:
        dev = find(src, name)
        sections.append(vmstate_save_bytes(dev.klass.vmsd, dev))
    return sections

def load(typenames, sections):
    '''Into the destination: the clock first, then each device; the
    destination device saves the very same bytes again.'''
    on(dst)
    vmstate_load_bytes(VMSTATE_TIMERS, clock_state(dst), sections[0])
    for name, data in zip(typenames, sections[1:]):
        dev = find(dst, name)
        vmstate_load_bytes(dev.klass.vmsd, dev, data)
        assert vmstate_save_bytes(dev.klass.vmsd, dev) == data, name

def refused(typename, data):
    '''The message a fresh device of a third board gives for ``data``.'''
    vm = on(vl.qemu_init(DST_ARGS))
    dev = find(vm, typename)
    try:
        vmstate_load_bytes(dev.klass.vmsd, dev, data)
    except VMStateError as e:
        return str(e)
    return None

def corrupt(data, offset, value):
    return data[:offset] + value + data[offset + len(value):]
"""


def run_two_boards(body: str, src_args: list[str] | None = None,
                   dst_args: list[str] | None = None) -> dict[str, Any]:
    """Run ``body`` in a fresh interpreter after a source and a destination
    q35 board are built (``src``, ``dst``; both stopped, as for migration);
    ``body`` fills ``result``, returned here."""
    import json
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    src_args = BOARD_ARGS if src_args is None else src_args
    dst_args = src_args if dst_args is None else dst_args
    script = (f"SRC_ARGS = {src_args!r}\nDST_ARGS = {dst_args!r}\n" + TWO_BOARDS_PRELUDE
              + textwrap.dedent(body) + "\nprint(json.dumps(result))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
