"""The AHCI HBA and its ATA/ATAPI drives without a CPU: a fake guest memory
plays the guest's RAM, the test plays the guest's AHCI driver, and disk
images are real files behind a BlockBackend whose completions the test runs."""

from __future__ import annotations

import errno
import os
import queue
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fake_guest_memory import FakeGuestMemory

from pemu.block.block import bdrv_open
from pemu.block.block_backend import BlockBackend, BlockdevOnError
from pemu.block.block_int import CACHE_MODES
from pemu.hw.ide.ahci import (
    AHCI_PORT_REGS_START,
    AHCIState,
    HostReg,
    PortCmd,
    PortIRQ,
    PortReg,
)
from pemu.hw.ide.atapi import ATAPIState
from pemu.hw.ide.core import DriveKind, IDEState, TaskFile
from pemu.system import runstate

if TYPE_CHECKING:
    from pemu.hw.ide.ich import ICH9AHCIState

RAM_SIZE = 0x200000
CLB = 0x1000
FB = 0x2000
CT = 0x8000  # command tables, 0x800 apart
DATA = 0x40000
SLOT_TABLE_SIZE = 0x800
PORT_IE_ALL = 0xFDC000FF

ATA_IDENTIFY = 0xEC
ATA_READ_DMA_EXT = 0x25
ATA_WRITE_DMA_EXT = 0x35
ATA_READ_DMA = 0xC8
ATA_FLUSH_EXT = 0xEA
ATA_PACKET = 0xA0


class GuestMemory(FakeGuestMemory):
    """Guest RAM from 0 to RAM_SIZE; DMA past it fails as pemu's address spaces do."""

    def __init__(self) -> None:
        super().__init__(RAM_SIZE)


class Completions:
    """The main loop as far as the block layer sees it: completions queue here."""

    def __init__(self) -> None:
        self.pending: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.backends: list[BlockBackend] = []

    def schedule(self, cb: Callable[[], None]) -> None:
        self.pending.put(cb)

    def run(self) -> None:
        while True:
            for blk in self.backends:
                blk.drain()
            if self.pending.empty():
                return
            while not self.pending.empty():
                self.pending.get()()


class Line:
    def __init__(self) -> None:
        self.level = 0
        self.raised = 0

    def set(self, level: int) -> None:
        if level and not self.level:
            self.raised += 1
        self.level = level


class FakeMSI:
    def __init__(self) -> None:
        self.enabled = True
        self.sent = 0

    def notify(self, vector: int) -> None:
        assert vector == 0
        self.sent += 1


def h2d(command: int, lba: int = 0, count: int = 0, features: int = 0, device: int = 0x40) -> bytes:
    fis = bytearray(20)
    fis[0], fis[1], fis[2], fis[3] = 0x27, 0x80, command, features & 0xFF
    fis[4:7] = (lba & 0xFFFFFF).to_bytes(3, "little")
    fis[7] = device
    fis[8:11] = (lba >> 24 & 0xFFFFFF).to_bytes(3, "little")
    fis[11] = features >> 8
    fis[12:14] = count.to_bytes(2, "little")
    return bytes(fis)


