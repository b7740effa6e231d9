"""-drive, -blockdev and the drive table (QEMU's blockdev.c, block/qapi.c, block-hmp-cmds.c).

:class:`BlockDevices` is one VM's block configuration: the drives made by
-drive/-hda/-cdrom (QEMU's DriveInfo table, each with its named
:class:`BlockBackend`) and the nodes made by -blockdev.  Images are opened when
the option is processed (so locks, probing and image errors are reported
at start-up with the option that named them); devices claim drives later by
id (``-device ...,drive=ID``) or by interface position (if=ide, bus, unit).

Drives of an interface the machine has no controller for are refused after
the board is built, as QEMU's drive_check_orphaned does ("machine type does
not support if=ide,bus=6,unit=0").  On q35, ``if=ide`` drives (and -hda..-hdd,
-cdrom) go to the ICH9 AHCI's ports: drive index N on port ``ide.N``.

Migration hands the images over between two processes (QEMU's
bdrv_inactivate_all/bdrv_activate_all): :meth:`BlockDevices.inactivate_all`
on the source, just before the final device state is saved, and
:meth:`BlockDevices.activate_all` on the destination once the state is
loaded (or on the source again when the migration fails or is cancelled).
A VM started with ``-incoming`` sets :attr:`BlockDevices.inactive` before
its images are opened, so it reads them without taking their write locks.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any

from pemu.block.block import bdrv_activate, bdrv_commit, bdrv_inactivate, bdrv_open, check_format_name
from pemu.block.block_backend import BlockBackend, BlockdevOnError
from pemu.block.block_int import (
    CACHE_MODES,
    BlockDriverState,
    BlockOpenError,
    CacheMode,
    bdrv_parse_cache_mode,
)
from pemu.util.cutils import parse_bool
from pemu.util.error import UserError


class CommitError(Exception):
    """A failed HMP commit; the text is QEMU's message."""


class MediumError(Exception):
    """A failed eject or change of a removable medium; the text is QEMU's message."""


class MediumDeviceNotFound(MediumError):
    """The named drive does not exist (QMP's DeviceNotFound)."""


class BlockInterfaceType(enum.Enum):
    NONE = "none"
    IDE = "ide"
    SCSI = "scsi"
    FLOPPY = "floppy"
    PFLASH = "pflash"
    MTD = "mtd"
    SD = "sd"
    VIRTIO = "virtio"
    XEN = "xen"


# What pemu does with each interface QEMU knows (None: accepted).
_IF_REFUSED = {
    BlockInterfaceType.VIRTIO: "-drive if=virtio is not supported by pemu yet (no virtio-blk device)",
}

# Keys -drive accepts (the legacy ones and the block layer's).
_DRIVE_KEYS = {
    "file", "format", "if", "id", "index", "bus", "unit", "media", "readonly", "read-only", "cache",
    "cache.direct", "cache.no-flush", "snapshot", "werror", "rerror", "file.locking", "locking", "aio",
    "node-name",
}
_ERROR_ACTIONS = {
    "report": BlockdevOnError.REPORT,
    "ignore": BlockdevOnError.IGNORE,
    "enospc": BlockdevOnError.ENOSPC,
    "stop": BlockdevOnError.STOP,
}


@dataclass
class DriveInfo:
    """One -drive (QEMU's DriveInfo)."""

    id: str
    type: BlockInterfaceType
    bus: int
    unit: int
    media_cd: bool
    blk: BlockBackend
    location: str
    is_default: bool = False
    claimed_by: str | None = None  # the device that took it

    @property
    def index(self) -> int:
        return self.bus  # q35: one unit per IDE bus (units_per_default_bus = 1)


@dataclass
class BlockdevNode:
    """A -blockdev node: a format node, or a file node waiting for one."""

    node_name: str
    driver: str
    filename: str
    read_only: bool
    cache: CacheMode
    locking: bool
    bs: BlockDriverState | None = None  # opened format node


