"""The AHCI HBA's and its drives' migration state without a CPU: save, load
into a fresh HBA, compare through MMIO, run on; commands in flight finish
before saving; hostile streams are refused."""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pemu.block.block_backend import BlockdevOnError
from pemu.hw.ide.ahci import AHCI_PORT_REGS_START, VMSTATE_AHCI, AHCIState, HostReg, PortCmd, PortIRQ, PortReg
from pemu.hw.ide.atapi import SenseKey
from pemu.hw.ide.core import DriveKind, IDEState
from pemu.hw.ide.qdev import VMSTATE_IDE_HD
from pemu.migration.vmstate import VMStateError, vmstate_load_bytes, vmstate_save_bytes
from pemu.system import runstate
from tests.unit.test_ahci import ATA_IDENTIFY, ATA_READ_DMA_EXT, ATA_WRITE_DMA_EXT, DATA, Rig, h2d, packet, sense

SET_FEATURES = 0xEF


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"".join(f"sector {n}".encode().ljust(512, b".") for n in range(8192)))
    return path


@pytest.fixture
def iso(tmp_path: Path) -> Path:
    path = tmp_path / "cd.iso"
    path.write_bytes(b"".join(f"cd sector {n}".encode().ljust(2048, b"\0") for n in range(64)))
    return path


@pytest.fixture
def rigs() -> Iterator[Callable[[], Rig]]:
    made: list[Rig] = []

    def make() -> Rig:
        made.append(Rig())
        return made[-1]

    yield make
    for rig in made:
        rig.close()


def two_drives(rig: Rig, disk: Path, iso: Path, **kw: BlockdevOnError) -> None:
    """A disk on port 0, a CD-ROM on port 1 (CD packets go to port 0 in test_ahci's helper,
    so the CD is driven through port 1 by the tests here)."""
    rig.attach(0, DriveKind.HD, disk, **kw)
    rig.attach(1, DriveKind.CD, iso)
    rig.hba.reset()
    rig.start(0)
    rig.start(1)


def registers(rig: Rig) -> list[int]:
    """Every register a guest reads: the host block and each port's block, through MMIO."""
    return [rig.hba.mem_read(addr, 4) for addr in range(0, AHCI_PORT_REGS_START + 6 * 0x80, 4)]


def on_port1(rig: Rig, fn: Callable[[], object]) -> object:
    """Run a test_ahci helper that talks to port 0 against port 1 instead."""
    ports = rig.hba.ports
    ports[0], ports[1] = ports[1], ports[0]
    try:
        return fn()
    finally:
        ports[0], ports[1] = ports[1], ports[0]


def busy_source(rigs: Callable[[], Rig], disk: Path, iso: Path) -> Rig:
    src = rigs()
    two_drives(src, disk, iso)
    src.issue(0, 0, h2d(SET_FEATURES, features=0x82))  # write cache off
    src.issue(0, 1, h2d(SET_FEATURES, features=0x03, count=(8 << 3) | 2))  # UDMA 2
    src.issue(0, 2, h2d(ATA_IDENTIFY), [(DATA, 512)])
    # The CD: locked, then an unknown opcode leaves ILLEGAL REQUEST / INVALID OPCODE in its sense data.
    on_port1(src, lambda: packet(src, bytes((0x1E, 0, 0, 0, 1, 0)), 0))
    on_port1(src, lambda: packet(src, bytes((0xFF,)), 0))
    src.preg(1, PortReg.IE, 0)  # port 1's interrupts off; port 0's pending
    src.hba.idp_index = 0x118
    return src


