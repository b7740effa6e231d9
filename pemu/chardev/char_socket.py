"""The socket back-end (QEMU's chardev/char-socket.c): unix and tcp streams.

``server=on`` listens and serves one client at a time: while a client is
connected the listening socket is not watched (further clients wait in the
kernel's backlog), and when it disconnects the front-end gets CLOSED and
the chardev listens again.  With ``wait=on`` (the default for a server)
opening blocks until the first client connects, before the VM starts, as
QEMU does.  ``server=off`` connects once at start; failing to connect is a
user error; a lost connection is not re-established.

Output to a client that does not read is buffered up to a limit, then
dropped; output while no client is connected is dropped.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from pemu.chardev.char import ChardevOptions, ChrEvent
from pemu.chardev.char_fd import FdChardev
from pemu.util.error import UserError, prog_name
from pemu.util.main_loop import main_loop

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 108
PORT_MAX = 65535


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def describe(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class InetAddress:
    host: str  # "" means every local address (server) / localhost (client)
    port: str

    def describe(self) -> str:
        return f"tcp:{self.host}:{self.port}"


SocketAddress = UnixAddress | InetAddress


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


class SocketChardev(FdChardev):
    backend_name = "socket"

    def __init__(
        self,
        label: str,
        address: SocketAddress,
        *,
        server: bool,
        wait: bool = True,
        nodelay: bool = False,
    ) -> None:
        super().__init__(label)
        self.address = address
        self.is_server = server
        self.wait = wait and server
        self.nodelay = nodelay
        self.listener: socket.socket | None = None
        self.connection: socket.socket | None = None
        self.peer: str | None = None
        self._unlink_on_close: str | None = None
        if server:
            self.listener = self._listen()
        self._update_filename()

    @classmethod
    def from_opts(cls, label: str, opts: ChardevOptions) -> SocketChardev:
        path, host, port = opts.get("path"), opts.get("host"), opts.get("port")
        if path is not None and host is not None:
            raise UserError("None or one of 'path', 'fd' or 'host' option required.")
        if path is None and host is None:
            raise UserError("chardev: socket: no host given")
        if host is not None and not port:
            raise UserError("chardev: socket: no port given")
        if port is not None and port.isdigit() and int(port) > PORT_MAX:
            # getaddrinfo would take it modulo 65536 and listen on another port.
            raise UserError(f"port {port} out of range")
        for unsupported in ("telnet", "reconnect"):
            if opts.has(unsupported) and opts.get(unsupported) not in ("off", "0"):
                raise UserError(f"chardev: socket: '{unsupported}' is not supported")
        server = opts.get_bool("server", False)
        if not server and opts.has("wait"):
            raise UserError("'wait' option is incompatible with socket in client connect mode")
        if opts.has("delay") and opts.has("nodelay"):
            raise UserError("'delay' and 'nodelay' are mutually exclusive")
        nodelay = opts.get_bool("nodelay", False) or not opts.get_bool("delay", True)
        address: SocketAddress
        if path is not None:
            address = UnixAddress(path)
        else:
            assert host is not None and port is not None
            address = InetAddress(host, port)
        return cls(label, address, server=server, wait=opts.get_bool("wait", True), nodelay=nodelay)

    # -- addresses --------------------------------------------------------------
    @property
    def local_address(self) -> str | tuple[str, int] | None:
        """Where the server listens (useful with port 0), or the client's own end."""
        sock = self.listener or self.connection
        return sock.getsockname() if sock is not None else None

    def _update_filename(self) -> None:
        where = self.address.describe()
        if self.is_server:
            where += ",server=on"
        if self.connection is None:
            self.filename = f"disconnected:{where}"
        elif self.peer:
            self.filename = f"{where} <-> {self.peer}"
        else:
            self.filename = where

    def _resolve(self, passive: bool) -> list[tuple[Any, ...]]:
        assert isinstance(self.address, InetAddress)
        host = self.address.host or (None if not passive else "0.0.0.0")
        try:
            return socket.getaddrinfo(
                host, self.address.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                socket.AI_PASSIVE if passive else 0,
            )
        except socket.gaierror as exc:
            raise UserError(
                f"address resolution failed for {self.address.host}:{self.address.port}: {exc.strerror}"
            ) from None

    def _check_unix_path(self, path: str) -> None:
        if len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise UserError(f"UNIX socket path '{path}' is too long")

    # -- server side ----------------------------------------------------------
    def _listen(self) -> socket.socket:
        if isinstance(self.address, UnixAddress):
            path = self.address.path
            self._check_unix_path(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise UserError(f"Failed to unlink socket {path}: {_strerror(exc)}") from None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                sock.listen(1)
            except OSError as exc:
                sock.close()
                raise UserError(f"Failed to bind socket to {path}: {_strerror(exc)}") from None
            self._unlink_on_close = path
        else:
            last_error: OSError | None = None
            bound: socket.socket | None = None
            for family, kind, proto, _, sockaddr in self._resolve(passive=True):
                candidate = socket.socket(family, kind, proto)
                try:
                    candidate.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    candidate.bind(sockaddr)
                    candidate.listen(1)
                except OSError as exc:
                    candidate.close()
                    last_error = exc
                    continue
                bound = candidate
                break
            if bound is None:
                reason = _strerror(last_error) if last_error else "no address"
                raise UserError(f"Failed to bind socket: {reason}")
            sock = bound
        sock.setblocking(False)
        return sock

    def _watch_listener(self, on: bool) -> None:
        if self.listener is not None:
            main_loop().set_fd_handler(self.listener.fileno(), self._on_accept if on else None)

    def _on_accept(self) -> None:
        if self.listener is None:
            return
        try:
            conn, peer = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # e.g. ECONNABORTED: the client gave up already
        if self.connection is not None:
            conn.close()  # one client at a time
            return
        self._connected(conn, peer)

    def wait_connected(self) -> None:
        """Block until a client connects (server with wait=on)."""
        if self.listener is None or self.connection is not None:
            return
        sys.stderr.write(f"{prog_name()}: info: waiting for connection on: {self.filename}\n")
        sys.stderr.flush()
        self.listener.setblocking(True)
        try:
            conn, peer = self.listener.accept()
        finally:
            self.listener.setblocking(False)
        self._connected(conn, peer)

    # -- client side ----------------------------------------------------------
    def _connect(self) -> None:
        if isinstance(self.address, UnixAddress):
            path = self.address.path
            self._check_unix_path(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError as exc:
                sock.close()
                raise UserError(f"Failed to connect to '{path}': {_strerror(exc)}") from None
            self._connected(sock, path)
            return
        last_error: OSError | None = None
        for family, kind, proto, _, sockaddr in self._resolve(passive=False):
            sock = socket.socket(family, kind, proto)
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            self._connected(sock, sockaddr)
            return
        reason = _strerror(last_error) if last_error else "no address"
        raise UserError(f"Failed to connect to '{self.address.host}:{self.address.port}': {reason}")

    # -- connection life cycle ---------------------------------------------------
    def open(self) -> None:
        if self.is_server:
            if self.wait:
                self.wait_connected()
            else:
                self._watch_listener(True)
        else:
            self._connect()

    def _connected(self, conn: socket.socket, peer: object) -> None:
        conn.setblocking(False)
        if self.nodelay and conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = conn
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = str(peer) if peer else None
        self._watch_listener(False)
        self._update_filename()
        self.set_fds(conn.fileno(), conn.fileno(), out_blocking=False)
        self.be_event(ChrEvent.OPENED)

    def disconnect(self) -> None:
        """Drop the current connection; a server listens again."""
        conn = self.connection
        if conn is None:
            return
        self.forget_fds()
        self._pending_input.clear()
        self.connection = None
        self.peer = None
        try:
            conn.close()
        except OSError:
            pass
        self._update_filename()
        self.be_event(ChrEvent.CLOSED)
        if self.is_server:
            self._watch_listener(True)

    def input_eof(self) -> None:
        self.disconnect()

    def _output_failed(self, exc: OSError) -> None:
        # Called from a front-end's write: drop output now, tear the
        # connection down from the main loop rather than under the writer.
        self.fd_out = None
        conn = self.connection

        def later() -> None:
            if self.connection is conn:
                self.disconnect()

        main_loop().bh_schedule(later)

    def close(self) -> None:
        self._watch_listener(False)
        conn = self.connection
        super().close()
        if conn is not None:
            conn.close()
            self.connection = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self._unlink_on_close is not None:
            try:
                os.unlink(self._unlink_on_close)
            except OSError:
                pass
            self._unlink_on_close = None
