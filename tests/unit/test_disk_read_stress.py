"""Many reads in flight at once, on real images, checked byte for byte.

A raw disk, a qcow2 with small clusters (many L2 tables, more than its cache
holds), and two qcow2 overlays over one raw backing file that ends before the
overlays do (reads past it are zeros) and is not cluster aligned.  First the
block layer alone: several threads submit asynchronous reads to all the
backends while a main-loop thread runs their completions.  Then the AHCI:
several ports with those images, each command a READ DMA EXT of a random range
through a random multi-PRD table, issued into free slots while earlier commands
are in flight, their completions run as the main loop runs them.
"""

from __future__ import annotations

import queue
import random
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_guest_memory import FakeGuestMemory

from pemu.block.block import bdrv_open
from pemu.block.block_backend import BlockBackend
from pemu.block.block_int import CACHE_MODES
from pemu.block.qcow2_create import qcow2_create
from pemu.hw.ide.ahci import AHCI_PORT_REGS_START, AHCIState, HostReg, PortCmd, PortIRQ, PortReg
from pemu.hw.ide.core import DriveKind

KiB = 1 << 10
MiB = 1 << 20
SECTOR = 512
BASE_SIZE = 3 * MiB + 1000  # the backing file: not a whole number of clusters, nor of sectors
DISK_SIZE = 3 * MiB + 64 * KiB  # every disk's virtual size (the overlays reach past their backing file)
ATA_READ_DMA_EXT = 0x25
QEMU_IMG = shutil.which("qemu-img")


@dataclass
class Image:
    name: str
    path: Path
    fmt: str
    content: bytes  # what a read of the whole disk returns


def _write_through_pemu(path: Path, writes: list[tuple[int, bytes]]) -> None:
    bs = bdrv_open(str(path), "qcow2", False, CACHE_MODES["writeback"], locking=False)
    blk = BlockBackend(bs, "setup", schedule_completion=lambda cb: cb())
    try:
        for offset, data in writes:
            assert blk.pwrite(offset, data) == 0
        assert blk.flush() == 0
    finally:
        blk.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Image]:
    tmp = tmp_path_factory.mktemp("stress")
    rng = random.Random(1212)
    words = (b"pemu ", b"qcow2 ", b"ahci ", b"cluster\n")
    text = b"".join(rng.choice(words) for _ in range(DISK_SIZE // 4))  # compressible
    disk = rng.randbytes(MiB) + bytes(256 * KiB) + rng.randbytes(768 * KiB) + text[:DISK_SIZE - 2 * MiB]
    raw = tmp / "disk.raw"
    raw.write_bytes(disk)
    plain = tmp / "plain.qcow2"
    qcow2_create(str(plain), DISK_SIZE, cluster_bits=10)  # 128 KiB per L2 table: 25 tables, 16 cached
    _write_through_pemu(plain, [(offset, disk[offset:offset + 64 * KiB]) for offset in range(0, DISK_SIZE, 64 * KiB)])
    base = tmp / "base.raw"
    base_data = rng.randbytes(BASE_SIZE)
    base.write_bytes(base_data)
    out = [Image("raw", raw, "raw", disk), Image("plain", plain, "qcow2", disk)]
    if QEMU_IMG is not None:  # pemu writes no compressed clusters; qemu-img (Debian's qemu-utils) does
        compressed = tmp / "compressed.qcow2"
        subprocess.run([QEMU_IMG, "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", str(raw),
                        str(compressed)], check=True, capture_output=True, timeout=60)
        out.append(Image("compressed", compressed, "qcow2", disk))
    for n in range(2):
        overlay = tmp / f"overlay{n}.qcow2"
        qcow2_create(str(overlay), DISK_SIZE, str(base), "raw", cluster_bits=9)
        content = bytearray(base_data + bytes(DISK_SIZE - BASE_SIZE))
        writes = []
        for _ in range(60):  # partial clusters (copied from the backing file), some past its end
            offset = rng.randrange(0, DISK_SIZE - 4 * KiB)
            data = rng.randbytes(rng.randrange(1, 4 * KiB))
            writes.append((offset, data))
            content[offset:offset + len(data)] = data
        _write_through_pemu(overlay, writes)
        out.append(Image(f"overlay{n}", overlay, "qcow2", bytes(content)))
    return out


class MainLoop:
    """A thread that runs the completions the block layer schedules, as pemu's main loop does."""

    def __init__(self) -> None:
        self.pending: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="main-loop")
        self.errors: list[BaseException] = []
        self.thread.start()

    def schedule(self, cb: Callable[[], None]) -> None:
        self.pending.put(cb)

    def _run(self) -> None:
        while (cb := self.pending.get()) is not None:
            try:
                cb()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)

    def stop(self) -> None:
        self.pending.put(None)
        self.thread.join()


def _open(image: Image, schedule: Callable[[Callable[[], None]], None], name: str) -> BlockBackend:
    bs = bdrv_open(str(image.path), image.fmt, True, CACHE_MODES["writeback"], locking=False)
    return BlockBackend(bs, name, schedule_completion=schedule)


