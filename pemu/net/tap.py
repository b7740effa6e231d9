"""-netdev tap (QEMU's net/tap.c, net/tap-linux.c): a Linux TAP interface.

``ifname`` names the interface (the kernel picks tapN otherwise); ``script``
and ``downscript`` run with the interface name as argument when the
interface comes up and goes away (QEMU's defaults /etc/qemu-ifup and
/etc/qemu-ifdown; ``no`` runs nothing).  Frames carry no packet-information
header (IFF_NO_PI) and no vnet header.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess

from pemu.net.net import NET_BUFSIZE, NetState
from pemu.net.packet_fd import PacketFdNetClient
from pemu.util.error import UserError, error_report
from pemu.util.main_loop import MainLoop

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
DEFAULT_SCRIPT = "/etc/qemu-ifup"
DEFAULT_DOWNSCRIPT = "/etc/qemu-ifdown"
TAP_KEYS = frozenset({"ifname", "script", "downscript", "br", "helper", "fd", "fds", "vhost", "queues"})


def _script(text: str | None, default: str) -> str | None:
    if text is None:
        return default
    if text in ("", "no"):
        return None
    return text


def _run_script(script: str, ifname: str) -> None:
    try:
        result = subprocess.run([script, ifname], stdin=subprocess.DEVNULL, check=False)
    except OSError as e:
        raise UserError(f"could not launch network script {script}: {e.strerror}") from None
    if result.returncode != 0:
        raise UserError(f"network script {script} failed with status {result.returncode}")


class TapNetClient(PacketFdNetClient):
    driver = "tap"

    def __init__(self, net: NetState, name: str | None, opts: dict[str, str], loop: MainLoop) -> None:
        for key in opts:
            if key not in TAP_KEYS:
                raise UserError(f"Invalid parameter '{key}'")
        for key in ("br", "helper", "fd", "fds", "vhost", "queues"):
            if key in opts:
                raise UserError(f"tap {key}= is not supported by pemu yet")
        ifname = opts.get("ifname", "")
        if len(ifname.encode()) >= IFNAMSIZ:
            raise UserError(f"Parameter 'ifname' expects a name of at most {IFNAMSIZ - 1} characters")
        up = _script(opts.get("script"), DEFAULT_SCRIPT)
        down = _script(opts.get("downscript"), DEFAULT_DOWNSCRIPT)
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise UserError(f"could not open {TUN_PATH}: {e.strerror}") from None
        try:
            ifr = struct.pack(f"{IFNAMSIZ}sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
            ifr = fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            os.close(fd)
            where = f" ({ifname})" if ifname else ""
            raise UserError(f"could not configure {TUN_PATH}{where}: {e.strerror}") from None
        self.ifname = ifr[:IFNAMSIZ].rstrip(b"\0").decode()
        self.fd = fd
        self.loop = loop
        self.downscript = down
        if up is not None:
            try:
                _run_script(up, self.ifname)
            except UserError:
                os.close(fd)
                raise
        super().__init__(net, "tap", name)
        self.info_str = f"ifname={self.ifname},script={up or 'no'},downscript={down or 'no'}"
        self._update_handlers()

    def fileno(self) -> int:
        return self.fd

    def read_frame(self) -> bytes | None:
        try:
            frame = os.read(self.fd, NET_BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            error_report(f"tap {self.ifname}: {e.strerror}")
            return None
        return frame or None

    def write_frame(self, data: bytes) -> None:
        os.write(self.fd, data)

    def write_failed(self, error: OSError) -> None:
        if error.errno not in (errno.EIO, errno.EINVAL):  # interface down / bad frame: dropped
            error_report(f"tap {self.ifname}: {error.strerror}")

    def cleanup(self) -> None:
        if self.fd < 0:
            return
        self.loop.set_fd_handler(self.fd, None)
        if self.downscript is not None:
            try:
                _run_script(self.downscript, self.ifname)
            except UserError as e:
                error_report(e.message)
        os.close(self.fd)
        self.fd = -1
