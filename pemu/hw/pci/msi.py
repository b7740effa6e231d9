"""Message Signalled Interrupts (QEMU's hw/pci/msi.c; PCI Local Bus 3.0 §6.8, Intel SDM vol. 3 §11.11).

:func:`msi_decode` reads an x86 MSI: the address (0xFEE in bits 31:20, the
destination APIC ID in 19:12, redirection hint in bit 3, destination mode in
bit 2) and the data (vector, delivery mode, level, trigger mode).

:class:`MSICapability` is a PCI function's MSI capability: :func:`msi_init`
links it into the configuration space when the machine can deliver MSIs
(``msi_nonbroken``, which the machine sets once it has an interrupt
controller that takes them, as QEMU's global of that name), and
:meth:`MSICapability.notify` signals one of its vectors, holding it pending
while masked.  The message goes out through ``send(address, data)``: a
32-bit write of the function's bus master, injected by its device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pemu.hw.pci.pci import PCI_CAP_ID_MSI, pci_add_capability
from pemu.migration.vmstate import DeviceOptional, VMStateDescription, VMStateError, VMStateField

if TYPE_CHECKING:
    from pemu.hw.pci.pci import PCIDevice

MSI_ADDR_BASE = 0xFEE00000
MSI_ADDR_MASK = 0xFFF00000
MSI_ADDR_DEST_ID_SHIFT = 12
MSI_ADDR_REDIRECTION_HINT = 1 << 3
MSI_ADDR_DEST_MODE_LOGICAL = 1 << 2
MSI_DATA_VECTOR_MASK = 0xFF
MSI_DATA_DELIVERY_SHIFT = 8
MSI_DATA_LEVEL_ASSERT = 1 << 14
MSI_DATA_TRIGGER_LEVEL = 1 << 15

# Delivery modes an MSI may carry: fixed, lowest priority, SMI, NMI, INIT, ExtINT.
_MSI_DELIVERY_MODES = frozenset((0, 1, 2, 4, 5, 7))

SendMSI = Callable[[int, int], None]   # (address, data)


class MSIMessage:
    """A decoded x86 MSI (one per interrupt a device signals: a slotted
    class; a value, equal by its fields)."""

    __slots__ = ("dest_id", "dest_mode", "redirection_hint", "vector", "delivery_mode", "level_assert",
                 "trigger_mode")

    def __init__(self, dest_id: int, dest_mode: int, redirection_hint: bool, vector: int, delivery_mode: int,
                 level_assert: bool, trigger_mode: int) -> None:
        self.dest_id = dest_id
        self.dest_mode = dest_mode  # 0 physical, 1 logical
        self.redirection_hint = redirection_hint
        self.vector = vector
        self.delivery_mode = delivery_mode
        self.level_assert = level_assert
        self.trigger_mode = trigger_mode  # 0 edge, 1 level

    def _fields(self) -> tuple[int, int, bool, int, int, bool, int]:
        return (self.dest_id, self.dest_mode, self.redirection_hint, self.vector, self.delivery_mode,
                self.level_assert, self.trigger_mode)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MSIMessage):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"MSIMessage(dest_id={self.dest_id:#x}, dest_mode={self.dest_mode}, "
                f"redirection_hint={self.redirection_hint}, vector={self.vector:#x}, "
                f"delivery_mode={self.delivery_mode}, level_assert={self.level_assert}, "
                f"trigger_mode={self.trigger_mode})")


def msi_decode(address: int, data: int) -> MSIMessage | None:
    """The message a write of ``data`` to ``address`` carries; None if it is
    not a valid x86 MSI (outside 0xFEExxxxx, or a reserved delivery mode)."""
    if address & MSI_ADDR_MASK != MSI_ADDR_BASE or address >> 32:
        return None
    delivery_mode = (data >> MSI_DATA_DELIVERY_SHIFT) & 7
    if delivery_mode not in _MSI_DELIVERY_MODES:
        return None
    return MSIMessage(
        dest_id=(address >> MSI_ADDR_DEST_ID_SHIFT) & 0xFF,
        dest_mode=1 if address & MSI_ADDR_DEST_MODE_LOGICAL else 0,
        redirection_hint=bool(address & MSI_ADDR_REDIRECTION_HINT),
        vector=data & MSI_DATA_VECTOR_MASK,
        delivery_mode=delivery_mode,
        level_assert=bool(data & MSI_DATA_LEVEL_ASSERT),
        trigger_mode=1 if data & MSI_DATA_TRIGGER_LEVEL else 0,
    )


def msi_encode(dest_id: int, vector: int, *, dest_mode: int = 0, redirection_hint: bool = False,
               delivery_mode: int = 0, level_assert: bool = False, trigger_mode: int = 0) -> tuple[int, int]:
    """The (address, data) of an x86 MSI: the inverse of :func:`msi_decode`."""
    address = MSI_ADDR_BASE | ((dest_id & 0xFF) << MSI_ADDR_DEST_ID_SHIFT)
    if redirection_hint:
        address |= MSI_ADDR_REDIRECTION_HINT
    if dest_mode:
        address |= MSI_ADDR_DEST_MODE_LOGICAL
    data = (vector & 0xFF) | ((delivery_mode & 7) << MSI_DATA_DELIVERY_SHIFT)
    if level_assert:
        data |= MSI_DATA_LEVEL_ASSERT
    if trigger_mode:
        data |= MSI_DATA_TRIGGER_LEVEL
    return address, data


# --- the PCI capability -------------------------------------------------------------------

PCI_MSI_FLAGS = 2
PCI_MSI_ADDRESS_LO = 4
PCI_MSI_ADDRESS_HI = 8
PCI_MSI_FLAGS_ENABLE = 0x0001
PCI_MSI_FLAGS_QMASK = 0x000E
PCI_MSI_FLAGS_QSIZE = 0x0070
PCI_MSI_FLAGS_64BIT = 0x0080
PCI_MSI_FLAGS_MASKBIT = 0x0100


class MSIError(Exception):
    """msi_init refused (QEMU's -ENOTSUP / -EINVAL)."""


class MSICapability:
    """The MSI capability of one PCI function at ``offset`` in its config space."""

    def __init__(self, dev: PCIDevice, offset: int, nr_vectors: int, msi64bit: bool,
                 per_vector_mask: bool, send: SendMSI) -> None:
        self.dev = dev
        self.offset = offset
        self.nr_vectors = nr_vectors
        self.msi64bit = msi64bit
        self.per_vector_mask = per_vector_mask
        self.send = send

    # -- layout ---------------------------------------------------------------------
    @property
    def data_offset(self) -> int:
        return self.offset + (0xC if self.msi64bit else 0x8)

    @property
    def mask_offset(self) -> int:
        return self.offset + (0x10 if self.msi64bit else 0xC)

    @property
    def pending_offset(self) -> int:
        return self.mask_offset + 4

    @property
    def size(self) -> int:
        base = 0xE if self.msi64bit else 0xA
        return (base + 0xA) if self.per_vector_mask else base

    # -- state ---------------------------------------------------------------------
    @property
    def flags(self) -> int:
        return self.dev.get_word(self.offset + PCI_MSI_FLAGS)

    @property
    def enabled(self) -> bool:
        return bool(self.flags & PCI_MSI_FLAGS_ENABLE)

    @property
    def vectors_enabled(self) -> int:
        return 1 << ((self.flags & PCI_MSI_FLAGS_QSIZE) >> 4)

    def message(self, vector: int) -> tuple[int, int]:
        """(address, data) for ``vector``: its number goes into the low data bits."""
        address = self.dev.get_long(self.offset + PCI_MSI_ADDRESS_LO)
        if self.msi64bit:
            address |= self.dev.get_long(self.offset + PCI_MSI_ADDRESS_HI) << 32
        data = self.dev.get_word(self.data_offset)
        n = self.vectors_enabled
        return address, (data & ~(n - 1)) | (vector & (n - 1))

    def is_masked(self, vector: int) -> bool:
        return self.per_vector_mask and bool(self.dev.get_long(self.mask_offset) >> vector & 1)

    def _set_pending(self, vector: int, pending: bool) -> None:
        bits = self.dev.get_long(self.pending_offset)
        bits = bits | (1 << vector) if pending else bits & ~(1 << vector)
        self.dev.set_long(self.pending_offset, bits)

    def notify(self, vector: int) -> None:
        """Signal ``vector`` (msi_notify): sent now, or held pending while masked."""
        if not self.enabled or vector >= self.vectors_enabled:
            return
        if self.is_masked(vector):
            self._set_pending(vector, True)
            return
        self.send(*self.message(vector))

    def write_config(self, addr: int, size: int) -> None:
        """After a config write (msi_write_config): clamp the enabled vector
        count to the capable one, and send pending vectors now unmasked."""
        if not (addr < self.offset + self.size and addr + size > self.offset):
            return
        flags = self.flags
        capable = (flags & PCI_MSI_FLAGS_QMASK) >> 1
        if (flags & PCI_MSI_FLAGS_QSIZE) >> 4 > capable:
            flags = (flags & ~PCI_MSI_FLAGS_QSIZE) | (capable << 4)
            self.dev.set_word(self.offset + PCI_MSI_FLAGS, flags)
        if not self.enabled or not self.per_vector_mask:
            return
        pending = self.dev.get_long(self.pending_offset)
        for vector in range(self.vectors_enabled):
            if pending >> vector & 1 and not self.is_masked(vector):
                self._set_pending(vector, False)
                self.send(*self.message(vector))


def msi_init(dev: PCIDevice, offset: int, nr_vectors: int, msi64bit: bool, per_vector_mask: bool,
             send: SendMSI, *, msi_nonbroken: bool) -> MSICapability:
    """Add an MSI capability with ``nr_vectors`` (1-32, a power of two).
    Raises :class:`MSIError` when the machine cannot deliver MSIs, so the
    device goes on with INTx and the guest never sees MSI."""
    if not msi_nonbroken:
        raise MSIError("MSI is not supported by the interrupt controller")
    if nr_vectors < 1 or nr_vectors > 32 or nr_vectors & (nr_vectors - 1):
        raise MSIError(f"MSI: {nr_vectors} vectors (must be a power of two, 1-32)")
    cap = MSICapability(dev, 0, nr_vectors, msi64bit, per_vector_mask, send)
    cap.offset = pci_add_capability(dev, PCI_CAP_ID_MSI, offset, cap.size)
    log2 = nr_vectors.bit_length() - 1
    flags = log2 << 1
    if msi64bit:
        flags |= PCI_MSI_FLAGS_64BIT
    if per_vector_mask:
        flags |= PCI_MSI_FLAGS_MASKBIT
    dev.set_word(cap.offset + PCI_MSI_FLAGS, flags)
    o = cap.offset
    dev.wmask[o + PCI_MSI_FLAGS] = PCI_MSI_FLAGS_QSIZE | PCI_MSI_FLAGS_ENABLE
    dev.wmask[o + PCI_MSI_ADDRESS_LO:o + PCI_MSI_ADDRESS_LO + 4] = (0xFFFFFFFC).to_bytes(4, "little")
    if msi64bit:
        dev.wmask[o + PCI_MSI_ADDRESS_HI:o + PCI_MSI_ADDRESS_HI + 4] = b"\xff" * 4
    dev.wmask[cap.data_offset:cap.data_offset + 2] = b"\xff\xff"
    if per_vector_mask:
        mask = (1 << nr_vectors) - 1
        dev.wmask[cap.mask_offset:cap.mask_offset + 4] = mask.to_bytes(4, "little")
        # The pending bits are the device's state, not its identity.
        dev.cmask[cap.pending_offset:cap.pending_offset + 4] = bytes(4)
    return cap


# --- migration ---------------------------------------------------------------------------


def msi_post_load(cap: MSICapability, version_id: int) -> None:
    """MSI's state is the capability in config space, loaded with the
    function (VMSTATE_PCI_DEVICE comes first); what the guest could not have
    produced is refused here: more vectors enabled than the function offers,
    pending bits of vectors it does not have, or a vector left pending while
    enabled and unmasked (this model sends those at once)."""
    flags = cap.flags
    capable = (flags & PCI_MSI_FLAGS_QMASK) >> 1
    enabled = (flags & PCI_MSI_FLAGS_QSIZE) >> 4
    if enabled > capable:
        raise VMStateError(f"MSI: {1 << enabled} vectors enabled, the function offers {1 << capable}")
    if not cap.per_vector_mask:
        return
    pending = cap.dev.get_long(cap.pending_offset)
    if pending >> cap.nr_vectors:
        raise VMStateError(f"MSI: pending bits {pending:#x} beyond the function's {cap.nr_vectors} vectors")
    if cap.enabled:
        for vector in range(cap.vectors_enabled):
            if pending >> vector & 1 and not cap.is_masked(vector):
                raise VMStateError(f"MSI: vector {vector} pending while unmasked")


# The MSI capability of a device (msi: MSICapability | None): nothing on the
# wire besides config space, a check after it is loaded.  A device with MSI
# lists VMSTATE_MSI_FIELD after VMSTATE_PCI_DEVICE_FIELD.
VMSTATE_MSI = VMStateDescription("msi", version_id=1, fields=(), post_load=msi_post_load)
VMSTATE_MSI_FIELD = VMStateField("msi", DeviceOptional(VMSTATE_MSI))
