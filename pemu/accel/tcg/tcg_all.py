"""The tcg accelerator object (QEMU's accel/tcg/tcg-all.c).

Choosing tcg does not load the engine: loading the Unicorn library (a large
shared object, the binding and ctypes) and its self-tests cost more than
building the rest of the machine, and a VM started with ``-S`` may never run
a guest instruction.  What can be known without loading it, whether the
chosen engine is there at all, is checked when the accelerator is chosen, so
a missing engine is still one error line at start.  Each vCPU's engine is
made on its own thread just before it first runs guest code
(:class:`TCGVCPUHandle`), as QEMU's vCPU threads set up their TCG context
when they start; the vCPU itself is :class:`pemu.accel.tcg.tcg_accel.TCGVCPU`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pemu.accel.accel import TCG_ACCEL_PROPERTIES, AccelOps, AccelUnavailable, VCPUExit
from pemu.accel.tcg.cpu_events import tcg_cpu_events
from pemu.accel.tcg.engine import (
    EngineFeature,
    EngineUnavailable,
    check_engine_available,
    engine_info,
    expected_engine_features,
)
from pemu.accel.tcg.tcg_accel_ops_rr import RRCPUThread
from pemu.system.cpus import CPU_INTERRUPT_HARD, CPU_INTERRUPT_INIT, CPU_INTERRUPT_NMI, CPU_INTERRUPT_SIPI
from pemu.target.i386.cpu_models import TCG_UNSUPPORTED, feature_bits
from pemu.target.i386.cpu_state import IF_MASK

if TYPE_CHECKING:
    from pemu.accel.tcg.tcg_accel import TCGVCPU


class TCGVCPUHandle:
    """The accelerator's half of one vCPU until its engine exists, then a pass-through to it.

    Before the first run the CPU state in ``cpu.env`` is the only copy:
    synchronising it is nothing to do, and the engine is loaded from it when
    it is made.  Making it takes a while, and a kick in that time would be
    lost (a run starts by forgetting earlier kicks), so the run that makes it
    returns at once and the vCPU thread looks at its requests again.
    """

    def __init__(self, cpu: Any, tb_size: int) -> None:
        self.cpu = cpu
        self.tb_size = tb_size
        self.vcpu: TCGVCPU | None = None
        self.rr: RRCPUThread | None = None  # set when the round-robin thread takes it on

    def engine_vcpu(self) -> TCGVCPU:
        """The vCPU on its engine, made now (on the calling thread) if it is not yet."""
        if self.vcpu is None:
            from pemu.accel.tcg.tcg_accel import TCGVCPU

            vcpu = TCGVCPU(self.cpu, self.tb_size)
            vcpu.rr = self.rr
            vcpu.put_state()
            self.vcpu = vcpu
        return self.vcpu

    def exec(self) -> VCPUExit:
        if self.vcpu is None:
            self.engine_vcpu()
            return VCPUExit.KICKED
        return self.vcpu.exec()

    def has_work(self) -> bool:
        vcpu = self.vcpu
        if vcpu is not None:
            return vcpu.has_work()
        request = self.cpu.run.interrupt_request
        if request & (CPU_INTERRUPT_NMI | CPU_INTERRUPT_INIT | CPU_INTERRUPT_SIPI):
            return True
        return bool(request & CPU_INTERRUPT_HARD and self.cpu.env.rflags & IF_MASK)

    def request_exit(self) -> None:
        """Leave the engine at the next block start (the end of a time slice)."""
        if self.vcpu is not None:
            self.vcpu.exit_request.request()

    def handle_interrupt(self, mask: int) -> None:
        vcpu = self.vcpu
        if vcpu is not None:
            vcpu.handle_interrupt(mask)
        else:
            self.kick()

    def kick(self) -> None:
        vcpu = self.vcpu
        if vcpu is not None:
            vcpu.kick()
        elif self.rr is not None:
            self.rr.kick_running(self.cpu)

    def get_state(self) -> None:
        if self.vcpu is not None:
            self.vcpu.get_state()
        else:   # the registers are env's until the engine exists; what is pending is the thread's
            tcg_cpu_events(self.cpu, self.cpu.env)

    def put_state(self) -> None:
        if self.vcpu is not None:
            self.vcpu.put_state()

    def destroy(self) -> None:
        if self.vcpu is not None:
            self.vcpu.destroy()


class TCGAccel(AccelOps):
    """Every vCPU on its own engine, all run in turn on one host thread
    (QEMU's ``-accel tcg,thread=single``)."""

    name = "tcg"
    supports_smp = True
    properties = TCG_ACCEL_PROPERTIES

    def __init__(self) -> None:
        self.thread = "single"
        self.tb_size_mib = 0  # -accel tcg,tb-size=N: translation cache in MiB; 0 is the engine's default
        self.rr: RRCPUThread | None = None
        try:
            check_engine_available()
        except (EngineUnavailable, ImportError) as e:
            raise AccelUnavailable(f"tcg accelerator is not available: {e}") from None

    @classmethod
    def description(cls) -> str:
        try:
            return f"software CPU on {engine_info().describe()}"
        except ImportError as e:
            raise AccelUnavailable(f"tcg accelerator is not available: {e}") from None

    def init_machine(self, machine: Any) -> None:
        pass

    def start_vcpu(self, cpu: Any, vcpu: Any) -> bool:
        if self.rr is None:
            self.rr = RRCPUThread()
        self.rr.add(cpu, vcpu)
        return True

    def create_vcpu(self, cpu: Any) -> TCGVCPUHandle:
        return TCGVCPUHandle(cpu, self.tb_size_mib << 20)

    def cpu_model_filter(self) -> dict[Any, int]:
        unsupported = dict(TCG_UNSUPPORTED)
        if EngineFeature.MSR_HOOKS in expected_engine_features():
            # pemu's engine hooks RDMSR/WRMSR: the APIC's MSR interface works
            # (IA32_APIC_BASE, x2APIC, TSC deadline), so the models may offer it.
            for word, mask in feature_bits("x2apic", "tsc-deadline").items():
                unsupported[word] &= ~mask
        return unsupported
