"""Per-VM state has one owner (pemu.system.vm.VirtualMachine).

Two q35 machines built in one process with different ``-m`` each have their
own memory tree, RAM and QOM tree; a machine built, destroyed and built
again with other options leaves nothing behind (address spaces, RAM, timers,
threads, file descriptors) and starts from scratch.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pemu.system import vl
from pemu.system.vm import VirtualMachine
from pemu.util.main_loop import main_loop
from pemu.util.vm_context import current_vm, set_current_vm

BOARD = ["-machine", "q35", "-nodefaults", "-display", "none", "-S"]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def ram_below_4g(mtree: str) -> int:
    """The size of the ram-below-4g alias in `info mtree` text."""
    match = re.search(r"([0-9a-f]{16})-([0-9a-f]{16}) \(prio 0, ram\): alias ram-below-4g", mtree)
    assert match is not None, mtree
    return int(match.group(2), 16) - int(match.group(1), 16) + 1


class Monitored:
    """A VM built from a command line, with a human monitor writing to a file."""

    def __init__(self, tmp_path: Path, name: str, args: list[str]) -> None:
        self.out = tmp_path / f"{name}-monitor.txt"
        self.vm = vl.qemu_init(BOARD + args + ["-monitor", f"file:{self.out}"])

    def hmp(self, line: str) -> str:
        before = self.out.stat().st_size
        self.vm.monitors[0].handle_command(line)
        return self.out.read_bytes()[before:].decode().replace("\r\n", "\n")


@pytest.fixture
def vms() -> Iterator[list[VirtualMachine]]:
    made: list[VirtualMachine] = []
    yield made
    for vm in made:
        vm.destroy()


def test_two_q35_machines_in_one_process_are_independent(tmp_path: Path, vms: list[VirtualMachine]) -> None:
    small = Monitored(tmp_path, "small", ["-m", "128"])
    vms.append(small.vm)
    big = Monitored(tmp_path, "big", ["-m", "256", "-serial", "null"])
    vms.append(big.vm)
    assert current_vm() is big.vm  # the last one built

    # Each monitor shows its own VM's memory tree, whichever VM is current.
    small_mtree, big_mtree = small.hmp("info mtree"), big.hmp("info mtree")
    assert ram_below_4g(small_mtree) == 128 << 20
    assert ram_below_4g(big_mtree) == 256 << 20
    assert current_vm() is big.vm
    spaces_small, spaces_big = small.vm.memory.address_spaces, big.vm.memory.address_spaces
    assert spaces_small and spaces_big and not set(map(id, spaces_small)) & set(map(id, spaces_big))
    assert not set(map(id, small.vm.memory.ram_blocks)) & set(map(id, big.vm.memory.ram_blocks))

    # Their RAM is their own.
    assert small.vm.machine is not None and big.vm.machine is not None
    small.vm.machine.cpus[0].memory.write(0x1000, b"small")
    big.vm.machine.cpus[0].memory.write(0x1000, b"big!!")
    assert small.vm.machine.cpus[0].memory.read(0x1000, 5) == b"small"
    assert big.vm.machine.cpus[0].memory.read(0x1000, 5) == b"big!!"

    # Their QOM trees are their own: same board, distinct objects, and only
    # the one with -serial has a serial port.
    small_qom, big_qom = small.hmp("info qom-tree"), big.hmp("info qom-tree")
    assert "\n  /machine (pc-q35-" in small_qom and "\n  /machine (pc-q35-" in big_qom
    assert "isa-serial" not in small_qom and "isa-serial" in big_qom
    assert small.vm.qom_root is not big.vm.qom_root
    assert small.vm.machine.vm is small.vm and big.vm.machine.vm is big.vm
    assert small.vm.machine.cpus[0].cpu_index == big.vm.machine.cpus[0].cpu_index == 0
    assert small.hmp("qom-get /objects/pc.ram size") == f"{128 << 20}\n"
    assert big.hmp("qom-get /objects/pc.ram size") == f"{256 << 20}\n"


def test_build_destroy_build_leaves_nothing_behind(tmp_path: Path) -> None:
    main_loop()  # process-wide: made once, not per VM
    outer = current_vm()
    threads_before = set(threading.enumerate())
    fds_before = open_fds()

    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1 << 20))
    first = vl.qemu_init(BOARD + ["-m", "128", "-serial", f"file:{tmp_path / 'com1.txt'}",
                                  "-global", "mc146818rtc.iobase=0x70",
                                  "-drive", f"file={disk},format=raw,if=none,id=disk0"])
    assert first.cpus and first.memory.address_spaces and first.timers.armed() > 0
    assert [g.driver for g in first.global_props] == ["mc146818rtc"] and outer.global_props == []
    assert len(open_fds() - fds_before) >= 2  # the serial's file, the disk image
    blocks = list(first.memory.ram_blocks)
    first.destroy()
    set_current_vm(outer)
    assert set(threading.enumerate()) - threads_before == set()  # no thread of its own survives
    assert open_fds() - fds_before == set()  # nor a file descriptor
    assert first.memory.address_spaces == [] and first.physmem is None
    assert first.timers.armed() == 0 and first.cpus == [] and first.chardevs == {}
    assert first.qom_root is None and first.machine is None
    assert all(block.mmap.closed for block in blocks)

    second = vl.qemu_init(BOARD + ["-m", "256", "-smp", "1"])
    try:
        assert second is current_vm() and second is not first
        assert second.machine is not None and second.machine.ram_size == 256 << 20
        assert second.global_props == [] and second.serial_hds == []
        assert second.machine.cpus[0].cpu_index == 0
        assert second.phase.name == "MACHINE_READY"
        assert first.memory.address_spaces == []  # building the second left the first alone
    finally:
        second.destroy()
        set_current_vm(outer)
    assert set(threading.enumerate()) - threads_before == set()  # no thread of its own survives
    assert open_fds() - fds_before == set()  # nor a file descriptor


def test_a_second_command_line_does_not_inherit_the_first_ones_options() -> None:
    """The option tables are process-wide (as QEMU's); each command line starts them empty."""
    outer = current_vm()
    first = vl.qemu_init(BOARD + ["-m", "128", "-machine", "hpet=off", "-name", "first"])
    try:
        assert first.machine is not None and not first.machine.hpet_enabled  # type: ignore[attr-defined]
    finally:
        first.destroy()
        set_current_vm(outer)
    second = vl.qemu_init(BOARD + ["-m", "128"])
    try:
        assert second.machine is not None and second.machine.hpet_enabled  # type: ignore[attr-defined]
        assert second.machine.name_ is None
    finally:
        second.destroy()
        set_current_vm(outer)


def test_a_failed_build_leaves_nothing_behind() -> None:
    main_loop()
    outer = current_vm()
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    with pytest.raises(vl.UserError):
        vl.qemu_init(BOARD + ["-m", "128", "-device", "no-such-device"])
    assert current_vm() is outer
    assert set(threading.enumerate()) - threads_before == set()  # no thread of its own survives
    assert open_fds() - fds_before == set()  # nor a file descriptor
