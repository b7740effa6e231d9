"""Block, chardev, fd set and network commands (QEMU's block/qapi.c,
chardev/char.c, monitor/fds.c, net/net.c)."""

# No postponed annotations: see pemu.monitor.qmp_cmds.
from typing import Any, NotRequired, TypedDict

from pemu.qapi.commands import CommandTable
from pemu.qapi.error import ErrorClass, QMPError, device_not_found
from pemu.qom.object import object_get_root
from pemu.util.error import UserError
from pemu.util.vm_context import current_vm

COMMANDS = CommandTable()
command = COMMANDS.command


# --- block ------------------------------------------------------------------------------------------


BlockdevCacheInfo = TypedDict("BlockdevCacheInfo", {"writeback": bool, "direct": bool, "no-flush": bool})

ImageInfo = TypedDict("ImageInfo", {
    "filename": str, "format": str, "virtual-size": int, "backing-filename": NotRequired[str],
})

BlockDeviceInfo = TypedDict("BlockDeviceInfo", {
    "file": str, "node-name": NotRequired[str], "ro": bool, "drv": str, "backing_file": NotRequired[str],
    "backing_file_depth": int, "encrypted": bool, "cache": BlockdevCacheInfo, "image": ImageInfo,
})

class BlockInfo(TypedDict):
    device: str
    qdev: NotRequired[str]
    type: str
    removable: bool
    locked: bool
    inserted: NotRequired[BlockDeviceInfo]
    tray_open: NotRequired[bool]


def block_devices() -> Any:
    from pemu.hw.core.machine import MachineState

    machine = object_get_root().child("machine")
    if not isinstance(machine, MachineState):
        raise QMPError("no machine")
    return machine.block_devices


@command("query-block")
def qmp_query_block() -> list[BlockInfo]:
    result: list[BlockInfo] = []
    for drive in block_devices().drives:
        blk = drive.blk
        info: BlockInfo = {"device": drive.id, "type": "unknown", "removable": drive.media_cd, "locked": False}
        if drive.claimed_by is not None:
            info["qdev"] = drive.claimed_by
        if blk.dev_ops is not None:
            info["tray_open"] = blk.dev_ops.is_tray_open()
            info["locked"] = blk.dev_ops.is_medium_locked()
        bs = blk.root
        if bs is not None:
            chain = bs.chain()
            inserted: BlockDeviceInfo = {
                "file": bs.filename, "node-name": bs.node_name, "ro": bool(bs.read_only), "drv": bs.format_name,
                "backing_file_depth": len(chain) - 1, "encrypted": False,
                "cache": {"writeback": bool(blk.enable_write_cache), "direct": bool(bs.cache.direct),
                          "no-flush": bool(bs.cache.no_flush)},
                "image": {"filename": bs.filename, "format": bs.format_name, "virtual-size": blk.getlength()},
            }
            if len(chain) > 1:
                inserted["backing_file"] = bs.backing_file or chain[1].filename
                inserted["image"]["backing-filename"] = inserted["backing_file"]
            info["inserted"] = inserted
        result.append(info)
    return result


class BlockDeviceStats(TypedDict):
    rd_bytes: int
    wr_bytes: int
    rd_operations: int
    wr_operations: int
    flush_operations: int
    rd_total_time_ns: int
    wr_total_time_ns: int
    flush_total_time_ns: int
    rd_merged: int
    wr_merged: int
    idle_time_ns: NotRequired[int]


BlockStats = TypedDict("BlockStats", {
    "device": NotRequired[str], "node-name": NotRequired[str], "qdev": NotRequired[str], "stats": BlockDeviceStats,
})


@command("query-blockstats")
def qmp_query_blockstats() -> list[BlockStats]:
    result: list[BlockStats] = []
    for drive in block_devices().drives:
        s = drive.blk.stats
        entry: BlockStats = {"device": drive.id, "stats": {
            "rd_bytes": s.rd_bytes, "wr_bytes": s.wr_bytes, "rd_operations": s.rd_operations,
            "wr_operations": s.wr_operations, "flush_operations": s.flush_operations,
            "rd_total_time_ns": s.rd_total_time_ns, "wr_total_time_ns": s.wr_total_time_ns,
            "flush_total_time_ns": s.flush_total_time_ns, "rd_merged": 0, "wr_merged": 0, "idle_time_ns": 0}}
        if drive.blk.root is not None:
            entry["node-name"] = drive.blk.root.node_name
        if drive.claimed_by is not None:
            entry["qdev"] = drive.claimed_by
        result.append(entry)
    return result


