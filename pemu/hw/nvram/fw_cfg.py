"""The QEMU firmware configuration device (QEMU's hw/nvram/fw_cfg.c).

fw_cfg is how the VMM hands the firmware (SeaBIOS, the Linux qemu_fw_cfg
driver) everything it cannot probe: RAM size, CPU counts, the e820 map, the
ACPI and SMBIOS tables, the kernel to boot.  Items are numbered; named
*files* live at keys from ``FW_CFG_FILE_FIRST`` up and are listed in a
directory item.  On the PC the interface is three I/O ports:

* 0x510, 16 bits, write: select an item (resets the read offset);
* 0x511, 8 bits, read: the next byte of the selected item (0 past its end);
* 0x514..0x51B: the DMA interface.  The guest writes the guest-physical
  address of a :class:`FWCfgDmaAccess` descriptor, big-endian, as two 32-bit
  halves (the low half at 0x518 starts the transfer) or one 64-bit write.
  Reading it returns the signature "QEMU CFG".

The descriptor ``{be32 control; be32 length; be64 address}`` selects an item
(SELECT, key in the top 16 bits), then READs, SKIPs or WRITEs ``length``
bytes at the current offset.  When done the device writes the control word
back as 0, or as ERROR.  Every descriptor and buffer is accessed through the
DMA address space, never assumed to be RAM: an address with nothing behind
it sets ERROR.

:class:`FWCfgState` is the plain model; :func:`fw_cfg_init_io_dma` builds
the QOM device ("fw_cfg_io") with its I/O windows.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from enum import IntEnum, IntFlag
from typing import Any

from pemu.hw.core.qdev import DeviceClass, qdev_new
from pemu.hw.core.sysbus import TYPE_SYS_BUS_DEVICE, SysBusDevice, sysbus_realize
from pemu.migration.vmstate import U16, U32, U64, Struct, VMStateDescription, VMStateError, VMStateField
from pemu.qom.object import ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.dma import DMAAddressSpace, dma_memory_read, dma_memory_set, dma_memory_write
from pemu.system.memory import MemoryRegion, MemoryRegionOps, MemTxResult
from pemu.util.error import UserError, warn_report
from pemu.util.log import guest_error


class FWCfgKey(IntEnum):
    """The fixed item keys (docs/specs/fw_cfg.rst)."""

    SIGNATURE = 0x00
    ID = 0x01
    UUID = 0x02
    RAM_SIZE = 0x03
    NOGRAPHIC = 0x04
    NB_CPUS = 0x05
    MACHINE_ID = 0x06
    KERNEL_ADDR = 0x07
    KERNEL_SIZE = 0x08
    KERNEL_CMDLINE = 0x09
    INITRD_ADDR = 0x0A
    INITRD_SIZE = 0x0B
    BOOT_DEVICE = 0x0C
    NUMA = 0x0D
    BOOT_MENU = 0x0E
    MAX_CPUS = 0x0F
    KERNEL_ENTRY = 0x10
    KERNEL_DATA = 0x11
    INITRD_DATA = 0x12
    CMDLINE_ADDR = 0x13
    CMDLINE_SIZE = 0x14
    CMDLINE_DATA = 0x15
    SETUP_ADDR = 0x16
    SETUP_SIZE = 0x17
    SETUP_DATA = 0x18
    FILE_DIR = 0x19


FW_CFG_FILE_FIRST = 0x20
FW_CFG_FILE_SLOTS_DEFAULT = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0x3FFF
FW_CFG_INVALID = 0xFFFF
FW_CFG_MAX_FILE_PATH = 56
BOOTORDER_FILE = "bootorder"

FW_CFG_SIGNATURE = b"QEMU"
FW_CFG_DMA_SIGNATURE = b"QEMU CFG"
FW_CFG_VERSION = 0x01
FW_CFG_VERSION_DMA = 0x02

# Offsets of the PC's I/O interface from its base (0x510).
FW_CFG_CTL_OFFSET = 0
FW_CFG_DATA_OFFSET = 1
FW_CFG_DMA_SIZE = 8


class FWCfgDmaControl(IntFlag):
    ERROR = 0x01
    READ = 0x02
    SKIP = 0x04
    SELECT = 0x08
    WRITE = 0x10


FW_CFG_DMA_ACCESS = struct.Struct(">IIQ")
"""FWCfgDmaAccess: control, length, address; all big-endian."""
assert FW_CFG_DMA_ACCESS.size == 16

FW_CFG_FILE = struct.Struct(">IHH56s")
"""One directory entry: size, select, reserved, name (NUL-padded), big-endian."""
assert FW_CFG_FILE.size == 64

DMAMemory = DMAAddressSpace
"""The address space fw_cfg's DMA engine masters (the system memory, as in QEMU)."""