class Rig:
    """An HBA with a guest driver's view of it."""

    def __init__(self) -> None:
        self.mem = GuestMemory()
        self.line = Line()
        self.loop = Completions()
        self.hba = AHCIState(6, self.mem, self.line)

    # -- drives ---------------------------------------------------------------------------------
    def backend(self, path: Path | None, read_only: bool = False, **kw: BlockdevOnError) -> BlockBackend | None:
        if path is None:
            return None
        bs = bdrv_open(str(path), "raw", read_only, CACHE_MODES["writeback"], locking=False)
        blk = BlockBackend(bs, f"d{len(self.loop.backends)}", schedule_completion=self.loop.schedule,
                           on_read_error=kw.get("rerror", BlockdevOnError.REPORT),
                           on_write_error=kw.get("werror", BlockdevOnError.ENOSPC))
        self.loop.backends.append(blk)
        return blk

    def attach(self, port: int, kind: DriveKind, path: Path | None, **kw: BlockdevOnError) -> IDEState:
        ide = self.hba.ports[port].ide
        model = "PEMU DVD-ROM" if kind is DriveKind.CD else "PEMU HARDDISK"
        ide.attach(kind, self.backend(path, kind is DriveKind.CD, **kw), model, f"PM{port + 1:05d}", "0.1.0",
                   ATAPIState(ide) if kind is DriveKind.CD else None)
        return ide

    def close(self) -> None:
        for blk in self.loop.backends:
            blk.close()

    # -- registers ----------------------------------------------------------------------------------
    def host(self, reg: int, value: int | None = None) -> int:
        if value is not None:
            self.hba.mem_write(reg, value, 4)
        return self.hba.mem_read(reg, 4)

    def preg(self, port: int, reg: int, value: int | None = None) -> int:
        addr = AHCI_PORT_REGS_START + port * 0x80 + reg
        if value is not None:
            self.hba.mem_write(addr, value, 4)
        return self.hba.mem_read(addr, 4)

    def start(self, port: int = 0) -> None:
        self.host(HostReg.GHC, 0x80000002)  # AE, IE
        self.preg(port, PortReg.CLB, CLB)
        self.preg(port, PortReg.FB, FB)
        self.preg(port, PortReg.SERR, 0xFFFFFFFF)
        self.preg(port, PortReg.IS, 0xFFFFFFFF)
        self.preg(port, PortReg.IE, PORT_IE_ALL)
        self.preg(port, PortReg.CMD, PortCmd.FRE | PortCmd.SUD | PortCmd.POD)
        self.preg(port, PortReg.CMD, PortCmd.FRE | PortCmd.ST | PortCmd.SUD | PortCmd.POD)

    # -- commands ---------------------------------------------------------------------------------------
    def issue(self, port: int, slot: int, fis: bytes, prds: Sequence[tuple[int, int]] = (), *,
              write: bool = False, cdb: bytes = b"", prdtl: int | None = None, run: bool = True) -> None:
        table = CT + slot * SLOT_TABLE_SIZE
        opts = 5 | (int(bool(cdb)) << 5) | (int(write) << 6) | ((len(prds) if prdtl is None else prdtl) << 16)
        self.mem.ram[CLB + slot * 32:CLB + slot * 32 + 32] = struct.pack("<IIII16x", opts, 0, table, 0)
        self.mem.ram[table:table + 0x80] = bytes(0x80)
        self.mem.ram[table:table + len(fis)] = fis
        self.mem.ram[table + 0x40:table + 0x40 + len(cdb)] = cdb
        for i, (addr, length) in enumerate(prds):
            entry = struct.pack("<IIII", addr & 0xFFFFFFFF, addr >> 32, 0, (length - 1) | (1 << 31))
            off = table + 0x80 + 16 * i
            self.mem.ram[off:off + 16] = entry
        self.preg(port, PortReg.CI, 1 << slot)
        if run:
            self.loop.run()

    def prdbc(self, slot: int) -> int:
        return struct.unpack_from("<I", self.mem.ram, CLB + slot * 32 + 4)[0]

    def d2h(self) -> bytes:
        return bytes(self.mem.ram[FB + 0x40:FB + 0x54])

    def psfis(self) -> bytes:
        return bytes(self.mem.ram[FB + 0x20:FB + 0x34])


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 4 MiB raw disk whose sector n starts with "sector n"."""
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        for n in range(8192):
            f.write(f"sector {n}".encode().ljust(512, b"."))
    return path


def test_host_registers_after_reset(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    cap = rig.host(HostReg.CAP)
    assert cap & 0x1F == 5  # six ports
    assert (cap >> 8) & 0x1F == 31  # 32 command slots
    assert cap & (1 << 31) and cap & (1 << 18)  # 64-bit addressing, AHCI only
    assert not cap & (1 << 30)  # no NCQ
    assert rig.host(HostReg.PI) == 0x3F
    assert rig.host(HostReg.VS) == 0x00010000
    assert rig.host(HostReg.GHC) == 0x80000000
    rig.host(HostReg.CAP, 0)
    rig.host(HostReg.PI, 0)
    assert rig.host(HostReg.CAP) == cap and rig.host(HostReg.PI) == 0x3F  # read-only
    # A port with a disk: link up, the disk's signature, ready; an empty port: nothing.
    assert rig.preg(0, PortReg.SSTS) == 0x113
    assert rig.preg(0, PortReg.SIG) == 0x00000101
    assert rig.preg(0, PortReg.TFD) & 0xFF == 0x50
    assert rig.preg(1, PortReg.SSTS) == 0
    assert rig.preg(1, PortReg.SIG) == 0xFFFFFFFF
    assert rig.preg(1, PortReg.TFD) == 0x7F
    assert rig.preg(0, PortReg.CMD) == PortCmd.SUD | PortCmd.POD
    # Byte reads inside a register, as the spec allows.
    assert rig.hba.mem_read(HostReg.PI + 0, 1) == 0x3F and rig.hba.mem_read(HostReg.VS + 2, 2) == 1


def test_port_registers_masks_and_engines(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.preg(0, PortReg.CLB, 0x12345FFF)
    assert rig.preg(0, PortReg.CLB) == 0x12345C00  # 1 KiB aligned
    rig.preg(0, PortReg.FB, 0x123456FF)
    assert rig.preg(0, PortReg.FB) == 0x12345600  # 256-byte aligned
    rig.preg(0, PortReg.IE, 0xFFFFFFFF)
    assert rig.preg(0, PortReg.IE) == PORT_IE_ALL
    for reg in (PortReg.TFD, PortReg.SIG, PortReg.SSTS):
        before = rig.preg(0, reg)
        rig.preg(0, reg, 0xDEADBEEF)
        assert rig.preg(0, reg) == before
    rig.preg(0, PortReg.CMD, PortCmd.FRE)
    assert rig.preg(0, PortReg.CMD) & (PortCmd.FR | PortCmd.CR) == PortCmd.FR
    rig.preg(0, PortReg.CMD, PortCmd.FRE | PortCmd.ST)
    assert rig.preg(0, PortReg.CMD) & (PortCmd.FR | PortCmd.CR) == PortCmd.FR | PortCmd.CR
    rig.preg(0, PortReg.CMD, PortCmd.FR | PortCmd.CR)  # running bits are read-only
    assert rig.preg(0, PortReg.CMD) & (PortCmd.FR | PortCmd.CR | PortCmd.ST) == 0
    # PxCI is taken only while the engine runs.
    rig.preg(0, PortReg.CI, 1)
    assert rig.preg(0, PortReg.CI) == 0


def test_hba_reset_clears_interrupt_state_but_keeps_addresses(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(ATA_IDENTIFY), [(DATA, 512)])
    assert rig.host(HostReg.IS) == 1 and rig.line.level == 1
    rig.host(HostReg.GHC, 1)  # HR
    assert rig.host(HostReg.GHC) == 0x80000000
    assert rig.host(HostReg.IS) == 0 and rig.line.level == 0
    assert rig.preg(0, PortReg.IS) == 0 and rig.preg(0, PortReg.IE) == 0
    assert rig.preg(0, PortReg.CMD) & PortCmd.ST == 0
    assert rig.preg(0, PortReg.CLB) == CLB and rig.preg(0, PortReg.FB) == FB


def test_identify_device_through_the_prds(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 3, h2d(ATA_IDENTIFY), [(DATA, 256), (DATA + 0x1000, 256)])
    data = bytes(rig.mem.ram[DATA:DATA + 256] + rig.mem.ram[DATA + 0x1000:DATA + 0x1100])
    words = struct.unpack("<256H", data)

    def text(first: int, last: int) -> str:
        return b"".join(struct.pack(">H", w) for w in words[first:last]).decode().strip()

    assert text(27, 47) == "PEMU HARDDISK"
    assert text(10, 20) == "PM00001"
    assert words[60] | words[61] << 16 == 8192
    assert sum(words[100 + i] << (16 * i) for i in range(4)) == 8192
    assert words[83] & (1 << 10) and words[86] & (1 << 10)  # LBA48
    assert words[83] & (1 << 13)  # FLUSH CACHE EXT
    assert not words[76] & (1 << 8) and words[75] == 0  # honest: no NCQ
    assert not words[82] & 1  # no SMART
    assert words[255] & 0xFF == 0xA5 and sum(data) % 256 == 0
    assert rig.prdbc(3) == 512
    assert rig.preg(0, PortReg.CI) == 0
    # PIO data-in: a PIO Setup FIS whose E_Status is the ending status, then a D2H FIS.
    ps = rig.psfis()
    assert ps[0] == 0x5F and ps[1] & 0x20 and ps[15] == 0x50
    assert rig.d2h()[0] == 0x34 and rig.d2h()[2] == 0x50
    assert rig.preg(0, PortReg.IS) & (PortIRQ.PSS | PortIRQ.DHRS) == PortIRQ.PSS | PortIRQ.DHRS
    assert rig.preg(0, PortReg.TFD) == 0x50
    assert rig.host(HostReg.IS) == 1 and rig.line.level == 1
    rig.preg(0, PortReg.IS, 0xFFFFFFFF)
    assert rig.host(HostReg.IS) == 0 and rig.line.level == 0


def test_read_dma_ext_scatters_over_several_prds(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    prds = [(DATA, 512), (DATA + 0x3000, 1000), (DATA + 0x8000, 536)]
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=100, count=4), prds)
    got = b"".join(bytes(rig.mem.ram[a:a + n]) for a, n in prds)
    expect = Path(disk).read_bytes()[100 * 512:104 * 512]
    assert got[:2048] == expect[:2048]
    assert rig.prdbc(0) == 2048
    assert rig.preg(0, PortReg.TFD) == 0x50 and rig.preg(0, PortReg.CI) == 0
    assert rig.preg(0, PortReg.IS) & PortIRQ.DHRS and not rig.preg(0, PortReg.IS) & PortIRQ.TFES


def test_lba28_read_dma_and_commands_in_several_slots(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    table = CT
    # Slots 1 and 2 issued together run one after the other.
    for slot, lba in ((1, 7), (2, 0x1234)):
        t = table + slot * SLOT_TABLE_SIZE
        fis = h2d(ATA_READ_DMA, lba=lba & 0xFFFFFF, count=1, device=0x40 | (lba >> 24))
        rig.mem.ram[CLB + slot * 32:CLB + slot * 32 + 32] = struct.pack("<IIII16x", 5 | (1 << 16), 0, t, 0)
        rig.mem.ram[t:t + 20] = fis
        rig.mem.ram[t + 0x80:t + 0x90] = struct.pack("<IIII", DATA + slot * 0x1000, 0, 0, 511)
    rig.preg(0, PortReg.CI, 0b110)
    rig.loop.run()
    assert rig.preg(0, PortReg.CI) == 0
    assert rig.mem.ram[DATA + 0x1000:DATA + 0x1000 + 8] == b"sector 7"
    assert bytes(rig.mem.ram[DATA + 0x2000:DATA + 0x2000 + 11]) == b"sector 4660"


def test_write_round_trip_and_flush(rig: Rig, disk: Path) -> None:
    ide = rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    payload = os.urandom(3 * 512)
    rig.mem.ram[DATA:DATA + 1024] = payload[:1024]
    rig.mem.ram[DATA + 0x5000:DATA + 0x5000 + 512] = payload[1024:]
    rig.issue(0, 0, h2d(ATA_WRITE_DMA_EXT, lba=5000, count=3), [(DATA, 1024), (DATA + 0x5000, 512)], write=True)
    assert rig.preg(0, PortReg.TFD) == 0x50
    assert rig.prdbc(0) == 1536
    blk = ide.blk
    assert blk is not None
    flushes = blk.stats.flush_operations
    rig.issue(0, 1, h2d(ATA_FLUSH_EXT))
    assert rig.preg(0, PortReg.TFD) == 0x50 and rig.preg(0, PortReg.CI) == 0
    assert blk.stats.flush_operations == flushes + 1
    assert Path(disk).read_bytes()[5000 * 512:5003 * 512] == payload
    # And it reads back through the controller.
    rig.issue(0, 2, h2d(ATA_READ_DMA_EXT, lba=5000, count=3), [(DATA + 0x10000, 1536)])
    assert bytes(rig.mem.ram[DATA + 0x10000:DATA + 0x10000 + 1536]) == payload


def test_large_transfer_goes_in_chunks(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    # 3 MiB in one command, one PRD per 64 KiB: more than one block-layer chunk.
    count = 6144
    prds = [(0x100000 + (i % 16) * 0x10000, 0x10000) for i in range(48)]
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=0, count=count), prds)
    assert rig.prdbc(0) == count * 512
    assert rig.preg(0, PortReg.TFD) == 0x50


def _expect_fatal(rig: Rig, irq: int) -> None:
    assert rig.preg(0, PortReg.IS) & irq == irq
    assert rig.preg(0, PortReg.IS) & PortIRQ.TFES
    assert rig.preg(0, PortReg.TFD) == 0x0441  # ERR, error ABRT
    assert rig.preg(0, PortReg.CI) == 1  # the failed slot stays issued
    # The port takes nothing more until software restarts it.
    rig.preg(0, PortReg.IS, 0xFFFFFFFF)
    rig.preg(0, PortReg.CI, 2)
    rig.loop.run()
    assert rig.preg(0, PortReg.CI) == 3
    rig.preg(0, PortReg.CMD, PortCmd.FRE)
    assert rig.preg(0, PortReg.CI) == 0 and rig.preg(0, PortReg.CMD) & PortCmd.CR == 0
    rig.preg(0, PortReg.CMD, PortCmd.FRE | PortCmd.ST)
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=1, count=1), [(DATA, 512)])
    assert rig.preg(0, PortReg.TFD) == 0x50 and rig.mem.ram[DATA:DATA + 8] == b"sector 1"


@pytest.mark.parametrize("addr", [RAM_SIZE - 256, RAM_SIZE + 0x1000, (1 << 64) - 0x1000])
def test_prd_outside_guest_memory_is_a_host_bus_data_error(rig: Rig, disk: Path, addr: int) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=0, count=1), [(addr, 512)])
    _expect_fatal(rig, PortIRQ.HBDS)


def test_write_from_outside_guest_memory_writes_nothing(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    before = Path(disk).read_bytes()
    rig.issue(0, 0, h2d(ATA_WRITE_DMA_EXT, lba=0, count=1), [(RAM_SIZE, 512)], write=True)
    _expect_fatal(rig, PortIRQ.HBDS)
    assert Path(disk).read_bytes() == before


@pytest.mark.parametrize("prds,prdtl", [([(DATA, 256)], None), ([], None), ([(DATA, 512)], 0)])
def test_prd_table_shorter_than_the_data_is_an_overflow(rig: Rig, disk: Path, prds: list[tuple[int, int]],
                                                        prdtl: int | None) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=0, count=1), prds, prdtl=prdtl)
    _expect_fatal(rig, PortIRQ.OFS)


def test_huge_prdtl_reads_only_the_entries_it_needs(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    # PRDTL 65535 with the table running past guest memory: the one entry needed is read, the rest never.
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=2, count=1), [(DATA, 512)], prdtl=0xFFFF)
    assert rig.preg(0, PortReg.TFD) == 0x50 and rig.mem.ram[DATA:DATA + 8] == b"sector 2"


def test_unreadable_command_list_is_a_host_bus_fatal_error(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.preg(0, PortReg.CMD, PortCmd.FRE)
    rig.preg(0, PortReg.CLBU, 0xFFFFFFFF)
    rig.preg(0, PortReg.CMD, PortCmd.FRE | PortCmd.ST)
    rig.preg(0, PortReg.CI, 1)
    assert rig.preg(0, PortReg.IS) & PortIRQ.HBFS and rig.preg(0, PortReg.CI) == 1


def test_command_fis_of_another_type_is_an_interface_fatal_error(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, b"\x34" + h2d(ATA_IDENTIFY)[1:], [(DATA, 512)])
    _expect_fatal(rig, PortIRQ.IFS)
    assert rig.preg(0, PortReg.SERR) & (1 << 10)  # protocol error, until software clears it


@pytest.mark.parametrize("command,features", [(0xB0, 0xD0), (0x60, 0), (0x61, 0), (0x00, 0), (0xC4, 0), (0x2F, 0)])
def test_unsupported_commands_are_aborted_and_the_port_goes_on(rig: Rig, disk: Path, command: int,
                                                              features: int) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(command, features=features, count=8), [(DATA, 4096)])
    assert rig.preg(0, PortReg.TFD) == 0x0441
    assert rig.d2h()[2] == 0x41 and rig.d2h()[3] == 0x04
    assert rig.preg(0, PortReg.IS) & PortIRQ.TFES
    assert rig.preg(0, PortReg.CI) == 0
    rig.issue(0, 1, h2d(ATA_READ_DMA_EXT, lba=3, count=1), [(DATA, 512)])
    assert rig.preg(0, PortReg.TFD) == 0x50 and rig.mem.ram[DATA:DATA + 8] == b"sector 3"


def test_reads_past_the_end_fail_with_idnf(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=8191, count=2), [(DATA, 1024)])
    assert rig.preg(0, PortReg.TFD) == 0x1441  # IDNF | ABRT
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=(1 << 48) - 1, count=0), [(DATA, 1024)])
    assert rig.preg(0, PortReg.TFD) == 0x1441


def test_set_features_check_power_mode_and_verify(rig: Rig, disk: Path) -> None:
    ide = rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(0xEF, features=0x82))  # write cache off
    assert rig.preg(0, PortReg.TFD) == 0x50 and ide.blk is not None and not ide.blk.enable_write_cache
    rig.issue(0, 0, h2d(ATA_IDENTIFY), [(DATA, 512)])
    assert not struct.unpack_from("<H", rig.mem.ram, DATA + 85 * 2)[0] & (1 << 5)
    rig.issue(0, 0, h2d(0xEF, features=0x03, count=0x40 | 2))  # UDMA 2
    rig.issue(0, 0, h2d(ATA_IDENTIFY), [(DATA, 512)])
    assert struct.unpack_from("<H", rig.mem.ram, DATA + 88 * 2)[0] == 0x043F
    rig.issue(0, 0, h2d(0xEF, features=0x77))  # unknown subcommand
    assert rig.preg(0, PortReg.TFD) == 0x0441
    rig.issue(0, 0, h2d(0xE0))  # STANDBY IMMEDIATE
    rig.issue(0, 0, h2d(0xE5))
    assert rig.d2h()[12] == 0x00
    rig.issue(0, 0, h2d(0xE1))  # IDLE IMMEDIATE
    rig.issue(0, 0, h2d(0xE5))
    assert rig.d2h()[12] == 0xFF
    rig.issue(0, 0, h2d(0x42, lba=10, count=5))  # READ VERIFY EXT
    assert rig.preg(0, PortReg.TFD) == 0x50
    rig.issue(0, 0, h2d(0x91, count=63, device=0x0F))  # INITIALIZE DEVICE PARAMETERS
    assert rig.preg(0, PortReg.TFD) == 0x50


def test_stopping_the_engine_drops_the_command_in_progress(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=9, count=1), [(DATA, 512)], run=False)
    assert rig.preg(0, PortReg.CI) == 1 and rig.preg(0, PortReg.TFD) & 0x80  # busy
    rig.preg(0, PortReg.CMD, PortCmd.FRE)
    assert rig.preg(0, PortReg.CI) == 0
    rig.loop.run()  # the read finishes in the block layer; nothing reaches the guest
    assert rig.mem.ram[DATA:DATA + 8] == bytes(8)
    assert not rig.preg(0, PortReg.IS) & PortIRQ.DHRS


def test_msi_replaces_intx_when_enabled(rig: Rig, disk: Path) -> None:
    msi = FakeMSI()
    rig.hba.msi = msi
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=1, count=1), [(DATA, 512)])
    assert msi.sent == 1 and rig.line.raised == 0
    msi.enabled = False
    rig.preg(0, PortReg.IS, 0xFFFFFFFF)
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=1, count=1), [(DATA, 512)])
    assert rig.line.level == 1 and msi.sent == 1


def test_interrupts_need_ghc_ie_and_pxie(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.preg(0, PortReg.IE, 0)
    rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=1, count=1), [(DATA, 512)])
    assert rig.preg(0, PortReg.IS) & PortIRQ.DHRS and rig.host(HostReg.IS) == 0 and rig.line.level == 0
    rig.host(HostReg.GHC, 0)
    rig.preg(0, PortReg.IE, PORT_IE_ALL)
    assert rig.host(HostReg.IS) == 1 and rig.line.level == 0
    rig.host(HostReg.GHC, 2)
    assert rig.line.level == 1


def test_comreset_resends_the_signature(rig: Rig, disk: Path) -> None:
    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    rig.mem.ram[FB + 0x40:FB + 0x60] = b"\xee" * 0x20
    rig.preg(0, PortReg.SCTL, 1)
    assert rig.preg(0, PortReg.SSTS) == 0
    rig.preg(0, PortReg.SCTL, 0)
    assert rig.preg(0, PortReg.SSTS) == 0x113 and rig.preg(0, PortReg.SIG) == 0x101
    assert rig.d2h()[0] == 0x34 and rig.d2h()[2] == 0x50 and rig.d2h()[12] == 1


def test_werror_report_aborts_the_write(rig: Rig, disk: Path) -> None:
    ide = rig.attach(0, DriveKind.HD, disk, werror=BlockdevOnError.REPORT)
    rig.hba.reset()
    rig.start()
    assert ide.blk is not None and ide.blk.root is not None
    root = ide.blk.root

    def failing(offset: int, data: object) -> None:
        raise OSError(errno.EIO, "injected")

    root.pwrite = failing  # type: ignore[method-assign]
    rig.issue(0, 0, h2d(ATA_WRITE_DMA_EXT, lba=0, count=1), [(DATA, 512)], write=True)
    assert rig.preg(0, PortReg.TFD) == 0x0441 and rig.preg(0, PortReg.IS) & PortIRQ.TFES
    assert rig.preg(0, PortReg.CI) == 0


def test_werror_stop_stops_the_vm_and_retries_on_cont(rig: Rig, disk: Path) -> None:
    ide = rig.attach(0, DriveKind.HD, disk, werror=BlockdevOnError.STOP)
    rig.hba.reset()
    rig.start()
    assert ide.blk is not None and ide.blk.root is not None
    root = ide.blk.root
    real_pwrite = root.pwrite
    failures = [1]

    def flaky(offset: int, data: bytes) -> None:
        if failures:
            failures.pop()
            raise OSError(errno.ENOSPC, "injected")
        real_pwrite(offset, data)

    root.pwrite = flaky  # type: ignore[method-assign]
    rig.mem.ram[DATA:DATA + 512] = b"Z" * 512
    rig.issue(0, 0, h2d(ATA_WRITE_DMA_EXT, lba=4, count=1), [(DATA, 512)], write=True)
    assert runstate.take_vmstop_request() is runstate.RunState.IO_ERROR
    assert rig.preg(0, PortReg.CI) == 1 and rig.preg(0, PortReg.TFD) & 0x80  # still in progress
    rig.hba.restart()  # what `cont` does through the VM change-state handler
    rig.loop.run()
    assert rig.preg(0, PortReg.CI) == 0 and rig.preg(0, PortReg.TFD) == 0x50
    assert Path(disk).read_bytes()[4 * 512:5 * 512] == b"Z" * 512


def test_a_zero_sector_count_means_the_most() -> None:
    tf = TaskFile(ATA_READ_DMA, count=0)
    assert tf.sector_count == 256
    assert TaskFile(ATA_READ_DMA_EXT, count=0).sector_count == 65536


# --- ATAPI -----------------------------------------------------------------------------------------


@pytest.fixture
def iso(tmp_path: Path) -> Path:
    """A 64-sector CD image with an ISO 9660 primary volume descriptor at sector 16."""
    path = tmp_path / "cd.iso"
    image = bytearray(64 * 2048)
    image[16 * 2048:16 * 2048 + 6] = b"\x01CD001"
    image[17 * 2048:17 * 2048 + 6] = b"\xffCD001"
    for n in range(18, 64):
        image[n * 2048:n * 2048 + 12] = f"cd sector {n}".encode().ljust(12)
    path.write_bytes(bytes(image))
    return path


def packet(rig: Rig, cdb: bytes, nbytes: int, dma: bool = True) -> tuple[int, bytes]:
    """Run one packet command; (PxTFD, the data it returned)."""
    rig.mem.ram[DATA:DATA + max(nbytes, 2)] = bytes(max(nbytes, 2))
    prds = [(DATA, nbytes)] if nbytes else []
    rig.issue(0, 0, h2d(ATA_PACKET, features=int(dma), lba=nbytes << 8 & 0xFFFF00), prds,
              cdb=cdb.ljust(12, b"\0"))
    return rig.preg(0, PortReg.TFD), bytes(rig.mem.ram[DATA:DATA + nbytes])


def sense(rig: Rig) -> tuple[int, int]:
    tfd, data = packet(rig, bytes((0x03, 0, 0, 0, 18, 0)), 18)
    assert tfd == 0x50
    return data[2] & 0xF, data[12]


def test_atapi_signature_and_identify_packet(rig: Rig, iso: Path) -> None:
    rig.attach(0, DriveKind.CD, iso)
    rig.hba.reset()
    rig.start()
    assert rig.preg(0, PortReg.SIG) == 0xEB140101
    rig.issue(0, 0, h2d(ATA_IDENTIFY), [(DATA, 512)])
    assert rig.preg(0, PortReg.TFD) & 1  # IDENTIFY DEVICE is aborted by a packet device
    rig.issue(0, 0, h2d(0xA1), [(DATA, 512)])
    words = struct.unpack_from("<256H", rig.mem.ram, DATA)
    assert words[0] == 0x85C0
    assert b"".join(struct.pack(">H", w) for w in words[27:47]).strip() == b"PEMU DVD-ROM"


def test_atapi_reads_an_iso(rig: Rig, iso: Path) -> None:
    rig.attach(0, DriveKind.CD, iso)
    rig.hba.reset()
    rig.start()
    tfd, data = packet(rig, bytes((0x12, 0, 0, 0, 36, 0)), 36)
    assert tfd == 0x50 and data[0] == 5 and data[1] & 0x80 and data[8:12] == b"PEMU"
    tfd, data = packet(rig, bytes((0x25,)), 8)
    assert struct.unpack(">II", data) == (63, 2048)
    tfd, data = packet(rig, bytes((0x28, 0, 0, 0, 0, 16, 0, 0, 2, 0)), 4096)
    assert tfd == 0x50 and data[:6] == b"\x01CD001" and data[2048:2054] == b"\xffCD001"
    tfd, data = packet(rig, bytes((0xA8, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0)), 2048, dma=False)
    assert tfd == 0x50 and data.startswith(b"cd sector 20")
    tfd, data = packet(rig, bytes((0x28, 0, 0, 0, 0, 63, 0, 0, 2, 0)), 4096)
    assert tfd == 0x5041 and sense(rig) == (5, 0x21)  # ILLEGAL REQUEST, LBA out of range
    tfd, data = packet(rig, bytes((0x43, 0, 0, 0, 0, 0, 0, 0, 20, 0)), 20)
    assert tfd == 0x50 and struct.unpack(">HBB", data[:4]) == (18, 1, 1)
    assert data[6] == 1 and data[14] == 0xAA and struct.unpack(">I", data[16:20])[0] == 64
    tfd, data = packet(rig, bytes((0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 28, 0)), 28)
    assert tfd == 0x50 and data[8] == 0x2A and data[9] == 20
    tfd, data = packet(rig, bytes((0x46, 0, 0, 0, 0, 0, 0, 0, 16, 0)), 16)
    assert tfd == 0x50 and struct.unpack(">H", data[6:8])[0] == 0x0008  # CD-ROM profile current
    tfd, data = packet(rig, bytes((0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0)), 8)
    assert tfd == 0x50 and data[2] == 4 and data[5] & 2  # media class, medium present
    tfd, _ = packet(rig, bytes((0x1E, 0, 0, 0, 1, 0)), 0)
    tfd, _ = packet(rig, bytes((0x1B, 0, 0, 0, 2, 0)), 0)  # eject while locked
    assert tfd & 1 and sense(rig) == (2, 0x53)
    tfd, _ = packet(rig, bytes((0xFF,)), 0)
    assert tfd & 1 and sense(rig) == (5, 0x20)  # invalid opcode


def test_atapi_without_medium_is_not_ready(rig: Rig) -> None:
    rig.attach(0, DriveKind.CD, None)
    rig.hba.reset()
    rig.start()
    assert rig.preg(0, PortReg.SIG) == 0xEB140101
    tfd, _ = packet(rig, bytes(6), 0)  # TEST UNIT READY
    assert tfd == 0x2041  # NOT READY in the error register's high nibble
    assert sense(rig) == (2, 0x3A)
    tfd, _ = packet(rig, bytes((0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0)), 2048)
    assert tfd == 0x2041
    tfd, data = packet(rig, bytes((0x12, 0, 0, 0, 36, 0)), 36)
    assert tfd == 0x50 and data[0] == 5


def test_tiny_prds_are_moved_a_bounded_number_at_a_time(rig: Rig, disk: Path) -> None:
    """65535 two-byte PRDs for a read: every step handles at most MAX_SEGMENTS_PER_STEP of them."""
    from pemu.hw.ide import ahci as ahci_module

    rig.attach(0, DriveKind.HD, disk)
    rig.hba.reset()
    rig.start()
    sizes: list[int] = []
    real = ahci_module.AHCICommand.to_host

    def spy(self: ahci_module.AHCICommand, data: bytes | bytearray | memoryview) -> bool:
        sizes.append(len(data))
        return real(self, data)

    ahci_module.AHCICommand.to_host = spy  # type: ignore[method-assign]
    try:
        prds = [(0x120000 + 2 * i, 2) for i in range(0xFFFF)]
        # The table itself is 1 MiB: put it where the helper's slot tables do not overlap it.
        rig.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=0, count=255), prds)
    finally:
        ahci_module.AHCICommand.to_host = real  # type: ignore[method-assign]
    assert rig.preg(0, PortReg.TFD) == 0x50 and rig.prdbc(0) == 255 * 512
    assert max(sizes) <= ahci_module.MAX_SEGMENTS_PER_STEP * 2 and sum(sizes) == 255 * 512
    assert bytes(rig.mem.ram[0x120000:0x120008]) == b"sector 0"


def test_atapi_medium_change_is_reported_once(rig: Rig, iso: Path, tmp_path: Path) -> None:
    ide = rig.attach(0, DriveKind.CD, iso)
    rig.hba.reset()
    rig.start()
    atapi = ide.atapi
    assert atapi is not None and ide.blk is not None
    tfd, _ = packet(rig, bytes(6), 0)
    assert tfd == 0x50
    # The monitor's eject: the medium goes, the tray is open.
    atapi.eject_request_cb(False)
    ide.blk.drain()
    ide.blk.root = None
    atapi.change_media_cb(False)
    tfd, data = packet(rig, bytes((0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0)), 8)
    assert data[4] == 3 and data[5] == 1  # media removal, tray open, no medium
    tfd, _ = packet(rig, bytes(6), 0)
    assert tfd == 0x2041 and sense(rig) == (2, 0x3A)
    # A new, bigger medium: one UNIT ATTENTION, then it reads.
    bigger = tmp_path / "big.iso"
    bigger.write_bytes(b"".join(f"new {n}".encode().ljust(2048, b"\0") for n in range(100)))
    ide.blk.root = bdrv_open(str(bigger), "raw", True, CACHE_MODES["writeback"], locking=False)
    atapi.change_media_cb(True)
    tfd, _ = packet(rig, bytes(6), 0)
    assert tfd == 0x6041 and sense(rig) == (6, 0x28)
    tfd, data = packet(rig, bytes((0x25,)), 8)
    assert tfd == 0x50 and struct.unpack(">II", data) == (99, 2048)
    tfd, data = packet(rig, bytes((0x28, 0, 0, 0, 0, 77, 0, 0, 1, 0)), 2048)
    assert tfd == 0x50 and data.startswith(b"new 77")


# --- the ICH9 PCI function ---------------------------------------------------------------------------------


def ich9_ahci(msi: bool) -> ICH9AHCIState:
    import pemu.hw.pci_host.q35  # noqa: F401  (registers the host types)
    from pemu.hw.core.qdev import qdev_new, qdev_realize
    from pemu.hw.core.sysbus import sysbus_realize
    from pemu.hw.ide.ich import ICH9AHCIState
    from pemu.hw.pci_host.q35 import Q35PCIHost
    from pemu.qom.object import object_check
    from pemu.system.memory import MEMORY_SIZE_UNLIMITED, MemoryRegion
    from pemu.system.physmem import cpu_exec_init_all, get_system_memory
    from pemu.util.vm_context import current_vm

    cpu_exec_init_all()
    current_vm().msi_nonbroken = msi
    pci = MemoryRegion.container("pci", MEMORY_SIZE_UNLIMITED)
    get_system_memory().add_subregion_overlap(0, pci, -1)
    host = object_check(qdev_new("q35-pcihost"), Q35PCIHost)
    host.pci_address_space = pci
    sysbus_realize(host)
    dev = object_check(qdev_new("ich9-ahci"), ICH9AHCIState)
    dev.property_set("addr", "1f.2")
    qdev_realize(dev, host.bus)
    return dev


def test_ich9_function_config_space() -> None:
    from pemu.hw.pci.pci import pci_capabilities

    dev = ich9_ahci(msi=True)
    assert (dev.get_word(0), dev.get_word(2)) == (0x8086, 0x2922)
    assert (dev.config[0x0B], dev.config[0x0A], dev.config[0x09]) == (0x01, 0x06, 0x01)  # SATA, AHCI 1.0
    assert dev.config[0x3D] == 1  # INTA
    assert pci_capabilities(dev) == [(0x80, 0x05), (0xA8, 0x12)]  # MSI first, then SATA
    assert dev.get_long(0xA8 + 4) == 0x48  # the index/data pair: BAR4, offset 0x10
    # BAR sizing: BAR5 is 4 KiB of memory, BAR4 32 bytes of I/O.
    dev.config_write(0x24, 0xFFFFFFFF, 4)
    dev.config_write(0x20, 0xFFFFFFFF, 4)
    assert dev.get_long(0x24) == 0xFFFFF000 and dev.get_long(0x20) == 0xFFFFFFE1
    assert [buses.name for buses in dev.buses] == [f"ide.{n}" for n in range(6)]


def test_ich9_without_apics_has_no_msi() -> None:
    from pemu.hw.pci.pci import pci_capabilities

    dev = ich9_ahci(msi=False)
    assert pci_capabilities(dev) == [(0xA8, 0x12)]


def test_ich9_index_data_pair_reaches_the_hba() -> None:
    dev = ich9_ahci(msi=True)
    ops = dev.idp.ops
    assert ops is not None
    ops.write(0x10, HostReg.PI | 0xFFFFF000, 4)  # the index keeps the ABAR offset only
    assert ops.read(0x10, 4) == HostReg.PI
    assert ops.read(0x14, 4) == 0x3F
    ops.write(0x10, HostReg.GHC, 4)
    ops.write(0x14, 2, 4)
    assert dev.ahci.ghc == 0x80000002


def test_software_reset_through_device_control_fises(rig: Rig, iso: Path) -> None:
    """Linux's ahci_softreset: a control FIS with SRST, then one without; the drive answers with its signature."""
    rig.attach(0, DriveKind.CD, iso)
    rig.hba.reset()
    rig.start()

    def control(srst: bool) -> bytes:
        fis = bytearray(20)
        fis[0], fis[1], fis[15] = 0x27, 0x00, 0x04 if srst else 0x00  # C bit clear: device control
        return bytes(fis)

    rig.mem.ram[FB + 0x40:FB + 0x60] = bytes(0x20)
    rig.issue(0, 0, control(True))
    assert rig.preg(0, PortReg.CI) == 0 and rig.preg(0, PortReg.TFD) & 0x80  # busy while in reset
    rig.issue(0, 1, control(False))
    assert rig.preg(0, PortReg.CI) == 0 and rig.preg(0, PortReg.TFD) == 0x0150
    d2h = rig.d2h()
    assert d2h[0] == 0x34 and d2h[12] == 0x01 and d2h[4:7] == b"\x01\x14\xeb"  # the packet device's signature
    tfd, _ = packet(rig, bytes(6), 0)
    assert tfd == 0x50
