"""An AHCI host bus adapter (QEMU's hw/ide/ahci.c; Serial ATA AHCI 1.3.1).

:class:`AHCIState` is the HBA's register block (ABAR): the generic host
control registers and one :class:`AHCIPort` per port, each with a command
list of 32 slots and a received-FIS area in guest memory.  Commands are
Register Host-to-Device FISes in command tables; their data moves through
the PRD table (scatter-gather), by DMA through the address space the HBA
masters (:mod:`pemu.system.dma`), never through host pointers it keeps.
The ATA drive on each port is an :class:`~pemu.hw.ide.core.IDEState`.

The model is a plain object: the PCI function (:mod:`pemu.hw.ide.ich`)
gives it its DMA address space, its INTx line and its MSI vector.

Behaviour a guest sees:

* one command at a time per port, in slot order (no NCQ: CAP.SNCQ is clear
  and IDENTIFY says so); CAP.NCS says 32 slots, CAP.S64A 64-bit addresses;
* a command the drive fails (ERR in its status) posts a D2H Register FIS
  with that status, raises PxIS.TFES and clears its PxCI bit, so the port
  goes on with the next command (as QEMU's AHCI does, which firmware
  expects);
* a command the HBA cannot carry out stops the port as the AHCI
  specification's fatal errors do (6.1.2): an unreadable command header or
  table (PxIS.HBFS), a PRD that points outside guest memory (PxIS.HBDS), a
  PRD table shorter than the command's data (PxIS.OFS), a command FIS that
  is not a Register H2D FIS (PxIS.IFS, PxSERR.ERR.P).  TFES is raised too,
  PxTFD shows ERR with ABRT, PxCMD.CCS names the slot, its PxCI bit stays
  set and the port takes no command until software clears PxCMD.ST;
* every address, length and index a guest supplies is checked: the HBA
  reads at most as many PRD entries as the data needs (and never more than
  PRDTL, at most 65535), moves at most the command's own byte count, and
  holds at most one chunk of data in host memory per port.

Migration (:data:`VMSTATE_AHCI`): the HBA's and every port's registers and
each drive's state between commands.  A command in progress is not part of
the state: the source finishes every request first (the block layer's
``inactivate_all`` drains them, and their completions reach the ports), and
saving a port that still runs a command is refused.  Loaded registers are
checked against what the HBA itself can produce (alignments, writable bits,
a command engine that is stopped with commands issued...).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pemu.hw.core.irq import IRQLine, NoIRQ
from pemu.hw.ide.atapi import VMSTATE_ATAPI
from pemu.hw.ide.core import (
    ABRT_ERR,
    DIAG_PASSED,
    ERR_STAT,
    READY_STAT,
    SEEK_STAT,
    VMSTATE_IDE_DRIVE,
    ATACmd,
    ATAProtocol,
    ATAResult,
    IDEState,
    TaskFile,
    ata_command_protocol,
)
from pemu.migration.vmstate import (
    BOOL,
    U8,
    U16,
    U32,
    U64,
    Optional,
    SameAsHere,
    Struct,
    VMStateDescription,
    VMStateError,
    VMStateField,
    vmstate_load_state,
    vmstate_save_state,
)
from pemu.system.dma import DMAAddressSpace, dma_memory_read, dma_memory_write
from pemu.system.memory import MemTxResult
from pemu.util.log import LOG_UNIMP, guest_error, qemu_log_mask

if TYPE_CHECKING:
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter

AHCI_MEM_BAR_SIZE = 0x1000
AHCI_MAX_PORTS = 32
AHCI_MAX_CMDS = 32
AHCI_PORT_REGS_START = 0x100
AHCI_PORT_REGS_SIZE = 0x80
AHCI_VERSION_1_0 = 0x00010000

AHCI_CMD_HEADER_SIZE = 32
AHCI_COMMAND_TABLE_ACMD = 0x40
AHCI_PRDT_OFFSET = 0x80
AHCI_PRD_SIZE = 16
AHCI_PRDTL_MAX = 0xFFFF
AHCI_PRD_DBC_MASK = 0x3FFFFF
# PRD entries fetched per DMA read while walking a table.
PRD_FETCH_BATCH = 256
# PRD regions one step of a command moves at most (bounds the time one MMIO write or completion takes).
MAX_SEGMENTS_PER_STEP = 1024

# Offsets in the received-FIS area (AHCI 4.2.1).
RES_FIS_DSFIS = 0x00
RES_FIS_PSFIS = 0x20
RES_FIS_RFIS = 0x40
RES_FIS_SDBFIS = 0x58

# FIS types (SATA 10.3).
SATA_FIS_TYPE_REGISTER_H2D = 0x27
SATA_FIS_TYPE_REGISTER_D2H = 0x34
SATA_FIS_TYPE_PIO_SETUP = 0x5F
SATA_FIS_REG_H2D_UPDATE_COMMAND = 0x80
ATA_SRST = 0x04


class HostReg(enum.IntEnum):
    CAP = 0x00
    GHC = 0x04
    IS = 0x08
    PI = 0x0C
    VS = 0x10
    CCC_CTL = 0x14
    CCC_PORTS = 0x18
    EM_LOC = 0x1C
    EM_CTL = 0x20
    CAP2 = 0x24
    BOHC = 0x28


class HostCap(enum.IntFlag):
    SAM = 1 << 18  # AHCI mode only
    SNCQ = 1 << 30
    S64A = 1 << 31


HOST_CAP_NCS_SHIFT = 8
HOST_CAP_ISS_SHIFT = 20
ISS_GEN1 = 1


class HostCtl(enum.IntFlag):
    HR = 1 << 0
    IE = 1 << 1
    AE = 1 << 31


class PortReg(enum.IntEnum):
    CLB = 0x00
    CLBU = 0x04
    FB = 0x08
    FBU = 0x0C
    IS = 0x10
    IE = 0x14
    CMD = 0x18
    TFD = 0x20
    SIG = 0x24
    SSTS = 0x28
    SCTL = 0x2C
    SERR = 0x30
    SACT = 0x34
    CI = 0x38
    SNTF = 0x3C
    FBS = 0x40


class PortIRQ(enum.IntFlag):
    """PxIS / PxIE bits."""

    DHRS = 1 << 0  # D2H Register FIS
    PSS = 1 << 1  # PIO Setup FIS
    DSS = 1 << 2
    SDBS = 1 << 3
    UFS = 1 << 4
    DPS = 1 << 5  # descriptor processed
    PCS = 1 << 6
    DMPS = 1 << 7
    PRCS = 1 << 22
    IPMS = 1 << 23
    OFS = 1 << 24  # overflow
    INFS = 1 << 26
    IFS = 1 << 27  # interface fatal error
    HBDS = 1 << 28  # host bus data error
    HBFS = 1 << 29  # host bus fatal error
    TFES = 1 << 30  # task file error
    CPDS = 1 << 31


PORT_IE_WRITABLE = 0xFDC000FF


class PortCmd(enum.IntFlag):
    ST = 1 << 0
    SUD = 1 << 1
    POD = 1 << 2
    CLO = 1 << 3
    FRE = 1 << 4
    FR = 1 << 14
    CR = 1 << 15
    ATAPI = 1 << 24


PORT_CMD_CCS_SHIFT = 8
PORT_CMD_CCS_MASK = 0x1F << PORT_CMD_CCS_SHIFT
PORT_CMD_ICC_MASK = 0xF << 28
# Bits software cannot write: CCS, MPSS, FR, CR, CPS, MPSP, CPD, ESP, FBSCP.
PORT_CMD_RO_MASK = PORT_CMD_CCS_MASK | (1 << 13) | PortCmd.FR | PortCmd.CR | (1 << 16) | (0x3F << 18) | (1 << 22)

SERR_ERR_PROTOCOL = 1 << 10
SSTS_DEVICE_READY = 0x113  # DET 3 (device, phy up), SPD 1 (Gen1), IPM 1 (active)
TFD_NO_DEVICE = 0x7F
SIG_NONE = 0xFFFFFFFF


class CmdHeaderFlags(enum.IntFlag):
    ATAPI = 1 << 5
    WRITE = 1 << 6
    PREFETCH = 1 << 7
    RESET = 1 << 8
    BIST = 1 << 9
    CLEAR_BUSY = 1 << 10


class MSIVector(Protocol):
    """The function's MSI capability as the HBA uses it (pemu.hw.pci.msi.MSICapability)."""

    @property
    def enabled(self) -> bool: ...

    def notify(self, vector: int) -> None: ...


