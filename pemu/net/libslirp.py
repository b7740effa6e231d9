"""ctypes binding of libslirp (Debian's libslirp0, 4.x): only what -netdev user uses.

The structures mirror <slirp/libslirp.h> (SlirpConfig version 4, SlirpCb);
tests/unit/test_net_slirp.py compares their sizes and offsets with the
header.  glibc's ``struct in6_addr`` is 4-byte aligned, hence ``c_uint32 * 4``.
libslirp is not thread safe: every call is made on the main-loop thread.
Imported only when a ``-netdev user`` is created (start-up time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint32,
    c_void_p,
)

SLIRP_POLL_IN = 1 << 0
SLIRP_POLL_OUT = 1 << 1
SLIRP_POLL_PRI = 1 << 2
SLIRP_POLL_ERR = 1 << 3
SLIRP_POLL_HUP = 1 << 4

SLIRP_HOSTFWD_UDP = 1
SLIRP_HOSTFWD_V6ONLY = 2


class InAddr(Structure):
    _fields_ = [("s_addr", c_uint32)]  # network byte order


class In6Addr(Structure):
    _fields_ = [("s6_addr32", c_uint32 * 4)]


class SlirpConfig(Structure):
    _fields_ = [
        ("version", c_uint32),
        ("restricted", c_int),
        ("in_enabled", c_bool),
        ("vnetwork", InAddr),
        ("vnetmask", InAddr),
        ("vhost", InAddr),
        ("in6_enabled", c_bool),
        ("vprefix_addr6", In6Addr),
        ("vprefix_len", c_uint8),
        ("vhost6", In6Addr),
        ("vhostname", c_char_p),
        ("tftp_server_name", c_char_p),
        ("tftp_path", c_char_p),
        ("bootfile", c_char_p),
        ("vdhcp_start", InAddr),
        ("vnameserver", InAddr),
        ("vnameserver6", In6Addr),
        ("vdnssearch", POINTER(c_char_p)),
        ("vdomainname", c_char_p),
        ("if_mtu", c_size_t),
        ("if_mru", c_size_t),
        ("disable_host_loopback", c_bool),
        ("enable_emu", c_bool),
        ("outbound_addr", c_void_p),
        ("outbound_addr6", c_void_p),
        ("disable_dns", c_bool),
        ("disable_dhcp", c_bool),
    ]


SendPacketFn = CFUNCTYPE(c_ssize_t, c_void_p, c_size_t, c_void_p)
GuestErrorFn = CFUNCTYPE(None, c_char_p, c_void_p)
ClockGetNsFn = CFUNCTYPE(c_int64, c_void_p)
TimerNewFn = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_void_p)
TimerFreeFn = CFUNCTYPE(None, c_void_p, c_void_p)
TimerModFn = CFUNCTYPE(None, c_void_p, c_int64, c_void_p)
PollFdFn = CFUNCTYPE(None, c_int, c_void_p)
NotifyFn = CFUNCTYPE(None, c_void_p)
InitCompletedFn = CFUNCTYPE(None, c_void_p, c_void_p)
TimerNewOpaqueFn = CFUNCTYPE(c_void_p, c_int, c_void_p, c_void_p)
AddPollFn = CFUNCTYPE(c_int, c_int, c_int, c_void_p)
GetREventsFn = CFUNCTYPE(c_int, c_int, c_void_p)
WriteCb = CFUNCTYPE(c_ssize_t, c_void_p, c_size_t, c_void_p)


class SlirpCb(Structure):
    _fields_ = [
        ("send_packet", SendPacketFn),
        ("guest_error", GuestErrorFn),
        ("clock_get_ns", ClockGetNsFn),
        ("timer_new", TimerNewFn),
        ("timer_free", TimerFreeFn),
        ("timer_mod", TimerModFn),
        ("register_poll_fd", PollFdFn),
        ("unregister_poll_fd", PollFdFn),
        ("notify", NotifyFn),
        ("init_completed", InitCompletedFn),
        ("timer_new_opaque", TimerNewOpaqueFn),
    ]


class LibslirpMissing(Exception):
    pass


_lib: ctypes.CDLL | None = None


def libslirp() -> ctypes.CDLL:
    """The loaded library with its prototypes declared."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("slirp") or "libslirp.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise LibslirpMissing("user networking needs libslirp (Debian package libslirp0)") from None
    lib.slirp_new.argtypes = [POINTER(SlirpConfig), POINTER(SlirpCb), c_void_p]
    lib.slirp_new.restype = c_void_p
    lib.slirp_cleanup.argtypes = [c_void_p]
    lib.slirp_cleanup.restype = None
    lib.slirp_pollfds_fill.argtypes = [c_void_p, POINTER(c_uint32), AddPollFn, c_void_p]
    lib.slirp_pollfds_fill.restype = None
    lib.slirp_pollfds_poll.argtypes = [c_void_p, c_int, GetREventsFn, c_void_p]
    lib.slirp_pollfds_poll.restype = None
    lib.slirp_input.argtypes = [c_void_p, c_char_p, c_int]
    lib.slirp_input.restype = None
    lib.slirp_handle_timer.argtypes = [c_void_p, c_int, c_void_p]
    lib.slirp_handle_timer.restype = None
    lib.slirp_add_hostfwd.argtypes = [c_void_p, c_int, InAddr, c_int, InAddr, c_int]
    lib.slirp_add_hostfwd.restype = c_int
    lib.slirp_remove_hostfwd.argtypes = [c_void_p, c_int, InAddr, c_int]
    lib.slirp_remove_hostfwd.restype = c_int
    lib.slirp_add_hostxfwd.argtypes = [c_void_p, c_char_p, c_uint32, c_char_p, c_uint32, c_int]
    lib.slirp_add_hostxfwd.restype = c_int
    lib.slirp_remove_hostxfwd.argtypes = [c_void_p, c_char_p, c_uint32, c_int]
    lib.slirp_remove_hostxfwd.restype = c_int
    lib.slirp_add_guestfwd.argtypes = [c_void_p, WriteCb, c_void_p, POINTER(InAddr), c_int]
    lib.slirp_add_guestfwd.restype = c_int
    lib.slirp_remove_guestfwd.argtypes = [c_void_p, InAddr, c_int]
    lib.slirp_remove_guestfwd.restype = c_int
    lib.slirp_socket_can_recv.argtypes = [c_void_p, InAddr, c_int]
    lib.slirp_socket_can_recv.restype = c_size_t
    lib.slirp_socket_recv.argtypes = [c_void_p, InAddr, c_int, c_char_p, c_int]
    lib.slirp_socket_recv.restype = None
    lib.slirp_version_string.argtypes = []
    lib.slirp_version_string.restype = c_char_p
    _lib = lib
    return lib
