"""The ICH9 AHCI (with an ide-hd) and an e1000e saved on one q35 board and
loaded into a fresh second board (no CPU runs): config space, BARs, MSI and
MSI-X come back, the registers read the same through MMIO, the disk command
the guest left in flight completes on the source before the save (the block
layer's inactivate_all), and on the destination a new command completes by
DMA into its RAM and raises the AHCI's MSI."""

from __future__ import annotations

from pathlib import Path

from tests.unit.vmstate_pci_helpers import BOARD_ARGS, run_two_boards


def board(image: Path) -> list[str]:
    return [*BOARD_ARGS, "-drive", f"file={image},format=raw,if=none,id=d0", "-device", "ide-hd,drive=d0,bus=ide.0",
            "-device", "e1000e,addr=4.0"]


HELPERS = """
AHCI, NIC = (0x1F << 3) | 2, 4 << 3
ABAR, NBAR, XBAR = 0xFE200000, 0xFE000000, 0xFE100000
CLB, FB, CT, DATA = 0x10000, 0x11000, 0x12000, 0x40000

def w(vm, addr, value, size=4):
    on(vm)
    mem(vm).dispatch_write(addr, value, size)

def r(vm, addr, size=4):
    on(vm)
    return mem(vm).dispatch_read(addr, size)

def irr_has(vm, vector):
    return bool(vm.machine.cpus[0].apic.irr >> vector & 1)

def issue(vm, slot, command, lba, count, nbytes, buf, write=False):
    import struct
    table = CT + slot * 0x100
    fis = bytearray(20)
    fis[0], fis[1], fis[2] = 0x27, 0x80, command
    fis[4:7] = lba.to_bytes(3, "little")
    fis[7] = 0x40
    fis[12:14] = count.to_bytes(2, "little")
    on(vm)
    mem(vm).write(CLB + slot * 32, struct.pack("<IIII16x", 5 | (int(write) << 6) | (1 << 16), 0, table, 0))
    mem(vm).write(table, bytes(fis).ljust(0x80, b"\\0") + struct.pack("<IIII", buf, 0, 0, nbytes - 1))
    w(vm, ABAR + 0x100 + 0x38, 1 << slot)

def drain(vm):
    on(vm)
    vm.machine.opened_block_devices().drives[0].blk.drain_and_complete()

def copy_ram(a, b):
    # RAM comes over in its own sections: here the low 3 MiB the tests use, around the legacy hole.
    for start, end in ((0, 0xA0000), (0x100000, 0x300000)):
        on(a)
        data = mem(a).read(start, end - start)
        on(b)
        mem(b).write(start, data)

def start_ahci(vm):
    # ABAR, memory + bus master, MSI to vector 0x51, port 0 started.
    vm.machine.cpus[0].apic.write(0xF0, 0x1FF, 4)
    cfg_write(vm, AHCI, 0x24, ABAR, 4)
    cfg_write(vm, AHCI, 0x04, 0x0006, 2)
    cfg_write(vm, AHCI, 0x80 + 4, 0xFEE00000, 4)
    cfg_write(vm, AHCI, 0x80 + 12, 0x0051, 2)
    cfg_write(vm, AHCI, 0x80 + 2, cfg_read(vm, AHCI, 0x80 + 2, 2) | 1, 2)
    w(vm, ABAR + 0x04, 0x80000002)
    for reg, value in ((0x00, CLB), (0x08, FB), (0x30, 0xFFFFFFFF), (0x10, 0xFFFFFFFF), (0x14, 0xFDC000FF),
                       (0x18, 0x16), (0x18, 0x17)):
        w(vm, ABAR + 0x100 + reg, value)
"""

BODY = HELPERS + """
dst.machine.cpus[0].apic.write(0xF0, 0x1FF, 4)
start_ahci(src)
# A 2 MiB read in flight when the VM stops: it finishes before the state is saved.
issue(src, 3, 0x25, 0, 4096, 2 << 20, 0x100000)
result["ci_in_flight"] = r(src, ABAR + 0x100 + 0x38)
on(src)
src.machine.opened_block_devices().inactivate_all()
result["ci_saved"] = r(src, ABAR + 0x100 + 0x38)
result["src_msi"] = irr_has(src, 0x51)
# The e1000e: registers, MSI-X enabled with one table entry written.
cfg_write(src, NIC, 0x10, NBAR, 4)
cfg_write(src, NIC, 0x1C, XBAR, 4)
cfg_write(src, NIC, 0x04, 0x0006, 2)
for off, value in ((0x2800, 0x200000), (0x2808, 0x1000), (0x2818, 100), (0x0100, 0x02), (0x00C4, 500),
                   (0x3800, 0x300000), (0x3808, 0x800), (0x00E4, 0x1234)):
    w(src, NBAR + off, value)
w(src, XBAR + 0, 0xFEE00000)
w(src, XBAR + 8, 0x61)
w(src, XBAR + 12, 0)
cfg_write(src, NIC, 0xE0 + 2, cfg_read(src, NIC, 0xE0 + 2, 2) | 0x8000, 2)

NAMES = ["ich9-ahci", "ide-hd", "e1000e"]
sections = save(NAMES)
load(NAMES, sections)
copy_ram(src, dst)
result["maps_equal"] = maps(dst) == maps(src)
result["config_equal"] = [config_dump(src, d, 256) == config_dump(dst, d, 256) for d in (AHCI, NIC)]
result["ahci_regs"] = [[r(vm, ABAR + a) for a in range(0, 0x180, 4)] for vm in (src, dst)]
result["nic_regs"] = [[r(vm, NBAR + a) for a in (0x0000, 0x0008, 0x00C4, 0x0100, 0x2800, 0x2808, 0x2810, 0x2818,
                                                 0x3800, 0x3808, 0x00E4)] for vm in (src, dst)]
result["msix_table"] = [[r(vm, XBAR + a) for a in range(0, 16, 4)] for vm in (src, dst)]
# Run on: a read issued on the destination reaches its RAM and raises the MSI there.
result["dst_msi_on_load"] = irr_has(dst, 0x51)     # loading sends no MSI again
w(dst, ABAR + 0x100 + 0x10, 0xFFFFFFFF)
issue(dst, 4, 0x25, 9, 1, 512, DATA)
drain(dst)
on(dst)
result["dst_read"] = mem(dst).read(DATA, 8).decode()
result["dst_ci_msi"] = [r(dst, ABAR + 0x100 + 0x38), irr_has(dst, 0x51)]
"""


