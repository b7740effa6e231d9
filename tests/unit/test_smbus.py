"""The ICH9 SMBus controller: the host interface registers as Linux's
i2c-i801 drives them (probe, quick command to an absent address -> DEV_ERR),
a present device, and the PCI function at 1f.3 with its BAR4."""

from __future__ import annotations

from typing import Any

import pytest

import pemu.hw.i2c.smbus_ich9  # noqa: F401  (registers the type)
import pemu.hw.pci_host.q35  # noqa: F401
from pemu.hw.core.qdev import device_cold_reset, qdev_new, qdev_realize
from pemu.hw.core.sysbus import sysbus_realize
from pemu.hw.i2c import SMBusBus, SMBusNack
from pemu.hw.i2c.smbus_ich9 import ICH9SMBusHost, ich9_smb_direct_boot_setup
from pemu.hw.pci.pci import pci_bus_irqs
from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion
from pemu.system.physmem import address_space_io, cpu_exec_init_all, get_system_memory

HST_STS, HST_CNT, HST_CMD, XMIT_SLVA, HST_D0, HST_D1, BLOCK_DB, AUX_CTL = 0, 2, 3, 4, 5, 6, 7, 0x0D
INTR, DEV_ERR, FAILED, INUSE = 0x02, 0x04, 0x10, 0x40
START, INTREN, KILL = 0x40, 0x01, 0x02
QUICK, BYTE_DATA, WORD_DATA, BLOCK = 0 << 2, 2 << 2, 3 << 2, 5 << 2


class Line:
    def __init__(self) -> None:
        self.level = 0

    def set(self, level: int) -> None:
        self.level = level


