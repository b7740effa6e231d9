"""fd sets (-add-fd) and qemu_open's /dev/fdset/N paths."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from pemu.monitor.fds import FdSets, check_inherited_fd
from pemu.system.vm import VirtualMachine
from pemu.util.osdep import qemu_open


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def test_dev_fdset_paths_pick_a_descriptor_by_access_mode(virtual_machine: VirtualMachine,
                                                          pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    virtual_machine.fdsets = FdSets()
    virtual_machine.fdsets.add_fd(4, read_end)
    virtual_machine.fdsets.add_fd(4, write_end, "w")
    out = qemu_open("/dev/fdset/4", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert out not in (read_end, write_end)
    os.write(out, b"hi")
    os.close(out)
    inp = qemu_open("/dev/fdset/4", os.O_RDONLY)
    assert os.read(inp, 2) == b"hi"
    os.close(inp)
    for path, flags, code in [("/dev/fdset/5", os.O_RDONLY, errno.ENOENT), ("/dev/fdset/x", os.O_RDONLY, errno.ENOENT),
                              ("/dev/fdset/4", os.O_RDWR, errno.EACCES)]:
        with pytest.raises(OSError) as info:
            qemu_open(path, flags)
        assert info.value.errno == code


def test_remove_fd_closes_and_forgets(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sets = FdSets()
    sets.add_fd(1, read_end)
    sets.add_fd(1, write_end)
    assert not sets.remove_fd(1, 12345) and not sets.remove_fd(2)
    assert sets.remove_fd(1, read_end)
    with pytest.raises(OSError):
        os.fstat(read_end)
    assert [e.fd for e in sets.sets[1]] == [write_end]
    assert sets.remove_fd(1)
    assert sets.sets == {}


def test_inherited_fd_checks(pipe: tuple[int, int]) -> None:
    read_end, _ = pipe
    assert check_inherited_fd(-1) == "fd option is required and must be non-negative"
    assert check_inherited_fd(2) == "fd cannot be a standard I/O stream"
    assert check_inherited_fd(read_end) == "fd is not valid or already in use"  # close-on-exec: pemu's own
    os.set_inheritable(read_end, True)
    assert check_inherited_fd(read_end) is None
    os.close(read_end)
    assert check_inherited_fd(read_end) == "fd is not valid or already in use"
