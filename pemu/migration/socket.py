"""The ``tcp:HOST:PORT`` transport (QEMU's migration/socket.c).

Outgoing connects to HOST:PORT; incoming listens on it (``tcp::PORT`` and
``tcp:0.0.0.0:PORT`` on every IPv4 address, ``tcp:[::1]:PORT`` on IPv6,
port 0 for any free port, shown by ``info migrate``) and takes one
connection.
"""

from __future__ import annotations

import socket
from typing import BinaryIO

from pemu.migration.channel import FdSink, IncomingChannel, MigrationChannelError, OutgoingChannel

CONNECT_TIMEOUT_S = 30.0


def parse_inet(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); an empty host is ""."""
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise MigrationChannelError(f"error parsing IPv6 address '{spec}'")
        port_text = rest[1:]
    else:
        host, sep, port_text = spec.rpartition(":")
        if not sep:
            raise MigrationChannelError(f"error parsing address '{spec}'")
    if not port_text.isdigit():
        raise MigrationChannelError(f"error parsing port in address '{spec}'")
    port = int(port_text)
    if port > 65535:
        raise MigrationChannelError(f"port {port} out of range")
    return host, port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SocketOutgoing(OutgoingChannel):
    def __init__(self, spec: str) -> None:
        host, port = parse_inet(spec)
        host = host or "localhost"
        try:
            self.sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        except OSError as e:
            raise MigrationChannelError(
                f"Failed to connect to '{_display(host, port)}': {e.strerror or e}") from None
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sink = FdSink(self.sock.fileno())
        self._closed = False

    @property
    def sink(self) -> FdSink:
        return self._sink

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        # The peer reads to the end marker and closes: wait for that, so that
        # "completed" means the destination has the whole stream.
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(CONNECT_TIMEOUT_S)
            while self.sock.recv(4096):
                pass
        except OSError:
            pass  # the bytes are sent; a peer that went away is the destination's failure

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()


class SocketIncoming(IncomingChannel):
    def __init__(self, spec: str) -> None:
        host, port = parse_inet(spec)
        family = _family(host)
        bind_host = host or "0.0.0.0"
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((bind_host, port))
            self.listener.listen(1)
        except OSError as e:
            self.listener.close()
            if isinstance(e, socket.gaierror):
                raise MigrationChannelError(f"address resolution failed for {host}:{port}: {e.strerror}") from None
            raise MigrationChannelError(f"Failed to bind socket: {e.strerror or e}") from None
        self.host = bind_host
        self.port = int(self.listener.getsockname()[1])
        self.conn: socket.socket | None = None
        self._file: BinaryIO | None = None

    def ready_fd(self) -> int | None:
        return self.listener.fileno() if self.conn is None else None

    def accept(self) -> None:
        self.conn, _peer = self.listener.accept()
        self.conn.setblocking(True)
        self.listener.close()
        self._file = self.conn.makefile("rb")

    @property
    def source(self) -> BinaryIO:
        assert self._file is not None, "accept() first"
        return self._file

    def address(self) -> str:
        return f"tcp:{_display(self.host, self.port)}"

    def close(self) -> None:
        self.listener.close()
        if self._file is not None:
            self._file.close()
        if self.conn is not None:
            self.conn.close()