class EEPROM:
    """A 256-byte SPD-like target."""

    def __init__(self) -> None:
        self.mem = bytearray(range(256))
        self.quick: list[bool] = []

    def quick_command(self, read: bool) -> None:
        self.quick.append(read)

    def send_byte(self, value: int) -> None:
        raise SMBusNack

    def receive_byte(self) -> int:
        return self.mem[0]

    def write_data(self, command: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.mem[(command + i) & 0xFF] = b

    def read_data(self, command: int, length: int) -> bytes:
        return bytes(self.mem[(command + i) & 0xFF] for i in range(length))

    def reset(self) -> None:
        pass


@pytest.fixture
def host() -> tuple[ICH9SMBusHost, SMBusBus, Line]:
    bus, line = SMBusBus("i2c"), Line()
    return ICH9SMBusHost(bus, line), bus, line


def i801_check_pre(smb: ICH9SMBusHost) -> None:
    status = smb.read(HST_STS)
    assert not status & 0x01                                    # not busy
    if status & 0x9E:
        smb.write(HST_STS, status & 0x9E)


def test_i801_probe_of_an_absent_address(host: Any) -> None:
    smb, _, line = host
    assert smb.read(HST_STS) == 0                               # first read: INUSE was clear...
    assert smb.read(HST_STS) == INUSE                           # ...and is now set
    smb.write(AUX_CTL, smb.read(AUX_CTL) & ~0x03)               # clear CRC/E32B as the driver does
    i801_check_pre(smb)
    smb.write(XMIT_SLVA, (0x50 << 1) | 0)                       # quick write to 0x50: nobody there
    smb.write(HST_CNT, QUICK | START)
    status = smb.read(HST_STS)
    assert status & DEV_ERR and not status & INTR and not status & 0x01
    assert smb.read(HST_CNT) & START == 0                       # START reads back 0
    smb.write(HST_STS, INUSE | 0x9E)                             # release as i801_access does
    assert smb.read(HST_STS) == 0


def test_interrupt_mode_raises_and_clears(host: Any) -> None:
    smb, _, line = host
    smb.write(XMIT_SLVA, (0x51 << 1) | 1)
    smb.write(HST_CNT, INTREN | BYTE_DATA | START)
    assert line.level == 1
    smb.write(HST_STS, DEV_ERR)
    assert line.level == 0
    smb.write(HST_CNT, KILL)                                    # kill reports FAILED, INTREN now clear
    assert smb.read(HST_STS) & FAILED and line.level == 0


def test_present_device_transactions(host: Any) -> None:
    smb, bus, _ = host
    eeprom = EEPROM()
    bus.attach(0x50, eeprom)
    smb.write(XMIT_SLVA, (0x50 << 1) | 1)
    smb.write(HST_CNT, QUICK | START)
    assert smb.read(HST_STS) & INTR and eeprom.quick == [True]
    smb.write(HST_STS, 0xFF)
    smb.write(HST_CMD, 0x10)
    smb.write(HST_CNT, WORD_DATA | START)
    assert (smb.read(HST_D0), smb.read(HST_D1)) == (0x10, 0x11)
    smb.write(HST_STS, 0xFF)
    smb.write(XMIT_SLVA, 0x50 << 1)
    smb.write(HST_D0, 0xAB)
    smb.write(HST_CNT, BYTE_DATA | START)
    assert eeprom.mem[0x10] == 0xAB
    smb.write(HST_STS, 0xFF)
    # Block read through the 32-byte buffer.
    smb.write(AUX_CTL, 0x02)
    smb.write(XMIT_SLVA, (0x50 << 1) | 1)
    smb.write(HST_CMD, 0x20)
    smb.write(HST_CNT, BLOCK | START)
    assert smb.read(HST_D0) == 32
    smb.read(HST_CNT)                                           # rewinds the buffer index
    assert [smb.read(BLOCK_DB) for _ in range(3)] == [0x20, 0x21, 0x22]
    # A device that refuses a command: DEV_ERR.
    smb.write(HST_STS, 0xFF)
    smb.write(XMIT_SLVA, 0x50 << 1)
    smb.write(HST_CNT, (1 << 2) | START)                        # send byte: the EEPROM NACKs
    assert smb.read(HST_STS) & DEV_ERR


def test_offsets_outside_the_window_are_guest_errors(host: Any) -> None:
    smb, _, _ = host
    assert smb.read(0x40) == 0xFF
    smb.write(0x40, 1)                                          # ignored, no exception


@pytest.fixture
def pci_smb() -> Any:
    cpu_exec_init_all()
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    get_system_memory().add_subregion_overlap(0, pci, -1)
    host = qdev_new("q35-pcihost")
    host.pci_address_space = pci  # type: ignore[attr-defined]
    sysbus_realize(host)  # type: ignore[arg-type]
    smb = qdev_new("ICH9-SMB")
    smb.property_set("addr", "1f.3")
    qdev_realize(smb, host.bus)  # type: ignore[attr-defined]
    return host, smb


def test_pci_identity_and_bar4(pci_smb: Any) -> None:
    _, smb = pci_smb
    assert smb.config_read(0, 4) == 0x29308086
    assert smb.config_read(0x08, 4) == 0x0C050002               # class 0c05, prog-if 0, rev 2
    assert smb.config_read(0x3D, 1) == 1                        # INTA
    smb.config_write(0x20, 0xFFFFFFFF, 4)
    assert smb.config_read(0x20, 4) == 0xFFFFFFE1               # 32 bytes of I/O


def test_host_interface_needs_bar_io_and_hst_en(pci_smb: Any) -> None:
    _, smb = pci_smb
    io = address_space_io()
    smb.config_write(0x20, 0x0701, 4)
    smb.config_write(0x04, 0x0001, 2)
    assert io.flatview.lookup(0x700) is None                    # HST_EN clear
    smb.config_write(0x40, 0x01, 1)
    assert io.flatview.lookup(0x700).mr.name == "smbus"  # type: ignore[union-attr]
    smb.config_write(0x40, 0x05, 1)                             # I2C_EN: the SMBus host interface goes
    assert io.flatview.lookup(0x700) is None
    device_cold_reset(smb)
    assert smb.config_read(0x40, 1) == 0 and smb.config_read(0x20, 4) == 1


def test_direct_boot_setup_and_intx(pci_smb: Any) -> None:
    host, smb = pci_smb
    lines: dict[int, int] = {}
    pci_bus_irqs(host.bus, lambda n, level: lines.__setitem__(n, level), lambda d, pin: pin, 8)
    ich9_smb_direct_boot_setup(smb)
    io = address_space_io()
    assert io.dispatch_read(0x700, 1) == 0
    io.dispatch_write(0x704, 0x50 << 1, 1)
    io.dispatch_write(0x702, INTREN | QUICK | START, 1)
    assert io.dispatch_read(0x700, 1) & DEV_ERR
    assert lines == {0: 1} and smb.config_read(0x06, 2) & 0x08   # PCI STATUS.INTERRUPT for i801_isr
    io.dispatch_write(0x700, DEV_ERR, 1)
    assert lines == {0: 0}
