"""pci-testdev (QEMU's hw/misc/pci-testdev.c): the PCI function
kvm-unit-tests use to measure and check MMIO and port I/O exits.

1b36:0005 (Red Hat, "PCI Test Device"), class "other", no interrupt pin.
BAR0 is 4 KiB of MMIO, BAR1 256 bytes of port I/O.  Each BAR holds the same
register file, handled one byte at a time:

- a write to offset 0 selects test N of that BAR (0 "no-eventfd",
  1 "wildcard-eventfd", 2 "datamatch-eventfd"; others select nothing);
- reads return the selected test's header, byte by byte: test number,
  access width (1), two pad bytes, the offset to hit (32 bits), the data to
  match (0xFA, or 0xCE for the wildcard test), three pad bytes, the hit
  count (32 bits) and the test's name ("mmio-no-eventfd", ...), NUL ended;
- a write of the right data (any data for the wildcard test) at the test's
  offset counts one hit.

QEMU backs the eventfd tests with ioeventfds; here each test counts its hits
in the device, which is what the guest sees of either.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pemu.hw.pci.pci import (
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_BASE_ADDRESS_SPACE_MEMORY,
    TYPE_PCI_DEVICE,
    VMSTATE_PCI_DEVICE_FIELD,
    PCIDevice,
    PCIDeviceClass,
    pci_config_set_interrupt_pin,
    pci_register_bar,
)
from pemu.migration.vmstate import I8, U32, Array, Struct, VMStateDescription, VMStateField
from pemu.qom.object import ObjectClass, TypeInfo, object_check, object_class_check, type_register
from pemu.system.memory import MemoryRegion, MemoryRegionOps

TYPE_PCI_TESTDEV = "pci-testdev"
PCI_VENDOR_ID_REDHAT = 0x1B36
PCI_DEVICE_ID_REDHAT_TEST = 0x0005
PCI_CLASS_OTHERS = 0xFF00

IOTEST_DATAMATCH = 0xFA
IOTEST_NOMATCH = 0xCE
IOTEST_IOSIZE = 128
IOTEST_MEMSIZE = 2048
IOTEST_TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
IOTEST_TYPES = ("mmio", "portio")   # BAR0, BAR1
IOTEST_ACCESS_WIDTH = 1
_HEADER = struct.Struct("<BB2xIB3xI")   # test, width, offset, data, count; the name follows


@dataclass
class IOTest:
    """One test: the header the guest reads and what counts as a hit."""

    number: int
    offset: int
    data: int
    match_data: bool
    name: str
    count: int = 0

    def header(self) -> bytes:
        return _HEADER.pack(self.number, IOTEST_ACCESS_WIDTH, self.offset, self.data,
                            self.count) + self.name.encode() + b"\0"


def make_iotests() -> list[IOTest]:
    tests = []
    for number in range(len(IOTEST_TYPES) * len(IOTEST_TESTS)):
        kind = IOTEST_TYPES[number // len(IOTEST_TESTS)]
        test = IOTEST_TESTS[number % len(IOTEST_TESTS)]
        match = test != "wildcard-eventfd"
        base = IOTEST_MEMSIZE if kind == "mmio" else IOTEST_IOSIZE
        tests.append(IOTest(number, base + number * IOTEST_ACCESS_WIDTH,
                            IOTEST_DATAMATCH if match else IOTEST_NOMATCH, match, f"{kind}-{test}"))
    return tests


class PCITestdev:
    """The register file behind both BARs; ``kind`` 0 is the MMIO BAR, 1 the I/O one."""

    def __init__(self) -> None:
        self.tests = make_iotests()
        self.current: IOTest | None = None

    def reset(self) -> None:
        self.current = None

    def read(self, offset: int) -> int:
        test = self.current
        if test is None:
            return 0
        header = test.header()
        # QEMU answers 0 for the header's last byte too (its bound is "offset + size >= length").
        return header[offset] if 0 <= offset < len(header) - 1 else 0

    def write(self, kind: int, offset: int, value: int) -> None:
        if offset == 0:
            self.current = None
            if 0 <= value < len(IOTEST_TESTS):
                self.current = self.tests[kind * len(IOTEST_TESTS) + value]
            return
        test = self.current
        if test is None or offset != test.offset:
            return
        if test.match_data and value != test.data:
            return
        test.count = (test.count + 1) & 0xFFFFFFFF

    # The migrated view: which test is selected (-1: none) and each test's hits.
    @property
    def current_index(self) -> int:
        return -1 if self.current is None else self.current.number

    @current_index.setter
    def current_index(self, index: int) -> None:
        self.current = None if index < 0 else self.tests[index]

    @property
    def counts(self) -> list[int]:
        return [test.count for test in self.tests]

    @counts.setter
    def counts(self, counts: list[int]) -> None:
        for test, count in zip(self.tests, counts, strict=True):
            test.count = count

    def ops(self, kind: int) -> MemoryRegionOps:
        def read(offset: int, size: int) -> int:
            return self.read(offset)

        def write(offset: int, value: int, size: int) -> None:
            self.write(kind, offset, value & 0xFF)

        return MemoryRegionOps(read, write, 1, 4, True, 1, 1)


_NUM_IOTESTS = len(IOTEST_TYPES) * len(IOTEST_TESTS)

VMSTATE_PCI_TESTDEV_MODEL = VMStateDescription("pci-testdev-model", version_id=1, fields=[
    VMStateField("current_index", I8, check=range(-1, _NUM_IOTESTS)),
    VMStateField("counts", Array(U32, _NUM_IOTESTS)),
])


class PCITestdevState(PCIDevice):
    model: PCITestdev
    mmio: MemoryRegion
    portio: MemoryRegion


def _pci_testdev_realize(obj: Any) -> None:
    dev = object_check(obj, PCITestdevState)
    pci_config_set_interrupt_pin(dev, 0)
    dev.model = m = PCITestdev()
    dev.mmio = MemoryRegion.io("pci-testdev-mmio", IOTEST_MEMSIZE * 2, m.ops(0), owner=dev)
    dev.portio = MemoryRegion.io("pci-testdev-portio", IOTEST_IOSIZE * 2, m.ops(1), owner=dev)
    pci_register_bar(dev, 0, PCI_BASE_ADDRESS_SPACE_MEMORY, dev.mmio)
    pci_register_bar(dev, 1, PCI_BASE_ADDRESS_SPACE_IO, dev.portio)


def _pci_testdev_reset(obj: Any) -> None:
    object_check(obj, PCITestdevState).model.reset()


VMSTATE_PCI_TESTDEV = VMStateDescription("pci-testdev", version_id=1, fields=[
    VMSTATE_PCI_DEVICE_FIELD,
    VMStateField("model", Struct(VMSTATE_PCI_TESTDEV_MODEL)),
])


def _pci_testdev_class_init(klass: ObjectClass, data: Any) -> None:
    k = object_class_check(klass, PCIDeviceClass)
    k.vmsd = VMSTATE_PCI_TESTDEV
    k.vendor_id = PCI_VENDOR_ID_REDHAT
    k.device_id = PCI_DEVICE_ID_REDHAT_TEST
    k.revision = 0
    k.class_id = PCI_CLASS_OTHERS
    k.desc = "PCI Test Device"
    k.user_creatable = True
    k.categories = ("misc",)
    k.pci_realize = _pci_testdev_realize
    k.pci_reset = _pci_testdev_reset


type_register(TypeInfo(TYPE_PCI_TESTDEV, parent=TYPE_PCI_DEVICE, instance_type=PCITestdevState,
                       class_init=_pci_testdev_class_init, interfaces=("conventional-pci-device",)))
