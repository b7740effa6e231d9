"""TYPE_CPU, the accelerator-independent CPU device (QEMU's hw/core/cpu-common.c)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pemu.hw.core.qdev import TYPE_DEVICE, DeviceClass, DeviceState
from pemu.qom.object import Object, ObjectClass, TypeInfo, object_check, object_class_check, type_register

if TYPE_CHECKING:
    from pemu.accel.accel import AccelVCPU

TYPE_CPU = "cpu"


class CPUClass(DeviceClass):
    pass


class CPURunState:
    """What the vCPU thread and the rest of the machine share about one CPU."""

    def __init__(self) -> None:
        self.lock = threading.Condition(threading.Lock())
        self.interrupt_request = 0
        self.halted = False
        self.shutdown = False  # after a triple fault: wait for reset
        self.stop = False  # a stop was requested
        self.stopped = True  # the thread is parked (the VM starts stopped)
        self.unplug = False  # the thread must exit
        # Temporary parks (pemu.system.cpus.cpu_parked) in progress: while any
        # is, the vCPU stays parked, and whether it runs again when the last
        # ends follows the stops and resumes asked for meanwhile.
        self.held = 0
        self.resume_after_hold = False
        self.thread: threading.Thread | None = None
        self.accel_vcpu: AccelVCPU | None = None
        self.exited = threading.Event()  # set when its thread lets go of it after unplug


class CPUState(DeviceState):
    """A CPU as the machine sees it; the run state the vCPU thread and the
    accelerator share lives in ``run`` (driven by pemu.system.cpus)."""

    cpu_index: int
    run: CPURunState

    def reset(self) -> None:
        """Put the CPU in its power-on state (each target's CPU does it)."""
        raise NotImplementedError(f"{self.typename} has no reset")


def _cpu_initfn(obj: Object) -> None:
    cpu = object_check(obj, CPUState)
    cpu.run = CPURunState()


def _cpu_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.user_creatable = False  # CPUs come from -smp, not -device (no CPU hot-plug yet)
    dc.categories = ("cpu",)


type_register(TypeInfo(TYPE_CPU, parent=TYPE_DEVICE, abstract=True, instance_type=CPUState,
                       class_type=CPUClass, class_init=_cpu_class_init, instance_init=_cpu_initfn))