class PRD(NamedTuple):
    """One physical region descriptor: ``length`` bytes at ``addr``."""

    addr: int
    length: int


def parse_prds(raw: bytes) -> list[PRD]:
    """PRD entries (AHCI 4.2.3.3): DBA (bit 0 reserved), DBC+1 bytes (always even)."""
    prds = []
    for dba, dbau, _reserved, dw3 in struct.iter_unpack("<IIII", raw):
        prds.append(PRD(((dbau << 32) | dba) & ~1, ((dw3 & AHCI_PRD_DBC_MASK) | 1) + 1))
    return prds


class HostError(Exception):
    """The HBA could not carry out a command (a fatal port error); ``irq`` is its PxIS bits."""

    def __init__(self, irq: PortIRQ, message: str) -> None:
        super().__init__(message)
        self.irq = irq


class AHCICommand:
    """One command in a slot: the drive's data phase over the slot's PRD
    table (an :class:`~pemu.hw.ide.core.ATATransfer`)."""

    def __init__(self, port: AHCIPort, slot: int, table_addr: int, prdtl: int, protocol: ATAProtocol,
                 is_write: bool) -> None:
        self.port = port
        self.slot = slot
        self.table_addr = table_addr
        self.prdtl = min(prdtl, AHCI_PRDTL_MAX)
        self.protocol = protocol
        self.is_write = is_write
        self.transferred = 0
        self.host_error: HostError | None = None
        self._prds: list[PRD] = []
        self._fetched = 0  # PRD entries read so far
        self._index = 0  # the PRD the next byte goes through
        self._offset = 0  # bytes of it already used

    # -- the PRD table ----------------------------------------------------------------------------
    def _entry(self, i: int) -> PRD | None:
        """PRD ``i``, reading the table in batches as far as needed; None past PRDTL."""
        while i >= len(self._prds):
            if self._fetched >= self.prdtl:
                return None
            count = min(PRD_FETCH_BATCH, self.prdtl - self._fetched)
            addr = self.table_addr + AHCI_PRDT_OFFSET + self._fetched * AHCI_PRD_SIZE
            raw, res = dma_memory_read(self.port.hba.dma, addr, count * AHCI_PRD_SIZE)
            if res != MemTxResult.OK:
                raise HostError(PortIRQ.HBFS, f"PRD table at {addr:#x} is not readable")
            self._prds.extend(parse_prds(raw))
            self._fetched += count
        return self._prds[i]

    def _next_region(self) -> PRD | None:
        """The PRD the cursor is in."""
        while True:
            prd = self._entry(self._index)
            if prd is None or self._offset < prd.length:
                return prd
            self._index += 1
            self._offset = 0

    def step_limit(self, nbytes: int, granularity: int) -> int:
        """How much of the next ``nbytes`` to move in one step: what at most
        :data:`MAX_SEGMENTS_PER_STEP` PRD regions hold, in whole
        ``granularity`` units (at least one), so that no step of a command
        made of tiny PRDs holds the VMM for long."""
        if self.host_error is not None:
            return nbytes
        index, offset, total = self._index, self._offset, 0
        try:
            for _ in range(MAX_SEGMENTS_PER_STEP):
                prd = self._entry(index)
                if prd is None:
                    return nbytes  # the table ends first: the transfer reports it
                total += prd.length - offset
                if total >= nbytes:
                    return nbytes
                index, offset = index + 1, 0
        except HostError:
            return nbytes  # the transfer reports it
        return max(granularity, total - total % granularity)

    def _regions(self, nbytes: int) -> list[tuple[int, int, int]]:
        """(guest address, length, offset in the data) covering the next ``nbytes``."""
        out = []
        done = 0
        while done < nbytes:
            prd = self._next_region()
            if prd is None:
                raise HostError(PortIRQ.OFS, f"PRD table of slot {self.slot} ends after {self.transferred + done}"
                                f" bytes, the command moves more")
            n = min(prd.length - self._offset, nbytes - done)
            out.append((prd.addr + self._offset, n, done))
            self._offset += n
            done += n
        return out

    def _fail(self, error: HostError) -> bool:
        if self.host_error is None:
            self.host_error = error
            guest_error(f"ahci: port {self.port.port_no}: {error}")
        return False

    # -- ATATransfer ---------------------------------------------------------------------------
    def to_host(self, data: bytes | bytearray | memoryview) -> bool:
        if self.host_error is not None:
            return False
        view = memoryview(data)
        try:
            for addr, n, off in self._regions(len(view)):
                if dma_memory_write(self.port.hba.dma, addr, view[off:off + n]) != MemTxResult.OK:
                    raise HostError(PortIRQ.HBDS, f"PRD data at {addr:#x}+{n:#x} is outside guest memory")
        except HostError as exc:
            return self._fail(exc)
        self.transferred += len(view)
        return True

    def from_host(self, nbytes: int) -> bytes | None:
        if self.host_error is not None:
            return None
        buf = bytearray(nbytes)
        try:
            for addr, n, off in self._regions(nbytes):
                chunk, res = dma_memory_read(self.port.hba.dma, addr, n)
                if res != MemTxResult.OK:
                    raise HostError(PortIRQ.HBDS, f"PRD data at {addr:#x}+{n:#x} is outside guest memory")
                buf[off:off + n] = chunk
        except HostError as exc:
            self._fail(exc)
            return None
        self.transferred += nbytes
        return bytes(buf)

    def complete(self, result: ATAResult) -> None:
        self.port.command_done(self, result)


