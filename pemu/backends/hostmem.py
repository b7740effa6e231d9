"""Host memory back-ends (QEMU's backends/hostmem.c, hostmem-ram.c).

memory-backend-ram allocates guest RAM as an anonymous mapping with
MAP_NORESERVE (ram_backend_memory_alloc in the seed), so `-m 4096` costs
nothing until the guest touches the memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.qom.object import (
    TYPE_OBJECT,
    Object,
    ObjectClass,
    QOMError,
    TypeInfo,
    object_check,
    object_class_check,
    type_register,
)
from pemu.qom.object_interfaces import TYPE_USER_CREATABLE, UserCreatableClass
from pemu.system.memory import MemoryRegion

TYPE_MEMORY_BACKEND = "memory-backend"
TYPE_MEMORY_BACKEND_RAM = "memory-backend-ram"


class HostMemoryBackend(Object):
    size: int
    mr: MemoryRegion | None
    share: bool
    prealloc: bool
    dump: bool
    merge: bool
    mapped: bool  # a machine uses it as its RAM

    def is_mapped(self) -> bool:
        return self.mapped

    def set_mapped(self, mapped: bool) -> None:
        self.mapped = mapped

    def get_memory(self) -> MemoryRegion:
        assert self.mr is not None, "memory back-end used before it was completed"
        return self.mr


class HostMemoryBackendClass(UserCreatableClass):
    alloc: Callable[[HostMemoryBackend], None] | None = None


def _check_size(obj: Object, value: int) -> None:
    backend = object_check(obj, HostMemoryBackend)
    if backend.mr is not None:
        raise QOMError("cannot change property 'size' of memory-backend after it was completed")
    if value == 0:
        raise QOMError("property 'size' of memory-backend doesn't take value '0'")


def _hostmem_init(obj: Object) -> None:
    backend = object_check(obj, HostMemoryBackend)
    backend.mr = None
    backend.size = 0
    backend.mapped = False


def host_memory_backend_memory_complete(obj: Object) -> None:
    backend = object_check(obj, HostMemoryBackend)
    if backend.size == 0:
        raise QOMError("can't create backend with size 0")
    klass = object_class_check(obj.klass, HostMemoryBackendClass)
    if klass.alloc is not None:
        klass.alloc(backend)


def _hostmem_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, HostMemoryBackendClass)
    k.complete = host_memory_backend_memory_complete
    k.property_add_field("size", "size", check=_check_size, description="Size of the memory region (ex: 500M)")
    k.property_add_field("share", "bool", default=False, description="Mark the memory as private to QEMU or shared")
    k.property_add_field("prealloc", "bool", default=False, description="Preallocate memory")
    k.property_add_field("dump", "bool", default=True, description="Set to 'off' to exclude from core dump")
    k.property_add_field("merge", "bool", default=True, description="Mark memory as mergeable")


def ram_backend_memory_alloc(backend: HostMemoryBackend) -> None:
    name = backend.name_in_parent() or "memory-backend-ram"
    try:
        backend.mr = MemoryRegion.ram(name, backend.size, owner=backend)
    except OSError as e:
        # As QEMU's ram_block_add: the size does not fit in the host's address space.
        raise QOMError(f"cannot set up guest memory '{name}': {e.strerror}") from None
    if backend.prealloc:
        block = backend.mr.ram_block
        assert block is not None  # a RAM region has its block
        view = block.view
        for off in range(0, backend.size, 4096):
            view[off] = 0


def _ram_backend_class_init(klass: ObjectClass, data: Any) -> None:
    object_class_check(klass, HostMemoryBackendClass).alloc = ram_backend_memory_alloc


type_register(TypeInfo(TYPE_MEMORY_BACKEND, parent=TYPE_OBJECT, abstract=True, interfaces=(TYPE_USER_CREATABLE,),
                       instance_type=HostMemoryBackend, class_type=HostMemoryBackendClass,
                       class_init=_hostmem_class_init, instance_init=_hostmem_init))
type_register(TypeInfo(TYPE_MEMORY_BACKEND_RAM, parent=TYPE_MEMORY_BACKEND, class_init=_ram_backend_class_init))
