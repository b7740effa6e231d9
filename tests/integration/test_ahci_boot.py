"""SeaBIOS boots from a disk on the ICH9 AHCI controller (its AHCI driver, on
the firmware path): the boot sector, assembled here, reads the next two
sectors with INT 13h's extended read (which SeaBIOS carries out as an AHCI
DMA read), prints what they hold on COM1 and ends pemu through
isa-debug-exit."""

from __future__ import annotations

import os
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