class AHCIPort:
    """One port's registers and its command engine (QEMU's AHCIDevice)."""

    def __init__(self, hba: AHCIState, port_no: int) -> None:
        self.hba = hba
        self.port_no = port_no
        self.ide = IDEState()
        self.clb = 0
        self.fb = 0
        self.irq_stat = 0
        self.irq_mask = 0
        self.cmd = 0
        self.tfd = TFD_NO_DEVICE
        self.sig = SIG_NONE
        self.ssts = 0
        self.sctl = 0
        self.serr = 0
        self.sact = 0
        self.ci = 0
        self.current: AHCICommand | None = None
        self.halted = False  # a fatal error: no command until ST is cleared
        self._in_check = False

    # -- reset --------------------------------------------------------------------------------
    def hba_reset(self) -> None:
        """What an HBA reset (GHC.HR, or the function's reset) does to the port."""
        self.irq_stat = 0
        self.irq_mask = 0
        self.sctl = 0
        self.cmd = PortCmd.SUD | PortCmd.POD
        self.reset_port()

    def reset_port(self) -> None:
        """A COMRESET (ahci_reset_port): the drive resets and sends its signature."""
        self._abort_command()
        self.ide.reset()
        self.serr = 0
        self.sact = 0
        self.ci = 0
        self.halted = False
        if not self.ide.present:
            self.ssts = 0
            self.tfd = TFD_NO_DEVICE
            self.sig = SIG_NONE
            return
        self.ssts = SSTS_DEVICE_READY
        self._device_signature()

    def _device_signature(self) -> None:
        """The drive's first D2H Register FIS after a reset: ready, diagnostics passed, its signature."""
        sig = self.ide.signature
        self.sig = sig
        status = READY_STAT | SEEK_STAT
        self._set_tfd(status, DIAG_PASSED)
        self._post_d2h(ATAResult(status, DIAG_PASSED, count=sig & 0xFF, lba=sig >> 8), interrupt=False)

    def _abort_command(self) -> None:
        if self.current is not None:
            self.ide.cancel()
            self.current = None

    # -- registers ---------------------------------------------------------------------------------
    def read(self, reg: int) -> int:
        reader = _PORT_READERS.get(reg)
        return reader(self) if reader is not None else 0

    def write(self, reg: int, val: int) -> None:
        if reg == PortReg.CLB:
            self.clb = (self.clb & ~0xFFFFFFFF) | (val & ~0x3FF)  # 1 KiB aligned
        elif reg == PortReg.CLBU:
            self.clb = (self.clb & 0xFFFFFFFF) | (val << 32)
        elif reg == PortReg.FB:
            self.fb = (self.fb & ~0xFFFFFFFF) | (val & ~0xFF)  # 256-byte aligned
        elif reg == PortReg.FBU:
            self.fb = (self.fb & 0xFFFFFFFF) | (val << 32)
        elif reg == PortReg.IS:
            self.irq_stat &= ~val
            self.hba.check_irq()
        elif reg == PortReg.IE:
            self.irq_mask = val & PORT_IE_WRITABLE
            self.hba.check_irq()
        elif reg == PortReg.CMD:
            self._write_cmd(val)
        elif reg == PortReg.SCTL:
            if (self.sctl & 0xF) == 1 and (val & 0xF) == 0:
                self.reset_port()  # COMRESET released
            elif (val & 0xF) == 1:
                self._abort_command()
                self.ssts = 0  # no link while COMRESET is asserted
            self.sctl = val
        elif reg == PortReg.SERR:
            self.serr &= ~val
        elif reg == PortReg.SACT:
            if self.cmd & PortCmd.ST:
                self.sact |= val
        elif reg == PortReg.CI:
            if self.cmd & PortCmd.ST:
                self.ci |= val
                self.check_cmd()
        elif reg in (PortReg.TFD, PortReg.SIG, PortReg.SSTS):
            pass  # read-only
        else:
            qemu_log_mask(LOG_UNIMP, f"ahci: port {self.port_no}: write {val:#x} to unimplemented register {reg:#x}\n")

    def _write_cmd(self, val: int) -> None:
        was_started = bool(self.cmd & PortCmd.ST)
        self.cmd = (self.cmd & PORT_CMD_RO_MASK) | (val & ~(PORT_CMD_RO_MASK | PORT_CMD_ICC_MASK))
        self.cmd &= ~PortCmd.CLO  # command list override: done at once (the drive is never busy after a reset)
        # The FIS receive and command list engines follow FRE and ST at once.
        if self.cmd & PortCmd.FRE:
            self.cmd |= PortCmd.FR
        else:
            self.cmd &= ~PortCmd.FR
        if self.cmd & PortCmd.ST:
            self.cmd |= PortCmd.CR
        else:
            self.cmd &= ~(PortCmd.CR | PORT_CMD_CCS_MASK)
            if was_started:
                # Stopping the engine drops what was issued (AHCI 3.3.14) and ends a fatal-error stop.
                self._abort_command()
                self.ci = 0
                self.sact = 0
                self.halted = False
        self.check_cmd()

    def _set_tfd(self, status: int, error: int) -> None:
        self.tfd = ((error & 0xFF) << 8) | (status & 0xFF)

    # -- interrupts ------------------------------------------------------------------------------------
    def raise_irq(self, bits: int) -> None:
        self.irq_stat |= bits
        self.hba.check_irq()

    # -- received FISes --------------------------------------------------------------------------------
    def _post_fis(self, offset: int, fis: bytes) -> None:
        if not self.cmd & PortCmd.FR:
            return
        if dma_memory_write(self.hba.dma, self.fb + offset, fis) != MemTxResult.OK:
            guest_error(f"ahci: port {self.port_no}: received-FIS area at {self.fb:#x} is outside guest memory")

    def _post_d2h(self, result: ATAResult, interrupt: bool = True) -> None:
        fis = bytearray(20)
        fis[0] = SATA_FIS_TYPE_REGISTER_D2H
        fis[1] = 0x40 if interrupt else 0
        fis[2] = result.status & 0xFF
        fis[3] = result.error & 0xFF
        fis[4:7] = (result.lba & 0xFFFFFF).to_bytes(3, "little")
        fis[7] = result.device & 0xFF
        fis[8:11] = ((result.lba >> 24) & 0xFFFFFF).to_bytes(3, "little")
        fis[12:14] = (result.count & 0xFFFF).to_bytes(2, "little")
        self._post_fis(RES_FIS_RFIS, bytes(fis))

    def _post_pio_setup(self, result: ATAResult, nbytes: int, to_host: bool) -> None:
        fis = bytearray(20)
        fis[0] = SATA_FIS_TYPE_PIO_SETUP
        fis[1] = 0x40 | (0x20 if to_host else 0)  # interrupt, direction
        fis[2] = READY_STAT | SEEK_STAT | 0x08  # DRQ: the data phase
        fis[3] = result.error & 0xFF
        fis[4:7] = (result.lba & 0xFFFFFF).to_bytes(3, "little")
        fis[7] = result.device & 0xFF
        fis[8:11] = ((result.lba >> 24) & 0xFFFFFF).to_bytes(3, "little")
        fis[12:14] = (result.count & 0xFFFF).to_bytes(2, "little")
        fis[15] = result.status & 0xFF  # E_Status: the status at the end of the transfer
        fis[16:18] = min(nbytes, 0xFFFF).to_bytes(2, "little")
        self._post_fis(RES_FIS_PSFIS, bytes(fis))

    # -- the command engine -------------------------------------------------------------------------------
    def check_cmd(self) -> None:
        """Start the issued commands, lowest slot first, one at a time."""
        if self._in_check:
            return
        self._in_check = True
        try:
            while (self.cmd & PortCmd.ST and self.ci and self.current is None and not self.halted
                   and self.ssts == SSTS_DEVICE_READY):
                slot = (self.ci & -self.ci).bit_length() - 1
                self._start_slot(slot)
        finally:
            self._in_check = False

    def _start_slot(self, slot: int) -> None:
        self.cmd = (self.cmd & ~PORT_CMD_CCS_MASK) | (slot << PORT_CMD_CCS_SHIFT)
        try:
            self._issue(slot)
        except HostError as exc:
            guest_error(f"ahci: port {self.port_no} slot {slot}: {exc}")
            self._fatal(exc.irq)

    def _issue(self, slot: int) -> None:
        dma = self.hba.dma
        header_addr = self.clb + slot * AHCI_CMD_HEADER_SIZE
        raw, res = dma_memory_read(dma, header_addr, AHCI_CMD_HEADER_SIZE)
        if res != MemTxResult.OK:
            raise HostError(PortIRQ.HBFS, f"command header at {header_addr:#x} is not readable")
        opts, _prdbc, ctba, ctbau = struct.unpack_from("<IIII", raw)
        table_addr = ((ctbau << 32) | ctba) & ~0x7F
        cfl = opts & 0x1F
        prdtl = opts >> 16
        table, res = dma_memory_read(dma, table_addr, AHCI_PRDT_OFFSET)
        if res != MemTxResult.OK:
            raise HostError(PortIRQ.HBFS, f"command table at {table_addr:#x} is not readable")
        if table[0] != SATA_FIS_TYPE_REGISTER_H2D or cfl < 5 or cfl > 16:
            self.serr |= SERR_ERR_PROTOCOL
            raise HostError(PortIRQ.IFS, f"command FIS type {table[0]:#x}, length {cfl} dwords: not a Register H2D FIS")
        if not table[1] & SATA_FIS_REG_H2D_UPDATE_COMMAND:
            self._device_control(slot, table[15], opts)
            return
        tf = TaskFile(
            command=table[2],
            features=table[3] | (table[11] << 8),
            count=table[12] | (table[13] << 8),
            lba=int.from_bytes(table[4:7], "little") | (int.from_bytes(table[8:11], "little") << 24),
            device=table[7],
            control=table[15],
        )
        protocol = ata_command_protocol(tf.command)
        cmd = AHCICommand(self, slot, table_addr, prdtl, protocol, bool(opts & CmdHeaderFlags.WRITE))
        self.current = cmd
        self._set_tfd(READY_STAT | 0x80, 0)  # BSY while the drive works
        cdb = bytes(table[AHCI_COMMAND_TABLE_ACMD:AHCI_COMMAND_TABLE_ACMD + 16]) if tf.command == ATACmd.PACKET else b""
        self.ide.execute(tf, cmd, cdb)

    def _device_control(self, slot: int, control: int, opts: int) -> None:
        """A Register H2D FIS that updates the device control register: SRST
        asserted resets the drive; released, the drive sends its signature."""
        if control & ATA_SRST:
            self._abort_command()
            self.ide.reset()
            self._set_tfd(0x80, 0)
        else:
            self._device_signature()
        self.ci &= ~(1 << slot)

    def _fatal(self, irq: PortIRQ) -> None:
        """A fatal port error (AHCI 6.1.2): the engine stops with the slot's PxCI bit set."""
        self.current = None
        self.halted = True
        self._set_tfd(READY_STAT | ERR_STAT, ABRT_ERR)
        self.raise_irq(irq | PortIRQ.TFES)

    def command_done(self, cmd: AHCICommand, result: ATAResult) -> None:
        """The drive ended ``cmd``: report it and go on with the next slot."""
        if self.current is not cmd:
            return  # the port was reset or stopped meanwhile
        if cmd.host_error is not None:
            self._fatal(cmd.host_error.irq)
            return
        self.current = None
        dma = self.hba.dma
        header_addr = self.clb + cmd.slot * AHCI_CMD_HEADER_SIZE
        if dma_memory_write(dma, header_addr + 4, cmd.transferred.to_bytes(4, "little")) != MemTxResult.OK:
            guest_error(f"ahci: port {self.port_no}: command header at {header_addr:#x} is not writable")
        self._set_tfd(result.status, result.error)
        irq = 0
        if cmd.protocol in (ATAProtocol.PIO_IN, ATAProtocol.PIO_OUT) and not result.failed:
            self._post_pio_setup(result, cmd.transferred, cmd.protocol is ATAProtocol.PIO_IN)
            irq |= PortIRQ.PSS
        self._post_d2h(result)
        irq |= PortIRQ.DHRS
        if result.failed:
            irq |= PortIRQ.TFES
        self.ci &= ~(1 << cmd.slot)
        self.raise_irq(irq)
        self.check_cmd()


