"""Shared checks for device state descriptions (pemu.migration.vmstate).

``roundtrip`` is the test every device's description gets: save a device,
load the bytes into a freshly built one, save that again and compare.
``saved_with`` makes a stream in which one field holds a value the device
could never have produced (a FIFO longer than the chip's, an index past a
table), to check that the description refuses it.
"""

from __future__ import annotations

from typing import Any

import pytest

from pemu.migration.vmstate import VMStateDescription, VMStateError, vmstate_load_bytes, vmstate_save_bytes


def roundtrip(vmsd: VMStateDescription, src: Any, dst: Any) -> bytes:
    """Save ``src``, load into ``dst`` (a fresh device), and check that ``dst``
    saves the very same bytes; return them."""
    data = vmstate_save_bytes(vmsd, src)
    vmstate_load_bytes(vmsd, dst, data)
    again = vmstate_save_bytes(vmsd, dst)
    assert again == data, "the loaded device saves different state"
    return data


def _resolve(obj: Any, path: str) -> tuple[Any, str]:
    """The object holding the last part of a dotted path (numeric parts index lists)."""
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj, last


def _get(holder: Any, name: str) -> Any:
    return holder[int(name)] if name.isdigit() else getattr(holder, name)


def _set(holder: Any, name: str, value: Any) -> None:
    if name.isdigit():
        holder[int(name)] = value
    else:
        setattr(holder, name, value)


def saved_with(vmsd: VMStateDescription, obj: Any, path: str, value: Any) -> bytes:
    """``obj``'s state saved with the attribute at ``path`` (dots; numbers
    index lists: ``"channels.0.mode"``) replaced by ``value``; ``obj`` is
    left as it was."""
    holder, name = _resolve(obj, path)
    old = _get(holder, name)
    _set(holder, name, value)
    try:
        return vmstate_save_bytes(vmsd, obj)
    finally:
        _set(holder, name, old)


def assert_refused(vmsd: VMStateDescription, fresh: Any, data: bytes, match: str | None = None) -> None:
    """Loading ``data`` into ``fresh`` is refused with one VMStateError line."""
    with pytest.raises(VMStateError, match=match) as info:
        vmstate_load_bytes(vmsd, fresh, data)
    assert "\n" not in str(info.value)


def patched(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with the one occurrence of ``old`` replaced by ``new``: a
    stream the saving side would refuse to write (a list longer than its
    maximum), made from one it wrote."""
    assert data.count(old) == 1, f"{old.hex()} occurs {data.count(old)} times in the stream"
    return data.replace(old, new)
