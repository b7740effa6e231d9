"""No single guest request stalls the VMM: a firmware that loops on the
fw_cfg DMA of issue 8 (a 256 MiB zero-fill aimed at the PCIe MMCONFIG
window) while the monitor is asked questions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.harness import GuestProcess
from tests.unit.guestasm import assemble, have_binutils

pytestmark = pytest.mark.skipif(not have_binutils(), reason="as/ld/objcopy are needed to assemble the firmware")

# A 64 KiB BIOS image (mapped at 0xF0000, entered at 0xFFFF0 in real mode).
# The descriptor at 0x1000, big-endian: READ, 0x0FFFFFFF bytes, to
# 0xB0100000; the outl of 0 to 0x514 and of the descriptor's address to 0x518
# start it; the device writes the control word back, so each round re-plants it.
DMA_LOOP_FIRMWARE = """
.code16
start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    movl $0xFFFFFF0F, 0x1004
    movl $0, 0x1008
    movl $0x000010B0, 0x100C
again:
    movl $0x02000000, 0x1000
    mov $0x514, %dx
    xor %eax, %eax
    out %eax, %dx
    mov $0x518, %dx
    mov $0x00100000, %eax
    out %eax, %dx
    jmp again
.org 0xFFF0
    ljmp $0xF000, $start
.org 0x10000
"""


def test_monitor_answers_while_the_guest_loops_on_a_huge_dma_into_mmconfig(tmp_path: Path) -> None:
    bios = tmp_path / "dma-loop.bin"
    bios.write_bytes(assemble(DMA_LOOP_FIRMWARE, 0))
    with GuestProcess(["-machine", "q35", "-m", "256", "-bios", str(bios), "-display", "none", "-nodefaults",
                       "-monitor", "stdio", "-d", "guest_errors"]) as vm:
        vm.expect(r"\(qemu\) ", timeout=60)
        for _ in range(3):
            time.sleep(1)                                  # the guest runs its DMA loop meanwhile
            asked = time.monotonic()
            vm.sendline("info status")
            vm.expect(r"VM status: running\s+\(qemu\) ", timeout=20)
            assert time.monotonic() - asked < 10
        vm.sendline("quit")
        assert vm.wait(30) == 0
    # Each DMA stopped at the bound: it reached 64 KiB of the window, then failed.
    assert vm.stderr.count("bulk write stopped at 0xb0110000 in pcie-mmcfg-mmio") >= 3, vm.stderr[-2000:]
