"""Device state descriptions (QEMU's VMStateDescription, migration/vmstate.c).

A device says what its migratable state is by declaring a
:class:`VMStateDescription`: a name, a version, and an ordered list of
:class:`VMStateField` — an attribute name and the :class:`FieldKind` that says
how the value is put on the wire and how a value read back is checked.  One
description serves saving and loading, so the two can never disagree.

The wire format is QEMU's: the fields in order, big-endian, without names;
what the bytes mean comes from the description and the version in the
section header.  A field added in version N is declared with ``since=N`` and
is neither read nor written for older streams.

The stream is untrusted input.  Every kind checks what it reads before the
device sees it: integers against their width (and an optional ``check``),
enums against their members, variable-length buffers and lists against their
declared maximum (the length is read first and refused before anything is
allocated), nested structures recursively.  Checks that involve several
fields (a FIFO index against its length, a ring head against its size) belong
in the description's ``post_load``, which raises :class:`VMStateError` to
refuse the stream.  Every refusal names the description and field, so the one
line a user sees says what was wrong.

Example::

    VMSTATE_PIT_CHANNEL = VMStateDescription(
        "i8254-channel", version_id=1,
        fields=[
            VMStateField("count", UInt(17), check=lambda v: v >= 1),
            VMStateField("mode", UInt(8), check=lambda v: v <= 5),
            VMStateField("bcd", BOOL),
            VMStateField("frozen_ticks", Optional(U64)),
        ])
    VMSTATE_PIT = VMStateDescription(
        "i8254", version_id=1,
        fields=[VMStateField("channels", StructList(VMSTATE_PIT_CHANNEL, length=3))],
        post_load=PIT.post_load)

A device class points at its description with ``DeviceClass.vmsd``; a device
with no migratable state still declares one (with no fields), because a
device class whose ``vmsd`` is None blocks saving (QEMU's "unmigratable"):
there is never a silent gap in a saved VM.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pemu.migration.qemu_file import QEMUFileReader, QEMUFileWriter


class VMStateError(Exception):
    """A stream the description cannot accept (one line, names the field)."""


# --- field kinds ----------------------------------------------------------------------


class FieldKind(Protocol):
    """How one value is written and read back, and what a read value must be.

    ``load`` gets the attribute's current value: kinds that fill an existing
    object (a bytearray, a nested structure) load into it and return it."""

    def save(self, f: QEMUFileWriter, value: Any) -> None: ...

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any: ...


_INT_FORMATS = {8: ">B", 16: ">H", 32: ">I", 64: ">Q"}


class UInt:
    """An unsigned integer of ``bits`` bits (any width up to 64), stored in the
    smallest of 1, 2, 4 or 8 bytes; a read value wider than ``bits`` is refused."""

    __slots__ = ("bits", "size", "_struct")

    def __init__(self, bits: int) -> None:
        if not 1 <= bits <= 64:
            raise ValueError(f"UInt({bits}): width must be 1..64")
        self.bits = bits
        store = next(width for width in (8, 16, 32, 64) if width >= bits)
        self.size = store // 8
        self._struct = struct.Struct(_INT_FORMATS[store])

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        value = int(value)
        if not 0 <= value < 1 << self.bits:
            raise VMStateError(f"value {value} does not fit {self.bits} bits")
        f.put_buffer(self._struct.pack(value))

    def load(self, f: QEMUFileReader, current: Any, where: str) -> int:
        (value,) = self._struct.unpack(f.get_buffer(self.size))
        if value >> self.bits:
            raise VMStateError(f"{where}: value {value:#x} does not fit {self.bits} bits")
        return int(value)

    def __repr__(self) -> str:
        return f"UInt({self.bits})"


class Int:
    """A two's-complement signed integer of 8, 16, 32 or 64 bits."""

    __slots__ = ("bits", "_struct")

    def __init__(self, bits: int) -> None:
        if bits not in _INT_FORMATS:
            raise ValueError(f"Int({bits}): width must be 8, 16, 32 or 64")
        self.bits = bits
        self._struct = struct.Struct(_INT_FORMATS[bits].lower())

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        value = int(value)
        if not -(1 << (self.bits - 1)) <= value < 1 << (self.bits - 1):
            raise VMStateError(f"value {value} does not fit a signed {self.bits}-bit field")
        f.put_buffer(self._struct.pack(value))

    def load(self, f: QEMUFileReader, current: Any, where: str) -> int:
        (value,) = self._struct.unpack(f.get_buffer(self.bits // 8))
        return int(value)

    def __repr__(self) -> str:
        return f"Int({self.bits})"


class Bool:
    """A byte that must be 0 or 1."""

    __slots__ = ()

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        f.put_be8(1 if value else 0)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> bool:
        value = f.get_be8()
        if value > 1:
            raise VMStateError(f"{where}: {value} is not a boolean")
        return value == 1


class Enum:
    """A member of an IntEnum, by value; a value that is no member is refused."""

    __slots__ = ("enum", "_int")

    def __init__(self, enum: type[IntEnum], bits: int = 8) -> None:
        self.enum = enum
        self._int = UInt(bits)

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        self._int.save(f, int(value))

    def load(self, f: QEMUFileReader, current: Any, where: str) -> IntEnum:
        value = self._int.load(f, None, where)
        try:
            return self.enum(value)
        except ValueError:
            raise VMStateError(f"{where}: {value} is not a valid {self.enum.__name__}") from None


class Optional:
    """A value or None: a presence byte, then the value when present."""

    __slots__ = ("kind",)

    def __init__(self, kind: FieldKind) -> None:
        self.kind = kind

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        if value is None:
            f.put_be8(0)
        else:
            f.put_be8(1)
            self.kind.save(f, value)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        present = f.get_be8()
        if present > 1:
            raise VMStateError(f"{where}: bad presence byte {present}")
        return self.kind.load(f, current, where) if present else None


class Buffer:
    """Exactly ``size`` bytes (a register file, a PCI config space, a MAC).
    A bytearray attribute is filled in place; anything else gets ``bytes``."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        data = bytes(value)
        if len(data) != self.size:
            raise VMStateError(f"buffer of {len(data)} bytes, the description says {self.size}")
        f.put_buffer(data)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        data = f.get_buffer(self.size)
        if isinstance(current, bytearray) and len(current) == self.size:
            current[:] = data
            return current
        return data


class VarBuffer:
    """Up to ``max_size`` bytes, length first (a FIFO's contents, a pending
    frame).  A longer length is refused before anything is read."""

    __slots__ = ("max_size", "_len")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._len = UInt(32)

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        data = bytes(value)
        if len(data) > self.max_size:
            raise VMStateError(f"buffer of {len(data)} bytes exceeds its maximum {self.max_size}")
        self._len.save(f, len(data))
        f.put_buffer(data)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        length = self._len.load(f, None, where)
        if length > self.max_size:
            raise VMStateError(f"{where}: length {length} exceeds the maximum {self.max_size}")
        data = f.get_buffer(length)
        if isinstance(current, bytearray):
            current[:] = data
            return current
        return data


class Array:
    """A list (or tuple) of exactly ``length`` values of one kind."""

    __slots__ = ("kind", "length")

    def __init__(self, kind: FieldKind, length: int) -> None:
        self.kind = kind
        self.length = length

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        items = list(value)
        if len(items) != self.length:
            raise VMStateError(f"array of {len(items)} items, the description says {self.length}")
        for item in items:
            self.kind.save(f, item)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        old = list(current) if current is not None and len(current) == self.length else [None] * self.length
        values = [self.kind.load(f, old[i], f"{where}[{i}]") for i in range(self.length)]
        if isinstance(current, list):
            current[:] = values
            return current
        return type(current)(values) if isinstance(current, tuple) else values


class VarList:
    """A list of at most ``max_len`` values of one kind, length first (a queue,
    a FIFO of words).  A longer length is refused before anything is read."""

    __slots__ = ("kind", "max_len", "_len")

    def __init__(self, kind: FieldKind, max_len: int) -> None:
        self.kind = kind
        self.max_len = max_len
        self._len = UInt(32)

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        items = list(value)
        if len(items) > self.max_len:
            raise VMStateError(f"list of {len(items)} items exceeds its maximum {self.max_len}")
        self._len.save(f, len(items))
        for item in items:
            self.kind.save(f, item)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        length = self._len.load(f, None, where)
        if length > self.max_len:
            raise VMStateError(f"{where}: length {length} exceeds the maximum {self.max_len}")
        values = [self.kind.load(f, None, f"{where}[{i}]") for i in range(length)]
        if current is not None and hasattr(current, "clear") and hasattr(current, "extend"):
            current.clear()  # a deque or a list keeps its identity (and a deque its maxlen)
            current.extend(values)
            return current
        return values


class Struct:
    """A nested object described by its own description, loaded into the
    object the attribute already holds (the device made it at realize)."""

    __slots__ = ("vmsd",)

    def __init__(self, vmsd: VMStateDescription) -> None:
        self.vmsd = vmsd

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        vmstate_save_state(f, self.vmsd, value)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        if current is None:
            raise VMStateError(f"{where}: no {self.vmsd.name} to load into")
        vmstate_load_state(f, self.vmsd, current, self.vmsd.version_id, where)
        return current


class StructList:
    """A fixed number of nested objects of one description (timers of an
    HPET, ports of an AHCI), loaded into the objects already there."""

    __slots__ = ("vmsd", "length")

    def __init__(self, vmsd: VMStateDescription, length: int) -> None:
        self.vmsd = vmsd
        self.length = length

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        items = list(value)
        if len(items) != self.length:
            raise VMStateError(f"{len(items)} {self.vmsd.name} objects, the description says {self.length}")
        for item in items:
            vmstate_save_state(f, self.vmsd, item)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        items = list(current) if current is not None else []
        if len(items) != self.length:
            raise VMStateError(f"{where}: {len(items)} objects to load into, the stream has {self.length}")
        for i, item in enumerate(items):
            vmstate_load_state(f, self.vmsd, item, self.vmsd.version_id, f"{where}[{i}]")
        return current


class DeviceOptional:
    """The state of a part a device has or has not, decided when it was
    built (an MSI or MSI-X capability, an EEPROM in a slot): a presence byte,
    then the part's description.  The stream must have it exactly when the
    destination device has it; loading never adds or drops the part."""

    __slots__ = ("vmsd",)

    def __init__(self, vmsd: VMStateDescription) -> None:
        self.vmsd = vmsd

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        f.put_be8(0 if value is None else 1)
        if value is not None:
            vmstate_save_state(f, self.vmsd, value)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        present = f.get_be8()
        if present > 1:
            raise VMStateError(f"{where}: bad presence byte {present}")
        if bool(present) != (current is not None):
            raise VMStateError(f"{where}: {self.vmsd.name} is {'present' if present else 'absent'} in the "
                               f"stream, {'present' if current is not None else 'absent'} here")
        if current is not None:
            vmstate_load_state(f, self.vmsd, current, self.vmsd.version_id, where)
        return current


class SameAsHere:
    """A value fixed by the VM's configuration (a drive's kind, a size, a
    capability register): saved so that a destination configured otherwise
    refuses the stream, naming both values, instead of loading it."""

    __slots__ = ("kind", "show")

    def __init__(self, kind: FieldKind, show: Callable[[Any], str] = str) -> None:
        self.kind = kind
        self.show = show

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        self.kind.save(f, value)

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        value = self.kind.load(f, current, where)
        if value != current:
            raise VMStateError(f"{where}: {self.show(value)} in the stream, {self.show(current)} in this VM")
        return current


class Timer:
    """A timer's expiry time on its clock (ns; -1 when not armed).  Loading
    re-arms or cancels the timer the attribute holds; the virtual clock is
    restored before any device (see :mod:`pemu.migration.savevm`), so a
    deadline means the same instant on the destination.  The timer must have
    ``expire_time``, ``mod_ns`` and ``delete`` (QEMUTimer has)."""

    __slots__ = ()

    def save(self, f: QEMUFileWriter, value: Any) -> None:
        f.put_buffer(_I64.pack(value.expire_time if value.expire_time >= 0 else -1))

    def load(self, f: QEMUFileReader, current: Any, where: str) -> Any:
        (expire,) = _I64.unpack(f.get_buffer(8))
        if expire < -1:
            raise VMStateError(f"{where}: bad timer expiry {expire}")
        if current is None:
            raise VMStateError(f"{where}: no timer to load into")
        if expire >= 0:
            current.mod_ns(expire)
        else:
            current.delete()
        return current


_I64 = struct.Struct(">q")

U8 = UInt(8)
U16 = UInt(16)
U32 = UInt(32)
U64 = UInt(64)
I8 = Int(8)
I16 = Int(16)
I32 = Int(32)
I64 = Int(64)
BOOL = Bool()
TIMER = Timer()


# --- descriptions ---------------------------------------------------------------------


class VMStateField:
    """One saved attribute: ``name`` (an attribute of the object, or a dotted
    path into it), its kind, the version it appeared in, and an optional check
    of the loaded value (a predicate, or a ``range``/container of allowed values)."""

    __slots__ = ("name", "kind", "since", "check", "_path")

    def __init__(self, name: str, kind: FieldKind, *, since: int = 1,
                 check: Callable[[Any], bool] | range | Sequence[Any] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.since = since
        self.check = check
        self._path = name.split(".")

    def get(self, obj: Any) -> Any:
        for part in self._path:
            obj = getattr(obj, part)
        return obj

    def set(self, obj: Any, value: Any) -> None:
        for part in self._path[:-1]:
            obj = getattr(obj, part)
        setattr(obj, self._path[-1], value)

    def checked(self, value: Any, where: str) -> Any:
        check = self.check
        if check is None:
            return value
        ok = check(value) if callable(check) else value in check
        if not ok:
            raise VMStateError(f"{where}: invalid value {value!r}")
        return value

    def __repr__(self) -> str:
        return f"VMStateField({self.name!r}, {self.kind!r})"


class VMStateDescription:
    """What one kind of device (or nested structure) saves; see the module's description.

    ``pre_save(obj)`` runs before saving (to fold derived state into saved
    fields); ``post_load(obj, version_id)`` after loading, to check fields
    against each other (raise :class:`VMStateError`) and to rebuild what is
    derived (memory mappings, timers, interrupt outputs)."""

    __slots__ = ("name", "version_id", "minimum_version_id", "fields", "pre_save", "post_load")

    def __init__(self, name: str, version_id: int = 1, fields: Sequence[VMStateField] = (), *,
                 minimum_version_id: int | None = None,
                 pre_save: Callable[[Any], None] | None = None,
                 post_load: Callable[[Any, int], None] | None = None) -> None:
        self.name = name
        self.version_id = version_id
        self.minimum_version_id = version_id if minimum_version_id is None else minimum_version_id
        self.fields = tuple(fields)
        self.pre_save = pre_save
        self.post_load = post_load
        for fld in self.fields:
            if fld.since > version_id:
                raise ValueError(f"{name}.{fld.name}: since={fld.since} is newer than version {version_id}")

    def __repr__(self) -> str:
        return f"VMStateDescription({self.name!r}, version_id={self.version_id})"


def vmstate_save_state(f: QEMUFileWriter, vmsd: VMStateDescription, obj: Any) -> None:
    """Write ``obj``'s state as ``vmsd`` describes it (its current version)."""
    if vmsd.pre_save is not None:
        vmsd.pre_save(obj)
    for fld in vmsd.fields:
        try:
            fld.kind.save(f, fld.get(obj))
        except VMStateError as e:
            raise VMStateError(f"{vmsd.name}.{fld.name}: {e}") from None


def vmstate_load_state(f: QEMUFileReader, vmsd: VMStateDescription, obj: Any, version_id: int,
                       where: str | None = None) -> None:
    """Read state saved at ``version_id`` into ``obj``; VMStateError refuses it
    (the object may then be partly loaded: the caller discards the VM)."""
    where = where or vmsd.name
    if version_id > vmsd.version_id:
        raise VMStateError(f"{where}: saved with version {version_id}, this pemu reads up to {vmsd.version_id}")
    if version_id < vmsd.minimum_version_id:
        raise VMStateError(f"{where}: saved with version {version_id}, this pemu reads from "
                           f"{vmsd.minimum_version_id}")
    for fld in vmsd.fields:
        if fld.since > version_id:
            continue
        at = f"{where}.{fld.name}"
        value = fld.kind.load(f, fld.get(obj), at)
        fld.set(obj, fld.checked(value, at))
    if vmsd.post_load is not None:
        try:
            vmsd.post_load(obj, version_id)
        except VMStateError as e:
            raise VMStateError(f"{where}: {e}") from None


# --- whole objects to and from bytes (tests, snapshots of one device) ----------------------


def vmstate_save_bytes(vmsd: VMStateDescription, obj: Any) -> bytes:
    """``obj``'s state as one buffer."""
    from pemu.migration.qemu_file import QEMUFileWriter

    out = io.BytesIO()
    writer = QEMUFileWriter(out)
    vmstate_save_state(writer, vmsd, obj)
    writer.flush()
    return out.getvalue()


def vmstate_load_bytes(vmsd: VMStateDescription, obj: Any, data: bytes, version_id: int | None = None) -> None:
    """Load a buffer from :func:`vmstate_save_bytes` into ``obj``; every byte must be used."""
    from pemu.migration.qemu_file import QEMUFileReader

    reader = QEMUFileReader(io.BytesIO(data))
    vmstate_load_state(reader, vmsd, obj, vmsd.version_id if version_id is None else version_id)
    if reader.get_buffer_upto(1):
        raise VMStateError(f"{vmsd.name}: trailing bytes after the state")


VMSTATE_NO_STATE_FIELDS: tuple[VMStateField, ...] = ()


def vmstate_no_state(name: str) -> VMStateDescription:
    """The description of a device with nothing to migrate (said explicitly,
    so it does not block saving)."""
    return VMStateDescription(name, version_id=1, fields=VMSTATE_NO_STATE_FIELDS)
