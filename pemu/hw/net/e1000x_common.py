"""What the Intel gigabit NICs share (QEMU's hw/net/e1000x_common.c and
e1000_regs.h): register offsets, the EEPROM image with its checksum, the
receive address filter and the Internet checksum.

Everything here is pure: table-tested in tests/unit/test_e1000e.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum, IntFlag

U16 = 0xFFFF
U32 = 0xFFFFFFFF


class Reg(IntEnum):
    """MAC register offsets in BAR 0 (82574L datasheet, ch. 10)."""

    CTRL = 0x0000
    STATUS = 0x0008
    EECD = 0x0010
    EERD = 0x0014
    CTRL_EXT = 0x0018
    FLA = 0x001C
    MDIC = 0x0020
    FCAL = 0x0028
    FCAH = 0x002C
    FCT = 0x0030
    VET = 0x0038
    ICR = 0x00C0
    ITR = 0x00C4
    ICS = 0x00C8
    IMS = 0x00D0
    IMC = 0x00D8
    EIAC = 0x00DC
    IAM = 0x00E0
    IVAR = 0x00E4
    RCTL = 0x0100
    FCTTV = 0x0170
    TXCW = 0x0178
    RXCW = 0x0180
    TCTL = 0x0400
    TCTL_EXT = 0x0404
    TIPG = 0x0410
    LEDCTL = 0x0E00
    EXTCNF_CTRL = 0x0F00
    EXTCNF_SIZE = 0x0F08
    PHY_CTRL = 0x0F10
    PBA = 0x1000
    PBS = 0x1008
    EEMNGCTL = 0x1010
    EITR0 = 0x1680   # EITR0..4, one per MSI-X vector
    PSRCTL = 0x2170
    RDBAL0 = 0x2800
    RDBAH0 = 0x2804
    RDLEN0 = 0x2808
    RDH0 = 0x2810
    RDT0 = 0x2818
    RDTR = 0x2820
    RXDCTL = 0x2828
    RADV = 0x282C
    TDBAL0 = 0x3800
    TDBAH0 = 0x3804
    TDLEN0 = 0x3808
    TDH0 = 0x3810
    TDT0 = 0x3818
    TIDV = 0x3820
    TXDCTL = 0x3828
    TADV = 0x382C
    STATS_FIRST = 0x4000
    STATS_LAST = 0x4124
    RXCSUM = 0x5000
    RFCTL = 0x5008
    MTA = 0x5200     # 128 registers
    RA = 0x5400      # 16 pairs RAL/RAH
    VFTA = 0x5600    # 128 registers
    WUC = 0x5800
    MANC = 0x5820
    MRQC = 0x5818
    GCR = 0x5B00
    SWSM = 0x5B50
    FWSM = 0x5B54
    RETA = 0x5C00
    RSSRK = 0x5C80


# Queue 1's RX and TX registers are queue 0's plus this.
QUEUE_STRIDE = 0x100
MTA_SIZE = 128
RA_ENTRIES = 16
VFTA_SIZE = 128
MSIX_VECTORS = 5


class Stat(IntEnum):
    """Statistics registers Linux reads; every one clears when read."""

    CRCERRS = 0x4000
    MPC = 0x4010
    COLC = 0x4028
    RLEC = 0x4040
    PRC64 = 0x405C
    PRC127 = 0x4060
    PRC255 = 0x4064
    PRC511 = 0x4068
    PRC1023 = 0x406C
    PRC1522 = 0x4070
    GPRC = 0x4074
    BPRC = 0x4078
    MPRC = 0x407C
    GPTC = 0x4080
    GORCL = 0x4088
    GORCH = 0x408C
    GOTCL = 0x4090
    GOTCH = 0x4094
    RNBC = 0x40A0
    RUC = 0x40A4
    ROC = 0x40AC
    TORL = 0x40C0
    TORH = 0x40C4
    TOTL = 0x40C8
    TOTH = 0x40CC
    TPR = 0x40D0
    TPT = 0x40D4
    PTC64 = 0x40D8
    PTC127 = 0x40DC
    PTC255 = 0x40E0
    PTC511 = 0x40E4
    PTC1023 = 0x40E8
    PTC1522 = 0x40EC
    MPTC = 0x40F0
    BPTC = 0x40F4
    TSCTC = 0x40F8
    IAC = 0x4100


# 64-bit counters: (low, high); reading the high half clears both.
STATS_64 = ((Stat.GORCL, Stat.GORCH), (Stat.GOTCL, Stat.GOTCH), (Stat.TORL, Stat.TORH), (Stat.TOTL, Stat.TOTH))

# Frame-size buckets of PRCxx / PTCxx: (largest size, counter) in order.
RX_SIZE_BUCKETS = ((64, Stat.PRC64), (127, Stat.PRC127), (255, Stat.PRC255), (511, Stat.PRC511),
                   (1023, Stat.PRC1023), (1522, Stat.PRC1522))
TX_SIZE_BUCKETS = ((64, Stat.PTC64), (127, Stat.PTC127), (255, Stat.PTC255), (511, Stat.PTC511),
                   (1023, Stat.PTC1023), (1522, Stat.PTC1522))


def size_bucket(buckets: tuple[tuple[int, Stat], ...], size: int) -> Stat | None:
    for limit, stat in buckets:
        if size <= limit:
            return stat
    return None


class Ctrl(IntFlag):
    FD = 1 << 0
    GIO_MASTER_DISABLE = 1 << 2
    ASDE = 1 << 5
    SLU = 1 << 6
    FRCSPD = 1 << 11
    FRCDPX = 1 << 12
    RST = 1 << 26
    VME = 1 << 30
    PHY_RST = 1 << 31


class Status(IntFlag):
    FD = 1 << 0
    LU = 1 << 1
    SPEED_1000 = 1 << 7
    LAN_INIT_DONE = 1 << 9
    PHYRA = 1 << 10
    GIO_MASTER_ENABLE = 1 << 19


class Eecd(IntFlag):
    REQ = 1 << 6
    GNT = 1 << 7
    PRES = 1 << 8
    AUTO_RD = 1 << 9


EERD_START = 1 << 0
EERD_DONE = 1 << 1
EERD_ADDR_SHIFT = 2
EERD_DATA_SHIFT = 16

CTRL_EXT_ASDCHK = 1 << 12
CTRL_EXT_EE_RST = 1 << 13
CTRL_EXT_INT_TIMERS_CLEAR_ENA = 1 << 22
CTRL_EXT_EIAME = 1 << 24
CTRL_EXT_IAME = 1 << 27
CTRL_EXT_PBA_CLR = 1 << 31

EEMNGCTL_CFG_DONE_PORT_0 = 1 << 18


class Icr(IntFlag):
    """Interrupt causes (ICR, ICS, IMS, IMC, IAM, EIAC share the layout)."""

    TXDW = 1 << 0
    TXQE = 1 << 1
    LSC = 1 << 2
    RXSEQ = 1 << 3
    RXDMT0 = 1 << 4
    RXO = 1 << 6
    RXT0 = 1 << 7
    MDAC = 1 << 9
    TXD_LOW = 1 << 15
    SRPD = 1 << 16
    ACK = 1 << 17
    MNG = 1 << 18
    RXQ0 = 1 << 20
    RXQ1 = 1 << 21
    TXQ0 = 1 << 22
    TXQ1 = 1 << 23
    OTHER = 1 << 24
    ASSERTED = 1 << 31


IMS_VALID = int(Icr.TXDW | Icr.TXQE | Icr.LSC | Icr.RXSEQ | Icr.RXDMT0 | Icr.RXO | Icr.RXT0 | Icr.MDAC
                | Icr.TXD_LOW | Icr.SRPD | Icr.ACK | Icr.MNG | Icr.RXQ0 | Icr.RXQ1 | Icr.TXQ0 | Icr.TXQ1 | Icr.OTHER)
# Causes that MSI-X reports through the "other" vector (and that set ICR.OTHER).
ICR_OTHER_CAUSES = int(Icr.LSC | Icr.RXO | Icr.MDAC | Icr.SRPD | Icr.ACK | Icr.MNG)
# Per-queue causes and their IVAR field (shift of its 4 bits: 3 bits vector, 1 valid).
IVAR_FIELDS = ((Icr.RXQ0, 0), (Icr.RXQ1, 4), (Icr.TXQ0, 8), (Icr.TXQ1, 12))
IVAR_OTHER_SHIFT = 16
IVAR_VALID = 0x8
IVAR_TX_INT_EVERY_WB = 1 << 31


class Rctl(IntFlag):
    EN = 1 << 1
    SBP = 1 << 2
    UPE = 1 << 3
    MPE = 1 << 4
    LPE = 1 << 5
    BAM = 1 << 15
    VFE = 1 << 18
    BSEX = 1 << 25
    SECRC = 1 << 26


RCTL_RDMTS_SHIFT = 8
RCTL_DTYP_SHIFT = 10
RCTL_MO_SHIFT = 12
RCTL_BSIZE_SHIFT = 16
RFCTL_EXTEN = 1 << 15
RXCSUM_PCSD = 1 << 13

TCTL_EN = 1 << 1

MDIC_DATA_MASK = 0xFFFF
MDIC_REG_SHIFT = 16
MDIC_PHY_SHIFT = 21
MDIC_OP_WRITE = 1 << 26
MDIC_OP_READ = 2 << 26
MDIC_READY = 1 << 28
MDIC_INT_EN = 1 << 29
MDIC_ERROR = 1 << 30
PHY_ADDRESS = 1  # the 82574's PHY answers at MDIO address 1

RAH_AV = 1 << 31


def rx_buffer_size(rctl: int) -> int:
    """The receive buffer size RCTL.BSIZE/BSEX select (0 when reserved)."""
    code = (rctl >> RCTL_BSIZE_SHIFT) & 3
    if rctl & Rctl.BSEX:
        return (0, 16384, 8192, 4096)[code]
    return (2048, 1024, 512, 256)[code]


# --- the EEPROM ------------------------------------------------------------------------

EEPROM_WORDS = 64
EEPROM_CHECKSUM_WORD = 0x3F
EEPROM_SUM = 0xBABA
EEPROM_PBA_WORDS = (0x08, 0x09)
EEPROM_INIT_CONTROL1 = 0x0A
EEPROM_SUBSYSTEM_ID = 0x0B
EEPROM_SUBSYSTEM_VENDOR = 0x0C
EEPROM_DEVICE_ID = 0x0D
EEPROM_VENDOR_ID = 0x0E
EEPROM_INIT_CONTROL2 = 0x0F


def eeprom_image(mac: bytes, device_id: int, vendor_id: int = 0x8086, subsystem_id: int = 0,
                 subsystem_vendor: int = 0x8086) -> list[int]:
    """A 64-word EEPROM for an 82574: the MAC in words 0-2, the PCI IDs,
    no manageability, and word 0x3F making the words sum to 0xBABA."""
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    words = [0] * EEPROM_WORDS
    for i in range(3):
        words[i] = mac[2 * i] | (mac[2 * i + 1] << 8)
    for i in EEPROM_PBA_WORDS:
        words[i] = U16  # "no PBA number"
    words[EEPROM_SUBSYSTEM_ID] = subsystem_id & U16
    words[EEPROM_SUBSYSTEM_VENDOR] = subsystem_vendor & U16
    words[EEPROM_DEVICE_ID] = device_id & U16
    words[EEPROM_VENDOR_ID] = vendor_id & U16
    words[EEPROM_CHECKSUM_WORD] = eeprom_checksum_word(words)
    return words


def eeprom_checksum_word(words: list[int]) -> int:
    """The value of the last word that makes all 64 sum to 0xBABA."""
    return (EEPROM_SUM - sum(words[:EEPROM_CHECKSUM_WORD])) & U16


def eeprom_valid(words: list[int]) -> bool:
    return sum(words[:EEPROM_WORDS]) & U16 == EEPROM_SUM


# --- receive filtering ----------------------------------------------------------------------

BROADCAST = b"\xff" * 6


def mta_hash(dest: bytes, mo: int) -> int:
    """The 12-bit multicast table index of ``dest`` for RCTL.MO = ``mo``:
    the address's bits 47:36, 46:35, 45:34 or 43:32."""
    word = dest[4] | (dest[5] << 8)
    return (word >> (4 - mo)) & 0xFFF if mo < 3 else word & 0xFFF


