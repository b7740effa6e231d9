"""-netdev, -nic and -net (QEMU's net_client_init and net_init_clients).

Back-end modules are imported only when their type is asked for, so that
start-up without networking loads neither ctypes nor libslirp.
"""

from __future__ import annotations

from dataclasses import dataclass

from pemu.net.net import NetClientState, NetState, NICInfo, parse_macaddr
from pemu.util.error import UserError
from pemu.util.main_loop import MainLoop
from pemu.util.qemu_opts import QemuOpts

NETDEV_TYPES = ("user", "stream", "dgram", "socket", "tap", "hubport")
# NIC models pemu has, for -nic and -net nic.
NIC_MODELS = ("e1000e",)
# NIC models a q35 PC has in QEMU that pemu does not model yet, named in the error.
PLANNED_NIC_MODELS = ("e1000", "virtio-net-pci", "rtl8139", "i82559er", "ne2k_pci")
DEFAULT_NIC_MODEL = "e1000e"  # QEMU's default on q35
# What -net nic takes besides its type (QEMU's NetLegacyNicOptions, and the old vlan/name/id).
NET_NIC_PARAMS = ("model", "macaddr", "name", "id", "vlan", "addr", "netdev")


def nic_model_not_supported(model: str) -> UserError:
    return UserError(f"NIC model '{model}' is not supported by pemu yet")


REPEATABLE = ("hostfwd", "guestfwd", "dnssearch")


