"""The register file and ring engine of the Intel 82574L (QEMU's
hw/net/e1000e_core.c): MAC registers, EEPROM through EERD, the PHY through
MDIC, interrupt causes with masks, auto-clear and throttling, and the
receive and transmit descriptor rings.

:class:`E1000ECore` is a plain object.  Its side effects go through what it
is given: an :class:`E1000EHost` (DMA into guest memory, the interrupt
signals, sending a frame, scheduling work for later), a clock and a timer
factory.  The PCI function (pemu.hw.net.e1000e) gives it real ones; the unit
tests give it fakes.

The guest is hostile: every ring base, length and index and every descriptor
address and length is checked; a bad one is logged as a guest error and the
ring stops where real hardware would stall, never an exception.  A ring is
processed at most :data:`TX_BUDGET` descriptors per call, the rest later
from the main loop, so no register write stalls the VMM; a frame the
receive ring cannot take is left with the net layer (``receive`` returns 0),
which holds it in its bounded queue until the guest gives buffers back.

Migration (:data:`VMSTATE_E1000E_CORE`, QEMU's e1000e_vmstate): the whole
MAC register file, the statistics, the EEPROM, the PHY, the interrupt
throttling intervals (their deadlines on the virtual clock), and per transmit
queue its context descriptor and the frame it is assembling (descriptors up to
TDH without EOP yet).  A frame the net layer holds for a busy peer was handed
over already and is not part of the device.  The loaded ring registers are
checked as the guest's writes are (alignment, width) and every ring's head and
tail against its length.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from pemu.hw.net.e1000x_common import (
    CTRL_EXT_EIAME,
    CTRL_EXT_IAME,
    CTRL_EXT_PBA_CLR,
    EEMNGCTL_CFG_DONE_PORT_0,
    EEPROM_WORDS,
    EERD_ADDR_SHIFT,
    EERD_DATA_SHIFT,
    EERD_DONE,
    EERD_START,
    ICR_OTHER_CAUSES,
    IMS_VALID,
    IVAR_FIELDS,
    IVAR_OTHER_SHIFT,
    IVAR_TX_INT_EVERY_WB,
    IVAR_VALID,
    MDIC_DATA_MASK,
    MDIC_ERROR,
    MDIC_INT_EN,
    MDIC_OP_READ,
    MDIC_OP_WRITE,
    MDIC_PHY_SHIFT,
    MDIC_READY,
    MDIC_REG_SHIFT,
    MSIX_VECTORS,
    MTA_SIZE,
    PHY_ADDRESS,
    QUEUE_STRIDE,
    RA_ENTRIES,
    RAH_AV,
    RCTL_DTYP_SHIFT,
    RCTL_RDMTS_SHIFT,
    RFCTL_EXTEN,
    RX_SIZE_BUCKETS,
    STATS_64,
    TCTL_EN,
    TX_SIZE_BUCKETS,
    U16,
    U32,
    VFTA_SIZE,
    Ctrl,
    Eecd,
    Icr,
    Rctl,
    Reg,
    Stat,
    Status,
    eeprom_image,
    rx_buffer_size,
    rx_checksum_status,
    rx_filter,
    size_bucket,
)
from pemu.hw.net.net_tx_pkt import TxContext, TxError, insert_checksum, insert_vlan, offload_checksums, tso_segments
from pemu.migration.vmstate import (
    BOOL,
    I64,
    U8,
    Array,
    Buffer,
    Optional,
    Struct,
    StructList,
    UInt,
    VarBuffer,
    VMStateDescription,
    VMStateError,
    VMStateField,
)
from pemu.migration.vmstate import U16 as VM_U16
from pemu.migration.vmstate import U32 as VM_U32
from pemu.migration.vmstate import U64 as VM_U64
from pemu.util.log import LOG_UNIMP, guest_error, qemu_log_mask
from pemu.util.timer import Clock, TimerFactory, TimerLike

MMIO_SIZE = 0x20000
DESC_SIZE = 16
# Descriptors handled, and frames sent (TSO segments counted), per call
# before the rest is left to the main loop: one TSO frame cut at the smallest
# MSS is the most a call can go beyond it.
TX_BUDGET = 256
TX_FRAME_BUDGET = 256
# A transmitted frame (TSO: its headers and up to 64 KiB of payload) is at most this long.
TX_MAX_FRAME = 0x10000 + 256
# Receive descriptors one frame may use at most (a 64 KiB frame in 256-byte buffers).
RX_MAX_DESCS = 257
MIN_FRAME = 60  # frames shorter than this are padded, as the wire does
# QEMU's floor for ITR/EITR intervals (in 256 ns units).
MIN_XITR = 500
ITR_UNIT_NS = 256

# Transmit descriptor bits (82574 §7.2).
TXD_CMD_EOP = 1 << 24
TXD_CMD_IFCS = 1 << 25
TXD_CMD_IC = 1 << 26      # legacy: insert checksum
TXD_CMD_TSE = 1 << 26     # extended: TCP segmentation
TXD_CMD_RS = 1 << 27
TXD_CMD_DEXT = 1 << 29
TXD_CMD_VLE = 1 << 30
TXD_DTYP_SHIFT = 20
TXD_DTYP_CONTEXT = 0
TXD_DTYP_DATA = 1
TXD_STAT_DD = 0x01
TUCMD_TCP = 1 << 24
TUCMD_IP = 1 << 25
TUCMD_TSE = 1 << 26
POPTS_IXSM = 0x01
POPTS_TXSM = 0x02

# Receive descriptor status bits.
RXD_STAT_DD = 0x01
RXD_STAT_EOP = 0x02
RXD_STAT_VP = 0x08

ETH_P_VLAN_OFFSET = 12


class E1000EHost(Protocol):
    """What the core needs from the PCI function it lives in."""

    def dma_read(self, addr: int, length: int) -> bytes | None:
        """``length`` bytes of guest memory, or None when they are not all there."""

    def dma_write(self, addr: int, data: bytes | bytearray) -> bool:
        """Write guest memory; False when it is not all there."""

    def set_irq(self, level: int) -> None:
        """Drive INTx."""

    def msix_enabled(self) -> bool: ...

    def msi_enabled(self) -> bool: ...

    def msix_notify(self, vector: int) -> None: ...

    def msix_clear(self, vector: int) -> None:
        """Forget a pending (masked) MSI-X vector."""

    def msi_notify(self) -> None: ...

    def send(self, frame: bytes) -> bool:
        """Put a frame on the wire; False when the peer holds it: send nothing
        more until the core's :meth:`E1000ECore.tx_resume` is called."""

    def schedule(self, cb: Callable[[], None]) -> None:
        """Run ``cb`` from the main loop, after it has looked at its other
        work (file descriptors, timers) at least once."""

    def rx_ready(self) -> None:
        """The core can take frames again: deliver what the net layer holds."""


