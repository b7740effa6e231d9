"""QOM, the QEMU Object Model (qom/object.c), in Python.

A *type* is registered by name with a :class:`TypeInfo`: its parent, whether
it is abstract, the interfaces it implements, and the hooks that shape its
class and its instances.  Each type has exactly one *class object*, made on
first use by :func:`type_initialize`: the parent's class is made first and
copied into the child's (that is how a class inherits), then every
ancestor's ``class_base_init`` runs, then the type's own ``class_init``.
All objects of a type share that class object.

An object is made by :func:`object_new`: its class properties are set to
their defaults, ``instance_init`` runs for each type from the root down to
the object's own type, then ``instance_post_init`` from the object's type up
to the root.  When the last reference goes, ``instance_finalize`` runs from
the object's type up to the root.

Objects form the *composition tree* through ``child<>`` properties: every
object added as a child of another has one canonical path from the root
("/machine/peripheral/net0").  ``link<>`` properties point at objects
without owning them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from pemu.util.vm_context import current_vm

TYPE_OBJECT = "object"
TYPE_INTERFACE = "interface"
TYPE_CONTAINER = "container"

ClassInit = Callable[["ObjectClass", Any], None]
InstanceHook = Callable[["Object"], None]


class QOMError(Exception):
    """A QOM operation failed; the message is in QEMU's wording."""


class QOMCastError(QOMError):
    pass


@dataclass
class TypeInfo:
    """What a type's registration says about it (QEMU's TypeInfo)."""

    name: str
    parent: str | None = TYPE_OBJECT
    abstract: bool = False
    interfaces: tuple[str, ...] = ()
    class_init: ClassInit | None = None
    class_base_init: ClassInit | None = None
    class_data: Any = None
    instance_init: InstanceHook | None = None
    instance_post_init: InstanceHook | None = None
    instance_finalize: InstanceHook | None = None
    # The Python classes of the type's instances and of its class object;
    # None means "the same as the parent's".
    instance_type: type[Object] | None = None
    class_type: type[ObjectClass] | None = None


@dataclass
class TypeImpl:
    """A registered type: its TypeInfo, resolved parent and class object (QEMU's TypeImpl)."""

    info: TypeInfo
    parent_type: TypeImpl | None = None
    klass: ObjectClass | None = None

    @property
    def name(self) -> str:
        return self.info.name

    def ancestors(self) -> Iterator[TypeImpl]:
        """This type, then its parent, up to the root."""
        t: TypeImpl | None = self
        while t is not None:
            yield t
            t = t.parent_type


_types: dict[str, TypeImpl] = {}


# --- properties -----------------------------------------------------------------

PropGetter = Callable[["Object"], Any]
PropSetter = Callable[["Object", Any], None]


@dataclass
class ObjectProperty:
    """A named, typed property of a class or of one object.

    ``type`` is QOM's type string: "bool", "str", "size", "int", "uint8" ..
    "uint64", "int64", an enum's name (with ``enum_values``), "link<T>" or
    "child<T>".  ``set`` receives an already parsed Python value.
    """

    name: str
    type: str
    get: PropGetter | None = None
    set: PropSetter | None = None
    release: Callable[[Object], None] | None = None
    description: str = ""
    default: Any = None
    enum_values: tuple[str, ...] | None = None
    # For properties stored in an instance attribute: its name, so a
    # property without a default still starts as None.
    attr: str | None = None

    @property
    def is_child(self) -> bool:
        return self.type.startswith("child<")

    @property
    def is_link(self) -> bool:
        return self.type.startswith("link<")

    def target_type(self) -> str:
        return self.type[self.type.index("<") + 1:-1]


