"""Socket back-ends: -netdev stream, dgram and the legacy socket (QEMU's net/stream.c,
net/dgram.c, net/socket.c).

``stream`` frames each Ethernet frame as a 4-byte big-endian length and the
frame (what passt and QEMU speak); ``dgram`` sends one frame per datagram.
The legacy ``socket`` forms map onto them: ``listen=``/``connect=`` are a
stream server/client, ``udp=`` with ``localaddr=`` a datagram pair.

Back-pressure both ways: a frame the socket cannot take now makes the NIC
hold (receive returns 0, flushed when the socket is writable again); a frame
from the socket that the NIC holds stops reading from the socket until the
NIC takes it.  Buffers hold at most one frame each way.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

from pemu.net.net import NET_BUFSIZE, NetClientState, NetState, qemu_flush_queued_packets, qemu_send_packet_async
from pemu.util.error import UserError, error_report
from pemu.util.main_loop import MainLoop

_SockAddr = tuple[Any, ...] | str  # what socket.bind() takes: (host, port[, ...]) or a path
_Addr = tuple[int, _SockAddr]  # (address family, sockaddr)


def _split_host_port(text: str, what: str) -> tuple[str, int]:
    host, found, port = text.rpartition(":")
    if not found:
        raise UserError(f"{what}: host:port expected, got '{text}'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise UserError(f"{what}: invalid port '{port}'") from None
    if not 0 <= number <= 65535:
        raise UserError(f"{what}: invalid port '{port}'")
    return host, number


def _inet(host: str, port: int, passive: bool) -> _Addr:
    try:
        infos = socket.getaddrinfo(host or None, port, 0, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as e:
        raise UserError(f"address resolution failed for {host}:{port}: {e.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _socket_address(opts: dict[str, str], prefix: str, passive: bool) -> _Addr:
    """A QAPI SocketAddress given as PREFIX.type=inet|unix, .host/.port or .path."""
    kind = opts.pop(f"{prefix}.type", None)
    if kind is None:
        raise UserError(f"Parameter '{prefix}.type' is missing")
    if kind == "inet":
        host = opts.pop(f"{prefix}.host", "")
        port = opts.pop(f"{prefix}.port", None)
        if port is None:
            raise UserError(f"Parameter '{prefix}.port' is missing")
        return _inet(host, _port(port, f"{prefix}.port"), passive)
    if kind == "unix":
        path = opts.pop(f"{prefix}.path", None)
        if path is None:
            raise UserError(f"Parameter '{prefix}.path' is missing")
        return socket.AF_UNIX, path
    raise UserError(f"Parameter '{prefix}.type' does not accept value '{kind}'")


def _port(text: str, key: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise UserError(f"Parameter '{key}' expects a port number") from None
    if not 0 <= port <= 65535:
        raise UserError(f"Parameter '{key}' expects a port number")
    return port


def _describe(family: int, sockaddr: _SockAddr) -> str:
    if isinstance(sockaddr, str):  # AF_UNIX: the path
        return sockaddr
    host, port = sockaddr[:2]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def _check_unused(opts: dict[str, str]) -> None:
    for key in opts:
        raise UserError(f"Invalid parameter '{key}'")


class StreamNetClient(NetClientState):
    """-netdev stream: a byte stream carrying length-prefixed frames."""

    driver = "stream"

    def __init__(self, net: NetState, name: str | None, loop: MainLoop, addr: _Addr, server: bool,
                 model: str = "stream") -> None:
        self.loop = loop
        self.addr = addr
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._held = False  # a frame of ours waits in the peer's queue
        family, sockaddr = addr
        if server:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
                sock.listen(1)
            except OSError as e:
                sock.close()
                raise UserError(f"can't bind socket to {_describe(family, sockaddr)}: {e.strerror}") from None
            sock.setblocking(False)
            self.listener = sock
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.connect(sockaddr)
            except OSError as e:
                sock.close()
                raise UserError(f"can't connect socket to {_describe(family, sockaddr)}: {e.strerror}") from None
        super().__init__(net, model, name)
        if server:
            assert self.listener is not None
            self.info_str = f"listening on {_describe(family, self.listener.getsockname())}"
            loop.set_fd_handler(self.listener.fileno(), self._accept)
        else:
            self._connected(sock, f"connected to {_describe(family, sockaddr)}")

    def local_address(self) -> object:
        sock = self.listener or self.conn
        assert sock is not None
        return sock.getsockname()

    # -- connection ------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, peer = self.listener.accept()
        except BlockingIOError:
            return
        # One peer at a time, as QEMU: stop listening while connected.
        self.loop.set_fd_handler(self.listener.fileno(), None)
        self._connected(conn, f"connection from {_describe(self.addr[0], peer) if peer else 'unix'}")

    def _connected(self, conn: socket.socket, info: str) -> None:
        conn.setblocking(False)
        self.conn = conn
        self.info_str = info
        self._in.clear()
        self._out.clear()
        self._update_handlers()

    def _disconnect(self) -> None:
        if self.conn is None:
            return
        self.loop.set_fd_handler(self.conn.fileno(), None)
        self.conn.close()
        self.conn = None
        self._in.clear()
        self._out.clear()
        if self.listener is not None:
            self.info_str = f"listening on {_describe(self.addr[0], self.listener.getsockname())}"
            self.loop.set_fd_handler(self.listener.fileno(), self._accept)
        else:
            self.info_str = "disconnected"
        qemu_flush_queued_packets(self)  # frames for a gone peer are dropped, not held

    def _update_handlers(self) -> None:
        if self.conn is None:
            return
        read = None if self._held else self._readable
        write = self._writable if self._out else None
        self.loop.set_fd_handler(self.conn.fileno(), read, write)

    # -- host -> guest --------------------------------------------------------------------------
    def _readable(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(NET_BUFSIZE + 4)
        except BlockingIOError:
            return
        except OSError as e:
            error_report(f"netdev {self.name}: {e.strerror}")
            data = b""
        if not data:
            self._disconnect()
            return
        self._in += data
        self._deliver_frames()

    def _deliver_frames(self) -> None:
        while not self._held and len(self._in) >= 4:
            (length,) = struct.unpack("!I", self._in[:4])
            if length > NET_BUFSIZE:
                error_report(f"netdev {self.name}: frame of {length} bytes is too big, disconnecting")
                self._disconnect()
                return
            if len(self._in) < 4 + length:
                break
            frame = bytes(self._in[4:4 + length])
            del self._in[:4 + length]
            if qemu_send_packet_async(self, frame, self._sent) == 0:
                self._held = True
        self._update_handlers()

    def _sent(self, _nc: NetClientState, _size: int) -> None:
        self._held = False
        self._deliver_frames()

    # -- guest -> host ------------------------------------------------------------------------
    def receive(self, data: bytes) -> int:
        if self.conn is None:
            return len(data)  # nobody connected: dropped
        if self._out:
            return 0  # the previous frame is still going out: hold this one
        self._out += struct.pack("!I", len(data)) + data
        self._write_some()
        return len(data)

    def _write_some(self) -> None:
        assert self.conn is not None
        try:
            sent = self.conn.send(self._out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._disconnect()
            return
        del self._out[:sent]
        self._update_handlers()

    def _writable(self) -> None:
        self._write_some()
        if not self._out:
            qemu_flush_queued_packets(self)

    def cleanup(self) -> None:
        if self.conn is not None:
            self.loop.set_fd_handler(self.conn.fileno(), None)
            self.conn.close()
            self.conn = None
        if self.listener is not None:
            self.loop.set_fd_handler(self.listener.fileno(), None)
            if self.addr[0] == socket.AF_UNIX:
                try:
                    os.unlink(str(self.addr[1]))
                except OSError:
                    pass
            self.listener.close()
            self.listener = None


class DgramNetClient(NetClientState):
    """-netdev dgram: one frame per datagram between a local and a remote address."""

    driver = "dgram"

    def __init__(self, net: NetState, name: str | None, loop: MainLoop, local: _Addr, remote: _Addr | None,
                 model: str = "dgram") -> None:
        self.loop = loop
        self.remote = remote
        family, sockaddr = local
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError as e:
            sock.close()
            raise UserError(f"can't bind socket to {_describe(family, sockaddr)}: {e.strerror}") from None
        sock.setblocking(False)
        self.sock = sock
        self._pending: bytes | None = None  # a frame the socket could not take
        self._held = False
        super().__init__(net, model, name)
        where = _describe(family, sock.getsockname())
        self.info_str = f"udp={where}" + (f",remote={_describe(*remote)}" if remote else "")
        self._update_handlers()

    def _update_handlers(self) -> None:
        read = None if self._held else self._readable
        write = self._writable if self._pending is not None else None
        self.loop.set_fd_handler(self.sock.fileno(), read, write)

    def _readable(self) -> None:
        for _ in range(64):  # a fair share per wake-up
            try:
                frame, _peer = self.sock.recvfrom(NET_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ECONNREFUSED from an earlier send: datagrams go on
            if not frame:
                continue
            if qemu_send_packet_async(self, frame, self._sent) == 0:
                self._held = True
                self._update_handlers()
                return

    def _sent(self, _nc: NetClientState, _size: int) -> None:
        self._held = False
        self._update_handlers()

    def receive(self, data: bytes) -> int:
        if self.remote is None:
            return len(data)
        if self._pending is not None:
            return 0
        try:
            self.sock.sendto(data, self.remote[1])
        except BlockingIOError:
            self._pending = data
            self._update_handlers()
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EMSGSIZE):
                error_report(f"netdev {self.name}: {e.strerror}")
        return len(data)

    def _writable(self) -> None:
        data, self._pending = self._pending, None
        if data is not None and self.remote is not None:
            try:
                self.sock.sendto(data, self.remote[1])
            except BlockingIOError:
                self._pending = data
            except OSError:
                pass
        self._update_handlers()
        if self._pending is None:
            qemu_flush_queued_packets(self)

    def cleanup(self) -> None:
        self.loop.set_fd_handler(self.sock.fileno(), None)
        self.sock.close()


class SocketStreamNetClient(StreamNetClient):
    driver = "socket"


class SocketDgramNetClient(DgramNetClient):
    driver = "socket"


def net_init(kind: str, net: NetState, name: str | None, opts: dict[str, str], loop: MainLoop) -> NetClientState:
    opts = dict(opts)
    if kind == "stream":
        server = opts.pop("server", "off")
        if server not in ("on", "off", "yes", "no", "true", "false"):
            raise UserError("Parameter 'server' expects 'on' or 'off'")
        is_server = server in ("on", "yes", "true")
        addr = _socket_address(opts, "addr", is_server)
        _check_unused(opts)
        return StreamNetClient(net, name, loop, addr, is_server)
    if kind == "dgram":
        remote = _socket_address(opts, "remote", False) if "remote.type" in opts else None
        if "local.type" not in opts:
            raise UserError("Parameter 'local' is missing")
        local = _socket_address(opts, "local", True)
        _check_unused(opts)
        return DgramNetClient(net, name, loop, local, remote)
    # the legacy -netdev socket
    forms = [key for key in ("fd", "listen", "connect", "mcast", "udp") if key in opts]
    if len(forms) != 1:
        raise UserError("exactly one of listen=, connect=, mcast= or udp= is required")
    form = forms[0]
    value = opts.pop(form)
    if form in ("fd", "mcast"):
        raise UserError(f"socket {form}= is not supported by pemu yet")
    if form == "udp":
        local_text = opts.pop("localaddr", None)
        if local_text is None:
            raise UserError("localaddr= is mandatory with udp=")
        _check_unused(opts)
        lhost, lport = _split_host_port(local_text, "localaddr")
        rhost, rport = _split_host_port(value, "udp")
        return SocketDgramNetClient(net, name, loop, _inet(lhost, lport, True), _inet(rhost, rport, False),
                                    "socket")
    _check_unused(opts)
    host, port = _split_host_port(value, form)
    return SocketStreamNetClient(net, name, loop, _inet(host, port, form == "listen"), form == "listen", "socket")
