"""The ATA device behind an IDE/SATA port (QEMU's hw/ide/core.c).

An :class:`IDEState` is one drive as the ATA command set sees it: a hard
disk (``ide-hd``) or a CD-ROM (``ide-cd``, whose PACKET commands live in
:mod:`pemu.hw.ide.atapi`), with its medium behind a
:class:`~pemu.block.block_backend.BlockBackend`.  The controller decodes a
command into a :class:`TaskFile` and calls :meth:`IDEState.execute` with an
:class:`ATATransfer`: the controller's side of the data phase (for AHCI,
the command slot's PRD table).  The drive moves data through it and ends
the command with :meth:`ATATransfer.complete` and an :class:`ATAResult`
(the status and error registers, and the task-file outputs).

Disk I/O goes through the BlockBackend's asynchronous calls in chunks of at
most :data:`IO_CHUNK_BYTES`, so a command never blocks the vCPU or the main
loop and never holds more than one chunk in host memory.  A failed request
follows the drive's ``werror``/``rerror`` policy: ``report`` ends the
command with ERR/ABRT, ``ignore`` carries on, ``stop`` stops the VM in
``io-error`` and repeats the request when the VM is continued
(:meth:`IDEState.restart`).

Commands (ATA8-ACS): IDENTIFY DEVICE, READ/WRITE SECTORS (EXT), READ/WRITE
DMA (EXT), READ VERIFY SECTORS (EXT), FLUSH CACHE (EXT), SET FEATURES,
IDLE/STANDBY (IMMEDIATE), CHECK POWER MODE, INITIALIZE DEVICE PARAMETERS,
RECALIBRATE, SEEK; for a CD-ROM IDENTIFY PACKET DEVICE, PACKET, DEVICE RESET.
The drive does not implement the NCQ feature set (READ/WRITE FPDMA QUEUED)
and says so in IDENTIFY (word 76 bit 8 clear, queue depth 0); SMART is not
supported (word 82 bit 0 clear) and its command is aborted as on a disk
without it.  Anything else is aborted (ERR, error ABRT).
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pemu.migration.vmstate import BOOL, I8, VMStateDescription, VMStateError, VMStateField

if TYPE_CHECKING:
    from pemu.block.block_backend import BlockBackend
    from pemu.hw.ide.atapi import ATAPIState
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter

SECTOR_SIZE = 512
# The most a command moves per block-layer request (and holds in host memory).
IO_CHUNK_BYTES = 1 << 20

# Status register bits.
BUSY_STAT = 0x80
READY_STAT = 0x40
DF_STAT = 0x20
SEEK_STAT = 0x10
DRQ_STAT = 0x08
ERR_STAT = 0x01

# Error register bits.
ICRC_ERR = 0x80
UNC_ERR = 0x40
IDNF_ERR = 0x10
ABRT_ERR = 0x04
# After a reset or EXECUTE DEVICE DIAGNOSTIC the error register holds the diagnostic code: 1 = passed.
DIAG_PASSED = 0x01

# Signatures in the LBA/count registers after a reset (ATA8-ACS 9.12).
SIGNATURE_DISK = 0x00000101
SIGNATURE_ATAPI = 0xEB140101


class ATACmd(enum.IntEnum):
    NOP = 0x00
    DEVICE_RESET = 0x08
    RECALIBRATE = 0x10
    READ_SECTORS = 0x20
    READ_SECTORS_EXT = 0x24
    READ_DMA_EXT = 0x25
    WRITE_SECTORS = 0x30
    WRITE_SECTORS_EXT = 0x34
    WRITE_DMA_EXT = 0x35
    READ_VERIFY = 0x40
    READ_VERIFY_EXT = 0x42
    SEEK = 0x70
    READ_FPDMA_QUEUED = 0x60
    WRITE_FPDMA_QUEUED = 0x61
    INITIALIZE_DEVICE_PARAMETERS = 0x91
    PACKET = 0xA0
    IDENTIFY_PACKET_DEVICE = 0xA1
    SMART = 0xB0
    READ_DMA = 0xC8
    WRITE_DMA = 0xCA
    STANDBY_IMMEDIATE = 0xE0
    IDLE_IMMEDIATE = 0xE1
    STANDBY = 0xE2
    IDLE = 0xE3
    CHECK_POWER_MODE = 0xE5
    FLUSH_CACHE = 0xE7
    FLUSH_CACHE_EXT = 0xEA
    IDENTIFY_DEVICE = 0xEC
    SET_FEATURES = 0xEF


class ATAProtocol(enum.Enum):
    """How a command moves its data (ATA8-ACS's protocols)."""

    NON_DATA = "non-data"
    PIO_IN = "pio-in"
    PIO_OUT = "pio-out"
    DMA_IN = "dma-in"
    DMA_OUT = "dma-out"
    PACKET = "packet"


# The data protocol of each read/write command: (is_write, is_dma, is_lba48).
_RW_COMMANDS: dict[int, tuple[bool, bool, bool]] = {
    ATACmd.READ_SECTORS: (False, False, False),
    ATACmd.READ_SECTORS_EXT: (False, False, True),
    ATACmd.WRITE_SECTORS: (True, False, False),
    ATACmd.WRITE_SECTORS_EXT: (True, False, True),
    ATACmd.READ_DMA: (False, True, False),
    ATACmd.READ_DMA_EXT: (False, True, True),
    ATACmd.WRITE_DMA: (True, True, False),
    ATACmd.WRITE_DMA_EXT: (True, True, True),
}

_EXT_COMMANDS = frozenset((ATACmd.READ_SECTORS_EXT, ATACmd.READ_DMA_EXT, ATACmd.WRITE_SECTORS_EXT,
                           ATACmd.WRITE_DMA_EXT, ATACmd.READ_VERIFY_EXT, ATACmd.FLUSH_CACHE_EXT,
                           ATACmd.READ_FPDMA_QUEUED, ATACmd.WRITE_FPDMA_QUEUED))


def ata_command_protocol(command: int) -> ATAProtocol:
    """The protocol of ``command`` as the drive runs it (what a host adapter
    needs to know to report the data phase)."""
    rw = _RW_COMMANDS.get(command)
    if rw is not None:
        is_write, is_dma, _ = rw
        if is_dma:
            return ATAProtocol.DMA_OUT if is_write else ATAProtocol.DMA_IN
        return ATAProtocol.PIO_OUT if is_write else ATAProtocol.PIO_IN
    if command in (ATACmd.IDENTIFY_DEVICE, ATACmd.IDENTIFY_PACKET_DEVICE):
        return ATAProtocol.PIO_IN
    if command == ATACmd.PACKET:
        return ATAProtocol.PACKET
    return ATAProtocol.NON_DATA


def is_lba48_command(command: int) -> bool:
    return command in _EXT_COMMANDS


class TaskFile:
    """The command block a host sends (a Register Host-to-Device FIS's fields)."""

    __slots__ = ("command", "features", "count", "lba", "device", "control")

    def __init__(self, command: int, features: int = 0, count: int = 0, lba: int = 0, device: int = 0,
                 control: int = 0) -> None:
        self.command = command
        self.features = features  # 16 bits for LBA48 commands (exp << 8 | low)
        self.count = count  # 16 bits for LBA48 commands
        self.lba = lba  # 48 bits; 28 for the others (device bits 3:0 are LBA 27:24)
        self.device = device
        self.control = control

    @property
    def sector_count(self) -> int:
        """The count as a number of sectors: 0 means 256 (LBA28) or 65536 (LBA48)."""
        if is_lba48_command(self.command):
            return self.count & 0xFFFF or 0x10000
        return self.count & 0xFF or 0x100


class ATAResult:
    """What the drive reports at the end of a command (the D2H FIS's fields)."""

    __slots__ = ("status", "error", "count", "lba", "device")

    def __init__(self, status: int, error: int = 0, count: int = 0, lba: int = 0, device: int = 0) -> None:
        self.status = status
        self.error = error
        self.count = count
        self.lba = lba
        self.device = device

    @property
    def failed(self) -> bool:
        return bool(self.status & ERR_STAT)


GOOD = ATAResult(READY_STAT | SEEK_STAT)


def aborted(error: int = ABRT_ERR) -> ATAResult:
    return ATAResult(READY_STAT | ERR_STAT, error)


class ATATransfer(Protocol):
    """The host adapter's side of one command's data phase, moving bytes
    between the drive and the host's buffer (AHCI: the PRD table) in order."""

    def to_host(self, data: bytes | bytearray | memoryview) -> bool:
        """Send the next ``len(data)`` bytes to the host; False if the host
        buffer failed (the adapter records its own error status)."""
        ...

    def from_host(self, nbytes: int) -> bytes | None:
        """The next ``nbytes`` from the host, or None if the buffer failed."""
        ...

    def step_limit(self, nbytes: int, granularity: int) -> int:
        """How many of the next ``nbytes`` the host moves in one step (a
        multiple of ``granularity``, at least one unit): a host buffer made of
        many small pieces is moved a bounded number of pieces at a time."""
        ...

    def complete(self, result: ATAResult) -> None:
        """The command ended (called once, on the thread that ended it)."""
        ...


class DriveKind(enum.Enum):
    NONE = "none"
    HD = "hd"
    CD = "cd"


def ata_string(text: str, length: int) -> bytes:
    """An IDENTIFY string field: ASCII padded with spaces, each byte pair swapped."""
    raw = text.encode("ascii", "replace")[:length].ljust(length, b" ")
    swapped = bytearray(length)
    swapped[0::2] = raw[1::2]
    swapped[1::2] = raw[0::2]
    return bytes(swapped)


def identify_checksum(words: list[int]) -> None:
    """Fill word 255 (ATA8-ACS 7.16.7.89): signature 0xA5 and a checksum that
    makes the sum of all 512 bytes zero modulo 256."""
    words[255] = 0xA5
    total = sum((w & 0xFF) + (w >> 8) for w in words[:255]) + 0xA5
    words[255] |= ((-total) & 0xFF) << 8


def identify_bytes(words: list[int]) -> bytes:
    return b"".join((w & 0xFFFF).to_bytes(2, "little") for w in words)


class _RWRequest:
    """A sector read or write in progress: where it stands, for the next chunk or a retry."""

    __slots__ = ("transfer", "is_write", "offset", "remaining", "sector_size", "data")

    def __init__(self, transfer: ATATransfer, is_write: bool, offset: int, remaining: int, sector_size: int) -> None:
        self.transfer = transfer
        self.is_write = is_write
        self.offset = offset  # byte offset on the medium of the next chunk
        self.remaining = remaining  # bytes
        self.sector_size = sector_size
        self.data: bytes | None = None  # a write's chunk, fetched once from the host (kept for a retry)


class IDEState:
    """One ATA drive (QEMU's IDEState): its identity, its medium and its
    command in progress.  With ``kind`` NONE the port has no device."""

    def __init__(self, unit: int = 0) -> None:
        self.unit = unit
        self.kind = DriveKind.NONE
        self.blk: BlockBackend | None = None
        self.model = ""
        self.serial = ""
        self.version = ""
        self.nb_sectors = 0  # 512-byte sectors of the medium, read once when it is attached
        self.cylinders = self.heads = self.sectors = 0
        self.write_cache = True
        self.udma_mode = 5
        self.mdma_mode = -1
        self.standby = False
        self.atapi: ATAPIState | None = None
        self._req: _RWRequest | None = None
        self._busy: ATATransfer | None = None  # the command in progress
        self._retry: Callable[[], None] | None = None  # werror/rerror=stop: run again on restart

    # -- attaching ------------------------------------------------------------------------------
    def attach(self, kind: DriveKind, blk: BlockBackend | None, model: str, serial: str, version: str,
               atapi: ATAPIState | None = None) -> None:
        """Make this the drive a qdev ide-hd/ide-cd device realized
        (ide_init_drive); a CD-ROM comes with its packet layer, ``atapi``."""
        if (kind is DriveKind.CD) != (atapi is not None):
            raise ValueError("a CD-ROM drive needs its packet layer, and only a CD-ROM has one")
        self.kind = kind
        self.blk = blk
        self.model = model
        self.serial = serial
        self.version = version
        self.write_cache = blk.enable_write_cache if blk is not None else True
        self.atapi = atapi
        self.medium_changed()

    def medium_changed(self) -> None:
        """Re-read the medium's size (after attach, change or eject)."""
        size = self.blk.getlength() if self.blk is not None and self.blk.is_inserted() else 0
        self.nb_sectors = max(size, 0) // SECTOR_SIZE
        cylinders = self.nb_sectors // (16 * 63)
        self.cylinders, self.heads, self.sectors = max(1, min(cylinders, 16383)), 16, 63

    @property
    def present(self) -> bool:
        return self.kind is not DriveKind.NONE

    @property
    def signature(self) -> int:
        return SIGNATURE_ATAPI if self.kind is DriveKind.CD else SIGNATURE_DISK

    @property
    def busy(self) -> bool:
        return self._busy is not None

    @property
    def retry_pending(self) -> bool:
        """A request failed under werror/rerror=stop and waits for the VM to run again."""
        return self._retry is not None

    # -- reset and cancellation -------------------------------------------------------------------
    def reset(self) -> None:
        """A device reset: the command in progress is dropped (its block
        request still finishes, and its result is thrown away)."""
        self.cancel()
        self.standby = False
        if self.atapi is not None:
            self.atapi.reset()

    def cancel(self) -> None:
        self._req = None
        self._busy = None
        self._retry = None

    def restart(self) -> None:
        """The VM runs again after a werror/rerror=stop: repeat the failed request."""
        retry, self._retry = self._retry, None
        if retry is not None:
            retry()

    # -- commands ---------------------------------------------------------------------------------
    def execute(self, tf: TaskFile, transfer: ATATransfer, cdb: bytes = b"") -> None:
        """Run ``tf``; ``cdb`` is the command packet of a PACKET command.
        The result comes through ``transfer.complete`` (maybe later, from
        the main loop)."""
        if self._busy is not None:
            # A host adapter sends one command at a time; a second one is refused, as a busy drive would.
            transfer.complete(aborted())
            return
        self._busy = transfer
        try:
            self._dispatch(tf, transfer, cdb)
        except Exception:
            self._busy = None
            raise

    def _finish(self, transfer: ATATransfer, result: ATAResult) -> None:
        if self._busy is not transfer:
            return  # reset or cancelled meanwhile: the result goes nowhere
        self._busy = None
        self._req = None
        transfer.complete(result)

    def _dispatch(self, tf: TaskFile, transfer: ATATransfer, cdb: bytes) -> None:
        cmd = tf.command
        if self.kind is DriveKind.CD:
            self._dispatch_atapi(tf, transfer, cdb)
            return
        if not self.present:
            self._finish(transfer, aborted())
            return
        rw = _RW_COMMANDS.get(cmd)
        if rw is not None:
            is_write, _is_dma, lba48 = rw
            self._start_sectors(tf, transfer, is_write, lba48)
        elif cmd == ATACmd.IDENTIFY_DEVICE:
            ok = transfer.to_host(self.identify())
            self._finish(transfer, GOOD if ok else aborted())
        elif cmd in (ATACmd.READ_VERIFY, ATACmd.READ_VERIFY_EXT):
            lba = self._lba(tf, cmd == ATACmd.READ_VERIFY_EXT)
            ok = lba + tf.sector_count <= self.nb_sectors
            self._finish(transfer, GOOD if ok else aborted(IDNF_ERR | ABRT_ERR))
        elif cmd in (ATACmd.FLUSH_CACHE, ATACmd.FLUSH_CACHE_EXT):
            self._start_flush(transfer)
        elif cmd == ATACmd.SET_FEATURES:
            self._finish(transfer, self._set_features(tf))
        elif cmd in (ATACmd.IDLE, ATACmd.IDLE_IMMEDIATE):
            self.standby = False
            self._finish(transfer, GOOD)
        elif cmd in (ATACmd.STANDBY, ATACmd.STANDBY_IMMEDIATE):
            self.standby = True
            self._finish(transfer, GOOD)
        elif cmd == ATACmd.CHECK_POWER_MODE:
            # Count 0x00: standby; 0xFF: active or idle.
            self._finish(transfer, ATAResult(READY_STAT | SEEK_STAT, count=0x00 if self.standby else 0xFF))
        elif cmd == ATACmd.INITIALIZE_DEVICE_PARAMETERS:
            self._finish(transfer, GOOD)  # LBA is what this drive is used with; CHS translation is moot
        elif cmd in (ATACmd.RECALIBRATE, ATACmd.SEEK):
            self._finish(transfer, GOOD)
        elif cmd == ATACmd.IDENTIFY_PACKET_DEVICE:
            self._finish(transfer, aborted())  # not a packet device
        else:
            # NOP, SMART (not supported), NCQ (not supported), DEVICE RESET (packet devices only)...
            self._finish(transfer, aborted())

    def _dispatch_atapi(self, tf: TaskFile, transfer: ATATransfer, cdb: bytes) -> None:
        assert self.atapi is not None
        cmd = tf.command
        if cmd == ATACmd.PACKET:
            self.atapi.execute(cdb, transfer)
        elif cmd == ATACmd.IDENTIFY_PACKET_DEVICE:
            ok = transfer.to_host(self.atapi.identify())
            self._finish(transfer, GOOD if ok else aborted())
        elif cmd == ATACmd.DEVICE_RESET:
            self.atapi.reset()
            self._finish(transfer, ATAResult(0, DIAG_PASSED, count=1, lba=SIGNATURE_ATAPI >> 8))
        elif cmd in (ATACmd.CHECK_POWER_MODE,):
            self._finish(transfer, ATAResult(READY_STAT | SEEK_STAT, count=0xFF))
        elif cmd in (ATACmd.IDLE_IMMEDIATE, ATACmd.STANDBY_IMMEDIATE, ATACmd.NOP):
            self._finish(transfer, GOOD if cmd != ATACmd.NOP else aborted())
        elif cmd == ATACmd.SET_FEATURES:
            self._finish(transfer, self._set_features(tf))
        else:
            # IDENTIFY DEVICE and the other ATA commands: aborted with the packet signature in place.
            self._finish(transfer, ATAResult(READY_STAT | ERR_STAT, ABRT_ERR, count=1,
                                             lba=SIGNATURE_ATAPI >> 8))

    @staticmethod
    def _lba(tf: TaskFile, lba48: bool) -> int:
        if lba48:
            return tf.lba & 0xFFFFFFFFFFFF
        return (tf.lba & 0xFFFFFF) | ((tf.device & 0x0F) << 24)

    # -- SET FEATURES ---------------------------------------------------------------------------
    def _set_features(self, tf: TaskFile) -> ATAResult:
        sub = tf.features & 0xFF
        if sub == 0x02:  # enable volatile write cache
            self._set_write_cache(True)
        elif sub == 0x82:  # disable it
            self._set_write_cache(False)
        elif sub == 0x03:  # set transfer mode (count: mode class << 3 | mode)
            mode_class, mode = (tf.count >> 3) & 0x1F, tf.count & 7
            if mode_class in (0, 1):  # PIO default / flow-control PIO
                pass
            elif mode_class == 4 and mode <= 2:  # multiword DMA
                self.mdma_mode, self.udma_mode = mode, -1
            elif mode_class == 8 and mode <= 5:  # Ultra DMA
                self.udma_mode, self.mdma_mode = mode, -1
            else:
                return aborted()
        elif sub in (0xAA, 0x55, 0x66, 0xCC):  # read look-ahead on/off, reverting to defaults on/off
            pass
        else:
            return aborted()
        return GOOD

    def _set_write_cache(self, enabled: bool) -> None:
        self.write_cache = enabled
        if self.blk is not None:
            self.blk.enable_write_cache = enabled

    # -- IDENTIFY ---------------------------------------------------------------------------------
    def identify(self) -> bytes:
        """The IDENTIFY DEVICE data (ATA8-ACS 7.16): a fixed, non-removable
        LBA48 disk with DMA, no NCQ, no SMART, no security."""
        w = [0] * 256
        total = self.nb_sectors
        w[0] = 0x0040  # fixed device
        w[1], w[3], w[6] = self.cylinders, self.heads, self.sectors
        w[10:20] = ata_words(ata_string(self.serial, 20))
        w[23:27] = ata_words(ata_string(self.version, 8))
        w[27:47] = ata_words(ata_string(self.model, 40))
        w[47] = 0x8000  # READ/WRITE MULTIPLE: 0 sectors per DRQ block (not supported)
        w[49] = (1 << 11) | (1 << 9) | (1 << 8)  # IORDY, LBA, DMA
        w[50] = 0x4000
        w[53] = 0x0007  # words 54-58, 64-70 and 88 are valid
        chs = min(self.cylinders * self.heads * self.sectors, total)
        w[54], w[55], w[56] = self.cylinders, self.heads, self.sectors
        w[57], w[58] = chs & 0xFFFF, chs >> 16
        lba28 = min(total, 0x0FFFFFFF)
        w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
        w[63] = 0x07 | ((1 << (8 + self.mdma_mode)) if self.mdma_mode >= 0 else 0)
        w[64] = 0x03  # PIO modes 3 and 4
        w[65] = w[66] = w[67] = w[68] = 120
        w[75] = 0  # no queued commands
        w[76] = 1 << 1  # SATA Gen1 (1.5 Gb/s); bit 8 (NCQ) clear
        w[80] = 0x01F0  # ATA/ATAPI-4 to ATA8-ACS
        w[82] = (1 << 14) | (1 << 6) | (1 << 5) | (1 << 3)  # NOP, look-ahead, write cache, power management
        w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)  # FLUSH CACHE (EXT), 48-bit addresses
        w[84] = 1 << 14
        w[85] = (1 << 14) | (1 << 6) | (int(self.write_cache) << 5) | (1 << 3)
        w[86] = (1 << 13) | (1 << 12) | (1 << 10)
        w[87] = 1 << 14
        w[88] = 0x3F | ((1 << (8 + self.udma_mode)) if self.udma_mode >= 0 else 0)
        for i in range(4):
            w[100 + i] = (total >> (16 * i)) & 0xFFFF
        w[106] = 0x4000  # one logical sector per physical sector, 512 bytes
        identify_checksum(w)
        return identify_bytes(w)

    # -- sector reads and writes -------------------------------------------------------------------
    def _start_sectors(self, tf: TaskFile, transfer: ATATransfer, is_write: bool, lba48: bool) -> None:
        lba = self._lba(tf, lba48)
        count = tf.sector_count
        if self.blk is None or lba + count > self.nb_sectors:
            self._finish(transfer, aborted(IDNF_ERR | ABRT_ERR))
            return
        if is_write and self.blk.is_read_only():
            self._finish(transfer, aborted())
            return
        self.start_io(transfer, is_write, lba * SECTOR_SIZE, count * SECTOR_SIZE, SECTOR_SIZE)

    def start_io(self, transfer: ATATransfer, is_write: bool, offset: int, nbytes: int, sector_size: int) -> None:
        """Move ``nbytes`` at byte ``offset`` of the medium (checked by the
        caller) through ``transfer`` in chunks; also used by ATAPI reads."""
        req = _RWRequest(transfer, is_write, offset, nbytes, sector_size)
        self._req = req
        self._rw_step(req)

    def _rw_step(self, req: _RWRequest) -> None:
        if self._req is not req:
            return
        if req.remaining == 0:
            self._finish(req.transfer, GOOD)
            return
        blk = self.blk
        if req.data is not None:
            n = len(req.data)  # a write being retried: the same chunk again
        else:
            n = min(req.transfer.step_limit(min(req.remaining, IO_CHUNK_BYTES), req.sector_size), req.remaining)
        if blk is None or not blk.is_inserted():
            self._rw_done(req, n, -errno.ENOMEDIUM, None)
            return
        if req.is_write:
            data = req.data if req.data is not None else req.transfer.from_host(n)
            if data is None:
                self._finish(req.transfer, aborted())
                return
            req.data = data
            blk.aio_pwritev(req.offset, data, lambda ret: self._rw_done(req, n, ret, None))
        else:
            buf = bytearray(n)
            blk.aio_preadv(req.offset, buf, lambda ret: self._rw_done(req, n, ret, buf))

    def _rw_done(self, req: _RWRequest, n: int, ret: int, buf: bytearray | None) -> None:
        if self._req is not req:
            return  # reset or cancelled while the block layer worked
        if ret < 0:
            if self._handle_rw_error(req, -ret, lambda: self._rw_step(req)):
                return
        elif buf is not None and not req.transfer.to_host(buf):
            self._finish(req.transfer, aborted())
            return
        req.data = None
        req.offset += n
        req.remaining -= n
        self._rw_step(req)

    def _handle_rw_error(self, req: _RWRequest, error: int, retry: Callable[[], None]) -> bool:
        """Apply the drive's error policy to a failed request (ide_handle_rw_error).
        True when the command ended or waits; False to carry on (``ignore``)."""
        from pemu.block.block_backend import BlockErrorAction  # a drive with a medium has imported it

        blk = self.blk
        action = blk.get_error_action(not req.is_write, error) if blk is not None else BlockErrorAction.REPORT
        if action is BlockErrorAction.IGNORE:
            return False
        if action is BlockErrorAction.STOP and blk is not None:
            self._retry = retry
            blk.error_stop(not req.is_write, error)
            return True
        if self.atapi is not None:
            self.atapi.medium_error(req.transfer, error)
            return True
        self._finish(req.transfer, aborted())
        return True

    # -- FLUSH CACHE ------------------------------------------------------------------------------
    def _start_flush(self, transfer: ATATransfer) -> None:
        blk = self.blk
        if blk is None or not blk.is_inserted():
            self._finish(transfer, GOOD)
            return
        blk.aio_flush(lambda ret: self._flush_done(transfer, ret))

    def _flush_done(self, transfer: ATATransfer, ret: int) -> None:
        if self._busy is not transfer:
            return
        if ret < 0 and self.blk is not None:
            from pemu.block.block_backend import BlockErrorAction

            action = self.blk.get_error_action(False, -ret)
            if action is BlockErrorAction.STOP:
                self._retry = lambda: self._start_flush(transfer)
                self.blk.error_stop(False, -ret)
                return
            if action is BlockErrorAction.REPORT:
                self._finish(transfer, aborted())
                return
        self._finish(transfer, GOOD)

    # -- for ATAPI ----------------------------------------------------------------------------------
    def finish(self, transfer: ATATransfer, result: ATAResult) -> None:
        """End the command in progress (for the PACKET layer)."""
        self._finish(transfer, result)