_INT_RANGES = {
    "uint8": (0, 0xFF), "uint16": (0, 0xFFFF), "uint32": (0, 0xFFFFFFFF),
    "uint64": (0, (1 << 64) - 1), "int8": (-128, 127), "int16": (-(1 << 15), (1 << 15) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "int64": (-(1 << 63), (1 << 63) - 1), "int": (-(1 << 63), (1 << 63) - 1),
}


def parse_property_value(prop: ObjectProperty, text: str) -> Any:
    """Turn the text of ``prop=text`` (from -device, -global, -machine, the
    monitor) into the property's Python value, with QEMU's error wording."""
    from pemu.util.cutils import parse_bool, qemu_strtosz

    kind = prop.type
    if kind == "bool":
        try:
            return parse_bool(text)
        except ValueError:
            raise QOMError(f"Parameter '{prop.name}' expects 'on' or 'off'") from None
    if kind == "str":
        return text
    if kind == "size":
        try:
            return qemu_strtosz(text)
        except ValueError:
            raise QOMError(f"Parameter '{prop.name}' expects a size") from None
    if kind in _INT_RANGES:
        lo, hi = _INT_RANGES[kind]
        try:
            value = int(text, 0)
        except ValueError:
            raise QOMError(f"Parameter '{prop.name}' expects {kind}") from None
        if not lo <= value <= hi:
            raise QOMError(f"Parameter '{prop.name}' expects {kind}")
        return value
    if prop.enum_values is not None:
        if text not in prop.enum_values:
            raise QOMError(f"Parameter '{prop.name}' does not accept value '{text}'")
        return text
    if prop.is_link:
        return text  # resolved by the setter, which knows the root
    raise QOMError(f"Property '{prop.name}' of type '{kind}' cannot be set from a string")


def format_property_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Object):
        return value.canonical_path() or ""
    if value is None:
        return ""
    return str(value)


# --- classes -------------------------------------------------------------------


class ObjectClass:
    """The class object of a type.  Subclass it to add class fields
    (``class MachineClass(ObjectClass)``); a type's class object starts as a
    copy of its parent's, so fields set by a parent's class_init are inherited."""

    type: TypeImpl
    properties: dict[str, ObjectProperty]
    interfaces: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def parent_class(self) -> ObjectClass | None:
        parent = self.type.parent_type
        return parent.klass if parent else None

    @property
    def abstract(self) -> bool:
        return self.type.info.abstract

    # -- class properties ------------------------------------------------------
    def property_add(self, prop: ObjectProperty) -> ObjectProperty:
        if self.property_find(prop.name) is not None:
            raise QOMError(f"attempt to add duplicate property '{prop.name}' to class (type '{self.name}')")
        self.properties[prop.name] = prop
        return prop

    def property_find(self, name: str) -> ObjectProperty | None:
        klass: ObjectClass | None = self
        while klass is not None:
            prop = klass.properties.get(name)
            if prop is not None:
                return prop
            klass = klass.parent_class
        return None

    def property_iter(self) -> Iterator[ObjectProperty]:
        """Every class property, the type's own first, then its ancestors'."""
        seen: set[str] = set()
        klass: ObjectClass | None = self
        while klass is not None:
            for prop in klass.properties.values():
                if prop.name not in seen:
                    seen.add(prop.name)
                    yield prop
            klass = klass.parent_class

    def property_add_field(self, name: str, kind: str, attr: str | None = None, default: Any = None,
                           description: str = "", enum_values: tuple[str, ...] | None = None,
                           check: Callable[[Object, Any], None] | None = None) -> ObjectProperty:
        """A property stored in an instance attribute (default: the property
        name with '-' as '_'); ``check(obj, value)`` may refuse a value."""
        attr = attr or name.replace("-", "_")

        def getter(obj: Object) -> Any:
            return getattr(obj, attr)

        def setter(obj: Object, value: Any) -> None:
            if check is not None:
                check(obj, value)
            setattr(obj, attr, value)

        return self.property_add(ObjectProperty(name, kind, getter, setter, None, description, default, enum_values,
                                                attr))

    def dynamic_cast(self, typename: str) -> ObjectClass | None:
        return self if type_is_a(self.type, typename) else None

    def __repr__(self) -> str:
        return f"<class {self.name}>"


class InterfaceClass(ObjectClass):
    pass


def _lookup(name: str) -> TypeImpl:
    ti = _types.get(name)
    if ti is None:
        raise QOMError(f"unknown type '{name}'")
    return ti


def type_register(info: TypeInfo) -> TypeImpl:
    if info.name in _types:
        raise QOMError(f"type '{info.name}' is already registered")
    ti = TypeImpl(info)
    _types[info.name] = ti
    return ti


type_register_static = type_register


def type_register_static_array(infos: list[TypeInfo]) -> None:
    for info in infos:
        type_register(info)


def _resolve_parent(ti: TypeImpl) -> TypeImpl | None:
    if ti.parent_type is None and ti.info.parent is not None:
        ti.parent_type = _lookup(ti.info.parent)
    return ti.parent_type