def test_ahci_disk_and_e1000e_move_to_a_fresh_board_and_run_on(tmp_path: Path) -> None:
    sectors = b"".join(f"sector {n}".encode().ljust(512, b".") for n in range(8192))
    src, dst = tmp_path / "src.raw", tmp_path / "dst.raw"
    src.write_bytes(sectors)
    dst.write_bytes(sectors)  # a copy: both boards live in one process, each with its own lock
    result = run_two_boards(BODY, board(src), board(dst))
    assert result["ci_in_flight"] == 1 << 3 and result["ci_saved"] == 0 and result["src_msi"]
    assert result["maps_equal"] and result["config_equal"] == [True, True]
    assert result["ahci_regs"][0] == result["ahci_regs"][1]
    assert result["nic_regs"][0] == result["nic_regs"][1] and result["nic_regs"][1][2] == 500
    assert result["msix_table"][0] == result["msix_table"][1] == [0xFEE00000, 0, 0x61, 0]
    assert not result["dst_msi_on_load"] and result["dst_read"] == "sector 9"
    assert result["dst_ci_msi"] == [0, True]


HANDOVER = HELPERS + """
start_ahci(src)
PATTERN = bytes(range(256)) * 16
on(src)
mem(src).write(0x200000, PATTERN)
issue(src, 2, 0x35, 100, 8, len(PATTERN), 0x200000, write=True)  # WRITE DMA EXT, in flight
result["ci_in_flight"] = r(src, ABAR + 0x100 + 0x38)
on(src)
src.machine.opened_block_devices().inactivate_all()
result["ci_saved"] = r(src, ABAR + 0x100 + 0x38)
NAMES = ["ich9-ahci", "ide-hd"]
sections = save(NAMES)
# The destination opens the same image now that the source has let it go (the source still has it open).
dst = vl.qemu_init(DISK_ARGS)
dst.machine.cpus[0].apic.write(0xF0, 0x1FF, 4)
load(NAMES, sections)
copy_ram(src, dst)
dst.machine.opened_block_devices().activate_all()
issue(dst, 5, 0x25, 100, 8, len(PATTERN), DATA)                   # the destination reads it back
drain(dst)
on(dst)
result["dst_read_ok"] = mem(dst).read(DATA, len(PATTERN)) == PATTERN
result["dst_ci_msi"] = [r(dst, ABAR + 0x100 + 0x38), irr_has(dst, 0x51)]
issue(dst, 6, 0x35, 200, 8, len(PATTERN), 0x200000, write=True)   # and writes on
drain(dst)
result["dst_ci_after_write"] = r(dst, ABAR + 0x100 + 0x38)
result["dst_tfd_after_write"] = r(dst, ABAR + 0x100 + 0x20)
"""


def test_the_destination_reads_what_the_source_wrote_to_the_same_image(tmp_path: Path) -> None:
    """One image, as two hosts sharing storage have it: the source's write in
    flight completes and is flushed by inactivate_all, which lets the image
    go; the destination opens it, loads the state and reads the data back."""
    image = tmp_path / "shared.raw"
    image.write_bytes(bytes(8192 * 512))
    body = f"DISK_ARGS = {board(image)!r}\n" + HANDOVER
    result = run_two_boards(body, board(image), BOARD_ARGS)
    assert result["ci_in_flight"] == 1 << 2 and result["ci_saved"] == 0
    assert result["dst_read_ok"] and result["dst_ci_msi"] == [0, True]
    assert result["dst_ci_after_write"] == 0 and result["dst_tfd_after_write"] == 0x50
    data = image.read_bytes()
    pattern = bytes(range(256)) * 16
    assert data[100 * 512:108 * 512] == pattern and data[200 * 512:208 * 512] == pattern