@dataclass
class BlockDevices:
    """One VM's drives and block nodes."""

    units_per_bus: int = 1
    drives: list[DriveInfo] = field(default_factory=list)
    nodes: dict[str, BlockdevNode] = field(default_factory=dict)
    node_counter: int = 0
    # The images are inactive: opened (and kept) without write permission. Set before the
    # images are opened by a VM that waits for an incoming migration; activate_all clears it.
    inactive: bool = False

    # -- -drive ----------------------------------------------------------------------------
    def drive_new(self, opts: dict[str, str], location: str, default_snapshot: bool,
                  is_default: bool = False) -> DriveInfo:
        """Open one -drive (QEMU's drive_new + blockdev_init)."""

        def fail(message: str) -> UserError:
            return UserError(message, location)

        for key in opts:
            if key not in _DRIVE_KEYS:
                fmt = opts.get("format")
                if fmt:
                    raise fail(f"Block format '{fmt}' does not support the option '{key}'")
                raise fail(f"Invalid parameter '{key}'")

        def get_bool(key: str, default: bool) -> bool:
            if key not in opts:
                return default
            try:
                return parse_bool(opts[key])
            except ValueError:
                raise fail(f"Parameter '{key}' expects 'on' or 'off'") from None

        def get_int(key: str) -> int | None:
            if key not in opts:
                return None
            try:
                value = int(opts[key], 0)
            except ValueError:
                value = -1
            if value < 0:
                raise fail(f"Parameter '{key}' expects a non-negative number below 2^64")
            return value

        if_name = opts.get("if", "ide")
        try:
            if_type = BlockInterfaceType(if_name)
        except ValueError:
            raise fail(f"unsupported bus type '{if_name}'") from None
        if if_type in _IF_REFUSED:
            raise fail(_IF_REFUSED[if_type])
        media = opts.get("media", "disk")
        if media not in ("disk", "cdrom"):
            raise fail(f"'{media}' invalid media")
        media_cd = media == "cdrom"

        index, bus, unit = get_int("index"), get_int("bus"), get_int("unit")
        units = self.units_per_bus if if_type is BlockInterfaceType.IDE else 1
        if index is not None:
            if bus is not None or unit is not None:
                raise fail("index cannot be used with bus and unit")
            bus, unit = divmod(index, units)
        bus = bus or 0
        if unit is None:
            unit = 0
            while self._drive_at(if_type, bus, unit) is not None:
                unit += 1
                if unit >= units:
                    unit = 0
                    bus += 1
        if unit >= units:
            raise fail(f"unit {unit} too big (max is {units - 1})")
        if self._drive_at(if_type, bus, unit) is not None:
            raise fail(f"drive with bus={bus}, unit={unit} (index={bus * units + unit}) exists")

        drive_id = opts.get("id")
        if drive_id is None:
            if if_type is BlockInterfaceType.NONE:
                drive_id = f"none{bus * units + unit}"
            else:
                drive_id = f"{if_type.value}{bus}-{'cd' if media_cd else 'hd'}{unit}"
        if any(d.id == drive_id for d in self.drives) or drive_id in self.nodes:
            raise fail(f"Duplicate ID '{drive_id}' for drive")

        read_only = get_bool("read-only", get_bool("readonly", False)) or media_cd
        snapshot = get_bool("snapshot", default_snapshot)
        cache_name = opts.get("cache", "writeback")
        try:
            cache = bdrv_parse_cache_mode(cache_name)
        except ValueError:
            raise fail("invalid cache option") from None
        cache = CacheMode(cache.name, get_bool("cache.direct", cache.direct),
                          get_bool("cache.no-flush", cache.no_flush), cache.writeback)
        locking_text = opts.get("file.locking", opts.get("locking", "auto"))
        if locking_text not in ("on", "off", "auto"):
            raise fail("Parameter 'locking' does not accept value '" + locking_text + "'")
        locking = locking_text != "off"
        aio = opts.get("aio", "threads")
        if aio != "threads":
            raise fail(f"aio={aio} is not supported by pemu (it uses a thread pool: aio=threads)")
        on_write = self._error_action(opts, "werror", fail, is_read=False)
        on_read = self._error_action(opts, "rerror", fail, is_read=True)

        filename = opts.get("file", "")
        fmt = opts.get("format")
        if fmt is not None:
            try:
                check_format_name(fmt)
            except BlockOpenError as exc:
                raise fail(exc.message) from None
        root: BlockDriverState | None = None
        if filename:
            root = self._open(filename, fmt, read_only, cache, locking, snapshot, location, self.inactive)
            root.node_name = opts.get("node-name") or self._auto_node_name()
        blk = BlockBackend(root, drive_id, writeback=cache.writeback,
                           on_read_error=on_read, on_write_error=on_write)
        drive = DriveInfo(drive_id, if_type, bus, unit, media_cd, blk, location, is_default)
        self.drives.append(drive)
        return drive

    @staticmethod
    def _error_action(opts: dict[str, str], key: str, fail: Any, is_read: bool) -> BlockdevOnError:
        text = opts.get(key)
        if text is None:
            return BlockdevOnError.REPORT if is_read else BlockdevOnError.ENOSPC
        action = _ERROR_ACTIONS.get(text)
        if action is None or (is_read and action is BlockdevOnError.ENOSPC):
            raise fail(f"'{text}' invalid {'read' if is_read else 'write'} error action")
        return action

    def _auto_node_name(self) -> str:
        self.node_counter += 1
        return f"#block{self.node_counter:03d}"

    @staticmethod
    def _open(filename: str, fmt: str | None, read_only: bool, cache: CacheMode, locking: bool,
              snapshot: bool, location: str, inactive: bool) -> BlockDriverState:
        try:
            return bdrv_open(filename, fmt, read_only, cache, locking, snapshot, inactive)
        except BlockOpenError as exc:
            message = exc.message if exc.hint is None else f"{exc.message}\n{exc.hint}"
            raise UserError(message, location) from None

    def _drive_at(self, if_type: BlockInterfaceType, bus: int, unit: int) -> DriveInfo | None:
        for drive in self.drives:
            if drive.type is if_type and drive.bus == bus and drive.unit == unit:
                return drive
        return None

    def drive_get(self, if_type: BlockInterfaceType, bus: int, unit: int) -> DriveInfo | None:
        """The drive at an interface position, for a board wiring its controller."""
        return self._drive_at(if_type, bus, unit)

    def check_orphaned(self) -> None:
        """drive_check_orphaned: a drive no device took is an error, except if=none."""
        for drive in self.drives:
            if drive.claimed_by is None and drive.type is not BlockInterfaceType.NONE:
                raise UserError(f"machine type does not support if={drive.type.value},bus={drive.bus},"
                                f"unit={drive.unit}", drive.location)

    # -- -blockdev -------------------------------------------------------------------------
    def blockdev_add(self, arg: str, location: str) -> None:
        """One -blockdev, in dotted keyval or JSON form, for driver raw, qcow2 or file."""

        def fail(message: str) -> UserError:
            return UserError(message, location)

        tree = parse_blockdev_arg(arg, fail)
        self._blockdev_node(tree, fail, top=True)

    def _blockdev_node(self, tree: dict[str, Any], fail: Any, top: bool) -> BlockdevNode:
        driver = tree.get("driver")
        if driver is None:
            raise fail("Parameter 'driver' is missing")
        if not isinstance(driver, str):
            raise fail("Invalid parameter type for 'driver', expected: string")
        if driver not in ("file", "raw", "qcow2"):
            try:
                check_format_name(driver)
            except BlockOpenError as exc:
                raise fail(exc.message) from None
        node_name = tree.get("node-name")
        if top and not node_name:
            raise fail("'node-name' must be specified for the root node")
        if node_name is not None and (node_name in self.nodes or any(d.id == node_name for d in self.drives)):
            raise fail(f"Duplicate nodes with node-name='{node_name}'")
        allowed = {"driver", "node-name", "read-only", "cache", "discard", "auto-read-only", "force-share"}
        allowed |= {"filename", "locking", "aio"} if driver == "file" else {"file", "backing"}
        for key in tree:
            if key not in allowed:
                raise fail(f"Parameter '{key}' is unexpected")
        read_only = _tree_bool(tree, "read-only", False, fail)
        cache_tree = tree.get("cache", {})
        if not isinstance(cache_tree, dict):
            raise fail("Invalid parameter type for 'cache', expected: object")
        cache = CacheMode("custom", _tree_bool(cache_tree, "direct", False, fail),
                          _tree_bool(cache_tree, "no-flush", False, fail), True)
        cache = next((m for m in CACHE_MODES.values() if (m.direct, m.no_flush, m.writeback) ==
                      (cache.direct, cache.no_flush, True)), cache)
        for key in ("discard", "auto-read-only", "force-share"):
            if key in tree:
                raise fail(f"-blockdev option '{key}' is not supported by pemu")
        if driver == "file":
            filename = tree.get("filename")
            if not isinstance(filename, str):
                raise fail("Parameter 'filename' is missing")
            locking = tree.get("locking", "auto")
            if locking not in ("on", "off", "auto"):
                raise fail(f"Parameter 'locking' does not accept value '{locking}'")
            if tree.get("aio", "threads") != "threads":
                raise fail(f"aio={tree['aio']} is not supported by pemu (it uses a thread pool: aio=threads)")
            node = BlockdevNode(node_name or self._auto_node_name(), "file", filename, read_only, cache,
                                locking != "off")
            self.nodes[node.node_name] = node
            return node
        file_ref = tree.get("file")
        if file_ref is None:
            raise fail("Parameter 'file' is missing")
        if isinstance(file_ref, str):
            file_node = self.nodes.get(file_ref)
            if file_node is None or file_node.driver != "file":
                raise fail(f"Cannot find device={file_ref} nor node-name={file_ref}")
            if file_node.bs is not None:
                raise fail(f"Node '{file_ref}' is already in use by another format node")
        elif isinstance(file_ref, dict):
            file_node = self._blockdev_node(file_ref, fail, top=False)
        else:
            raise fail("Invalid parameter type for 'file', expected: object or string")
        if "backing" in tree and tree["backing"] is not None:
            raise fail("-blockdev backing=<node> is not supported by pemu; the image's backing file is used")
        try:
            bs = bdrv_open(file_node.filename, driver, read_only or file_node.read_only, cache, file_node.locking,
                           inactive=self.inactive)
        except BlockOpenError as exc:
            raise fail(exc.message if exc.hint is None else f"{exc.message}\n{exc.hint}") from None
        bs.node_name = node_name or self._auto_node_name()
        file_node.bs = bs  # the file node is now used by this format node
        node = BlockdevNode(bs.node_name, driver, file_node.filename, bs.read_only, cache, file_node.locking, bs)
        self.nodes[node.node_name] = node
        return node

    # -- monitor (query-block, query-blockstats and their HMP forms: pemu.monitor) -----------
    def commit(self, device: str) -> None:
        """HMP ``commit``: copy the top image's data into its backing image, then empty the top."""
        if device == "all":
            targets = [d for d in self.drives if d.blk.root is not None and d.blk.root.backing is not None]
        else:
            drive = self.find_drive(device)
            if drive is None:
                raise CommitError(f"Device '{device}' not found")
            if drive.blk.root is None:
                raise CommitError(f"Device '{device}' has no medium")
            targets = [drive]
        for drive in targets:
            if drive.blk.inactive:
                # Committing writes the backing image: not while another process owns the images.
                raise CommitError(f"'commit' error for '{drive.id}': the image is inactive (handed over by a "
                                  "migration)")
            try:
                drive.blk.drain()
                with drive.blk.io_lock:
                    root = drive.blk.root
                    assert root is not None  # the targets have a medium (checked above)
                    bdrv_commit(root)
            except OSError as exc:
                raise CommitError(f"'commit' error for '{drive.id}': {os.strerror(exc.errno or 5)}") from None

    # -- removable media (qmp_eject, qmp_blockdev_change_medium) ---------------------------------
    def _removable(self, device: str) -> DriveInfo:
        drive = self.find_drive(device)
        if drive is None:
            raise MediumDeviceNotFound(f"Device '{device}' not found")
        if drive.blk.dev_ops is None:
            raise MediumError(f"Device '{device}' is not removable")
        return drive

    @staticmethod
    def _open_tray(drive: DriveInfo, force: bool) -> None:
        ops = drive.blk.dev_ops
        assert ops is not None
        if ops.is_medium_locked() and not force:
            ops.eject_request_cb(force)
            raise MediumError(f"Device '{drive.id}' is locked and force was not specified, "
                              "wait for tray to open and try again")
        ops.eject_request_cb(force)

    @staticmethod
    def _remove_medium(drive: DriveInfo) -> None:
        blk = drive.blk
        if blk.root is None:
            return
        blk.drain()  # the worker finishes what it runs; its completion finds no medium
        with blk.io_lock:
            root, blk.root = blk.root, None
        root.close()
        assert blk.dev_ops is not None
        blk.dev_ops.change_media_cb(False)

    def eject(self, device: str, force: bool = False) -> None:
        """HMP ``eject [-f] DEVICE``."""
        drive = self._removable(device)
        self._open_tray(drive, force)
        self._remove_medium(drive)

    def change_medium(self, device: str, filename: str, fmt: str | None = None,
                      read_only_mode: str | None = None) -> None:
        """HMP ``change DEVICE FILENAME [FORMAT [READ-ONLY-MODE]]`` for a removable medium."""
        drive = self._removable(device)
        if read_only_mode not in (None, "retain", "read-only", "read-write"):
            raise MediumError(f"Parameter 'read-only-mode' does not accept value '{read_only_mode}'")
        read_only = drive.media_cd or read_only_mode == "read-only"
        if read_only_mode == "read-write" and drive.media_cd:
            raise MediumError("Block node is read-only")
        try:
            if fmt is not None:
                check_format_name(fmt)
            bs = bdrv_open(filename, fmt, read_only, CACHE_MODES["writeback"], True, inactive=self.inactive)
        except BlockOpenError as exc:
            raise MediumError(exc.message) from None
        bs.node_name = self._auto_node_name()
        try:
            self._open_tray(drive, force=False)
        except MediumError:
            bs.close()
            raise
        self._remove_medium(drive)
        blk = drive.blk
        with blk.io_lock:
            blk.root = bs
        assert blk.dev_ops is not None
        blk.dev_ops.change_media_cb(True)

    def find_drive(self, drive_id: str) -> DriveInfo | None:
        return next((d for d in self.drives if d.id == drive_id), None)

    def find_backend(self, name: str) -> BlockBackend | None:
        drive = self.find_drive(name)
        return drive.blk if drive is not None else None

    # -- migration: handing the images over (bdrv_inactivate_all, bdrv_activate_all) ----------
    def _graph_roots(self) -> list[tuple[str, BlockBackend | None, BlockDriverState]]:
        """(name, backend or None, root node) of every open image: drives, then -blockdev nodes."""
        roots: list[tuple[str, BlockBackend | None, BlockDriverState]] = []
        for drive in self.drives:
            if drive.blk.root is not None:
                roots.append((drive.id, drive.blk, drive.blk.root))
        for node in self.nodes.values():
            if node.bs is not None and node.driver != "file":
                roots.append((node.node_name, None, node.bs))
        return roots

    def inactivate_all(self) -> None:
        """The source of a migration, VM stopped, just before its device state
        is saved: every request in flight finishes and its completion reaches
        the device (so no device holds a request), every image is flushed and
        its write lock released; from then on nothing is written to an image
        until :meth:`activate_all`.  The caller holds the big lock.  Raises
        BlockOpenError naming the drive when an image cannot be flushed (the
        caller fails the migration and calls activate_all)."""
        for _name, blk, _root in self._graph_roots():
            if blk is not None:
                blk.drain_and_complete()  # first all of them: a completion may touch another drive's device
        for name, blk, root in self._graph_roots():
            try:
                if blk is not None:
                    blk.inactivate()
                else:
                    bdrv_inactivate(root)
            except OSError as exc:
                raise BlockOpenError(f"Could not flush '{name}' before the migration: "
                                     f"{os.strerror(exc.errno or 5)}") from None
        self.inactive = True

    def activate_all(self) -> None:
        """Take every image's write lock back and re-read its metadata: the
        destination after the device state is loaded, the source after a
        failed or cancelled migration.  Every image is tried; the first
        failure is raised (BlockOpenError, naming the drive: another process
        still holds it)."""
        first: BlockOpenError | None = None
        for name, blk, root in self._graph_roots():
            try:
                if blk is not None:
                    blk.activate()
                else:
                    bdrv_activate(root)
            except BlockOpenError as exc:
                if first is None:
                    first = BlockOpenError(f"Could not reopen '{name}' for writing: {exc.message}", exc.hint)
        self.inactive = first is not None
        if first is not None:
            raise first

    def close_all(self) -> None:
        """bdrv_close_all: finish requests, flush and close every image."""
        for drive in self.drives:
            try:
                drive.blk.flush()
            finally:
                drive.blk.close()
        for node in self.nodes.values():
            if node.bs is not None and node.driver != "file":
                try:
                    node.bs.flush()
                except OSError:
                    pass
                node.bs.close()
                node.bs = None
        self.drives.clear()
        self.nodes.clear()