# What each port register reads as (registers not listed read as zero: FBS, DEVSLP, vendor space).
_PORT_READERS: dict[int, Callable[[AHCIPort], int]] = {
    PortReg.CLB: lambda p: p.clb & 0xFFFFFFFF,
    PortReg.CLBU: lambda p: p.clb >> 32,
    PortReg.FB: lambda p: p.fb & 0xFFFFFFFF,
    PortReg.FBU: lambda p: p.fb >> 32,
    PortReg.IS: lambda p: p.irq_stat,
    PortReg.IE: lambda p: p.irq_mask,
    PortReg.CMD: lambda p: int(p.cmd),
    PortReg.TFD: lambda p: p.tfd,
    PortReg.SIG: lambda p: p.sig,
    PortReg.SSTS: lambda p: p.ssts,
    PortReg.SCTL: lambda p: p.sctl,
    PortReg.SERR: lambda p: p.serr,
    PortReg.SACT: lambda p: p.sact,
    PortReg.CI: lambda p: p.ci,
}


class AHCIState:
    """The HBA: generic host control and its ports (QEMU's AHCIState)."""

    def __init__(self, ports: int, dma: DMAAddressSpace, irq: IRQLine | None = None) -> None:
        if not 1 <= ports <= AHCI_MAX_PORTS:
            raise ValueError(f"AHCI: {ports} ports (1-{AHCI_MAX_PORTS})")
        self.dma = dma
        self.irq: IRQLine = irq if irq is not None else NoIRQ()
        self.msi: MSIVector | None = None
        self.ports = [AHCIPort(self, n) for n in range(ports)]
        self.cap = ((ports - 1) | ((AHCI_MAX_CMDS - 1) << HOST_CAP_NCS_SHIFT) | (ISS_GEN1 << HOST_CAP_ISS_SHIFT)
                    | HostCap.SAM | HostCap.S64A)
        self.ghc = HostCtl.AE
        self.irq_status = 0
        self.pi = (1 << ports) - 1
        self.idp_index = 0
        self._irq_level = 0

    # -- reset and interrupts -----------------------------------------------------------------------------
    def reset(self) -> None:
        """HBA reset (ahci_reset): GHC.HR, or the function's reset."""
        self.ghc = HostCtl.AE
        self.irq_status = 0
        for port in self.ports:
            port.hba_reset()
        self.check_irq()

    def _irq_level_now(self) -> int:
        status = 0
        for port in self.ports:
            if port.irq_stat & port.irq_mask:
                status |= 1 << port.port_no
        self.irq_status = status
        return 1 if status and self.ghc & HostCtl.IE else 0

    def check_irq(self) -> None:
        """IS gets a bit per port with an enabled interrupt; the line (or an
        MSI) signals while GHC.IE is set and IS is not zero."""
        level = self._irq_level_now()
        msi = self.msi
        if msi is not None and msi.enabled:
            self._set_intx(0)
            if level:
                msi.notify(0)
        else:
            self._set_intx(level)

    def _set_intx(self, level: int) -> None:
        if level != self._irq_level:
            self._irq_level = level
            self.irq.set(level)

    def restore_irq(self) -> None:
        """After loading: IS and the INTx level from the loaded registers.  An
        MSI is not sent again: the source sent it when the cause arose."""
        level = self._irq_level_now()
        msi = self.msi
        if msi is not None and msi.enabled:
            level = 0
        self._irq_level = level
        self.irq.set(level)

    # -- ABAR -------------------------------------------------------------------------------------------
    def _read32(self, addr: int) -> int:
        if addr < AHCI_PORT_REGS_START:
            host: dict[int, int] = {HostReg.CAP: self.cap, HostReg.GHC: self.ghc, HostReg.IS: self.irq_status,
                                    HostReg.PI: self.pi, HostReg.VS: AHCI_VERSION_1_0}
            return int(host.get(addr, 0))
        n, reg = divmod(addr - AHCI_PORT_REGS_START, AHCI_PORT_REGS_SIZE)
        if n < len(self.ports):
            return self.ports[n].read(reg)
        return 0

    def mem_read(self, addr: int, size: int) -> int:
        """Reads of 1, 2 or 4 bytes, aligned or not within a register (AHCI 3)."""
        aligned = addr & ~3
        value = self._read32(aligned)
        shift = (addr - aligned) * 8
        if (addr - aligned) + size > 4:
            value |= self._read32(aligned + 4) << 32
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def mem_write(self, addr: int, value: int, size: int) -> None:
        """Writes are aligned dwords; a narrower aligned write is taken as a
        whole-register write, as QEMU does; an unaligned one is dropped."""
        if addr & 3:
            guest_error(f"ahci: misaligned write of {size} bytes at {addr:#x}")
            return
        value &= 0xFFFFFFFF
        if addr < AHCI_PORT_REGS_START:
            if addr == HostReg.GHC:
                if value & HostCtl.HR:
                    self.reset()
                else:
                    self.ghc = HostCtl((value & HostCtl.IE) | HostCtl.AE)
                    self.check_irq()
            elif addr == HostReg.IS:
                self.irq_status &= ~value
                self.check_irq()
            elif addr in (HostReg.CAP, HostReg.PI, HostReg.VS):
                pass  # read-only (HwInit)
            else:
                qemu_log_mask(LOG_UNIMP, f"ahci: write {value:#x} to unimplemented host register {addr:#x}\n")
            return
        n, reg = divmod(addr - AHCI_PORT_REGS_START, AHCI_PORT_REGS_SIZE)
        if n < len(self.ports):
            self.ports[n].write(reg, value)
        else:
            qemu_log_mask(LOG_UNIMP, f"ahci: write {value:#x} at {addr:#x}, past the implemented ports\n")

    # -- the index/data pair (BAR4 of the ICH9 function) ----------------------------------------------------
    def idp_read(self, offset: int, size: int, idp_offset: int) -> int:
        if offset == idp_offset:
            return self.idp_index
        if offset == idp_offset + 4:
            return self.mem_read(self.idp_index, size)
        return 0

    def idp_write(self, offset: int, value: int, size: int, idp_offset: int) -> None:
        if offset == idp_offset:
            self.idp_index = value & (AHCI_MEM_BAR_SIZE - 1) & ~3
        elif offset == idp_offset + 4:
            self.mem_write(self.idp_index, value, size)

    # -- the drives -----------------------------------------------------------------------------------------
    def restart(self) -> None:
        """The VM runs again: drives stopped by werror/rerror=stop repeat their request."""
        for port in self.ports:
            port.ide.restart()