def test_state_survives_a_fresh_hba_and_the_loaded_hba_runs_on(rigs: Callable[[], Rig], disk: Path,
                                                               iso: Path) -> None:
    src = busy_source(rigs, disk, iso)
    assert src.line.level == 1
    data = vmstate_save_bytes(VMSTATE_AHCI, src.hba)

    dst = rigs()
    dst.attach(0, DriveKind.HD, disk)
    dst.attach(1, DriveKind.CD, iso)
    dst.hba.reset()
    dst.mem.ram[:] = src.mem.ram  # guest RAM comes over in its own sections
    vmstate_load_bytes(VMSTATE_AHCI, dst.hba, data)
    assert vmstate_save_bytes(VMSTATE_AHCI, dst.hba) == data
    assert registers(dst) == registers(src)
    assert dst.hba.idp_index == 0x118
    assert dst.line.level == 1  # the pending interrupt drives INTx again
    disk_ide = dst.hba.ports[0].ide
    assert not disk_ide.write_cache and disk_ide.blk is not None and not disk_ide.blk.enable_write_cache
    assert disk_ide.udma_mode == 2
    atapi = dst.hba.ports[1].ide.atapi
    assert atapi is not None and atapi.locked and atapi.sense_key is SenseKey.ILLEGAL_REQUEST

    # Run on: the sense data and the lock are the source's ...
    assert on_port1(dst, lambda: sense(dst)) == (5, 0x20)
    tfd, _ = on_port1(dst, lambda: packet(dst, bytes((0x1B, 0, 0, 0, 2, 0)), 0))  # type: ignore[misc]
    assert tfd & 1 and on_port1(dst, lambda: sense(dst)) == (2, 0x53)  # eject refused: still locked
    # ... and a disk command issued after loading DMAs into guest memory and interrupts.
    dst.preg(0, PortReg.IS, 0xFFFFFFFF)
    assert dst.line.level == 0
    raised = dst.line.raised
    dst.issue(0, 5, h2d(ATA_READ_DMA_EXT, lba=77, count=2), [(DATA + 0x2000, 1024)])
    assert bytes(dst.mem.ram[DATA + 0x2000:DATA + 0x2008]) == b"sector 7" and dst.prdbc(5) == 1024
    assert dst.preg(0, PortReg.CI) == 0 and dst.preg(0, PortReg.IS) & PortIRQ.DHRS
    assert dst.line.level == 1 and dst.line.raised == raised + 1
    words = struct.unpack_from("<256H", dst.mem.ram, DATA)
    assert not words[85] & (1 << 5)  # IDENTIFY on the source already said: write cache off


def test_msi_enabled_on_load_sends_nothing_again(rigs: Callable[[], Rig], disk: Path, iso: Path) -> None:
    from tests.unit.test_ahci import FakeMSI

    src = busy_source(rigs, disk, iso)
    data = vmstate_save_bytes(VMSTATE_AHCI, src.hba)
    dst = rigs()
    dst.attach(0, DriveKind.HD, disk)
    dst.attach(1, DriveKind.CD, iso)
    msi = FakeMSI()
    dst.hba.msi = msi
    vmstate_load_bytes(VMSTATE_AHCI, dst.hba, data)
    assert msi.sent == 0 and dst.line.level == 0 and dst.host(HostReg.IS) == 1


def test_a_command_in_flight_completes_before_saving(rigs: Callable[[], Rig], disk: Path, iso: Path) -> None:
    src = rigs()
    two_drives(src, disk, iso)
    # 3 MiB in one command: several block-layer requests, each submitted by the previous completion.
    prds = [(0x100000 + (i % 16) * 0x10000, 0x10000) for i in range(48)]
    src.issue(0, 0, h2d(ATA_READ_DMA_EXT, lba=0, count=6144), prds, run=False)
    src.issue(0, 1, h2d(ATA_READ_DMA_EXT, lba=9, count=1), [(DATA, 512)], run=False)
    assert src.preg(0, PortReg.CI) == 3
    with pytest.raises(VMStateError, match="port 0: the command in slot 0 has not completed"):
        vmstate_save_bytes(VMSTATE_AHCI, src.hba)
    for blk in src.loop.backends:  # what BlockDevices.inactivate_all does first
        blk.drain_and_complete()
    assert src.preg(0, PortReg.CI) == 0 and src.prdbc(0) == 6144 * 512 and src.prdbc(1) == 512
    assert bytes(src.mem.ram[DATA:DATA + 8]) == b"sector 9" and src.line.level == 1
    data = vmstate_save_bytes(VMSTATE_AHCI, src.hba)
    dst = rigs()
    dst.attach(0, DriveKind.HD, disk)
    dst.attach(1, DriveKind.CD, iso)
    vmstate_load_bytes(VMSTATE_AHCI, dst.hba, data)
    assert registers(dst) == registers(src) and dst.hba.ports[0].current is None


