"""The disk guests' fixtures are what the AHCI and e1000e tests rely on.

Checked on the built products themselves, without booting anything: the
partition table, the ext4 root (e2fsck and debugfs on the partition's offset,
nothing mounted), the logins, the kernel's config and the initramfs.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.build_disk import (
    BIOS_BOOT_TYPE,
    DEBIAN_ENABLE,
    DEBIAN_MASK,
    LINUX_FS_TYPE,
    ROOT_LABEL,
    SECTOR,
    DiskImage,
    DiskLayout,
    RootInitrd,
    StockParts,
)
from tests.fixtures.build_guest import _stage_modules
from tests.fixtures.build_kernel import FRAGMENT, Kernel, config_mismatches, parse_config
from tests.fixtures.cpio import EntryType, read_newc


def debugfs(disk: DiskImage, request: str) -> str:
    result = subprocess.run(["debugfs", "-R", request, disk.e2fs_spec],
                            capture_output=True, text=True, check=True)
    return result.stdout


def read_file(disk: DiskImage, path: str) -> str:
    return debugfs(disk, f"cat {path}")


@pytest.fixture(params=["small", "debian"])
def disk(request: pytest.FixtureRequest) -> DiskImage:
    return request.getfixturevalue(f"{request.param}_disk")


def test_partition_table(disk: DiskImage) -> None:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk.image)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    layout = DiskLayout.for_root(disk.root_size)
    assert table["label"] == "gpt"
    assert disk.image.stat().st_size == layout.disk_size
    parts = table["partitions"]
    assert [(p["start"] * SECTOR, p["size"] * SECTOR, p["type"]) for p in parts] == [
        (1 << 20, 1 << 20, BIOS_BOOT_TYPE),
        (disk.root_offset, disk.root_size, LINUX_FS_TYPE),
    ]
    assert parts[1]["node"].endswith("2")


def test_root_file_system_checks_clean(disk: DiskImage) -> None:
    result = subprocess.run(["e2fsck", "-fn", disk.e2fs_spec], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    dumpe2fs = subprocess.run(["dumpe2fs", "-h", disk.e2fs_spec], capture_output=True,
                              text=True, check=True).stdout
    assert f"Filesystem volume name:   {ROOT_LABEL}" in dumpe2fs
    assert f"Filesystem UUID:          {disk.uuid}" in dumpe2fs
    assert "Block size:               4096\n" in dumpe2fs
    assert f"Block count:              {disk.root_size // 4096}\n" in dumpe2fs
    assert "extent" in dumpe2fs and "64bit" in dumpe2fs      # ext4, not ext2


def test_root_logs_in_with_the_images_key(disk: DiskImage) -> None:
    public = disk.key.with_suffix(".pub").read_text()
    assert read_file(disk, "/root/.ssh/authorized_keys") == public
    assert disk.key.stat().st_mode & 0o077 == 0
    # Only root may read its keys, or sshd/dropbear refuse them.
    assert "Mode:  0600" in debugfs(disk, "stat /root/.ssh/authorized_keys")
    assert "Mode:  0700" in debugfs(disk, "stat /root/.ssh")


def test_the_stock_kernels_nic_modules_are_installed(disk: DiskImage) -> None:
    modules_dep = read_file(disk, f"/lib/modules/{disk.release}/modules.dep")
    assert "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:" in modules_dep
    assert "kernel/drivers/net/virtio_net.ko:" in modules_dep
    listing = debugfs(disk, f"ls -l /lib/modules/{disk.release}/kernel/drivers/net/ethernet/intel/e1000e")
    assert "e1000e.ko" in listing


def test_small_image_boots_busybox_init_and_dropbear(small_disk: DiskImage) -> None:
    init = read_file(small_disk, "/sbin/init")
    assert init.startswith("#!/bin/sh") and "dropbear" in init and "udhcpc" in init
    assert "Mode:  0755" in debugfs(small_disk, "stat /sbin/init")
    host_key = debugfs(small_disk, "stat /etc/dropbear/dropbear_ed25519_host_key")
    assert "Mode:  0600" in host_key
    assert "root:x:0:0:root:/root:/bin/sh" in read_file(small_disk, "/etc/passwd")
    # busybox's applets are linked, udhcpc and the shell among them.
    assert "Fast link dest: \"/bin/busybox\"" in debugfs(small_disk, "stat /sbin/udhcpc")


def test_debian_image_is_configured_for_tests(debian_disk: DiskImage) -> None:
    for unit in DEBIAN_MASK:
        assert '"/dev/null"' in debugfs(debian_disk, f"stat /etc/systemd/system/{unit}"), unit
    assert "serial-getty@ttyS0.service" in debugfs(
        debian_disk, "ls /etc/systemd/system/getty.target.wants")
    assert "systemd-networkd.service" in debugfs(
        debian_disk, "ls /etc/systemd/system/multi-user.target.wants")
    assert "DHCP=yes" in read_file(debian_disk, "/etc/systemd/network/20-wired.network")
    assert "systemd-networkd.service" in DEBIAN_ENABLE
    # Host keys of its own, no NTP client.
    for kind in ("ed25519", "ecdsa", "rsa"):
        assert read_file(debian_disk, f"/etc/ssh/ssh_host_{kind}_key.pub").startswith(
            "ssh-" if kind != "ecdsa" else "ecdsa-")
    status = read_file(debian_disk, "/var/lib/dpkg/status")
    for package in ("openssh-server", "systemd-sysv", "udev", "kmod", "iproute2"):
        assert f"Package: {package}\n" in status
    for ntp in ("systemd-timesyncd", "chrony", "ntp", "ntpsec"):
        assert f"Package: {ntp}\n" not in status
    modules = f"/lib/modules/{debian_disk.release}"
    assert "ahci.ko" in debugfs(debian_disk, f"ls {modules}/kernel/drivers/ata")
    assert "modules.alias.bin" in debugfs(debian_disk, f"ls {modules}")


def test_images_have_their_own_keys(small_disk: DiskImage, debian_disk: DiskImage) -> None:
    assert small_disk.key.read_bytes() != debian_disk.key.read_bytes()
    assert small_disk.uuid != debian_disk.uuid


def test_kernel_has_the_q35_disk_and_nic_built_in(built_kernel: Kernel) -> None:
    config = parse_config(built_kernel.config.read_text())
    assert config_mismatches(parse_config(FRAGMENT.read_text()), config) == []
    for option in ("CONFIG_SATA_AHCI", "CONFIG_ATA", "CONFIG_BLK_DEV_SD", "CONFIG_EXT4_FS",
                   "CONFIG_E1000E", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_BLK",
                   "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_DEVTMPFS", "CONFIG_CRYPTO_CRC32C"):
        assert config.get(option) == "y", option
    assert config.get("CONFIG_MODULES", "n") == "n"
    assert "m" not in config.values()
    image = built_kernel.bzimage.read_bytes()
    assert image[0x202:0x206] == b"HdrS"                     # a bzImage's setup header
    version = image[0x200 + image[0x20E] + image[0x20F] * 256:][:200]
    assert version.startswith(built_kernel.release.encode() + b" ")


def test_root_initrd_loads_ahci_sd_and_ext4_with_crc32c(root_initrd: RootInitrd) -> None:
    entries = {e.name: e for e in read_newc(gzip.decompress(root_initrd.initrd.read_bytes()))}
    order = entries["etc/initrd-modules"].data.decode().split()
    assert order == list(root_initrd.modules)
    names = [Path(rel).name for rel in order]
    for module in ("ahci.ko", "libahci.ko", "libata.ko", "sd_mod.ko", "scsi_mod.ko", "ext4.ko",
                   "jbd2.ko", "mbcache.ko", "crc32c_generic.ko"):
        assert module in names, module
    # Each loads after what it needs; crc32c (ext4's soft dependency) before jbd2 and ext4.
    for before, after in (("libata.ko", "ahci.ko"), ("scsi_mod.ko", "sd_mod.ko"),
                          ("jbd2.ko", "ext4.ko"), ("crc32c_generic.ko", "jbd2.ko"),
                          ("crc32c_generic.ko", "ext4.ko")):
        assert names.index(before) < names.index(after), (before, after)
    assert "e1000e.ko" not in names
    for rel in order:
        entry = entries[f"lib/modules/{root_initrd.release}/{rel}"]
        assert entry.type is EntryType.FILE and entry.data[:4] == b"\x7fELF", rel
    init = entries["init"]
    assert init.permissions & 0o111 and b"switch_root" in init.data
    assert entries["bin/switch_root"].data == b"busybox"
    assert root_initrd.kernel.name == f"vmlinuz-{root_initrd.release}"


def test_busybox_guest_modules_dep_carries_soft_dependencies(stock_parts: StockParts,
                                                             tmp_path: Path) -> None:
    """build_guest.py's closure for the busybox initramfs: busybox's modprobe
    reads modules.dep only, so ext4's soft dependency on crc32c is written
    there; module names spelled with '-' (sd_mod needs "t10-pi") resolve."""
    _stage_modules(stock_parts.modules_dir, tmp_path, ("sd_mod", "ext4"), lambda message: None)
    deps = dict(line.split(":", 1) for line in (tmp_path / "modules.dep").read_text().splitlines())
    ext4 = deps["kernel/fs/ext4/ext4.ko"].split()
    assert "kernel/crypto/crc32c_generic.ko" in ext4
    assert "kernel/arch/x86/crypto/crc32c-intel.ko" not in ext4     # needs SSE4.2
    assert "kernel/block/t10-pi.ko" in deps["kernel/drivers/scsi/sd_mod.ko"].split()
    order = (tmp_path / "modules.order").read_text().split()
    assert order.index("kernel/crypto/crc32c_generic.ko") < order.index("kernel/fs/jbd2/jbd2.ko")
    assert (tmp_path / "kernel/crypto/crc32c_generic.ko").read_bytes()[:4] == b"\x7fELF"
