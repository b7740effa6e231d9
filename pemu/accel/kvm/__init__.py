"""The KVM accelerator (pemu.accel.kvm.kvm_accel): boards ask it what they need
through :class:`pemu.accel.accel.AccelOps` (``irqchip_in_kernel``), never here."""
