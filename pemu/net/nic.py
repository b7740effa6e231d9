"""The NIC side of the net layer (QEMU's NICConf, DEFINE_NIC_PROPERTIES, qemu_new_nic).

A NIC device model declares :func:`nic_properties` (``mac`` and ``netdev``)
and, when realized, calls :func:`qemu_new_nic` with its receive handlers: it
gets a :class:`NICState`, the net client it transmits through
(:func:`pemu.net.net.qemu_send_packet`) and that receives frames for it.
A model that cannot take a frame now returns False from ``can_receive``; the
back-end then holds the frame until the model calls
:func:`pemu.net.net.qemu_flush_queued_packets` on its NICState.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.hw.core.qdev import Property
from pemu.net.net import NetClientState, NetState, format_macaddr, net_state
from pemu.net.netdev import nic_conf_resolve
from pemu.qom.object import QOMError
from pemu.util.error import UserError


def nic_properties() -> list[Property]:
    """``mac`` and ``netdev`` (DEFINE_NIC_PROPERTIES), stored in nic_mac / nic_netdev."""
    return [
        Property("mac", "str", None, attr="nic_mac",
                 description="Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56"),
        Property("netdev", "str", None, attr="nic_netdev", description="ID of a netdev to use as a backend"),
    ]


class NICState(NetClientState):
    driver = "nic"

    def __init__(self, net: NetState, model: str, name: str | None, macaddr: bytes,
                 receive: Callable[[bytes], int], can_receive: Callable[[], bool],
                 link_status_changed: Callable[[], None] | None = None) -> None:
        super().__init__(net, model, name)
        self.macaddr = macaddr
        self._receive = receive
        self._can_receive = can_receive
        self._link_changed = link_status_changed
        self.info_str = f"model={model},macaddr={format_macaddr(macaddr)}"

    def can_receive(self) -> bool:
        return self._can_receive()

    def receive(self, data: bytes) -> int:
        return self._receive(data)

    def link_status_changed(self) -> None:
        if self._link_changed is not None:
            self._link_changed()


def qemu_new_nic(dev: Any, receive: Callable[[bytes], int], can_receive: Callable[[], bool],
                 link_status_changed: Callable[[], None] | None = None, net: NetState | None = None) -> NICState:
    """Create the net client of a NIC device from its ``mac``/``netdev`` properties."""
    net = net or net_state()
    try:
        conf = nic_conf_resolve(net, dev.typename, dev.nic_mac, dev.nic_netdev)
    except UserError as e:
        raise QOMError(e.message) from None
    nic = NICState(net, dev.typename, dev.id, conf.macaddr, receive, can_receive, link_status_changed)
    if conf.peer is not None:
        nic.peer, conf.peer.peer = conf.peer, nic
    return nic