# --- migration ----------------------------------------------------------------------------------------


def _port_pre_save(port: AHCIPort) -> None:
    cmd = port.current
    if cmd is not None:
        raise VMStateError(f"port {port.port_no}: the command in slot {cmd.slot} has not completed "
                           "(requests in flight must complete before saving)")


def _port_post_load(port: AHCIPort, version_id: int) -> None:
    """Refuse registers the port could not hold, then leave it idle between commands."""
    n = port.port_no
    st = bool(port.cmd & PortCmd.ST)
    ccs = (port.cmd & PORT_CMD_CCS_MASK) >> PORT_CMD_CCS_SHIFT
    if port.clb & 0x3FF or port.fb & 0xFF:
        raise VMStateError(f"port {n}: command list {port.clb:#x} or FIS area {port.fb:#x} is not aligned")
    if port.irq_mask & ~PORT_IE_WRITABLE:
        raise VMStateError(f"port {n}: PxIE {port.irq_mask:#x} has reserved bits")
    if port.ssts not in (0, SSTS_DEVICE_READY):
        raise VMStateError(f"port {n}: PxSSTS {port.ssts:#x} is not a state this HBA reports")
    if port.ssts == SSTS_DEVICE_READY and not port.ide.present:
        raise VMStateError(f"port {n}: a device is linked up in the stream, this VM has no drive there")
    if (port.ci or port.sact) and not st:
        raise VMStateError(f"port {n}: commands issued (PxCI {port.ci:#x}, PxSACT {port.sact:#x}) "
                           "with the command engine stopped")
    if port.halted and not (st and port.ci >> ccs & 1):
        raise VMStateError(f"port {n}: stopped on a fatal error in slot {ccs}, which is not issued")
    if port.ci and st and not port.halted and port.ssts == SSTS_DEVICE_READY:
        raise VMStateError(f"port {n}: commands issued (PxCI {port.ci:#x}) but none running")
    port.cmd = int(port.cmd)
    port.current = None
    port._in_check = False


