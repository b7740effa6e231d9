"""The net layer (QEMU's net/net.c and net/queue.c): clients, peers and queues.

A link has two ends, each a :class:`NetClientState`: a NIC model on the
guest side, a back-end (``user``, ``stream``, ``tap``...) on the host side,
or a port of a :class:`NetHub` (the legacy ``-net`` "VLAN").  A frame is sent
by one end with :func:`qemu_send_packet_async` and lands in the other end's
:meth:`NetClientState.receive`.

Back-pressure follows QEMU: when the receiver cannot take a frame
(``can_receive()`` false, or ``receive()`` returns 0) the frame is appended to
the receiver's :class:`NetQueue` and the sender is told to hold (the send
returns 0); when the receiver is ready again it calls
:func:`qemu_flush_queued_packets`, the queue is delivered and each sender's
``sent_cb`` runs so it resumes.  A sender without a ``sent_cb`` cannot hold:
its frames are queued up to the queue's bound and dropped beyond it, as QEMU
drops them.  Every queue is bounded in frames and bytes, so nothing a guest
or a peer sends grows pemu's memory without bound.

Per-VM state: every client and hub of a VM is in one :class:`NetState`
(:func:`net_state`), the one place the per-VM refactor moves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from pemu.util.error import UserError

# Largest frame the layer carries (QEMU's NET_BUFSIZE: 4096 + 65536).
NET_BUFSIZE = 4096 + 65536
# A queue holds at most this many frames and bytes (QEMU's nq_maxlen is
# 10000 frames; the byte bound keeps a flood of large frames small too).
NET_QUEUE_MAX_FRAMES = 1000
NET_QUEUE_MAX_BYTES = 4 * 1024 * 1024

SentCallback = Callable[["NetClientState", int], None]


@dataclass
class NetPacket:
    sender: NetClientState
    data: bytes
    sent_cb: SentCallback | None


class NetQueue:
    """The frames waiting for one receiver (QEMU's NetQueue), bounded."""

    def __init__(self, owner: NetClientState, max_frames: int = NET_QUEUE_MAX_FRAMES,
                 max_bytes: int = NET_QUEUE_MAX_BYTES) -> None:
        self.owner = owner
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.packets: deque[NetPacket] = deque()
        self.nbytes = 0
        self.delivering = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.packets)

    def full(self) -> bool:
        return len(self.packets) >= self.max_frames or self.nbytes >= self.max_bytes

    def append(self, sender: NetClientState, data: bytes, sent_cb: SentCallback | None) -> None:
        """Queue a frame.  A sender that holds (has a ``sent_cb``) is always
        queued: it sends nothing more until its callback, so it adds at most
        one frame beyond the bound.  Others are dropped when the queue is full."""
        if self.full() and sent_cb is None:
            self.dropped += 1
            return
        self.packets.append(NetPacket(sender, data, sent_cb))
        self.nbytes += len(data)

    def purge(self, sender: NetClientState) -> None:
        """Forget the frames of ``sender`` (it is going away), releasing it."""
        kept: deque[NetPacket] = deque()
        for packet in self.packets:
            if packet.sender is sender:
                self.nbytes -= len(packet.data)
                if packet.sent_cb is not None:
                    packet.sent_cb(sender, 0)
            else:
                kept.append(packet)
        self.packets = kept

    def flush(self) -> bool:
        """Deliver queued frames until the receiver holds one; True when empty."""
        while self.packets:
            packet = self.packets.popleft()
            self.nbytes -= len(packet.data)
            ret = _deliver(self, packet.sender, packet.data)
            if ret == 0:
                self.packets.appendleft(packet)
                self.nbytes += len(packet.data)
                return False
            if packet.sent_cb is not None:
                packet.sent_cb(packet.sender, ret)
        return True


