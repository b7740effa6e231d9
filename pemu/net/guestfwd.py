"""``guestfwd=[tcp]:server:port-chardev`` of -netdev user (QEMU's slirp_guestfwd).

A guest connection to server:port inside the virtual network is carried to a
character device: what the guest sends is written to the chardev, what the
chardev reads goes back to the guest as far as slirp's socket buffer takes it.
"""

from __future__ import annotations

import ctypes
import socket
from typing import TYPE_CHECKING

from pemu.net import libslirp as ls
from pemu.util.error import UserError

if TYPE_CHECKING:
    from pemu.net.slirp import SlirpNetClient


class GuestFwd:
    def __init__(self, backend: SlirpNetClient, rule: str, server: str, port: int, spec: str) -> None:
        from pemu.chardev.char_fe import CharBackend
        from pemu.chardev.registry import qemu_chr_new

        self.backend = backend
        label = f"guestfwd.tcp.{port}"
        try:
            chr_ = qemu_chr_new(label, spec)
        except UserError as e:
            raise UserError(f"Could not open guest forwarding device '{label}': {e.message}") from None
        if chr_ is None:
            raise UserError(f"Could not open guest forwarding device '{label}'")
        self.fe = CharBackend(chr_)
        self.server = ls.InAddr(int.from_bytes(socket.inet_aton(server or "0.0.0.0"), "little"))
        self.port = port
        self._write = ls.WriteCb(self._write_cb)
        assert backend.slirp is not None
        if backend.lib.slirp_add_guestfwd(backend.slirp, self._write, None, ctypes.byref(self.server), port) < 0:
            self.fe.deinit()
            raise UserError(f"Conflicting/invalid host:port in guest forwarding rule '{rule}'")
        self.fe.set_handlers(self._can_read, self._read)

    def _write_cb(self, buf: int, length: int, _opaque: int) -> int:
        self.fe.write(ctypes.string_at(buf, length))
        return length

    def _can_read(self) -> int:
        slirp = self.backend.slirp
        if slirp is None:
            return 0
        return int(self.backend.lib.slirp_socket_can_recv(slirp, self.server, self.port))

    def _read(self, data: bytes) -> None:
        slirp = self.backend.slirp
        if slirp is not None:
            self.backend.lib.slirp_socket_recv(slirp, self.server, self.port, data, len(data))

    def close(self) -> None:
        self.fe.deinit()


def parse_guestfwd(rule: str) -> tuple[str, int, str]:
    """(server address, port, chardev spec) of ``[tcp]:[server]:port-dev``."""
    def bad() -> UserError:
        return UserError(f"Invalid guest forwarding rule '{rule}'")

    proto, found, rest = rule.partition(":")
    if not found or proto not in ("", "tcp"):
        raise bad()
    server, found, rest = rest.partition(":")
    if not found:
        raise bad()
    if server:
        try:
            socket.inet_aton(server)
        except OSError:
            raise bad() from None
    port_text, found, spec = rest.partition("-")
    if not found or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad()
    if spec.startswith("cmd:"):
        raise UserError(f"guestfwd to a command is not supported by pemu yet: '{rule}'")
    return server, int(port_text), spec


def add_guestfwd(backend: SlirpNetClient, rule: str) -> GuestFwd:
    server, port, spec = parse_guestfwd(rule)
    fwd = GuestFwd(backend, rule, server, port, spec)
    backend.guestfwds.append(fwd)
    return fwd
