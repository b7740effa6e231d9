"""What a tcg vCPU has pending between two instructions (for saving its state)."""

from __future__ import annotations

from typing import Any

from pemu.system.cpus import CPU_INTERRUPT_INIT, CPU_INTERRUPT_NMI, CPU_INTERRUPT_SIPI
from pemu.target.i386.cpu_state import X86MPState


def tcg_cpu_events(cpu: Any, env: Any) -> None:
    """What a tcg vCPU has pending between two instructions, from the
    requests its thread has not taken yet and its local APIC: NMI, INIT and
    start-up IPI, and whether it runs, halts or waits for a start-up IPI."""
    env.reset_events()
    run = cpu.run
    request = run.interrupt_request
    env.nmi_pending = bool(request & CPU_INTERRUPT_NMI)
    env.init_pending = bool(request & CPU_INTERRUPT_INIT)
    apic = cpu.apic
    if apic is not None:
        env.sipi_vector = apic.sipi_vector
        env.apic_base = apic.get_base()
    if request & CPU_INTERRUPT_SIPI:
        env.mp_state = X86MPState.SIPI_RECEIVED
    elif run.halted and apic is not None and apic.wait_for_sipi:
        env.mp_state = X86MPState.WAIT_FOR_SIPI
    elif run.halted:
        env.mp_state = X86MPState.HALTED
    else:
        env.mp_state = X86MPState.RUNNABLE
    env.halted = run.halted
