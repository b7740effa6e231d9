"""The Linux/x86 bzImage setup header (Documentation/arch/x86/boot.rst).

A bzImage is the real-mode setup code (``setup_sects`` sectors after the
boot sector) followed by the protected-mode kernel.  The setup header at
offset 0x1F1 describes both halves; a loader reads it, fills in a few
fields (loader type, command line, initrd) and copies it into the
``boot_params`` page it hands to the kernel.

The kernel image is user input: every field is read with explicit bounds,
and a file that is not a usable bzImage is refused with one
:class:`LinuxBootError` line.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

from pemu.util.error import UserError

SETUP_HEADER_OFFSET = 0x1F1
"""Where struct setup_header starts, in the file and in boot_params."""
SETUP_HEADER_LIMIT = 0x290
"""boot_params reserves 0x1F1..0x290 for the header (edd_mbr_sig_buffer follows)."""
HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
SECTOR_SIZE = 512
DEFAULT_SETUP_SECTS = 4
"""``setup_sects == 0`` means 4, for compatibility with very old kernels."""

MIN_BOOT_PROTOCOL = 0x0206
"""2.06 is the first version with ``cmdline_size``; the 32-bit entry needs it."""

LOADER_TYPE_UNDEFINED = 0xFF
"""type_of_loader value for a boot loader without an assigned id."""


class LinuxBootError(UserError):
    """The kernel, initrd or command line cannot be booted (user input)."""


class LoadFlags(IntFlag):
    LOADED_HIGH = 0x01
    KASLR_FLAG = 0x02
    QUIET_FLAG = 0x20
    KEEP_SEGMENTS = 0x40
    CAN_USE_HEAP = 0x80


class XLoadFlags(IntFlag):
    XLF_KERNEL_64 = 0x01
    XLF_CAN_BE_LOADED_ABOVE_4G = 0x02
    XLF_EFI_HANDOVER_32 = 0x04
    XLF_EFI_HANDOVER_64 = 0x08
    XLF_EFI_KEXEC = 0x10
    XLF_5LEVEL = 0x20
    XLF_5LEVEL_ENABLED = 0x40


@dataclass(frozen=True)
class _Field:
    offset: int
    fmt: str
    since: int  # boot protocol version that introduced the field

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.fmt)


SETUP_HEADER_FIELDS: dict[str, _Field] = {
    "setup_sects": _Field(0x1F1, "B", 0x0000),
    "root_flags": _Field(0x1F2, "H", 0x0000),
    "syssize": _Field(0x1F4, "I", 0x0204),
    "ram_size": _Field(0x1F8, "H", 0x0000),
    "vid_mode": _Field(0x1FA, "H", 0x0000),
    "root_dev": _Field(0x1FC, "H", 0x0000),
    "boot_flag": _Field(0x1FE, "H", 0x0000),
    "jump": _Field(0x200, "H", 0x0200),
    "header": _Field(0x202, "I", 0x0200),
    "version": _Field(0x206, "H", 0x0200),
    "realmode_swtch": _Field(0x208, "I", 0x0200),
    "start_sys_seg": _Field(0x20C, "H", 0x0200),
    "kernel_version": _Field(0x20E, "H", 0x0200),
    "type_of_loader": _Field(0x210, "B", 0x0200),
    "loadflags": _Field(0x211, "B", 0x0200),
    "setup_move_size": _Field(0x212, "H", 0x0200),
    "code32_start": _Field(0x214, "I", 0x0200),
    "ramdisk_image": _Field(0x218, "I", 0x0200),
    "ramdisk_size": _Field(0x21C, "I", 0x0200),
    "bootsect_kludge": _Field(0x220, "I", 0x0200),
    "heap_end_ptr": _Field(0x224, "H", 0x0201),
    "ext_loader_ver": _Field(0x226, "B", 0x0202),
    "ext_loader_type": _Field(0x227, "B", 0x0202),
    "cmd_line_ptr": _Field(0x228, "I", 0x0202),
    "initrd_addr_max": _Field(0x22C, "I", 0x0203),
    "kernel_alignment": _Field(0x230, "I", 0x0205),
    "relocatable_kernel": _Field(0x234, "B", 0x0205),
    "min_alignment": _Field(0x235, "B", 0x020A),
    "xloadflags": _Field(0x236, "H", 0x020C),
    "cmdline_size": _Field(0x238, "I", 0x0206),
    "hardware_subarch": _Field(0x23C, "I", 0x0207),
    "hardware_subarch_data": _Field(0x240, "Q", 0x0207),
    "payload_offset": _Field(0x248, "I", 0x0208),
    "payload_length": _Field(0x24C, "I", 0x0208),
    "setup_data": _Field(0x250, "Q", 0x0209),
    "pref_address": _Field(0x258, "Q", 0x020A),
    "init_size": _Field(0x260, "I", 0x020A),
    "handover_offset": _Field(0x264, "I", 0x020B),
    "kernel_info_offset": _Field(0x268, "I", 0x020F),
}
SETUP_HEADER_END = 0x26C  # end of the last field known here


@dataclass(frozen=True)
class SetupHeader:
    """The fields of struct setup_header, as read from a bzImage.

    A field newer than the image's boot protocol ``version`` reads as 0
    (older kernels leave garbage, or code, in those bytes).
    """

    setup_sects: int
    root_flags: int
    syssize: int
    ram_size: int
    vid_mode: int
    root_dev: int
    boot_flag: int
    jump: int
    header: int
    version: int
    realmode_swtch: int
    start_sys_seg: int
    kernel_version: int
    type_of_loader: int
    loadflags: int
    setup_move_size: int
    code32_start: int
    ramdisk_image: int
    ramdisk_size: int
    bootsect_kludge: int
    heap_end_ptr: int
    ext_loader_ver: int
    ext_loader_type: int
    cmd_line_ptr: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable_kernel: int
    min_alignment: int
    xloadflags: int
    cmdline_size: int
    hardware_subarch: int
    hardware_subarch_data: int
    payload_offset: int
    payload_length: int
    setup_data: int
    pref_address: int
    init_size: int
    handover_offset: int
    kernel_info_offset: int
    header_end: int
    """File offset just past the header (0x202 + the jump's displacement byte)."""
    file_size: int

    @property
    def setup_size(self) -> int:
        """Bytes of the boot sector plus real-mode setup, before the kernel."""
        return (self.setup_sects + 1) * SECTOR_SIZE

    @property
    def kernel_size(self) -> int:
        """Bytes of the protected-mode kernel (the rest of the file)."""
        return self.file_size - self.setup_size

    @property
    def version_str(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @property
    def relocatable(self) -> bool:
        return self.relocatable_kernel != 0


def _describe_version(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF:02d}"


def parse_bzimage(data: bytes) -> SetupHeader:
    """Read and validate the setup header of a bzImage.

    Raises :class:`LinuxBootError` for anything this loader cannot boot:
    not a bzImage, truncated, boot protocol older than 2.06, or a zImage
    (LOADED_HIGH clear).
    """
    size = len(data)
    if size < 0x208:
        # Not even room for boot_flag, the jump, "HdrS" and the version.
        raise LinuxBootError(
            f"kernel image is too short to be a Linux bzImage ({size} bytes)")
    if data[0x202:0x206] != HDRS_MAGIC:
        raise LinuxBootError(
            "kernel image is not a Linux bzImage (no 'HdrS' signature at offset 0x202)")
    boot_flag = struct.unpack_from("<H", data, 0x1FE)[0]
    if boot_flag != BOOT_FLAG:
        raise LinuxBootError(
            f"kernel image is not a Linux bzImage (boot flag {boot_flag:#06x}, expected 0xaa55)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < MIN_BOOT_PROTOCOL:
        raise LinuxBootError(
            f"Linux kernel boot protocol {_describe_version(version)} is too old "
            f"(2.06 or newer is required)")
    setup_sects = data[SETUP_HEADER_OFFSET] or DEFAULT_SETUP_SECTS
    setup_size = (setup_sects + 1) * SECTOR_SIZE
    if size <= setup_size:
        raise LinuxBootError(
            f"kernel image is truncated: {size} bytes, but its setup code alone "
            f"takes {setup_size} bytes")
    # setup_size >= 5 * 512 here, so every field below is inside the file.
    values: dict[str, int] = {}
    for name, field in SETUP_HEADER_FIELDS.items():
        if version < field.since:
            values[name] = 0
        else:
            values[name] = struct.unpack_from("<" + field.fmt, data, field.offset)[0]
    values["setup_sects"] = setup_sects
    header_end = min(0x202 + data[0x201], SETUP_HEADER_LIMIT)
    hdr = SetupHeader(**values, header_end=header_end, file_size=size)

    if not hdr.loadflags & LoadFlags.LOADED_HIGH:
        raise LinuxBootError(
            "kernel image is a zImage (LOADED_HIGH is clear); only bzImage kernels can be loaded")
    if hdr.payload_length and hdr.payload_offset + hdr.payload_length > hdr.kernel_size:
        raise LinuxBootError(
            f"kernel image is truncated: its compressed payload ends at "
            f"{hdr.setup_size + hdr.payload_offset + hdr.payload_length} bytes, "
            f"the file has {size}")
    if hdr.syssize * 16 > hdr.kernel_size + 16:
        raise LinuxBootError(
            f"kernel image is truncated: the header announces {hdr.syssize * 16} bytes "
            f"of protected-mode kernel, the file has {hdr.kernel_size}")
    return hdr


def setup_header_bytes(data: bytes, hdr: SetupHeader) -> bytes:
    """The raw header bytes (0x1F1 up to its end) to copy into boot_params."""
    return bytes(data[SETUP_HEADER_OFFSET:hdr.header_end])
