"""The PACKET commands of an ATAPI CD-ROM drive (QEMU's hw/ide/atapi.c; MMC-6, SPC-4).

:class:`ATAPIState` is the packet layer of an ``ide-cd`` drive: it carries
out a 12-byte command packet over the drive's medium (an ISO 9660 image,
2048-byte sectors) and keeps the sense data REQUEST SENSE returns.  A
failed packet command ends with ERR and the sense key in the error
register's high nibble, as ATAPI drives report it; the host then asks
REQUEST SENSE for the details.

Commands: TEST UNIT READY, REQUEST SENSE, INQUIRY, START STOP UNIT,
PREVENT ALLOW MEDIUM REMOVAL, READ CAPACITY, READ(10), READ(12), SEEK(10),
MODE SENSE(6)/(10) (pages 01h, 2Ah, 3Fh), READ TOC/PMA/ATIP (formats 0 and
1), GET CONFIGURATION, GET EVENT STATUS NOTIFICATION (media class), SET CD
SPEED, MECHANISM STATUS.  Without a medium the medium commands fail with
NOT READY / MEDIUM NOT PRESENT; after a medium change the next one fails
once with UNIT ATTENTION / NOT READY TO READY CHANGE.
"""

from __future__ import annotations

import enum
import struct
from typing import TYPE_CHECKING

from pemu.hw.ide.core import (
    READY_STAT,
    SEEK_STAT,
    ATAResult,
    ATATransfer,
    ata_string,
    ata_words,
    identify_bytes,
    identify_checksum,
)
from pemu.migration.vmstate import BOOL, U8, Enum, VMStateDescription, VMStateField

if TYPE_CHECKING:
    from pemu.hw.ide.core import IDEState

CD_SECTOR_SIZE = 2048
CDB_SIZE = 12
# Interrupt reason in the count register at the end of a packet command: C/D and I/O set.
ATAPI_INT_REASON_END = 0x03
# A 74-minute CD holds this many 2048-byte sectors; a larger medium is reported as a DVD.
CD_MAX_SECTORS = 333000


class SenseKey(enum.IntEnum):
    NO_SENSE = 0x0
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6


class ASC(enum.IntEnum):
    NO_ADDITIONAL = 0x00
    UNRECOVERED_READ_ERROR = 0x11
    INVALID_OPCODE = 0x20
    LBA_OUT_OF_RANGE = 0x21
    INVALID_FIELD_IN_CDB = 0x24
    MEDIUM_MAY_HAVE_CHANGED = 0x28
    SAVING_PARAMETERS_NOT_SUPPORTED = 0x39
    MEDIUM_NOT_PRESENT = 0x3A
    MEDIUM_REMOVAL_PREVENTED = 0x53


