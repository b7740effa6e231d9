"""The ICH9 SMBus controller at 00:1f.3 (QEMU's hw/i2c/smbus_ich9.c with
the host interface of hw/i2c/pm_smbus.c).

:class:`ICH9SMBusHost` is the register model of the 32-byte host interface
behind BAR4 (ICH9 datasheet, "SMBus I/O registers"), with the interrupt
line passed in; :class:`ICH9SMBState` is the PCI function that maps it.
Transactions run to completion when START is written: HOST_BUSY is never
seen set, and the status shows INTR on success, DEV_ERR when nothing
answers at the address, FAILED for a KILL or a command this model does not
carry out.  That is what Linux's i2c-i801 needs to probe the controller and
find no devices.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Any

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.hw.i2c import SMBUS_BLOCK_MAX, SMBusBus, SMBusNack
from pemu.hw.i2c.smbus_eeprom import (
    SMBUS_EEPROM_BASE_ADDRESS,
    SMBUS_EEPROM_MAX,
    VMSTATE_SMBUS_EEPROM,
    SMBusEEPROM,
)
from pemu.hw.pci.pci import (
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_COMMAND,
    PCI_COMMAND_IO,
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIDevice,
    PCIDeviceClass,
    pci_config_set_interrupt_pin,
    pci_register_bar,
    pci_set_irq,
)
from pemu.migration.vmstate import (
    U8,
    U16,
    Array,
    Buffer,
    DeviceOptional,
    Struct,
    UInt,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.qom.object import ObjectClass, TypeInfo, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps
from pemu.util.log import LOG_UNIMP, guest_error, qemu_log_mask

TYPE_ICH9_SMB_DEVICE = "ICH9-SMB"
PCI_DEVICE_ID_INTEL_ICH9_6 = 0x2930
PCI_CLASS_SERIAL_SMBUS = 0x0C05
ICH9_A2_SMB_REVISION = 0x02

ICH9_SMB_SMB_BASE_BAR = 4
ICH9_SMB_SMB_BASE = 0x20  # BAR4 in config space
ICH9_SMB_HOSTC = 0x40
ICH9_SMB_HOSTC_HST_EN = 0x01
ICH9_SMB_HOSTC_SMB_SMI_EN = 0x02
ICH9_SMB_HOSTC_I2C_EN = 0x04
ICH9_SMB_IO_SIZE = 32
# Where SeaBIOS puts the host interface (PMBASE + 0x100); direct boot copies it.
ICH9_SMB_DIRECT_BOOT_BASE = 0x700


class SMBReg(IntEnum):
    """Offsets in the host interface."""

    HST_STS = 0x00
    HST_CNT = 0x02
    HST_CMD = 0x03
    XMIT_SLVA = 0x04
    HST_D0 = 0x05
    HST_D1 = 0x06
    HOST_BLOCK_DB = 0x07
    PEC = 0x08
    RCV_SLVA = 0x09
    SLV_DATA = 0x0A  # two bytes
    AUX_STS = 0x0C
    AUX_CTL = 0x0D
    SMLINK_PIN_CTL = 0x0E
    SMBUS_PIN_CTL = 0x0F
    SLV_STS = 0x10
    SLV_CMD = 0x11
    NOTIFY_DADDR = 0x14
    NOTIFY_DLOW = 0x16
    NOTIFY_DHIGH = 0x17


class HostStatus(IntFlag):
    HOST_BUSY = 0x01
    INTR = 0x02
    DEV_ERR = 0x04
    BUS_ERR = 0x08
    FAILED = 0x10
    SMBALERT_STS = 0x20
    INUSE_STS = 0x40
    BYTE_DONE_STS = 0x80


# Status bits the guest clears by writing 1 (INUSE_STS too, handled apart).
HST_STS_W1C = (HostStatus.INTR | HostStatus.DEV_ERR | HostStatus.BUS_ERR | HostStatus.FAILED
               | HostStatus.SMBALERT_STS | HostStatus.BYTE_DONE_STS)
HST_STS_IRQ = HostStatus.INTR | HostStatus.DEV_ERR | HostStatus.BUS_ERR | HostStatus.FAILED


class HostControl(IntFlag):
    INTREN = 0x01
    KILL = 0x02
    SMB_CMD_MASK = 0x1C
    LAST_BYTE = 0x20
    START = 0x40
    PEC_EN = 0x80


class SMBCommand(IntEnum):
    """HST_CNT.SMB_CMD (bits 4:2)."""

    QUICK = 0
    BYTE = 1
    BYTE_DATA = 2
    WORD_DATA = 3
    PROCESS_CALL = 4
    BLOCK = 5
    I2C_READ = 6
    BLOCK_PROCESS = 7


AUX_CTL_CRC = 0x01
AUX_CTL_E32B = 0x02  # the 32-byte block buffer
AUX_STS_MASK = 0x03
SMBUS_PIN_CTL_LINES_HIGH = 0x03  # SMBCLK and SMBDATA read back high (idle bus)
SMBUS_PIN_CTL_WMASK = 0x04  # SMBCLK_CTL
RCV_SLVA_DEFAULT = 0x44


class ICH9SMBusHost:
    """The SMBus host interface registers; ``irq`` is the controller's
    interrupt (raised while INTREN is set and a completion status is)."""

    def __init__(self, bus: SMBusBus, irq: IRQLine | None = None) -> None:
        self.bus = bus
        self.irq: IRQLine = irq if irq is not None else NoIRQ()
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.control = 0
        self.command = 0
        self.address = 0
        self.data0 = 0
        self.data1 = 0
        self.pec = 0
        self.rcv_slva = RCV_SLVA_DEFAULT
        self.slv_data = 0
        self.aux_sts = 0
        self.aux_ctl = 0
        self.smlink_pin_ctl = 0
        self.smbus_pin_ctl = 0
        self.slv_sts = 0
        self.slv_cmd = 0
        self.block = bytearray(SMBUS_BLOCK_MAX)
        self.block_index = 0
        self._irq_level = -1
        self._update_irq()

    # -- register access ------------------------------------------------------------
    def read(self, offset: int, size: int = 1) -> int:
        value = 0
        for i in range(size):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def write(self, offset: int, value: int, size: int = 1) -> None:
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, offset: int) -> int:
        if offset == SMBReg.HST_STS:
            value = self.status
            # INUSE_STS is a semaphore: a read returns it and sets it.
            self.status |= HostStatus.INUSE_STS
            return value
        if offset == SMBReg.HST_CNT:
            self.block_index = 0  # reading the control register rewinds the block buffer
            return self.control & ~(HostControl.START | HostControl.KILL) & 0xFF
        if offset == SMBReg.HOST_BLOCK_DB:
            if self.aux_ctl & AUX_CTL_E32B:
                value = self.block[self.block_index]
                self.block_index = (self.block_index + 1) % SMBUS_BLOCK_MAX
                return value
            return self.block[0]
        simple = {
            SMBReg.HST_CMD: self.command, SMBReg.XMIT_SLVA: self.address, SMBReg.HST_D0: self.data0,
            SMBReg.HST_D1: self.data1, SMBReg.PEC: self.pec, SMBReg.RCV_SLVA: self.rcv_slva,
            SMBReg.SLV_DATA: self.slv_data & 0xFF, SMBReg.SLV_DATA + 1: self.slv_data >> 8,
            SMBReg.AUX_STS: self.aux_sts, SMBReg.AUX_CTL: self.aux_ctl,
            SMBReg.SMLINK_PIN_CTL: self.smlink_pin_ctl | SMBUS_PIN_CTL_LINES_HIGH,
            SMBReg.SMBUS_PIN_CTL: self.smbus_pin_ctl | SMBUS_PIN_CTL_LINES_HIGH,
            SMBReg.SLV_STS: self.slv_sts, SMBReg.SLV_CMD: self.slv_cmd,
        }
        if offset in simple:
            return simple[offset] & 0xFF
        if 0 <= offset < ICH9_SMB_IO_SIZE:
            return 0  # reserved and host-notify registers: nothing notifies
        guest_error(f"ich9-smbus: read at offset {offset:#x} outside the host interface")
        return 0xFF

    def _write_byte(self, offset: int, value: int) -> None:
        if offset == SMBReg.HST_STS:
            self.status &= ~(value & HST_STS_W1C) & 0xFF
            if value & HostStatus.INUSE_STS:
                self.status &= ~HostStatus.INUSE_STS & 0xFF
            self._update_irq()
        elif offset == SMBReg.HST_CNT:
            self.control = value & ~(HostControl.START | HostControl.KILL) & 0xFF
            if value & HostControl.KILL:
                # Nothing is ever in flight: the kill still reports FAILED.
                self.status |= HostStatus.FAILED
            elif value & HostControl.START:
                self._start(SMBCommand((value & HostControl.SMB_CMD_MASK) >> 2))
            self._update_irq()
        elif offset == SMBReg.HST_CMD:
            self.command = value
        elif offset == SMBReg.XMIT_SLVA:
            self.address = value
        elif offset == SMBReg.HST_D0:
            self.data0 = value
        elif offset == SMBReg.HST_D1:
            self.data1 = value
        elif offset == SMBReg.HOST_BLOCK_DB:
            if self.aux_ctl & AUX_CTL_E32B:
                self.block[self.block_index] = value
                self.block_index = (self.block_index + 1) % SMBUS_BLOCK_MAX
            else:
                self.block[0] = value
        elif offset == SMBReg.PEC:
            self.pec = value
        elif offset == SMBReg.RCV_SLVA:
            self.rcv_slva = value & 0x7F
        elif offset == SMBReg.AUX_STS:
            self.aux_sts &= ~(value & AUX_STS_MASK) & 0xFF
        elif offset == SMBReg.AUX_CTL:
            self.aux_ctl = value & (AUX_CTL_CRC | AUX_CTL_E32B)
        elif offset == SMBReg.SMLINK_PIN_CTL:
            self.smlink_pin_ctl = value & SMBUS_PIN_CTL_WMASK
        elif offset == SMBReg.SMBUS_PIN_CTL:
            self.smbus_pin_ctl = value & SMBUS_PIN_CTL_WMASK
        elif offset == SMBReg.SLV_STS:
            self.slv_sts &= ~(value & 0x01) & 0xFF
        elif offset == SMBReg.SLV_CMD:
            self.slv_cmd = value & 0x07
        elif not 0 <= offset < ICH9_SMB_IO_SIZE:
            guest_error(f"ich9-smbus: write at offset {offset:#x} outside the host interface")
        # Other offsets (SLV_DATA, host notify, reserved) are read-only or unused.

    # -- transactions ---------------------------------------------------------------
    def _start(self, cmd: SMBCommand) -> None:
        target = self.address >> 1
        read = bool(self.address & 1)
        device = self.bus.find(target)
        if device is None:
            self.status |= HostStatus.DEV_ERR
            return
        try:
            if cmd == SMBCommand.QUICK:
                device.quick_command(read)
            elif cmd == SMBCommand.BYTE:
                if read:
                    self.data0 = device.receive_byte() & 0xFF
                else:
                    device.send_byte(self.command)
            elif cmd == SMBCommand.BYTE_DATA:
                if read:
                    self.data0 = _first(device.read_data(self.command, 1), 1)[0]
                else:
                    device.write_data(self.command, bytes([self.data0]))
            elif cmd == SMBCommand.WORD_DATA:
                if read:
                    self.data0, self.data1 = _first(device.read_data(self.command, 2), 2)
                else:
                    device.write_data(self.command, bytes([self.data0, self.data1]))
            elif cmd == SMBCommand.BLOCK and self.aux_ctl & AUX_CTL_E32B:
                if read:
                    data = bytes(device.read_data(self.command, SMBUS_BLOCK_MAX))[:SMBUS_BLOCK_MAX]
                    self.data0 = len(data)
                    self.block[:len(data)] = data
                else:
                    count = self.data0
                    if not 1 <= count <= SMBUS_BLOCK_MAX:
                        guest_error(f"ich9-smbus: block write of {count} bytes")
                        self.status |= HostStatus.FAILED
                        return
                    device.write_data(self.command, bytes(self.block[:count]))
                self.block_index = 0
            else:
                qemu_log_mask(LOG_UNIMP, f"ich9-smbus: command {cmd.name} is not implemented")
                self.status |= HostStatus.FAILED
                return
        except SMBusNack:
            self.status |= HostStatus.DEV_ERR
            return
        self.status |= HostStatus.INTR

    def irq_level(self) -> int:
        return 1 if (self.control & HostControl.INTREN and self.status & HST_STS_IRQ) else 0

    def _update_irq(self) -> None:
        level = self.irq_level()
        if level != self._irq_level:
            self._irq_level = level
            self.irq.set(level)


def _first(data: bytes, n: int) -> bytes:
    """The first ``n`` bytes a device returned, padded with 0xFF (an idle bus)."""
    data = bytes(data)[:n]
    return data + b"\xff" * (n - len(data))


# --- migration (QEMU's vmstate_smbus / pmsmb) ------------------------------------------------------


def _smbus_host_post_load(host: ICH9SMBusHost, version_id: int) -> None:
    """The interrupt output is what the registers give; the PCI function's
    INTx state (loaded before) carries the same level, nothing is driven."""
    host._irq_level = host.irq_level()


VMSTATE_ICH9_SMBUS_HOST = VMStateDescription("pmsmb", version_id=1, fields=[
    # The model never leaves HOST_BUSY set, nor START/KILL in the control register.
    VMStateField("status", U8, check=lambda v: not v & HostStatus.HOST_BUSY),
    VMStateField("control", U8, check=lambda v: not v & (HostControl.START | HostControl.KILL)),
    VMStateField("command", U8),
    VMStateField("address", U8),
    VMStateField("data0", U8),
    VMStateField("data1", U8),
    VMStateField("pec", U8),
    VMStateField("rcv_slva", UInt(7)),
    VMStateField("slv_data", U16),
    VMStateField("aux_sts", U8, check=lambda v: not v & ~AUX_STS_MASK),
    VMStateField("aux_ctl", U8, check=lambda v: not v & ~(AUX_CTL_CRC | AUX_CTL_E32B)),
    VMStateField("smlink_pin_ctl", U8, check=lambda v: not v & ~SMBUS_PIN_CTL_WMASK),
    VMStateField("smbus_pin_ctl", U8, check=lambda v: not v & ~SMBUS_PIN_CTL_WMASK),
    VMStateField("slv_sts", U8, check=lambda v: v <= 1),
    VMStateField("slv_cmd", U8, check=lambda v: v <= 7),
    VMStateField("block", Buffer(SMBUS_BLOCK_MAX)),
    VMStateField("block_index", U8, check=range(SMBUS_BLOCK_MAX)),
], post_load=_smbus_host_post_load)


# --- the PCI function ----------------------------------------------------------------------


class _PCIIntx:
    def __init__(self, dev: PCIDevice) -> None:
        self.dev = dev

    def set(self, level: int) -> None:
        pci_set_irq(self.dev, level)


class ICH9SMBState(PCIDevice):
    smb: ICH9SMBusHost
    smbus: SMBusBus
    io: MemoryRegion

    def config_write(self, addr: int, value: int, size: int) -> None:
        super().config_write(addr, value, size)
        if addr <= ICH9_SMB_HOSTC < addr + size:
            self.update_hostc()

    # The SPD EEPROMs at 0x50-0x57 as the description saves them (None: no EEPROM there).
    @property
    def spd_eeproms(self) -> list[SMBusEEPROM | None]:
        slots: list[SMBusEEPROM | None] = []
        for i in range(SMBUS_EEPROM_MAX):
            dev = self.smbus.find(SMBUS_EEPROM_BASE_ADDRESS + i)
            slots.append(dev if isinstance(dev, SMBusEEPROM) else None)
        return slots

    @spd_eeproms.setter
    def spd_eeproms(self, loaded: list[SMBusEEPROM | None]) -> None:
        pass  # loaded in place (DeviceOptional checked that the same slots are filled)

    def update_hostc(self) -> None:
        """The host interface answers while HST_EN is set and I2C_EN is clear."""
        hostc = self.config[ICH9_SMB_HOSTC]
        self.io.set_enabled(bool(hostc & ICH9_SMB_HOSTC_HST_EN) and not hostc & ICH9_SMB_HOSTC_I2C_EN)


def _ich9_smb_realize(dev: Any) -> None:
    s: ICH9SMBState = dev
    pci_config_set_interrupt_pin(s, 1)  # INTA
    s.wmask[ICH9_SMB_HOSTC] = ICH9_SMB_HOSTC_HST_EN | ICH9_SMB_HOSTC_I2C_EN
    s.smbus = SMBusBus("i2c")
    s.smb = ICH9SMBusHost(s.smbus, _PCIIntx(s))
    s.io = MemoryRegion.io("smbus", ICH9_SMB_IO_SIZE,
                           MemoryRegionOps(s.smb.read, s.smb.write, 1, 4, True, 1, 4), owner=s)
    s.io.enabled = False
    pci_register_bar(s, ICH9_SMB_SMB_BASE_BAR, PCI_BASE_ADDRESS_SPACE_IO, s.io)


def _ich9_smb_reset(dev: Any) -> None:
    s: ICH9SMBState = dev
    s.config[ICH9_SMB_HOSTC] = 0
    s.smb.reset()
    s.smbus.reset()
    s.update_hostc()


def ich9_smb_direct_boot_setup(s: ICH9SMBState) -> None:
    """What SeaBIOS programs, for direct boot: the host interface at 0x700,
    HST_EN, I/O decoding on."""
    s.config_write(ICH9_SMB_SMB_BASE, ICH9_SMB_DIRECT_BOOT_BASE | PCI_BASE_ADDRESS_SPACE_IO, 4)
    s.config_write(ICH9_SMB_HOSTC, ICH9_SMB_HOSTC_HST_EN, 1)
    s.config_write(PCI_COMMAND, s.get_word(PCI_COMMAND) | PCI_COMMAND_IO, 2)


def _ich9_smb_post_load(s: ICH9SMBState, version_id: int) -> None:
    """HOSTC's reserved bits are refused; the host interface is enabled as
    a HOSTC write enables it (its BAR was placed with the config space)."""
    hostc = s.config[ICH9_SMB_HOSTC]
    if hostc & ~(ICH9_SMB_HOSTC_HST_EN | ICH9_SMB_HOSTC_I2C_EN):
        raise VMStateError(f"HOSTC = {hostc:#04x} sets bits the register does not have")
    if s.smb.irq_level() != s.irq_state & 1:
        raise VMStateError(f"the host status {s.smb.status:#04x} and control {s.smb.control:#04x} "
                           f"disagree with the function's INTx state {s.irq_state}")
    s.update_hostc()


VMSTATE_ICH9_SMB = VMStateDescription("ich9_smb", version_id=1, fields=[
    VMSTATE_PCI_DEVICE_FIELD,
    VMStateField("smb", Struct(VMSTATE_ICH9_SMBUS_HOST)),
    VMStateField("spd_eeproms", Array(DeviceOptional(VMSTATE_SMBUS_EEPROM), SMBUS_EEPROM_MAX)),
], post_load=_ich9_smb_post_load)


def _ich9_smb_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCIDeviceClass)
    k.vmsd = VMSTATE_ICH9_SMB
    k.vendor_id = 0x8086
    k.device_id = PCI_DEVICE_ID_INTEL_ICH9_6
    k.revision = ICH9_A2_SMB_REVISION
    k.class_id = PCI_CLASS_SERIAL_SMBUS
    k.user_creatable = False  # part of the ICH9, wired by pc_q35_init
    k.desc = "ICH9 SMBUS Bridge"
    k.pci_realize = _ich9_smb_realize
    k.pci_reset = _ich9_smb_reset


type_register(TypeInfo(TYPE_ICH9_SMB_DEVICE, parent=TYPE_PCI_DEVICE, instance_type=ICH9SMBState,
                       class_init=_ich9_smb_class_init, interfaces=("conventional-pci-device",)))
