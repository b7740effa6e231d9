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

from collections.abc import Iterator, Sequence
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
    from pemu.system.memory import RAMBlock


class TCGVCPUHandle:
    """The accelerator's half of one vCPU until its engine exists, then a pass-through to it.

    Before the first run the CPU state in ``cpu.env`` is the only copy:
    synchronising it is nothing to do, and the engine is loaded from it when
    it is made.  Making it takes a while, and a kick in that time would be
    lost (a run starts by forgetting earlier kicks), so the run that makes it
    returns at once and the vCPU thread looks at its requests again.
    """

    def __init__(self, cpu: Any, tb_size: int, dirty_log: tuple[RAMBlock, ...] | None = None) -> None:
        self.cpu = cpu
        self.tb_size = tb_size
        self.vcpu: TCGVCPU | None = None
        self.rr: RRCPUThread | None = None  # set when the round-robin thread takes it on
        # The RAM blocks whose pages the engine logs as written (the dirty log is on), or None.
        self.dirty_log = dirty_log

    def engine_vcpu(self) -> TCGVCPU:
        """The vCPU on its engine, made now (on the calling thread) if it is not yet."""
        if self.vcpu is None:
            from pemu.accel.tcg.tcg_accel import TCGVCPU

            vcpu = TCGVCPU(self.cpu, self.tb_size)
            vcpu.rr = self.rr
            vcpu.put_state()
            if self.dirty_log is not None:
                vcpu.log_start(self.dirty_log)
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

    # The dirty log: called with the vCPU out of its engine (parked, or on its thread).
    def log_start(self, blocks: tuple[RAMBlock, ...]) -> None:
        self.dirty_log = blocks
        if self.vcpu is not None:
            self.vcpu.log_start(blocks)

    def log_sync(self, bitmaps: dict[RAMBlock, bytearray]) -> None:
        if self.vcpu is not None:
            self.vcpu.log_sync(bitmaps)

    def log_stop(self) -> None:
        self.dirty_log = None
        if self.vcpu is not None:
            self.vcpu.log_stop()


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
        self.dirty_log: tuple[RAMBlock, ...] | None = None  # the blocks logged while the dirty log is on
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
        return TCGVCPUHandle(cpu, self.tb_size_mib << 20, self.dirty_log)

    # -- the dirty log: each vCPU's engine logs its own stores (pemu's engine, patch 0009) ----
    @staticmethod
    def _each_vcpu_out_of_its_engine() -> Iterator[TCGVCPUHandle]:
        """Every vCPU, one at a time, while it is out of its engine (its engine
        state is not thread-safe; the other vCPUs' engines are separate)."""
        from pemu.system.cpus import all_vcpus, cpu_parked

        for cpu in all_vcpus():
            handle = cpu.run.accel_vcpu
            if isinstance(handle, TCGVCPUHandle):
                with cpu_parked(cpu):
                    yield handle

    def log_global_start(self, blocks: Sequence[RAMBlock]) -> bool:
        if not engine_info().has(EngineFeature.DIRTY_LOG):
            return False  # the stock engine cannot see the guest's stores
        self.dirty_log = tuple(blocks)
        for handle in self._each_vcpu_out_of_its_engine():
            handle.log_start(self.dirty_log)
        return True

    def log_sync(self, bitmaps: dict[RAMBlock, bytearray]) -> None:
        for handle in self._each_vcpu_out_of_its_engine():
            handle.log_sync(bitmaps)

    def log_global_stop(self) -> None:
        self.dirty_log = None
        for handle in self._each_vcpu_out_of_its_engine():
            handle.log_stop()

    def cpu_model_filter(self) -> dict[Any, int]:
        unsupported = dict(TCG_UNSUPPORTED)
        if EngineFeature.MSR_HOOKS in expected_engine_features():
            # pemu's engine hooks RDMSR/WRMSR: the APIC's MSR interface works
            # (IA32_APIC_BASE, x2APIC, TSC deadline), so the models may offer it.
            for word, mask in feature_bits("x2apic", "tsc-deadline").items():
                unsupported[word] &= ~mask
        return unsupported