@dataclass
class _Throttle:
    """One interrupt throttling timer (ITR, or EITR n)."""

    reg: int
    timer: TimerLike
    running: bool = False
    pending: bool = False
    deadline: int = -1  # when the running interval ends (the timer's expiry), for migration


@dataclass
class _TxState:
    """A transmit queue's frame in the making."""

    ctx: TxContext = field(default_factory=TxContext)
    frame: bytearray = field(default_factory=bytearray)
    first: bool = True         # the next data descriptor starts a frame
    bad: bool = False          # the frame overflowed or was malformed: drop it at EOP
    tse: bool = False
    vlan: int | None = None
    popts: int = 0
    legacy_css: int = 0
    legacy_cso: int = 0
    legacy_ic: bool = False
    held: bool = False         # the peer holds a frame: wait for tx_resume


@dataclass(frozen=True)
class Ring:
    """A descriptor ring as the guest programmed it (checked)."""

    base: int
    count: int
    head: int
    tail: int

    def desc_addr(self, index: int) -> int:
        return self.base + index * DESC_SIZE

    def free(self) -> int:
        """Descriptors the device may fill (receive) or has to send (transmit)."""
        return (self.tail - self.head) % self.count


# --- the PHY ------------------------------------------------------------------------------

PHY_CTRL = 0
PHY_STATUS = 1
PHY_ID1 = 2
PHY_ID2 = 3
PHY_AUTONEG_ADV = 4
PHY_LP_ABILITY = 5
PHY_AUTONEG_EXP = 6
PHY_1000T_CTRL = 9
PHY_1000T_STATUS = 10
PHY_EXT_STATUS = 15
PHY_COPPER_CTRL1 = 16
PHY_COPPER_STAT1 = 17
PHY_PAGE_SELECT = 31
PHY_PAGES = 4

MII_CR_RESET = 0x8000
MII_CR_RESTART_AUTONEG = 0x0200
MII_SR_LINK_STATUS = 0x0004
MII_SR_AUTONEG_COMPLETE = 0x0020
# Capabilities the 82574's PHY (a Marvell-compatible BM PHY) reports.
PHY_STATUS_CAPS = 0x7949
PHY_ID1_82574 = 0x0141
PHY_ID2_82574 = 0x0CB1    # BME1000 revision 2, what Linux's e1000e insists on
# Copper status 1 with link: 1000 Mb/s, full duplex, speed and duplex resolved, link.
PHY_COPPER_STAT1_LINK = 0xAC00

PHY_RESET_VALUES = {
    PHY_CTRL: 0x1140,            # autonegotiation on, full duplex, 1000 Mb/s
    PHY_ID1: PHY_ID1_82574,
    PHY_ID2: PHY_ID2_82574,
    PHY_AUTONEG_ADV: 0x0DE1,
    PHY_AUTONEG_EXP: 0x0001,
    PHY_1000T_CTRL: 0x0E00,
    PHY_EXT_STATUS: 0x3000,
    PHY_COPPER_CTRL1: 0x0068,
}
PHY_READ_ONLY = frozenset((PHY_STATUS, PHY_ID1, PHY_ID2, PHY_LP_ABILITY, PHY_AUTONEG_EXP, PHY_1000T_STATUS,
                           PHY_EXT_STATUS, PHY_COPPER_STAT1))


class Phy:
    """The PHY's registers (four pages of 32), as MDIC reaches them."""

    def __init__(self) -> None:
        self.regs = [[0] * 32 for _ in range(PHY_PAGES)]
        self.link_up = True
        self.reset()

    def reset(self) -> None:
        for page in self.regs:
            page[:] = [0] * 32
        for reg, value in PHY_RESET_VALUES.items():
            self.regs[0][reg] = value
        self.update_link()

    def update_link(self) -> None:
        """Autonegotiation completes at once: the status follows the link."""
        page0 = self.regs[0]
        if self.link_up:
            page0[PHY_STATUS] = PHY_STATUS_CAPS | MII_SR_LINK_STATUS | MII_SR_AUTONEG_COMPLETE
            page0[PHY_LP_ABILITY] = 0x45E1
            page0[PHY_1000T_STATUS] = 0x3C00
            page0[PHY_COPPER_STAT1] = PHY_COPPER_STAT1_LINK
        else:
            page0[PHY_STATUS] = PHY_STATUS_CAPS
            page0[PHY_LP_ABILITY] = 0
            page0[PHY_1000T_STATUS] = 0
            page0[PHY_COPPER_STAT1] = 0

    @property
    def page(self) -> int:
        return self.regs[0][PHY_PAGE_SELECT] % PHY_PAGES

    def read(self, reg: int) -> int:
        page = 0 if reg == PHY_PAGE_SELECT else self.page
        return self.regs[page][reg]

    def write(self, reg: int, value: int) -> None:
        value &= U16
        if reg == PHY_PAGE_SELECT:
            self.regs[0][reg] = value
            return
        page = self.page
        if page == 0 and reg in PHY_READ_ONLY:
            return
        if page == 0 and reg == PHY_CTRL:
            if value & MII_CR_RESET:
                self.reset()
                return
            value &= ~MII_CR_RESTART_AUTONEG
            self.regs[0][PHY_CTRL] = value
            self.update_link()
            return
        self.regs[page][reg] = value


# --- the core -----------------------------------------------------------------------------

RegRead = Callable[[int], int]
RegWrite = Callable[[int, int], None]