class GPCmd(enum.IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    INQUIRY = 0x12
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_CAPACITY = 0x25
    READ_10 = 0x28
    SEEK_10 = 0x2B
    READ_TOC = 0x43
    GET_CONFIGURATION = 0x46
    GET_EVENT_STATUS_NOTIFICATION = 0x4A
    MODE_SENSE_10 = 0x5A
    READ_12 = 0xA8
    SET_CD_SPEED = 0xBB
    MECHANISM_STATUS = 0xBD


# Commands that run with a unit attention pending, and those that need a medium.
_ALLOW_UA = frozenset((GPCmd.INQUIRY, GPCmd.REQUEST_SENSE, GPCmd.GET_CONFIGURATION,
                       GPCmd.GET_EVENT_STATUS_NOTIFICATION))
_CHECK_READY = frozenset((GPCmd.TEST_UNIT_READY, GPCmd.READ_CAPACITY, GPCmd.READ_10, GPCmd.READ_12,
                          GPCmd.SEEK_10, GPCmd.READ_TOC))

# Media event codes of GET EVENT STATUS NOTIFICATION (MMC-6 table 149).
MEC_NO_CHANGE = 0
MEC_EJECT_REQUEST = 1
MEC_NEW_MEDIA = 2
MEC_MEDIA_REMOVAL = 3

PROFILE_CD_ROM = 0x0008
PROFILE_DVD_ROM = 0x0010


class ATAPIState:
    """The packet layer of one CD-ROM drive."""

    def __init__(self, ide: IDEState) -> None:
        self.ide = ide
        self.sense_key = SenseKey.NO_SENSE
        self.asc = 0
        self.ascq = 0
        self.locked = False
        self.tray_open = False
        self.media_event = MEC_NO_CHANGE
        # Set by a medium change: the next medium command reports it (UNIT ATTENTION).
        self.unit_attention = False

    def reset(self) -> None:
        self.sense_key, self.asc, self.ascq = SenseKey.NO_SENSE, 0, 0
        self.locked = False

    # -- the medium ---------------------------------------------------------------------------------
    @property
    def has_medium(self) -> bool:
        blk = self.ide.blk
        return blk is not None and blk.is_inserted() and not self.tray_open

    @property
    def nb_sectors(self) -> int:
        return self.ide.nb_sectors * 512 // CD_SECTOR_SIZE

    # -- BlockDevOps: the monitor's change and eject ----------------------------------------
    def change_media_cb(self, load: bool) -> None:
        """A medium went in (tray closed) or out (tray open); the host hears
        about it once: a media event, and UNIT ATTENTION on the next command."""
        self.tray_open = not load
        self.ide.medium_changed()
        if load:
            self.unit_attention = True
            self.media_event = MEC_NEW_MEDIA
        else:
            self.media_event = MEC_MEDIA_REMOVAL

    def is_tray_open(self) -> bool:
        return self.tray_open

    def is_medium_locked(self) -> bool:
        return self.locked

    def eject_request_cb(self, force: bool) -> None:
        self.media_event = MEC_EJECT_REQUEST
        if force:
            self.locked = False

    # -- commands -------------------------------------------------------------------------------------
    def execute(self, cdb: bytes, transfer: ATATransfer) -> None:
        cdb = bytes(cdb[:CDB_SIZE]).ljust(CDB_SIZE, b"\0")
        op = cdb[0]
        try:
            cmd = GPCmd(op)
        except ValueError:
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.INVALID_OPCODE)
            return
        if self.unit_attention and cmd not in _ALLOW_UA:
            self.unit_attention = False
            self._error(transfer, SenseKey.UNIT_ATTENTION, ASC.MEDIUM_MAY_HAVE_CHANGED)
            return
        if cmd in _CHECK_READY and not self.has_medium:
            self._error(transfer, SenseKey.NOT_READY, ASC.MEDIUM_NOT_PRESENT)
            return
        handler = _HANDLERS[cmd]
        handler(self, cdb, transfer)

    # -- results --------------------------------------------------------------------------------------
    def _ok(self, transfer: ATATransfer) -> None:
        self.sense_key, self.asc, self.ascq = SenseKey.NO_SENSE, 0, 0
        self.ide.finish(transfer, ATAResult(READY_STAT | SEEK_STAT, count=ATAPI_INT_REASON_END))

    def _error(self, transfer: ATATransfer, key: SenseKey, asc: int, ascq: int = 0) -> None:
        self.sense_key, self.asc, self.ascq = key, asc, ascq
        self.ide.finish(transfer, ATAResult(READY_STAT | 0x01, key << 4, count=ATAPI_INT_REASON_END))

    def _reply(self, transfer: ATATransfer, data: bytes, alloc: int) -> None:
        """Send ``data`` cut to the allocation length, and end the command."""
        if transfer.to_host(data[:alloc]):
            self._ok(transfer)
        else:
            self.ide.finish(transfer, ATAResult(READY_STAT | 0x01, 0x04, count=ATAPI_INT_REASON_END))

    def medium_error(self, transfer: ATATransfer, error: int) -> None:
        """A read of the medium failed (rerror=report)."""
        self._error(transfer, SenseKey.MEDIUM_ERROR, ASC.UNRECOVERED_READ_ERROR)

    # -- the handlers -----------------------------------------------------------------------------------
    def _test_unit_ready(self, cdb: bytes, transfer: ATATransfer) -> None:
        self._ok(transfer)

    def _request_sense(self, cdb: bytes, transfer: ATATransfer) -> None:
        data = bytearray(18)
        data[0] = 0x70  # current error, fixed format
        data[2] = self.sense_key
        data[7] = 10
        data[12], data[13] = self.asc, self.ascq
        if self.sense_key == SenseKey.UNIT_ATTENTION:
            self.unit_attention = False
        alloc = cdb[4]
        # REQUEST SENSE itself succeeds and clears the sense data.
        if transfer.to_host(bytes(data[:alloc])):
            self._ok(transfer)
        else:
            self.ide.finish(transfer, ATAResult(READY_STAT | 0x01, 0x04, count=ATAPI_INT_REASON_END))

    def _inquiry(self, cdb: bytes, transfer: ATATransfer) -> None:
        if cdb[1] & 1:  # EVPD: no vital product data pages
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.INVALID_FIELD_IN_CDB)
            return
        data = bytearray(36)
        data[0] = 0x05  # CD/DVD device
        data[1] = 0x80  # removable
        data[2] = 0x00  # no conformance claimed (ATAPI)
        data[3] = 0x21  # response data format 1 (ATAPI), ...
        data[4] = 36 - 5
        data[8:16] = b"PEMU    "
        data[16:32] = self.ide.model.encode("ascii", "replace")[:16].ljust(16, b" ")
        data[32:36] = self.ide.version.encode("ascii", "replace")[:4].ljust(4, b" ")
        self._reply(transfer, bytes(data), int.from_bytes(cdb[3:5], "big"))

    def _start_stop_unit(self, cdb: bytes, transfer: ATATransfer) -> None:
        start, loej = cdb[4] & 1, cdb[4] & 2
        if loej:
            if not start and self.locked:
                self._error(transfer, SenseKey.NOT_READY, ASC.MEDIUM_REMOVAL_PREVENTED, 0x02)
                return
            if not start:
                self.tray_open = True
                self.media_event = MEC_MEDIA_REMOVAL
            elif self.tray_open:
                self.tray_open = False
                if self.ide.blk is not None and self.ide.blk.is_inserted():
                    self.media_event = MEC_NEW_MEDIA
        self._ok(transfer)

    def _prevent_allow(self, cdb: bytes, transfer: ATATransfer) -> None:
        self.locked = bool(cdb[4] & 1)
        self._ok(transfer)

    def _read_capacity(self, cdb: bytes, transfer: ATATransfer) -> None:
        data = struct.pack(">II", max(self.nb_sectors - 1, 0), CD_SECTOR_SIZE)
        self._reply(transfer, data, 8)

    def _read(self, cdb: bytes, transfer: ATATransfer) -> None:
        lba = int.from_bytes(cdb[2:6], "big")
        if cdb[0] == GPCmd.READ_10:
            count = int.from_bytes(cdb[7:9], "big")
        else:
            count = int.from_bytes(cdb[6:10], "big")
        if lba + count > self.nb_sectors:
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.LBA_OUT_OF_RANGE)
            return
        if count == 0:
            self._ok(transfer)
            return
        self.ide.start_io(transfer, False, lba * CD_SECTOR_SIZE, count * CD_SECTOR_SIZE, CD_SECTOR_SIZE)

    def _seek(self, cdb: bytes, transfer: ATATransfer) -> None:
        if int.from_bytes(cdb[2:6], "big") >= self.nb_sectors:
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.LBA_OUT_OF_RANGE)
            return
        self._ok(transfer)

    def _mode_sense(self, cdb: bytes, transfer: ATATransfer) -> None:
        six = cdb[0] == GPCmd.MODE_SENSE_6
        alloc = cdb[4] if six else int.from_bytes(cdb[7:9], "big")
        page_control, page = cdb[2] >> 6, cdb[2] & 0x3F
        if page_control == 3:
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.SAVING_PARAMETERS_NOT_SUPPORTED)
            return
        pages = b""
        if page in (0x01, 0x3F):
            body = bytes(6) if page_control == 1 else bytes((0, 5, 0, 0, 0, 0))  # retry count 5
            pages += bytes((0x01, 6)) + body
        if page in (0x2A, 0x3F):
            pages += bytes((0x2A, 20)) + (bytes(20) if page_control == 1 else self._capabilities_page())
        if not pages:
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.INVALID_FIELD_IN_CDB)
            return
        medium = 0x70 if not self.has_medium else 0x01  # no disc / 120 mm CD-ROM data
        if six:
            header = bytes((len(pages) + 3, medium, 0, 0))
        else:
            header = struct.pack(">HBBxxH", len(pages) + 6, medium, 0, 0)
        self._reply(transfer, header + pages, alloc)

    def _capabilities_page(self) -> bytes:
        """Mode page 2Ah, "MM capabilities and mechanical status" (20 bytes after its header)."""
        page = bytearray(20)
        page[0] = 0x3B  # reads CD-R, CD-RW, method 2, DVD-ROM
        page[1] = 0x00  # writes nothing
        page[2] = 0x71  # audio play, multi-session, mode 2 form 1 and 2
        page[3] = 0x7F  # CD-DA commands and stream accuracy...
        page[4] = 0x29 | (0x02 if self.locked else 0)  # tray loader, eject, lock (and its state)
        page[5] = 0x00
        page[6:8] = (706).to_bytes(2, "big")  # maximum read speed, kB/s (4x)
        page[8:10] = (2).to_bytes(2, "big")  # volume levels
        page[10:12] = (512).to_bytes(2, "big")  # buffer size, KiB
        page[12:14] = (706).to_bytes(2, "big")  # current read speed
        return bytes(page)

    def _read_toc(self, cdb: bytes, transfer: ATATransfer) -> None:
        msf = bool(cdb[1] & 2)
        fmt = cdb[2] & 0x0F
        alloc = int.from_bytes(cdb[7:9], "big")
        if fmt == 0:
            start_track = cdb[6]
            descriptors = b""
            if start_track <= 1:
                descriptors += self._toc_descriptor(1, 0x14, 0, msf)
            if start_track <= 1 or start_track == 0xAA:
                descriptors += self._toc_descriptor(0xAA, 0x16, self.nb_sectors, msf)
            elif start_track > 1:
                self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.INVALID_FIELD_IN_CDB)
                return
            data = struct.pack(">HBB", len(descriptors) + 2, 1, 1) + descriptors
        elif fmt == 1:  # session information: one session, its first track at 0
            data = struct.pack(">HBB", 10, 1, 1) + self._toc_descriptor(1, 0x14, 0, msf)
        else:
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.INVALID_FIELD_IN_CDB)
            return
        self._reply(transfer, data, alloc)

    @staticmethod
    def _toc_descriptor(track: int, adr_control: int, lba: int, msf: bool) -> bytes:
        if msf:
            frames = lba + 150
            address = bytes((0, frames // (75 * 60), (frames // 75) % 60, frames % 75))
        else:
            address = lba.to_bytes(4, "big")
        return bytes((0, adr_control, track, 0)) + address

    def _current_profile(self) -> int:
        if not self.has_medium:
            return 0
        return PROFILE_DVD_ROM if self.nb_sectors > CD_MAX_SECTORS else PROFILE_CD_ROM

    def _get_configuration(self, cdb: bytes, transfer: ATATransfer) -> None:
        rt = cdb[1] & 3
        if rt == 3:
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.INVALID_FIELD_IN_CDB)
            return
        start = int.from_bytes(cdb[2:4], "big")
        alloc = int.from_bytes(cdb[7:9], "big")
        current = self._current_profile()
        features = b""
        if start == 0:
            profiles = b"".join(struct.pack(">HBx", p, int(p == current)) for p in (PROFILE_DVD_ROM, PROFILE_CD_ROM))
            features = struct.pack(">HBB", 0x0000, 0x03, len(profiles)) + profiles
        header = struct.pack(">I2xH", 4 + len(features), current)
        self._reply(transfer, header + features, alloc)

    def _get_event_status(self, cdb: bytes, transfer: ATATransfer) -> None:
        if not cdb[1] & 1:  # asynchronous operation is not supported
            self._error(transfer, SenseKey.ILLEGAL_REQUEST, ASC.INVALID_FIELD_IN_CDB)
            return
        requested = cdb[4]
        alloc = int.from_bytes(cdb[7:9], "big")
        supported = 1 << 4  # media class
        if requested & supported:
            event = self.media_event
            self.media_event = MEC_NO_CHANGE
            status = (0x02 if self.has_medium else 0) | (0x01 if self.tray_open else 0)
            body = bytes((event, status, 0, 0))
            header = struct.pack(">HBB", len(body) + 2, 4, supported)
        else:
            body = b""
            header = struct.pack(">HBB", 2, 0x80, supported)  # NEA: no event of a requested class
        self._reply(transfer, header + body, alloc)

    def _set_cd_speed(self, cdb: bytes, transfer: ATATransfer) -> None:
        self._ok(transfer)

    def _mechanism_status(self, cdb: bytes, transfer: ATATransfer) -> None:
        alloc = int.from_bytes(cdb[8:10], "big")
        data = bytes((0, 0x10 if self.tray_open else 0, 0, 0, 0, 0, 0, 0))
        self._reply(transfer, data, alloc)

    # -- IDENTIFY PACKET DEVICE ---------------------------------------------------------------------
    def identify(self) -> bytes:
        """ATA8-ACS 7.17: a removable CD-ROM with 12-byte packets, DMA and LBA."""
        ide = self.ide
        w = [0] * 256
        w[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5)  # ATAPI, CD-ROM, removable, 50 us DRQ, 12-byte packets
        w[10:20] = ata_words(ata_string(ide.serial, 20))
        w[23:27] = ata_words(ata_string(ide.version, 8))
        w[27:47] = ata_words(ata_string(ide.model, 40))
        w[49] = (1 << 9) | (1 << 8)  # LBA, DMA
        w[53] = 0x0007
        w[63] = 0x07 | ((1 << (8 + ide.mdma_mode)) if ide.mdma_mode >= 0 else 0)
        w[64] = 0x03
        w[65] = w[66] = w[67] = w[68] = 120
        w[71] = w[72] = 30
        w[76] = 1 << 1  # SATA Gen1
        w[80] = 0x001E  # ATA/ATAPI-1 to -4
        w[82] = (1 << 14) | (1 << 4)  # NOP, PACKET
        w[83] = 1 << 14
        w[84] = 1 << 14
        w[85] = (1 << 14) | (1 << 4)
        w[87] = 1 << 14
        w[88] = 0x3F | ((1 << (8 + ide.udma_mode)) if ide.udma_mode >= 0 else 0)
        identify_checksum(w)
        return identify_bytes(w)


_HANDLERS = {
    GPCmd.TEST_UNIT_READY: ATAPIState._test_unit_ready,
    GPCmd.REQUEST_SENSE: ATAPIState._request_sense,
    GPCmd.INQUIRY: ATAPIState._inquiry,
    GPCmd.MODE_SENSE_6: ATAPIState._mode_sense,
    GPCmd.MODE_SENSE_10: ATAPIState._mode_sense,
    GPCmd.START_STOP_UNIT: ATAPIState._start_stop_unit,
    GPCmd.PREVENT_ALLOW_MEDIUM_REMOVAL: ATAPIState._prevent_allow,
    GPCmd.READ_CAPACITY: ATAPIState._read_capacity,
    GPCmd.READ_10: ATAPIState._read,
    GPCmd.READ_12: ATAPIState._read,
    GPCmd.SEEK_10: ATAPIState._seek,
    GPCmd.READ_TOC: ATAPIState._read_toc,
    GPCmd.GET_CONFIGURATION: ATAPIState._get_configuration,
    GPCmd.GET_EVENT_STATUS_NOTIFICATION: ATAPIState._get_event_status,
    GPCmd.SET_CD_SPEED: ATAPIState._set_cd_speed,
    GPCmd.MECHANISM_STATUS: ATAPIState._mechanism_status,
}


# The packet layer's state (QEMU's ide_drive/atapi/gesn and tray subsections):
# the sense data REQUEST SENSE returns next, the tray and its lock, the media
# event GET EVENT STATUS NOTIFICATION reports next and a pending unit attention.
VMSTATE_ATAPI = VMStateDescription(
    "ide_drive/atapi", version_id=1,
    fields=[
        VMStateField("sense_key", Enum(SenseKey)),
        VMStateField("asc", U8),
        VMStateField("ascq", U8),
        VMStateField("locked", BOOL),
        VMStateField("tray_open", BOOL),
        VMStateField("media_event", U8, check=range(MEC_NO_CHANGE, MEC_MEDIA_REMOVAL + 1)),
        VMStateField("unit_attention", BOOL),
    ])
