"""-netdev user: user-mode networking on libslirp (QEMU's net/slirp.c).

Options and messages follow QEMU; beyond QEMU, ``hostfwd`` takes an IPv6
host address in brackets (``hostfwd=tcp:[::1]:5556-:22``, through
``slirp_add_hostxfwd``).  Every libslirp call runs on the main-loop thread:
frames from the NIC are queued (bounded) and fed to slirp by a bottom half,
slirp's sockets are polled by the main loop (a PollSource), its timers are
QEMUTimers.
"""

from __future__ import annotations

import ctypes
import ipaddress
import selectors
import socket
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pemu.net import libslirp as ls
from pemu.net.net import NetClientState, NetState, qemu_flush_queued_packets, qemu_send_packet
from pemu.util import timer
from pemu.util.error import UserError, error_report
from pemu.util.main_loop import MainLoop

# Frames from the guest waiting for the main loop (beyond it the NIC holds them).
SLIRP_INPUT_QUEUE_MAX = 256


@dataclass(frozen=True)
class HostFwd:
    is_udp: bool
    host_addr: str  # "" for any (IPv4), an IPv4 or IPv6 address
    host_port: int
    guest_addr: str  # "" for the DHCP start address
    guest_port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host_addr


class HostFwdSyntaxError(ValueError):
    pass


def _split(text: str, sep: str, what: str) -> tuple[str, str]:
    head, found, tail = text.partition(sep)
    if not found:
        raise HostFwdSyntaxError(what)
    return head, tail


def _host_address(text: str) -> tuple[str, str]:
    """The host address and what follows its ':' (brackets for IPv6)."""
    if text.startswith("["):
        addr, found, tail = text[1:].partition("]")
        if not found or not tail.startswith(":"):
            raise HostFwdSyntaxError("Bad host address")
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise HostFwdSyntaxError("Bad host address") from None
        return addr, tail[1:]
    addr, tail = _split(text, ":", "Missing : separator")
    if addr and not _is_ipv4(addr):
        raise HostFwdSyntaxError("Bad host address")
    return addr, tail


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def _port(text: str, lowest: int, what: str) -> int:
    try:
        port = int(text, 0)
    except ValueError:
        raise HostFwdSyntaxError(what) from None
    if not lowest <= port <= 65535:
        raise HostFwdSyntaxError(what)
    return port


def _protocol(text: str) -> bool:
    proto, _, _ = text.partition(":")
    if ":" not in text:
        raise HostFwdSyntaxError("No : separators")
    if proto in ("", "tcp"):
        return False
    if proto == "udp":
        return True
    raise HostFwdSyntaxError("Bad protocol name")


def parse_hostfwd(rule: str) -> HostFwd:
    """``[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport``."""
    is_udp = _protocol(rule)
    rest = rule.partition(":")[2]
    host_addr, rest = _host_address(rest)
    host_port_text, rest = _split(rest, "-", "Bad host port separator")
    host_port = _port(host_port_text, 0, "Bad host port")
    if rest.startswith("["):  # beyond QEMU: the guest's IPv6 address
        guest_addr, found, guest_port_text = rest[1:].partition("]:")
        try:
            ipaddress.IPv6Address(guest_addr)
        except ValueError:
            raise HostFwdSyntaxError("Bad guest address") from None
        if not found or ":" not in host_addr:
            raise HostFwdSyntaxError("Bad guest address")
    else:
        guest_addr, guest_port_text = _split(rest, ":", "Missing guest address")
        if guest_addr and not _is_ipv4(guest_addr):
            raise HostFwdSyntaxError("Bad guest address")
    guest_port = _port(guest_port_text, 1, "Bad guest port")
    return HostFwd(is_udp, host_addr, host_port, guest_addr, guest_port)


def parse_hostfwd_remove(rule: str) -> tuple[bool, str, int]:
    """``[tcp|udp]:[hostaddr]:hostport`` (hostfwd_remove)."""
    is_udp = _protocol(rule)
    host_addr, port_text = _host_address(rule.partition(":")[2])
    return is_udp, host_addr, _port(port_text, 0, "Bad host port")


DEFAULT_GUEST_MAC = bytes.fromhex("525400123456")