def _opts_dict(opts: QemuOpts) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Plain options, then the repeatable ones (hostfwd, guestfwd, dnssearch)."""
    plain: dict[str, str] = {}
    for key, value in opts.items():
        if key not in REPEATABLE:
            plain[key] = value
    return plain, {key: opts.get_all(key) for key in REPEATABLE if opts.get_all(key)}


def net_client_init(net: NetState, loop: MainLoop, opts: QemuOpts, name: str | None,
                    peer: NetClientState | None = None) -> NetClientState:
    """Create one back-end from its options (net_client_init1)."""
    plain, repeated = _opts_dict(opts)
    kind = plain.pop("type", None)
    plain.pop("id", None)
    if kind is None:
        raise UserError("Parameter 'type' is missing")
    if kind not in NETDEV_TYPES:
        raise UserError("Parameter 'type' expects a netdev backend type")
    if kind != "user" and repeated:
        raise UserError(f"Invalid parameter '{next(iter(repeated))}'")
    nc: NetClientState
    if kind == "user":
        from pemu.net.slirp import SlirpNetClient

        nc = SlirpNetClient(net, name, plain, loop, repeated.get("hostfwd", []), repeated.get("guestfwd", []),
                            repeated.get("dnssearch", []))
    elif kind in ("stream", "dgram", "socket"):
        from pemu.net import stream

        nc = stream.net_init(kind, net, name, plain, loop)
    elif kind == "tap":
        from pemu.net.tap import TapNetClient

        nc = TapNetClient(net, name, plain, loop)
    else:  # hubport
        hubid = plain.pop("hubid", None)
        if hubid is None:
            raise UserError("Parameter 'hubid' is missing")
        nc = net.hub_add_port(int(hubid), name)
    if peer is not None:
        nc.peer, peer.peer = peer, nc
    return nc


@dataclass
class NetOption:
    """One -netdev, -nic or -net, as given."""

    option: str  # "netdev", "nic" or "net"
    opts: QemuOpts
    location: str


def net_init_clients(net: NetState, loop: MainLoop, options: list[NetOption]) -> None:
    """Create the back-ends of the command line, in order, then -nic / -net NICs."""
    for item in options:
        try:
            _net_init_one(net, loop, item)
        except UserError as e:
            raise UserError(e.message, item.location) from None


def _net_init_one(net: NetState, loop: MainLoop, item: NetOption) -> None:
    opts = item.opts
    if item.option == "netdev":
        if opts.id is None:
            raise UserError("Parameter 'id' is missing")
        if net.find_netdev(opts.id) is not None:
            raise UserError(f"Duplicate ID '{opts.id}' for netdev")
        net_client_init(net, loop, opts, opts.id)
        return
    kind = opts.get("type") or ("nic" if item.option == "net" else "user")
    if item.option == "nic":
        # -nic TYPE,model=M,mac=...: a back-end of TYPE plus a NIC of model M.
        if kind == "none":
            return
        model = opts.get("model", DEFAULT_NIC_MODEL)
        if model not in NIC_MODELS:
            raise nic_model_not_supported(model)
        opts.unset("model")
        mac = opts.get("mac")
        if mac is not None:
            _check_mac(model, mac)
            opts.unset("mac")
        backend_id = opts.id or f"__org.qemu.nic{len(net.nd_table)}"
        if net.find_netdev(backend_id) is not None:
            raise UserError(f"Duplicate ID '{backend_id}' for netdev")
        backend = net_client_init(net, loop, opts, backend_id)
        net.nd_table.append(NICInfo(model, mac, backend))
        return
    # legacy -net: everything hangs on hub 0 (the old "VLAN")
    if kind == "nic":
        for key, _value in opts.items():
            if key not in NET_NIC_PARAMS and key != "type":
                raise UserError(f"Invalid parameter '{key}'")
        model = opts.get("model", DEFAULT_NIC_MODEL)
        if model not in NIC_MODELS:
            raise nic_model_not_supported(model)
        mac = opts.get("macaddr")
        if mac is not None:
            _check_mac(model, mac)
        netdev = opts.get("netdev")
        if netdev is not None:
            peer = net.find_netdev(netdev)
            if peer is None:
                raise UserError(f"Property '{model}.netdev' can't find value '{netdev}'")
        else:
            peer = net.hub_add_port(0)
        net.nd_table.append(NICInfo(model, mac, peer, opts.get("name") or opts.id or None))
        return
    if kind == "none":
        return
    port = net.hub_add_port(0)
    opts.unset("vlan")
    name = opts.get("name") or opts.get("id")
    opts.unset("name")
    net_client_init(net, loop, opts, name, peer=port)


def _check_mac(typename: str, mac: str) -> bytes:
    try:
        return parse_macaddr(mac)
    except ValueError:
        raise UserError(f"Property '{typename}.mac' doesn't take value '{mac}'") from None


@dataclass
class NICConf:
    """What a NIC device's ``mac`` and ``netdev`` properties resolve to (QEMU's NICConf)."""

    macaddr: bytes
    peer: NetClientState | None


def nic_conf_resolve(net: NetState, typename: str, mac: str | None, netdev: str | None) -> NICConf:
    """Resolve a NIC's properties: the MAC (QEMU's default 52:54:00:12:34:56 +
    index when unset) and the back-end named by ``netdev``."""
    peer = None
    if netdev is not None:
        peer = net.find_netdev(netdev)
        if peer is None:
            raise UserError(f"Property '{typename}.netdev' can't find value '{netdev}'")
        if peer.peer is not None:
            raise UserError(f"Property '{typename}.netdev' can't take value '{netdev}', it's in use")
    if mac is None:
        macaddr = parse_macaddr(net.default_mac())
    else:
        macaddr = _check_mac(typename, mac)
        if macaddr[0] & 1:
            raise UserError(f"Property '{typename}.mac' doesn't take value '{mac}'")
    return NICConf(macaddr, peer)


def net_check_clients(net: NetState) -> list[str]:
    """QEMU's warnings for back-ends that no NIC uses."""
    from pemu.net.net import NetHubPort

    warnings = []
    for hub in net.hubs:
        has_nic = any(port.peer is not None and port.peer.is_nic for port in hub.ports)
        has_host = any(port.peer is not None and not port.peer.is_nic for port in hub.ports)
        if has_host and not has_nic:
            warnings.append(f"hub {hub.hub_id} with no nics")
        if has_nic and not has_host:
            warnings.append(f"hub {hub.hub_id} is not connected to host network")
    for nc in net.clients:
        if nc.peer is None and not isinstance(nc, NetHubPort):
            warnings.append(f"{'nic' if nc.is_nic else 'netdev'} {nc.name} has no peer")
    return warnings
