"""bzImage setup-header parsing, with synthetic images and every corrupt case."""

from __future__ import annotations

import struct

import pytest

from pemu.hw.i386.bzimage import (
    LinuxBootError,
    LoadFlags,
    parse_bzimage,
    setup_header_bytes,
)
from pemu.util.error import UserError


def make_bzimage(*, setup_sects: int = 4, version: int = 0x020F, loadflags: int = 0x01,
                 kernel_size: int = 4096, relocatable: int = 1, magic: bytes = b"HdrS",
                 boot_flag: int = 0xAA55, init_size: int = 0x200000,
                 pref_address: int = 0x1000000, kernel_alignment: int = 0x200000,
                 cmdline_size: int = 2047, initrd_addr_max: int = 0x7FFFFFFF,
                 payload: tuple[int, int] = (0x100, 0x200), jump_len: int = 0x6A,
                 syssize: int | None = None) -> bytes:
    """A minimal image: boot sector + setup sectors + `kernel_size` bytes of kernel."""
    sects = setup_sects or 4
    img = bytearray((sects + 1) * 512 + kernel_size)
    img[0x1F1] = setup_sects
    struct.pack_into("<I", img, 0x1F4, (kernel_size + 15) // 16 if syssize is None else syssize)
    struct.pack_into("<H", img, 0x1FE, boot_flag)
    img[0x200] = 0xEB
    img[0x201] = jump_len
    img[0x202:0x206] = magic
    struct.pack_into("<H", img, 0x206, version)
    img[0x211] = loadflags
    struct.pack_into("<I", img, 0x214, 0x100000)
    struct.pack_into("<I", img, 0x22C, initrd_addr_max)
    struct.pack_into("<I", img, 0x230, kernel_alignment)
    img[0x234] = relocatable
    img[0x235] = 21
    struct.pack_into("<H", img, 0x236, 0x7F)
    struct.pack_into("<I", img, 0x238, cmdline_size)
    struct.pack_into("<II", img, 0x248, *payload)
    struct.pack_into("<Q", img, 0x258, pref_address)
    struct.pack_into("<I", img, 0x260, init_size)
    struct.pack_into("<I", img, 0x264, 0x190)
    # A recognisable protected-mode kernel.
    k0 = (sects + 1) * 512
    img[k0:k0 + 4] = b"KERN"
    return bytes(img)


def test_parses_fields():
    hdr = parse_bzimage(make_bzimage())
    assert hdr.setup_sects == 4
    assert hdr.setup_size == 5 * 512
    assert hdr.kernel_size == 4096
    assert hdr.version == 0x020F and hdr.version_str == "2.15"
    assert hdr.boot_flag == 0xAA55
    assert hdr.header == int.from_bytes(b"HdrS", "little")
    assert hdr.loadflags & LoadFlags.LOADED_HIGH
    assert hdr.code32_start == 0x100000
    assert hdr.initrd_addr_max == 0x7FFFFFFF
    assert hdr.kernel_alignment == 0x200000
    assert hdr.relocatable and hdr.min_alignment == 21
    assert hdr.xloadflags == 0x7F
    assert hdr.cmdline_size == 2047
    assert (hdr.payload_offset, hdr.payload_length) == (0x100, 0x200)
    assert hdr.pref_address == 0x1000000
    assert hdr.init_size == 0x200000
    assert hdr.handover_offset == 0x190
    assert hdr.header_end == 0x202 + 0x6A


def test_setup_sects_zero_means_four():
    hdr = parse_bzimage(make_bzimage(setup_sects=0))
    assert hdr.setup_sects == 4
    assert hdr.setup_size == 2560


def test_other_setup_size():
    data = make_bzimage(setup_sects=30)
    hdr = parse_bzimage(data)
    assert hdr.setup_size == 31 * 512
    assert data[hdr.setup_size:hdr.setup_size + 4] == b"KERN"


def test_fields_newer_than_version_read_as_zero():
    hdr = parse_bzimage(make_bzimage(version=0x0206, payload=(0, 0)))
    assert hdr.cmdline_size == 2047            # 2.06 has it
    assert hdr.pref_address == 0               # 2.10
    assert hdr.init_size == 0                  # 2.10
    assert hdr.xloadflags == 0                 # 2.12
    assert hdr.min_alignment == 0              # 2.10
    assert hdr.handover_offset == 0            # 2.11


def test_header_bytes_follow_the_jump_and_are_capped():
    data = make_bzimage(jump_len=0x6A)
    hdr = parse_bzimage(data)
    raw = setup_header_bytes(data, hdr)
    assert len(raw) == 0x26C - 0x1F1
    assert raw[0x202 - 0x1F1:0x206 - 0x1F1] == b"HdrS"
    data = make_bzimage(jump_len=0xFF)          # a hostile jump cannot overrun boot_params
    assert len(setup_header_bytes(data, parse_bzimage(data))) == 0x290 - 0x1F1


@pytest.mark.parametrize("data, words", [
    (b"", "too short"),
    (b"\0" * 0x207, "too short"),
    (make_bzimage(magic=b"HdrX"), "not a Linux bzImage"),
    (b"\x7fELF" + b"\0" * 4000, "not a Linux bzImage"),
    (make_bzimage(boot_flag=0x1234), "boot flag 0x1234"),
    (make_bzimage(version=0x0205), "boot protocol 2.05 is too old"),
    (make_bzimage(version=0x0100), "too old"),
    (make_bzimage(loadflags=0), "zImage"),
    (make_bzimage(kernel_size=4096)[:5 * 512], "truncated"),
    (make_bzimage(kernel_size=4096)[:3000], "truncated"),
    (make_bzimage(setup_sects=200)[:4000], "truncated"),
    (make_bzimage(payload=(0x100, 0x10000)), "compressed payload ends"),
    (make_bzimage(syssize=0x1000), "announces"),
])
def test_corrupt_images_are_refused(data, words):
    with pytest.raises(LinuxBootError) as exc:
        parse_bzimage(data)
    assert words in str(exc.value)
    assert isinstance(exc.value, UserError)
    assert "\n" not in str(exc.value)


def test_not_relocatable_is_accepted():
    # Loaded at 0x100000, a non-relocatable kernel is where it expects to be.
    assert not parse_bzimage(make_bzimage(relocatable=0)).relocatable
