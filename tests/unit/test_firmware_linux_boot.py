"""Firmware boot with -kernel: the bzImage header QEMU patches, the fw_cfg
kernel items linuxboot_dma.bin reads, the bootorder file, and the ICH9
SMI_EN register that makes SeaBIOS skip SMM setup."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from pemu.hw.i386.bzimage import LinuxBootError
from pemu.hw.i386.fw_cfg import fw_cfg_add_linux_boot, fw_cfg_add_option_rom
from pemu.hw.i386.x86 import (
    FW_ACPI_DATA_SIZE,
    FW_CMDLINE_ADDR,
    FW_KERNEL_ADDR,
    FW_SETUP_ADDR,
    plan_firmware_linux_boot,
)
from pemu.hw.nvram.fw_cfg import FWCfgError, FWCfgKey, FWCfgState
from tests.unit.test_bzimage import make_bzimage

MiB = 1 << 20


def _u16(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _image(xloadflags: int = 0x7F, initrd_addr_max: int = 0x37FFFFFF, **kw: int) -> bytes:
    img = bytearray(make_bzimage(initrd_addr_max=initrd_addr_max, **kw))
    struct.pack_into("<H", img, 0x236, xloadflags)
    return bytes(img)


def test_header_patched_as_qemu_does() -> None:
    kernel = _image()
    boot = plan_firmware_linux_boot(kernel, None, "console=ttyS0", 512 * MiB)
    setup = boot.setup
    assert len(setup) == 5 * 512 and boot.kernel == kernel[5 * 512:] and boot.kernel[:4] == b"KERN"
    assert (boot.setup_addr, boot.cmdline_addr, boot.kernel_addr) == (0x10000, 0x20000, 0x100000)
    assert _u32(setup, 0x228) == FW_CMDLINE_ADDR                        # cmd_line_ptr
    assert setup[0x210] == 0xB0                                         # type_of_loader: QEMU
    assert setup[0x211] == 0x81                                         # LOADED_HIGH | CAN_USE_HEAP
    assert _u16(setup, 0x224) == FW_CMDLINE_ADDR - FW_SETUP_ADDR - 0x200  # heap_end_ptr
    assert _u32(setup, 0x218) == 0 and _u32(setup, 0x21C) == 0          # no initrd
    assert _u16(setup, 0x1FA) == 0                                      # vid_mode untouched
    # Everything else is the file's.
    changed = {i for i in range(len(setup)) if setup[i] != kernel[i]}
    assert changed <= set(range(0x210, 0x212)) | set(range(0x224, 0x226)) | set(range(0x228, 0x22C))
    assert boot.cmdline == b"console=ttyS0" and boot.initrd is None and boot.initrd_addr == 0


def test_initrd_goes_high_below_the_acpi_area() -> None:
    initrd = b"\x1f\x8b" + bytes(10_000)
    boot = plan_firmware_linux_boot(_image(), initrd, "", 512 * MiB)
    initrd_max = 512 * MiB - FW_ACPI_DATA_SIZE - 1
    assert boot.initrd_addr == (initrd_max - len(initrd)) & ~0xFFF
    assert _u32(boot.setup, 0x218) == boot.initrd_addr and _u32(boot.setup, 0x21C) == len(initrd)
    assert boot.initrd is initrd


def test_initrd_addr_max_is_honoured_without_the_above_4g_flag() -> None:
    boot = plan_firmware_linux_boot(_image(xloadflags=0x01, initrd_addr_max=0x0FFFFFFF), b"x" * 5000,
                                    "", 512 * MiB)
    assert boot.initrd_addr == (0x0FFFFFFF - 5000) & ~0xFFF


def test_initrd_too_large() -> None:
    with pytest.raises(LinuxBootError, match="initrd is too large"):
        plan_firmware_linux_boot(_image(), bytes(4 * MiB), "", 4 * MiB)


def test_initrd_over_the_kernel_is_refused() -> None:
    with pytest.raises(LinuxBootError, match="not enough RAM"):
        plan_firmware_linux_boot(_image(kernel_size=2 * MiB), bytes(1 * MiB), "", 4 * MiB)


@pytest.mark.parametrize(("arg", "mode"), [("vga=normal", 0xFFFF), ("vga=ext", 0xFFFE), ("vga=ask", 0xFFFD),
                                           ("quiet vga=0x317 console=ttyS0", 0x317), ("vga=791", 791)])
def test_vga_argument_sets_vid_mode(arg: str, mode: int) -> None:
    assert _u16(plan_firmware_linux_boot(_image(), None, arg, 512 * MiB).setup, 0x1FA) == mode


@pytest.mark.parametrize("arg", ["vga=banana", "vga=0x10000", "vga="])
def test_bad_vga_argument(arg: str) -> None:
    with pytest.raises(LinuxBootError, match="vga"):
        plan_firmware_linux_boot(_image(), None, arg, 512 * MiB)


def test_command_line_limits() -> None:
    with pytest.raises(LinuxBootError, match="too long"):
        plan_firmware_linux_boot(_image(cmdline_size=15), None, "x" * 16, 512 * MiB)
    plan_firmware_linux_boot(_image(cmdline_size=15), None, "x" * 15, 512 * MiB)
    with pytest.raises(LinuxBootError, match="NUL"):
        plan_firmware_linux_boot(_image(), None, "a\0b", 512 * MiB)


def test_not_a_bzimage_is_refused() -> None:
    with pytest.raises(LinuxBootError):
        plan_firmware_linux_boot(b"\x7fELF" + bytes(8192), None, "", 512 * MiB)


def test_fw_cfg_items() -> None:
    fw_cfg = FWCfgState()
    boot = plan_firmware_linux_boot(_image(), b"INITRD", "root=/dev/ram", 512 * MiB)
    fw_cfg_add_linux_boot(fw_cfg, setup=boot.setup, setup_addr=boot.setup_addr, kernel=boot.kernel,
                          kernel_addr=boot.kernel_addr, cmdline=boot.cmdline, cmdline_addr=boot.cmdline_addr,
                          initrd=boot.initrd, initrd_addr=boot.initrd_addr)

    def u32(key: int) -> int:
        data = fw_cfg.get(key)
        assert data is not None and len(data) == 4
        return _u32(data, 0)

    assert u32(FWCfgKey.SETUP_ADDR) == FW_SETUP_ADDR and u32(FWCfgKey.SETUP_SIZE) == len(boot.setup)
    assert fw_cfg.get(FWCfgKey.SETUP_DATA) == boot.setup
    assert u32(FWCfgKey.KERNEL_ADDR) == FW_KERNEL_ADDR and u32(FWCfgKey.KERNEL_SIZE) == len(boot.kernel)
    assert fw_cfg.get(FWCfgKey.KERNEL_DATA) == boot.kernel
    assert u32(FWCfgKey.CMDLINE_ADDR) == FW_CMDLINE_ADDR and u32(FWCfgKey.CMDLINE_SIZE) == 14
    assert fw_cfg.get(FWCfgKey.CMDLINE_DATA) == b"root=/dev/ram\0"
    assert u32(FWCfgKey.INITRD_ADDR) == boot.initrd_addr and u32(FWCfgKey.INITRD_SIZE) == 6
    assert fw_cfg.get(FWCfgKey.INITRD_DATA) == b"INITRD"
    # Through the guest's port interface, as linuxboot.bin reads them.
    fw_cfg.comb_write(0, FWCfgKey.CMDLINE_DATA, 2)
    assert bytes(fw_cfg.comb_read(1, 1) for _ in range(5)) == b"root="


def test_option_rom_with_bootindex_writes_bootorder() -> None:
    fw_cfg = FWCfgState()
    fw_cfg.update_bootorder()
    assert fw_cfg.file("bootorder") == b""                      # no boot device: empty, as QEMU
    fw_cfg_add_option_rom(fw_cfg, "other.bin", b"\x55\xaa", bootindex=3)
    fw_cfg_add_option_rom(fw_cfg, "linuxboot_dma.bin", b"\x55\xaa\x01", bootindex=0)
    fw_cfg_add_option_rom(fw_cfg, "nic.rom", b"\x55\xaa")
    assert fw_cfg.file("genroms/linuxboot_dma.bin") == b"\x55\xaa\x01"
    assert fw_cfg.file("bootorder") == b"/rom@genroms/linuxboot_dma.bin\n/rom@genroms/other.bin\0"
    with pytest.raises(FWCfgError, match="bootindex 0"):
        fw_cfg.add_boot_device(0, "/rom@genroms/again.bin")


def test_ich9_smi_en_reports_smm_as_set_up() -> None:
    import pemu.hw.isa.lpc_ich9  # noqa: F401  (registers the types)
    import pemu.hw.pci_host.q35  # noqa: F401
    from pemu.hw.core.qdev import device_cold_reset, qdev_new, qdev_realize
    from pemu.hw.core.sysbus import sysbus_realize
    from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion
    from pemu.system.physmem import address_space_io, cpu_exec_init_all, get_system_memory

    cpu_exec_init_all()
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    get_system_memory().add_subregion_overlap(0, pci, -1)
    host = qdev_new("q35-pcihost")
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    lpc: Any = qdev_new("ICH9-LPC")
    lpc.property_set("addr", "1f.0")
    qdev_realize(lpc, host.bus)  # type: ignore[attr-defined]
    lpc.config_write(0x40, 0x601, 4)
    lpc.config_write(0x44, 0x80, 1)
    io = address_space_io()
    assert io.dispatch_read(0x630, 4) == 0x20                   # APMC_EN: SeaBIOS skips SMM setup
    io.dispatch_write(0x630, 0x1, 4)                            # GBL_SMI_EN
    assert io.dispatch_read(0x630, 4) == 0x21                   # APMC_EN cannot be cleared
    io.dispatch_write(0x631, 0xAB, 1)
    assert io.dispatch_read(0x630, 4) == 0xAB21
    assert io.dispatch_read(0x634, 4) == 0                      # SMI_STS: nothing pending
    io.dispatch_write(0x634, 0xFFFFFFFF, 4)
    assert io.dispatch_read(0x630, 2) == 0xAB21
    device_cold_reset(lpc)
    assert lpc.smi_en == 0x20


def test_dsdt_fw_cfg_device_for_linux_qemu_fw_cfg() -> None:
    from pemu.hw.i386.acpi_build import build_dsdt, build_fw_cfg_aml, q35_acpi_config

    expected = (
        b"\x5b\x82\x2e" + b"FWCF"                                    # Device (FWCF), PkgLength 0x2E
        + b"\x08_HID\x0dQEMU0002\x00"                                # Name (_HID, "QEMU0002")
        + b"\x08_STA\x0a\x0b"                                        # Name (_STA, 0x0B)
        + b"\x08_CRS\x11\x0d\x0a\x0a"                                # Name (_CRS, Buffer (10) {
        + b"\x47\x01\x10\x05\x10\x05\x01\x0c"                        #   IO (Decode16, 0x510, 0x510, 1, 12)
        + b"\x79\x08")                                               #   EndTag, checksum })
    assert build_fw_cfg_aml(0x510, 0x0C) == expected
    cfg = q35_acpi_config(0x80000000, hpet=True, mcfg=(0xB0000000, 0x10000000), fw_cfg_io=(0x510, 0x0C))
    assert expected in build_dsdt(cfg)
    assert b"FWCF" not in build_dsdt(q35_acpi_config(0x80000000, hpet=True, mcfg=None))
