"""The e1000e on the q35 board (built in a fresh interpreter, no vCPU runs):
its configuration space, capabilities with and without local APICs, BAR
sizes, and its registers reached through BAR 0 and the I/O window."""

from __future__ import annotations

from tests.unit.test_board_wiring import BOARD_ARGS, run_on_board

NIC_ARGS = [*BOARD_ARGS, "-device", "e1000e,id=nic0,mac=52:54:00:ab:cd:ef"]

CONFIG = """
nic = vm.machine.child("peripheral").child("nic0")
slot = nic.devfn >> 3

def cfg_read(reg, size=4):
    io.dispatch_write(0xCF8, 0x80000000 | (slot << 11) | (reg & 0xFC), 4)
    return io.dispatch_read(0xCFC + (reg & 3), size)

def cfg_write(reg, value, size=4):
    io.dispatch_write(0xCF8, 0x80000000 | (slot << 11) | (reg & 0xFC), 4)
    io.dispatch_write(0xCFC + (reg & 3), value, size)

caps = []
ptr = cfg_read(0x34, 1)
while ptr:
    caps.append([ptr, cfg_read(ptr, 1)])
    ptr = cfg_read(ptr + 1, 1)
result["caps"] = caps
result["ids"] = cfg_read(0)
result["class"] = cfg_read(0x08) >> 8
"""


def test_config_space_and_capabilities_with_apics() -> None:
    result = run_on_board(CONFIG + """
bars = []
for n in range(6):
    reg = 0x10 + 4 * n
    cfg_write(reg, 0xFFFFFFFF)
    bars.append(cfg_read(reg))
result["bars"] = bars
""", NIC_ARGS)
    assert result["ids"] == 0x10D38086
    assert result["class"] == 0x020000
    # PCIe, power management, MSI, MSI-X at QEMU's offsets, newest first in the list.
    assert result["caps"] == [[0xE0, 0x11], [0xD0, 0x05], [0xC8, 0x01], [0xA0, 0x10]]
    # 128 KiB memory, 128 KiB flash, 32 bytes of I/O, 16 KiB for MSI-X.
    assert result["bars"] == [0xFFFE0000, 0xFFFE0000, 0xFFFFFFE1, 0xFFFFC000, 0, 0]


def test_without_local_apics_no_msi_is_offered() -> None:
    result = run_on_board(CONFIG, [*NIC_ARGS, "-cpu", "qemu64,-apic"])
    assert result["caps"] == [[0xC8, 0x01], [0xA0, 0x10]]


def test_registers_through_bar0_and_the_io_window() -> None:
    result = run_on_board(CONFIG + """
cfg_write(0x10, 0xFE000000)
cfg_write(0x18, 0xC000 | 1)
cfg_write(0x04, 0x7, 2)
words = []
for addr in range(3):
    mem.dispatch_write(0xFE000014, (addr << 2) | 1, 4)
    words.append(mem.dispatch_read(0xFE000014, 4) >> 16)
result["mac_words"] = words
result["ral0"] = mem.dispatch_read(0xFE005400, 4)
result["rah0"] = mem.dispatch_read(0xFE005404, 4)
io.dispatch_write(0xC000, 0x0008, 4)        # IOADDR = STATUS
result["status_via_io"] = io.dispatch_read(0xC004, 4)
result["status"] = mem.dispatch_read(0xFE000008, 4)
mem.dispatch_write(0xFE000000, 1 << 26, 4)  # CTRL.RST: the MAC comes back in RA0
result["ral0_after_reset"] = mem.dispatch_read(0xFE005400, 4)
""", NIC_ARGS)
    assert result["mac_words"] == [0x5452, 0xAB00, 0xEFCD]
    assert result["ral0"] == 0xAB005452 and result["rah0"] == 0x8000EFCD
    assert result["status_via_io"] == result["status"] and result["status"] & 2   # link up
    assert result["ral0_after_reset"] == 0xAB005452


def test_a_system_reset_turns_msi_and_msix_off() -> None:
    result = run_on_board(CONFIG + """
cfg_write(0xD2, 0x0001, 2)          # MSI enable
cfg_write(0xE2, 0x8000, 2)          # MSI-X enable
result["before"] = [cfg_read(0xD2, 2) & 1, cfg_read(0xE2, 2) >> 15]
vl.qemu_system_reset(vm.machine)
result["after"] = [cfg_read(0xD2, 2) & 1, cfg_read(0xE2, 2) >> 15]
""", NIC_ARGS)
    assert result["before"] == [1, 1]
    assert result["after"] == [0, 0]
