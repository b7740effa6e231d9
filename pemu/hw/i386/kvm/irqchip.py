"""The state of KVM's in-kernel 8259s, I/O APIC and 8254 as one device
(QEMU's hw/i386/kvm/i8259.c, ioapic.c and i8254.c, which are three).

With ``kernel-irqchip=on`` these controllers live in the kernel and pemu has
no model of them; this device is what saves and loads their state, through
the accelerator (KVM_GET/SET_IRQCHIP for the master and slave 8259 and the
I/O APIC, KVM_GET/SET_PIT2 for the 8254).  The kernel's own structures are
saved as they are (the stream is then only for a kvm VM with the in-kernel
irqchip; a VM whose controllers are pemu's models has other devices and
refuses the section).  Loading checks every field the kernel would use as an
index or a mode.  The local APICs are saved with their CPUs
(pemu.target.i386.machine, ``kernel_lapic``).

The 8254's channels count from a load time on the kernel's monotonic clock;
it is saved relative to the virtual clock (which the stream restores before
any device) and turned back into the destination kernel's time on load, as
QEMU's kvm-pit does, so a channel keeps its phase.  The kernel's PIT and
LAPIC timers run on while the VM is stopped (no correction is made then).
"""

from __future__ import annotations

import time
from typing import Any

from pemu.hw.core.qdev import TYPE_DEVICE, DeviceClass, DeviceState
from pemu.migration.vmstate import Buffer, VMStateDescription, VMStateError, VMStateField
from pemu.qom.object import ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.util.timer import QEMU_CLOCK_VIRTUAL, qemu_clock_get_ns
from pemu.util.vm_context import current_vm

TYPE_KVM_IRQCHIP = "kvm-irqchip"
PIC_STATE_SIZE = 16       # struct kvm_pic_state
IOAPIC_STATE_SIZE = 216   # struct kvm_ioapic_state (24 pins)
PIT_CHANNEL_SIZE = 24     # struct kvm_pit_channel_state
PIT_STATE_SIZE = 112      # struct kvm_pit_state2
IOAPIC_PINS = 24
_PIT_LOAD_TIME = 16       # count_load_time's offset in a channel
_PIT_MODE_UNSET = 0xFF    # KVM's mode of a channel never programmed since reset


class KVMIrqchipState(DeviceState):
    pic_master: bytes
    pic_slave: bytes
    ioapic: bytes
    pit: bytes


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset:offset + size], "little")


def _check_pic(name: str, pic: bytes) -> None:
    (last_irr, irr, imr, isr, priority_add, irq_base, read_reg_select, poll, special_mask, init_state, auto_eoi,
     rotate_on_auto_eoi, special_fully_nested_mode, init4, elcr, elcr_mask) = pic
    if priority_add > 7 or irq_base & 7 or init_state > 3:
        raise VMStateError(f"{name}: priority_add {priority_add}, irq_base {irq_base:#x} or "
                           f"init_state {init_state} out of range")
    for flag, value in (("read_reg_select", read_reg_select), ("poll", poll), ("special_mask", special_mask),
                        ("auto_eoi", auto_eoi), ("rotate_on_auto_eoi", rotate_on_auto_eoi),
                        ("special_fully_nested_mode", special_fully_nested_mode), ("init4", init4)):
        if value > 1:
            raise VMStateError(f"{name}: {flag} is {value}, not a boolean")
    if elcr & ~elcr_mask:
        raise VMStateError(f"{name}: elcr {elcr:#x} outside its mask {elcr_mask:#x}")


def _check_ioapic(ioapic: bytes) -> None:
    if _u(ioapic, 8, 4) > 0xFF:
        raise VMStateError(f"ioapic: ioregsel {_u(ioapic, 8, 4):#x} out of range")
    for pin in range(IOAPIC_PINS):
        entry = _u(ioapic, 24 + 8 * pin, 8)
        if (entry >> 8) & 7 in (3, 6):
            raise VMStateError(f"ioapic: pin {pin} has reserved delivery mode {(entry >> 8) & 7}")