def test_concurrent_aio_reads_on_raw_qcow2_and_overlays_return_the_image_content(images: list[Image]) -> None:
    loop = MainLoop()
    backends = [_open(image, loop.schedule, image.name) for image in images]
    overlay = next(image for image in images if image.name == "overlay0")
    backends.append(_open(overlay, loop.schedule, "overlay0-again"))  # one image, two graphs
    contents = [image.content for image in images] + [overlay.content]
    requests_per_thread = 300
    mismatches: list[str] = []
    done = threading.Semaphore(0)

    def submitter(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(requests_per_thread):
            which = rng.randrange(len(backends))
            nbytes = rng.choice((SECTOR, 4 * KiB, rng.randrange(1, 200) * SECTOR, rng.randrange(1, 300 * KiB)))
            offset = rng.randrange(0, DISK_SIZE - nbytes + 1)
            buf = bytearray(b"\xa5" * nbytes)

            def check(ret: int, which: int = which, offset: int = offset, buf: bytearray = buf) -> None:
                expected = contents[which][offset:offset + len(buf)]
                if ret != 0 or buf != expected:
                    mismatches.append(f"{backends[which].name} {offset:#x}+{len(buf):#x}: ret {ret}")
                done.release()

            backends[which].aio_preadv(offset, buf, check)

    threads = [threading.Thread(target=submitter, args=(seed,)) for seed in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for _ in range(len(threads) * requests_per_thread):
            assert done.acquire(timeout=30), "a completion never ran"
    finally:
        for blk in backends:
            blk.close()
        loop.stop()
    assert not loop.errors, loop.errors
    assert not mismatches, mismatches[:10]


# -- the AHCI ---------------------------------------------------------------------------------------

RAM_SIZE = 24 * MiB
SLOTS = 32
TABLE_SIZE = 0x1000  # a command table: 0x80 bytes of FIS and CDB, then up to 248 PRDs
MAX_PRDS = (TABLE_SIZE - 0x80) // 16
DATA_PER_SLOT = 96 * KiB


class GuestMemory(FakeGuestMemory):
    """Guest RAM; DMA outside it fails, as pemu's address spaces make it."""

    def __init__(self) -> None:
        super().__init__(RAM_SIZE)


class Line:
    def set(self, level: int) -> None:
        pass


def _layout(port: int) -> tuple[int, int, int, int]:
    """Guest addresses of a port's command list, received-FIS area, command tables and data buffers."""
    base = port * (SLOTS * (TABLE_SIZE + DATA_PER_SLOT) + 0x2000)
    clb = base
    fb = base + 0x1000
    tables = base + 0x2000
    data = tables + SLOTS * TABLE_SIZE
    return clb, fb, tables, data


def _read_dma_ext(lba: int, count: int) -> bytes:
    fis = bytearray(20)
    fis[0], fis[1], fis[2] = 0x27, 0x80, ATA_READ_DMA_EXT
    fis[4:7] = (lba & 0xFFFFFF).to_bytes(3, "little")
    fis[7] = 0x40
    fis[8:11] = (lba >> 24).to_bytes(3, "little")
    fis[12:14] = count.to_bytes(2, "little")
    return bytes(fis)


@dataclass
class InFlight:
    lba: int
    count: int
    prds: list[tuple[int, int]]


class AHCIGuest:
    """The guest's AHCI driver: keeps every port's 32 slots busy with reads and checks each one."""

    def __init__(self, images: list[Image], loop: MainLoop, rng: random.Random) -> None:
        self.mem = GuestMemory()
        self.hba = AHCIState(len(images), self.mem, Line())
        self.images = images
        self.rng = rng
        self.lock = threading.Lock()  # the big lock: the vCPU and the main loop take turns at the device
        self.loop = loop
        self.backends = [_open(image, self._schedule_locked, image.name) for image in images]
        self.inflight: list[dict[int, InFlight]] = [{} for _ in images]
        self.mismatches: list[str] = []
        self.completed = 0
        for port, blk in enumerate(self.backends):
            self.hba.ports[port].ide.attach(DriveKind.HD, blk, "PEMU HARDDISK", f"PM{port:05d}", "0.1.0", None)
        self.hba.reset()  # the machine's reset: the ports see their drives
        for port in range(len(images)):
            self._start(port)

    def _schedule_locked(self, cb: Callable[[], None]) -> None:
        """Completions run on the main loop with the big lock held, as pemu's do."""
        def run() -> None:
            with self.lock:
                cb()
        self.loop.schedule(run)

    def _preg(self, port: int, reg: int, value: int | None = None) -> int:
        addr = AHCI_PORT_REGS_START + port * 0x80 + reg
        if value is not None:
            self.hba.mem_write(addr, value, 4)
        return self.hba.mem_read(addr, 4)

    def _start(self, port: int) -> None:
        clb, fb, _, _ = _layout(port)
        self.hba.mem_write(HostReg.GHC, 0x80000000, 4)  # AE, interrupts off: the guest polls PxCI
        self._preg(port, PortReg.CLB, clb)
        self._preg(port, PortReg.FB, fb)
        self._preg(port, PortReg.SERR, 0xFFFFFFFF)
        self._preg(port, PortReg.IS, 0xFFFFFFFF)
        self._preg(port, PortReg.CMD, PortCmd.FRE | PortCmd.SUD | PortCmd.POD)
        self._preg(port, PortReg.CMD, PortCmd.FRE | PortCmd.ST | PortCmd.SUD | PortCmd.POD)

    def issue(self, port: int, slot: int) -> None:
        """Build a random read in ``slot`` and set its PxCI bit (the caller holds the lock)."""
        rng = self.rng
        clb, _, tables, data = _layout(port)
        sectors = DISK_SIZE // SECTOR
        count = rng.choice((1, 8, rng.randrange(1, DATA_PER_SLOT // SECTOR + 1)))
        lba = rng.choice((0, sectors - count, rng.randrange(0, sectors - count + 1)))
        buffer = data + slot * DATA_PER_SLOT
        self.mem.ram[buffer:buffer + count * SECTOR] = b"\x5a" * (count * SECTOR)
        # Split the buffer into PRDs of random even lengths, scattered in the slot's data area in order.
        prds: list[tuple[int, int]] = []
        left = count * SECTOR
        addr = buffer
        while left:
            n = left if len(prds) == MAX_PRDS - 1 else min(left, rng.choice((2, 512, rng.randrange(1, 8 * KiB) * 2)))
            prds.append((addr, n))
            addr += n
            left -= n
        table = tables + slot * TABLE_SIZE
        self.mem.ram[table:table + 0x80] = bytes(0x80)
        self.mem.ram[table:table + 20] = _read_dma_ext(lba, count)
        for i, (prd_addr, length) in enumerate(prds):
            struct.pack_into("<IIII", self.mem.ram, table + 0x80 + 16 * i, prd_addr, 0, 0, length - 1)
        struct.pack_into("<IIII16x", self.mem.ram, clb + slot * 32, 5 | len(prds) << 16, 0, table, 0)
        self.inflight[port][slot] = InFlight(lba, count, prds)
        self._preg(port, PortReg.CI, 1 << slot)

    def reap(self, port: int) -> list[int]:
        """Check the commands the port finished; the slots that are free again (the caller holds the lock)."""
        ci = self._preg(port, PortReg.CI)
        status = self._preg(port, PortReg.IS)
        if status & (PortIRQ.TFES | PortIRQ.HBFS | PortIRQ.HBDS | PortIRQ.IFS | PortIRQ.OFS):
            self.mismatches.append(f"port {port}: PxIS {status:#x} PxTFD {self._preg(port, PortReg.TFD):#x}")
        self._preg(port, PortReg.IS, status)
        freed = []
        for slot, cmd in list(self.inflight[port].items()):
            if ci & 1 << slot:
                continue
            del self.inflight[port][slot]
            start, nbytes = cmd.lba * SECTOR, cmd.count * SECTOR
            got = b"".join(self.mem.ram[addr:addr + n] for addr, n in cmd.prds)
            prdbc = struct.unpack_from("<I", self.mem.ram, _layout(port)[0] + slot * 32 + 4)[0]
            if got != self.images[port].content[start:start + nbytes] or prdbc != nbytes:
                self.mismatches.append(f"{self.images[port].name} slot {slot}: lba {cmd.lba} count {cmd.count} "
                                       f"over {len(cmd.prds)} PRDs, PRDBC {prdbc}")
            self.completed += 1
            freed.append(slot)
        return freed

    def close(self) -> None:
        for blk in self.backends:
            blk.close()


@pytest.fixture
def loop() -> Iterator[MainLoop]:
    main_loop = MainLoop()
    yield main_loop
    main_loop.stop()


def test_ahci_ports_with_many_reads_in_flight_deliver_each_commands_own_bytes(images: list[Image],
                                                                              loop: MainLoop) -> None:
    guest = AHCIGuest(images, loop, random.Random(12))
    commands = 0
    per_port = 400
    try:
        with guest.lock:
            for port in range(len(images)):
                for slot in range(SLOTS):
                    guest.issue(port, slot)
                    commands += 1
        issued = [SLOTS] * len(images)
        deadline = time.monotonic() + 60
        while guest.completed < commands:
            assert time.monotonic() < deadline, f"{commands - guest.completed} commands never completed"
            with guest.lock:
                for port in range(len(images)):
                    for slot in guest.reap(port):
                        if issued[port] < per_port:
                            guest.issue(port, slot)  # a new command while the others are in flight
                            issued[port] += 1
                            commands += 1
            threading.Event().wait(0.0005)
    finally:
        guest.close()
    assert not loop.errors, loop.errors
    assert not guest.mismatches, guest.mismatches[:10]
    assert guest.completed == per_port * len(images)
