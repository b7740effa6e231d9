"""TYPE_CPU, the accelerator-independent CPU device (QEMU's hw/core/cpu-common.c)."""

from __future__ import annotations

from typing import Any

from pemu.hw.core.qdev import TYPE_DEVICE, DeviceClass, DeviceState
from pemu.qom.object import ObjectClass, TypeInfo, object_class_check, type_register

TYPE_CPU = "cpu"


class CPUClass(DeviceClass):
    pass


class CPUState(DeviceState):
    """A CPU as the machine sees it; the run state the vCPU thread and the
    accelerator share lives in ``run`` (pemu.system.cpus)."""

    cpu_index: int


def _cpu_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.user_creatable = False  # CPUs come from -smp, not -device (no CPU hot-plug yet)
    dc.categories = ("cpu",)


type_register(TypeInfo(TYPE_CPU, parent=TYPE_DEVICE, abstract=True, instance_type=CPUState,
                       class_type=CPUClass, class_init=_cpu_class_init))
