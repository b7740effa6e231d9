"""edu and pci-testdev saved on one q35 board and loaded into a fresh
second board (no CPU runs): BARs, bus mastering and MSI come back through
config space, the registers read back the same through MMIO and port I/O,
and the devices run on (a DMA in flight at save time completes on the
destination at the source's deadline and raises its MSI there; a factorial
raises another; the test counters keep counting).  Bad streams are refused."""

from __future__ import annotations

from tests.unit.vmstate_pci_helpers import BOARD_ARGS, run_two_boards

DEVICES = [*BOARD_ARGS, "-device", "edu,addr=5.0", "-device", "pci-testdev,addr=6.0"]

SETUP = """
EDU, TESTDEV = 5 << 3, 6 << 3
BAR, TBAR, TIO = 0xFE000000, 0xFE100000, 0xC100
PATTERN = bytes(range(0x30, 0x40))

def edu_read(vm, off, size=4):
    on(vm)
    return mem(vm).dispatch_read(BAR + off, size)

def edu_write(vm, off, value, size=4):
    on(vm)
    mem(vm).dispatch_write(BAR + off, value, size)

def irr_has(vm, vector):
    return bool(vm.machine.cpus[0].apic.irr >> vector & 1)

for vm in (src, dst):    # the local APICs software-enabled (their state is the CPU's section, not tested here)
    vm.machine.cpus[0].apic.write(0xF0, 0x1FF, 4)

on(src)
cfg_write(src, EDU, 0x10, BAR, 4)
cfg_write(src, EDU, 0x04, 0x0006, 2)                            # MEMORY | MASTER
msi = cfg_read(src, EDU, 0x34, 1)
cfg_write(src, EDU, msi + 4, 0xFEE00000, 4)
cfg_write(src, EDU, msi + 12, 0x0041, 2)
cfg_write(src, EDU, msi + 2, cfg_read(src, EDU, msi + 2, 2) | 1, 2)
edu_write(src, 0x04, 0x12345678)
edu_write(src, 0x08, 5)
on(src)
mem(src).write(0x10000, PATTERN)
for off, value in ((0x80, 0x10000), (0x88, 0x40000), (0x90, len(PATTERN)), (0x98, 1)):
    edu_write(src, off, value, 8)                                # RAM -> buffer, no interrupt
advance(src, 100_000_000)
for off, value in ((0x80, 0x40000), (0x88, 0x20000), (0x90, len(PATTERN)), (0x98, 1 | 2 | 4)):
    edu_write(src, off, value, 8)                                # buffer -> RAM with the DMA interrupt
advance(src, 40_000_000)                                         # saved 60 ms before it runs
cfg_write(src, TESTDEV, 0x10, TBAR, 4)
cfg_write(src, TESTDEV, 0x14, TIO, 4)
cfg_write(src, TESTDEV, 0x04, 0x0003, 2)
on(src)
mem(src).dispatch_write(TBAR, 2, 1)                              # mmio-datamatch-eventfd
for _ in range(3):
    mem(src).dispatch_write(TBAR + 2048 + 2, 0xFA, 1)
io(src).dispatch_write(TIO, 1, 1)                                # portio-wildcard-eventfd
io(src).dispatch_write(TIO + 128 + 4, 0x33, 1)
NAMES = ["edu", "pci-testdev"]
"""


