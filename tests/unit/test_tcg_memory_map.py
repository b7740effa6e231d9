"""The engine's view of guest-physical memory (accel/tcg/memory_map.py)."""

from __future__ import annotations

from tcg_harness import Machine, needs_binutils

from pemu.accel.tcg.memory_map import LOW_MMIO_END, MapKind, Mapping, plan_mappings
from pemu.system.memory import MemoryRegion, render_flatview

KiB, MiB = 1 << 10, 1 << 20


def test_plan_cuts_ram_and_rom_out_of_mmio() -> None:
    root = MemoryRegion.container("system", 1 << 40)
    ram = MemoryRegion.ram("ram", 2 * MiB)
    rom = MemoryRegion.rom("rom", 64 * KiB)
    root.add_subregion(0, ram)
    root.add_subregion_overlap(0xF0000, rom, 1)
    plan = plan_mappings(render_flatview(root).ranges)
    assert [(m.start, m.size, m.kind) for m in plan] == [
        (0, 0xF0000, MapKind.RAM),
        (0xF0000, 0x10000, MapKind.ROM),
        (MiB, MiB, MapKind.RAM),
        (2 * MiB, LOW_MMIO_END - 2 * MiB, MapKind.MMIO),
    ]
    assert rom.ram_block is not None and plan[1].host_addr == rom.ram_block.host_addr


def test_ram_is_cut_at_1mib_so_chipset_remaps_below_stay_small() -> None:
    root = MemoryRegion.container("system", 1 << 40)
    ram = MemoryRegion.ram("ram", 4 * MiB)
    root.add_subregion(0, ram)
    plan = plan_mappings(render_flatview(root).ranges)
    assert ram.ram_block is not None
    assert plan[:2] == [Mapping(0, MiB, MapKind.RAM, ram.ram_block.host_addr),
                        Mapping(MiB, 3 * MiB, MapKind.RAM, ram.ram_block.host_addr + MiB)]
    # PAM-style change below 1 MiB: the mapping above stays as it was.
    root.add_subregion_overlap(0xF0000, MemoryRegion.rom("rom", 64 * KiB), 1)
    assert plan[1] in plan_mappings(render_flatview(root).ranges)


def test_a_partly_covered_page_is_mmio() -> None:
    root = MemoryRegion.container("system", 1 << 40)
    root.add_subregion(0, MemoryRegion.ram("ram", 0x1800))
    plan = plan_mappings(render_flatview(root).ranges)
    assert plan[0] == Mapping(0, 0x1000, MapKind.RAM, plan[0].host_addr)
    assert plan[1] == Mapping(0x1000, LOW_MMIO_END - 0x1000, MapKind.MMIO)


@needs_binutils
def test_first_run_maps_the_built_machine_without_unmapping() -> None:
    """The board adds RAM after the CPU exists: the engine must not have mapped
    the empty machine first (unmapping 4 GiB of MMIO goes page by page)."""
    m = Machine(ram_size=1 * MiB)
    try:
        uc = m.vcpu.uc
        unmapped: list[tuple[int, int]] = []
        real_unmap = uc.mem_unmap
        uc.mem_unmap = lambda addr, size: (unmapped.append((addr, size)), real_unmap(addr, size))
        more = MemoryRegion.ram("more", 1 * MiB)
        m.sysmem.add_subregion(1 * MiB, more)
        m.asm(0x10000, """
        movl $0x12345678, 0x100000
        mov 0x100000, %eax
        out %eax, $0xe9
        out %al, $0xf4
        hlt
        """)
        m.start_flat32(0x10000)
        m.run_until_done()
        assert m.outputs() == [0x12345678]
        assert more.ram_block is not None and more.ram_block.view[:4].tobytes() == bytes.fromhex("78563412")
        assert unmapped == []
    finally:
        m.close()


@needs_binutils
def test_guest_writes_to_rom_are_dropped_and_the_guest_goes_on() -> None:
    """Hardware and QEMU ignore writes to ROM (and to read-only PAM shadows):
    no fault, the bytes stay, the instruction otherwise completes."""
    m = Machine(ram_size=1 * MiB)
    try:
        rom = MemoryRegion.rom("rom", 64 * KiB)
        assert rom.ram_block is not None
        rom.ram_block.view[:] = b"\x5a" * (64 * KiB)
        m.sysmem.add_subregion(0x100000, rom)
        m.asm(0x10000, """
        movl $0x11223344, 0x100000
        mov 0x100000, %eax
        out %eax, $0xe9
        mov $0x100010, %edi
        mov $16, %ecx
        mov $0xab, %al
        cld
        rep stosb
        mov %ecx, %eax
        out %eax, $0xe9
        mov %edi, %eax
        out %eax, $0xe9
        mov 0x100010, %eax
        out %eax, $0xe9
        addl $1, 0x100020
        mov 0x100020, %eax
        out %eax, $0xe9
        movl $0x12345678, 0x80000
        mov 0x80000, %eax
        out %eax, $0xe9
        out %al, $0xf4
        hlt
        """)
        m.start_flat32(0x10000)
        m.run_until_done()
        assert m.outputs() == [0x5A5A5A5A, 0, 0x100020, 0x5A5A5A5A, 0x5A5A5A5A, 0x12345678]
        assert rom.ram_block.view.tobytes() == b"\x5a" * (64 * KiB)
    finally:
        m.close()