class NetClientState:
    """One end of a link (QEMU's NetClientState + NetClientInfo).

    Subclasses set ``driver`` (the type shown by ``info network``) and
    override :meth:`receive` (and :meth:`can_receive` when they can be busy).
    """

    driver: ClassVar[str] = "none"

    def __init__(self, net: NetState, model: str, name: str | None) -> None:
        self.net = net
        self.model = model
        self.name = name or net.assign_name(model)
        self.peer: NetClientState | None = None
        self.link_down = False
        self.receive_disabled = False
        self.info_str = ""
        self.queue_index = 0
        self.incoming_queue = NetQueue(self)
        net.clients.append(self)

    # -- what a subclass provides ----------------------------------------------------------
    def can_receive(self) -> bool:
        return True

    def receive(self, data: bytes) -> int:
        """Take one frame: its length when consumed (or dropped), 0 to hold it."""
        return len(data)

    def link_status_changed(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    # -- helpers ------------------------------------------------------------------------------
    @property
    def is_nic(self) -> bool:
        return self.driver == "nic"

    def delete(self) -> None:
        """qemu_del_net_client: unlink from the peer and release everything."""
        peer = self.peer
        if peer is not None:
            peer.incoming_queue.purge(self)
            peer.peer = None
            self.peer = None
        self.incoming_queue.purge(self)
        self.cleanup()
        if self in self.net.clients:
            self.net.clients.remove(self)


def _vm_is_running() -> bool:
    from pemu.system import runstate

    return runstate.runstate_is_running()


def qemu_can_receive_packet(nc: NetClientState) -> bool:
    if nc.receive_disabled:
        return False
    return nc.can_receive()


def qemu_can_send_packet(sender: NetClientState) -> bool:
    # As QEMU: while the VM is stopped every frame waits in a queue.
    if not sender.net.vm_running():
        return False
    peer = sender.peer
    if peer is None:
        return True  # nobody listens: the frame is dropped, never held
    return qemu_can_receive_packet(peer)


def _deliver(queue: NetQueue, sender: NetClientState, data: bytes) -> int:
    """Hand one frame to the queue's owner (qemu_deliver_packet_iov)."""
    nc = queue.owner
    if nc.link_down:
        return len(data)
    if not qemu_can_receive_packet(nc):
        return 0
    queue.delivering = True
    try:
        ret = nc.receive(data)
    finally:
        queue.delivering = False
    if ret == 0:
        nc.receive_disabled = True
    return ret


def qemu_send_packet_async(sender: NetClientState, data: bytes, sent_cb: SentCallback | None) -> int:
    """Send a frame to ``sender``'s peer.  Returns its length when delivered
    (or dropped), 0 when it was queued: then ``sent_cb`` runs once the peer
    took it, and the sender should send nothing more until then."""
    peer = sender.peer
    if sender.link_down or peer is None:
        return len(data)
    if len(data) > NET_BUFSIZE:
        return len(data)  # nobody may send a frame larger than the layer carries
    queue = peer.incoming_queue
    if queue.delivering or len(queue) or not qemu_can_send_packet(sender):
        queue.append(sender, data, sent_cb)
        return 0
    ret = _deliver(queue, sender, data)
    if ret == 0:
        queue.append(sender, data, sent_cb)
        return 0
    queue.flush()
    return ret


def qemu_send_packet(sender: NetClientState, data: bytes) -> None:
    """Send without holding: a frame the peer cannot take now is queued
    (bounded) or dropped."""
    qemu_send_packet_async(sender, data, None)


def qemu_receive_packet(nc: NetClientState, data: bytes) -> int:
    """Deliver a frame to ``nc`` itself (its own loopback), now or never."""
    if not qemu_can_receive_packet(nc):
        return 0
    return nc.receive(data)


def qemu_flush_queued_packets(nc: NetClientState) -> None:
    """``nc`` can receive again: deliver what waits in its queue."""
    nc.receive_disabled = False
    if isinstance(nc.peer, NetHubPort):
        nc.peer.hub.flush_all()
    nc.incoming_queue.flush()


def qemu_set_link(net: NetState, name: str, up: bool) -> None:
    """set_link: bring a client's link (and its NIC peer's) up or down."""
    matches = [nc for nc in net.clients if nc.name == name]
    if not matches:
        raise UserError(f"Device '{name}' not found")
    for nc in matches:
        nc.link_down = not up
        nc.link_status_changed()
        peer = nc.peer
        if peer is not None and peer.is_nic:
            # QEMU: the NIC sees the back-end's link state too.
            peer.link_down = not up
            peer.link_status_changed()
        if up and peer is not None:
            qemu_flush_queued_packets(peer)


# --- hubs (the legacy -net "VLAN") ----------------------------------------------------------


class NetHubPort(NetClientState):
    driver = "hubport"

    def __init__(self, net: NetState, hub: NetHub, name: str | None) -> None:
        super().__init__(net, "hub", name or f"hub{hub.hub_id}port{len(hub.ports)}")
        self.hub = hub
        self.port_id = len(hub.ports)
        hub.ports.append(self)

    def can_receive(self) -> bool:
        return all(qemu_can_send_packet(port) for port in self.hub.ports if port is not self)

    def receive(self, data: bytes) -> int:
        for port in self.hub.ports:
            if port is not self:
                qemu_send_packet(port, data)
        return len(data)

    def cleanup(self) -> None:
        if self in self.hub.ports:
            self.hub.ports.remove(self)


@dataclass
class NetHub:
    hub_id: int
    ports: list[NetHubPort] = field(default_factory=list)

    def flush_all(self) -> None:
        for port in self.ports:
            port.incoming_queue.flush()


# --- the per-VM table ---------------------------------------------------------------------


class NetState:
    """Every net client and hub of one VM, and the NIC MAC counter."""

    def __init__(self, vm_running: Callable[[], bool] = _vm_is_running) -> None:
        self.vm_running = vm_running
        self.clients: list[NetClientState] = []
        self.hubs: list[NetHub] = []
        self.nic_count = 0  # NICs given the default MAC so far (qemu_macaddr_default_if_unset)
        self._name_counts: dict[str, int] = {}

    def assign_name(self, model: str) -> str:
        """A unique default name, model.N (QEMU's assign_name)."""
        n = self._name_counts.get(model, 0)
        self._name_counts[model] = n + 1
        return f"{model}.{n}"

    def find_netdev(self, ident: str) -> NetClientState | None:
        """A -netdev back-end by id (qemu_find_netdev)."""
        for nc in self.clients:
            if nc.name == ident and not nc.is_nic and not isinstance(nc, NetHubPort):
                return nc
        return None

    def hub(self, hub_id: int) -> NetHub:
        for hub in self.hubs:
            if hub.hub_id == hub_id:
                return hub
        hub = NetHub(hub_id)
        self.hubs.append(hub)
        return hub

    def hub_add_port(self, hub_id: int, name: str | None = None) -> NetHubPort:
        return NetHubPort(self, self.hub(hub_id), name)

    def default_mac(self) -> str:
        mac = f"52:54:00:12:34:{0x56 + self.nic_count:02x}"
        self.nic_count += 1
        return mac

    def clients_iter(self) -> Iterator[NetClientState]:
        return iter(list(self.clients))

    def flush_all(self) -> None:
        """The VM (re)starts: deliver what waited (net_vm_change_state_handler)."""
        for nc in list(self.clients):
            qemu_flush_queued_packets(nc)

    def cleanup(self) -> None:
        for nc in reversed(list(self.clients)):
            nc.delete()
        self.hubs.clear()


def net_state() -> NetState:
    """The current VM's net state (its ``net``), made on first use."""
    from pemu.system import runstate
    from pemu.util.vm_context import current_vm

    vm = current_vm()
    if vm.net is None:
        state = vm.net = NetState()

        def flush_on_start(running: bool, _state: object) -> None:
            # Frames waited in queues while the VM was stopped (net_vm_change_state_handler).
            if running:
                state.flush_all()

        runstate.qemu_add_vm_change_state_handler(flush_on_start)
    return vm.net


def net_cleanup() -> None:
    """Delete the current VM's network clients (the VM is going away)."""
    from pemu.util.vm_context import current_vm

    vm = current_vm()
    if vm.net is not None:
        vm.net.cleanup()
        vm.net = None


# --- MAC addresses -----------------------------------------------------------------------


def parse_macaddr(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(text)
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(text) from None


def format_macaddr(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# --- info network -------------------------------------------------------------------------


def _client_line(nc: NetClientState) -> str:
    return f"{nc.name}: index={nc.queue_index},type={nc.driver},{nc.info_str}"


def info_network(net: NetState) -> str:
    """`info network` in QEMU's layout: hubs first, then each NIC with its back-end."""
    lines: list[str] = []
    for hub in net.hubs:
        lines.append(f"hub {hub.hub_id}")
        for port in hub.ports:
            if port.peer is not None:
                lines.append(f" \\ {port.name}: {_client_line(port.peer)}")
            else:
                lines.append(f" \\ {port.name}")
    for nc in net.clients:
        peer = nc.peer
        if isinstance(nc, NetHubPort) or isinstance(peer, NetHubPort):
            continue
        if peer is None or nc.is_nic:
            lines.append(_client_line(nc))
        if peer is not None and nc.is_nic:
            lines.append(f" \\ {_client_line(peer)}")
    return "".join(line + "\n" for line in lines)