def _python_types(ti: TypeImpl) -> tuple[type[Object], type[ObjectClass]]:
    instance_type: type[Object] | None = None
    class_type: type[ObjectClass] | None = None
    for t in ti.ancestors():
        _resolve_parent(t)
        instance_type = instance_type or t.info.instance_type
        class_type = class_type or t.info.class_type
    return instance_type or Object, class_type or ObjectClass


def type_initialize(ti: TypeImpl) -> ObjectClass:
    """Make the type's class object once: parent first, copied, then the
    ancestors' class_base_init, then the type's own class_init."""
    if ti.klass is not None:
        return ti.klass
    parent = _resolve_parent(ti)
    parent_class = type_initialize(parent) if parent is not None else None
    _, class_type = _python_types(ti)
    klass = class_type.__new__(class_type)
    if parent_class is not None:
        if not isinstance(klass, type(parent_class)):
            raise QOMError(f"class type of '{ti.name}' must derive from its parent's")
        for key, value in parent_class.__dict__.items():
            # The copy is shallow like QEMU's memcpy, but containers are
            # copied so a child adding to a list does not change its parent.
            klass.__dict__[key] = copy.copy(value) if isinstance(value, (list, dict, set)) else value
    klass.type = ti
    klass.properties = {}
    inherited = parent_class.interfaces if parent_class is not None else ()
    klass.interfaces = tuple(dict.fromkeys(inherited + tuple(ti.info.interfaces)))
    for iface in ti.info.interfaces:
        type_initialize(_lookup(iface))
    ti.klass = klass
    for ancestor in list(ti.ancestors())[1:]:
        if ancestor.info.class_base_init is not None:
            ancestor.info.class_base_init(klass, ti.info.class_data)
    if ti.info.class_init is not None:
        ti.info.class_init(klass, ti.info.class_data)
    return klass


def type_is_a(ti: TypeImpl, typename: str) -> bool:
    for t in ti.ancestors():
        if t.name == typename:
            return True
        _resolve_parent(t)
    klass = ti.klass
    if klass is not None and typename in klass.interfaces:
        return True
    if klass is None:
        return any(typename in t.info.interfaces for t in ti.ancestors())
    return False


def object_class_by_name(typename: str) -> ObjectClass | None:
    ti = _types.get(typename)
    return type_initialize(ti) if ti is not None else None


def object_class_get_list(implements_type: str | None, include_abstract: bool) -> list[ObjectClass]:
    """Every registered class that is (or implements) ``implements_type``.
    Making the list initializes each type's class, as in the seed's
    select_machine()."""
    result: list[ObjectClass] = []
    for ti in list(_types.values()):
        klass = type_initialize(ti)
        if implements_type is not None and not type_is_a(ti, implements_type):
            continue
        if (ti.info.abstract or type_is_a(ti, TYPE_INTERFACE)) and not include_abstract:
            continue
        result.append(klass)
    return result


def object_class_get_list_sorted(implements_type: str | None, include_abstract: bool) -> list[ObjectClass]:
    return sorted(object_class_get_list(implements_type, include_abstract), key=lambda k: k.name.lower())


def type_exists(typename: str) -> bool:
    return typename in _types


# --- objects -------------------------------------------------------------------

