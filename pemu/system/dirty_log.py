"""Dirty page logging of guest RAM, for live migration (QEMU's
memory_global_dirty_log_start/sync/stop in system/memory.c).

While the log is on, every page of a RAM block that is written is logged,
one bit per 4 KiB page, until the next sync hands it over:

- writes by the vCPUs are logged by the accelerator
  (:meth:`pemu.accel.accel.AccelOps.log_global_start` and friends: the tcg
  engine's TLB_NOTDIRTY slow path, KVM's KVM_MEM_LOG_DIRTY_PAGES);
- writes by the VMM (DMA through :mod:`pemu.system.dma`,
  ``AddressSpace.write``/``fill``, a writable ``RAMMapping`` given back,
  loaders' ``write_rom``) reach ``_ram_written`` in
  :mod:`pemu.system.memory`, which sets the bits of the block's own
  ``dirty_bitmap`` (one attribute test while the log is off).

A sync takes both and ORs them.  An accelerator that cannot log the vCPUs'
writes makes :func:`memory_global_dirty_log_start` return False, and the
migration copies the RAM of a stopped guest instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pemu.system.memory import RAMBlock, dirty_bitmap_size

if TYPE_CHECKING:
    from pemu.system.vm import VirtualMachine


def memory_global_dirty_log_start(vm: VirtualMachine) -> bool:
    """Start logging the writes to all of ``vm``'s RAM blocks.  False (and
    nothing logged) if its accelerator cannot log what the vCPUs write.
    Starting a log that is on changes nothing."""
    memory = vm.memory
    if memory.global_dirty_log:
        return True
    accel = vm.accel
    blocks = list(memory.ram_blocks)
    if accel is None or not accel.log_global_start(blocks):
        return False
    with memory.dirty_log_lock:
        for block in blocks:
            block.dirty_bitmap = bytearray(dirty_bitmap_size(block.size))
        memory.global_dirty_log = True
    return True


def memory_global_dirty_log_sync(vm: VirtualMachine) -> dict[RAMBlock, bytearray]:
    """The pages written since the start or the previous sync, by RAM block
    (a bit per 4 KiB page of the block: page i is bit i % 8 of byte i // 8),
    and forget them.  Blocks with no page written are left out; so is
    everything while the log is off."""
    memory = vm.memory
    if not memory.global_dirty_log:
        return {}
    taken: dict[RAMBlock, bytearray] = {}
    with memory.dirty_log_lock:
        for block in memory.ram_blocks:
            bitmap = block.dirty_bitmap
            if bitmap is not None:
                taken[block] = bitmap
                block.dirty_bitmap = bytearray(len(bitmap))
    # The VMM's writes are taken first: one made from now on is in the next
    # sync, and one made before is copied after this one returns.
    assert vm.accel is not None  # the log started on it
    vm.accel.log_sync(taken)
    return {block: bitmap for block, bitmap in taken.items() if bitmap.count(0) != len(bitmap)}


def memory_global_dirty_log_stop(vm: VirtualMachine) -> None:
    """Stop logging; what was not synced is forgotten."""
    memory = vm.memory
    if not memory.global_dirty_log:
        return
    with memory.dirty_log_lock:
        memory.global_dirty_log = False
        for block in memory.ram_blocks:
            block.dirty_bitmap = None
    assert vm.accel is not None
    vm.accel.log_global_stop()
