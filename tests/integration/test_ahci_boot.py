"""SeaBIOS boots from a disk on the ICH9 AHCI controller (its AHCI driver, on
the firmware path): the boot sector, assembled here, reads the next two
sectors with INT 13h's extended read (which SeaBIOS carries out as an AHCI
DMA read), prints what they hold on COM1 and ends pemu through
isa-debug-exit.  And from a CD-ROM on it (El Torito, no emulation: SeaBIOS's
ATAPI commands over AHCI)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.guestasm import assemble, have_binutils

SEABIOS = "/usr/share/seabios/bios.bin"
BOOT_TIMEOUT = 120
MARKER = b"AHCI boot: sectors 1-2 read through SeaBIOS's AHCI driver, the end."
DEBUG_EXIT_PORT = 0xF4
EXIT_CODE = 0x21  # isa-debug-exit with 0x10: (0x10 << 1) | 1
CD_MARKER = "El Torito boot image loaded by SeaBIOS over AHCI ATAPI"

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not os.path.isfile(SEABIOS), reason="needs Debian's seabios package"),
    pytest.mark.skipif(not have_binutils(), reason="needs binutils (as, ld, objcopy) to assemble the boot sector"),
]

BOOT_SECTOR = f"""
    .code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    mov $(dap - start + 0x7c00), %si     # DL still holds the boot drive
    mov $0x42, %ah
    int $0x13
    jc fail
    mov $0x8000, %si
print:
    lodsb
    test %al, %al
    jz done
    mov $0x3f8, %dx
    out %al, %dx
    jmp print
done:
    mov $0x10, %al
    out %al, ${DEBUG_EXIT_PORT:#x}
halt:
    cli
    hlt
    jmp halt
fail:
    mov $0x3f8, %dx
    mov $'!', %al
    out %al, %dx
    jmp halt
    .p2align 2
dap:
    .byte 0x10, 0
    .word 2               # sectors
    .word 0x8000, 0       # buffer offset, segment
    .quad 1               # first LBA
"""


def boot_disk(path: Path) -> None:
    code = assemble("start:\n" + BOOT_SECTOR, 0x7C00)
    assert len(code) <= 446
    image = bytearray(1 << 20)
    image[:len(code)] = code
    image[510:512] = b"\x55\xaa"
    text = MARKER + b"\n\0"
    image[512 + 500:512 + 500 + len(text)] = text  # across the sector 1 / sector 2 boundary
    image[512:512 + 500] = b" " * 500
    path.write_bytes(bytes(image))


@pytest.mark.parametrize("accel", ["tcg", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_seabios_boots_a_disk_through_ahci(tmp_path: Path, accel: str) -> None:
    disk = tmp_path / "boot.raw"
    boot_disk(disk)
    r = subprocess.run([sys.executable, "-m", "pemu", "-machine", f"q35,graphics=off,accel={accel}", "-m", "128",
                        "-nographic",
                        "-bios", SEABIOS, "-drive", f"file={disk},format=raw",
                        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1"],
                       capture_output=True, timeout=BOOT_TIMEOUT, stdin=subprocess.DEVNULL)
    out = r.stdout.decode("latin-1")
    assert r.returncode == EXIT_CODE, out[-3000:] + r.stderr.decode("latin-1")
    assert "Booting from Hard Disk" in out
    after = out.split("Booting from Hard Disk", 1)[1]
    assert MARKER.decode() in after and "!" not in after


CD_BOOT_IMAGE = f"""
    .code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov $(message - start + 0x7c00), %si
print:
    lodsb
    test %al, %al
    jz done
    mov $0x3f8, %dx
    out %al, %dx
    jmp print
done:
    mov $0x10, %al
    out %al, ${DEBUG_EXIT_PORT:#x}
halt:
    hlt
    jmp halt
message:
    .asciz "{CD_MARKER}\\n"
"""


def el_torito_cd(path: Path) -> None:
    """An ISO 9660 image with an El Torito boot catalog and a no-emulation boot image."""
    sector = 2048
    image = bytearray(64 * sector)
    image[16 * sector:16 * sector + 7] = b"\x01CD001\x01"                      # primary volume descriptor
    brvd = 17 * sector                                                         # boot record volume descriptor
    image[brvd:brvd + 7] = b"\x00CD001\x01"
    image[brvd + 7:brvd + 7 + 23] = b"EL TORITO SPECIFICATION"
    image[brvd + 0x47:brvd + 0x4B] = (19).to_bytes(4, "little")               # the boot catalog's sector
    image[18 * sector:18 * sector + 7] = b"\xffCD001\x01"                     # set terminator
    validation = bytearray(32)
    validation[0], validation[30], validation[31] = 1, 0x55, 0xAA
    validation[4:8] = b"PEMU"
    validation[28:30] = ((-sum(struct.unpack("<16H", validation))) & 0xFFFF).to_bytes(2, "little")
    default = bytearray(32)
    default[0] = 0x88                                                          # bootable, no emulation
    default[6:8] = (4).to_bytes(2, "little")                                   # four 512-byte sectors
    default[8:12] = (20).to_bytes(4, "little")                                 # at sector 20
    image[19 * sector:19 * sector + 64] = validation + default
    code = assemble("start:\n" + CD_BOOT_IMAGE, 0x7C00)
    image[20 * sector:20 * sector + len(code)] = code
    path.write_bytes(bytes(image))


def test_seabios_boots_a_cdrom_through_ahci(tmp_path: Path) -> None:
    cd = tmp_path / "boot.iso"
    el_torito_cd(cd)
    r = subprocess.run([sys.executable, "-m", "pemu", "-machine", "q35,graphics=off", "-m", "128", "-nographic",
                        "-bios", SEABIOS, "-cdrom", str(cd),
                        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=1"],
                       capture_output=True, timeout=BOOT_TIMEOUT, stdin=subprocess.DEVNULL)
    out = r.stdout.decode("latin-1")
    assert r.returncode == EXIT_CODE, out[-3000:] + r.stderr.decode("latin-1")
    assert "Booting from DVD/CD" in out
    assert CD_MARKER in out.split("Booting from DVD/CD", 1)[1]