def slaac_address(net6: ipaddress.IPv6Network, mac: bytes) -> ipaddress.IPv6Address:
    """The address a guest with ``mac`` configures in ``net6`` (modified EUI-64)."""
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return ipaddress.IPv6Address(int(net6.network_address) | int.from_bytes(eui, "big"))


def _in_addr(text: str) -> ls.InAddr:
    return ls.InAddr(struct.unpack("=I", socket.inet_aton(text))[0])


def _in6_addr(addr: ipaddress.IPv6Address) -> ls.In6Addr:
    value = ls.In6Addr()
    ctypes.memmove(ctypes.byref(value), addr.packed, 16)
    return value


def _sockaddr_in(addr: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(addr) + bytes(8)


def _sockaddr_in6(addr: str, port: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, addr) + struct.pack("=I", 0))


@dataclass
class SlirpAddressing:
    net: ipaddress.IPv4Network
    host: ipaddress.IPv4Address
    dhcp_start: ipaddress.IPv4Address
    dns: ipaddress.IPv4Address
    ipv4: bool
    ipv6: bool
    net6: ipaddress.IPv6Network
    host6: ipaddress.IPv6Address
    dns6: ipaddress.IPv6Address


def _on_off(opts: dict[str, str], key: str, default: bool) -> bool:
    text = opts.get(key)
    if text is None:
        return default
    if text in ("on", "yes", "true", "y"):
        return True
    if text in ("off", "no", "false", "n"):
        return False
    raise UserError(f"Parameter '{key}' expects 'on' or 'off'")


def _ipv4_in(net: ipaddress.IPv4Network, key: str, text: str | None, default_host: int) -> ipaddress.IPv4Address:
    if text is None:
        return net.network_address + default_host
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise UserError(f"Failed to parse {key} address '{text}'") from None
    if addr not in net:
        raise UserError(f"The {key} address '{text}' is not in the network {net.with_prefixlen}")
    return addr


def parse_addressing(opts: dict[str, str]) -> SlirpAddressing:
    """net/host/dhcpstart/dns/ipv6-* with QEMU's defaults (10.0.2.0/24, .2, .15, .3; fec0::/64)."""
    net_text = opts.get("net", "10.0.2.0/24")
    if "/" not in net_text:
        net_text += "/24"
    try:
        net = ipaddress.IPv4Network(net_text, strict=False)
    except ValueError:
        raise UserError(f"Invalid net address '{opts.get('net')}'") from None
    if net.prefixlen > 30:
        raise UserError(f"Invalid net address '{opts.get('net')}'")
    host = _ipv4_in(net, "host", opts.get("host"), 2)
    dhcp_start = _ipv4_in(net, "dhcpstart", opts.get("dhcpstart"), 15)
    dns = _ipv4_in(net, "dns", opts.get("dns"), 3)
    ipv4 = _on_off(opts, "ipv4", True)
    ipv6 = _on_off(opts, "ipv6", True)
    if not ipv4 and not ipv6:
        raise UserError("IPv4 and IPv6 cannot both be disabled")
    net6_text = opts.get("ipv6-net")
    if net6_text is None:
        # the older spelling: ipv6-prefix=ADDR,ipv6-prefixlen=N
        net6_text = f"{opts.get('ipv6-prefix', 'fec0::')}/{opts.get('ipv6-prefixlen', '64')}"
    elif "ipv6-prefix" in opts or "ipv6-prefixlen" in opts:
        raise UserError("ipv6-net and ipv6-prefix/ipv6-prefixlen are mutually exclusive")
    if "/" not in net6_text:
        net6_text += "/64"
    try:
        net6 = ipaddress.IPv6Network(net6_text, strict=False)
    except ValueError:
        raise UserError("Parameter 'ipv6-prefix' expects a valid IPv6 prefix") from None
    if net6.prefixlen > 126:
        raise UserError("Parameter 'ipv6-prefixlen' expects a value between 0 and 126")
    try:
        host6 = ipaddress.IPv6Address(opts.get("ipv6-host", str(net6.network_address + 2)))
        dns6 = ipaddress.IPv6Address(opts.get("ipv6-dns", str(net6.network_address + 3)))
    except ValueError as e:
        raise UserError(f"Failed to parse IPv6 address: {e}") from None
    if host6 not in net6:
        raise UserError("IPv6 Host doesn't belong to network")
    if dns6 not in net6:
        raise UserError("IPv6 DNS doesn't belong to network")
    return SlirpAddressing(net, host, dhcp_start, dns, ipv4, ipv6, net6, host6, dns6)


