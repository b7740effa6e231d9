"""The PC's firmware image (QEMU's hw/i386/pc_sysfw.c).

The firmware ROM ("pc.bios") is mapped so that it ends at 4 GiB, where the
CPU's reset vector is, and its last 128 KiB are aliased below 1 MiB
("isa-bios") for real-mode code.  With ``-bios FILE`` (or ``-machine
firmware=FILE``) that file is the image: firmware boot.  Without it, pemu
boots ``-kernel`` directly and the image is pemu's own 64 KiB stub, which
only parks the CPU (the loader starts the CPU at the kernel, not here);
with neither, SeaBIOS's bios-256k.bin is used when installed.
"""

from __future__ import annotations

import os

from pemu.hw.i386 import memmap
from pemu.system.memory import MemoryRegion
from pemu.util.error import UserError

DEFAULT_BIOS = "bios-256k.bin"
FIRMWARE_SEARCH_PATH = ["/usr/share/seabios", "/usr/share/qemu", "/usr/lib/ipxe/qemu"]
STUB_SIZE = 64 * 1024

# Where the firmware image came from when there is none: direct boot.
DIRECT_BOOT_FIRMWARE = "pemu direct-boot stub"

# The stub's code at the reset vector: cli; hlt; jmp back to the hlt.
_STUB_RESET_CODE = bytes([0xFA, 0xF4, 0xEB, 0xFD])


def qemu_find_file(name: str, extra_dirs: list[str] | None = None) -> str | None:
    """Find a firmware file by name in -L directories, then the data path."""
    if os.sep in name and os.path.exists(name):
        return name
    for d in (extra_dirs or []) + FIRMWARE_SEARCH_PATH:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    if os.path.isfile(name):
        return name
    return None


def stub_firmware() -> bytes:
    """pemu's built-in firmware for direct boot: a ROM whose reset vector parks the CPU."""
    image = bytearray(b"\xff" * STUB_SIZE)
    image[-16:-16 + len(_STUB_RESET_CODE)] = _STUB_RESET_CODE
    return bytes(image)


def load_firmware_image(bios_name: str | None, direct_kernel: bool, data_dirs: list[str]) -> tuple[bytes, str]:
    """The firmware image and where it came from."""
    if bios_name is None and direct_kernel:
        return stub_firmware(), DIRECT_BOOT_FIRMWARE
    name = bios_name or DEFAULT_BIOS
    path = qemu_find_file(name, data_dirs)
    if path is None:
        if bios_name is None:
            return stub_firmware(), DIRECT_BOOT_FIRMWARE
        raise UserError(f"could not load PC BIOS '{name}'")
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    if size == 0 or size % 65536 != 0 or size > 16 * memmap.MiB:
        raise UserError(f"could not load PC BIOS '{name}'")
    return data, path


def pc_system_firmware_init(rom_memory: MemoryRegion, image: bytes) -> MemoryRegion:
    """Map the firmware ending at 4 GiB and its isa-bios alias ending at 1 MiB
    (both read-only, above the PCI hole's default priority)."""
    size = len(image)
    bios = MemoryRegion.rom("pc.bios", size)
    assert bios.ram_block is not None  # a ROM region has its RAM block
    bios.ram_block.view[:] = image
    rom_memory.add_subregion(memmap.BIOS_END - size, bios)
    isa_size = min(size, memmap.ISA_BIOS_SIZE)
    isa_bios = MemoryRegion.alias("isa-bios", bios, size - isa_size, isa_size)
    isa_bios.set_readonly(True)
    rom_memory.add_subregion_overlap(memmap.ISA_BIOS_END - isa_size, isa_bios, 1)
    return bios