def _removable_drive_id(device: str | None, id: str | None) -> str:
    """The -drive id a QMP medium command names, by block backend (``device``) or by qdev id (``id``)."""
    if (device is None) == (id is None):
        raise QMPError("Need exactly one of 'device' and 'id'")
    if device is not None:
        return device
    drive = next((d for d in block_devices().drives if d.claimed_by == id), None)
    if drive is None:
        raise device_not_found(f"Device '{id}' not found")
    return drive.id


def _medium_error(e: Exception) -> QMPError:
    from pemu.block.blockdev import MediumDeviceNotFound

    return device_not_found(str(e)) if isinstance(e, MediumDeviceNotFound) else QMPError(str(e))


@command("eject")
def qmp_eject(*, device: str | None = None, id: str | None = None, force: bool = False) -> None:
    from pemu.block.blockdev import MediumError

    try:
        block_devices().eject(_removable_drive_id(device, id), force)
    except MediumError as e:
        raise _medium_error(e) from None


@command("blockdev-change-medium")
def qmp_blockdev_change_medium(*, filename: str, device: str | None = None, id: str | None = None,
                               format: str | None = None, read_only_mode: str | None = None) -> None:
    from pemu.block.blockdev import MediumError

    try:
        block_devices().change_medium(_removable_drive_id(device, id), filename, format, read_only_mode)
    except MediumError as e:
        raise _medium_error(e) from None


@command("block_resize")
def qmp_block_resize(*, size: int, device: str | None = None, node_name: str | None = None) -> None:
    """Grow or shrink an image (raw; qcow2 is refused by its driver), then tell the device."""
    from pemu.block.block_int import BlockOpenError

    devices = block_devices()
    drive = devices.find_drive(device) if device is not None else None
    if drive is None and node_name is not None:
        drive = next((d for d in devices.drives if d.blk.root is not None and d.blk.root.node_name == node_name),
                     None)
    if drive is None:
        raise QMPError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")
    if size < 0:
        raise QMPError("Parameter 'size' expects a >0 size")
    try:
        drive.blk.truncate(size)
    except BlockOpenError as e:
        raise QMPError(e.message) from None


# --- chardevs ---------------------------------------------------------------------------------------


ChardevInfo = TypedDict("ChardevInfo", {"label": str, "filename": str, "frontend-open": bool})


@command("query-chardev")
def qmp_query_chardev() -> list[ChardevInfo]:
    from pemu.chardev.registry import qemu_chr_list

    return [{"label": chr_.label, "filename": chr_.filename, "frontend-open": chr_.be is not None}
            for chr_ in qemu_chr_list()]


class ChardevBackend(TypedDict):
    type: str
    data: Any  # the back-end's options (QEMU's flat union, by "type")


class ChardevReturn(TypedDict):
    pty: NotRequired[str]


def _chardev_opts(ident: str, backend: dict[str, Any]) -> dict[str, str]:
    """-chardev options for a QMP ChardevBackend ({"type": ..., "data": {...}})."""
    kind = backend["type"]
    data = backend.get("data") or {}
    if not isinstance(data, dict):
        raise QMPError("Invalid parameter type for 'backend.data', expected: object")
    opts: dict[str, str] = {"id": ident, "backend": kind}

    def flag(key: str, value: object) -> None:
        if value is not None:
            opts[key] = "on" if value else "off"

    if kind == "null":
        pass
    elif kind == "file":
        if "out" not in data:
            raise QMPError("Parameter 'backend.data.out' is missing")
        opts["path"] = str(data["out"])
        flag("append", data.get("append"))
    elif kind == "pipe":
        opts["path"] = str(data.get("device", ""))
    elif kind == "socket":
        addr = data.get("addr") or {}
        addr_data = addr.get("data") or {}
        if addr.get("type") == "unix":
            opts["path"] = str(addr_data.get("path", ""))
        elif addr.get("type") == "inet":
            opts["host"] = str(addr_data.get("host", ""))
            opts["port"] = str(addr_data.get("port", ""))
        else:
            raise QMPError(f"socket address type '{addr.get('type')}' is not supported by pemu")
        flag("server", data.get("server"))
        flag("wait", data.get("wait"))
        flag("nodelay", data.get("nodelay"))
    else:
        raise QMPError(f"chardev backend '{kind}' cannot be added at run time by pemu")
    return opts