def _tree_bool(tree: dict[str, Any], key: str, default: bool, fail: Any) -> bool:
    value = tree.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return parse_bool(value)
        except ValueError:
            pass
    raise fail(f"Parameter '{key}' expects 'on' or 'off'")


def parse_blockdev_arg(arg: str, fail: Any) -> dict[str, Any]:
    """-blockdev's argument: a JSON object, or keyval "a=1,b.c=2" with dotted keys."""
    if arg.lstrip().startswith("{"):
        import json  # only -blockdev's JSON form needs it: not imported at every start

        try:
            parsed = json.loads(arg)
        except json.JSONDecodeError as exc:
            raise fail(f"JSON parse error, {exc.msg}") from None
        if not isinstance(parsed, dict):
            raise fail("JSON value must be an object")
        return parsed
    tree: dict[str, Any] = {}
    elements: list[str] = []
    current = ""
    i = 0
    while i < len(arg):
        if arg[i] == ",":
            if arg[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            elements.append(current)
            current = ""
        else:
            current += arg[i]
        i += 1
    elements.append(current)
    for element in elements:
        if "=" not in element:
            raise fail(f"Expected '=' after parameter '{element}'")
        key, value = element.split("=", 1)
        parts = key.split(".")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise fail(f"Parameter '{key}' conflicts with '{part}'")
            node = child
        if parts[-1] in node:
            raise fail(f"Parameter '{key}' is set more than once")
        node[parts[-1]] = value
    return tree

