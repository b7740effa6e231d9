"""The KVM accelerator (QEMU's accel/kvm/kvm-all.c and target/i386/kvm/kvm.c).

One VM per machine; its memory slots follow the system memory's FlatView
(:class:`KVMMemoryListener`).  Each vCPU thread sits in KVM_RUN (the GIL is
released by the ioctl) and handles the exits the kernel passes up: port I/O
and MMIO go through the AddressSpaces under the big lock; HLT parks the
thread when the interrupt controller lives in pemu; shutdown, system events
and errors end up as run-state requests.

A kick sets ``immediate_exit`` in the kvm_run page and sends SIGUSR1 to the
vCPU thread, so KVM_RUN returns EINTR whether the thread is already in the
kernel or about to enter it.

Interrupt controllers: with ``kernel-irqchip=on`` (the default) the 8259s,
the IOAPIC, the LAPICs and the 8254 are KVM's; ISA lines become KVM_IRQ_LINE
calls on GSIs routed as on a PC (GSI 0 at IOAPIC pin 2).  With
``kernel-irqchip=off`` pemu's own 8259/8254 models run and the vCPU injects
with KVM_INTERRUPT when the guest can take an interrupt, asking for an
interrupt-window exit otherwise.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pemu.accel.accel import KVM_ACCEL_PROPERTIES, AccelOps, AccelUnavailable, VCPUExit, current_accel
from pemu.accel.kvm import kvm_sys as k
from pemu.accel.kvm.kvm_sys import ExitReason, KVMError, MPState, SystemEvent
from pemu.system.memory import bitmap_or, dirty_bitmap_size
from pemu.target.i386.cpu_state import (
    MSR,
    CPUX86State,
    DescriptorTable,
    SegmentCache,
    X86MPState,
)
from pemu.util.error import UserError, error_report
from pemu.util.log import guest_error
from pemu.util.main_loop import bql

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pemu.hw.core.irq import IRQLine
    from pemu.system.memory import RAMBlock

KVM_DEVICE_ENV = "PEMU_KVM_DEVICE"
DEFAULT_KVM_DEVICE = "/dev/kvm"
SIG_IPI = signal.SIGUSR1
CPU_INTERRUPT_HARD = 0x0002
PAGE_SIZE = 0x1000
# Where Intel's real-mode emulation keeps its TSS and identity page table
# (just below the BIOS, as QEMU puts them).
KVM_TSS_ADDR = 0xFEFFD000
KVM_IDENTITY_MAP_ADDR = 0xFEFFC000
NUM_IOAPIC_PINS = 24


def kvm_device_path() -> str:
    return os.environ.get(KVM_DEVICE_ENV) or DEFAULT_KVM_DEVICE


# -- memory slots ------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class SlotMapping:
    """One KVM memory slot's worth of guest RAM: page-aligned, host-backed."""

    guest_phys_addr: int
    size: int
    host_addr: int
    readonly: bool