def test_a_request_stopped_by_werror_stop_refuses_to_save(rigs: Callable[[], Rig], disk: Path, iso: Path) -> None:
    src = rigs()
    two_drives(src, disk, iso, werror=BlockdevOnError.STOP)
    root = src.hba.ports[0].ide.blk.root  # type: ignore[union-attr]
    assert root is not None

    def failing(offset: int, data: object) -> None:
        raise OSError(errno.ENOSPC, "injected")

    root.pwrite = failing  # type: ignore[method-assign]
    src.issue(0, 0, h2d(ATA_WRITE_DMA_EXT, lba=0, count=1), [(DATA, 512)], write=True)
    assert runstate.take_vmstop_request() is runstate.RunState.IO_ERROR
    with pytest.raises(VMStateError, match="has not completed"):
        vmstate_save_bytes(VMSTATE_AHCI, src.hba)
    port = src.hba.ports[0]
    port.current = None  # even with the port's view gone, the drive's own check refuses
    with pytest.raises(VMStateError, match="werror/rerror=stop policy waits for the VM to continue"):
        vmstate_save_bytes(VMSTATE_AHCI, src.hba)


def _set(path: str, value: int | bool) -> Callable[[AHCIState], None]:
    def apply(hba: AHCIState) -> None:
        obj: object = hba
        *parents, last = path.split(".")
        for part in parents:
            obj = obj[int(part)] if isinstance(obj, list) else getattr(obj, part)  # type: ignore[index]
        setattr(obj, last, value)
    return apply


ST = int(PortCmd.ST | PortCmd.FRE | PortCmd.CR | PortCmd.FR)


@pytest.mark.parametrize("corrupt, message", [
    (_set("ports.0.ci", 1 << 31), r"ports\[0\]: port 0: commands issued \(PxCI 0x80000000\) but none running"),
    (_set("ports.2.ci", 1), "port 2: commands issued .* with the command engine stopped"),
    (_set("ports.0.halted", True), "port 0: stopped on a fatal error in slot 2, which is not issued"),
    (_set("ports.0.clb", 0x1200), "port 0: command list 0x1200 or FIS area .* is not aligned"),
    (_set("ports.0.irq_mask", 0xFFFFFFFF), "PxIE 0xffffffff has reserved bits"),
    (_set("ports.3.ssts", 0x113), "port 3: a device is linked up in the stream, this VM has no drive there"),
    (_set("ports.0.ssts", 0x123), "PxSSTS 0x123 is not a state"),
    (_set("ghc", 2), "GHC 0x2 is not a value of this AHCI-only HBA"),
    (_set("idp_index", 0x1001), r"ahci\.idp_index: invalid value 4097"),
    (_set("cap", 0x40000000), "CAP 0x40000000 in the stream, CAP 0x.* in this VM"),
    (_set("ports.0.ide.udma_mode", 9), r"ide\.udma_mode: invalid value 9"),
    (_set("ports.1.ide.atapi.sense_key", 0xB), "11 is not a valid SenseKey"),
    (_set("ports.1.ide.atapi.media_event", 7), r"atapi\.media_event: invalid value 7"),
], ids=["ci-not-running", "ci-engine-stopped", "halted-no-slot", "clb-align", "ie-reserved", "linked-no-drive",
        "ssts", "ghc", "idp-index", "cap", "udma", "sense-key", "media-event"])
def test_bad_streams_are_refused(rigs: Callable[[], Rig], disk: Path, iso: Path,
                                 corrupt: Callable[[AHCIState], None], message: str) -> None:
    src = busy_source(rigs, disk, iso)
    src.hba.ports[0].cmd = (src.hba.ports[0].cmd & ~(0x1F << 8)) | (2 << 8) | ST
    assert vmstate_save_bytes(VMSTATE_AHCI, src.hba)  # consistent as it stands
    corrupt(src.hba)
    data = vmstate_save_bytes(VMSTATE_AHCI, src.hba)
    dst = rigs()
    dst.attach(0, DriveKind.HD, disk)
    dst.attach(1, DriveKind.CD, iso)
    with pytest.raises(VMStateError, match=message):
        vmstate_load_bytes(VMSTATE_AHCI, dst.hba, data)