class E1000ECore:
    """The 82574L's MAC: see the module's description."""

    def __init__(self, host: E1000EHost, macaddr: bytes, clock: Clock, timer_factory: TimerFactory,
                 device_id: int = 0x10D3) -> None:
        self.host = host
        self.macaddr = macaddr
        self.clock = clock
        self.device_id = device_id
        self.regs = array("I", bytes(MMIO_SIZE))
        self.stats: dict[int, int] = {}
        self.eeprom = eeprom_image(macaddr, device_id)
        self.phy = Phy()
        self.link_up = True
        self.msi_causes_pending = 0
        self.eitr_guest = [0] * MSIX_VECTORS
        self.itr = _Throttle(Reg.ITR, timer_factory(self._itr_fired))
        self.eitr = [_Throttle(Reg.EITR0 + 4 * n, timer_factory(partial(self._eitr_fired, n)))
                     for n in range(MSIX_VECTORS)]
        self.tx = [_TxState(), _TxState()]
        self.tx_scheduled = False
        self.tx_frames_sent = 0  # by the current start_xmit call
        self.irq_level = 0
        # Called when the guest changes what the receive filter takes (QEMU's
        # NIC_RX_FILTER_CHANGED event hangs here).
        self.on_rx_filter_changed: Callable[[], None] | None = None
        self._readers: dict[int, RegRead] = {
            Reg.ICR: self._read_icr, Reg.EECD: self._read_eecd, Reg.ITR: lambda _r: self.regs[Reg.ITR >> 2],
        }
        self._writers: dict[int, RegWrite] = {
            Reg.CTRL: self._write_ctrl, Reg.STATUS: self._write_readonly, Reg.EECD: self._write_eecd,
            Reg.EERD: self._write_eerd, Reg.MDIC: self._write_mdic, Reg.ICR: self._write_icr,
            Reg.ICS: self._write_ics, Reg.IMS: self._write_ims, Reg.IMC: self._write_imc,
            Reg.ITR: self._write_itr, Reg.RCTL: self._write_rctl, Reg.TCTL: self._write_tctl,
            Reg.EEMNGCTL: self._write_readonly,
        }
        for n in range(MSIX_VECTORS):
            self._readers[Reg.EITR0 + 4 * n] = partial(self._read_eitr, n)
            self._writers[Reg.EITR0 + 4 * n] = partial(self._write_eitr, n)
        for q in range(2):
            o = q * QUEUE_STRIDE
            self._writers[Reg.RDBAL0 + o] = self._write_masked(~0xF & U32)
            self._writers[Reg.RDLEN0 + o] = self._write_masked(0xFFF80)
            self._writers[Reg.RDH0 + o] = self._write_masked(U16)
            self._writers[Reg.RDT0 + o] = self._write_rdt
            self._writers[Reg.TDBAL0 + o] = self._write_masked(~0xF & U32)
            self._writers[Reg.TDLEN0 + o] = self._write_masked(0xFFF80)
            self._writers[Reg.TDH0 + o] = self._write_masked(U16)
            self._writers[Reg.TDT0 + o] = partial(self._write_tdt, q)
        for n in range(MTA_SIZE):
            self._writers[Reg.MTA + 4 * n] = self._write_filter
        for n in range(2 * RA_ENTRIES):
            self._writers[Reg.RA + 4 * n] = self._write_filter
        for n in range(VFTA_SIZE):
            self._writers[Reg.VFTA + 4 * n] = self._write_filter
        self.reset()

    # -- the state as migration saves it ---------------------------------------------------
    @property
    def mac_registers(self) -> bytes:
        """The register file as big-endian 32-bit words (the stream's byte order)."""
        regs = array("I", self.regs)
        if sys.byteorder == "little":
            regs.byteswap()
        return regs.tobytes()

    @mac_registers.setter
    def mac_registers(self, data: bytes) -> None:
        regs = array("I")
        regs.frombytes(data)
        if sys.byteorder == "little":
            regs.byteswap()
        self.regs[:] = regs

    @property
    def stat_counters(self) -> list[int]:
        """The statistics counters in :class:`Stat` order (0 for the high halves)."""
        return [min(self.stats.get(stat, 0), (1 << 64) - 1) for stat in Stat]

    @stat_counters.setter
    def stat_counters(self, values: list[int]) -> None:
        self.stats = {int(stat): value for stat, value in zip(Stat, values, strict=True) if value}

    def post_load(self) -> None:
        """Check what the stream says against what the registers can hold, then
        rebuild what is derived: the throttling timers, the INTx level, and a
        transmit pass for descriptors the source had not reached yet."""
        for q in range(2):
            o = q * QUEUE_STRIDE
            for bal, name in ((Reg.RDBAL0 + o, f"RX ring {q}"), (Reg.TDBAL0 + o, f"TX ring {q}")):
                length = self.reg(bal + 8)
                if self.reg(bal) & 0xF or length & ~0xFFF80:
                    raise VMStateError(f"{name}: base {self.reg(bal):#x} or length {length:#x} is not a value "
                                       "the registers take")
                # A head or tail past the ring's end is a state the guest can write (ring() refuses
                # such a ring when it is used); only a value wider than the register is corrupt.
                for what, value in (("head", self.reg(bal + 0x10)), ("tail", self.reg(bal + 0x18))):
                    if value > U16:
                        raise VMStateError(f"{name}: {what} {value:#x} wider than its 16-bit register")
        for offset in (Reg.ITR, *(Reg.EITR0 + 4 * n for n in range(MSIX_VECTORS))):
            if self.reg(offset) > U16:
                raise VMStateError(f"interval register {offset:#x} holds {self.reg(offset):#x}, wider than 16 bits")
        latest = self.clock() + max(U16, MIN_XITR) * ITR_UNIT_NS  # no interval is longer
        for t in (self.itr, *self.eitr):
            if t.pending and not t.running or t.running and not 0 <= t.deadline <= latest:
                raise VMStateError(f"throttling timer {t.reg:#x}: pending {t.pending}, running {t.running}, "
                                   f"deadline {t.deadline}")
            if t.running:
                t.timer.mod_ns(t.deadline)
            else:
                t.timer.delete()
        for q, tx in enumerate(self.tx):
            if tx.first and (tx.frame or tx.bad):
                raise VMStateError(f"TX queue {q}: a partial frame before its first descriptor")
            tx.held = False
        self.phy.update_link()
        self.host.set_irq(self.irq_level)
        self.tx_scheduled = False
        if self.reg(Reg.TCTL) & TCTL_EN and any(
                self.reg(Reg.TDH0 + q * QUEUE_STRIDE) != self.reg(Reg.TDT0 + q * QUEUE_STRIDE) for q in range(2)):
            self._schedule_tx()

    # -- registers as plain storage -------------------------------------------------------
    def reg(self, offset: int) -> int:
        return self.regs[offset >> 2]

    def set_reg(self, offset: int, value: int) -> None:
        self.regs[offset >> 2] = value & U32

    # -- reset ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Hardware reset: what power-on and CTRL.RST give (the PHY and link stay)."""
        for t in (self.itr, *self.eitr):
            t.timer.delete()
            t.running = t.pending = False
            t.deadline = -1
        self.regs[:] = array("I", bytes(MMIO_SIZE))
        self.stats.clear()
        self.msi_causes_pending = 0
        self.eitr_guest = [0] * MSIX_VECTORS
        self.tx = [_TxState(), _TxState()]
        self.set_reg(Reg.CTRL, Ctrl.FD | Ctrl.SLU | Ctrl.ASDE | (2 << 8))  # speed 1000
        self.set_reg(Reg.EECD, Eecd.PRES | Eecd.AUTO_RD)
        self.set_reg(Reg.EEMNGCTL, EEMNGCTL_CFG_DONE_PORT_0)
        self.set_reg(Reg.PBA, 0x00140014)
        self.set_reg(Reg.VET, 0x8100)
        self.set_reg(Reg.LEDCTL, 0x07068302)
        self.set_reg(Reg.RXCSUM, 0x300)
        self.set_reg(Reg.RA, int.from_bytes(self.macaddr[:4], "little"))
        self.set_reg(Reg.RA + 4, int.from_bytes(self.macaddr[4:6], "little") | RAH_AV)
        self._update_status()
        if self.irq_level:
            self._set_irq(0)

    def _set_irq(self, level: int) -> None:
        self.irq_level = level
        self.host.set_irq(level)

    def _update_status(self) -> None:
        status = Status.FD | Status.SPEED_1000 | Status.LAN_INIT_DONE | Status.GIO_MASTER_ENABLE
        if self.link_up:
            status |= Status.LU
        self.set_reg(Reg.STATUS, status)

    # -- link -----------------------------------------------------------------------------
    def set_link(self, up: bool) -> None:
        """The cable (set_link): STATUS.LU and the PHY follow, and the guest gets LSC."""
        if up == self.link_up:
            return
        self.link_up = up
        self.phy.link_up = up
        self.phy.update_link()
        self._update_status()
        self.set_interrupt_cause(Icr.LSC)
        if up:
            self.host.rx_ready()

    # -- MMIO -----------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        if offset & 3 or size != 4 or not 0 <= offset < MMIO_SIZE:
            guest_error(f"e1000e: {size}-byte read at {offset:#x} (registers are 32-bit) returns 0")
            return 0
        if Reg.STATS_FIRST <= offset <= Reg.STATS_LAST:
            return self._read_stat(offset)
        reader = self._readers.get(offset)
        if reader is not None:
            return reader(offset) & U32
        return self.regs[offset >> 2]

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        if offset & 3 or size != 4 or not 0 <= offset < MMIO_SIZE:
            guest_error(f"e1000e: {size}-byte write of {value:#x} at {offset:#x} ignored (registers are 32-bit)")
            return
        value &= U32
        if Reg.STATS_FIRST <= offset <= Reg.STATS_LAST:
            return  # counters are read-only
        writer = self._writers.get(offset)
        if writer is not None:
            writer(offset, value)
        else:
            self.regs[offset >> 2] = value

    @staticmethod
    def _write_readonly(_offset: int, _value: int) -> None:
        pass

    def _write_masked(self, mask: int) -> RegWrite:
        def write(offset: int, value: int) -> None:
            self.regs[offset >> 2] = value & mask
        return write

    # -- statistics -----------------------------------------------------------------------------
    def count(self, stat: Stat, n: int = 1) -> None:
        self.stats[stat] = self.stats.get(stat, 0) + n

    def _read_stat(self, offset: int) -> int:
        for low, high in STATS_64:
            if offset == low:
                return self.stats.get(low, 0) & U32
            if offset == high:
                return (self.stats.pop(low, 0) >> 32) & U32
        return min(self.stats.pop(offset, 0), U32)  # 32-bit counters saturate

    # -- control, EEPROM, PHY ------------------------------------------------------------------
    def _write_ctrl(self, _offset: int, value: int) -> None:
        if value & Ctrl.RST:
            self.reset()
            return
        if value & Ctrl.PHY_RST:
            self.phy.reset()
        self.set_reg(Reg.CTRL, value & ~(Ctrl.RST | Ctrl.PHY_RST))

    def _read_eecd(self, _offset: int) -> int:
        eecd = self.reg(Reg.EECD)
        if eecd & Eecd.REQ:
            eecd |= Eecd.GNT
        return eecd

    def _write_eecd(self, _offset: int, value: int) -> None:
        ro = Eecd.PRES | Eecd.AUTO_RD
        self.set_reg(Reg.EECD, (self.reg(Reg.EECD) & ro) | (value & ~(ro | Eecd.GNT)))

    def _write_eerd(self, _offset: int, value: int) -> None:
        if not value & EERD_START:
            self.set_reg(Reg.EERD, value)
            return
        addr = (value >> EERD_ADDR_SHIFT) & 0x3FFF
        if addr >= EEPROM_WORDS:
            guest_error(f"e1000e: EERD read of EEPROM word {addr:#x} beyond its {EEPROM_WORDS} words")
            data = 0
        else:
            data = self.eeprom[addr]
        self.set_reg(Reg.EERD, (data << EERD_DATA_SHIFT) | (addr << EERD_ADDR_SHIFT) | EERD_DONE)

    def _write_mdic(self, _offset: int, value: int) -> None:
        phy_addr = (value >> MDIC_PHY_SHIFT) & 0x1F
        reg = (value >> MDIC_REG_SHIFT) & 0x1F
        op = value & (MDIC_OP_READ | MDIC_OP_WRITE)
        data = value & MDIC_DATA_MASK
        result = value & ~(MDIC_READY | MDIC_ERROR)
        if phy_addr != PHY_ADDRESS or op not in (MDIC_OP_READ, MDIC_OP_WRITE):
            result |= MDIC_ERROR
        elif op == MDIC_OP_READ:
            result = (result & ~MDIC_DATA_MASK) | self.phy.read(reg)
        else:
            self.phy.write(reg, data)
        self.set_reg(Reg.MDIC, result | MDIC_READY)
        if value & MDIC_INT_EN:
            self.set_interrupt_cause(Icr.MDAC)

    # -- interrupts ----------------------------------------------------------------------------
    def set_interrupt_cause(self, causes: int) -> None:
        self.set_reg(Reg.ICR, self.reg(Reg.ICR) | causes)
        self.update_interrupt_state()

    def update_interrupt_state(self) -> None:
        """Reflect ICR & IMS on the interrupt signal the guest chose."""
        icr = self.reg(Reg.ICR)
        msix = self.host.msix_enabled()
        if msix and icr & ICR_OTHER_CAUSES:
            icr |= Icr.OTHER
        if icr & ~Icr.ASSERTED & U32:
            icr |= Icr.ASSERTED
        else:
            icr &= ~Icr.ASSERTED
        self.set_reg(Reg.ICR, icr)
        self.set_reg(Reg.ICS, icr)
        pending = bool(self.reg(Reg.IMS) & icr)
        if not pending:
            self.msi_causes_pending = 0
        if msix or self.host.msi_enabled():
            if pending:
                self._send_msi(msix)
        elif pending:
            if not self._should_postpone(self.itr):
                self._set_irq(1)
        else:
            self._set_irq(0)

    def _send_msi(self, msix: bool) -> None:
        causes = self.reg(Reg.ICR) & self.reg(Reg.IMS) & ~Icr.ASSERTED & U32
        self.msi_causes_pending &= causes
        new = causes & ~self.msi_causes_pending
        if not new:
            return
        self.msi_causes_pending |= new
        if msix:
            self._msix_notify(new)
        elif not self._should_postpone(self.itr):
            self.host.msi_notify()

    def _msix_notify(self, causes: int) -> None:
        ivar = self.reg(Reg.IVAR)
        for cause, shift in IVAR_FIELDS:
            if causes & cause:
                self._msix_notify_one(cause, (ivar >> shift) & 0xF)
        other = causes & ~(Icr.RXQ0 | Icr.RXQ1 | Icr.TXQ0 | Icr.TXQ1) & U32
        if other:
            self._msix_notify_one(other, (ivar >> IVAR_OTHER_SHIFT) & 0xF)

    def _msix_notify_one(self, cause: int, ivar_field: int) -> None:
        if ivar_field & IVAR_VALID:
            vector = ivar_field & 7
            if vector >= MSIX_VECTORS:
                guest_error(f"e1000e: IVAR maps cause {cause:#x} to MSI-X vector {vector}, which does not exist")
            elif not self._should_postpone(self.eitr[vector]):
                self.host.msix_notify(vector)
        else:
            guest_error(f"e1000e: MSI-X cause {cause:#x} has no valid IVAR entry")
        ctrl_ext = self.reg(Reg.CTRL_EXT)
        if ctrl_ext & CTRL_EXT_EIAME:
            self.set_reg(Reg.IMS, self.reg(Reg.IMS) & ~(self.reg(Reg.IAM) & cause))
        auto_clear = self.reg(Reg.EIAC) & cause
        self.set_reg(Reg.ICR, self.reg(Reg.ICR) & ~auto_clear)
        self.msi_causes_pending &= ~auto_clear
        if not ctrl_ext & CTRL_EXT_IAME:
            self.set_reg(Reg.IMS, self.reg(Reg.IMS) & ~auto_clear)

    def _read_icr(self, _offset: int) -> int:
        """ICR clears when read, in every interrupt mode.  (QEMU 7.2 keeps it
        under MSI-X while IMS is non-zero; then Linux's "other" handler, which
        reads ICR and re-raises the queue causes that read cleared, never sees
        a second link change: a cable pulled after the first goes unnoticed.)"""
        value = self.reg(Reg.ICR)
        if value & Icr.ASSERTED and self.reg(Reg.CTRL_EXT) & CTRL_EXT_IAME:
            self.set_reg(Reg.IMS, self.reg(Reg.IMS) & ~self.reg(Reg.IAM))
        self.set_reg(Reg.ICR, 0)
        self.update_interrupt_state()
        return value

    def _write_icr(self, _offset: int, value: int) -> None:
        if self.reg(Reg.ICR) & Icr.ASSERTED and self.reg(Reg.CTRL_EXT) & CTRL_EXT_IAME:
            self.set_reg(Reg.IMS, self.reg(Reg.IMS) & ~self.reg(Reg.IAM))
        self.set_reg(Reg.ICR, self.reg(Reg.ICR) & ~value)
        self.update_interrupt_state()

    def _write_ics(self, _offset: int, value: int) -> None:
        self.set_interrupt_cause(value & IMS_VALID)

    def _write_ims(self, _offset: int, value: int) -> None:
        value &= IMS_VALID
        self.set_reg(Reg.IMS, self.reg(Reg.IMS) | value)
        if self.host.msix_enabled():
            # Re-enabled queue causes: a vector left pending while masked is stale.
            ivar = self.reg(Reg.IVAR)
            for cause, shift in IVAR_FIELDS:
                entry = (ivar >> shift) & 0xF
                if value & cause and entry & IVAR_VALID and entry & 7 < MSIX_VECTORS \
                        and self.reg(Reg.CTRL_EXT) & CTRL_EXT_PBA_CLR:
                    self.host.msix_clear(entry & 7)
        self.update_interrupt_state()

    def _write_imc(self, _offset: int, value: int) -> None:
        self.set_reg(Reg.IMS, self.reg(Reg.IMS) & ~value)
        self.update_interrupt_state()

    # -- throttling ----------------------------------------------------------------------------
    def _interval_ns(self, t: _Throttle) -> int:
        value = self.reg(t.reg) & U16
        if t.reg == Reg.ITR and value == 0:
            return 0  # ITR 0: no throttling
        return max(value, MIN_XITR) * ITR_UNIT_NS

    def _should_postpone(self, t: _Throttle) -> bool:
        """True when the throttle holds the interrupt back (it fires when the
        interval ends); otherwise the interval starts now."""
        if t.running:
            t.pending = True
            return True
        interval = self._interval_ns(t)
        if interval:
            t.pending = False
            self._start_interval(t, interval)
        return False

    def _start_interval(self, t: _Throttle, interval: int) -> None:
        t.running = True
        t.deadline = self.clock() + interval
        t.timer.mod_ns(t.deadline)

    def _itr_fired(self) -> None:
        self.itr.running = False
        if not self.itr.pending:
            return
        self.itr.pending = False
        if not self.reg(Reg.IMS) & self.reg(Reg.ICR):
            return
        if self.host.msi_enabled() and not self.host.msix_enabled():
            self.host.msi_notify()
        elif not self.host.msix_enabled():
            self._set_irq(1)
        # a throttled interrupt starts a new interval
        interval = self._interval_ns(self.itr)
        if interval:
            self._start_interval(self.itr, interval)

    def _eitr_fired(self, vector: int) -> None:
        t = self.eitr[vector]
        t.running = False
        if t.pending:
            t.pending = False
            if self.host.msix_enabled():
                self.host.msix_notify(vector)
            self._start_interval(t, self._interval_ns(t))

    def _write_itr(self, _offset: int, value: int) -> None:
        self.set_reg(Reg.ITR, value & U16)

    def _read_eitr(self, vector: int, _offset: int) -> int:
        return self.eitr_guest[vector]

    def _write_eitr(self, vector: int, _offset: int, value: int) -> None:
        self.eitr_guest[vector] = value & U16
        self.set_reg(Reg.EITR0 + 4 * vector, value & U16)

    # -- rings ---------------------------------------------------------------------------------
    def ring(self, bal: int, name: str) -> Ring | None:
        """The ring whose registers start at ``bal`` (BAL, BAH, LEN, -, H, -, T),
        or None (logged) when the guest's values are not a usable ring."""
        length = self.reg(bal + 8)
        count = length // DESC_SIZE
        if count == 0:
            return None
        base = self.reg(bal) | (self.reg(bal + 4) << 32)
        head, tail = self.reg(bal + 0x10), self.reg(bal + 0x18)
        if head >= count or tail >= count:
            guest_error(f"e1000e: {name} head {head} or tail {tail} beyond its {count} descriptors")
            return None
        return Ring(base, count, head, tail)

    # -- transmit --------------------------------------------------------------------------------
    def _write_tctl(self, _offset: int, value: int) -> None:
        self.set_reg(Reg.TCTL, value)
        if value & TCTL_EN:
            for queue in range(2):
                self.start_xmit(queue)

    def _write_tdt(self, queue: int, offset: int, value: int) -> None:
        self.set_reg(offset, value & U16)
        if self.reg(Reg.TCTL) & TCTL_EN:
            self.start_xmit(queue)

    def tx_resume(self) -> None:
        """The peer took the frame it held: go on transmitting."""
        for tx in self.tx:
            tx.held = False
        self._schedule_tx()

    def _schedule_tx(self) -> None:
        if not self.tx_scheduled:
            self.tx_scheduled = True
            self.host.schedule(self._tx_bh)

    def _tx_bh(self) -> None:
        self.tx_scheduled = False
        if self.reg(Reg.TCTL) & TCTL_EN:
            for q in range(2):
                self.start_xmit(q)

    def start_xmit(self, queue: int = 0) -> None:
        """Process queue ``queue``'s descriptors from TDH to TDT, at most
        :data:`TX_BUDGET` of them now; the rest from the main loop."""
        tx = self.tx[queue]
        if tx.held:
            return
        bal = Reg.TDBAL0 + queue * QUEUE_STRIDE
        ring = self.ring(bal, f"TX ring {queue}")
        if ring is None:
            return
        head = ring.head
        causes = 0
        budget = TX_BUDGET
        self.tx_frames_sent = 0
        while head != ring.tail and budget and not tx.held:
            addr = ring.desc_addr(head)
            desc = self.host.dma_read(addr, DESC_SIZE)
            if desc is None:
                guest_error(f"e1000e: TX descriptor {head} at {addr:#x} is outside guest memory")
                break
            causes |= self._process_tx_desc(queue, addr, desc)
            head = (head + 1) % ring.count
            self.set_reg(bal + 0x10, head)
            budget -= 1
            if self.tx_frames_sent >= TX_FRAME_BUDGET:
                budget = 0
        if head != ring.tail and budget == 0 and not tx.held:
            self._schedule_tx()
        if head == ring.tail:
            causes |= Icr.TXQE
        if causes:
            self.set_interrupt_cause(causes)

    def _process_tx_desc(self, queue: int, addr: int, desc: bytes) -> int:
        tx = self.tx[queue]
        buf = int.from_bytes(desc[0:8], "little")
        lower = int.from_bytes(desc[8:12], "little")
        upper = int.from_bytes(desc[12:16], "little")
        dtyp = (lower >> TXD_DTYP_SHIFT) & 0xF
        if lower & TXD_CMD_DEXT and dtyp == TXD_DTYP_CONTEXT:
            tx.ctx = TxContext(
                ipcss=buf & 0xFF, ipcso=(buf >> 8) & 0xFF, ipcse=(buf >> 16) & U16,
                tucss=(buf >> 32) & 0xFF, tucso=(buf >> 40) & 0xFF, tucse=(buf >> 48) & U16,
                paylen=lower & 0xFFFFF, hdr_len=(upper >> 8) & 0xFF, mss=(upper >> 16) & U16,
                is_ipv4=bool(lower & TUCMD_IP), is_tcp=bool(lower & TUCMD_TCP), tse=bool(lower & TUCMD_TSE))
        elif lower & TXD_CMD_DEXT and dtyp == TXD_DTYP_DATA:
            if tx.first:
                tx.tse = bool(lower & TXD_CMD_TSE)
                tx.popts = (upper >> 8) & 0xFF
                tx.vlan = upper >> 16 if lower & TXD_CMD_VLE else None
                tx.legacy_ic = False
            self._tx_append(tx, buf, lower & 0xFFFFF)
            if lower & TXD_CMD_EOP:
                self._tx_finish(queue)
        elif lower & TXD_CMD_DEXT:
            guest_error(f"e1000e: TX descriptor at {addr:#x} has the reserved type {dtyp}")
        else:  # legacy
            if tx.first:
                tx.tse = False
                tx.popts = 0
                tx.vlan = upper >> 16 if lower & TXD_CMD_VLE else None
            if lower & TXD_CMD_IC:
                tx.legacy_ic = True
                tx.legacy_cso = (lower >> 16) & 0xFF
                tx.legacy_css = (upper >> 8) & 0xFF
            self._tx_append(tx, buf, lower & U16)
            if lower & TXD_CMD_EOP:
                self._tx_finish(queue)
        if lower & TXD_CMD_RS or self.reg(Reg.IVAR) & IVAR_TX_INT_EVERY_WB:
            if not self.host.dma_write(addr + 12, bytes([(upper & 0xFF) | TXD_STAT_DD])):
                guest_error(f"e1000e: TX descriptor write-back at {addr:#x} is outside guest memory")
            return Icr.TXDW | Icr.TXQ0 << queue
        return 0

    def _tx_append(self, tx: _TxState, buf: int, length: int) -> None:
        tx.first = False
        if tx.bad or length == 0:
            return
        if len(tx.frame) + length > TX_MAX_FRAME:
            guest_error(f"e1000e: TX frame grows beyond {TX_MAX_FRAME} bytes: dropped")
            tx.bad = True
            tx.frame = bytearray()
            return
        data = self.host.dma_read(buf, length)
        if data is None:
            guest_error(f"e1000e: TX buffer {buf:#x}+{length} is outside guest memory: frame dropped")
            tx.bad = True
            return
        tx.frame += data

    def _tx_finish(self, queue: int) -> None:
        tx = self.tx[queue]
        frame, bad = tx.frame, tx.bad
        tx.frame, tx.bad, tx.first = bytearray(), False, True
        if bad or not frame:
            return
        try:
            if tx.tse:
                frames = tso_segments(frame, tx.ctx)
                self.count(Stat.TSCTC)
            else:
                if tx.legacy_ic:
                    insert_checksum(frame, tx.legacy_css, tx.legacy_cso, 0)
                elif tx.popts & (POPTS_IXSM | POPTS_TXSM):
                    offload_checksums(frame, tx.ctx, ixsm=bool(tx.popts & POPTS_IXSM),
                                      txsm=bool(tx.popts & POPTS_TXSM))
                frames = [bytes(frame)]
            if tx.vlan is not None and self.reg(Reg.CTRL) & Ctrl.VME:
                frames = [insert_vlan(out, self.reg(Reg.VET) & U16, tx.vlan) for out in frames]
        except TxError as e:
            guest_error(f"e1000e: TX frame dropped: {e}")
            return
        for out in frames:
            self._count_tx(out)
            self.tx_frames_sent += 1
            if not self.host.send(out):
                tx.held = True

    def _count_tx(self, frame: bytes) -> None:
        size = len(frame) + 4  # with the FCS the wire adds
        self.count(Stat.GPTC)
        self.count(Stat.TPT)
        self.count(Stat.GOTCL, size)
        self.count(Stat.TOTL, size)
        if frame[0] & 1:
            self.count(Stat.BPTC if frame[:6] == b"\xff" * 6 else Stat.MPTC)
        bucket = size_bucket(TX_SIZE_BUCKETS, size)
        if bucket is not None:
            self.count(bucket)

    # -- receive -----------------------------------------------------------------------------------
    def _write_rctl(self, offset: int, value: int) -> None:
        was = self.reg(Reg.RCTL)
        self.set_reg(Reg.RCTL, value)
        self._write_filter(offset, value, store=False)
        if value & Rctl.EN and not was & Rctl.EN:
            self.host.rx_ready()

    def _write_rdt(self, offset: int, value: int) -> None:
        self.set_reg(offset, value & U16)
        if self.can_receive():
            self.host.rx_ready()

    def _write_filter(self, offset: int, value: int, store: bool = True) -> None:
        if store:
            self.set_reg(offset, value)
        if self.on_rx_filter_changed is not None:
            self.on_rx_filter_changed()

    def rx_enabled(self) -> bool:
        return self.link_up and bool(self.reg(Reg.RCTL) & Rctl.EN)

    def can_receive(self) -> bool:
        if not self.rx_enabled():
            return False
        ring = self.ring(Reg.RDBAL0, "RX ring 0")
        return ring is not None and ring.free() > 0

    def _accepts(self, frame: bytes) -> bool:
        mta = self.regs[Reg.MTA >> 2:(Reg.MTA >> 2) + MTA_SIZE]
        ra = self.regs[Reg.RA >> 2:(Reg.RA >> 2) + 2 * RA_ENTRIES]
        return rx_filter(frame[:6], self.reg(Reg.RCTL), mta, ra)

    def receive(self, frame: bytes) -> int:
        """Take one frame from the wire: its length when consumed or dropped,
        0 when the ring has no room now (the net layer holds it)."""
        if not self.rx_enabled() or len(frame) < 14:
            return len(frame)
        size = len(frame)
        if not self._accepts(frame):
            return size
        vlan_tci = 0
        status = 0
        vet = self.reg(Reg.VET) & U16
        is_tagged = int.from_bytes(frame[12:14], "big") == vet and len(frame) >= 18
        if is_tagged and self.reg(Reg.RCTL) & Rctl.VFE:
            vid = int.from_bytes(frame[14:16], "big") & 0xFFF
            if not self.regs[(Reg.VFTA >> 2) + (vid >> 5)] >> (vid & 31) & 1:
                return size
        data = bytes(frame)
        if is_tagged and self.reg(Reg.CTRL) & Ctrl.VME:
            vlan_tci = int.from_bytes(frame[14:16], "big")
            status |= RXD_STAT_VP
            data = data[:12] + data[16:]
        status |= rx_checksum_status(data, self.reg(Reg.RXCSUM))
        if len(data) < MIN_FRAME:
            data += bytes(MIN_FRAME - len(data))
        if not self.reg(Reg.RCTL) & Rctl.SECRC:
            data += zlib.crc32(data).to_bytes(4, "little")
        ring = self.ring(Reg.RDBAL0, "RX ring 0")
        if ring is None:
            return 0
        bufsize = rx_buffer_size(self.reg(Reg.RCTL))
        if bufsize == 0:
            guest_error("e1000e: RCTL selects a reserved receive buffer size: frame dropped")
            return size
        needed = -(-len(data) // bufsize)
        if needed > RX_MAX_DESCS:
            self.count(Stat.ROC)
            return size
        if ring.free() < needed:
            self.count(Stat.RNBC)
            return 0
        dtyp = (self.reg(Reg.RCTL) >> RCTL_DTYP_SHIFT) & 3
        if dtyp != 0:
            qemu_log_mask(LOG_UNIMP, "e1000e: packet-split receive descriptors are not modelled: frame dropped")
            return size
        extended = bool(self.reg(Reg.RFCTL) & RFCTL_EXTEN)
        head = ring.head
        for n in range(needed):
            chunk = data[n * bufsize:(n + 1) * bufsize]
            last = n == needed - 1
            addr = ring.desc_addr(head)
            if not self._write_rx_desc(addr, chunk, status | (RXD_STAT_EOP if last else 0), vlan_tci, extended):
                break
            head = (head + 1) % ring.count
            self.set_reg(Reg.RDH0, head)
        self._count_rx(frame)
        causes = Icr.RXT0 | Icr.RXQ0
        rdmts = (self.reg(Reg.RCTL) >> RCTL_RDMTS_SHIFT) & 3
        if (ring.tail - head) % ring.count <= ring.count >> (rdmts + 1):
            causes |= Icr.RXDMT0
        self.set_interrupt_cause(causes)
        return size

    def _write_rx_desc(self, addr: int, chunk: bytes, status: int, vlan: int, extended: bool) -> bool:
        desc = self.host.dma_read(addr, DESC_SIZE)
        if desc is None:
            guest_error(f"e1000e: RX descriptor at {addr:#x} is outside guest memory")
            return False
        buf = int.from_bytes(desc[0:8], "little")
        if buf == 0:
            guest_error(f"e1000e: RX descriptor at {addr:#x} has no buffer: frame data dropped")
        elif not self.host.dma_write(buf, chunk):
            guest_error(f"e1000e: RX buffer {buf:#x}+{len(chunk)} is outside guest memory")
        status |= RXD_STAT_DD
        if extended:
            wb = bytes(8) + status.to_bytes(4, "little") + len(chunk).to_bytes(2, "little") + vlan.to_bytes(2, "little")
        else:
            wb = (desc[0:8] + len(chunk).to_bytes(2, "little") + bytes(2)
                  + bytes([status & 0xFF, (status >> 24) & 0xFF]) + vlan.to_bytes(2, "little"))
        if not self.host.dma_write(addr, wb):
            guest_error(f"e1000e: RX descriptor write-back at {addr:#x} is outside guest memory")
            return False
        return True

    def _count_rx(self, frame: bytes) -> None:
        size = len(frame) + 4
        self.count(Stat.GPRC)
        self.count(Stat.TPR)
        self.count(Stat.GORCL, size)
        self.count(Stat.TORL, size)
        if frame[0] & 1:
            self.count(Stat.BPRC if frame[:6] == b"\xff" * 6 else Stat.MPRC)
        bucket = size_bucket(RX_SIZE_BUCKETS, size)
        if bucket is not None:
            self.count(bucket)


# --- migration ------------------------------------------------------------------------------------

VMSTATE_TX_CONTEXT = VMStateDescription(
    "e1000e/tx-context", version_id=1,
    fields=[
        VMStateField("ipcss", U8),
        VMStateField("ipcso", U8),
        VMStateField("ipcse", VM_U16),
        VMStateField("tucss", U8),
        VMStateField("tucso", U8),
        VMStateField("tucse", VM_U16),
        VMStateField("paylen", UInt(20)),
        VMStateField("hdr_len", U8),
        VMStateField("mss", VM_U16),
        VMStateField("is_ipv4", BOOL),
        VMStateField("is_tcp", BOOL),
        VMStateField("tse", BOOL),
    ])

VMSTATE_TX = VMStateDescription(
    "e1000e/tx", version_id=1,
    fields=[
        VMStateField("ctx", Struct(VMSTATE_TX_CONTEXT)),
        VMStateField("frame", VarBuffer(TX_MAX_FRAME)),
        VMStateField("first", BOOL),
        VMStateField("bad", BOOL),
        VMStateField("tse", BOOL),
        VMStateField("vlan", Optional(VM_U16)),
        VMStateField("popts", U8),
        VMStateField("legacy_css", U8),
        VMStateField("legacy_cso", U8),
        VMStateField("legacy_ic", BOOL),
    ])

VMSTATE_THROTTLE = VMStateDescription(
    "e1000e/throttle", version_id=1,
    fields=[
        VMStateField("running", BOOL),
        VMStateField("pending", BOOL),
        VMStateField("deadline", I64, check=lambda v: v >= -1),
    ])

VMSTATE_PHY = VMStateDescription(
    "e1000e/phy", version_id=1,
    fields=[
        VMStateField("regs", Array(Array(VM_U16, 32), PHY_PAGES)),
        VMStateField("link_up", BOOL),
    ])


def _core_post_load(core: E1000ECore, version_id: int) -> None:
    core.post_load()


VMSTATE_E1000E_CORE = VMStateDescription(
    "e1000e/core", version_id=1,
    fields=[
        VMStateField("mac_registers", Buffer(MMIO_SIZE)),
        VMStateField("stat_counters", Array(VM_U64, len(Stat))),
        VMStateField("eeprom", Array(VM_U16, EEPROM_WORDS)),
        VMStateField("phy", Struct(VMSTATE_PHY)),
        VMStateField("link_up", BOOL),
        VMStateField("msi_causes_pending", VM_U32),
        VMStateField("eitr_guest", Array(VM_U16, MSIX_VECTORS)),
        VMStateField("itr", Struct(VMSTATE_THROTTLE)),
        VMStateField("eitr", StructList(VMSTATE_THROTTLE, MSIX_VECTORS)),
        VMStateField("tx", StructList(VMSTATE_TX, 2)),
        VMStateField("irq_level", UInt(1)),
    ],
    post_load=_core_post_load)