def plan_slots(ranges: Any) -> list[SlotMapping]:
    """The slots that show the RAM and ROM ranges of a FlatView to KVM.

    Only whole pages can be slots; the sub-page ends of a RAM range stay
    unmapped and reach pemu as MMIO exits, which the AddressSpace serves
    from the same RAM.  Everything that is not RAM is MMIO too.
    """
    slots: list[SlotMapping] = []
    for fr in ranges:
        block = fr.mr.ram_block
        if block is None:
            continue
        start = (fr.start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        end = (fr.start + fr.size) & ~(PAGE_SIZE - 1)
        if start >= end:
            continue
        host = block.host_addr + fr.offset_in_region + (start - fr.start)
        if host % PAGE_SIZE:
            continue  # KVM needs page-aligned host memory; leave it to MMIO
        slots.append(SlotMapping(start, end - start, host, bool(fr.readonly)))
    slots.sort()
    return slots


class KVMMemoryListener:
    """Keeps the VM's memory slots equal to the RAM/ROM of a FlatView.

    On a change, slots that are no longer wanted are deleted first, then the
    new ones added, so two slots never overlap (KVM refuses that).  Slots
    that did not change stay (PAM or BAR moves touch only their pages).

    While the dirty log is on, writable slots carry KVM_MEM_LOG_DIRTY_PAGES
    and a sync reads each one's log with KVM_GET_DIRTY_LOG into the bitmap
    of the RAM block behind it; a slot deleted meanwhile hands its log over
    first (``dirty_carry``), so a memory map change loses nothing.
    """

    def __init__(self, vm: k.KVMVMFd, readonly_supported: bool, max_slots: int) -> None:
        self.vm = vm
        self.readonly_supported = readonly_supported
        self.max_slots = max_slots
        self.slots: dict[SlotMapping, int] = {}
        self._free: list[int] = []
        self._next = 0
        self.lock = threading.Lock()
        self.dirty_log: tuple[RAMBlock, ...] | None = None  # the RAM blocks logged, while the log is on
        self.dirty_carry: dict[RAMBlock, bytearray] = {}  # logged by slots deleted since the last sync

    def _alloc(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next >= self.max_slots:
            raise KVMError(0, f"out of KVM memory slots ({self.max_slots})")
        self._next += 1
        return self._next - 1

    def flatview_changed(self, old: Any, new: Any) -> None:
        wanted = plan_slots(new)
        if not self.readonly_supported:
            wanted = [SlotMapping(s.guest_phys_addr, s.size, s.host_addr, False) for s in wanted]
        with self.lock:
            keep = set(wanted)
            for mapping, slot in list(self.slots.items()):
                if mapping not in keep:
                    if self.dirty_log is not None and not mapping.readonly:
                        self._collect(slot, mapping, self.dirty_carry, create=True)
                    self.vm.set_user_memory_region(slot, mapping.guest_phys_addr, 0, mapping.host_addr)
                    del self.slots[mapping]
                    self._free.append(slot)
            for mapping in wanted:
                if mapping in self.slots:
                    continue
                slot = self._alloc()
                self.vm.set_user_memory_region(slot, mapping.guest_phys_addr, mapping.size, mapping.host_addr,
                                               self._flags(mapping))
                self.slots[mapping] = slot

    def _flags(self, mapping: SlotMapping) -> int:
        if mapping.readonly:
            return k.KVM_MEM_READONLY
        return k.KVM_MEM_LOG_DIRTY_PAGES if self.dirty_log is not None else 0

    def _collect(self, slot: int, mapping: SlotMapping, bitmaps: dict[RAMBlock, bytearray], create: bool) -> None:
        """Read ``slot``'s dirty log (the kernel clears it) and OR it into
        the bitmap of its RAM block in ``bitmaps`` (made if ``create``)."""
        assert self.dirty_log is not None
        host = mapping.host_addr
        block = next((b for b in self.dirty_log if b.host_addr <= host < b.host_addr + b.size), None)
        pages = mapping.size // PAGE_SIZE
        log = bytearray(-(-pages // 64) * 8)  # the kernel writes whole 64-bit words
        self.vm.get_dirty_log(slot, log)
        if block is None:
            return  # RAM made after the log started: it was all dirty from the start
        bitmap = bitmaps.get(block)
        if bitmap is None:
            if not create:
                return
            bitmap = bitmaps[block] = bytearray(dirty_bitmap_size(block.size))
        bitmap_or(bitmap, log, (host - block.host_addr) // PAGE_SIZE, pages)

    def _set_logging(self, blocks: tuple[RAMBlock, ...] | None) -> None:
        with self.lock:
            self.dirty_log = blocks
            self.dirty_carry.clear()
            for mapping, slot in self.slots.items():
                if not mapping.readonly:
                    self.vm.set_user_memory_region(slot, mapping.guest_phys_addr, mapping.size,
                                                   mapping.host_addr, self._flags(mapping))

    def log_start(self, blocks: tuple[RAMBlock, ...]) -> None:
        self._set_logging(blocks)

    def log_sync(self, bitmaps: dict[RAMBlock, bytearray]) -> None:
        with self.lock:
            for block, carried in self.dirty_carry.items():
                if block in bitmaps:
                    bitmap_or(bitmaps[block], carried, 0, 8 * len(carried))
            self.dirty_carry.clear()
            for mapping, slot in self.slots.items():
                if not mapping.readonly:
                    self._collect(slot, mapping, bitmaps, create=False)

    def log_stop(self) -> None:
        self._set_logging(None)


# -- interrupt lines and routing --------------------------------------------------------------


class KVMIRQLine:
    """An ISA/GSI line into the in-kernel irqchip (KVM_IRQ_LINE)."""

    __slots__ = ("vm", "gsi")

    def __init__(self, vm: k.KVMVMFd, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi

    def set(self, level: int) -> None:
        self.vm.irq_line(self.gsi, 1 if level else 0)


def pc_gsi_routing() -> list[k.kvm_irq_routing_entry]:
    """The PC's routing: ISA IRQs 0-15 to both 8259s (except the cascade,
    IRQ 2) and GSIs 0-23 to the IOAPIC, with GSI 0 (the PIT) at pin 2 as the
    MADT's interrupt source override says."""
    entries: list[k.kvm_irq_routing_entry] = []

    def add(gsi: int, chip: int, pin: int) -> None:
        entry = k.kvm_irq_routing_entry(gsi=gsi, type=k.KVM_IRQ_ROUTING_IRQCHIP)
        entry.u.irqchip.irqchip = chip
        entry.u.irqchip.pin = pin
        entries.append(entry)

    for irq in range(16):
        if irq == 2:
            continue
        add(irq, k.KVM_IRQCHIP_PIC_MASTER if irq < 8 else k.KVM_IRQCHIP_PIC_SLAVE, irq % 8)
    for gsi in range(NUM_IOAPIC_PINS):
        if gsi == 2:
            continue
        add(gsi, k.KVM_IRQCHIP_IOAPIC, 2 if gsi == 0 else gsi)
    return entries


# -- register conversion ----------------------------------------------------------------------


def segment_to_kvm(seg: SegmentCache, out: k.kvm_segment) -> None:
    """QEMU's descriptor-flags encoding to KVM's unpacked segment."""
    flags = seg.flags
    out.base = seg.base & 0xFFFFFFFFFFFFFFFF
    out.limit = seg.limit & 0xFFFFFFFF
    out.selector = seg.selector & 0xFFFF
    out.type = (flags >> 8) & 0xF
    out.s = (flags >> 12) & 1
    out.dpl = (flags >> 13) & 3
    out.present = (flags >> 15) & 1
    out.avl = (flags >> 20) & 1
    out.l = (flags >> 21) & 1
    out.db = (flags >> 22) & 1
    out.g = (flags >> 23) & 1
    out.unusable = 0 if out.present else 1
    out.padding = 0


def segment_from_kvm(seg: k.kvm_segment) -> SegmentCache:
    present = seg.present and not seg.unusable
    flags = (seg.type << 8 | seg.s << 12 | seg.dpl << 13 | (1 << 15 if present else 0) | seg.avl << 20
             | seg.l << 21 | seg.db << 22 | seg.g << 23)
    return SegmentCache(seg.selector, seg.base, seg.limit, flags)


_SEG_FIELDS = ("es", "cs", "ss", "ds", "fs", "gs")  # QEMU's order (SegReg)
_REG_FIELDS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # QEMU's order (Reg)
# MSRs loaded at reset and read back by get_state: (index, env attribute).
_ENV_MSRS = (
    (MSR.IA32_SYSENTER_CS, "sysenter_cs"), (MSR.IA32_SYSENTER_ESP, "sysenter_esp"),
    (MSR.IA32_SYSENTER_EIP, "sysenter_eip"), (MSR.PAT, "pat"), (MSR.STAR, "star"), (MSR.LSTAR, "lstar"),
    (MSR.CSTAR, "cstar"), (MSR.FMASK, "fmask"), (MSR.KERNELGSBASE, "kernel_gs_base"), (MSR.IA32_TSC, "tsc"),
    (MSR.IA32_MISC_ENABLE, "misc_enable"), (MSR.TSC_AUX, "tsc_aux"),
)
# ... and with the in-kernel LAPIC, its TSC deadline.
_KERNEL_LAPIC_MSRS = ((MSR.IA32_TSC_DEADLINE, "tsc_deadline"),)
_MP_STATE_TO_KVM = {X86MPState.RUNNABLE: MPState.RUNNABLE, X86MPState.HALTED: MPState.HALTED,
                    X86MPState.WAIT_FOR_SIPI: MPState.INIT_RECEIVED, X86MPState.SIPI_RECEIVED: MPState.SIPI_RECEIVED,
                    X86MPState.UNINITIALIZED: MPState.UNINITIALIZED}
_MP_STATE_FROM_KVM = {MPState.RUNNABLE: X86MPState.RUNNABLE, MPState.HALTED: X86MPState.HALTED,
                      MPState.UNINITIALIZED: X86MPState.UNINITIALIZED,
                      MPState.INIT_RECEIVED: X86MPState.WAIT_FOR_SIPI, MPState.SIPI_RECEIVED: X86MPState.SIPI_RECEIVED}
_U80 = (1 << 80) - 1
_U128 = (1 << 128) - 1
# The XSAVE image: XSTATE_BV in its header, the upper halves of YMM0-15.
_XSAVE_BV = 512
_XSAVE_YMMH = 576
_XSTATE_FP = 1 << 0
_XSTATE_SSE = 1 << 1
_XSTATE_YMM = 1 << 2
_U64 = (1 << 64) - 1


def cpu_dump_state(regs: k.kvm_regs, sregs: k.kvm_sregs) -> str:
    """The registers as QEMU's `info registers` prints the main ones."""
    lines = []
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15")
    for i in range(0, 16, 4):
        lines.append(" ".join(f"{n.upper():<3}={getattr(regs, n):016x}" for n in names[i:i + 4]))
    lines.append(f"RIP={regs.rip:016x} RFL={regs.rflags:08x}")
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        s = getattr(sregs, name)
        lines.append(f"{name.upper():<3}={s.selector:04x} {s.base:016x} {s.limit:08x} type={s.type:x} "
                     f"p={s.present} dpl={s.dpl} db={s.db} l={s.l} g={s.g}")
    lines.append(f"GDT=     {sregs.gdt.base:016x} {sregs.gdt.limit:08x}")
    lines.append(f"IDT=     {sregs.idt.base:016x} {sregs.idt.limit:08x}")
    lines.append(f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x}")
    lines.append(f"EFER={sregs.efer:016x} APIC_BASE={sregs.apic_base:016x}")
    return "\n".join(lines)


# -- CPUID ----------------------------------------------------------------------------------------

# (leaf, subleaf, register) whose bits are features: the model's value is
# masked with what KVM can virtualize.
_FEATURE_REGS = {(1, 0): ("ecx", "edx"), (7, 0): ("ebx", "ecx", "edx"), (0x80000001, 0): ("ecx", "edx"),
                 (0x40000001, 0): ("eax",)}
_CPUID_APIC_EDX = 1 << 9
_CPUID_X2APIC_ECX = 1 << 21
_CPUID_TSC_DEADLINE_ECX = 1 << 24


def build_cpuid(model: Any, supported: list[k.kvm_cpuid_entry2], apic_id: int,
                lapic_in_kernel: bool, userspace_apic: bool = False) -> list[k.kvm_cpuid_entry2]:
    """CPUID entries for KVM_SET_CPUID2: the leaves KVM knows, with the
    model's values; feature words keep only what both have.  Without the
    in-kernel LAPIC the APIC is offered only when pemu's own runs
    (``userspace_apic``, xAPIC mode: its MSRs would not reach it)."""
    entries: list[k.kvm_cpuid_entry2] = []
    for sup in supported:
        leaf, index = sup.function, sup.index
        if 0x40000000 <= leaf <= 0x4FFFFFFF and not (leaf in (0x40000000, 0x40000001) and model.cpuid(0x40000001)[0]):
            continue  # the paravirtual leaves only for a model that asks for KVM's features
        if leaf == 0xD and getattr(model, "has", lambda _: False)("xsave"):
            values = [sup.eax, sup.ebx, sup.ecx, sup.edx]  # the state layout is the host's
        else:
            values = list(model.cpuid(leaf, index))
        regs = dict(zip(("eax", "ebx", "ecx", "edx"), values, strict=True))
        for reg in _FEATURE_REGS.get((leaf, index), ()):
            regs[reg] &= getattr(sup, reg)
        if leaf == 1:
            regs["ebx"] = (regs["ebx"] & 0x00FFFFFF) | (apic_id & 0xFF) << 24
            if not lapic_in_kernel:
                if not userspace_apic:
                    regs["edx"] &= ~_CPUID_APIC_EDX
                regs["ecx"] &= ~(_CPUID_X2APIC_ECX | _CPUID_TSC_DEADLINE_ECX)
        entry = k.kvm_cpuid_entry2(function=leaf, index=index, flags=sup.flags, eax=regs["eax"],
                                   ebx=regs["ebx"], ecx=regs["ecx"], edx=regs["edx"])
        entries.append(entry)
    return entries


# -- the vCPU -----------------------------------------------------------------------------------


class KVMVCPU:
    """One vCPU in KVM.  All methods but ``kick`` run on the vCPU thread
    (or on the main thread while the vCPU is parked)."""

    def __init__(self, accel: KVMAccel, cpu: Any) -> None:
        self.accel = accel
        self.cpu = cpu
        self.run_state = cpu.run
        self.env: CPUX86State = cpu.env
        self.vcpu_id = int(cpu.apic_id)
        assert accel.vm is not None
        self.fd = accel.vm.create_vcpu(self.vcpu_id)
        self.run = self.fd.run
        self.run_page = memoryview(self.fd.run_mmap)
        self.thread_id: int | None = None
        self.in_guest = False
        self.kick_pending = False
        self.exits = 0
        # The TSC as the VM stopped (QEMU's env->tsc with tsc_valid): read once
        # per stop, or what was put, so state saved twice while stopped is the same.
        self.stopped_tsc: int | None = None
        self.fd.set_cpuid2(build_cpuid(cpu.model, accel.supported_cpuid, self.vcpu_id, accel.in_kernel_irqchip,
                                       userspace_apic=cpu.apic is not None))
        self._handlers = {
            ExitReason.IO: self._handle_io,
            ExitReason.MMIO: self._handle_mmio,
            ExitReason.HLT: self._handle_hlt,
            ExitReason.IRQ_WINDOW_OPEN: self._handle_irq_window,
            ExitReason.SHUTDOWN: self._handle_shutdown,
            ExitReason.SYSTEM_EVENT: self._handle_system_event,
            ExitReason.INTR: self._handle_intr,
        }

    # -- kicks ------------------------------------------------------------------------------------
    def kick(self) -> None:
        self.kick_pending = True
        self.run.immediate_exit = 1
        tid = self.thread_id
        if self.in_guest and tid is not None and self.accel.signal_installed:
            try:
                signal.pthread_kill(tid, SIG_IPI)
            except (ProcessLookupError, OSError):
                pass

    def handle_interrupt(self, mask: int) -> None:
        self.kick()

    # -- the run loop --------------------------------------------------------------------------------
    def has_work(self) -> bool:
        if self.accel.in_kernel_irqchip:
            return True  # the kernel waits out HLT itself
        return bool(self.run_state.interrupt_request & CPU_INTERRUPT_HARD) and bool(self.run.if_flag)

    def _inject_from_pic(self) -> None:
        """kernel-irqchip=off: hand the 8259's vector to KVM when the guest can take it."""
        run = self.run
        if not self.run_state.interrupt_request & CPU_INTERRUPT_HARD:
            run.request_interrupt_window = 0
            return
        if run.ready_for_interrupt_injection and run.if_flag:
            get_vector = self.cpu.get_pic_interrupt
            vector = None
            if get_vector is not None:
                with bql:
                    vector = get_vector()
            if vector is not None and vector >= 0:
                self.fd.interrupt(vector)
            run.request_interrupt_window = 0
        else:
            run.request_interrupt_window = 1

    def exec(self) -> VCPUExit:
        """Run in KVM until an exit needs the vCPU thread's loop (kick, HLT, shutdown)."""
        if self.thread_id is None:
            self.thread_id = threading.get_ident()
        fd = self.fd
        run = self.run
        handlers = self._handlers
        userspace_pic = not self.accel.in_kernel_irqchip
        self.kick_pending = False
        self.stopped_tsc = None
        run.immediate_exit = 0
        while True:
            if userspace_pic:
                self._inject_from_pic()
            self.in_guest = True
            if self.kick_pending:
                self.in_guest = False
                run.immediate_exit = 0
                return VCPUExit.KICKED
            try:
                ret = fd.run_once()
            finally:
                self.in_guest = False
            self.exits += 1
            if ret < 0:
                run.immediate_exit = 0
                return VCPUExit.KICKED
            reason = run.exit_reason
            handler = handlers.get(reason)
            if handler is None:
                return self._handle_error(reason)
            result = handler()
            if result is not None:
                return result

    # -- exits -------------------------------------------------------------------------------------
    def _handle_io(self) -> VCPUExit | None:
        io = self.run.u.io
        size, port, count = io.size, io.port, io.count
        if size not in (1, 2, 4) or count == 0:
            guest_error(f"kvm: port I/O exit with size {size}, count {count}")
            return None
        data = self.fd.io_data(io.data_offset, size * count)
        space = self.cpu.io
        mask = (1 << (8 * size)) - 1
        with bql:
            if io.direction == k.KVM_EXIT_IO_OUT:
                for i in range(count):
                    space.dispatch_write(port, int.from_bytes(data[i * size:(i + 1) * size], "little") & mask,
                                         size)
            else:
                for i in range(count):
                    data[i * size:(i + 1) * size] = (space.dispatch_read(port, size) & mask).to_bytes(size, "little")
        return None

    def _handle_mmio(self) -> VCPUExit | None:
        mmio = self.run.u.mmio
        length, addr = mmio.len, mmio.phys_addr
        if length not in (1, 2, 4, 8):
            guest_error(f"kvm: MMIO exit of length {length} at {addr:#x}")
            return None
        space = self.cpu.memory
        with bql:
            if mmio.is_write:
                value = int.from_bytes(bytes(mmio.data)[:length], "little")
                space.dispatch_write(addr, value, length)
            else:
                value = space.dispatch_read(addr, length) & ((1 << (8 * length)) - 1)
                for i, b in enumerate(value.to_bytes(length, "little")):
                    mmio.data[i] = b
        return None

    def _handle_hlt(self) -> VCPUExit | None:
        return VCPUExit.HALTED

    def _handle_irq_window(self) -> VCPUExit | None:
        return None

    def _handle_intr(self) -> VCPUExit | None:
        return VCPUExit.KICKED

    def _handle_shutdown(self) -> VCPUExit:
        from pemu.system.runstate import ShutdownCause, qemu_system_reset_request

        guest_error(f"CPU {self.cpu.cpu_index}: triple fault, resetting")
        qemu_system_reset_request(ShutdownCause.GUEST_RESET)
        return VCPUExit.SHUTDOWN

    def _handle_system_event(self) -> VCPUExit:
        from pemu.system.runstate import ShutdownCause, qemu_system_reset_request, qemu_system_shutdown_request

        event = self.run.u.system_event.type
        if event == SystemEvent.SHUTDOWN:
            qemu_system_shutdown_request(ShutdownCause.GUEST_SHUTDOWN)
        elif event == SystemEvent.RESET:
            qemu_system_reset_request(ShutdownCause.GUEST_RESET)
        elif event == SystemEvent.CRASH:
            qemu_system_shutdown_request(ShutdownCause.GUEST_PANIC)
        else:
            guest_error(f"kvm: unknown system event {event}")
            return VCPUExit.KICKED
        return VCPUExit.SHUTDOWN

    def _handle_error(self, reason: int) -> VCPUExit:
        """Exits pemu cannot go on from: report them with the registers and stop the VM."""
        run = self.run
        try:
            name = ExitReason(reason).name
        except ValueError:
            name = f"unknown exit reason {reason}"
        if reason == ExitReason.INTERNAL_ERROR:
            internal = run.u.internal
            ndata = min(internal.ndata, 16)
            extra = "".join(f"\nextra data[{i}]: {internal.data[i]:#018x}" for i in range(ndata))
            message = f"KVM internal error. Suberror: {internal.suberror}{extra}"
        elif reason == ExitReason.FAIL_ENTRY:
            fail = run.u.fail_entry
            message = (f"KVM: entry failed, hardware error {fail.hardware_entry_failure_reason:#x}"
                       f" on CPU {fail.cpu}")
        else:
            message = f"KVM: unhandled exit ({name})"
        try:
            dump = cpu_dump_state(self.fd.get_regs(), self.fd.get_sregs())
        except KVMError as e:
            dump = f"(registers unavailable: {e})"
        error_report(f"{message}\n{dump}")
        self.accel.report_internal_error()
        return VCPUExit.SHUTDOWN

    # -- state transfer -------------------------------------------------------------------------------
    def put_state(self) -> None:
        env = self.env
        regs = k.kvm_regs()
        for name, value in zip(_REG_FIELDS, env.regs, strict=True):
            setattr(regs, name, value & 0xFFFFFFFFFFFFFFFF)
        regs.rip = env.rip & 0xFFFFFFFFFFFFFFFF
        regs.rflags = env.rflags | 2
        sregs = k.kvm_sregs()
        for name, seg in zip(_SEG_FIELDS, env.segs, strict=True):
            segment_to_kvm(seg, getattr(sregs, name))
        segment_to_kvm(env.ldt, sregs.ldt)
        segment_to_kvm(env.tr, sregs.tr)
        sregs.tr.unusable = 0  # VMX requires a usable TR
        sregs.gdt.base, sregs.gdt.limit = env.gdt.base, env.gdt.limit & 0xFFFF
        sregs.idt.base, sregs.idt.limit = env.idt.base, env.idt.limit & 0xFFFF
        sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4 = env.cr0, env.cr2, env.cr3, env.cr4
        sregs.cr8, sregs.efer, sregs.apic_base = env.cr8, env.efer, env.apic_base
        self.fd.set_regs(regs)
        self.fd.set_sregs(sregs)
        self._put_fpu(env)
        # The LAPIC before the MSRs: KVM takes IA32_TSC_DEADLINE only in TSC-deadline mode.
        if self.accel.in_kernel_irqchip:
            if env.kernel_lapic is not None:
                lapic = k.kvm_lapic_state()
                ctypes.memmove(ctypes.addressof(lapic), env.kernel_lapic, ctypes.sizeof(lapic))
                self.fd.set_lapic(lapic)
            self.fd.set_mp_state(_MP_STATE_TO_KVM[env.mp_state])
        pending = [(int(index), getattr(env, attr)) for index, attr in self._msrs()]
        while pending:   # KVM stops at the first MSR it refuses: go on after it
            done = self.fd.set_msrs(dict(pending))
            if done == len(pending):
                break
            guest_error(f"kvm: MSR {pending[done][0]:#x} could not be set")
            pending = pending[done + 1:]
        caps = self.accel.caps
        if k.Cap.DEBUGREGS in caps:
            dbg = k.kvm_debugregs()
            for i in range(4):
                dbg.db[i] = env.dr[i] & 0xFFFFFFFFFFFFFFFF
            dbg.dr6, dbg.dr7 = env.dr[6] & 0xFFFFFFFF, env.dr[7] & 0xFFFFFFFF
            self.fd.set_debugregs(dbg)
        if k.Cap.VCPU_EVENTS in caps:
            self.fd.set_vcpu_events(self._events_to_kvm(env))
        self.stopped_tsc = env.tsc

    def _msrs(self) -> tuple[tuple[int, str], ...]:
        if self.accel.in_kernel_irqchip:
            return _ENV_MSRS + _KERNEL_LAPIC_MSRS
        return _ENV_MSRS

    def _put_fpu(self, env: CPUX86State) -> None:
        """x87, SSE and AVX state: through XSAVE where KVM has it (as QEMU),
        else KVM_SET_FPU; XCR0 through KVM_SET_XCRS."""
        caps = self.accel.caps
        if k.Cap.XCRS in caps:
            xcrs = k.kvm_xcrs(nr_xcrs=1)
            xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, env.xcr0
            self.fd.set_xcrs(xcrs)
        if k.Cap.XSAVE not in caps:
            fpu = k.kvm_fpu()
            fpu.fcw, fpu.fsw, fpu.ftwx = env.fpuc & 0xFFFF, env.fpus & 0xFFFF, env.fptag & 0xFF
            fpu.last_opcode, fpu.last_ip, fpu.last_dp = env.fpop & 0x7FF, env.fpip, env.fpdp
            for i, value in enumerate(env.fpregs):
                ctypes.memmove(ctypes.addressof(fpu.fpr) + 16 * i, (value & _U80).to_bytes(10, "little"), 10)
            for i, value in enumerate(env.xmm):
                ctypes.memmove(ctypes.addressof(fpu.xmm) + 16 * i, (value & _U128).to_bytes(16, "little"), 16)
            fpu.mxcsr = env.mxcsr & 0xFFFFFFFF
            self.fd.set_fpu(fpu)
            return
        xsave = self.fd.get_xsave()
        region = memoryview(xsave.region).cast("B")
        region[0:8] = ((env.fpuc & 0xFFFF) | (env.fpus & 0xFFFF) << 16 | (env.fptag & 0xFF) << 32
                       | (env.fpop & 0x7FF) << 48).to_bytes(8, "little")
        region[8:24] = (env.fpip & _U64 | (env.fpdp & _U64) << 64).to_bytes(16, "little")
        region[24:28] = (env.mxcsr & 0xFFFFFFFF).to_bytes(4, "little")
        for i, value in enumerate(env.fpregs):
            region[32 + 16 * i:48 + 16 * i] = (value & _U80).to_bytes(16, "little")
        for i, value in enumerate(env.xmm):
            region[160 + 16 * i:176 + 16 * i] = (value & _U128).to_bytes(16, "little")
        bv = int.from_bytes(region[_XSAVE_BV:_XSAVE_BV + 8], "little") | _XSTATE_FP | _XSTATE_SSE
        if any(env.ymmh):
            for i, value in enumerate(env.ymmh):
                region[_XSAVE_YMMH + 16 * i:_XSAVE_YMMH + 16 * (i + 1)] = (value & _U128).to_bytes(16, "little")
            bv |= _XSTATE_YMM
        elif bv & _XSTATE_YMM:
            region[_XSAVE_YMMH:_XSAVE_YMMH + 256] = bytes(256)
        region[_XSAVE_BV:_XSAVE_BV + 8] = bv.to_bytes(8, "little")
        self.fd.set_xsave(xsave)

    def _get_fpu(self, env: CPUX86State) -> None:
        caps = self.accel.caps
        if k.Cap.XCRS in caps:
            xcrs = self.fd.get_xcrs()
            for i in range(min(xcrs.nr_xcrs, 16)):
                if xcrs.xcrs[i].xcr == 0:
                    env.xcr0 = xcrs.xcrs[i].value
        env.ymmh = [0] * 16
        if k.Cap.XSAVE not in caps:
            fpu = self.fd.get_fpu()
            env.fpuc, env.fpus, env.fptag = fpu.fcw, fpu.fsw, fpu.ftwx
            env.fpop, env.fpip, env.fpdp = fpu.last_opcode & 0x7FF, fpu.last_ip, fpu.last_dp
            fpr, xmm = bytes(fpu.fpr), bytes(fpu.xmm)
            env.fpregs = [int.from_bytes(fpr[16 * i:16 * i + 10], "little") for i in range(8)]
            env.xmm = [int.from_bytes(xmm[16 * i:16 * (i + 1)], "little") for i in range(16)]
            env.mxcsr = fpu.mxcsr
            return
        region = bytes(self.fd.get_xsave().region)
        bv = int.from_bytes(region[_XSAVE_BV:_XSAVE_BV + 8], "little")

        def u(off: int, size: int) -> int:
            return int.from_bytes(region[off:off + size], "little")

        # A component whose XSTATE_BV bit is clear is in its initial state.
        if bv & _XSTATE_FP:
            env.fpuc, env.fpus, env.fptag, env.fpop = u(0, 2), u(2, 2), u(4, 1), u(6, 2) & 0x7FF
            env.fpip, env.fpdp = u(8, 8), u(16, 8)
            env.fpregs = [u(32 + 16 * i, 10) for i in range(8)]
        else:
            env.fpuc, env.fpus, env.fptag, env.fpop, env.fpip, env.fpdp = 0x37F, 0, 0, 0, 0, 0
            env.fpregs = [0] * 8
        env.mxcsr = u(24, 4)
        env.xmm = [u(160 + 16 * i, 16) for i in range(16)] if bv & _XSTATE_SSE else [0] * 16
        if bv & _XSTATE_YMM:
            env.ymmh = [u(_XSAVE_YMMH + 16 * i, 16) for i in range(16)]

    @staticmethod
    def _events_to_kvm(env: CPUX86State) -> k.kvm_vcpu_events:
        events = k.kvm_vcpu_events()
        if env.exception_injected >= 0:
            events.exception.injected = 1
            events.exception.nr = env.exception_injected
            events.exception.has_error_code = int(env.exception_has_error_code)
            events.exception.error_code = env.exception_error_code & 0xFFFFFFFF
        if env.interrupt_injected >= 0:
            events.interrupt.injected = 1
            events.interrupt.nr = env.interrupt_injected
            events.interrupt.soft = int(env.interrupt_soft)
        events.interrupt.shadow = k.KVM_X86_SHADOW_INT_STI if env.interrupt_shadow else 0
        events.nmi.injected = int(env.nmi_injected)
        events.nmi.pending = int(env.nmi_pending)
        events.nmi.masked = int(env.nmi_masked)
        events.sipi_vector = env.sipi_vector
        events.smi.latched_init = int(env.init_pending)
        events.flags = (k.KVM_VCPUEVENT_VALID_NMI_PENDING | k.KVM_VCPUEVENT_VALID_SIPI_VECTOR
                        | k.KVM_VCPUEVENT_VALID_SHADOW | k.KVM_VCPUEVENT_VALID_SMM)
        return events

    def _events_from_kvm(self, env: CPUX86State) -> None:
        env.reset_events()
        if k.Cap.VCPU_EVENTS not in self.accel.caps:
            return
        events = self.fd.get_vcpu_events()
        if events.exception.injected or events.exception.pending:
            env.exception_injected = events.exception.nr
            env.exception_has_error_code = bool(events.exception.has_error_code)
            env.exception_error_code = events.exception.error_code
        if events.interrupt.injected:
            env.interrupt_injected = events.interrupt.nr
            env.interrupt_soft = bool(events.interrupt.soft)
        env.interrupt_shadow = bool(events.interrupt.shadow)
        env.nmi_injected = bool(events.nmi.injected)
        env.nmi_pending = bool(events.nmi.pending)
        env.nmi_masked = bool(events.nmi.masked)
        env.sipi_vector = events.sipi_vector & 0xFF
        env.init_pending = bool(events.smi.latched_init)
        env.smm = bool(events.smi.smm)
        env.smi_pending = bool(events.smi.pending)

    def get_state(self) -> None:
        env = self.env
        regs = self.fd.get_regs()
        sregs = self.fd.get_sregs()
        env.regs = [getattr(regs, name) for name in _REG_FIELDS]
        env.rip = regs.rip
        env.rflags = regs.rflags
        env.segs = [segment_from_kvm(getattr(sregs, name)) for name in _SEG_FIELDS]
        env.ldt = segment_from_kvm(sregs.ldt)
        env.tr = segment_from_kvm(sregs.tr)
        env.gdt = DescriptorTable(sregs.gdt.base, sregs.gdt.limit)
        env.idt = DescriptorTable(sregs.idt.base, sregs.idt.limit)
        env.cr0, env.cr2, env.cr3, env.cr4 = sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4
        env.cr8, env.efer, env.apic_base = sregs.cr8, sregs.efer, sregs.apic_base
        msrs = tuple(entry for entry in self._msrs()
                     if not (self.stopped_tsc is not None and entry[0] == MSR.IA32_TSC))
        values: dict[int, int] = {}
        wanted = [int(index) for index, _ in msrs]
        while wanted:    # KVM stops at the first MSR it does not know: go on after it
            got = self.fd.get_msrs(wanted)
            values.update(got)
            if len(got) == len(wanted):
                break
            wanted = wanted[len(got) + 1:]
        for index, attr in msrs:
            if int(index) in values:
                setattr(env, attr, values[int(index)])
        if self.stopped_tsc is None:
            self.stopped_tsc = env.tsc
        env.tsc = self.stopped_tsc
        self._get_fpu(env)
        if k.Cap.DEBUGREGS in self.accel.caps:
            dbg = self.fd.get_debugregs()
            env.dr = [dbg.db[0], dbg.db[1], dbg.db[2], dbg.db[3], 0, 0, dbg.dr6, dbg.dr7]
        self._events_from_kvm(env)
        if self.accel.in_kernel_irqchip:
            env.mp_state = _MP_STATE_FROM_KVM.get(self.fd.get_mp_state(), X86MPState.RUNNABLE)
            env.halted = env.mp_state in (X86MPState.HALTED, X86MPState.WAIT_FOR_SIPI, X86MPState.UNINITIALIZED)
            lapic = self.fd.get_lapic()
            env.kernel_lapic = ctypes.string_at(ctypes.addressof(lapic), ctypes.sizeof(lapic))
        else:
            env.halted = self.run_state.halted
            env.mp_state = X86MPState.HALTED if env.halted else X86MPState.RUNNABLE
            env.kernel_lapic = None

    def destroy(self) -> None:
        if self.fd.fd < 0:
            return  # taken down already
        # Drop this side's views of the kvm_run page first: the mapping cannot
        # be closed while they are exported.
        self.run_page.release()
        del self.run
        self.fd.close()


# -- the accelerator ------------------------------------------------------------------------------


def _ignore_signal(signum: int, frame: Any) -> None:
    pass


class KVMAccel(AccelOps):
    name = "kvm"
    supports_smp = True
    properties = KVM_ACCEL_PROPERTIES

    def __init__(self) -> None:
        path = kvm_device_path()
        try:
            self.system = k.KVMSystem(path)
        except OSError as e:
            raise AccelUnavailable(f"Could not access KVM kernel module: {e.strerror or e}") from None
        self.vm: k.KVMVMFd | None = None
        self.in_kernel_irqchip = False
        self.memory_listener: KVMMemoryListener | None = None
        self.supported_cpuid: list[k.kvm_cpuid_entry2] = []
        # What of the vCPU state this KVM can give and take beyond the registers.
        self.caps: frozenset[k.Cap] = frozenset()
        self.signal_installed = False
        self.gsi_lines: list[KVMIRQLine] = []
        self.internal_error = False
        # -accel kvm,kernel-irqchip=...; when not given, -machine kernel-irqchip=
        # (QEMU's older spelling of the same setting) decides.
        self.kernel_irqchip: str | None = None
        self.cpu_pm = False  # -overcommit cpu-pm=on
        self.cpu_pm_location: str | None = None

    def init_machine(self, machine: Any) -> None:
        from pemu.system.physmem import address_space_memory

        where: str | None = None  # -accel's value was checked where the option is named
        if self.kernel_irqchip is not None:
            mode = self.kernel_irqchip
        else:
            mode = machine.kernel_irqchip or "on"  # X86MachineState.kernel_irqchip
            where = f"-machine kernel-irqchip={mode}"
        if mode == "split":
            raise UserError("kernel-irqchip=split is not supported by pemu", where)
        try:
            self.vm = vm = self.system.create_vm()
        except KVMError as e:
            raise UserError(f"failed to initialize kvm: {e.strerror}") from None
        if not self.system.check_extension(k.Cap.IMMEDIATE_EXIT):
            raise UserError("failed to initialize kvm: KVM_CAP_IMMEDIATE_EXIT is missing")
        for setter, addr in ((vm.set_identity_map_addr, KVM_IDENTITY_MAP_ADDR), (vm.set_tss_addr, KVM_TSS_ADDR)):
            try:
                setter(addr)
            except KVMError:
                pass  # only Intel's real-mode support needs them
        self.supported_cpuid = self.system.supported_cpuid()
        self.caps = frozenset(cap for cap in (k.Cap.VCPU_EVENTS, k.Cap.DEBUGREGS, k.Cap.XSAVE, k.Cap.XCRS)
                              if self.system.check_extension(cap))
        if self.cpu_pm:
            self._disable_pm_exits()
        if mode == "on":
            if not self.system.check_extension(k.Cap.IRQCHIP):
                raise UserError("kernel-irqchip=on is not supported by this KVM", where)
            vm.create_irqchip()
            vm.set_gsi_routing(pc_gsi_routing())
            vm.create_pit2(0)
            self.in_kernel_irqchip = True
            self.gsi_lines = [KVMIRQLine(vm, gsi) for gsi in range(NUM_IOAPIC_PINS)]
        smp = machine.smp.cpus
        if smp > 1 and not self.in_kernel_irqchip:
            raise UserError("-smp > 1 needs kernel-irqchip=on under kvm "
                            "(the userspace APIC cannot start application processors yet)", f"-smp {smp}")
        max_vcpus = self.system.check_extension(k.Cap.MAX_VCPUS) or self.system.check_extension(k.Cap.NR_VCPUS)
        if max_vcpus and smp > max_vcpus:
            raise UserError(f"Number of SMP cpus requested ({smp}) exceeds the maximum cpus supported by "
                            f"KVM ({max_vcpus})", f"-smp {smp}")
        max_slots = self.system.check_extension(k.Cap.NR_MEMSLOTS) or 32
        self.memory_listener = KVMMemoryListener(vm, bool(self.system.check_extension(k.Cap.READONLY_MEM)),
                                                 max_slots)
        address_space_memory().add_listener(self.memory_listener)
        self._install_kick_signal()

    def _install_kick_signal(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(SIG_IPI) in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(SIG_IPI, _ignore_signal)
        self.signal_installed = True

    def create_vcpu(self, cpu: Any) -> KVMVCPU:
        return KVMVCPU(self, cpu)

    # -- the dirty log: KVM logs the vCPUs' writes per memory slot (KVM_MEM_LOG_DIRTY_PAGES) --
    def log_global_start(self, blocks: Sequence[RAMBlock]) -> bool:
        if self.memory_listener is None:
            return False
        self.memory_listener.log_start(tuple(blocks))
        return True

    def log_sync(self, bitmaps: dict[RAMBlock, bytearray]) -> None:
        if self.memory_listener is not None:
            self.memory_listener.log_sync(bitmaps)

    def log_global_stop(self) -> None:
        if self.memory_listener is not None:
            self.memory_listener.log_stop()

    def report_internal_error(self) -> None:
        """Stop the VM in the internal-error state (from the main loop: a vCPU cannot pause itself)."""
        from pemu.system import cpus, runstate
        from pemu.util.main_loop import main_loop

        self.internal_error = True

        def stop() -> None:
            cpus.vm_stop(runstate.RunState.INTERNAL_ERROR)

        main_loop().bh_schedule(stop)

    def send_msi(self, address: int, data: int) -> None:
        """Deliver an MSI write (address 0xFEExxxxx) to the in-kernel LAPICs."""
        if self.vm is None or not self.in_kernel_irqchip:
            guest_error(f"kvm: MSI to {address:#x} without an in-kernel irqchip")
            return
        try:
            self.vm.signal_msi(address, data)
        except KVMError as e:
            guest_error(f"kvm: MSI to {address:#x} data {data:#x}: {e}")

    def set_cpu_pm(self, enabled: bool, location: str | None) -> None:
        self.cpu_pm = enabled
        self.cpu_pm_location = location

    def _disable_pm_exits(self) -> None:
        """cpu-pm=on: HLT, PAUSE and C-states stay in the guest (QEMU's
        kvm_arch_init with enable_cpu_pm), as far as this KVM allows."""
        offered = self.system.check_extension(k.Cap.X86_DISABLE_EXITS)
        wanted = k.KVM_X86_DISABLE_EXITS_HLT | k.KVM_X86_DISABLE_EXITS_PAUSE | k.KVM_X86_DISABLE_EXITS_CSTATE
        if not offered & k.KVM_X86_DISABLE_EXITS_HLT:
            raise UserError("cpu-pm=on: this KVM cannot leave HLT to the guest (KVM_CAP_X86_DISABLE_EXITS)",
                            self.cpu_pm_location)
        assert self.vm is not None
        try:
            self.vm.enable_cap(k.Cap.X86_DISABLE_EXITS, offered & wanted)
        except KVMError as e:
            raise UserError(f"cpu-pm=on: KVM refused to disable the exits: {e.strerror}",
                            self.cpu_pm_location) from None

    # -- CPU models (QEMU's kvm_arch_get_supported_cpuid) ---------------------------------------
    def _supported(self, leaf: int, subleaf: int, register: str) -> int:
        for entry in self.supported_cpuid:
            indexed = entry.flags & k.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            if entry.function == leaf and (entry.index == subleaf or not indexed):
                return int(getattr(entry, register))
        return 0

    def cpu_model_filter(self) -> dict[Any, int]:
        """Every feature bit KVM cannot virtualize.  Its paravirtual features
        (kvmclock, async page faults, steal time, PV EOI...) are KVM's own MSRs:
        offered when KVM lists them and the model asks (``+kvmclock``)."""
        from pemu.target.i386.cpu_models import FeatureWord

        return {word: ~self._supported(word.leaf, word.subleaf, word.register) & 0xFFFFFFFF for word in FeatureWord}

    def host_cpu_model(self) -> Any:
        """-cpu host: the host's vendor, family, model and stepping as KVM
        reports them, its name from /proc/cpuinfo, and every feature KVM can
        virtualize (but the paravirtual ones)."""
        from pemu.target.i386.cpu_models import BUILTIN_MODELS, FeatureWord, X86CPUModel

        raw = b"".join(self._supported(0, 0, reg).to_bytes(4, "little") for reg in ("ebx", "edx", "ecx"))
        version = self._supported(1, 0, "eax")
        family = (version >> 8) & 0xF
        if family == 0xF:
            family += (version >> 20) & 0xFF
        model = (version >> 4) & 0xF | ((version >> 16) & 0xF) << 4
        features: dict[FeatureWord, int] = {word: self._supported(word.leaf, word.subleaf, word.register)
                                            for word in FeatureWord if word is not FeatureWord.CPUID_KVM}
        xlevel = self._supported(0x80000000, 0, "eax")
        return X86CPUModel("host", raw.decode("ascii", "replace"), family, model, version & 0xF,
                           _host_model_name(), features, level=min(self._supported(0, 0, "eax"), 0xD),
                           xlevel=min(xlevel, 0x8000000A) if xlevel >= 0x80000000 else 0x80000008,
                           phys_bits=self.host_phys_bits() or 40,
                           description=BUILTIN_MODELS["host"].description, migratable=True)

    def host_phys_bits(self) -> int:
        return self._supported(0x80000008, 0, "eax") & 0xFF

    def irqchip_in_kernel(self) -> bool:
        return self.in_kernel_irqchip

    def irqchip_gsi_lines(self) -> list[IRQLine]:
        return list(self.gsi_lines)

    _IRQCHIPS = (("pic_master", k.KVM_IRQCHIP_PIC_MASTER, 16), ("pic_slave", k.KVM_IRQCHIP_PIC_SLAVE, 16),
                 ("ioapic", k.KVM_IRQCHIP_IOAPIC, 216))

    def irqchip_state(self) -> dict[str, bytes]:
        """KVM_GET_IRQCHIP of both 8259s and the I/O APIC, KVM_GET_PIT2."""
        assert self.vm is not None and self.in_kernel_irqchip
        state = {}
        for name, chip_id, size in self._IRQCHIPS:
            state[name] = bytes(self.vm.get_irqchip(chip_id).chip)[:size]
        pit = self.vm.get_pit2()
        state["pit"] = ctypes.string_at(ctypes.addressof(pit), ctypes.sizeof(pit))
        return state

    def set_irqchip_state(self, state: dict[str, bytes]) -> None:
        assert self.vm is not None and self.in_kernel_irqchip
        for name, chip_id, size in self._IRQCHIPS:
            chip = self.vm.get_irqchip(chip_id)
            ctypes.memmove(ctypes.addressof(chip.chip), state[name], size)
            self.vm.set_irqchip(chip)
        pit = k.kvm_pit_state2()
        ctypes.memmove(ctypes.addressof(pit), state["pit"], ctypes.sizeof(pit))
        self.vm.set_pit2(pit)

    def cleanup(self) -> None:
        self.close()

    def close(self) -> None:
        from pemu.system.physmem import address_space_memory

        if self.memory_listener is not None:
            try:
                address_space_memory().remove_listener(self.memory_listener)
            except (ValueError, AssertionError):
                pass
            self.memory_listener = None
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        self.system.close()


# -- what the board asks about ----------------------------------------------------------------------


def kvm_enabled() -> bool:
    accel = current_accel()
    return accel is not None and accel.name == "kvm"


def kvm_irqchip_in_kernel() -> bool:
    accel = current_accel()
    return isinstance(accel, KVMAccel) and accel.in_kernel_irqchip


def kvm_isa_irqs() -> list[KVMIRQLine]:
    """The 16 ISA interrupt lines into the in-kernel irqchip (GSIs 0-15)."""
    accel = current_accel()
    assert isinstance(accel, KVMAccel) and accel.in_kernel_irqchip
    return accel.gsi_lines[:16]


def _host_model_name() -> str:
    """The host CPU's name ("model name" in /proc/cpuinfo), as -cpu host's model id."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return ""


def kvm_irqchip_send_msi(address: int, data: int) -> None:
    accel = current_accel()
    if isinstance(accel, KVMAccel):
        accel.send_msi(address, data)


__all__ = ["KVMAccel", "KVMVCPU", "KVMMemoryListener", "plan_slots", "pc_gsi_routing", "build_cpuid",
           "kvm_enabled", "kvm_irqchip_in_kernel", "kvm_isa_irqs", "kvm_irqchip_send_msi", "kvm_device_path"]
