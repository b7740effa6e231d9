"""The Intel 82574L gigabit NIC, "e1000e" (QEMU's hw/net/e1000e.c): the PCI
Express function around :class:`pemu.hw.net.e1000e_core.E1000ECore`.

BARs as QEMU lays them out: 0 the 128 KiB register window, 1 the 128 KiB
flash window (nothing behind it), 2 the 32-byte I/O window (IOADDR/IODATA,
indirect access to the registers), 3 the 16 KiB MSI-X window (table at 0,
PBA at 0x2000).  Capabilities: PCIe (v1) at 0xA0, power management at 0xC8,
MSI at 0xD0 and MSI-X (5 vectors) at 0xE0 -- MSI and MSI-X only when the
machine can deliver them (``msi_nonbroken``), so that without local APICs
the guest sees INTx only.

Migration (:data:`VMSTATE_E1000E`): the core's state (see
:mod:`pemu.hw.net.e1000e_core`) and the I/O window's address latch; the
link state follows the loaded STATUS register, as QEMU's post_load does.
What does not move with the NIC: frames the net layer holds for a busy peer,
and the back-end's own state.  With ``-netdev user`` that is libslirp's
connection table: TCP connections through it (a forwarded ssh session) are
reset and the guest's stack sees them fail or time out, new ones work at once
on the destination; the ``hostfwd`` listeners are those of the destination's
own command line.  On the destination every NIC announces itself with
gratuitous RARP frames (:func:`pemu.net.announce.qemu_announce_self`, called
once the state is loaded), so that switches on a tap, socket or stream
back-end learn where the MAC address went.

Frames go out through the NIC's net client from whichever thread wrote the
register (the back-ends take them on any thread and feed e.g. libslirp from
the main loop); frames come in on the main loop.  Both hold the big lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pemu.hw.core.qdev import device_class_set_props
from pemu.hw.net.e1000e_core import MMIO_SIZE, VMSTATE_E1000E_CORE, E1000ECore
from pemu.hw.net.e1000x_common import MSIX_VECTORS, U32
from pemu.hw.pci.msi import (
    PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_ENABLE,
    PCI_MSI_FLAGS_QSIZE,
    VMSTATE_MSI_FIELD,
    MSICapability,
    MSIError,
    msi_init,
)
from pemu.hw.pci.msix import VMSTATE_MSIX_FIELD, MSIXState, msix_init
from pemu.hw.pci.pci import (
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_BASE_ADDRESS_SPACE_MEMORY,
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIDevice,
    PCIDeviceClass,
    pci_config_set_interrupt_pin,
    pci_dma_read,
    pci_dma_write,
    pci_register_bar,
    pci_set_irq,
)
from pemu.hw.pci.pci_pm import pci_pm_init
from pemu.hw.pci.pcie import pcie_endpoint_cap_v1_init
from pemu.migration.vmstate import U32 as VM_U32
from pemu.migration.vmstate import Struct, VMStateDescription, VMStateField
from pemu.net.net import NetClientState, qemu_flush_queued_packets, qemu_send_packet_async
from pemu.net.nic import NICState, nic_properties, qemu_new_nic
from pemu.qom.object import Object, ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps, MemTxResult
from pemu.util.log import guest_error
from pemu.util.timer import QEMU_CLOCK_REALTIME, QEMUTimer, qemu_clock_get_ns, virtual_clock_ns, virtual_timer

TYPE_E1000E = "e1000e"
E1000_DEV_ID_82574L = 0x10D3
PCI_VENDOR_ID_INTEL = 0x8086
PCI_CLASS_NETWORK_ETHERNET = 0x0200

FLASH_SIZE = 0x20000
IO_SIZE = 0x20
MSIX_BAR_SIZE = 0x4000
MSIX_TABLE_OFFSET = 0
MSIX_PBA_OFFSET = 0x2000
BAR_MMIO, BAR_FLASH, BAR_IO, BAR_MSIX = 0, 1, 2, 3
PCIE_CAP_OFFSET = 0xA0
PM_CAP_OFFSET = 0xC8
MSI_CAP_OFFSET = 0xD0
MSIX_CAP_OFFSET = 0xE0
# PMC: D1 and D2 not supported; PME from D0, D3hot and D3cold; 3.3 V aux current.
PM_CAPABILITIES = 0xC800 | 0x0020
IOADDR = 0x0
IODATA = 0x4
DMA_LIMIT = 1 << 64


class E1000EState(PCIDevice):
    """The e1000e PCI function."""

    nic_mac: str | None
    nic_netdev: str | None
    nic_peer: NetClientState | None  # set by the board for -nic / -net (QEMU's qdev_set_nic_properties)
    nic: NICState
    core: E1000ECore
    msi: MSICapability | None
    msix: MSIXState | None
    ioaddr: int
    mmio: MemoryRegion
    flash: MemoryRegion
    io: MemoryRegion
    msix_bar: MemoryRegion
    host: _Host

    def config_write(self, addr: int, value: int, size: int) -> None:
        was_master = self.get_word(PCI_COMMAND) & PCI_COMMAND_MASTER
        super().config_write(addr, value, size)
        if self.msi is not None:
            self.msi.write_config(addr, size)
        if self.msix is not None:
            self.msix.write_config(addr, size)
        if not was_master and self.get_word(PCI_COMMAND) & PCI_COMMAND_MASTER:
            self.host.rx_ready()


class _Host:
    """What the core does to the world, through the PCI function."""

    def __init__(self, dev: E1000EState) -> None:
        self.dev = dev
        self.rx_flush_scheduled = False
        self.later: dict[Callable[[], None], QEMUTimer] = {}

    def dma_read(self, addr: int, length: int) -> bytes | None:
        if addr + length > DMA_LIMIT:
            return None
        data, result = pci_dma_read(self.dev, addr, length)
        return data if result == MemTxResult.OK else None

    def dma_write(self, addr: int, data: bytes | bytearray) -> bool:
        if addr + len(data) > DMA_LIMIT:
            return False
        return pci_dma_write(self.dev, addr, data) == MemTxResult.OK

    def set_irq(self, level: int) -> None:
        pci_set_irq(self.dev, level)

    def msix_enabled(self) -> bool:
        return self.dev.msix is not None and self.dev.msix.enabled

    def msi_enabled(self) -> bool:
        return self.dev.msi is not None and self.dev.msi.enabled

    def msix_notify(self, vector: int) -> None:
        if self.dev.msix is not None:
            self.dev.msix.notify(vector)

    def msix_clear(self, vector: int) -> None:
        if self.dev.msix is not None:
            self.dev.msix.clear_pending(vector)

    def msi_notify(self) -> None:
        if self.dev.msi is not None:
            self.dev.msi.notify(0)

    def send(self, frame: bytes) -> bool:
        return qemu_send_packet_async(self.dev.nic, frame, self._sent) != 0

    def _sent(self, _sender: NetClientState, _ret: int) -> None:
        self.dev.core.tx_resume()

    def schedule(self, cb: Callable[[], None]) -> None:
        # A timer due now, not a bottom half: the main loop runs bottom halves
        # until none is left, so work that schedules its own continuation
        # there would never let the loop poll or the vCPUs take the lock.
        timer = self.later.get(cb)
        if timer is None:
            timer = self.later[cb] = QEMUTimer(QEMU_CLOCK_REALTIME, cb)
        timer.mod_ns(qemu_clock_get_ns(QEMU_CLOCK_REALTIME))

    def rx_ready(self) -> None:
        """Frames held for the NIC are delivered from the main loop, not from
        inside the guest's register write: receiving stays on the main loop's
        thread, and one write costs no more than scheduling it.  (One flush
        stops when the ring is full, so a bottom half will do.)"""
        if not self.rx_flush_scheduled:
            self.rx_flush_scheduled = True
            from pemu.util.main_loop import main_loop

            main_loop().bh_schedule(self._flush)

    def _flush(self) -> None:
        self.rx_flush_scheduled = False
        qemu_flush_queued_packets(self.dev.nic)


def _msi_send(dev: E1000EState) -> Callable[[int, int], None]:
    def send(address: int, data: int) -> None:
        if pci_dma_write(dev, address, (data & U32).to_bytes(4, "little")) != MemTxResult.OK:
            guest_error(f"e1000e: MSI write to {address:#x} went nowhere")
    return send


def _io_read(dev: E1000EState, offset: int, size: int) -> int:
    if offset == IOADDR:
        return dev.ioaddr
    if offset == IODATA:
        if dev.ioaddr & 3 or dev.ioaddr >= MMIO_SIZE:
            guest_error(f"e1000e: IODATA read through IOADDR {dev.ioaddr:#x}, not a register")
            return 0
        return dev.core.mmio_read(dev.ioaddr, 4)
    guest_error(f"e1000e: read of reserved I/O offset {offset:#x}")
    return 0


def _io_write(dev: E1000EState, offset: int, value: int, size: int) -> None:
    if offset == IOADDR:
        dev.ioaddr = value & U32
    elif offset == IODATA:
        if dev.ioaddr & 3 or dev.ioaddr >= MMIO_SIZE:
            guest_error(f"e1000e: IODATA write through IOADDR {dev.ioaddr:#x}, not a register")
            return
        dev.core.mmio_write(dev.ioaddr, value, 4)
    else:
        guest_error(f"e1000e: write to reserved I/O offset {offset:#x}")


def _flash_read(offset: int, size: int) -> int:
    return 0


def _flash_write(offset: int, value: int, size: int) -> None:
    guest_error(f"e1000e: write to the flash window at {offset:#x} ignored (no flash)")


def _can_receive(dev: E1000EState) -> bool:
    return bool(dev.get_word(PCI_COMMAND) & PCI_COMMAND_MASTER) and dev.core.can_receive()


def _e1000e_init(obj: Object) -> None:
    dev = object_check(obj, E1000EState)
    dev.nic_peer = None
    dev.msi = None
    dev.msix = None
    dev.ioaddr = 0


def _e1000e_realize(obj: Any) -> None:
    from pemu.util.vm_context import current_vm

    dev: E1000EState = obj
    dev.nic = qemu_new_nic(dev, lambda frame: dev.core.receive(frame), lambda: _can_receive(dev),
                           lambda: dev.core.set_link(not dev.nic.link_down), peer=dev.nic_peer)
    dev.host = _Host(dev)
    dev.core = E1000ECore(dev.host, dev.nic.macaddr, virtual_clock_ns, virtual_timer, E1000_DEV_ID_82574L)
    dev.core.link_up = dev.core.phy.link_up = not dev.nic.link_down
    dev.core.phy.update_link()
    dev.core.reset()

    pci_config_set_interrupt_pin(dev, 1)  # INTA
    dev.mmio = MemoryRegion.io("e1000e-mmio", MMIO_SIZE,
                               MemoryRegionOps(dev.core.mmio_read, dev.core.mmio_write, 4, 4, False, 4, 4), owner=dev)
    dev.flash = MemoryRegion.io("e1000e-flash", FLASH_SIZE,
                                MemoryRegionOps(_flash_read, _flash_write, 1, 4, False, 1, 4), owner=dev)
    dev.io = MemoryRegion.io("e1000e-io", IO_SIZE, MemoryRegionOps(
        lambda o, s: _io_read(dev, o, s), lambda o, v, s: _io_write(dev, o, v, s), 4, 4, False, 4, 4), owner=dev)
    dev.msix_bar = MemoryRegion.container("e1000e-msix", MSIX_BAR_SIZE, owner=dev)
    pci_register_bar(dev, BAR_MMIO, PCI_BASE_ADDRESS_SPACE_MEMORY, dev.mmio)
    pci_register_bar(dev, BAR_FLASH, PCI_BASE_ADDRESS_SPACE_MEMORY, dev.flash)
    pci_register_bar(dev, BAR_IO, PCI_BASE_ADDRESS_SPACE_IO, dev.io)
    pci_register_bar(dev, BAR_MSIX, PCI_BASE_ADDRESS_SPACE_MEMORY, dev.msix_bar)

    pcie_endpoint_cap_v1_init(dev, PCIE_CAP_OFFSET)
    pci_pm_init(dev, PM_CAP_OFFSET, PM_CAPABILITIES)
    nonbroken = current_vm().msi_nonbroken
    try:
        dev.msi = msi_init(dev, MSI_CAP_OFFSET, 1, True, False, _msi_send(dev), msi_nonbroken=nonbroken)
    except MSIError:
        dev.msi = None
    try:
        dev.msix = msix_init(dev, MSIX_VECTORS, _msi_send(dev), table_bar_nr=BAR_MSIX,
                             table_offset=MSIX_TABLE_OFFSET, pba_bar_nr=BAR_MSIX, pba_offset=MSIX_PBA_OFFSET,
                             cap_pos=MSIX_CAP_OFFSET, msi_nonbroken=nonbroken)
    except MSIError:
        dev.msix = None
    if dev.msix is not None:
        dev.msix_bar.add_subregion(MSIX_TABLE_OFFSET, dev.msix.table_region)
        dev.msix_bar.add_subregion(MSIX_PBA_OFFSET, dev.msix.pba_region)


def _e1000e_reset(obj: Any) -> None:
    dev: E1000EState = obj
    dev.core.reset()
    dev.ioaddr = 0
    if dev.msix is not None:
        dev.msix.reset()
    if dev.msi is not None:
        # MSI off again, one vector, nothing pending (QEMU's msi_reset).
        flags = dev.get_word(dev.msi.offset + PCI_MSI_FLAGS)
        dev.set_word(dev.msi.offset + PCI_MSI_FLAGS, flags & ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE))


def _e1000e_post_load(dev: E1000EState, version_id: int) -> None:
    dev.nic.link_down = not dev.core.link_up


# QEMU's e1000e_vmstate: the PCI Express function (config space, BARs, INTx), its MSI
# and MSI-X capabilities (table and PBA), then the NIC.
VMSTATE_E1000E = VMStateDescription(
    "e1000e", version_id=1,
    fields=[
        VMSTATE_PCI_DEVICE_FIELD,
        VMSTATE_MSI_FIELD,
        VMSTATE_MSIX_FIELD,
        VMStateField("ioaddr", VM_U32),
        VMStateField("core", Struct(VMSTATE_E1000E_CORE)),
    ],
    post_load=_e1000e_post_load)


def _e1000e_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCIDeviceClass)
    k.vendor_id = PCI_VENDOR_ID_INTEL
    k.device_id = E1000_DEV_ID_82574L
    k.revision = 0
    k.class_id = PCI_CLASS_NETWORK_ETHERNET
    k.subsystem_vendor_id = PCI_VENDOR_ID_INTEL
    k.subsystem_id = 0
    k.is_express = True
    k.desc = "Intel 82574L GbE Controller"
    k.categories = ("network",)
    k.pci_realize = _e1000e_realize
    k.pci_reset = _e1000e_reset
    k.vmsd = VMSTATE_E1000E
    device_class_set_props(k, nic_properties())


def register_types() -> None:
    type_register(TypeInfo(TYPE_E1000E, parent=TYPE_PCI_DEVICE, instance_type=E1000EState,
                           instance_init=_e1000e_init, class_init=_e1000e_class_init,
                           interfaces=("pci-express-device",)))


register_types()