class Object:
    """An instance of a QOM type."""

    klass: ObjectClass
    properties: dict[str, ObjectProperty]
    parent: Object | None
    _ref: int

    @property
    def typename(self) -> str:
        return self.klass.type.name

    def _before_unparent(self) -> None:
        """Runs as the object leaves its parent (a device unrealizes here)."""

    def is_a(self, typename: str) -> bool:
        return type_is_a(self.klass.type, typename)

    def dynamic_cast(self, typename: str) -> Object | None:
        return self if self.is_a(typename) else None

    def cast(self, typename: str) -> Object:
        """OBJECT_CHECK: the object itself, or a QOMCastError."""
        if not self.is_a(typename):
            raise QOMCastError(f"Object {id(self):#x} is not an instance of type {typename}")
        return self

    # -- references ------------------------------------------------------------
    def ref(self) -> Self:
        self._ref += 1
        return self

    def unref(self) -> None:
        assert self._ref > 0, f"unref of a dead {self.typename}"
        self._ref -= 1
        if self._ref == 0:
            object_finalize(self)

    # -- properties -------------------------------------------------------------
    def property_add(self, prop: ObjectProperty) -> ObjectProperty:
        if prop.name in self.properties or self.klass.property_find(prop.name) is not None:
            raise QOMError(f"attempt to add duplicate property '{prop.name}' to object (type '{self.typename}')")
        self.properties[prop.name] = prop
        return prop

    def property_find(self, name: str) -> ObjectProperty | None:
        return self.klass.property_find(name) or self.properties.get(name)

    def property_iter(self) -> Iterator[ObjectProperty]:
        yield from self.klass.property_iter()
        yield from self.properties.values()

    def property_del(self, name: str) -> None:
        prop = self.properties.pop(name)
        if prop.release is not None:
            prop.release(self)

    def _find_or_fail(self, name: str) -> ObjectProperty:
        prop = self.property_find(name)
        if prop is None:
            raise QOMError(f"Property '{self.typename}.{name}' not found")
        return prop

    def property_set(self, name: str, value: Any) -> None:
        prop = self._find_or_fail(name)
        if prop.set is None:
            raise QOMError(f"Property '{self.typename}.{name}' is not writable")
        prop.set(self, value)

    def property_get(self, name: str) -> Any:
        prop = self._find_or_fail(name)
        if prop.get is None:
            raise QOMError(f"Property '{self.typename}.{name}' is not readable")
        return prop.get(self)

    def property_parse(self, name: str, text: str) -> None:
        """Set a property from its text form (object_property_parse)."""
        prop = self._find_or_fail(name)
        if prop.set is None:
            raise QOMError(f"Property '{self.typename}.{name}' is not writable")
        value = parse_property_value(prop, text)
        if prop.is_link:
            value = _resolve_link(prop, str(value))
        prop.set(self, value)

    def property_print(self, name: str) -> str:
        return format_property_value(self.property_get(name))

    # -- composition tree --------------------------------------------------------
    def add_child(self, name: str, child: Object) -> Object:
        """object_property_add_child: ``child`` becomes part of this object."""
        if child.parent is not None:
            raise QOMError(f"object '{child.typename}' already has a parent")
        prop = ObjectProperty(name, f"child<{child.typename}>", get=lambda _o: child,
                              release=lambda _o: _release_child(child))
        self.property_add(prop)
        child.parent = self
        child.ref()
        return child

    def children(self) -> Iterator[tuple[str, Object]]:
        for prop in list(self.properties.values()):
            if prop.is_child:
                assert prop.get is not None
                yield prop.name, prop.get(self)

    def child(self, name: str) -> Object | None:
        prop = self.properties.get(name)
        if prop is None or not prop.is_child:
            return None
        assert prop.get is not None
        return prop.get(self)

    def unparent(self) -> None:
        """Remove this object from its parent (object_unparent)."""
        parent = self.parent
        if parent is None:
            return
        for name, child in list(parent.children()):
            if child is self:
                parent.property_del(name)
                return

    def name_in_parent(self) -> str | None:
        if self.parent is None:
            return None
        for name, child in self.parent.children():
            if child is self:
                return name
        return None

    def canonical_path(self) -> str | None:
        """"/machine/peripheral/net0", or None if not in the tree."""
        parts: list[str] = []
        obj: Object = self
        root = object_get_root()
        while obj is not root:
            name = obj.name_in_parent()
            if name is None:
                return None
            parts.append(name)
            assert obj.parent is not None
            obj = obj.parent
        return "/" + "/".join(reversed(parts))

    def __repr__(self) -> str:
        return f"<{self.typename} {self.canonical_path() or 'unattached'}>"


_O = TypeVar("_O", bound=Object)
_C = TypeVar("_C", bound=ObjectClass)


def object_check(obj: Object, python_type: type[_O]) -> _O:
    """QEMU's OBJECT_CHECK in Python: ``obj`` seen as ``python_type``, the
    Python class of its QOM type or of an ancestor (so that its fields are
    known to the type checker); a QOMCastError if it is not one."""
    if not isinstance(obj, python_type):
        raise QOMCastError(f"Object {id(obj):#x} of type {obj.typename} is not a {python_type.__name__}")
    return obj


def object_class_check(klass: ObjectClass, python_type: type[_C]) -> _C:
    """QEMU's OBJECT_CLASS_CHECK in Python: a class object seen as
    ``python_type`` (its type's class_type or an ancestor's); a QOMCastError
    if it is not one."""
    if not isinstance(klass, python_type):
        raise QOMCastError(f"Class {klass.name} is not a {python_type.__name__}")
    return klass


