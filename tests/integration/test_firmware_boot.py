"""Firmware boot: SeaBIOS (Debian's bios-256k.bin) boots Debian's kernel
through linuxboot_dma.bin over fw_cfg, on the q35 machine under tcg.

One guest (4 GiB) serves every in-guest check, then reboots through the FADT
reset register (SeaBIOS and Linux come up again) and powers off through
ACPI S5.  A short run checks that SeaBIOS reaches its banner under kvm.

``graphics=off`` is what QEMU's -nographic implies (it sets fw_cfg
NOGRAPHIC, on which SeaBIOS turns on its serial console); it is spelled out
here so the test does not depend on how the command line maps -nographic.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.harness import GuestProcess, default_guest_args, smp_append

SEABIOS = "/usr/share/seabios/bios-256k.bin"
LINUXBOOT_DMA = "/usr/share/qemu/linuxboot_dma.bin"
BOOT_TIMEOUT = 400
BANNER = r"SeaBIOS \(version [^)]*\)"
BAD_DMESG = re.compile(r"ACPI Error|ACPI BIOS Error|ACPI Warning|BUG|Call Trace")
GiB = 1 << 30

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not (os.path.isfile(SEABIOS) and os.path.isfile(LINUXBOOT_DMA)),
                       reason="needs Debian's seabios and qemu-system-data"),
]


def firmware_args(guest: Guest, *, memory: str = "4096", accel: str = "tcg", smp: int = 1) -> list[str]:
    return ["-machine", f"q35,graphics=off,accel={accel}", "-m", memory, "-smp", str(smp), "-nographic",
            "-bios", SEABIOS, "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
            "-append", smp_append("console=ttyS0") if smp > 1 else "console=ttyS0"]


def test_seabios_alone_prints_its_banner_and_finds_no_boot_device() -> None:
    vm = GuestProcess(["-machine", "q35,graphics=off", "-m", "256", "-nographic", "-bios", SEABIOS])
    try:
        vm.expect(BANNER, 60)
        vm.expect(r"No bootable device", 60)
    finally:
        vm.kill()


# Real-mode code for a stand-in kernel's setup: print the command line that
# cmd_line_ptr (patched into the header by x86_load_linux) points at on COM1,
# then halt.  linuxboot enters it with DS at the setup segment.
_PRINT_CMDLINE = bytes.fromhex(
    "baf803"        # mov dx, 0x3f8
    "66a12802"      # mov eax, [0x228]          ; cmd_line_ptr
    "89c7"          # mov di, ax
    "83e70f"        # and di, 0xf
    "66c1e804"      # shr eax, 4
    "8ec0"          # mov es, ax
    "268a05"        # next: mov al, es:[di]
    "84c0"          # test al, al
    "7404"          # jz done
    "ee"            # out dx, al
    "47"            # inc di
    "ebf5"          # jmp next
    "fa"            # done: cli
    "f4"            # hlt
    "ebfc")         # jmp done
_SETUP_CODE_OFFSET = 0x280


def test_linuxboot_dma_enters_the_setup_code_with_the_command_line(tmp_path: Path) -> None:
    from tests.unit.test_bzimage import make_bzimage

    image = bytearray(make_bzimage(jump_len=_SETUP_CODE_OFFSET - 0x202))
    image[_SETUP_CODE_OFFSET:_SETUP_CODE_OFFSET + len(_PRINT_CMDLINE)] = _PRINT_CMDLINE
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(bytes(image))
    vm = GuestProcess(["-machine", "q35,graphics=off", "-m", "256", "-nographic", "-bios", SEABIOS,
                       "-kernel", str(kernel), "-append", "hello from the firmware path"])
    try:
        vm.expect(r"Booting from ROM", 60)
        vm.expect(r"hello from the firmware path", 60)
    finally:
        vm.kill()


@pytest.fixture(scope="module")
def guest(guest_images: Guest) -> Iterator[GuestProcess]:
    vm = GuestProcess(firmware_args(guest_images, smp=2))
    try:
        vm.expect(BANNER, 120)
        vm.expect(r"Booting from ROM", BOOT_TIMEOUT)
        vm.expect(READY_MARKER, BOOT_TIMEOUT)
        yield vm
    finally:
        vm.kill()


def od_bytes(text: str) -> bytes:
    """The bytes of busybox `od -A n -t x1` output."""
    return bytes(int(tok, 16) for tok in text.split())


def test_the_kernel_was_booted_by_the_firmware(guest: GuestProcess, guest_images: Guest) -> None:
    assert guest.run("uname -r").strip() == guest_images.release
    log = guest.run("dmesg", timeout=60)
    # SeaBIOS's tables, not pemu's direct-boot ones: its e820 and its SMBIOS entry point.
    assert "SMBIOS 2.8 present" in log
    assert re.search(r"BIOS-e820: \[mem 0x0000000000100000-0x000000007ff[0-9a-f]{5}\] usable", log), log


def test_acpi_tables(guest: GuestProcess) -> None:
    tables = set(guest.run("ls /sys/firmware/acpi/tables/").split())
    assert {"DSDT", "FACP", "MCFG", "HPET", "APIC"} <= tables


def test_both_cpus_came_up_through_the_firmware(guest: GuestProcess) -> None:
    # SeaBIOS starts the AP once to count it; Linux starts it again.
    assert guest.run("cat /sys/devices/system/cpu/online").strip() == "0-1"
    assert "IO-APIC" in guest.run("cat /proc/interrupts")


def test_dmesg_is_clean(guest: GuestProcess) -> None:
    log = guest.run("dmesg", timeout=60)
    assert "Linux version" in log
    assert [line for line in log.splitlines() if BAD_DMESG.search(line)] == []


def test_chipset_pci_functions(guest: GuestProcess) -> None:
    for bdf, vendor, device in (("0000:00:00.0", "0x8086", "0x29c0"), ("0000:00:1f.0", "0x8086", "0x2918")):
        path = f"/sys/bus/pci/devices/{bdf}"
        assert guest.run(f"cat {path}/vendor {path}/device").split() == [vendor, device]


def test_fw_cfg_e820_matches_pemus_map(guest: GuestProcess) -> None:
    guest.run("modprobe qemu_fw_cfg")
    raw = od_bytes(guest.run("od -A n -t x1 /sys/firmware/qemu_fw_cfg/by_name/etc/e820/raw"))
    entries = [struct.unpack_from("<QQI", raw, off) for off in range(0, len(raw), 20)]
    # q35 with 4 GiB: 2 GiB below the PCI hole, the rest from 4 GiB.
    assert entries == [(0, 2 * GiB, 1), (4 * GiB, 2 * GiB, 1)]


def test_memtotal_about_4g(guest: GuestProcess) -> None:
    m = re.search(r"MemTotal:\s+(\d+) kB", guest.run("cat /proc/meminfo"))
    assert m
    assert 3_800_000 < int(m.group(1)) <= 4 * 1024 * 1024


def test_direct_boot_shows_the_same_tables_and_devices(guest: GuestProcess, guest_images: Guest) -> None:
    commands = ("ls /sys/firmware/acpi/tables/", "ls /sys/bus/pci/devices/",
                "cat /sys/bus/pci/devices/*/vendor /sys/bus/pci/devices/*/device")
    firmware = [guest.run(cmd).split() for cmd in commands]
    direct_vm = GuestProcess(default_guest_args(guest_images, memory="4096", extra=["-smp", "2"],
                                                 append=smp_append()))
    try:
        direct_vm.expect(READY_MARKER, BOOT_TIMEOUT)
        direct = [direct_vm.run(cmd).split() for cmd in commands]
    finally:
        direct_vm.kill()
    assert direct == firmware


def test_reboot_through_the_fadt_reset_register_then_s5_poweroff(guest: GuestProcess) -> None:
    # The FADT's reset register: system I/O 0xCF9 (ICH9 RST_CNT), value 6.
    fadt = od_bytes(guest.run("od -A n -t x1 /sys/firmware/acpi/tables/FACP"))
    flags, = struct.unpack_from("<I", fadt, 112)
    space_id, width, _offset, _access, address = struct.unpack_from("<BBBBQ", fadt, 116)
    assert flags & (1 << 10)                                    # RESET_REG_SUP
    assert (space_id, width, address, fadt[128]) == (1, 8, 0xCF9, 6)
    guest.sendline("reboot -f")
    guest.expect(BANNER, 120)                                   # the firmware runs again ...
    guest.expect(r"Linux version", BOOT_TIMEOUT)                # ... and boots the kernel again
    guest.expect(READY_MARKER, BOOT_TIMEOUT)
    assert guest.run("echo after-reboot").strip() == "after-reboot"
    guest.expect(r"pemu# ", 30)
    guest.sendline("poweroff -f")                               # ACPI S5 on PM1a_CNT
    assert guest.wait(60) == 0


@pytest.mark.kvm
def test_seabios_banner_under_kvm(guest_images: Guest) -> None:
    vm = GuestProcess(firmware_args(guest_images, memory="512", accel="kvm"))
    try:
        vm.expect(BANNER, 600)
    finally:
        vm.kill()