def test_another_port_count_or_drive_kind_is_refused(rigs: Callable[[], Rig], disk: Path, iso: Path) -> None:
    src = busy_source(rigs, disk, iso)
    data = vmstate_save_bytes(VMSTATE_AHCI, src.hba)
    four = AHCIState(4, src.mem)
    four.cap = src.hba.cap  # so that the port count itself is what is refused
    four.pi = src.hba.pi
    with pytest.raises(VMStateError, match=r"ahci\.ports: 6 ports in the stream, this HBA has 4"):
        vmstate_load_bytes(VMSTATE_AHCI, four, data)
    swapped = rigs()
    swapped.attach(0, DriveKind.CD, iso)
    swapped.attach(1, DriveKind.CD, iso)
    with pytest.raises(VMStateError, match=r"ports\[0\]\.ide\.kind: a disk \(ide-hd\) in the stream, "
                                           r"a CD-ROM \(ide-cd\) in this VM"):
        vmstate_load_bytes(VMSTATE_AHCI, swapped.hba, data)


def test_a_disk_of_another_size_is_refused() -> None:
    def device(sectors: int) -> SimpleNamespace:
        ide = IDEState()
        ide.nb_sectors = sectors
        return SimpleNamespace(drive_state=ide)

    data = vmstate_save_bytes(VMSTATE_IDE_HD, device(8192))
    vmstate_load_bytes(VMSTATE_IDE_HD, device(8192), data)
    with pytest.raises(VMStateError, match="a disk of 8192 sectors in the stream, a disk of 4096 sectors in this VM"):
        vmstate_load_bytes(VMSTATE_IDE_HD, device(4096), data)


def test_the_qdev_devices_declare_their_state() -> None:
    import pemu.hw.ide.ich  # noqa: F401  (registers ich9-ahci)
    from pemu.hw.core.qdev import DeviceClass
    from pemu.qom.object import object_class_by_name

    for name in ("ich9-ahci", "ide-hd", "ide-cd"):
        klass = object_class_by_name(name)
        assert isinstance(klass, DeviceClass) and klass.vmsd is not None, name


def test_the_cd_tray_media_event_and_unit_attention_survive(rigs: Callable[[], Rig], disk: Path, iso: Path) -> None:
    def moved(src: Rig) -> Rig:
        dst = rigs()
        dst.attach(0, DriveKind.HD, disk)
        dst.attach(1, DriveKind.CD, iso)
        dst.mem.ram[:] = src.mem.ram
        vmstate_load_bytes(VMSTATE_AHCI, dst.hba, vmstate_save_bytes(VMSTATE_AHCI, src.hba))
        return dst

    src = rigs()
    two_drives(src, disk, iso)
    tfd, _ = on_port1(src, lambda: packet(src, bytes((0x1B, 0, 0, 0, 2, 0)), 0))  # type: ignore[misc]
    assert tfd == 0x50  # the guest opened the tray
    dst = moved(src)
    tfd, data = on_port1(dst, lambda: packet(dst, bytes((0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8, 0)), 8))  # type: ignore[misc]
    assert tfd == 0x50 and data[4] == 3 and data[5] == 1  # media removal, tray open, no medium
    tfd, _ = on_port1(dst, lambda: packet(dst, bytes(6), 0))  # type: ignore[misc]
    assert tfd == 0x2041 and on_port1(dst, lambda: sense(dst)) == (2, 0x3A)  # NOT READY: tray open

    # The monitor changed the medium on the source: the destination's guest hears about it once.
    src2 = rigs()
    two_drives(src2, disk, iso)
    atapi = src2.hba.ports[1].ide.atapi
    assert atapi is not None
    atapi.change_media_cb(True)
    dst2 = moved(src2)
    tfd, _ = on_port1(dst2, lambda: packet(dst2, bytes(6), 0))  # type: ignore[misc]
    assert tfd == 0x6041 and on_port1(dst2, lambda: sense(dst2)) == (6, 0x28)  # UNIT ATTENTION
    tfd, _ = on_port1(dst2, lambda: packet(dst2, bytes(6), 0))  # type: ignore[misc]
    assert tfd == 0x50