def ata_words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + 2], "little") for i in range(0, len(data), 2)]


# --- migration ------------------------------------------------------------------------------------


class _DriveKindField:
    """A drive's kind as a byte; the destination's drive must be of the same kind."""

    CODES = {DriveKind.NONE: 0, DriveKind.HD: 1, DriveKind.CD: 2}
    NAMES = {0: "no drive", 1: "a disk (ide-hd)", 2: "a CD-ROM (ide-cd)"}

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        f.put_be8(self.CODES[value])

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        code = f.get_be8()
        here = self.CODES[current]
        if code != here:
            raise VMStateError(f"{where}: {self.NAMES.get(code, f'drive kind {code}')} in the stream, "
                               f"{self.NAMES[here]} in this VM")
        return current


def _ide_pre_save(ide: IDEState) -> None:
    if ide.retry_pending:
        raise VMStateError("a request stopped by the drive's werror/rerror=stop policy waits for the VM "
                           "to continue: continue it (or fix the image) before saving")
    if ide.busy:
        raise VMStateError("a command is still running (requests in flight must complete before saving)")


def _ide_post_load(ide: IDEState, version_id: int) -> None:
    if ide.blk is not None:
        ide.blk.enable_write_cache = ide.write_cache


# What a drive keeps between commands (QEMU's vmstate_ide_drive).  Nothing of a
# command in progress: the state is saved with every command completed (the block
# layer drained), and refused otherwise.  The medium's geometry is not saved: it
# comes from the image the destination opens.
VMSTATE_IDE_DRIVE = VMStateDescription(
    "ide_drive", version_id=1,
    fields=[
        VMStateField("kind", _DriveKindField()),
        VMStateField("write_cache", BOOL),
        VMStateField("udma_mode", I8, check=range(-1, 6)),
        VMStateField("mdma_mode", I8, check=range(-1, 3)),
        VMStateField("standby", BOOL),
    ],
    pre_save=_ide_pre_save, post_load=_ide_post_load)
