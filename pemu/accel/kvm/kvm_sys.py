"""The raw KVM interface (linux/kvm.h, asm/kvm.h) in ctypes.

This module is the only one that issues KVM ioctls.  Every structure is
declared once, and its size is asserted against the kernel's (the sizes are
also encoded in the ioctl numbers, and tests/unit/test_kvm_sys.py compiles
the kernel headers to check both).  ``KVMSystem``, ``KVMVMFd`` and
``KVMVcpuFd`` wrap the three kinds of file descriptor the API hands out.
The ioctl call goes through libc with the GIL released, so a vCPU thread
sitting in KVM_RUN does not hold up the rest of the process.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from ctypes import Structure, Union, c_uint8, c_uint16, c_uint32, c_uint64, sizeof
from enum import IntEnum
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int

KVM_API_VERSION = 12
KVMIO = 0xAE

# -- ioctl number encoding (asm-generic/ioctl.h) -----------------------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | KVMIO << 8 | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct: Any) -> int:
    return _ioc(_IOC_READ, nr, sizeof(struct))


def _iow(nr: int, struct: Any) -> int:
    return _ioc(_IOC_WRITE, nr, sizeof(struct))


def _iowr(nr: int, struct: Any) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, sizeof(struct))


# -- structures ----------------------------------------------------------------------


class kvm_userspace_memory_region(Structure):
    _fields_ = [("slot", c_uint32), ("flags", c_uint32), ("guest_phys_addr", c_uint64),
                ("memory_size", c_uint64), ("userspace_addr", c_uint64)]


class kvm_dirty_log(Structure):
    # The kernel's union of the bitmap pointer with a u64 is a plain u64 here.
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", c_uint64)]


class kvm_regs(Structure):
    _fields_ = [(name, c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint32), ("selector", c_uint16), ("type", c_uint8),
                ("present", c_uint8), ("dpl", c_uint8), ("db", c_uint8), ("s", c_uint8), ("l", c_uint8),
                ("g", c_uint8), ("avl", c_uint8), ("unusable", c_uint8), ("padding", c_uint8)]


class kvm_dtable(Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(Structure):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
                ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64), ("cr8", c_uint64),
                ("efer", c_uint64), ("apic_base", c_uint64),
                ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64))]


class kvm_fpu(Structure):
    _fields_ = [("fpr", c_uint8 * 128), ("fcw", c_uint16), ("fsw", c_uint16), ("ftwx", c_uint8),
                ("pad1", c_uint8), ("last_opcode", c_uint16), ("last_ip", c_uint64), ("last_dp", c_uint64),
                ("xmm", c_uint8 * 256), ("mxcsr", c_uint32), ("pad2", c_uint32)]


class kvm_msr_entry(Structure):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(Structure):
    """Header only; the entries follow it (see :func:`msrs_buffer`)."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class kvm_cpuid_entry2(Structure):
    _fields_ = [("function", c_uint32), ("index", c_uint32), ("flags", c_uint32), ("eax", c_uint32),
                ("ebx", c_uint32), ("ecx", c_uint32), ("edx", c_uint32), ("padding", c_uint32 * 3)]


class kvm_cpuid2(Structure):
    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


class kvm_irq_level(Structure):
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class kvm_pit_config(Structure):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1