VMSTATE_AHCI_PORT = VMStateDescription(
    "ahci port", version_id=1,
    fields=[
        VMStateField("clb", U64),
        VMStateField("fb", U64),
        VMStateField("irq_stat", U32),
        VMStateField("irq_mask", U32),
        VMStateField("cmd", U32),
        VMStateField("tfd", U16),
        VMStateField("sig", U32),
        VMStateField("ssts", U32),
        VMStateField("sctl", U32),
        VMStateField("serr", U32),
        VMStateField("sact", U32),
        VMStateField("ci", U32),
        VMStateField("halted", BOOL),
        VMStateField("ide", Struct(VMSTATE_IDE_DRIVE)),
        VMStateField("ide.atapi", Optional(Struct(VMSTATE_ATAPI))),
    ],
    pre_save=_port_pre_save, post_load=_port_post_load)


class _Ports:
    """The HBA's ports, their number first: a stream from an HBA with another
    number of ports is refused before any port is loaded."""

    __slots__ = ()

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        ports = list(value)
        U8.save(f, len(ports))
        for port in ports:
            vmstate_save_state(f, VMSTATE_AHCI_PORT, port)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        count = U8.load(f, None, where)
        if count != len(current):
            raise VMStateError(f"{where}: {count} ports in the stream, this HBA has {len(current)}")
        for i, port in enumerate(current):
            vmstate_load_state(f, VMSTATE_AHCI_PORT, port, VMSTATE_AHCI_PORT.version_id, f"{where}[{i}]")
        return current


def _ahci_post_load(hba: AHCIState, version_id: int) -> None:
    if hba.ghc & ~(HostCtl.IE | HostCtl.AE) or not hba.ghc & HostCtl.AE:
        raise VMStateError(f"GHC {hba.ghc:#x} is not a value of this AHCI-only HBA")
    hba.ghc = HostCtl(hba.ghc)
    hba.restore_irq()


# The HBA (QEMU's vmstate_ahci): its identity (CAP and PI, which the stream's
# HBA must share), GHC, the index/data pair's index, then every port.
VMSTATE_AHCI = VMStateDescription(
    "ahci", version_id=1,
    fields=[
        VMStateField("cap", SameAsHere(U32, lambda v: f"CAP {v:#x}")),
        VMStateField("pi", SameAsHere(U32, lambda v: f"PI {v:#x}")),
        VMStateField("ghc", U32),
        VMStateField("idp_index", U32, check=lambda v: v < AHCI_MEM_BAR_SIZE and not v & 3),
        VMStateField("ports", _Ports()),
    ],
    post_load=_ahci_post_load)