def test_edu_and_pci_testdev_round_trip_and_run_on() -> None:
    result = run_two_boards(SETUP + """
sections = save(NAMES)
load(NAMES, sections)
result["maps_equal"] = maps(dst) == maps(src)
result["config_equal"] = [config_dump(src, d) == config_dump(dst, d) for d in (EDU, TESTDEV)]
regs = [(o, 4) for o in (0x00, 0x04, 0x08, 0x20, 0x24)] + [(o, 8) for o in (0x80, 0x88, 0x90, 0x98)]
result["edu_regs"] = [[edu_read(vm, o, s) for o, s in regs] for vm in (src, dst)]
result["testdev"] = [[on(vm) and mem(vm).dispatch_read(TBAR + i, 1) for i in range(16)]
                     + [io(vm).dispatch_read(TIO + i, 1) for i in range(16)] for vm in (src, dst)]
# Run on.  Nothing before the source's deadline, then the transfer into the destination's RAM.
result["irr_before"] = irr_has(dst, 0x41)
advance(dst, 59_000_000)
on(dst)
result["ram_early"] = mem(dst).read(0x20000, 16).hex()
advance(dst, 1_000_000)
on(dst)
result["ram_after"] = mem(dst).read(0x20000, 16).hex()
result["after_dma"] = [edu_read(dst, 0x98, 8), edu_read(dst, 0x24), irr_has(dst, 0x41)]
edu_write(dst, 0x64, 0x100)                                      # ack
cfg_write(dst, EDU, msi + 12, 0x0042, 2)
edu_write(dst, 0x20, 0x80)
edu_write(dst, 0x08, 6)
result["factorial"] = [edu_read(dst, 0x08), edu_read(dst, 0x24), irr_has(dst, 0x42)]
on(dst)
io(dst).dispatch_write(TIO + 128 + 4, 0x44, 1)                  # the selected (wildcard) test counts on
mem(dst).dispatch_write(TBAR, 2, 1)                              # back to mmio-datamatch: its 3 hits kept
mem(dst).dispatch_write(TBAR + 2048 + 2, 0xFA, 1)
result["hits"] = [mem(dst).dispatch_read(TBAR + 12, 4)]
mem(dst).dispatch_write(TBAR, 1, 1)
mem(dst).dispatch_write(TIO, 1, 1)
io(dst).dispatch_write(TIO, 1, 1)
result["hits"].append(io(dst).dispatch_read(TIO + 12, 4))
""", DEVICES)
    assert result["maps_equal"] and result["config_equal"] == [True, True]
    assert result["edu_regs"][0] == result["edu_regs"][1]
    assert result["edu_regs"][1][:3] == [0x010000ED, 0xEDCBA987, 120]
    assert result["edu_regs"][1][8] == 7                               # DMA pending on the destination
    assert result["testdev"][0] == result["testdev"][1]
    assert result["testdev"][1][0] == 4 and result["testdev"][1][12] == 1      # portio-wildcard, one hit
    assert not result["irr_before"]
    assert result["ram_early"] == "00" * 16
    assert result["ram_after"] == bytes(range(0x30, 0x40)).hex()
    assert result["after_dma"] == [6, 0x100, True]
    assert result["factorial"] == [720, 0x1, True]
    assert result["hits"] == [4, 2]


def test_bad_edu_and_testdev_streams_are_refused() -> None:
    result = run_two_boards(SETUP + """
_, edu, testdev = save(NAMES)
model = 4 + 256 + 1 + 2 * 7 * 8 + 1                              # PCI part, MSI presence
deadline = model + 4 * 4 + 8 * 5 + 4096
result["computing"] = refused("edu", corrupt(edu, model + 8, (0x81).to_bytes(4, "big")))
result["no_deadline"] = refused("edu", corrupt(edu, deadline, (-1).to_bytes(8, "big", signed=True)))
result["bad_deadline"] = refused("edu", corrupt(edu, deadline, (-5).to_bytes(8, "big", signed=True)))
result["test_index"] = refused("pci-testdev", corrupt(testdev, model - 1, b"\\x06"))
result["other_device"] = refused("pci-testdev", edu)
result["msi_missing"] = refused("edu", corrupt(edu, model - 1, b"\\x00"))
""", DEVICES)
    assert "status: invalid value 129" in result["computing"]
    assert "DMA command 0x7 with the transfer deadline -1" in result["no_deadline"]
    assert "dma_deadline: invalid value -5" in result["bad_deadline"]
    assert "current_index: invalid value 6" in result["test_index"]
    assert "Bad config data for pci-testdev: offset 0x0 reads 0x34" in result["other_device"]
    assert "edu.msi: msi is absent in the stream, present here" in result["msi_missing"]


def test_edu_with_another_dma_mask_is_refused() -> None:
    result = run_two_boards("""
_, edu = save(["edu"])
result["mask"] = refused("edu", edu)
""", [*BOARD_ARGS, "-device", "edu"], [*BOARD_ARGS, "-device", "edu,dma_mask=0xffffffff"])
    assert "DMA mask 0xfffffff in the stream, 0xffffffff here" in result["mask"]
