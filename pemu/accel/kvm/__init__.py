"""The KVM accelerator (pemu.accel.kvm.kvm_accel) and the board's question about it."""

from __future__ import annotations


def kvm_irqchip_in_kernel() -> bool:
    """QEMU's kvm_irqchip_in_kernel(): KVM runs the guest with its in-kernel
    interrupt controllers.  Boards ask it under any accelerator, so the KVM
    module is imported only when KVM is the one in use."""
    from pemu.accel.accel import current_accel

    accel = current_accel()
    if accel is None or accel.name != "kvm":
        return False
    from pemu.accel.kvm.kvm_accel import kvm_irqchip_in_kernel as in_kernel

    return in_kernel()