USER_NETDEV_KEYS = frozenset({
    "type", "id", "net", "host", "dhcpstart", "dns", "ipv4", "ipv6", "ipv6-net", "ipv6-prefix",
    "ipv6-prefixlen", "ipv6-host", "ipv6-dns", "hostname", "restrict", "hostfwd", "guestfwd",
    "domainname", "tftp", "tftp-server-name", "bootfile",
})


class SlirpNetClient(NetClientState):
    """The ``user`` back-end: one libslirp instance."""

    driver = "user"

    def __init__(self, net: NetState, name: str | None, opts: dict[str, str], loop: MainLoop,
                 hostfwds: Sequence[str] = (), guestfwds: Sequence[str] = (),
                 dnssearch: Sequence[str] = ()) -> None:
        try:
            self.lib = ls.libslirp()
        except ls.LibslirpMissing as e:
            raise UserError(str(e)) from None
        for key in opts:
            if key not in USER_NETDEV_KEYS:
                raise UserError(f"Invalid parameter '{key}'")
        addressing = parse_addressing(opts)
        self.addressing = addressing
        restricted = _on_off(opts, "restrict", False)
        super().__init__(net, "user", name)
        self.loop = loop
        self.info_str = f"net={addressing.net.network_address},restrict={'on' if restricted else 'off'}"
        self._input: deque[bytes] = deque()
        self._input_scheduled = False
        self._timers: dict[int, timer.QEMUTimer] = {}
        self._next_timer = 1
        self._poll_fds: list[tuple[int, int]] = []
        self._ready: list[int] = []
        self._hostfwds: list[HostFwd] = []
        self.guestfwds: list[Any] = []  # pemu.net.guestfwd.GuestFwd
        self._keep: list[Any] = []  # C strings and buffers slirp points at
        self.slirp: int | None = None

        cfg = ls.SlirpConfig()
        cfg.version = 4
        cfg.restricted = int(restricted)
        cfg.in_enabled = addressing.ipv4
        cfg.vnetwork = _in_addr(str(addressing.net.network_address))
        cfg.vnetmask = _in_addr(str(addressing.net.netmask))
        cfg.vhost = _in_addr(str(addressing.host))
        cfg.in6_enabled = addressing.ipv6
        cfg.vprefix_addr6 = _in6_addr(addressing.net6.network_address)
        cfg.vprefix_len = addressing.net6.prefixlen
        cfg.vhost6 = _in6_addr(addressing.host6)
        hostname = opts.get("hostname")
        if hostname is not None:
            cfg.vhostname = self._cstr(hostname)
        domain = opts.get("domainname")
        if domain is not None:
            cfg.vdomainname = self._cstr(domain)
        for key, field_name in (("tftp", "tftp_path"), ("tftp-server-name", "tftp_server_name"),
                                ("bootfile", "bootfile")):
            value = opts.get(key)
            if value is not None:
                setattr(cfg, field_name, self._cstr(value))
        if dnssearch:
            names = (ctypes.c_char_p * (len(dnssearch) + 1))(*[self._cstr(d) for d in dnssearch], None)
            self._keep.append(names)
            cfg.vdnssearch = ctypes.cast(names, ctypes.POINTER(ctypes.c_char_p))
        cfg.vdhcp_start = _in_addr(str(addressing.dhcp_start))
        cfg.vnameserver = _in_addr(str(addressing.dns))
        cfg.vnameserver6 = _in6_addr(addressing.dns6)

        self._cb = ls.SlirpCb()
        self._cb.send_packet = ls.SendPacketFn(self._send_packet)
        self._cb.guest_error = ls.GuestErrorFn(self._guest_error)
        self._cb.clock_get_ns = ls.ClockGetNsFn(self._clock_get_ns)
        self._cb.timer_new = ls.TimerNewFn(0)
        self._cb.timer_free = ls.TimerFreeFn(self._timer_free)
        self._cb.timer_mod = ls.TimerModFn(self._timer_mod)
        self._cb.register_poll_fd = ls.PollFdFn(self._noop_fd)
        self._cb.unregister_poll_fd = ls.PollFdFn(self._noop_fd)
        self._cb.notify = ls.NotifyFn(self._notify)
        self._cb.init_completed = ls.InitCompletedFn(0)
        self._cb.timer_new_opaque = ls.TimerNewOpaqueFn(self._timer_new_opaque)
        self._add_poll = ls.AddPollFn(self._add_poll_fd)
        self._get_revents = ls.GetREventsFn(self._get_revents_fd)
        slirp = self.lib.slirp_new(ctypes.byref(cfg), ctypes.byref(self._cb), None)
        if not slirp:
            super().delete()
            raise UserError("user networking could not be set up (slirp_new failed)")
        self.slirp = slirp
        loop.poll_sources.append(self)
        try:
            for rule in hostfwds:
                self.add_hostfwd(rule)
            for rule in guestfwds:
                self.add_guestfwd(rule)
        except UserError:
            self.delete()
            raise

    def _cstr(self, text: str) -> bytes:
        data = text.encode()
        self._keep.append(data)
        return data

    # -- slirp's callbacks (all on the main-loop thread) ------------------------------------
    def _send_packet(self, buf: int, length: int, _opaque: int) -> int:
        try:
            qemu_send_packet(self, ctypes.string_at(buf, length))
        except Exception as e:  # a callback must not unwind through C
            error_report(f"user networking: {e}")
        return length

    def _guest_error(self, msg: bytes, _opaque: int) -> None:
        from pemu.util import log

        log.qemu_log_mask(log.LOG_GUEST_ERROR, msg.decode(errors="replace") + "\n")

    def _clock_get_ns(self, _opaque: int) -> int:
        return timer.qemu_clock_get_ns(timer.QEMU_CLOCK_REALTIME)

    def _timer_new_opaque(self, timer_id: int, cb_opaque: int, _opaque: int) -> int:
        handle = self._next_timer
        self._next_timer += 1
        slirp_ref = self

        def fire() -> None:
            if slirp_ref.slirp is not None:
                slirp_ref.lib.slirp_handle_timer(slirp_ref.slirp, timer_id, cb_opaque)

        self._timers[handle] = timer.QEMUTimer(timer.QEMU_CLOCK_REALTIME, fire, timer.SCALE_MS)
        return handle

    def _timer_free(self, handle: int, _opaque: int) -> None:
        t = self._timers.pop(handle, None)
        if t is not None:
            t.delete()

    def _timer_mod(self, handle: int, expire_ms: int, _opaque: int) -> None:
        t = self._timers.get(handle)
        if t is not None:
            t.mod(expire_ms)

    def _noop_fd(self, _fd: int, _opaque: int) -> None:
        pass

    def _notify(self, _opaque: int) -> None:
        self.loop.notify()

    def _add_poll_fd(self, fd: int, events: int, _opaque: int) -> int:
        mask = 0
        if events & (ls.SLIRP_POLL_IN | ls.SLIRP_POLL_PRI):
            mask |= selectors.EVENT_READ
        if events & ls.SLIRP_POLL_OUT:
            mask |= selectors.EVENT_WRITE
        self._poll_fds.append((fd, mask))
        return len(self._poll_fds) - 1

    def _get_revents_fd(self, index: int, _opaque: int) -> int:
        if not 0 <= index < len(self._ready):
            return 0
        mask = self._ready[index]
        revents = 0
        if mask & selectors.EVENT_READ:
            revents |= ls.SLIRP_POLL_IN
        if mask & selectors.EVENT_WRITE:
            revents |= ls.SLIRP_POLL_OUT
        return revents

    # -- the main loop's PollSource ------------------------------------------------------------
    def fill(self) -> tuple[list[tuple[int, int]], float | None]:
        self._poll_fds = []
        if self.slirp is None:
            return [], None
        timeout = ctypes.c_uint32(1000)  # TCP timers advance only in pollfds_poll: wake at least each second
        self.lib.slirp_pollfds_fill(self.slirp, ctypes.byref(timeout), self._add_poll, None)
        return list(self._poll_fds), timeout.value / 1000

    def dispatch(self, ready: list[int]) -> None:
        if self.slirp is None:
            return
        self._ready = ready
        self.lib.slirp_pollfds_poll(self.slirp, 0, self._get_revents, None)
        self._ready = []

    # -- frames from the guest -------------------------------------------------------------------
    def can_receive(self) -> bool:
        return len(self._input) < SLIRP_INPUT_QUEUE_MAX

    def receive(self, data: bytes) -> int:
        # Called on whatever thread transmits (a vCPU's): slirp is fed on the main loop.
        if len(self._input) >= SLIRP_INPUT_QUEUE_MAX:
            return 0
        self._input.append(data)
        if not self._input_scheduled:
            self._input_scheduled = True
            self.loop.bh_schedule(self._input_bh)
        return len(data)

    def _input_bh(self) -> None:
        self._input_scheduled = False
        while self._input and self.slirp is not None:
            frame = self._input.popleft()
            self.lib.slirp_input(self.slirp, frame, len(frame))
        qemu_flush_queued_packets(self)

    # -- forwarding rules -------------------------------------------------------------------------
    def add_hostfwd(self, rule: str) -> None:
        assert self.slirp is not None
        try:
            fwd = parse_hostfwd(rule)
        except HostFwdSyntaxError as e:
            raise UserError(f"Invalid host forwarding rule '{rule}' ({e})") from None
        guest = fwd.guest_addr or str(self.addressing.dhcp_start)
        if fwd.is_ipv6:
            # libslirp 4.7 forwards an IPv6 host socket only to the guest's IPv6
            # address: by default the SLAAC address of QEMU's first default MAC.
            if not fwd.guest_addr:
                guest = str(slaac_address(self.addressing.net6, DEFAULT_GUEST_MAC))
            haddr = _sockaddr_in6(fwd.host_addr, fwd.host_port)
            gaddr = _sockaddr_in6(guest, fwd.guest_port) if ":" in guest else _sockaddr_in(guest, fwd.guest_port)
            flags = (ls.SLIRP_HOSTFWD_UDP if fwd.is_udp else 0) | ls.SLIRP_HOSTFWD_V6ONLY
            ret = self.lib.slirp_add_hostxfwd(self.slirp, haddr, len(haddr), gaddr, len(gaddr), flags)
        else:
            ret = self.lib.slirp_add_hostfwd(self.slirp, int(fwd.is_udp), _in_addr(fwd.host_addr or "0.0.0.0"),
                                             fwd.host_port, _in_addr(guest), fwd.guest_port)
        if ret < 0:
            raise UserError(f"Could not set up host forwarding rule '{rule}'")
        self._hostfwds.append(fwd)

    def remove_hostfwd(self, rule: str) -> bool:
        """hostfwd_remove: False when no such rule exists (or the syntax is bad: ValueError)."""
        assert self.slirp is not None
        is_udp, host_addr, port = parse_hostfwd_remove(rule)
        if ":" in host_addr:
            haddr = _sockaddr_in6(host_addr, port)
            flags = (ls.SLIRP_HOSTFWD_UDP if is_udp else 0) | ls.SLIRP_HOSTFWD_V6ONLY
            ret = self.lib.slirp_remove_hostxfwd(self.slirp, haddr, len(haddr), flags)
        else:
            ret = self.lib.slirp_remove_hostfwd(self.slirp, int(is_udp), _in_addr(host_addr or "0.0.0.0"), port)
        return ret == 0

    def add_guestfwd(self, rule: str) -> None:
        from pemu.net.guestfwd import add_guestfwd

        add_guestfwd(self, rule)

    # -- teardown ----------------------------------------------------------------------------------
    def cleanup(self) -> None:
        for fwd in self.guestfwds:
            fwd.close()
        self.guestfwds.clear()
        if self in self.loop.poll_sources:
            self.loop.poll_sources.remove(self)
        for t in self._timers.values():
            t.delete()
        self._timers.clear()
        if self.slirp is not None:
            slirp, self.slirp = self.slirp, None
            self.lib.slirp_cleanup(slirp)
        self._input.clear()