def _check_pit(pit: bytes) -> None:
    for n in range(3):
        ch = pit[PIT_CHANNEL_SIZE * n:PIT_CHANNEL_SIZE * (n + 1)]
        count = _u(ch, 0, 4)
        (count_latched, status_latched, status, read_state, write_state, write_latch, rw_mode, mode, bcd,
         gate) = ch[6:16]
        bad_mode = mode > 5 and mode != _PIT_MODE_UNSET
        if count > 0x10000 or bad_mode or rw_mode > 3 or bcd > 1 or gate > 1 or status_latched > 1 \
                or count_latched > 3 or read_state > 4 or write_state > 4:
            raise VMStateError(f"pit: channel {n} out of range (count {count:#x}, mode {mode}, rw_mode {rw_mode}, "
                               f"read/write state {read_state}/{write_state})")


def _kernel_minus_virtual_ns() -> int:
    """Where the kernel's monotonic clock (the PIT's time base) is against the virtual clock."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) - qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)


def _shift_pit_load_times(pit: bytes, delta: int) -> bytes:
    out = bytearray(pit)
    for n in range(3):
        at = PIT_CHANNEL_SIZE * n + _PIT_LOAD_TIME
        load_time = int.from_bytes(out[at:at + 8], "little", signed=True)
        out[at:at + 8] = (load_time + delta).to_bytes(8, "little", signed=True)
    return bytes(out)


def _accel() -> Any:
    accel = current_vm().accel
    if accel is None or not accel.irqchip_in_kernel():
        raise VMStateError("the VM has no in-kernel irqchip")
    return accel


def _pre_save(dev: KVMIrqchipState) -> None:
    state = _accel().irqchip_state()
    dev.pic_master, dev.pic_slave, dev.ioapic = state["pic_master"], state["pic_slave"], state["ioapic"]
    dev.pit = _shift_pit_load_times(state["pit"], -_kernel_minus_virtual_ns())


def _post_load(dev: KVMIrqchipState, version_id: int) -> None:
    _check_pic("pic_master", dev.pic_master)
    _check_pic("pic_slave", dev.pic_slave)
    _check_ioapic(dev.ioapic)
    _check_pit(dev.pit)
    _accel().set_irqchip_state({"pic_master": dev.pic_master, "pic_slave": dev.pic_slave, "ioapic": dev.ioapic,
                                "pit": _shift_pit_load_times(dev.pit, _kernel_minus_virtual_ns())})


VMSTATE_KVM_IRQCHIP = VMStateDescription(
    TYPE_KVM_IRQCHIP, version_id=1,
    fields=[
        VMStateField("pic_master", Buffer(PIC_STATE_SIZE)),
        VMStateField("pic_slave", Buffer(PIC_STATE_SIZE)),
        VMStateField("ioapic", Buffer(IOAPIC_STATE_SIZE)),
        VMStateField("pit", Buffer(PIT_STATE_SIZE)),
    ],
    pre_save=_pre_save, post_load=_post_load)


def _instance_init(obj: Any) -> None:
    dev = object_check(obj, KVMIrqchipState)
    dev.pic_master = dev.pic_slave = bytes(PIC_STATE_SIZE)
    dev.ioapic = bytes(IOAPIC_STATE_SIZE)
    dev.pit = bytes(PIT_STATE_SIZE)


def _class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.desc = "KVM in-kernel 8259s, I/O APIC and 8254 (their migratable state)"
    dc.user_creatable = False
    dc.vmsd = VMSTATE_KVM_IRQCHIP


type_register(TypeInfo(TYPE_KVM_IRQCHIP, parent=TYPE_DEVICE, instance_type=KVMIrqchipState,
                       class_init=_class_init, instance_init=_instance_init))
