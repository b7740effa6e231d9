"""The Linux/x86 zero page: struct boot_params (arch/x86/include/uapi/asm/bootparam.h).

The 4 KiB page whose address the 32-bit entry receives in ESI.  Its layout
is declared once below as (offset, struct format) data; the setup header
sits at 0x1F1 with the same offsets as in the bzImage file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pemu.hw.i386.bzimage import (
    LOADER_TYPE_UNDEFINED,
    SETUP_HEADER_FIELDS,
    SETUP_HEADER_LIMIT,
    SETUP_HEADER_OFFSET,
    LoadFlags,
)
from pemu.hw.i386.e820 import E820_ENTRY, E820_MAX_ENTRIES_ZEROPAGE, E820Table

BOOT_PARAMS_SIZE = 4096


@dataclass(frozen=True)
class BootParamsField:
    offset: int
    fmt: str

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.fmt)


BOOT_PARAMS_FIELDS: dict[str, BootParamsField] = {
    "screen_info": BootParamsField(0x000, "64s"),
    "apm_bios_info": BootParamsField(0x040, "20s"),
    "tboot_addr": BootParamsField(0x058, "Q"),
    "ist_info": BootParamsField(0x060, "16s"),
    "acpi_rsdp_addr": BootParamsField(0x070, "Q"),
    "hd0_info": BootParamsField(0x080, "16s"),
    "hd1_info": BootParamsField(0x090, "16s"),
    "sys_desc_table": BootParamsField(0x0A0, "16s"),
    "olpc_ofw_header": BootParamsField(0x0B0, "16s"),
    "ext_ramdisk_image": BootParamsField(0x0C0, "I"),
    "ext_ramdisk_size": BootParamsField(0x0C4, "I"),
    "ext_cmd_line_ptr": BootParamsField(0x0C8, "I"),
    "cc_blob_address": BootParamsField(0x13C, "I"),
    "edid_info": BootParamsField(0x140, "128s"),
    "efi_info": BootParamsField(0x1C0, "32s"),
    "alt_mem_k": BootParamsField(0x1E0, "I"),
    "scratch": BootParamsField(0x1E4, "I"),
    "e820_entries": BootParamsField(0x1E8, "B"),
    "eddbuf_entries": BootParamsField(0x1E9, "B"),
    "edd_mbr_sig_buf_entries": BootParamsField(0x1EA, "B"),
    "kbd_status": BootParamsField(0x1EB, "B"),
    "secure_boot": BootParamsField(0x1EC, "B"),
    "sentinel": BootParamsField(0x1EF, "B"),
    # 0x1F1..0x290: struct setup_header, see SETUP_HEADER_FIELDS
    "edd_mbr_sig_buffer": BootParamsField(0x290, "64s"),
    "e820_table": BootParamsField(0x2D0, f"{E820_MAX_ENTRIES_ZEROPAGE * E820_ENTRY.size}s"),
    "eddbuf": BootParamsField(0xD00, "492s"),
}
for _name, _f in SETUP_HEADER_FIELDS.items():
    BOOT_PARAMS_FIELDS[_name] = BootParamsField(_f.offset, _f.fmt)
del _name, _f

VID_MODE_NORMAL = 0xFFFF
"""vid_mode "normal": keep the current text mode, ask nothing."""
DEFAULT_HEAP_END_PTR = 0xFE00
"""End of the setup heap/stack, relative to the real-mode setup start (QEMU's value)."""

_U32 = 0xFFFFFFFF


def get_field(page: bytes | bytearray, name: str) -> int | bytes:
    f = BOOT_PARAMS_FIELDS[name]
    return struct.unpack_from("<" + f.fmt, page, f.offset)[0]


def set_field(page: bytearray, name: str, value: int | bytes) -> None:
    f = BOOT_PARAMS_FIELDS[name]
    struct.pack_into("<" + f.fmt, page, f.offset, value)


def build_boot_params(
    setup_header_bytes: bytes,
    e820: E820Table,
    cmdline_addr: int,
    initrd_addr: int,
    initrd_size: int,
    rsdp_addr: int | None,
    *,
    heap_end_ptr: int = DEFAULT_HEAP_END_PTR,
) -> bytes:
    """The 4096-byte zero page for the 32-bit boot protocol.

    ``setup_header_bytes`` is the header as read from the bzImage (from
    0x1F1 to the end given by its jump); the loader's fields are then
    overwritten.  Addresses and sizes above 4 GiB go to the ``ext_``
    halves.  ``initrd_size == 0`` means no initrd.
    """
    room = SETUP_HEADER_LIMIT - SETUP_HEADER_OFFSET
    if len(setup_header_bytes) > room:
        raise ValueError(f"setup header of {len(setup_header_bytes)} bytes, at most {room} fit")
    for name, value in (("cmdline_addr", cmdline_addr), ("initrd_addr", initrd_addr),
                        ("initrd_size", initrd_size)):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"{name} {value:#x} is not a 64-bit value")
    page = bytearray(BOOT_PARAMS_SIZE)
    page[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + len(setup_header_bytes)] = setup_header_bytes

    set_field(page, "type_of_loader", LOADER_TYPE_UNDEFINED)
    loadflags = int(get_field(page, "loadflags"))
    loadflags |= LoadFlags.CAN_USE_HEAP | LoadFlags.LOADED_HIGH
    loadflags &= ~(LoadFlags.QUIET_FLAG | LoadFlags.KEEP_SEGMENTS) & 0xFF
    set_field(page, "loadflags", loadflags)
    set_field(page, "heap_end_ptr", heap_end_ptr & 0xFFFF)
    set_field(page, "vid_mode", VID_MODE_NORMAL)

    set_field(page, "cmd_line_ptr", cmdline_addr & _U32)
    set_field(page, "ext_cmd_line_ptr", cmdline_addr >> 32)
    set_field(page, "ramdisk_image", initrd_addr & _U32 if initrd_size else 0)
    set_field(page, "ext_ramdisk_image", initrd_addr >> 32 if initrd_size else 0)
    set_field(page, "ramdisk_size", initrd_size & _U32)
    set_field(page, "ext_ramdisk_size", initrd_size >> 32)

    set_field(page, "acpi_rsdp_addr", rsdp_addr or 0)

    table = e820.to_boot_params_bytes()
    set_field(page, "e820_entries", len(e820))
    f = BOOT_PARAMS_FIELDS["e820_table"]
    page[f.offset:f.offset + len(table)] = table
    assert len(page) == BOOT_PARAMS_SIZE
    return bytes(page)