class kvm_irq_routing_irqchip(Structure):
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class kvm_irq_routing_msi(Structure):
    _fields_ = [("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32), ("devid", c_uint32)]


class _kvm_irq_routing_u(Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", c_uint32 * 8)]


class kvm_irq_routing_entry(Structure):
    _fields_ = [("gsi", c_uint32), ("type", c_uint32), ("flags", c_uint32), ("pad", c_uint32),
                ("u", _kvm_irq_routing_u)]


class kvm_irq_routing(Structure):
    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class kvm_msi(Structure):
    _fields_ = [("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32), ("flags", c_uint32),
                ("devid", c_uint32), ("pad", c_uint8 * 12)]


class kvm_interrupt(Structure):
    _fields_ = [("irq", c_uint32)]


class kvm_enable_cap(Structure):
    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4), ("pad", c_uint8 * 64)]


class kvm_mp_state(Structure):
    _fields_ = [("mp_state", c_uint32)]


class MPState(IntEnum):
    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4


class kvm_lapic_state(Structure):
    _fields_ = [("regs", ctypes.c_char * 1024)]


class _events_exception(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("has_error_code", c_uint8), ("pending", c_uint8),
                ("error_code", c_uint32)]


class _events_interrupt(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class _events_nmi(Structure):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class _events_smi(Structure):
    _fields_ = [("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8), ("latched_init", c_uint8)]


class kvm_vcpu_events(Structure):
    _fields_ = [("exception", _events_exception), ("interrupt", _events_interrupt), ("nmi", _events_nmi),
                ("sipi_vector", c_uint32), ("flags", c_uint32), ("smi", _events_smi),
                ("reserved", c_uint8 * 27), ("exception_has_payload", c_uint8), ("exception_payload", c_uint64)]


KVM_VCPUEVENT_VALID_NMI_PENDING = 1 << 0
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 1 << 1
KVM_VCPUEVENT_VALID_SHADOW = 1 << 2
KVM_VCPUEVENT_VALID_SMM = 1 << 3
KVM_X86_SHADOW_INT_MOV_SS = 1
KVM_X86_SHADOW_INT_STI = 2


class kvm_debugregs(Structure):
    _fields_ = [("db", c_uint64 * 4), ("dr6", c_uint64), ("dr7", c_uint64), ("flags", c_uint64),
                ("reserved", c_uint64 * 9)]


class kvm_xsave(Structure):
    """The XSAVE image (the legacy FXSAVE area, the header at 512, YMM_Hi128 at 576)."""

    _fields_ = [("region", c_uint8 * 4096)]


class kvm_xcr(Structure):
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(Structure):
    _fields_ = [("nr_xcrs", c_uint32), ("flags", c_uint32), ("xcrs", kvm_xcr * 16), ("padding", c_uint64 * 16)]


class kvm_irqchip(Structure):
    """One in-kernel interrupt controller: chip_id 0/1 the 8259s, 2 the IOAPIC, state raw."""

    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", c_uint8 * 512)]


class kvm_pit_channel_state(Structure):
    _fields_ = [("count", c_uint32), ("latched_count", c_uint16), ("count_latched", c_uint8),
                ("status_latched", c_uint8), ("status", c_uint8), ("read_state", c_uint8),
                ("write_state", c_uint8), ("write_latch", c_uint8), ("rw_mode", c_uint8), ("mode", c_uint8),
                ("bcd", c_uint8), ("gate", c_uint8), ("count_load_time", ctypes.c_int64)]


class kvm_pit_state2(Structure):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", c_uint32), ("reserved", c_uint32 * 9)]


# kvm_run and the exit-specific parts of its union.
class _run_io(Structure):
    _fields_ = [("direction", c_uint8), ("size", c_uint8), ("port", c_uint16), ("count", c_uint32),
                ("data_offset", c_uint64)]


class _run_mmio(Structure):
    _fields_ = [("phys_addr", c_uint64), ("data", c_uint8 * 8), ("len", c_uint32), ("is_write", c_uint8)]


class _run_fail_entry(Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class _run_internal(Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _run_system_event(Structure):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _run_exit(Union):
    _fields_ = [("io", _run_io), ("mmio", _run_mmio), ("fail_entry", _run_fail_entry),
                ("internal", _run_internal), ("system_event", _run_system_event), ("padding", ctypes.c_char * 256)]


class kvm_run(Structure):
    _fields_ = [("request_interrupt_window", c_uint8), ("immediate_exit", c_uint8), ("padding1", c_uint8 * 6),
                ("exit_reason", c_uint32), ("ready_for_interrupt_injection", c_uint8), ("if_flag", c_uint8),
                ("flags", c_uint16), ("cr8", c_uint64), ("apic_base", c_uint64), ("u", _run_exit),
                ("kvm_valid_regs", c_uint64), ("kvm_dirty_regs", c_uint64)]


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class ExitReason(IntEnum):
    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24


class SystemEvent(IntEnum):
    SHUTDOWN = 1
    RESET = 2
    CRASH = 3


class Cap(IntEnum):
    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    IRQ_ROUTING = 25
    SET_IDENTITY_MAP_ADDR = 37
    PIT2 = 33
    SIGNAL_MSI = 77
    READONLY_MEM = 81
    IMMEDIATE_EXIT = 136
    MAX_VCPUS = 66
    SPLIT_IRQCHIP = 121
    X86_DISABLE_EXITS = 143
    VCPU_EVENTS = 41
    DEBUGREGS = 50
    XSAVE = 55
    XCRS = 56


# KVM_CAP_X86_DISABLE_EXITS: what the guest may do without leaving KVM.
KVM_X86_DISABLE_EXITS_MWAIT = 1 << 0
KVM_X86_DISABLE_EXITS_HLT = 1 << 1
KVM_X86_DISABLE_EXITS_PAUSE = 1 << 2
KVM_X86_DISABLE_EXITS_CSTATE = 1 << 3


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# Sizes in the kernel's headers (x86-64): checked at import, so a mistake in a
# declaration fails loudly instead of corrupting an ioctl.
KERNEL_SIZES: dict[type, int] = {
    kvm_userspace_memory_region: 32, kvm_dirty_log: 16, kvm_regs: 144, kvm_segment: 24, kvm_dtable: 16, kvm_sregs: 312,
    kvm_fpu: 416, kvm_msr_entry: 16, kvm_msrs: 8, kvm_cpuid_entry2: 40, kvm_cpuid2: 8, kvm_irq_level: 8,
    kvm_pit_config: 64, kvm_irq_routing_entry: 48, kvm_irq_routing: 8, kvm_msi: 32, kvm_interrupt: 4,
    kvm_mp_state: 4, kvm_lapic_state: 1024, _run_exit: 256, kvm_enable_cap: 104,
    kvm_vcpu_events: 64, kvm_debugregs: 128, kvm_xsave: 4096, kvm_xcrs: 392, kvm_irqchip: 520,
    kvm_pit_state2: 112,
}
for _struct, _size in KERNEL_SIZES.items():
    assert sizeof(_struct) == _size, f"{_struct.__name__}: {sizeof(_struct)} != kernel's {_size}"
assert kvm_run.u.offset == 32 and sizeof(kvm_run) == 304


class Ioctl(IntEnum):
    GET_API_VERSION = _io(0x00)
    CREATE_VM = _io(0x01)
    GET_MSR_INDEX_LIST = _iowr(0x02, c_uint32)
    CHECK_EXTENSION = _io(0x03)
    GET_VCPU_MMAP_SIZE = _io(0x04)
    GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2)
    CREATE_VCPU = _io(0x41)
    GET_DIRTY_LOG = _iow(0x42, kvm_dirty_log)
    SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
    SET_TSS_ADDR = _io(0x47)
    SET_IDENTITY_MAP_ADDR = _iow(0x48, c_uint64)
    CREATE_IRQCHIP = _io(0x60)
    IRQ_LINE = _iow(0x61, kvm_irq_level)
    SET_GSI_ROUTING = _iow(0x6A, kvm_irq_routing)
    CREATE_PIT2 = _iow(0x77, kvm_pit_config)
    SIGNAL_MSI = _iow(0xA5, kvm_msi)
    ENABLE_CAP = _iow(0xA3, kvm_enable_cap)
    RUN = _io(0x80)
    GET_REGS = _ior(0x81, kvm_regs)
    SET_REGS = _iow(0x82, kvm_regs)
    GET_SREGS = _ior(0x83, kvm_sregs)
    SET_SREGS = _iow(0x84, kvm_sregs)
    INTERRUPT = _iow(0x86, kvm_interrupt)
    GET_MSRS = _iowr(0x88, kvm_msrs)
    SET_MSRS = _iow(0x89, kvm_msrs)
    GET_FPU = _ior(0x8C, kvm_fpu)
    SET_FPU = _iow(0x8D, kvm_fpu)
    GET_LAPIC = _ior(0x8E, kvm_lapic_state)
    SET_LAPIC = _iow(0x8F, kvm_lapic_state)
    SET_CPUID2 = _iow(0x90, kvm_cpuid2)
    GET_MP_STATE = _ior(0x98, kvm_mp_state)
    SET_MP_STATE = _iow(0x99, kvm_mp_state)
    NMI = _io(0x9A)
    SET_TSC_KHZ = _io(0xA2)
    GET_TSC_KHZ = _io(0xA3)
    GET_VCPU_EVENTS = _ior(0x9F, kvm_vcpu_events)
    SET_VCPU_EVENTS = _iow(0xA0, kvm_vcpu_events)
    GET_DEBUGREGS = _ior(0xA1, kvm_debugregs)
    SET_DEBUGREGS = _iow(0xA2, kvm_debugregs)
    GET_XSAVE = _ior(0xA4, kvm_xsave)
    SET_XSAVE = _iow(0xA5, kvm_xsave)
    GET_XCRS = _ior(0xA6, kvm_xcrs)
    SET_XCRS = _iow(0xA7, kvm_xcrs)
    GET_IRQCHIP = _iowr(0x62, kvm_irqchip)
    SET_IRQCHIP = _ior(0x63, kvm_irqchip)
    GET_PIT2 = _ior(0x9F, kvm_pit_state2)
    SET_PIT2 = _iow(0xA0, kvm_pit_state2)


class KVMError(OSError):
    """An ioctl failed; ``errno`` says why."""


def kvm_ioctl(fd: int, request: int, arg: Any = None) -> int:
    """ioctl(fd, request, arg) with arg a ctypes object (by reference), an int, or None."""
    if arg is None:
        ptr: Any = None
    elif isinstance(arg, int):
        ptr = ctypes.c_void_p(arg)
    else:
        ptr = ctypes.cast(ctypes.byref(arg), ctypes.c_void_p)
    ret = _ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        name = Ioctl(request).name if request in Ioctl._value2member_map_ else hex(request)
        raise KVMError(err, f"KVM_{name}: {os.strerror(err)}")
    return ret


def variable_struct(header_type: type[Structure], entry_type: type[Structure], count: int) -> Any:
    """A header followed by ``count`` entries (kvm_msrs, kvm_cpuid2, kvm_irq_routing)."""

    class Variable(Structure):
        _fields_ = [("hdr", header_type), ("entries", entry_type * count)]

    return Variable()


class KVMSystem:
    """/dev/kvm: the system fd."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            version = kvm_ioctl(self.fd, Ioctl.GET_API_VERSION)
            if version != KVM_API_VERSION:
                raise KVMError(errno.EINVAL, f"KVM API version {version}, expected {KVM_API_VERSION}")
            self.vcpu_mmap_size = kvm_ioctl(self.fd, Ioctl.GET_VCPU_MMAP_SIZE)
        except BaseException:
            os.close(self.fd)
            raise

    def check_extension(self, cap: int) -> int:
        try:
            return kvm_ioctl(self.fd, Ioctl.CHECK_EXTENSION, int(cap))
        except KVMError:
            return 0

    def supported_cpuid(self) -> list[kvm_cpuid_entry2]:
        count = 64
        while True:
            buf = variable_struct(kvm_cpuid2, kvm_cpuid_entry2, count)
            buf.hdr.nent = count
            try:
                kvm_ioctl(self.fd, Ioctl.GET_SUPPORTED_CPUID, buf)
            except KVMError as e:
                if e.errno == errno.E2BIG and count < 4096:
                    count *= 2
                    continue
                raise
            return [buf.entries[i] for i in range(buf.hdr.nent)]

    def create_vm(self) -> KVMVMFd:
        return KVMVMFd(self, kvm_ioctl(self.fd, Ioctl.CREATE_VM, 0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KVMVMFd:
    def __init__(self, system: KVMSystem, fd: int) -> None:
        self.system = system
        self.fd = fd

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int, host_addr: int,
                               flags: int = 0) -> None:
        region = kvm_userspace_memory_region(slot, flags, guest_phys_addr, size, host_addr)
        kvm_ioctl(self.fd, Ioctl.SET_USER_MEMORY_REGION, region)

    def get_dirty_log(self, slot: int, bitmap: bytearray) -> None:
        """The pages of ``slot`` written since it was added with
        KVM_MEM_LOG_DIRTY_PAGES or since the last call, into ``bitmap`` (a
        bit per page from the slot's start, a whole number of 64-bit words);
        the kernel forgets them."""
        assert len(bitmap) % 8 == 0
        buf = (ctypes.c_uint8 * len(bitmap)).from_buffer(bitmap)
        try:
            kvm_ioctl(self.fd, Ioctl.GET_DIRTY_LOG, kvm_dirty_log(slot, 0, ctypes.addressof(buf)))
        finally:
            del buf

    def set_tss_addr(self, addr: int) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_IDENTITY_MAP_ADDR, c_uint64(addr))

    def create_irqchip(self) -> None:
        kvm_ioctl(self.fd, Ioctl.CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        kvm_ioctl(self.fd, Ioctl.CREATE_PIT2, kvm_pit_config(flags))

    def irq_line(self, gsi: int, level: int) -> None:
        kvm_ioctl(self.fd, Ioctl.IRQ_LINE, kvm_irq_level(gsi, level))

    def set_gsi_routing(self, entries: list[kvm_irq_routing_entry]) -> None:
        buf = variable_struct(kvm_irq_routing, kvm_irq_routing_entry, len(entries))
        buf.hdr.nr = len(entries)
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        kvm_ioctl(self.fd, Ioctl.SET_GSI_ROUTING, buf)

    def signal_msi(self, address: int, data: int) -> int:
        msi = kvm_msi(address & 0xFFFFFFFF, (address >> 32) & 0xFFFFFFFF, data & 0xFFFFFFFF, 0, 0)
        return kvm_ioctl(self.fd, Ioctl.SIGNAL_MSI, msi)

    def get_irqchip(self, chip_id: int) -> kvm_irqchip:
        chip = kvm_irqchip(chip_id=chip_id)
        kvm_ioctl(self.fd, Ioctl.GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip: kvm_irqchip) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_IRQCHIP, chip)

    def get_pit2(self) -> kvm_pit_state2:
        state = kvm_pit_state2()
        kvm_ioctl(self.fd, Ioctl.GET_PIT2, state)
        return state

    def set_pit2(self, state: kvm_pit_state2) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_PIT2, state)

    def enable_cap(self, cap: int, *args: int) -> None:
        """KVM_ENABLE_CAP on the VM (before its vCPUs exist, for most capabilities)."""
        request = kvm_enable_cap(int(cap), 0)
        for i, arg in enumerate(args):
            request.args[i] = arg
        kvm_ioctl(self.fd, Ioctl.ENABLE_CAP, request)

    def create_vcpu(self, vcpu_id: int) -> KVMVcpuFd:
        return KVMVcpuFd(self, kvm_ioctl(self.fd, Ioctl.CREATE_VCPU, vcpu_id))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KVMVcpuFd:
    """One vCPU fd and its shared kvm_run page."""

    def __init__(self, vm: KVMVMFd, fd: int) -> None:
        self.vm = vm
        self.fd = fd
        self.run_mmap = mmap.mmap(fd, vm.system.vcpu_mmap_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        self.run = kvm_run.from_buffer(self.run_mmap)
        self.run_addr = ctypes.addressof(self.run)

    def run_once(self) -> int:
        """KVM_RUN; 0, or -errno for EINTR/EAGAIN (a kick); other errors raise."""
        ret = _ioctl(self.fd, Ioctl.RUN, None)
        if ret < 0:
            err = ctypes.get_errno()
            if err in (errno.EINTR, errno.EAGAIN):
                return -err
            raise KVMError(err, f"KVM_RUN: {os.strerror(err)}")
        return 0

    def io_data(self, offset: int, length: int) -> memoryview:
        """The bytes of a port I/O exit, inside the kvm_run page (bounds checked)."""
        if offset < 0 or length < 0 or offset + length > len(self.run_mmap):
            raise KVMError(errno.EFAULT, f"I/O data {offset:#x}+{length} outside the run page")
        return memoryview(self.run_mmap)[offset:offset + length]

    def get_regs(self) -> kvm_regs:
        regs = kvm_regs()
        kvm_ioctl(self.fd, Ioctl.GET_REGS, regs)
        return regs

    def set_regs(self, regs: kvm_regs) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_REGS, regs)

    def get_sregs(self) -> kvm_sregs:
        sregs = kvm_sregs()
        kvm_ioctl(self.fd, Ioctl.GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_SREGS, sregs)

    def get_fpu(self) -> kvm_fpu:
        fpu = kvm_fpu()
        kvm_ioctl(self.fd, Ioctl.GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: kvm_fpu) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_FPU, fpu)

    def set_msrs(self, values: dict[int, int]) -> int:
        buf = variable_struct(kvm_msrs, kvm_msr_entry, len(values))
        buf.hdr.nmsrs = len(values)
        for i, (index, data) in enumerate(values.items()):
            buf.entries[i] = kvm_msr_entry(index, 0, data & 0xFFFFFFFFFFFFFFFF)
        return kvm_ioctl(self.fd, Ioctl.SET_MSRS, buf)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = variable_struct(kvm_msrs, kvm_msr_entry, len(indices))
        buf.hdr.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        n = kvm_ioctl(self.fd, Ioctl.GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_cpuid2(self, entries: list[kvm_cpuid_entry2]) -> None:
        buf = variable_struct(kvm_cpuid2, kvm_cpuid_entry2, len(entries))
        buf.hdr.nent = len(entries)
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        kvm_ioctl(self.fd, Ioctl.SET_CPUID2, buf)

    def interrupt(self, vector: int) -> None:
        kvm_ioctl(self.fd, Ioctl.INTERRUPT, kvm_interrupt(vector & 0xFF))

    def nmi(self) -> None:
        kvm_ioctl(self.fd, Ioctl.NMI)

    def get_mp_state(self) -> MPState:
        state = kvm_mp_state()
        kvm_ioctl(self.fd, Ioctl.GET_MP_STATE, state)
        return MPState(state.mp_state)

    def set_mp_state(self, state: MPState) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_MP_STATE, kvm_mp_state(int(state)))

    def get_vcpu_events(self) -> kvm_vcpu_events:
        events = kvm_vcpu_events()
        kvm_ioctl(self.fd, Ioctl.GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: kvm_vcpu_events) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_VCPU_EVENTS, events)

    def get_debugregs(self) -> kvm_debugregs:
        regs = kvm_debugregs()
        kvm_ioctl(self.fd, Ioctl.GET_DEBUGREGS, regs)
        return regs

    def set_debugregs(self, regs: kvm_debugregs) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_DEBUGREGS, regs)

    def get_xsave(self) -> kvm_xsave:
        xsave = kvm_xsave()
        kvm_ioctl(self.fd, Ioctl.GET_XSAVE, xsave)
        return xsave

    def set_xsave(self, xsave: kvm_xsave) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_XSAVE, xsave)

    def get_xcrs(self) -> kvm_xcrs:
        xcrs = kvm_xcrs()
        kvm_ioctl(self.fd, Ioctl.GET_XCRS, xcrs)
        return xcrs

    def set_xcrs(self, xcrs: kvm_xcrs) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_XCRS, xcrs)

    def get_lapic(self) -> kvm_lapic_state:
        state = kvm_lapic_state()
        kvm_ioctl(self.fd, Ioctl.GET_LAPIC, state)
        return state

    def set_lapic(self, state: kvm_lapic_state) -> None:
        kvm_ioctl(self.fd, Ioctl.SET_LAPIC, state)

    def close(self) -> None:
        if self.fd >= 0:
            del self.run
            self.run_mmap.close()
            os.close(self.fd)
            self.fd = -1
