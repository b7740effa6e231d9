"""Accelerators (QEMU's accel/accel-*.c and AccelOpsClass).

An accelerator runs guest code for the vCPUs.  The machine picks one with
``-accel`` (or the default ``tcg``) through :func:`configure_accelerators`,
calls ``init_machine`` once, and the CPU code in pemu.system.cpus drives
each vCPU through an :class:`AccelVCPU` the accelerator creates.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from enum import Enum, auto
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from pemu.util.error import UserError
from pemu.util.vm_context import current_vm

if TYPE_CHECKING:
    from pemu.hw.core.irq import IRQLine
    from pemu.system.memory import RAMBlock


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

    def handle_interrupt(self, mask: int) -> None:
        """Interrupt request bits ``mask`` were raised (any thread; QEMU's
        AccelOpsClass.handle_interrupt): make the vCPU see them."""
        ...

    def get_state(self) -> None: ...

    def put_state(self) -> None: ...

    def destroy(self) -> None: ...


class AccelProperty(NamedTuple):
    """A property of an accelerator object, set with ``-accel NAME,PROP=VALUE``
    (QEMU's ``tcg-accel.thread``).

    ``parse`` turns the text into the value stored in the accelerator's
    attribute ``attr``, raising ValueError with QEMU's message for a bad one.
    A property QEMU has and pemu does not act on has ``parse`` None (and
    ``reason``): it is refused by name rather than silently ignored.
    """

    name: str
    attr: str = ""
    parse: Callable[[str], Any] | None = None
    reason: str = "is not supported by pemu"


def parse_on_off_split(name: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in ("on", "off", "split"):
            raise ValueError(f"Parameter '{name}' does not accept value '{text}'")
        return text

    return parse


def parse_uint64(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            value = -1
        if not 0 <= value < 1 << 64:
            raise ValueError(f"Parameter '{name}' expects uint64")
        return value

    return parse


def _parse_tcg_thread(text: str) -> str:
    if text == "multi":
        raise ValueError("thread=multi is not supported by pemu: its tcg runs every vCPU in turn on one thread, "
                         "because the engine's atomic instructions are not atomic across host threads")
    if text != "single":
        raise ValueError(f"Invalid 'thread' setting {text}")
    return text


TB_SIZE_MAX_MIB = (1 << 32) // (1 << 20) - 1  # the engine takes the size in bytes as a 32-bit number


def _parse_tcg_tb_size(text: str) -> int:
    mib = parse_uint64("tb-size")(text)
    if mib > TB_SIZE_MAX_MIB:
        raise ValueError(f"tb-size {mib} MiB is too large: pemu's tcg takes at most {TB_SIZE_MAX_MIB} MiB")
    return mib


# QEMU 7.2's properties of tcg-accel and kvm-accel (qom-list-properties).
TCG_ACCEL_PROPERTIES = (
    AccelProperty("thread", "thread", _parse_tcg_thread),
    AccelProperty("tb-size", "tb_size_mib", _parse_tcg_tb_size),
    AccelProperty("split-wx"),
)


def _parse_kernel_irqchip(text: str) -> str:
    if parse_on_off_split("kernel-irqchip")(text) == "split":
        raise ValueError("kernel-irqchip=split is not supported by pemu")
    return text


KVM_ACCEL_PROPERTIES = (
    AccelProperty("kernel-irqchip", "kernel_irqchip", _parse_kernel_irqchip),
    AccelProperty("notify-vmexit"),
    AccelProperty("notify-window"),
    AccelProperty("dirty-ring-size"),
    AccelProperty("kvm-shadow-mem"),
)


class AccelOps(ABC):
    name: str = ""
    supports_smp: bool = False
    # Properties -accel may set, beyond the accelerator's name.
    properties: ClassVar[tuple[AccelProperty, ...]] = ()

    @property
    def type_name(self) -> str:
        """The QOM type name QEMU gives this accelerator ("tcg-accel")."""
        return f"{self.name}-accel"

    def set_properties(self, props: Sequence[tuple[str, str]], location: str | None) -> None:
        """Apply ``-accel`` properties in order; unknown, unsupported or bad ones are user errors."""
        by_name = {prop.name: prop for prop in self.properties}
        for key, text in props:
            prop = by_name.get(key)
            if prop is None:
                raise UserError(f"Property '{self.type_name}.{key}' not found", location)
            if prop.parse is None:
                raise UserError(f"Property '{self.type_name}.{key}' {prop.reason}", location)
            try:
                value = prop.parse(text)
            except ValueError as e:
                raise UserError(str(e), location) from None
            setattr(self, prop.attr, value)

    @abstractmethod
    def init_machine(self, machine: Any) -> None: ...

    @abstractmethod
    def create_vcpu(self, cpu: Any) -> AccelVCPU:
        """Make the accelerator's half of ``cpu`` (called on the main thread)."""

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

    def irqchip_in_kernel(self) -> bool:
        """The accelerator emulates the interrupt controllers itself (QEMU's
        kvm_irqchip_in_kernel()): the board then makes no userspace PIC."""
        return False

    def irqchip_gsi_lines(self) -> list[IRQLine]:
        """The interrupt lines into the accelerator's interrupt controllers,
        by GSI (the 16 ISA IRQs first); empty unless :meth:`irqchip_in_kernel`."""
        return []

    def irqchip_state(self) -> dict[str, bytes]:
        """The in-kernel interrupt controllers' state, by name ("pic_master",
        "pic_slave", "ioapic", "pit"), in the accelerator's own layout (only
        meaningful when :meth:`irqchip_in_kernel`)."""
        raise NotImplementedError(f"{self.name} keeps no interrupt controller")

    def set_irqchip_state(self, state: dict[str, bytes]) -> None:
        """Load what :meth:`irqchip_state` gave (the VM stopped)."""
        raise NotImplementedError(f"{self.name} keeps no interrupt controller")

    def cleanup(self) -> None:  # noqa: B027  (an optional hook: nothing to release by default)
        """Release what ``init_machine`` took (file descriptors, mappings) when the VM is destroyed."""

    def start_vcpu(self, cpu: Any, vcpu: AccelVCPU) -> bool:
        """Run ``vcpu`` on a thread of the accelerator's own; False: give it a
        thread of its own (pemu.system.cpus.start_vcpu_thread)."""
        return False

    def cpu_model_filter(self) -> dict[Any, int]:
        """CPUID feature bits this accelerator cannot provide (word → mask)."""
        return {}

    def set_cpu_pm(self, enabled: bool, location: str | None) -> None:
        """-overcommit cpu-pm=on: leave HLT, PAUSE and the C-states to the guest's
        CPU (QEMU's enable_cpu_pm); only an accelerator that runs the guest on
        the host's CPU can."""
        if enabled:
            raise UserError(f"cpu-pm=on is not supported with -accel {self.name}", location)

    def host_cpu_model(self) -> Any:
        """The model ``-cpu host`` gives (a pemu.target.i386.cpu_models.X86CPUModel:
        the host's identification and every feature the accelerator can
        virtualize), or None where there is no such model (QEMU: "CPU model
        'host' requires KVM or HVF")."""
        return None

    def host_phys_bits(self) -> int:
        """The host's physical address width (``-cpu ...,host-phys-bits=on``); 0 if unknown."""
        return 0

    def send_msi(self, address: int, data: int) -> None:
        """Deliver an MSI to the accelerator's interrupt controllers (only
        meaningful when :meth:`irqchip_in_kernel`)."""
        from pemu.util.log import guest_error

        guest_error(f"{self.name}: MSI to {address:#x} without an in-kernel irqchip dropped")

    # -- dirty page logging (QEMU's MemoryListener log_global_start/log_sync/log_global_stop);
    # pemu.system.dirty_log drives them and logs the VMM's own writes itself.
    def log_global_start(self, blocks: Sequence[RAMBlock]) -> bool:
        """Start logging the pages of ``blocks`` the vCPUs write; False if
        this accelerator cannot (then nothing is logged)."""
        return False

    def log_sync(self, bitmaps: dict[RAMBlock, bytearray]) -> None:  # noqa: B027  (only if log_global_start)
        """OR the pages the vCPUs wrote since the start or the previous sync
        into each block's bitmap (a bit per 4 KiB page, page i = bit i % 8
        of byte i // 8) and forget them."""

    def log_global_stop(self) -> None:  # noqa: B027  (nothing to undo when log_global_start said no)
        """Stop logging."""

    @classmethod
    def description(cls) -> str:
        """What runs guest code here, for ``-accel help`` and ``info accel`` ("" if nothing to say)."""
        return ""


# name → "module:Class"; imported on first use, so a missing engine only
# matters when it is asked for.
_REGISTRY: dict[str, str] = {
    "tcg": "pemu.accel.tcg.tcg_all:TCGAccel",
    "kvm": "pemu.accel.kvm.kvm_accel:KVMAccel",
}


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


class AccelRequest(NamedTuple):
    """One accelerator to try, as one -accel option asked for it."""

    name: str
    props: tuple[tuple[str, str], ...] = ()
    location: str | None = None


def accel_requests(spec: str, location: str | None = None,
                   props: Sequence[tuple[str, str]] = ()) -> list[AccelRequest]:
    """The accelerators of "kvm:tcg" in order, each with ``props``."""
    return [AccelRequest(name, tuple(props), location) for name in spec.split(":") if name]


def configure_accelerators(spec: str | Sequence[AccelRequest] | None = None, smp_cpus: int = 1,
                           location: str | None = None) -> AccelOps:
    """Pick the first usable accelerator of ``spec`` ("kvm:tcg", or the
    requests of the -accel options in order); default tcg.

    Unknown names and a list where nothing works are user errors; so is
    -smp > 1 on an accelerator that runs a single vCPU, and a property the
    chosen accelerator does not have (those of one that is not available
    are not looked at, as in QEMU).
    """
    if spec is None or isinstance(spec, str):
        requests = accel_requests(spec or "tcg", location or (f"-accel {spec}" if spec else None))
    else:
        requests = list(spec) or accel_requests("tcg")
    loc = requests[0].location
    errors: list[str] = []
    for request in requests:
        if request.name not in _REGISTRY:
            raise UserError(f"invalid accelerator {request.name}", request.location)
    for request in requests:
        try:
            accel = find_accel(request.name)
        except AccelUnavailable as e:
            errors.append(str(e))
            continue
        accel.set_properties(request.props, request.location)
        if smp_cpus > 1 and not accel.supports_smp:
            raise UserError(f"{request.name} supports only one vCPU", f"-smp {smp_cpus}")
        current_vm().accel = accel
        return accel
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise UserError(f"no accelerator found{detail}", loc)


def current_accel() -> AccelOps | None:
    """The current VM's accelerator (QEMU's current_accel(), current_machine->accelerator)."""
    return current_vm().accel

