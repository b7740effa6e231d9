"""Building the frames a transmit descriptor chain describes (QEMU's
hw/net/net_tx_pkt.c, in the e1000 family's terms): checksum insertion at
the offsets a context descriptor gives, VLAN tag insertion and TCP
segmentation offload (TSO).

Every offset comes from the guest: each is checked against the frame, and a
bad one is a :class:`TxError` the caller reports as a guest error.
"""

from __future__ import annotations

from dataclasses import dataclass

from pemu.hw.net.e1000x_common import U16, U32, internet_checksum, ones_sum

ETH_HLEN = 14
VLAN_HLEN = 4
IPV4_MIN_HLEN = 20
IPV6_HLEN = 40
TCP_MIN_HLEN = 20
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_FLAG_FIN = 0x01
TCP_FLAG_PSH = 0x08
# At most this many segments from one TSO frame (64 KiB of payload at an MSS of 64).
TSO_MAX_SEGMENTS = 1024
TSO_MIN_MSS = 64


class TxError(ValueError):
    """The guest described a frame that cannot be built as asked."""


@dataclass
class TxContext:
    """What a context descriptor sets up (82574 §7.2.10.2)."""

    ipcss: int = 0   # start of the IP header
    ipcso: int = 0   # where its checksum goes
    ipcse: int = 0   # last byte it covers (0: to the end of the IP header)
    tucss: int = 0   # start of the TCP/UDP header
    tucso: int = 0   # where its checksum goes
    tucse: int = 0   # last byte it covers (0: to the end of the frame)
    paylen: int = 0  # TSO: payload bytes after the headers
    hdr_len: int = 0  # TSO: bytes of headers copied in front of every segment
    mss: int = 0
    is_ipv4: bool = False  # TUCMD.IP
    is_tcp: bool = False   # TUCMD.TCP
    tse: bool = False      # TUCMD.TSE


def _check_range(frame: bytes | bytearray, start: int, end: int, what: str) -> None:
    if not 0 <= start <= end <= len(frame):
        raise TxError(f"{what} [{start}, {end}) outside the {len(frame)}-byte frame")


def insert_checksum(frame: bytearray, css: int, cso: int, cse: int, *, udp: bool = False) -> None:
    """Store at ``cso`` the checksum of bytes ``css``..``cse`` (inclusive; 0
    means to the end), summed with what the field holds (the guest seeds it
    with the pseudo-header sum).  A UDP checksum of 0 goes out as 0xFFFF."""
    end = len(frame) if cse == 0 else cse + 1
    _check_range(frame, css, end, "checksummed bytes")
    _check_range(frame, cso, cso + 2, "checksum field")
    value = internet_checksum(memoryview(frame)[css:end])
    if udp and value == 0:
        value = U16
    frame[cso:cso + 2] = value.to_bytes(2, "big")


def insert_vlan(frame: bytes | bytearray, tpid: int, tci: int) -> bytes:
    """The frame with an 802.1Q tag (``tpid``, ``tci``) after the MAC addresses."""
    if len(frame) < 12:
        raise TxError(f"a {len(frame)}-byte frame has no room for a VLAN tag")
    return bytes(frame[:12]) + tpid.to_bytes(2, "big") + (tci & U16).to_bytes(2, "big") + bytes(frame[12:])


def _pseudo_header_sum(seg: bytearray, ctx: TxContext, proto: int, l4_len: int) -> int:
    ip = ctx.ipcss
    if ctx.is_ipv4:
        addrs = seg[ip + 12:ip + 20]
    else:
        addrs = seg[ip + 8:ip + 40]
    return ones_sum(addrs, proto + l4_len)


def _fix_ipv4_header(seg: bytearray, ctx: TxContext, ident: int) -> None:
    ip = ctx.ipcss
    seg[ip + 2:ip + 4] = (len(seg) - ip).to_bytes(2, "big")
    seg[ip + 4:ip + 6] = (ident & U16).to_bytes(2, "big")
    ihl_end = ip + (seg[ip] & 0xF) * 4
    seg[ctx.ipcso:ctx.ipcso + 2] = b"\0\0"
    insert_checksum(seg, ip, ctx.ipcso, ctx.ipcse if ctx.ipcse else ihl_end - 1)


