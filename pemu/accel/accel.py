"""Accelerators (QEMU's accel/accel-*.c and AccelOpsClass).

An accelerator runs guest code for the vCPUs.  The machine picks one with
``-accel`` (or the default ``tcg``) through :func:`configure_accelerators`,
calls ``init_machine`` once, and the CPU code in pemu.system.cpus drives
each vCPU through an :class:`AccelVCPU` the accelerator creates.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from enum import Enum, auto
from typing import Any, Protocol

from pemu.util.error import UserError


class AccelUnavailable(Exception):
    """This accelerator cannot run here (no /dev/kvm, engine missing...)."""


class VCPUExit(Enum):
    """Why :meth:`AccelVCPU.exec` returned."""

    KICKED = auto()  # interrupt request, stop request, or another kick
    HALTED = auto()  # HLT: wait for an interrupt
    SHUTDOWN = auto()  # triple fault or fatal error: wait for reset


class AccelVCPU(Protocol):
    """One vCPU on an accelerator; all methods run on its thread except ``kick``."""

    def exec(self) -> VCPUExit: ...

    def has_work(self) -> bool: ...

    def kick(self) -> None: ...

    def get_state(self) -> None: ...

    def put_state(self) -> None: ...

    def destroy(self) -> None: ...


class AccelOps(ABC):
    name: str = ""
    supports_smp: bool = False

    @abstractmethod
    def init_machine(self, machine: Any) -> None: ...

    @abstractmethod
    def create_vcpu(self, cpu: Any) -> AccelVCPU:
        """Make the accelerator's half of ``cpu`` (called on the main thread)."""

    def create_vcpu_thread(self, cpu: Any) -> None:
        from pemu.system.cpus import start_vcpu_thread

        start_vcpu_thread(cpu, self.create_vcpu(cpu))

    def kick_vcpu(self, cpu: Any) -> None:
        vcpu = cpu.run.accel_vcpu
        if vcpu is not None:
            vcpu.kick()

    def synchronize_state(self, cpu: Any) -> None:
        cpu.run.accel_vcpu.get_state()

    def synchronize_post_reset(self, cpu: Any) -> None:
        cpu.run.accel_vcpu.put_state()

    def destroy_vcpu(self, cpu: Any) -> None:
        cpu.run.accel_vcpu.destroy()

    def cpu_model_filter(self) -> dict[Any, int]:
        """CPUID feature bits this accelerator cannot provide (word → mask)."""
        return {}

    @classmethod
    def description(cls) -> str:
        """What runs guest code here, for ``-accel help`` and ``info accel`` ("" if nothing to say)."""
        return ""


# name → "module:Class"; imported on first use, so a missing engine only
# matters when it is asked for.
_REGISTRY: dict[str, str] = {
    "tcg": "pemu.accel.tcg.tcg_accel:TCGAccel",
    "kvm": "pemu.accel.kvm.kvm_accel:KVMAccel",
}
_current: AccelOps | None = None


def register_accel(name: str, target: str) -> None:
    _REGISTRY[name] = target


def accel_names() -> list[str]:
    return sorted(_REGISTRY)


def accel_help() -> str:
    lines = []
    for name in accel_names():
        try:
            detail = _accel_class(name).description()
        except AccelUnavailable as e:
            detail = str(e)
        lines.append(f"{name}  ({detail})\n" if detail else f"{name}\n")
    return "Accelerators supported in QEMU binary:\n" + "".join(lines)


def _accel_class(name: str) -> type[AccelOps]:
    target = _REGISTRY[name]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AccelUnavailable(f"{name} accelerator is not available: {e}") from None
    cls: type[AccelOps] = getattr(module, class_name)
    return cls


def find_accel(name: str) -> AccelOps:
    """Instantiate accelerator ``name``; raises AccelUnavailable or KeyError."""
    return _accel_class(name)()


def configure_accelerators(spec: str | None = None, smp_cpus: int = 1, location: str | None = None) -> AccelOps:
    """Pick the first usable accelerator of ``spec`` ("kvm:tcg"); default tcg.

    Unknown names and a list where nothing works are user errors; so is
    -smp > 1 on an accelerator that runs a single vCPU.
    """
    global _current
    names = [n for n in (spec or "tcg").split(":") if n]
    loc = location or (f"-accel {spec}" if spec else None)
    errors: list[str] = []
    for name in names:
        if name not in _REGISTRY:
            raise UserError(f"invalid accelerator {name}", loc)
    for name in names:
        try:
            accel = find_accel(name)
        except AccelUnavailable as e:
            errors.append(str(e))
            continue
        if smp_cpus > 1 and not accel.supports_smp:
            raise UserError(f"{name} supports only one vCPU", f"-smp {smp_cpus}")
        _current = accel
        return accel
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise UserError(f"no accelerator found{detail}", loc)


def current_accel() -> AccelOps | None:
    return _current


def set_current_accel(accel: AccelOps | None) -> None:
    global _current
    _current = accel
