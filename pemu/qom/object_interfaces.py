"""User-creatable objects (QEMU's qom/object_interfaces.c): what -object makes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.qom.object import (
    TYPE_INTERFACE,
    InterfaceClass,
    Object,
    QOMError,
    TypeInfo,
    object_class_by_name,
    object_get_objects_root,
    object_new,
    type_register,
)

TYPE_USER_CREATABLE = "user-creatable"


class UserCreatableClass(InterfaceClass):
    complete: Callable[[Object], None] | None = None


type_register(TypeInfo(TYPE_USER_CREATABLE, parent=TYPE_INTERFACE, class_type=UserCreatableClass))


def user_creatable_complete(obj: Object) -> None:
    klass = obj.klass
    if isinstance(klass, UserCreatableClass) and klass.complete is not None:
        klass.complete(obj)


def user_creatable_add(qom_type: str, obj_id: str, props: dict[str, str]) -> Object:
    """-object TYPE,id=ID,prop=value...: create, set properties, complete,
    and add under /objects."""
    klass = object_class_by_name(qom_type)
    if klass is None or not klass.type.info.interfaces and not klass.dynamic_cast(TYPE_USER_CREATABLE):
        raise QOMError(f"invalid object type: {qom_type}")
    if not klass.dynamic_cast(TYPE_USER_CREATABLE):
        raise QOMError(f"object type '{qom_type}' isn't supported by object-add")
    if klass.abstract:
        raise QOMError(f"object type '{qom_type}' is abstract")
    root = object_get_objects_root()
    if root.child(obj_id) is not None:
        raise QOMError(f"attempt to add duplicate property '{obj_id}' to object (type 'container')")
    obj = object_new(qom_type)
    try:
        for name, value in props.items():
            obj.property_parse(name, value)
        root.add_child(obj_id, obj)
        user_creatable_complete(obj)
    except Exception:
        obj.unparent()
        raise
    finally:
        obj.unref()
    return obj


def user_creatable_props(klass: Any) -> list[str]:
    return [p.name for p in klass.property_iter()]