def tso_segments(frame: bytes | bytearray, ctx: TxContext) -> list[bytes]:
    """Cut a TSO frame into MSS-sized TCP segments with the headers copied,
    lengths, IPv4 identification, sequence numbers and flags fixed, and the
    IP and TCP checksums computed (82574 §7.3.6)."""
    if not ctx.is_tcp:
        raise TxError("TSO of a non-TCP frame is not modelled")
    hdr = ctx.hdr_len
    ip, tcp = ctx.ipcss, ctx.tucss
    min_ip = IPV4_MIN_HLEN if ctx.is_ipv4 else IPV6_HLEN
    if not (ip + min_ip <= tcp and tcp + TCP_MIN_HLEN <= hdr <= len(frame)):
        raise TxError(f"TSO headers (IP at {ip}, TCP at {tcp}, {hdr} bytes) do not fit a {len(frame)}-byte frame")
    if ctx.is_ipv4 and not ip + 4 <= ctx.ipcso <= hdr - 2:
        raise TxError(f"IP checksum offset {ctx.ipcso} outside the headers")
    if not tcp <= ctx.tucso <= hdr - 2:
        raise TxError(f"TCP checksum offset {ctx.tucso} outside the headers")
    if ctx.mss < TSO_MIN_MSS:
        raise TxError(f"TSO with an MSS of {ctx.mss}")
    payload = memoryview(bytes(frame))[hdr:]
    count = max(1, -(-len(payload) // ctx.mss))
    if count > TSO_MAX_SEGMENTS:
        raise TxError(f"TSO into {count} segments")
    header = bytes(frame[:hdr])
    ident = int.from_bytes(header[ip + 4:ip + 6], "big") if ctx.is_ipv4 else 0
    seq = int.from_bytes(header[tcp + 4:tcp + 8], "big")
    flags = header[tcp + 13]
    out: list[bytes] = []
    for n in range(count):
        chunk = payload[n * ctx.mss:(n + 1) * ctx.mss]
        seg = bytearray(header)
        seg += chunk
        if ctx.is_ipv4:
            _fix_ipv4_header(seg, ctx, ident + n)
        else:
            seg[ip + 4:ip + 6] = (len(seg) - ip - IPV6_HLEN).to_bytes(2, "big")
        seg[tcp + 4:tcp + 8] = ((seq + n * ctx.mss) & U32).to_bytes(4, "big")
        if n != count - 1:
            seg[tcp + 13] = flags & ~(TCP_FLAG_FIN | TCP_FLAG_PSH)
        seg[ctx.tucso:ctx.tucso + 2] = b"\0\0"
        l4 = memoryview(seg)[tcp:]
        total = ones_sum(l4, _pseudo_header_sum(seg, ctx, IPPROTO_TCP, len(l4)))
        seg[ctx.tucso:ctx.tucso + 2] = (~total & U16).to_bytes(2, "big")
        out.append(bytes(seg))
    return out


def offload_checksums(frame: bytearray, ctx: TxContext, *, ixsm: bool, txsm: bool) -> None:
    """The checksums a data descriptor's POPTS asks for, at the context's
    offsets: IXSM the IPv4 header's, TXSM the TCP/UDP one (over a field the
    guest seeded with the pseudo-header sum)."""
    if ixsm:
        ihl_end = ctx.ipcse if ctx.ipcse else ctx.ipcss + IPV4_MIN_HLEN - 1
        if ctx.ipcss < len(frame) and ctx.ipcse == 0:
            ihl_end = ctx.ipcss + (frame[ctx.ipcss] & 0xF) * 4 - 1
        _check_range(frame, ctx.ipcso, ctx.ipcso + 2, "IP checksum field")
        frame[ctx.ipcso:ctx.ipcso + 2] = b"\0\0"
        insert_checksum(frame, ctx.ipcss, ctx.ipcso, ihl_end)
    if txsm:
        insert_checksum(frame, ctx.tucss, ctx.tucso, ctx.tucse, udp=not ctx.is_tcp)
