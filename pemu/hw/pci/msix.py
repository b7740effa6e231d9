"""MSI-X (QEMU's hw/pci/msix.c; PCI Local Bus 3.0 §6.8.2).

:class:`MSIXState` is a function's MSI-X capability with its vector table
and pending bit array as two MMIO regions the device places in its BARs
(:func:`msix_init`).  Each table entry is a message address, data and a
vector control word whose bit 0 masks it; the function mask in the
capability masks them all.  :meth:`MSIXState.notify` sends a vector's
message through ``send(address, data)``, or sets its pending bit while it
is masked; unmasking sends what is pending.  As with MSI, the capability is
offered only when the machine can deliver MSIs (``msi_nonbroken``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pemu.hw.pci.msi import MSIError, SendMSI
from pemu.hw.pci.pci import PCI_CAP_ID_MSIX, pci_add_capability
from pemu.migration.vmstate import DeviceOptional, VarBuffer, VMStateDescription, VMStateError, VMStateField
from pemu.system.memory import MemoryRegion, MemoryRegionOps
from pemu.util.log import guest_error

if TYPE_CHECKING:
    from pemu.hw.pci.pci import PCIDevice

PCI_MSIX_FLAGS = 2
PCI_MSIX_TABLE = 4
PCI_MSIX_PBA = 8
PCI_MSIX_FLAGS_QSIZE = 0x07FF
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_CAP_SIZE = 12

PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_LOWER_ADDR = 0x0
PCI_MSIX_ENTRY_UPPER_ADDR = 0x4
PCI_MSIX_ENTRY_DATA = 0x8
PCI_MSIX_ENTRY_VECTOR_CTRL = 0xC
PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1
PCI_MSIX_MAX_ENTRIES = 2048
U32 = 0xFFFFFFFF


class MSIXState:
    """The MSI-X capability of one function at ``offset`` in its config space."""

    def __init__(self, dev: PCIDevice, offset: int, nentries: int, send: SendMSI) -> None:
        self.dev = dev
        self.offset = offset
        self.nentries = nentries
        self.send = send
        self.table = bytearray(nentries * PCI_MSIX_ENTRY_SIZE)
        self.pba = bytearray(((nentries + 63) // 64) * 8)
        self.table_region = MemoryRegion.io(
            "msix-table", len(self.table),
            MemoryRegionOps(self.table_read, self.table_write, 4, 8, False, 4, 4), owner=dev)
        self.pba_region = MemoryRegion.io(
            "msix-pba", len(self.pba),
            MemoryRegionOps(self.pba_read, self.pba_write, 4, 8, False, 4, 4), owner=dev)
        self.reset()

    def reset(self) -> None:
        self.table[:] = bytes(len(self.table))
        for vector in range(self.nentries):
            self._set_ctrl(vector, PCI_MSIX_ENTRY_CTRL_MASKBIT)
        self.pba[:] = bytes(len(self.pba))
        flags = self.dev.get_word(self.offset + PCI_MSIX_FLAGS)
        self.dev.set_word(self.offset + PCI_MSIX_FLAGS, flags & ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL))

    # -- state ---------------------------------------------------------------------
    @property
    def flags(self) -> int:
        return self.dev.get_word(self.offset + PCI_MSIX_FLAGS)

    @property
    def enabled(self) -> bool:
        return bool(self.flags & PCI_MSIX_FLAGS_ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self.flags & PCI_MSIX_FLAGS_MASKALL)

    def _entry_long(self, vector: int, field: int) -> int:
        base = vector * PCI_MSIX_ENTRY_SIZE + field
        return int.from_bytes(self.table[base:base + 4], "little")

    def _set_ctrl(self, vector: int, value: int) -> None:
        base = vector * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
        self.table[base:base + 4] = value.to_bytes(4, "little")

    def message(self, vector: int) -> tuple[int, int]:
        address = self._entry_long(vector, PCI_MSIX_ENTRY_LOWER_ADDR) \
            | (self._entry_long(vector, PCI_MSIX_ENTRY_UPPER_ADDR) << 32)
        return address, self._entry_long(vector, PCI_MSIX_ENTRY_DATA)

    def is_masked(self, vector: int) -> bool:
        return self.function_masked or bool(
            self._entry_long(vector, PCI_MSIX_ENTRY_VECTOR_CTRL) & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def is_pending(self, vector: int) -> bool:
        return bool(self.pba[vector // 8] >> (vector % 8) & 1)

    def _set_pending(self, vector: int, pending: bool) -> None:
        bit = 1 << (vector % 8)
        if pending:
            self.pba[vector // 8] |= bit
        else:
            self.pba[vector // 8] &= ~bit & 0xFF

    def clear_pending(self, vector: int) -> None:
        """Forget that ``vector`` is pending (msix_clr_pending)."""
        if 0 <= vector < self.nentries:
            self._set_pending(vector, False)

    def notify(self, vector: int) -> None:
        """Signal ``vector`` (msix_notify)."""
        if not self.enabled or not 0 <= vector < self.nentries:
            return
        if self.is_masked(vector):
            self._set_pending(vector, True)
            return
        self.send(*self.message(vector))

    def _deliver_unmasked_pending(self, vectors: range) -> None:
        if not self.enabled:
            return
        for vector in vectors:
            if self.is_pending(vector) and not self.is_masked(vector):
                self._set_pending(vector, False)
                self.send(*self.message(vector))

    def write_config(self, addr: int, size: int) -> None:
        """After a config write (msix_write_config): a cleared function mask or
        a new enable sends what is pending and unmasked."""
        if addr < self.offset + PCI_MSIX_CAP_SIZE and addr + size > self.offset:
            self._deliver_unmasked_pending(range(self.nentries))

    # -- the table and PBA -------------------------------------------------------------
    def table_read(self, offset: int, size: int) -> int:
        if offset & 3 or offset + size > len(self.table):
            guest_error(f"msix: {size}-byte table read at {offset:#x} returns 0")
            return 0
        return int.from_bytes(self.table[offset:offset + size], "little")

    def table_write(self, offset: int, value: int, size: int) -> None:
        if offset & 3 or size != 4 or offset + size > len(self.table):
            guest_error(f"msix: {size}-byte table write at {offset:#x} ignored")
            return
        vector, field = divmod(offset, PCI_MSIX_ENTRY_SIZE)
        if field == PCI_MSIX_ENTRY_VECTOR_CTRL:
            value &= PCI_MSIX_ENTRY_CTRL_MASKBIT   # the rest is reserved
        self.table[offset:offset + 4] = (value & U32).to_bytes(4, "little")
        if field == PCI_MSIX_ENTRY_VECTOR_CTRL:
            self._deliver_unmasked_pending(range(vector, vector + 1))

    def pba_read(self, offset: int, size: int) -> int:
        if offset & 3 or offset + size > len(self.pba):
            return 0
        return int.from_bytes(self.pba[offset:offset + size], "little")

    def pba_write(self, offset: int, value: int, size: int) -> None:
        guest_error("msix: write to the read-only pending bit array ignored")


def msix_init(dev: PCIDevice, nentries: int, send: SendMSI, *, table_bar_nr: int, table_offset: int,
              pba_bar_nr: int, pba_offset: int, cap_pos: int = 0, msi_nonbroken: bool) -> MSIXState:
    """Add an MSI-X capability with ``nentries`` vectors; the device maps
    ``table_region`` at ``table_offset`` of BAR ``table_bar_nr`` and
    ``pba_region`` at ``pba_offset`` of BAR ``pba_bar_nr``.  Raises
    :class:`MSIError` when the machine cannot deliver MSIs or the layout is bad."""
    if not msi_nonbroken:
        raise MSIError("MSI-X is not supported by the interrupt controller")
    if not 1 <= nentries <= PCI_MSIX_MAX_ENTRIES:
        raise MSIError(f"MSI-X: {nentries} vectors (must be 1-{PCI_MSIX_MAX_ENTRIES})")
    if table_offset & 7 or pba_offset & 7 or not 0 <= table_bar_nr <= 5 or not 0 <= pba_bar_nr <= 5:
        raise MSIError("MSI-X: table and PBA need 8-byte aligned offsets in BARs 0-5")
    table_size = nentries * PCI_MSIX_ENTRY_SIZE
    pba_size = ((nentries + 63) // 64) * 8
    if table_bar_nr == pba_bar_nr and table_offset < pba_offset + pba_size and pba_offset < table_offset + table_size:
        raise MSIError("MSI-X: table and PBA overlap")
    offset = pci_add_capability(dev, PCI_CAP_ID_MSIX, cap_pos, PCI_MSIX_CAP_SIZE)
    dev.set_word(offset + PCI_MSIX_FLAGS, nentries - 1)
    dev.set_long(offset + PCI_MSIX_TABLE, table_offset | table_bar_nr)
    dev.set_long(offset + PCI_MSIX_PBA, pba_offset | pba_bar_nr)
    dev.wmask[offset + PCI_MSIX_FLAGS + 1] = (PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL) >> 8
    return MSIXState(dev, offset, nentries, send)


# --- migration (QEMU's msix_save / msix_load, VMSTATE_MSIX) ----------------------------------


def msix_post_load(state: MSIXState, version_id: int) -> None:
    """The table and PBA as the guest left them; the capability's flags came
    with config space (VMSTATE_PCI_DEVICE first, where the table size, a
    read-only field, has been compared).  Refused: a table or PBA of another
    size, reserved vector-control bits set, pending bits beyond the table, and
    a vector pending while MSI-X is enabled and it is unmasked (this model
    sends those at once, so the source cannot have had one)."""
    table_size = state.nentries * PCI_MSIX_ENTRY_SIZE
    pba_size = ((state.nentries + 63) // 64) * 8
    if len(state.table) != table_size or len(state.pba) != pba_size:
        raise VMStateError(f"MSI-X table of {len(state.table)} bytes and PBA of {len(state.pba)}, "
                           f"the function has {table_size} and {pba_size}")
    for vector in range(state.nentries):
        ctrl = state._entry_long(vector, PCI_MSIX_ENTRY_VECTOR_CTRL)
        if ctrl & ~PCI_MSIX_ENTRY_CTRL_MASKBIT:
            raise VMStateError(f"MSI-X vector {vector}: reserved vector control bits {ctrl:#x}")
    if int.from_bytes(state.pba, "little") >> state.nentries:
        raise VMStateError(f"MSI-X pending bits beyond the table's {state.nentries} vectors")
    if state.enabled:
        for vector in range(state.nentries):
            if state.is_pending(vector) and not state.is_masked(vector):
                raise VMStateError(f"MSI-X vector {vector} pending while unmasked")


# A device with MSI-X (msix: MSIXState | None) lists VMSTATE_MSIX_FIELD after
# VMSTATE_PCI_DEVICE_FIELD.  The table and PBA are loaded in place; their
# length must be the function's.
VMSTATE_MSIX = VMStateDescription(
    "msix", version_id=1,
    fields=[
        VMStateField("table", VarBuffer(PCI_MSIX_MAX_ENTRIES * PCI_MSIX_ENTRY_SIZE)),
        VMStateField("pba", VarBuffer((PCI_MSIX_MAX_ENTRIES + 63) // 64 * 8)),
    ],
    post_load=msix_post_load)
VMSTATE_MSIX_FIELD = VMStateField("msix", DeviceOptional(VMSTATE_MSIX))