def rx_filter(dest: bytes, rctl: int, mta: Sequence[int], ra: Sequence[int]) -> bool:
    """Whether a frame for ``dest`` is taken (82574 §7.1.1): promiscuous
    modes, broadcast with BAM, a valid receive address, or a multicast
    address whose hash bit is set in the table.  ``ra`` holds RAL0, RAH0,
    RAL1, RAH1..."""
    if len(dest) < 6:
        return False
    is_multicast = bool(dest[0] & 1)
    if not is_multicast:
        if rctl & Rctl.UPE:
            return True
        low = int.from_bytes(dest[:4], "little")
        high = int.from_bytes(dest[4:6], "little") | RAH_AV
        for n in range(0, len(ra) - 1, 2):
            if ra[n] == low and ra[n + 1] & (RAH_AV | U16) == high:
                return True
        return False
    if dest == BROADCAST and rctl & Rctl.BAM:
        return True
    if rctl & Rctl.MPE:
        return True
    index = mta_hash(dest, (rctl >> RCTL_MO_SHIFT) & 3)
    return bool(mta[index >> 5] >> (index & 31) & 1)


# --- receive checksum offload ---------------------------------------------------------------

RXCSUM_IPOFL = 1 << 8
RXCSUM_TUOFL = 1 << 9
# Receive status and error bits as the extended descriptor's STATUS_ERROR word
# holds them (the legacy descriptor has the low byte as status, the top as errors).
RXD_STAT_IXSM = 0x04
RXD_STAT_UDPCS = 0x10
RXD_STAT_TCPCS = 0x20
RXD_STAT_IPCS = 0x40
RXD_ERR_TCPE = 0x20 << 24
RXD_ERR_IPE = 0x40 << 24
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