@command("chardev-add")
def qmp_chardev_add(*, id: str, backend: ChardevBackend) -> ChardevReturn:
    from pemu.chardev.registry import qemu_chr_new_from_opts

    try:
        qemu_chr_new_from_opts(_chardev_opts(id, dict(backend)))
    except UserError as e:
        raise QMPError(e.message) from None
    return {}


@command("chardev-remove")
def qmp_chardev_remove(*, id: str) -> None:
    from pemu.chardev.registry import qemu_chr_delete, qemu_chr_find

    chr_ = qemu_chr_find(id)
    if chr_ is None:
        raise QMPError(f"Chardev '{id}' not found")
    if chr_.be is not None:
        raise QMPError(f"Chardev '{id}' is busy")
    qemu_chr_delete(id)


# --- fd sets ----------------------------------------------------------------------------------------


class FdsetFdInfo(TypedDict):
    fd: int
    opaque: NotRequired[str]


FdsetInfo = TypedDict("FdsetInfo", {"fdset-id": int, "fds": list[FdsetFdInfo]})


@command("query-fdsets")
def qmp_query_fdsets() -> list[FdsetInfo]:
    fdsets = current_vm().fdsets
    result: list[FdsetInfo] = []
    for fdset_id, entries in sorted(fdsets.sets.items()) if fdsets is not None else []:
        fds: list[FdsetFdInfo] = []
        for entry in entries:
            info: FdsetFdInfo = {"fd": entry.fd}
            if entry.opaque is not None:
                info["opaque"] = entry.opaque
            fds.append(info)
        result.append({"fdset-id": fdset_id, "fds": fds})
    return result


@command("remove-fd")
def qmp_remove_fd(*, fdset_id: int, fd: int | None = None) -> None:
    fdsets = current_vm().fdsets
    if fdsets is None or not fdsets.remove_fd(fdset_id, fd):
        name = f"fdset-id:{fdset_id}" + (f", fd:{fd}" if fd is not None else "")
        raise QMPError(f"File descriptor named '{name}' not found")


# --- network ----------------------------------------------------------------------------------------


@command("set_link")
def qmp_set_link(*, name: str, up: bool) -> None:
    from pemu.net.net import net_state, qemu_set_link

    try:
        qemu_set_link(net_state(), name, up)
    except UserError as e:
        raise QMPError(e.message, ErrorClass.DEVICE_NOT_FOUND) from None


def flatten_arguments(args: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested QMP arguments as the command line's dotted keys ({"addr": {"type": "unix"}} is addr.type)."""
    flat: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, dict):
            flat.update(flatten_arguments(value, f"{prefix}{key}."))
        elif isinstance(value, bool):
            flat[prefix + key] = "on" if value else "off"
        else:
            flat[prefix + key] = value
    return flat


@command("netdev_add")
def qmp_netdev_add(*, type: str, id: str, **props: Any) -> None:
    from pemu.net.net import net_state
    from pemu.net.netdev import net_client_init
    from pemu.util.main_loop import main_loop
    from pemu.util.qemu_opts import QemuOptsList

    net = net_state()
    if net.find_netdev(id) is not None:
        raise QMPError(f"Duplicate ID '{id}' for netdev")
    try:
        opts = QemuOptsList("netdev").create(id)
        opts.set("type", type)
        for key, value in flatten_arguments(props).items():
            for item in value if isinstance(value, list) else [value]:
                opts.set(key, item if isinstance(item, (str, bool, int)) else str(item))
        net_client_init(net, main_loop(), opts, id)
    except UserError as e:
        raise QMPError(e.message) from None


@command("netdev_del")
def qmp_netdev_del(*, id: str) -> None:
    from pemu.net.net import net_state

    nc = net_state().find_netdev(id)
    if nc is None:
        raise device_not_found(f"Device '{id}' not found")
    nc.delete()