SelectCallback = Callable[[], None]
WriteCallback = Callable[[int, int], None]  # (offset, length) of the bytes the guest wrote


class FWCfgEntry:
    """One fw_cfg item: its bytes and the callbacks run when it is selected or written."""

    def __init__(self, data: bytearray, allow_write: bool = False, select_cb: SelectCallback | None = None,
                 write_cb: WriteCallback | None = None) -> None:
        self.data = data
        self.allow_write = allow_write
        self.select_cb = select_cb
        self.write_cb = write_cb


class FWCfgError(Exception):
    """A VMM-side misuse of the item table (duplicate file, no free slot)."""


class FWCfgState:
    """The item table and the guest interface of one fw_cfg device."""

    def __init__(self, dma_as: DMAMemory | None = None, file_slots: int = FW_CFG_FILE_SLOTS_DEFAULT) -> None:
        if not 0 < file_slots <= FW_CFG_ENTRY_MASK + 1 - FW_CFG_FILE_FIRST:
            raise ValueError(f"fw_cfg: {file_slots} file slots")
        self.dma_as = dma_as
        self.file_slots = file_slots
        self.entries: dict[int, FWCfgEntry] = {}
        self.files: dict[str, FWCfgEntry] = {}
        self._file_keys: dict[str, int] = {}
        self.cur_entry = FW_CFG_INVALID
        self.cur_offset = 0
        self.dma_addr = 0
        self._in_dma = False
        self.boot_devices: list[tuple[int, str]] = []
        self.add_bytes(FWCfgKey.SIGNATURE, FW_CFG_SIGNATURE)
        self.add_i32(FWCfgKey.ID, FW_CFG_VERSION | (FW_CFG_VERSION_DMA if self.dma_enabled else 0))
        self._update_file_dir()

    @property
    def dma_enabled(self) -> bool:
        return self.dma_as is not None

    @property
    def max_entry(self) -> int:
        return FW_CFG_FILE_FIRST + self.file_slots

    # -- the VMM side: items ------------------------------------------------------
    def add_bytes(self, key: int, data: bytes, allow_write: bool = False) -> None:
        """Set a numbered item (also arch-local ones, key | FW_CFG_ARCH_LOCAL)."""
        index = key & FW_CFG_ENTRY_MASK
        if key & ~(FW_CFG_ENTRY_MASK | FW_CFG_ARCH_LOCAL) or index >= FW_CFG_FILE_FIRST:
            raise ValueError(f"fw_cfg: {key:#x} is not a numbered item key")
        self.entries[key] = FWCfgEntry(bytearray(data), allow_write)

    def add_string(self, key: int, text: str) -> None:
        self.add_bytes(key, text.encode() + b"\0")

    def add_i16(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<H", value & 0xFFFF))

    def add_i32(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<I", value & 0xFFFFFFFF))

    def add_i64(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<Q", value & (1 << 64) - 1))

    def get(self, key: int) -> bytes | None:
        entry = self._entry(key)
        return None if entry is None else bytes(entry.data)

    # -- the VMM side: files ------------------------------------------------------
    def add_file(self, name: str, data: bytes, *, select_cb: SelectCallback | None = None,
                 write_cb: WriteCallback | None = None, allow_write: bool = False) -> None:
        raw = name.encode()
        if not raw or len(raw) > FW_CFG_MAX_FILE_PATH - 1 or b"\0" in raw:
            raise FWCfgError(f"fw_cfg: bad file name {name!r}")
        if name in self.files:
            raise FWCfgError(f"duplicate fw_cfg file name: {name}")
        if len(self.files) >= self.file_slots:
            raise FWCfgError("fw_cfg: no free file slots")
        self.files[name] = FWCfgEntry(bytearray(data), allow_write, select_cb, write_cb)
        self._update_file_dir()

    def modify_file(self, name: str, data: bytes) -> None:
        """Replace a file's contents (adding it if it does not exist yet)."""
        entry = self.files.get(name)
        if entry is None:
            self.add_file(name, data)
            return
        entry.data = bytearray(data)
        self._update_file_dir()

    # -- the boot order (QEMU's "bootorder" file from add_boot_device_path) -------
    def add_boot_device(self, bootindex: int, path: str) -> None:
        """Make ``path`` (an OpenFirmware device path) a boot device; the
        firmware tries them by ascending ``bootindex``."""
        if bootindex < 0:
            raise FWCfgError(f"fw_cfg: bad bootindex {bootindex}")
        if any(index == bootindex for index, _ in self.boot_devices):
            raise FWCfgError(f"bootindex {bootindex} used by two devices")
        self.boot_devices.append((bootindex, path))
        self.boot_devices.sort()
        self.update_bootorder()

    def update_bootorder(self) -> None:
        """(Re)write the "bootorder" file: the paths one a line, NUL-terminated
        (empty when there is no boot device)."""
        text = "\n".join(path for _, path in self.boot_devices)
        self.modify_file(BOOTORDER_FILE, text.encode() + b"\0" if text else b"")

    def file(self, name: str) -> bytes | None:
        entry = self.files.get(name)
        return None if entry is None else bytes(entry.data)

    def file_key(self, name: str) -> int | None:
        return self._file_keys.get(name)

    def _update_file_dir(self) -> None:
        # Files get their keys in name order, as QEMU's machines from 2.x on.
        names = sorted(self.files)
        self._file_keys = {name: FW_CFG_FILE_FIRST + i for i, name in enumerate(names)}
        directory = bytearray(struct.pack(">I", len(names)))
        for name in names:
            directory += FW_CFG_FILE.pack(len(self.files[name].data), self._file_keys[name], 0, name.encode())
        self.entries[FWCfgKey.FILE_DIR] = FWCfgEntry(directory)

    def _entry(self, key: int) -> FWCfgEntry | None:
        index = key & FW_CFG_ENTRY_MASK
        if index >= FW_CFG_FILE_FIRST and not key & FW_CFG_ARCH_LOCAL:
            slot = index - FW_CFG_FILE_FIRST
            names = sorted(self.files)
            return self.files[names[slot]] if slot < len(names) else None
        return self.entries.get(key & (FW_CFG_ENTRY_MASK | FW_CFG_ARCH_LOCAL))

    # -- the guest side -----------------------------------------------------------
    def reset(self) -> None:
        self.select(0)
        self.dma_addr = 0

    def select(self, key: int) -> bool:
        key &= 0xFFFF
        self.cur_offset = 0
        if key & FW_CFG_ENTRY_MASK >= self.max_entry:
            self.cur_entry = FW_CFG_INVALID
            return False
        self.cur_entry = key & ~FW_CFG_WRITE_CHANNEL
        entry = self._entry(self.cur_entry)
        if entry is not None and entry.select_cb is not None:
            entry.select_cb()
        return True

    def _current(self) -> FWCfgEntry | None:
        return None if self.cur_entry == FW_CFG_INVALID else self._entry(self.cur_entry)

    def data_read(self, size: int = 1) -> int:
        """The next ``size`` bytes of the item, first byte most significant
        (as QEMU's fw_cfg_data_read); bytes past the end read 0."""
        entry = self._current()
        value = 0
        for _ in range(size):
            byte = 0
            if entry is not None and self.cur_offset < len(entry.data):
                byte = entry.data[self.cur_offset]
                self.cur_offset += 1
            value = (value << 8) | byte
        return value

    # -- I/O windows --------------------------------------------------------------
    def comb_read(self, offset: int, size: int) -> int:
        """Reads of 0x510 (16 bits) or 0x511 (8 bits): both return item data."""
        if not self._comb_valid(offset, size):
            guest_error(f"fw_cfg: invalid read of size {size} at offset {offset}")
            return 0
        return self.data_read(size)

    def comb_write(self, offset: int, value: int, size: int) -> None:
        if not self._comb_valid(offset, size):
            guest_error(f"fw_cfg: invalid write of size {size} at offset {offset}")
            return
        if size == 2:
            self.select(value & 0xFFFF)
        else:
            # Writing through the data port was removed in QEMU 2.4; use DMA.
            guest_error("fw_cfg: write to the data port ignored")

    @staticmethod
    def _comb_valid(offset: int, size: int) -> bool:
        return (offset == FW_CFG_CTL_OFFSET and size == 2) or (offset == FW_CFG_DATA_OFFSET and size == 1)

    def dma_read(self, offset: int, size: int) -> int:
        if not self._dma_valid(offset, size):
            guest_error(f"fw_cfg: invalid DMA register read of size {size} at offset {offset}")
            return 0
        # The signature in memory order: the guest reads the bytes "QEMU CFG".
        return int.from_bytes(FW_CFG_DMA_SIGNATURE[offset:offset + size], "little")

    def dma_write(self, offset: int, value: int, size: int) -> None:
        if not self._dma_valid(offset, size):
            guest_error(f"fw_cfg: invalid DMA register write of size {size} at offset {offset}")
            return
        # The register is big-endian: the first byte written is the most significant.
        be = int.from_bytes((value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"), "big")
        if size == 4 and offset == 0:
            self.dma_addr = be << 32
        elif size == 4:
            self.dma_addr |= be
            self.dma_transfer()
        else:
            self.dma_addr = be
            self.dma_transfer()

    @staticmethod
    def _dma_valid(offset: int, size: int) -> bool:
        return (size == 4 and offset in (0, 4)) or (size == 8 and offset == 0)

    # -- DMA ------------------------------------------------------------------------
    def dma_transfer(self) -> None:
        desc_addr, self.dma_addr = self.dma_addr, 0
        if self.dma_as is None:
            guest_error("fw_cfg: DMA is not enabled")
            return
        if self._in_dma:
            guest_error("fw_cfg: DMA transfer re-entered")
            return
        self._in_dma = True
        try:
            self._dma_transfer(self.dma_as, desc_addr)
        finally:
            self._in_dma = False

    def _dma_transfer(self, space: DMAMemory, desc_addr: int) -> None:
        raw, res = dma_memory_read(space, desc_addr, FW_CFG_DMA_ACCESS.size)
        if res != MemTxResult.OK:
            guest_error(f"fw_cfg: DMA descriptor at {desc_addr:#x} is not readable")
            dma_memory_write(space, desc_addr, struct.pack(">I", FWCfgDmaControl.ERROR))
            return
        control, length, address = FW_CFG_DMA_ACCESS.unpack(raw)
        if control & FWCfgDmaControl.SELECT:
            self.select(control >> 16)
        entry = self._current()
        op = FWCfgDmaControl.SKIP
        if control & FWCfgDmaControl.READ:
            op = FWCfgDmaControl.READ
        elif control & FWCfgDmaControl.WRITE:
            op = FWCfgDmaControl.WRITE
        elif control & FWCfgDmaControl.SKIP:
            op = FWCfgDmaControl.SKIP
        else:
            length = 0
        status = 0
        while length > 0 and not status:
            if entry is None or self.cur_offset >= len(entry.data):
                # Past the end (or no item): reads give zeros, writes fail.
                chunk = length
                if op == FWCfgDmaControl.READ:
                    if dma_memory_set(space, address, 0, chunk) != MemTxResult.OK:
                        status = FWCfgDmaControl.ERROR
                elif op == FWCfgDmaControl.WRITE:
                    guest_error("fw_cfg: DMA write past the end of the item")
                    status = FWCfgDmaControl.ERROR
            else:
                chunk = min(length, len(entry.data) - self.cur_offset)
                start = self.cur_offset
                if op == FWCfgDmaControl.READ:
                    if dma_memory_write(space, address, entry.data[start:start + chunk]) != MemTxResult.OK:
                        guest_error(f"fw_cfg: DMA read into {address:#x}+{chunk:#x} failed")
                        status = FWCfgDmaControl.ERROR
                elif op == FWCfgDmaControl.WRITE:
                    data, res = dma_memory_read(space, address, chunk) if entry.allow_write else (b"", MemTxResult.OK)
                    if not entry.allow_write:
                        guest_error(f"fw_cfg: DMA write to read-only item {self.cur_entry:#x}")
                        status = FWCfgDmaControl.ERROR
                    elif res != MemTxResult.OK:
                        guest_error(f"fw_cfg: DMA write from {address:#x}+{chunk:#x} failed")
                        status = FWCfgDmaControl.ERROR
                    else:
                        entry.data[start:start + chunk] = data
                        if entry.write_cb is not None:
                            entry.write_cb(start, chunk)
                self.cur_offset += chunk
            address = (address + chunk) & ((1 << 64) - 1)
            length -= chunk
        dma_memory_write(space, desc_addr, struct.pack(">I", status))


# --- migration (QEMU's vmstate_fw_cfg) ---------------------------------------------------------
# The items are not migrated: the destination's command line builds the same
# ones.  Only where the guest is in them is, checked against those items.


def _fw_cfg_post_load(fw: FWCfgState, version_id: int) -> None:
    if fw.cur_entry != FW_CFG_INVALID:
        if fw.cur_entry & ~(FW_CFG_ENTRY_MASK | FW_CFG_ARCH_LOCAL) or \
                fw.cur_entry & FW_CFG_ENTRY_MASK >= fw.max_entry:
            raise VMStateError(f"selected item {fw.cur_entry:#x} is no item key")
    entry = fw._current()
    size = 0 if entry is None else len(entry.data)
    if fw.cur_offset > size:
        raise VMStateError(f"offset {fw.cur_offset} into item {fw.cur_entry:#x}, which has {size} bytes here")


VMSTATE_FW_CFG = VMStateDescription(
    "fw_cfg", version_id=1,
    fields=[
        VMStateField("cur_entry", U16),
        VMStateField("cur_offset", U32),
        VMStateField("dma_addr", U64),
    ],
    post_load=_fw_cfg_post_load)


# --- -fw_cfg name=...,file=...|string=... ------------------------------------------------------


def parse_fw_cfg_option(opts: Any, location: str | None = None) -> tuple[str, bytes]:
    """Check one -fw_cfg option (a QemuOpts with name/file/string/gen_id)
    and return the file's name and contents (QEMU's parse_fw_cfg)."""
    name = opts.get("name") or ""
    file = opts.get("file") or ""
    string = opts.get("string") or ""
    gen_id = opts.get("gen_id") or ""
    if not name:
        raise UserError("invalid argument(s)", location)
    if (bool(file) + bool(string) + bool(gen_id)) != 1:
        raise UserError("name, plus exactly one of file, string and gen_id, are needed", location)
    if len(name.encode()) > FW_CFG_MAX_FILE_PATH - 1:
        raise UserError(f"name too long (max. {FW_CFG_MAX_FILE_PATH - 1} char)", location)
    if gen_id:
        raise UserError("'gen_id' is not supported by pemu", location)
    if not name.startswith("opt/"):
        warn_report("externally provided fw_cfg item names should be prefixed with \"opt/\"")
    if string:
        return name, string.encode()
    try:
        with open(file, "rb") as f:
            return name, f.read()
    except OSError as e:
        raise UserError(f"can't load {file}: {e.strerror or os.strerror(e.errno or 0)}", location) from None


def fw_cfg_add_user_files(fw_cfg: FWCfgState, items: list[tuple[str, bytes]]) -> None:
    for name, data in items:
        try:
            fw_cfg.add_file(name, data)
        except FWCfgError as e:
            raise UserError(str(e)) from None


# --- the QOM device ----------------------------------------------------------------------------

TYPE_FW_CFG_IO = "fw_cfg_io"


class FWCfgIoState(SysBusDevice):
    """The PC's fw_cfg: the model and its two port I/O windows."""

    state: FWCfgState


VMSTATE_FW_CFG_IO = VMStateDescription(
    TYPE_FW_CFG_IO, version_id=1, fields=[VMStateField("state", Struct(VMSTATE_FW_CFG))])


def _fw_cfg_io_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.desc = "QEMU firmware configuration (I/O ports)"
    dc.user_creatable = False
    dc.reset = lambda dev: object_check(dev, FWCfgIoState).state.reset()
    dc.vmsd = VMSTATE_FW_CFG_IO


type_register(TypeInfo(TYPE_FW_CFG_IO, parent=TYPE_SYS_BUS_DEVICE, instance_type=FWCfgIoState,
                       class_init=_fw_cfg_io_class_init))


def fw_cfg_init_io_dma(iobase: int, dma_iobase: int | None, dma_as: DMAMemory | None,
                       machine: Any = None) -> FWCfgState:
    """Create the fw_cfg device on port I/O (``dma_iobase`` None: no DMA),
    as the child "fw_cfg" of ``machine`` when given."""
    from pemu.system.physmem import get_system_io

    dev: Any = qdev_new(TYPE_FW_CFG_IO)
    if machine is not None:
        machine.add_child("fw_cfg", dev)
        dev.unref()
    dev.state = state = FWCfgState(dma_as if dma_iobase is not None else None)
    sysbus_realize(dev)
    io = get_system_io()
    io.add_subregion(iobase, MemoryRegion.io(
        "fwcfg", 2, MemoryRegionOps(state.comb_read, state.comb_write, 1, 2, True, 1, 2), owner=dev))
    if dma_iobase is not None:
        io.add_subregion(dma_iobase, MemoryRegion.io(
            "fwcfg.dma", FW_CFG_DMA_SIZE, MemoryRegionOps(state.dma_read, state.dma_write, 1, 8, True, 1, 8),
            owner=dev))
    return state
