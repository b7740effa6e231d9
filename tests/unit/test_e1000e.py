"""The e1000e model without a CPU: EEPROM, PHY through MDIC, interrupt causes,
throttling and MSI-X routing, the transmit ring with checksum offload and TSO,
the receive ring with extended descriptors, hostile rings, and back-pressure."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from pemu.hw.net import e1000e_core as core_mod
from pemu.hw.net.e1000e_core import E1000ECore
from pemu.hw.net.e1000x_common import (
    Icr,
    Reg,
    Stat,
    eeprom_checksum_word,
    eeprom_image,
    eeprom_valid,
    mta_hash,
    rx_buffer_size,
    rx_checksum_status,
    rx_filter,
)
from pemu.net.net import NET_QUEUE_MAX_FRAMES, NetClientState, NetState, qemu_send_packet
from pemu.net.nic import NICState
from tests.unit.fakes import FakeClock

MAC = bytes.fromhex("525400123456")
MEM = 1 << 20


class FakeHost:
    """Guest memory as a bytearray, interrupt signals and the wire as lists."""

    def __init__(self, msix: bool = False, msi: bool = False) -> None:
        self.mem = bytearray(MEM)
        self.irq = 0
        self.irq_raises = 0
        self.msix = msix
        self.msi = msi
        self.vectors: list[int] = []
        self.msis = 0
        self.sent: list[bytes] = []
        self.hold = False
        self.scheduled: list[Callable[[], None]] = []
        self.rx_ready_calls = 0

    def dma_read(self, addr: int, length: int) -> bytes | None:
        if addr + length > MEM:
            return None
        return bytes(self.mem[addr:addr + length])

    def dma_write(self, addr: int, data: bytes | bytearray) -> bool:
        if addr + len(data) > MEM:
            return False
        self.mem[addr:addr + len(data)] = data
        return True

    def set_irq(self, level: int) -> None:
        if level and not self.irq:
            self.irq_raises += 1
        self.irq = level

    def msix_enabled(self) -> bool:
        return self.msix

    def msi_enabled(self) -> bool:
        return self.msi

    def msix_notify(self, vector: int) -> None:
        self.vectors.append(vector)

    def msix_clear(self, vector: int) -> None:
        pass

    def msi_notify(self) -> None:
        self.msis += 1

    def send(self, frame: bytes) -> bool:
        self.sent.append(frame)
        return not self.hold

    def schedule(self, cb: Callable[[], None]) -> None:
        self.scheduled.append(cb)

    def rx_ready(self) -> None:
        self.rx_ready_calls += 1


def make(msix: bool = False, msi: bool = False) -> tuple[E1000ECore, FakeHost, FakeClock]:
    host = FakeHost(msix, msi)
    clock = FakeClock()
    return E1000ECore(host, MAC, clock, clock.timer), host, clock


def rd(core: E1000ECore, reg: int) -> int:
    return core.mmio_read(reg, 4)


def wr(core: E1000ECore, reg: int, value: int) -> None:
    core.mmio_write(reg, value, 4)


# --- reference checksums (independent of the model's) ---------------------------------


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def l4_ok(ip_hdr: bytes, l4: bytes, proto: int) -> bool:
    pseudo = ip_hdr[12:20] + bytes([0, proto]) + struct.pack("!H", len(l4))
    return ref_sum(pseudo + l4) == 0xFFFF


def ipv4_tcp_frame(payload: bytes, seq: int = 1000, flags: int = 0x18 | 0x01) -> bytes:
    eth = bytes.fromhex("525400aaaaaa") + MAC + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0x1234, 0x4000, 64, 6, 0,
                     bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2]))
    tcp = struct.pack("!HHIIBBHHH", 5555, 40000, seq, 7, 5 << 4, flags, 65535, 0, 0)
    return eth + ip + tcp + payload


# --- EEPROM and PHY ----------------------------------------------------------------------


def test_eeprom_holds_the_mac_and_sums_to_baba() -> None:
    words = eeprom_image(MAC, 0x10D3)
    assert len(words) == 64 and eeprom_valid(words)
    assert sum(words) & 0xFFFF == 0xBABA
    assert words[0] == 0x5452 and words[1] == 0x1200 and words[2] == 0x5634
    words[5] ^= 1
    assert not eeprom_valid(words)
    words[63] = eeprom_checksum_word(words)
    assert eeprom_valid(words)


def test_eerd_reads_the_eeprom_words() -> None:
    core, _, _ = make()
    total = 0
    for addr in range(64):
        wr(core, Reg.EERD, (addr << 2) | 1)
        value = rd(core, Reg.EERD)
        assert value & 2  # DONE
        total += value >> 16
    assert total & 0xFFFF == 0xBABA
    wr(core, Reg.EERD, 0)
    wr(core, Reg.EERD, (0x3FFF << 2) | 1)   # beyond the EEPROM: done, no data, no exception
    assert rd(core, Reg.EERD) >> 16 == 0


def mdic(core: E1000ECore, reg: int, write: int | None = None, phy: int = 1) -> int:
    op = (1 << 26) | write if write is not None else 2 << 26
    wr(core, Reg.MDIC, op | (reg << 16) | (phy << 21))
    value = rd(core, Reg.MDIC)
    assert value & (1 << 28)  # READY
    return value


@pytest.mark.parametrize("reg, expected", [(2, 0x0141), (3, 0x0CB1), (1, 0x796D), (0, 0x1140)])
def test_mdic_reads_the_82574_phy(reg: int, expected: int) -> None:
    core, _, _ = make()
    assert mdic(core, reg) & 0xFFFF == expected


def test_mdic_writes_and_errors() -> None:
    core, _, _ = make()
    mdic(core, 4, write=0x01E1)
    assert mdic(core, 4) & 0xFFFF == 0x01E1
    mdic(core, 2, write=0x1234)                     # the PHY ID is read-only
    assert mdic(core, 2) & 0xFFFF == 0x0141
    assert mdic(core, 1, phy=2) & (1 << 30)         # nothing at PHY address 2: ERROR
    mdic(core, 0, write=0x8000)                     # PHY reset self-clears
    assert mdic(core, 0) & 0xFFFF == 0x1140


def test_set_link_down_and_up() -> None:
    core, host, _ = make()
    wr(core, Reg.IMS, Icr.LSC)
    assert rd(core, Reg.STATUS) & 2
    core.set_link(False)
    assert not rd(core, Reg.STATUS) & 2
    assert not mdic(core, 1) & 0x4
    assert host.irq == 1 and rd(core, Reg.ICR) & Icr.LSC
    assert host.irq == 0  # ICR read cleared it
    core.set_link(True)
    assert rd(core, Reg.STATUS) & 2 and mdic(core, 1) & 0x24 == 0x24


# --- interrupts ----------------------------------------------------------------------------


def test_icr_ics_ims_imc_with_intx() -> None:
    core, host, _ = make()
    wr(core, Reg.ICS, Icr.RXT0)
    assert host.irq == 0                           # masked
    wr(core, Reg.IMS, Icr.RXT0 | Icr.TXDW)
    assert host.irq == 1
    wr(core, Reg.IMC, Icr.RXT0)
    assert host.irq == 0
    assert rd(core, Reg.IMS) == Icr.TXDW
    assert rd(core, Reg.ICR) == Icr.RXT0 | Icr.ASSERTED
    assert rd(core, Reg.ICR) == 0                  # read-to-clear


def test_ctrl_rst_lowers_intx() -> None:
    core, host, _ = make()
    wr(core, Reg.IMS, Icr.TXDW)
    wr(core, Reg.ICS, Icr.TXDW)
    assert host.irq == 1
    wr(core, Reg.CTRL, 1 << 26)
    assert host.irq == 0 and rd(core, Reg.IMS) == 0 and rd(core, Reg.CTRL) & (1 << 26) == 0


def test_itr_throttles_intx_with_the_injected_clock() -> None:
    core, host, clock = make()
    wr(core, Reg.ITR, 1000)                        # 1000 * 256 ns = 256 us
    wr(core, Reg.IMS, Icr.RXT0)
    wr(core, Reg.ICS, Icr.RXT0)
    assert host.irq_raises == 1
    rd(core, Reg.ICR)
    assert host.irq == 0
    wr(core, Reg.ICS, Icr.RXT0)                    # inside the interval: held back
    assert host.irq == 0
    clock.advance(255_000)
    assert host.irq == 0
    clock.advance(2_000)
    assert host.irq == 1 and host.irq_raises == 2


def test_msi_is_sent_once_per_new_cause() -> None:
    core, host, clock = make(msi=True)
    wr(core, Reg.IMS, Icr.RXT0 | Icr.TXDW)
    wr(core, Reg.ICS, Icr.RXT0)
    assert host.msis == 1
    wr(core, Reg.ICS, Icr.RXT0)                    # still pending, not read: no new message
    assert host.msis == 1
    rd(core, Reg.ICR)
    clock.advance(1_000_000)
    wr(core, Reg.ICS, Icr.TXDW)
    assert host.msis == 2


def configure_msix_like_linux(core: E1000ECore) -> None:
    ivar = (0x8 | 0) | ((0x8 | 1) << 8) | ((0x8 | 2) << 16) | (1 << 31)
    wr(core, Reg.IVAR, ivar)
    wr(core, Reg.CTRL_EXT, rd(core, Reg.CTRL_EXT) | (1 << 31) | (1 << 24))
    wr(core, Reg.EIAC, Icr.RXQ0 | Icr.TXQ0)
    wr(core, Reg.IAM, Icr.OTHER)
    wr(core, Reg.IMS, Icr.RXQ0 | Icr.TXQ0 | Icr.OTHER | Icr.LSC)


@pytest.mark.parametrize("cause, vector", [(Icr.RXQ0, 0), (Icr.TXQ0, 1), (Icr.LSC, 2)])
def test_msix_routes_causes_through_ivar(cause: int, vector: int) -> None:
    core, host, _ = make(msix=True)
    configure_msix_like_linux(core)
    wr(core, Reg.ICS, cause)
    assert host.vectors == [vector]
    if cause in (Icr.RXQ0, Icr.TXQ0):
        # EIAC auto-clears the queue cause and masks it until the driver re-enables it.
        assert not rd(core, Reg.ICR) & cause
        assert not rd(core, Reg.IMS) & cause
    else:
        assert rd(core, Reg.ICR) & (Icr.LSC | Icr.OTHER) == Icr.LSC | Icr.OTHER


def test_msix_other_vector_fires_for_each_link_change() -> None:
    core, host, clock = make(msix=True)
    configure_msix_like_linux(core)
    for up in (False, True, False):
        clock.advance(1_000_000)                   # beyond the vector's throttling interval
        core.set_link(up)
        # Linux's "other" handler: read ICR, re-enable the other causes.
        assert rd(core, Reg.ICR) & Icr.LSC
        wr(core, Reg.IMS, Icr.OTHER | Icr.LSC)
    assert host.vectors == [2, 2, 2]


def test_msix_eitr_throttles_a_vector() -> None:
    core, host, clock = make(msix=True)
    configure_msix_like_linux(core)
    wr(core, Reg.EITR0, 1000)
    wr(core, Reg.ICS, Icr.RXQ0)
    wr(core, Reg.IMS, Icr.RXQ0)
    wr(core, Reg.ICS, Icr.RXQ0)
    assert host.vectors == [0]
    clock.advance(300_000)
    assert host.vectors == [0, 0]


def test_ivar_pointing_past_the_vectors_is_a_guest_error() -> None:
    core, host, _ = make(msix=True)
    wr(core, Reg.IVAR, 0x8 | 7)
    wr(core, Reg.IMS, Icr.RXQ0)
    wr(core, Reg.ICS, Icr.RXQ0)
    assert host.vectors == []


def test_statistics_clear_on_read() -> None:
    core, _, _ = make()
    core.count(Stat.GPRC, 3)
    core.count(Stat.GORCL, (5 << 32) | 7)
    assert rd(core, Stat.GPRC) == 3 and rd(core, Stat.GPRC) == 0
    assert rd(core, Stat.GORCL) == 7 and rd(core, Stat.GORCH) == 5
    assert rd(core, Stat.GORCL) == 0


# --- transmit -------------------------------------------------------------------------------

TX_RING = 0x1000
TX_BUF = 0x10000


def tx_setup(core: E1000ECore, count: int = 16) -> None:
    wr(core, Reg.TDBAL0, TX_RING)
    wr(core, Reg.TDBAH0, 0)
    wr(core, Reg.TDLEN0, count * 16)
    wr(core, Reg.TDH0, 0)
    wr(core, Reg.TDT0, 0)
    wr(core, Reg.TCTL, 2)


def put_desc(host: FakeHost, index: int, low: int, cmd: int, upper: int) -> None:
    host.mem[TX_RING + 16 * index:TX_RING + 16 * index + 16] = struct.pack("<QII", low, cmd, upper)


def context_desc(ipcss: int, ipcso: int, ipcse: int, tucss: int, tucso: int, tucse: int,
                 tucmd: int, paylen: int = 0, hdr_len: int = 0, mss: int = 0) -> tuple[int, int, int]:
    low = ipcss | (ipcso << 8) | (ipcse << 16) | (tucss << 32) | (tucso << 40) | (tucse << 48)
    cmd = (1 << 29) | (tucmd << 24) | paylen
    upper = (hdr_len << 8) | (mss << 16)
    return low, cmd, upper


def test_tso_segments_into_frames_with_correct_checksums() -> None:
    core, host, _ = make()
    tx_setup(core)
    payload = bytes(range(256)) * 12   # 3072 bytes
    frame = ipv4_tcp_frame(payload)
    hdr = 54
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    # The context: IPv4, TCP, TSE with an MSS of 1000.
    put_desc(host, 0, *context_desc(14, 24, 33, 34, 50, 0, 0x07, len(payload), hdr, 1000))
    # Two data descriptors: the headers, then the payload (EOP, RS, TSE, DEXT, DTYP=1).
    data_cmd = (1 << 29) | (1 << 20) | (1 << 26)
    put_desc(host, 1, TX_BUF, data_cmd | hdr, 0x03 << 8)
    put_desc(host, 2, TX_BUF + hdr, data_cmd | (1 << 24) | (1 << 27) | len(payload), 0x03 << 8)
    wr(core, Reg.TDT0, 3)
    assert rd(core, Reg.TDH0) == 3
    assert [len(f) for f in host.sent] == [hdr + 1000, hdr + 1000, hdr + 1000, hdr + 72]
    offset = 0
    for n, seg in enumerate(host.sent):
        ip, tcp = seg[14:34], seg[34:]
        assert struct.unpack("!H", ip[2:4])[0] == len(seg) - 14
        assert struct.unpack("!H", ip[4:6])[0] == 0x1234 + n
        assert ref_sum(ip) == 0xFFFF
        assert l4_ok(ip, tcp, 6)
        assert struct.unpack("!I", tcp[4:8])[0] == 1000 + offset
        last = n == len(host.sent) - 1
        assert bool(tcp[13] & 0x01) == last and bool(tcp[13] & 0x08) == last
        assert tcp[20:] == payload[offset:offset + 1000]
        offset += 1000
    # RS on the last descriptor: DD written back there.
    assert host.mem[TX_RING + 2 * 16 + 12] & 1
    assert rd(core, Stat.TSCTC) == 1 and rd(core, Stat.GPTC) == 4


def test_udp_checksum_offload() -> None:
    core, host, _ = make()
    tx_setup(core)
    body = b"hello, offload!"
    eth = bytes(6) + MAC + b"\x08\x00"
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(body), 1, 0, 64, 17, 0,
                               bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])))
    udp_len = 8 + len(body)
    # The guest seeds the checksum field with the pseudo-header sum (Linux's CHECKSUM_PARTIAL).
    seed = ref_sum(bytes(ip[12:20]) + bytes([0, 17]) + struct.pack("!H", udp_len))
    udp = struct.pack("!HHHH", 1234, 53, udp_len, seed) + body
    frame = eth + bytes(ip) + udp
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    put_desc(host, 0, *context_desc(14, 24, 33, 34, 40, 0, 0x02))   # IP, not TCP: UDP
    put_desc(host, 1, TX_BUF, (1 << 29) | (1 << 20) | (1 << 24) | (1 << 27) | len(frame), 0x03 << 8)
    wr(core, Reg.TDT0, 2)
    (out,) = host.sent
    assert ref_sum(out[14:34]) == 0xFFFF
    assert l4_ok(out[14:34], out[34:], 17)


def test_legacy_descriptor_with_vlan_insertion() -> None:
    core, host, _ = make()
    tx_setup(core)
    wr(core, Reg.CTRL, rd(core, Reg.CTRL) | (1 << 30))  # VME
    frame = bytes(6) + MAC + b"\x08\x06" + bytes(28)
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    put_desc(host, 0, TX_BUF, (1 << 24) | (1 << 27) | (1 << 30) | len(frame), 42 << 16)
    wr(core, Reg.TDT0, 1)
    (out,) = host.sent
    assert out[12:16] == b"\x81\x00\x00\x2a" and out[16:] == frame[12:]


def test_vlan_insertion_into_a_runt_is_a_guest_error() -> None:
    core, host, _ = make()
    tx_setup(core)
    wr(core, Reg.CTRL, rd(core, Reg.CTRL) | (1 << 30))
    put_desc(host, 0, TX_BUF, (1 << 24) | (1 << 30) | 8, 42 << 16)   # 8 bytes: no room for a tag
    wr(core, Reg.TDT0, 1)
    assert host.sent == [] and rd(core, Reg.TDH0) == 1


def test_tso_over_ipv6() -> None:
    core, host, _ = make()
    tx_setup(core)
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    payload = bytes(range(250)) * 10
    ip6 = struct.pack("!IHBB", 6 << 28, 0, 6, 64) + src + dst
    tcp = struct.pack("!HHIIBBHHH", 22, 50000, 77, 1, 5 << 4, 0x18, 500, 0, 0)
    frame = bytes(6) + MAC + b"\x86\xdd" + ip6 + tcp + payload
    hdr = 14 + 40 + 20
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    # Linux for TSO6: no IP bit, ipcse 0, an IP checksum offset the hardware ignores.
    put_desc(host, 0, *context_desc(14, 24, 0, 54, 70, 0, 0x05, len(payload), hdr, 1220))
    put_desc(host, 1, TX_BUF, (1 << 29) | (1 << 20) | (1 << 26) | (1 << 24) | len(frame), 0x02 << 8)
    wr(core, Reg.TDT0, 2)
    assert [len(f) for f in host.sent] == [hdr + 1220, hdr + 1220, hdr + 60]
    for n, seg in enumerate(host.sent):
        l4 = seg[54:]
        assert struct.unpack("!H", seg[18:20])[0] == len(l4)
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), 6)
        assert ref_sum(pseudo + l4) == 0xFFFF
        assert struct.unpack("!I", l4[4:8])[0] == 77 + 1220 * n


def test_tx_budget_leaves_the_rest_to_the_main_loop() -> None:
    core, host, _ = make()
    tx_setup(core, count=4096)
    frame = bytes(6) + MAC + b"\x08\x00" + bytes(46)
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    for i in range(4095):
        put_desc(host, i, TX_BUF, (1 << 24) | len(frame), 0)
    wr(core, Reg.TDT0, 4095)
    assert len(host.sent) == core_mod.TX_BUDGET and len(host.scheduled) == 1
    while host.scheduled:
        host.scheduled.pop()()
    assert len(host.sent) == 4095 and rd(core, Reg.TDH0) == 4095


def test_tso_floods_are_cut_into_bounded_calls() -> None:
    core, host, _ = make()
    tx_setup(core, count=128)
    frame = ipv4_tcp_frame(bytes(0x8000))
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    for i in range(0, 80, 2):   # 40 TSO frames, each cut at the smallest MSS into 512 segments
        put_desc(host, i, *context_desc(14, 24, 33, 34, 50, 0, 0x07, len(frame) - 54, 54, 64))
        put_desc(host, i + 1, TX_BUF, (1 << 29) | (1 << 20) | (1 << 26) | (1 << 24) | len(frame), 0x0300)
    wr(core, Reg.TDT0, 80)
    assert len(host.sent) <= core_mod.TX_FRAME_BUDGET + 512 and len(host.scheduled) == 1
    calls = 0
    while host.scheduled:
        host.scheduled.pop()()
        calls += 1
    assert len(host.sent) == 40 * 512 and calls >= 30


def test_a_peer_that_holds_stops_the_ring_until_resumed() -> None:
    core, host, _ = make()
    tx_setup(core)
    frame = bytes(6) + MAC + b"\x08\x00" + bytes(46)
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    for i in range(10):
        put_desc(host, i, TX_BUF, (1 << 24) | len(frame), 0)
    host.hold = True
    wr(core, Reg.TDT0, 10)
    assert len(host.sent) == 1 and rd(core, Reg.TDH0) == 1
    host.hold = False
    core.tx_resume()
    host.scheduled.pop()()
    assert len(host.sent) == 10


@pytest.mark.parametrize("setup", [
    {"TDH0": 99},                                     # head beyond the ring
    {"TDBAL0": MEM - 32},                             # ring reaching past guest memory
    {"buf": MEM - 4},                                 # buffer past guest memory
    {"len": 0xFFFFF, "dext": True},                   # a 1 MiB data descriptor
])
def test_bad_rings_and_descriptors_are_guest_errors(setup: dict[str, int]) -> None:
    core, host, _ = make()
    tx_setup(core)
    if "TDBAL0" in setup:
        wr(core, Reg.TDBAL0, setup["TDBAL0"])
    buf = setup.get("buf", TX_BUF)
    length = setup.get("len", 60)
    cmd = ((1 << 29) | (1 << 20)) if setup.get("dext") else 0
    for i in range(4):
        put_desc(host, i, buf, cmd | (1 << 24) | (1 << 27) | length, 0)
    if "TDH0" in setup:
        wr(core, Reg.TDH0, setup["TDH0"])
    wr(core, Reg.TDT0, 4)
    wr(core, Reg.TDT0, 0xFFFFFFFF)   # masked to 16 bits, beyond the ring: a guest error
    assert host.sent == []


# --- receive --------------------------------------------------------------------------------

RX_RING = 0x4000
RX_BUF = 0x20000


def rx_setup(core: E1000ECore, host: FakeHost, count: int = 8, extended: bool = True) -> None:
    for i in range(count):
        host.mem[RX_RING + 16 * i:RX_RING + 16 * i + 16] = struct.pack("<QQ", RX_BUF + 0x800 * i, 0)
    wr(core, Reg.RDBAL0, RX_RING)
    wr(core, Reg.RDLEN0, count * 16)
    wr(core, Reg.RDH0, 0)
    wr(core, Reg.RDT0, count - 1)
    if extended:
        wr(core, Reg.RFCTL, 1 << 15)
    wr(core, Reg.RCTL, (1 << 1) | (1 << 15) | (1 << 26))   # EN, BAM, SECRC; 2 KiB buffers


def test_rx_ring_fills_holds_and_wraps_with_extended_descriptors() -> None:
    core, host, _ = make()
    rx_setup(core, host)
    wr(core, Reg.IMS, Icr.RXT0)
    frames = [MAC + bytes.fromhex("525400aaaaaa") + b"\x08\x00" + bytes([n]) * (100 + n) for n in range(12)]
    for n in range(7):
        assert core.receive(frames[n]) == len(frames[n])
    assert host.irq == 1
    assert not core.can_receive()
    assert core.receive(frames[7]) == 0            # no room: the net layer holds it
    for n in range(7):
        desc = host.mem[RX_RING + 16 * n:RX_RING + 16 * n + 16]
        status, length = struct.unpack("<IH", desc[8:14])
        assert status & 3 == 3 and length == len(frames[n])
        assert host.mem[RX_BUF + 0x800 * n:RX_BUF + 0x800 * n + length] == frames[n]
    # The guest gives buffers back (re-arming them) and moves the tail around the end.
    for i in range(8):
        host.mem[RX_RING + 16 * i:RX_RING + 16 * i + 16] = struct.pack("<QQ", RX_BUF + 0x800 * i, 0)
    calls = host.rx_ready_calls
    wr(core, Reg.RDT0, 4)
    assert host.rx_ready_calls == calls + 1
    for n in range(7, 12):
        assert core.receive(frames[n]) == len(frames[n])
    assert rd(core, Reg.RDH0) == 4                 # 7, then 0..3: wrapped
    assert rd(core, Stat.GPRC) == 12


def test_rx_frame_spanning_buffers_and_legacy_descriptors() -> None:
    core, host, _ = make()
    rx_setup(core, host, extended=False)
    frame = MAC + bytes(6) + b"\x08\x00" + bytes(range(256)) * 12
    assert core.receive(frame) == len(frame)
    lengths = [struct.unpack("<H", host.mem[RX_RING + 16 * i + 8:RX_RING + 16 * i + 10])[0] for i in range(2)]
    assert lengths == [2048, len(frame) - 2048]
    assert host.mem[RX_RING + 12] == 0x05 and host.mem[RX_RING + 16 + 12] == 0x07   # DD, then DD|EOP


def test_vlan_strip_puts_the_tag_in_the_descriptor() -> None:
    core, host, _ = make()
    rx_setup(core, host)
    wr(core, Reg.CTRL, rd(core, Reg.CTRL) | (1 << 30))
    frame = MAC + bytes(6) + b"\x81\x00\x00\x07\x08\x00" + bytes(60)
    core.receive(frame)
    status, length, vlan = struct.unpack("<IHH", host.mem[RX_RING + 8:RX_RING + 16])
    assert status & 0x08 and vlan == 7 and length == len(frame) - 4


@pytest.mark.parametrize("dest, rctl, mta_bit, expected", [
    (MAC, 0, False, True),                                      # our address
    (bytes.fromhex("525400999999"), 0, False, False),           # someone else's
    (bytes.fromhex("525400999999"), 1 << 3, False, True),       # unicast promiscuous
    (b"\xff" * 6, 1 << 15, False, True),                        # broadcast with BAM
    (b"\xff" * 6, 0, False, False),
    (bytes.fromhex("01005e000001"), 0, True, True),             # multicast in the table
    (bytes.fromhex("01005e000001"), 0, False, False),
    (bytes.fromhex("01005e000001"), 1 << 4, False, True),       # multicast promiscuous
])
def test_rx_filter(dest: bytes, rctl: int, mta_bit: bool, expected: bool) -> None:
    mta = [0] * 128
    if mta_bit:
        h = mta_hash(dest, 0)
        mta[h >> 5] |= 1 << (h & 31)
    ra = [int.from_bytes(MAC[:4], "little"), int.from_bytes(MAC[4:], "little") | (1 << 31)] + [0, 0] * 15
    assert rx_filter(dest, rctl, mta, ra) is expected


def _with_checksums(frame: bytes) -> bytes:
    """An IPv4 frame with correct IP and TCP/UDP checksums."""
    f = bytearray(frame)
    f[16:18] = (len(f) - 14).to_bytes(2, "big")
    f[24:26] = b"\0\0"
    f[24:26] = (~ref_sum(bytes(f[14:34])) & 0xFFFF).to_bytes(2, "big")
    proto = f[23]
    cso = 34 + (16 if proto == 6 else 6)
    f[cso:cso + 2] = b"\0\0"
    l4 = bytes(f[34:])
    pseudo = bytes(f[26:34]) + bytes([0, proto]) + struct.pack("!H", len(l4))
    f[cso:cso + 2] = (~ref_sum(pseudo + l4) & 0xFFFF).to_bytes(2, "big")
    return bytes(f)


def _udp_frame(payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0, bytes(4), bytes(4))
    return MAC + bytes(6) + b"\x08\x00" + ip + struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload


def _ipv6_tcp_frame() -> bytes:
    tcp = bytearray(struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 5 << 4, 0x10, 100, 0, 0) + b"data")
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    tcp[16:18] = (~ref_sum(pseudo + bytes(tcp)) & 0xFFFF).to_bytes(2, "big")
    ip6 = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst
    return MAC + bytes(6) + b"\x86\xdd" + ip6 + bytes(tcp)


GOOD_TCP = _with_checksums(ipv4_tcp_frame(b"payload!"))
GOOD_UDP = _with_checksums(_udp_frame(b"payload"))


@pytest.mark.parametrize("frame, rxcsum, expected", [
    (GOOD_TCP, 0x300, 0x40 | 0x20),                                         # IPCS, TCPCS
    (GOOD_TCP[:60] + b"X" + GOOD_TCP[61:], 0x300, 0x40 | 0x20 | (0x20 << 24)),  # TCPE
    (GOOD_TCP[:22] + b"\x01" + GOOD_TCP[23:], 0x300, 0x40 | 0x20 | (0x40 << 24)),  # IPE (TTL)
    (GOOD_UDP, 0x300, 0x40 | 0x10),                                         # IPCS, UDPCS
    (_udp_frame(b"payload"), 0x300, 0x40 | (0x40 << 24)),                   # UDP without checksum; bad IP
    (_ipv6_tcp_frame(), 0x300, 0x20),
    (GOOD_TCP[:20] + b"\x20\x00" + GOOD_TCP[22:], 0x300, 0x40 | (0x40 << 24)),  # a fragment: no L4 check
    (GOOD_TCP, 0, 0x04),                                                    # RXCSUM off: IXSM
    (MAC + bytes(6) + b"\x08\x06" + bytes(28), 0x300, 0x04),              # ARP: IXSM
    (GOOD_TCP[:40], 0x300, 0x04),                                           # truncated: IXSM
], ids=["tcp", "tcp-bad", "ip-bad", "udp", "udp-no-csum", "ipv6-tcp", "fragment", "off", "arp", "truncated"])
def test_rx_checksum_status(frame: bytes, rxcsum: int, expected: int) -> None:
    assert rx_checksum_status(frame, rxcsum) == expected


@pytest.mark.parametrize("rctl, size", [(0, 2048), (1 << 16, 1024), (3 << 16, 256), ((1 << 25) | (1 << 16), 16384),
                                        (1 << 25, 0)])
def test_rx_buffer_sizes(rctl: int, size: int) -> None:
    assert rx_buffer_size(rctl) == size


def test_rx_descriptor_outside_memory_is_a_guest_error() -> None:
    core, host, _ = make()
    rx_setup(core, host)
    host.mem[RX_RING:RX_RING + 8] = struct.pack("<Q", MEM - 10)
    core.receive(MAC + bytes(6) + b"\x08\x00" + bytes(100))   # no exception
    wr(core, Reg.RDBAL0, MEM - 16)
    core.receive(MAC + bytes(6) + b"\x08\x00" + bytes(100))


# --- back-pressure: nothing grows without bound --------------------------------------------


class Sink(NetClientState):
    driver = "sink"

    def __init__(self, net: NetState, busy: bool) -> None:
        super().__init__(net, "sink", "sink")
        self.busy = busy
        self.frames = 0

    def can_receive(self) -> bool:
        return not self.busy

    def receive(self, data: bytes) -> int:
        if self.busy:
            return 0
        self.frames += 1
        return len(data)


def test_a_peer_flooding_a_full_ring_is_held_in_a_bounded_queue() -> None:
    net = NetState(vm_running=lambda: True)
    core, host, _ = make()
    rx_setup(core, host)
    nic = NICState(net, "e1000e", None, MAC, core.receive, core.can_receive)
    peer = Sink(net, busy=False)
    nic.peer, peer.peer = peer, nic
    frame = MAC + bytes(6) + b"\x08\x00" + bytes(100)
    for _ in range(20 * NET_QUEUE_MAX_FRAMES):
        qemu_send_packet(peer, frame)
    assert len(nic.incoming_queue) <= NET_QUEUE_MAX_FRAMES
    assert rd(core, Reg.RDH0) == 7


def test_a_guest_flooding_a_busy_peer_is_held_by_the_ring() -> None:
    from pemu.net.net import qemu_send_packet_async

    class NetHost(FakeHost):
        def send(self, frame: bytes) -> bool:
            return qemu_send_packet_async(nic, frame, lambda _s, _r: core.tx_resume()) != 0

    net = NetState(vm_running=lambda: True)
    host = NetHost()
    clock = FakeClock()
    core = E1000ECore(host, MAC, clock, clock.timer)
    nic = NICState(net, "e1000e", None, MAC, core.receive, core.can_receive)
    peer = Sink(net, busy=True)
    nic.peer, peer.peer = peer, nic
    tx_setup(core, count=4096)
    frame = bytes(6) + MAC + b"\x08\x00" + bytes(46)
    host.mem[TX_BUF:TX_BUF + len(frame)] = frame
    for i in range(4095):
        put_desc(host, i, TX_BUF, (1 << 24) | len(frame), 0)
    for _ in range(10):
        wr(core, Reg.TDT0, 4095)
        while host.scheduled:
            host.scheduled.pop()()
    assert len(peer.incoming_queue) == 1           # one frame held; the ring waits
    peer.busy = False
    from pemu.net.net import qemu_flush_queued_packets

    qemu_flush_queued_packets(peer)
    while host.scheduled:
        host.scheduled.pop()()
    assert peer.frames == 4095