def _release_child(child: Object) -> None:
    child._before_unparent()
    child.parent = None
    child.unref()


def _resolve_link(prop: ObjectProperty, path: str) -> Object | None:
    if path == "":
        return None
    target = object_resolve_path(path)
    if target is None:
        raise QOMError(f"Device '{path}' not found")
    if not target.is_a(prop.target_type()):
        raise QOMError(f"Invalid parameter type for '{prop.name}', expected: {prop.target_type()}")
    return target


def object_new_with_type(ti: TypeImpl) -> Object:
    klass = type_initialize(ti)
    if ti.info.abstract:
        raise QOMError(f"Object type '{ti.name}' is abstract")
    instance_type, _ = _python_types(ti)
    obj = instance_type.__new__(instance_type)
    object_initialize_with_type(obj, ti, klass)
    return obj


def object_initialize_with_type(obj: Object, ti: TypeImpl, klass: ObjectClass) -> None:
    obj.klass = klass
    obj.properties = {}
    obj.parent = None
    obj._ref = 1
    object_class_property_init_all(obj)
    for t in reversed(list(ti.ancestors())):  # parent first
        if t.info.instance_init is not None:
            t.info.instance_init(obj)
    for t in ti.ancestors():  # child first
        if t.info.instance_post_init is not None:
            t.info.instance_post_init(obj)


def object_class_property_init_all(obj: Object) -> None:
    """Give every class property with a default its default value."""
    for prop in reversed(list(obj.klass.property_iter())):
        if prop.default is not None and prop.set is not None:
            prop.set(obj, prop.default)
        elif prop.attr is not None:
            setattr(obj, prop.attr, None)


def object_new(typename: str) -> Object:
    return object_new_with_type(_lookup(typename))


def object_new_with_class(klass: ObjectClass) -> Object:
    return object_new_with_type(klass.type)


def object_finalize(obj: Object) -> None:
    for name in list(obj.properties):
        obj.property_del(name)
    for t in obj.klass.type.ancestors():  # child first
        if t.info.instance_finalize is not None:
            t.info.instance_finalize(obj)


# --- the root and containers ---------------------------------------------------------

def object_get_root() -> Object:
    """The root of the current VM's composition tree (made on first use)."""
    vm = current_vm()
    if vm.qom_root is None:
        vm.qom_root = object_new(TYPE_CONTAINER)
    return vm.qom_root


def container_get(root: Object, path: str) -> Object:
    """The container at ``path`` under ``root``, created as needed."""
    obj = root
    for part in [p for p in path.split("/") if p]:
        child = obj.child(part)
        if child is None:
            child = object_new(TYPE_CONTAINER)
            obj.add_child(part, child)
            child.unref()
        obj = child
    return obj


def object_get_objects_root() -> Object:
    return container_get(object_get_root(), "/objects")


def object_resolve_path(path: str, typename: str | None = None) -> Object | None:
    """An absolute path ("/machine/unattached/device[0]") or a partial one
    naming an object unambiguously anywhere in the tree ("net0")."""
    root = object_get_root()
    if path.startswith("/"):
        obj: Object | None = root
        for part in [p for p in path.split("/") if p]:
            assert obj is not None
            nxt = obj.child(part)
            if nxt is None:
                prop = obj.properties.get(part) or obj.klass.property_find(part)
                if prop is not None and prop.is_link and prop.get is not None:
                    nxt = prop.get(obj)
            obj = nxt
            if obj is None:
                return None
        if obj is not None and typename is not None and not obj.is_a(typename):
            return None
        return obj
    matches: list[Object] = []

    def walk(obj: Object) -> None:
        for name, child in obj.children():
            if name == path and (typename is None or child.is_a(typename)):
                matches.append(child)
            walk(child)

    walk(root)
    return matches[0] if len(matches) == 1 else None


# --- the base types --------------------------------------------------------------------

type_register(TypeInfo(TYPE_OBJECT, parent=None, abstract=True, instance_type=Object, class_type=ObjectClass))
type_register(TypeInfo(TYPE_INTERFACE, parent=None, abstract=True, class_type=InterfaceClass))
type_register(TypeInfo(TYPE_CONTAINER, parent=TYPE_OBJECT))
