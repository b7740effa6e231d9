"""Debian's kernel drives the AHCI controller: its ahci driver finds the disk
and the CD-ROM (on ports 0 and 2, from -drive and -cdrom), takes MSI, reads
both, and what it writes (and syncs) is in the image file afterwards."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.build_guest import READY_MARKER, Guest
from tests.integration.harness import GuestProcess, default_guest_args
from tests.integration.test_device_faults import monitor_session

pytestmark = pytest.mark.guest
BOOT_TIMEOUT = 300
DISK_SECTORS = 16384
WRITTEN = b"written by the guest through ahci"
BAD_DMESG = ("failed command", "exception Emask", "hard resetting", "Call Trace", "I/O error")


def cd_image(path: Path, sectors: int, label: bytes) -> Path:
    image = bytearray(sectors * 2048)
    image[16 * 2048:16 * 2048 + 6] = b"\x01CD001"  # an ISO 9660 primary volume descriptor's start
    image[17 * 2048:17 * 2048 + len(label)] = label
    path.write_bytes(bytes(image))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("ahci")
    disk = tmp / "disk.raw"
    disk.write_bytes(b"".join(f"sector {n}".encode().ljust(512, b".") for n in range(DISK_SECTORS)))
    return disk, cd_image(tmp / "cd.iso", 64, b"first disc"), tmp / "monitor.sock"


@pytest.fixture(scope="module")
def guest(guest_images: Guest, images: tuple[Path, Path, Path]) -> Iterator[GuestProcess]:
    disk, iso, monitor = images
    vm = GuestProcess(default_guest_args(guest_images, extra=(
        "-drive", f"file={disk},format=raw,werror=stop,rerror=stop", "-cdrom", str(iso),
        "-monitor", f"unix:{monitor},server=on,wait=off")))
    try:
        vm.expect(READY_MARKER, BOOT_TIMEOUT)
        vm.run("modprobe ahci; modprobe sd_mod; modprobe sr_mod", timeout=120)
        vm.run("i=0; while [ ! -b /dev/sda -o ! -b /dev/sr0 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done",
               timeout=60)
        yield vm
    finally:
        vm.kill()


def test_the_disk_is_sda_with_its_size_and_content(guest: GuestProcess) -> None:
    assert guest.run("cat /sys/block/sda/size").strip() == str(DISK_SECTORS)
    out = guest.run("dd if=/dev/sda bs=512 skip=12345 count=1 2>/dev/null | head -c 12; echo")
    assert out.strip() == "sector 12345"
    assert "PEMU HARDDISK" in guest.run("cat /sys/block/sda/device/model")


def test_the_cdrom_is_sr0_and_reads_the_iso(guest: GuestProcess) -> None:
    out = guest.run("dd if=/dev/sr0 bs=2048 skip=16 count=1 2>/dev/null | head -c 6 | od -c | head -1")
    assert "C   D   0   0   1" in out


def test_hmp_change_gives_the_guest_a_new_disc(guest: GuestProcess, images: tuple[Path, Path, Path],
                                               tmp_path: Path) -> None:
    read_label = "dd if=/dev/sr0 bs=2048 skip=17 count=1 2>/dev/null | head -c 11; echo"
    assert guest.run(read_label).strip(" \n\0") == "first disc"
    second = cd_image(tmp_path / "second.iso", 128, b"second disc")
    assert monitor_session(images[2], [f"change ide2-cd0 {second}"]) == [""]
    assert guest.run(read_label).strip(" \n\0") == "second disc"
    assert guest.run("cat /sys/block/sr0/size").strip() == str(128 * 4)


def test_the_controller_interrupts_through_msi(guest: GuestProcess) -> None:
    line = guest.run("grep ahci /proc/interrupts")
    assert "PCI-MSI" in line, line
    assert int(line.split()[1]) > 0


def test_dmesg_has_no_ata_errors(guest: GuestProcess) -> None:
    log = guest.run("dmesg", timeout=60)
    assert "ata1.00: ATA-8: PEMU HARDDISK" in log and "LBA48" in log
    assert "ata3.00: ATAPI: PEMU DVD-ROM" in log
    assert [line for line in log.splitlines() if any(bad in line for bad in BAD_DMESG)] == []


def test_an_io_error_pauses_the_vm_and_cont_retries(guest: GuestProcess, images: tuple[Path, Path, Path]) -> None:
    """werror/rerror=stop: a request the host cannot serve (here, past the end of an image that shrank
    under pemu) stops the VM in io-error; once the image is whole again, cont repeats it."""
    disk, _, monitor = images
    size = disk.stat().st_size
    os.truncate(disk, 150 * 512)
    try:
        guest.sendline("echo -n retried-write | dd of=/dev/sda bs=512 seek=200 conv=fsync 2>/dev/null; "
                       "echo io-retry-$((40+2))")
        deadline = time.monotonic() + 60
        while (status := monitor_session(monitor, ["info status"])[0].strip()) != "VM status: paused (io-error)":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    finally:
        os.truncate(disk, size)
    assert monitor_session(monitor, ["cont", "info status"])[1].strip() == "VM status: running"
    guest.expect(r"io-retry-42", 120)
    assert "I/O error" not in guest.run("dmesg | tail -5")
    assert disk.read_bytes()[200 * 512:200 * 512 + 13] == b"retried-write"


def test_written_and_synced_data_reaches_the_image(guest: GuestProcess, images: tuple[Path, Path, Path]) -> None:
    guest.run(f"echo -n '{WRITTEN.decode()}' | dd of=/dev/sda bs=512 seek=100 conv=notrunc 2>/dev/null; sync")
    guest.run("echo 3 > /proc/sys/vm/drop_caches")
    assert guest.run("dd if=/dev/sda bs=512 skip=100 count=1 2>/dev/null | head -c 33; echo").strip() == \
        WRITTEN.decode()
    guest.sendline("poweroff -f")
    assert guest.wait(60) == 0
    data = images[0].read_bytes()
    assert data[100 * 512:100 * 512 + len(WRITTEN)] == WRITTEN
    assert data[101 * 512:101 * 512 + 10] == b"sector 101"