def rx_checksum_status(frame: bytes | bytearray, rxcsum: int) -> int:
    """The checksum bits of a received frame's descriptor (82574 §7.1.9):
    IPCS with IPE for an IPv4 header, TCPCS or UDPCS with TCPE for an
    unfragmented TCP or UDP packet over IPv4 or IPv6 (no extension headers),
    as RXCSUM enables them; IXSM ("no checksum looked at") otherwise."""
    if not rxcsum & (RXCSUM_IPOFL | RXCSUM_TUOFL) or len(frame) < 14:
        return RXD_STAT_IXSM
    ethertype = int.from_bytes(frame[12:14], "big")
    status = 0
    if ethertype == ETH_P_IP and len(frame) >= 34:
        ihl = (frame[14] & 0xF) * 4
        total = int.from_bytes(frame[16:18], "big")
        if frame[14] >> 4 != 4 or ihl < 20 or total < ihl or 14 + total > len(frame):
            return RXD_STAT_IXSM
        if rxcsum & RXCSUM_IPOFL:
            status |= RXD_STAT_IPCS
            if ones_sum(frame[14:14 + ihl]) != U16:
                status |= RXD_ERR_IPE
        fragmented = int.from_bytes(frame[20:22], "big") & 0x3FFF
        proto = frame[23]
        l4 = frame[14 + ihl:14 + total]
        pseudo = ones_sum(frame[26:34], proto + len(l4))
    elif ethertype == ETH_P_IPV6 and len(frame) >= 54:
        payload = int.from_bytes(frame[18:20], "big")
        if 54 + payload > len(frame):
            return RXD_STAT_IXSM
        fragmented = 0
        proto = frame[20]
        l4 = frame[54:54 + payload]
        pseudo = ones_sum(frame[22:54], proto + len(l4))
    else:
        return RXD_STAT_IXSM
    if fragmented or not rxcsum & RXCSUM_TUOFL:
        return status
    if proto == 6 and len(l4) >= 20:
        status |= RXD_STAT_TCPCS
    elif proto == 17 and len(l4) >= 8:
        if ethertype == ETH_P_IP and l4[6:8] == b"\0\0":
            return status  # an IPv4 UDP datagram without a checksum
        status |= RXD_STAT_UDPCS
    else:
        return status
    if ones_sum(l4, pseudo) != U16:
        status |= RXD_ERR_TCPE
    return status


# --- the Internet checksum -------------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The 16-bit ones' complement sum of ``data`` (big-endian words, an odd
    last byte padded with zero) added to ``start``, folded."""
    n = len(data)
    total = start
    if n > 1:
        total += _fold_big(int.from_bytes(data[:n & ~1], "big"))
    if n & 1:
        total += data[-1] << 8
    while total >> 16:
        total = (total & U16) + (total >> 16)
    return total


def _fold_big(value: int) -> int:
    """The ones' complement sum of the 16-bit words of a big integer."""
    bits = max(value.bit_length(), 16)
    while bits > 16:
        half = ((bits + 31) // 32) * 16  # split on a 16-bit boundary
        value = (value & ((1 << half) - 1)) + (value >> half)
        bits = max(value.bit_length(), 16)
    while value >> 16:
        value = (value & U16) + (value >> 16)
    return value


def internet_checksum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The checksum to store: the complement of :func:`ones_sum`."""
    return ~ones_sum(data, start) & U16
