"""File descriptor sets (QEMU's monitor/fds.c): descriptors the parent
process hands over with ``-add-fd fd=N,set=S[,opaque=TEXT]``, opened by
path as ``/dev/fdset/S`` wherever pemu opens a host file
(:func:`pemu.util.osdep.qemu_open`), listed by query-fdsets and dropped by
remove-fd.  A VM owns its sets (``vm.fdsets``).
"""

from __future__ import annotations

import fcntl
import os


class FdsetEntry:
    __slots__ = ("fd", "opaque")

    def __init__(self, fd: int, opaque: str | None) -> None:
        self.fd = fd
        self.opaque = opaque


class FdSets:
    """One VM's fd sets, by set id."""

    def __init__(self) -> None:
        self.sets: dict[int, list[FdsetEntry]] = {}

    def add_fd(self, fdset_id: int, fd: int, opaque: str | None = None) -> None:
        self.sets.setdefault(fdset_id, []).append(FdsetEntry(fd, opaque))

    def remove_fd(self, fdset_id: int, fd: int | None = None) -> bool:
        """Close ``fd`` of the set (every fd without one); False if there was nothing to remove."""
        entries = self.sets.get(fdset_id)
        if entries is None:
            return False
        gone = [e for e in entries if fd is None or e.fd == fd]
        if not gone:
            return False
        for entry in gone:
            try:
                os.close(entry.fd)
            except OSError:
                pass
        remaining = [e for e in entries if e not in gone]
        if remaining:
            self.sets[fdset_id] = remaining
        else:
            del self.sets[fdset_id]
        return True

    def dup_fd(self, fdset_id: int, flags: int) -> int:
        """A duplicate of a descriptor of the set opened with the access mode of
        ``flags`` (monitor_fdset_dup_fd_add); OSError ENOENT or EACCES if none."""
        entries = self.sets.get(fdset_id)
        if entries is None:
            raise FileNotFoundError(2, os.strerror(2))
        wanted = flags & os.O_ACCMODE
        for entry in entries:
            if fcntl.fcntl(entry.fd, fcntl.F_GETFL) & os.O_ACCMODE == wanted:
                return fcntl.fcntl(entry.fd, fcntl.F_DUPFD_CLOEXEC, 0)
        raise PermissionError(13, os.strerror(13))

    def close_all(self) -> None:
        for fdset_id in list(self.sets):
            self.remove_fd(fdset_id)


def check_inherited_fd(fd: int) -> str | None:
    """Why ``fd`` cannot be added to a set (QEMU's -add-fd checks), or None."""
    if fd < 0:
        return "fd option is required and must be non-negative"
    if fd <= 2:
        return "fd cannot be a standard I/O stream"
    try:
        fd_flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return "fd is not valid or already in use"
    if fd_flags & fcntl.FD_CLOEXEC:
        return "fd is not valid or already in use"  # one of pemu's own
    return None
