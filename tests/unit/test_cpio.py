"""The pure-Python newc writer used to build the guest initramfs."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.fixtures.cpio import (
    HEADER_SIZE,
    NEWC_MAGIC,
    CpioError,
    EntryType,
    NewcWriter,
    read_newc,
)


def _sample() -> bytes:
    w = NewcWriter(mtime=1_700_000_000)
    w.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    w.add_file("bin/busybox", bytes(range(256)) * 3 + b"x", 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_device("dev/console", EntryType.CHAR_DEVICE, 5, 1)
    w.add_device("dev/ttyS0", EntryType.CHAR_DEVICE, 4, 64, 0o620)
    w.add_file("lib/modules/6.1.0-1-amd64/modules.dep", b"", 0o644)
    return w.finish()


def test_round_trip_keeps_every_field() -> None:
    entries = {e.name: e for e in read_newc(_sample())}
    assert list(entries) == [
        "init", "bin", "bin/busybox", "bin/sh", "dev", "dev/console", "dev/ttyS0",
        "lib", "lib/modules", "lib/modules/6.1.0-1-amd64",
        "lib/modules/6.1.0-1-amd64/modules.dep",
    ]
    init = entries["init"]
    assert (init.type, init.permissions, init.data) == (EntryType.FILE, 0o755,
                                                         b"#!/bin/sh\necho hi\n")
    assert init.mtime == 1_700_000_000
    assert entries["bin/busybox"].data == bytes(range(256)) * 3 + b"x"
    assert entries["bin"].type is EntryType.DIRECTORY
    assert entries["bin/sh"].type is EntryType.SYMLINK
    assert entries["bin/sh"].data == b"busybox"
    tty = entries["dev/ttyS0"]
    assert (tty.type, tty.rdev_major, tty.rdev_minor, tty.permissions) == (
        EntryType.CHAR_DEVICE, 4, 64, 0o620)
    assert entries["lib/modules/6.1.0-1-amd64/modules.dep"].data == b""
    # Distinct inode numbers: the kernel must not take anything for a hard link.
    inodes = [e.ino for e in entries.values()]
    assert len(set(inodes)) == len(inodes)
    assert all(e.nlink == 1 for e in entries.values() if e.type is not EntryType.DIRECTORY)


def test_layout_is_4_byte_aligned_and_ends_with_trailer() -> None:
    archive = _sample()
    assert archive.startswith(NEWC_MAGIC)
    assert len(archive) % 4 == 0
    # The first member's data starts at a multiple of 4 after "init\0".
    namesize = int(archive[94:102], 16)
    assert namesize == len("init") + 1
    data_start = (HEADER_SIZE + namesize + 3) & ~3
    assert archive[data_start:data_start + 9] == b"#!/bin/sh"
    assert b"TRAILER!!!\0" in archive[-(HEADER_SIZE + 16):]


def test_output_is_deterministic() -> None:
    assert _sample() == _sample()


def test_leading_slash_is_dropped_and_dotdot_refused() -> None:
    w = NewcWriter()
    w.add_file("/etc/motd", b"x")
    assert [e.name for e in read_newc(w.finish())] == ["etc", "etc/motd"]
    with pytest.raises(CpioError, match="leaves the archive root"):
        NewcWriter().add_file("a/../../etc/passwd", b"")


@pytest.mark.parametrize("bad", [
    lambda w: (w.add_file("a", b""), w.add_file("a", b"")),          # duplicate
    lambda w: (w.add_file("a", b""), w.add_file("a/b", b"")),        # parent is a file
    lambda w: w.add_file("a", b"", 0o100644),                        # type bits in perms
    lambda w: w.add_device("d", EntryType.FIFO, 1, 1),               # not a device
    lambda w: w.add_device("d", EntryType.CHAR_DEVICE, 1 << 32, 0),  # field overflow
    lambda w: w.add_symlink("l", ""),                                # empty target
    lambda w: w.add_file("/", b""),                                  # empty name
])
def test_bad_entries_are_refused(bad) -> None:
    with pytest.raises(CpioError):
        bad(NewcWriter())


def test_no_entry_after_finish() -> None:
    w = NewcWriter()
    w.finish()
    with pytest.raises(CpioError, match="finished"):
        w.add_file("late", b"")


@pytest.mark.parametrize("mangle, message", [
    (lambda a: a[:-20], "no trailer|truncated|past the end"),
    (lambda a: b"070707" + a[6:], "bad magic"),
    (lambda a: a[:6] + b"ZZZZZZZZ" + a[14:], "non-hexadecimal"),
])
def test_reader_rejects_corrupt_archives(mangle, message) -> None:
    with pytest.raises(CpioError, match=message):
        read_newc(mangle(_sample()))


def test_reader_rejects_data_past_the_end() -> None:
    w = NewcWriter()
    w.add_file("big", b"y" * 100)
    archive = bytearray(w.finish())
    # filesize is the 7th field (index 6): claim far more than is there.
    archive[6 + 8 * 6:6 + 8 * 7] = b"00010000"
    with pytest.raises(CpioError, match="past the end"):
        read_newc(bytes(archive))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) is not installed")
def test_gnu_cpio_lists_the_same_members() -> None:
    archive = _sample()
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=archive,
                             capture_output=True, check=True).stdout.decode().split()
    assert listing == [e.name for e in read_newc(archive)]


def test_guest_initramfs_is_complete(guest_images) -> None:
    """The archive build_guest wrote: /init, busybox links, nodes, modules."""
    import gzip
    import stat as stat_mod

    from tests.fixtures.build_guest import PROMPT, READY_MARKER, REQUIRED_APPLETS

    entries = {e.name: e for e in read_newc(gzip.decompress(guest_images.initrd.read_bytes()))}
    init = entries["init"]
    assert init.permissions & stat_mod.S_IXUSR
    assert init.data.startswith(b"#!/bin/sh\n")
    assert READY_MARKER.encode() in init.data and PROMPT.encode() in init.data
    assert entries["bin/busybox"].data[:4] == b"\x7fELF"
    for applet in REQUIRED_APPLETS:
        link = entries[f"bin/{applet}"]
        assert (link.type, link.data) == (EntryType.SYMLINK, b"busybox")
    console = entries["dev/console"]
    assert (console.type, console.rdev_major, console.rdev_minor) == (EntryType.CHAR_DEVICE, 5, 1)

    moddir = f"lib/modules/{guest_images.release}"
    dep_lines = entries[f"{moddir}/modules.dep"].data.decode().splitlines()
    deps = {line.split(":")[0]: line.split(":")[1].split() for line in dep_lines}
    assert any(path.endswith("/qemu_fw_cfg.ko") for path in deps)
    for module, needs in deps.items():
        for path in (module, *needs):
            assert path.endswith(".ko")          # decompressed for busybox modprobe
            assert entries[f"{moddir}/{path}"].data[:4] == b"\x7fELF"
            assert path in deps                  # every dependency has its own line
