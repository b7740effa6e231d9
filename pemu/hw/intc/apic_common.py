"""What every local APIC shares (QEMU's hw/intc/apic_common.c, include/hw/i386/apic_internal.h).

The constants of the register file and of interrupt messages, the
:class:`APICCPU` protocol through which an APIC reaches its processor, the
:class:`APICBus` that carries interrupt messages between the APICs and I/O
APICs of one machine, and :class:`APICCommon`, the architectural state every
implementation keeps: the IDs, IA32_APIC_BASE (global enable, BSP, base
relocation, x2APIC enable) and the x2APIC derivations.  The userspace
(tcg) model with its registers and timer is :class:`pemu.hw.intc.apic.APIC`.

"apic-common" is the abstract QOM type of a CPU's APIC; its ``model`` is the
plain object.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from pemu.hw.core.qdev import TYPE_DEVICE, DeviceClass, DeviceState, Property, device_class_set_props
from pemu.hw.pci.msi import msi_decode
from pemu.qom.object import ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.util.log import guest_error

if TYPE_CHECKING:
    from pemu.hw.intc.apic import APIC
    from pemu.hw.intc.ioapic import IOAPIC

APIC_DEFAULT_ADDRESS = 0xFEE00000
APIC_SPACE_SIZE = 0x100000       # the APIC page and the MSI window after it
APIC_PAGE_SIZE = 0x1000

# IA32_APIC_BASE (MSR 0x1B).
MSR_IA32_APICBASE = 0x1B
MSR_IA32_APICBASE_BSP = 1 << 8
MSR_IA32_APICBASE_EXTD = 1 << 10
MSR_IA32_APICBASE_ENABLE = 1 << 11
MSR_IA32_APICBASE_BASE = ((1 << 64) - 1) & ~0xFFF   # limited further by the CPU's physical address width
MSR_IA32_TSC_DEADLINE = 0x6E0
MSR_X2APIC_BASE = 0x800
MSR_X2APIC_END = 0x8FF

APIC_VERSION = 0x14              # as QEMU's: an integrated APIC
APIC_LVT_NB = 6
APIC_BROADCAST_XAPIC = 0xFF
APIC_BROADCAST_X2APIC = 0xFFFFFFFF
APIC_MAX_XAPIC_ID = 0xFE


class DeliveryMode(IntEnum):
    """The delivery mode field of the ICR, the LVTs, I/O APIC entries and MSI data."""

    FIXED = 0
    LOWEST = 1
    SMI = 2
    NMI = 4
    INIT = 5
    STARTUP = 6
    EXTINT = 7


APIC_DM_FIXED = DeliveryMode.FIXED
APIC_DM_LOWEST = DeliveryMode.LOWEST
APIC_DM_SMI = DeliveryMode.SMI
APIC_DM_NMI = DeliveryMode.NMI
APIC_DM_INIT = DeliveryMode.INIT
APIC_DM_STARTUP = DeliveryMode.STARTUP
APIC_DM_EXTINT = DeliveryMode.EXTINT

APIC_DESTMODE_PHYSICAL = 0
APIC_DESTMODE_LOGICAL = 1
APIC_TRIGGER_EDGE = 0
APIC_TRIGGER_LEVEL = 1

# The LVT indices, in register order (0x320 + 0x10 * n).
APIC_LVT_TIMER = 0
APIC_LVT_THERMAL = 1
APIC_LVT_PERFORM = 2
APIC_LVT_LINT0 = 3
APIC_LVT_LINT1 = 4
APIC_LVT_ERROR = 5

APIC_LVT_MASKED = 1 << 16
APIC_LVT_LEVEL_TRIGGER = 1 << 15
APIC_LVT_REMOTE_IRR = 1 << 14
APIC_LVT_INT_POLARITY = 1 << 13
APIC_LVT_DELIV_STS = 1 << 12
APIC_LVT_TIMER_SHIFT = 17
APIC_LVT_TIMER_MODE = 3 << APIC_LVT_TIMER_SHIFT


class TimerMode(IntEnum):
    ONESHOT = 0
    PERIODIC = 1
    TSC_DEADLINE = 2


# The Spurious-Interrupt Vector Register.
APIC_SPURIO_ENABLED = 1 << 8
APIC_SPURIO_FOCUS_DISABLED = 1 << 9

# The Error Status Register.
APIC_ESR_SEND_CS = 1 << 0
APIC_ESR_RECV_CS = 1 << 1
APIC_ESR_SEND_ACCEPT = 1 << 2
APIC_ESR_RECV_ACCEPT = 1 << 3
APIC_ESR_REDIRECTABLE_IPI = 1 << 4
APIC_ESR_SEND_ILLEGAL_VECTOR = 1 << 5
APIC_ESR_RECV_ILLEGAL_VECTOR = 1 << 6
APIC_ESR_ILLEGAL_ADDRESS = 1 << 7

# The ICR's low word.
APIC_ICR_VECTOR = 0xFF
APIC_ICR_DELIV_SHIFT = 8
APIC_ICR_DEST_MODE = 1 << 11
APIC_ICR_DELIV_STS = 1 << 12
APIC_ICR_LEVEL_ASSERT = 1 << 14
APIC_ICR_TRIGGER = 1 << 15
APIC_ICR_SHORTHAND_SHIFT = 18
APIC_ICR_WRITABLE = 0x000CCFFF

APIC_SH_NONE = 0
APIC_SH_SELF = 1
APIC_SH_ALL = 2
APIC_SH_ALL_BUT_SELF = 3

# The DFR's model field.
APIC_DFR_FLAT = 0xF
APIC_DFR_CLUSTER = 0x0


class APICCPU(Protocol):
    """What an APIC needs of its processor; the CPU side implements it.

    ``apic_irq_changed(pending)`` is QEMU's CPU_INTERRUPT_HARD as the APIC
    drives it: pending means ``has_interrupt()`` may now be true, and the CPU
    polls the APIC (then the 8259, for ExtINT) at its next interrupt window.
    ``apic_extint`` asks for an ExtINT cycle: the vector comes from the 8259.
    ``apic_init`` is an INIT signal: the CPU resets itself and calls
    :meth:`APIC.init_reset`; ``apic_sipi`` starts a processor waiting for
    SIPI at ``vector << 12``.
    """

    def apic_irq_changed(self, pending: bool) -> None: ...

    def apic_extint(self) -> None: ...

    def apic_nmi(self) -> None: ...

    def apic_smi(self) -> None: ...

    def apic_init(self) -> None: ...

    def apic_sipi(self, vector: int) -> None: ...


class NoCPU:
    """A processor that ignores its APIC (an APIC not yet attached)."""

    def apic_irq_changed(self, pending: bool) -> None:
        pass

    def apic_extint(self) -> None:
        pass

    def apic_nmi(self) -> None:
        pass

    def apic_smi(self) -> None:
        pass

    def apic_init(self) -> None:
        pass

    def apic_sipi(self, vector: int) -> None:
        pass


def x2apic_ldr(apic_id: int) -> int:
    """The x2APIC logical ID the hardware derives from the APIC ID: cluster
    (ID bits 31:4) in bits 31:16, one bit for ID bits 3:0 below."""
    return ((apic_id >> 4) << 16) | (1 << (apic_id & 0xF))


class APICCommon:
    """The architectural state shared by every local APIC implementation."""

    def __init__(self, apic_id: int = 0, *, bsp: bool = False, phys_bits: int = 40) -> None:
        self.initial_apic_id = apic_id
        self.id = apic_id & 0xFF
        self.phys_bits = phys_bits
        self.apicbase = APIC_DEFAULT_ADDRESS | MSR_IA32_APICBASE_ENABLE | (MSR_IA32_APICBASE_BSP if bsp else 0)

    # -- IA32_APIC_BASE --------------------------------------------------------------
    @property
    def is_bsp(self) -> bool:
        return bool(self.apicbase & MSR_IA32_APICBASE_BSP)

    @property
    def hw_enabled(self) -> bool:
        return bool(self.apicbase & MSR_IA32_APICBASE_ENABLE)

    @property
    def x2apic_mode(self) -> bool:
        return bool(self.apicbase & MSR_IA32_APICBASE_EXTD)

    @property
    def base_addr(self) -> int:
        return self.apicbase & MSR_IA32_APICBASE_BASE & ((1 << self.phys_bits) - 1)

    def designate_bsp(self) -> None:
        """Make this the bootstrap processor's APIC (QEMU's apic_designate_bsp)."""
        self.apicbase |= MSR_IA32_APICBASE_BSP

    def get_base(self) -> int:
        return self.apicbase

    def set_base(self, value: int, *, x2apic_supported: bool = True) -> bool:
        """A WRMSR to IA32_APIC_BASE; False if it must fault (#GP): reserved
        bits set, x2APIC without the feature, or a transition the SDM forbids
        (x2APIC to xAPIC, or x2APIC with the APIC disabled).  The BSP flag is
        read-only."""
        reserved = ~(MSR_IA32_APICBASE_BASE | MSR_IA32_APICBASE_EXTD | MSR_IA32_APICBASE_ENABLE
                     | MSR_IA32_APICBASE_BSP) | ~((1 << self.phys_bits) - 1)
        if value & reserved & ((1 << 64) - 1):
            return False
        new_mode = value & (MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD)
        old_mode = self.apicbase & (MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD)
        if new_mode & MSR_IA32_APICBASE_EXTD:
            if not x2apic_supported or not new_mode & MSR_IA32_APICBASE_ENABLE:
                return False
        if old_mode == MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD and new_mode == MSR_IA32_APICBASE_ENABLE:
            return False
        if old_mode == 0 and new_mode == MSR_IA32_APICBASE_ENABLE | MSR_IA32_APICBASE_EXTD:
            return False
        self.apicbase = (value & ~MSR_IA32_APICBASE_BSP) | (self.apicbase & MSR_IA32_APICBASE_BSP)
        if old_mode != new_mode:
            self._mode_changed(old_mode, new_mode)
        return True

    def _mode_changed(self, old_mode: int, new_mode: int) -> None:
        """Hook for the implementation: the enable or x2APIC bits changed."""

    # -- x2APIC derivations -----------------------------------------------------------
    @property
    def x2apic_id(self) -> int:
        return self.initial_apic_id

    @property
    def x2apic_ldr(self) -> int:
        return x2apic_ldr(self.initial_apic_id)


class APICBus:
    """The APICs and I/O APICs of one machine and the messages between them
    (the system bus of the SDM).  The machine owns it; each APIC and I/O APIC
    is attached once.  Destinations are resolved here: physical (an ID or the
    broadcast ID), logical (flat or cluster in xAPIC mode, cluster in x2APIC
    mode), the ICR shorthands, and lowest-priority arbitration.
    """

    def __init__(self) -> None:
        self.apics: list[APIC] = []
        self.ioapics: list[IOAPIC] = []
        self._arbitration = 0   # round-robin start among equal-priority candidates

    def attach(self, apic: APIC) -> None:
        if apic in self.apics:
            raise ValueError("APIC attached twice")
        self.apics.append(apic)
        apic.bus = self

    def attach_ioapic(self, ioapic: IOAPIC) -> None:
        if ioapic in self.ioapics:
            raise ValueError("I/O APIC attached twice")
        self.ioapics.append(ioapic)
        ioapic.bus = self

    # -- destinations ---------------------------------------------------------------
    def find_destinations(self, dest: int, dest_mode: int, *, wide: bool = False) -> list[APIC]:
        """The enabled APICs a message addresses.  ``wide`` says ``dest`` is a
        32-bit x2APIC destination (an ICR written in x2APIC mode); otherwise it
        is the 8-bit one of the xAPIC ICR, I/O APIC entries and MSI."""
        found = []
        if dest_mode == APIC_DESTMODE_PHYSICAL:
            broadcast = APIC_BROADCAST_X2APIC if wide else APIC_BROADCAST_XAPIC
            for apic in self.apics:
                if not apic.hw_enabled:
                    continue
                if dest == broadcast or apic.physical_id == dest:
                    found.append(apic)
            return found
        for apic in self.apics:
            if apic.hw_enabled and apic.match_logical(dest, wide):
                found.append(apic)
        return found

    def _shorthand_destinations(self, source: APIC, shorthand: int) -> list[APIC]:
        if shorthand == APIC_SH_SELF:
            return [source]
        if shorthand == APIC_SH_ALL:
            return [a for a in self.apics if a.hw_enabled]
        return [a for a in self.apics if a.hw_enabled and a is not source]

    def _lowest_priority(self, candidates: list[APIC], vector: int) -> APIC | None:
        """Focus processor first (one already servicing or holding the
        vector, when focus checking is on), then the lowest processor
        priority, ties taken round-robin."""
        if not candidates:
            return None
        bit = 1 << vector
        for apic in candidates:
            if apic.focus_enabled and (apic.isr | apic.irr) & bit:
                return apic
        n = len(candidates)
        start = self._arbitration % n
        self._arbitration += 1
        best = None
        best_pri = 0x100
        for i in range(n):
            apic = candidates[(start + i) % n]
            pri = apic.get_ppr() & 0xF0
            if pri < best_pri:
                best, best_pri = apic, pri
        return best

    # -- delivery -------------------------------------------------------------------
    def deliver_to(self, targets: list[APIC], delivery_mode: int, vector: int, trigger_mode: int) -> None:
        if delivery_mode == APIC_DM_LOWEST:
            chosen = self._lowest_priority(targets, vector)
            if chosen is not None:
                chosen.accept_message(APIC_DM_FIXED, vector, trigger_mode)
            return
        for apic in targets:
            apic.accept_message(delivery_mode, vector, trigger_mode)

    def deliver(self, dest: int, dest_mode: int, delivery_mode: int, vector: int, trigger_mode: int,
                *, wide: bool = False) -> None:
        """A message from an I/O APIC, an MSI or an IPI without shorthand."""
        self.deliver_to(self.find_destinations(dest, dest_mode, wide=wide), delivery_mode, vector, trigger_mode)

    def send_ipi(self, source: APIC, shorthand: int, dest: int, dest_mode: int, delivery_mode: int,
                 vector: int, trigger_mode: int, *, wide: bool = False) -> None:
        if shorthand == APIC_SH_NONE:
            targets = self.find_destinations(dest, dest_mode, wide=wide)
        else:
            targets = self._shorthand_destinations(source, shorthand)
        self.deliver_to(targets, delivery_mode, vector, trigger_mode)

    def eoi_broadcast(self, vector: int) -> None:
        """A level-triggered vector was EOIed: every I/O APIC clears its remote IRR."""
        for ioapic in self.ioapics:
            ioapic.eoi(vector)

    def send_msi(self, address: int, data: int) -> None:
        msg = msi_decode(address, data)
        if msg is None:
            guest_error(f"apic: malformed MSI (address {address:#x}, data {data:#x}) dropped")
            return
        if msg.trigger_mode == APIC_TRIGGER_LEVEL and not msg.level_assert:
            return  # a level de-assert message carries no interrupt
        delivery_mode = APIC_DM_LOWEST if msg.redirection_hint and msg.delivery_mode == APIC_DM_FIXED \
            else msg.delivery_mode
        self.deliver(msg.dest_id, msg.dest_mode, delivery_mode, msg.vector, msg.trigger_mode)


# --- QOM -------------------------------------------------------------------------------------


TYPE_APIC_COMMON = "apic-common"


class APICCommonState(DeviceState):
    """A CPU's APIC as a device.  ``model`` is made by the implementation's realize."""

    model: APICCommon
    apic_id: int
    version: int


def apic_get_model(dev: DeviceState) -> APICCommon:
    return object_check(dev, APICCommonState).model


def _apic_common_class_init(klass: ObjectClass, data: Any) -> None:
    dc = object_class_check(klass, DeviceClass)
    dc.desc = "local APIC"
    dc.user_creatable = False
    device_class_set_props(dc, [
        Property("id", "uint32", 0, attr="apic_id"),
        Property("version", "uint8", APIC_VERSION, attr="version"),
    ])


type_register(TypeInfo(TYPE_APIC_COMMON, parent=TYPE_DEVICE, abstract=True, instance_type=APICCommonState,
                       class_init=_apic_common_class_init))
