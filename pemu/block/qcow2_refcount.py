"""qcow2 reference counts and cluster allocation (QEMU's block/qcow2-refcount.c).

Every host cluster of a qcow2 file has a reference count: 0 is free, 1 is used
once (the COPIED case, writable in place), more is shared (by internal
snapshots or compressed clusters packed together).  The refcount table (one
in-memory copy, capped by the header checks) points to refcount blocks of
``2**refcount_order``-bit entries, loaded through a :class:`Qcow2Cache`.

Refcounts are updated before anything points to a newly allocated cluster, so
a crash leaves at worst a leaked cluster, never a cluster used twice.
"""

from __future__ import annotations

import array
import errno
import struct
import sys
from collections.abc import Callable

from pemu.block.block_int import BlockDriverState, io_error
from pemu.block.qcow2_cache import Qcow2Cache

REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00


def be64_array(raw: bytes) -> array.array[int]:
    """A table of big-endian 64-bit entries as a compact native array."""
    table = array.array("Q", raw)
    if sys.byteorder == "little":
        table.byteswap()
    return table

# Raises (marks the image corrupt and fails the request with EIO).
CorruptionSignal = Callable[[str], Exception]


def get_refcount_entry(block: bytearray | bytes, index: int, order: int) -> int:
    """Entry ``index`` of a refcount block of 2**order-bit entries (QEMU's bit order)."""
    bits = 1 << order
    if bits >= 8:
        width = bits // 8
        return int.from_bytes(block[index * width : (index + 1) * width], "big")
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    return (block[index // per_byte] >> shift) & ((1 << bits) - 1)


def set_refcount_entry(block: bytearray, index: int, order: int, value: int) -> None:
    bits = 1 << order
    if bits >= 8:
        width = bits // 8
        block[index * width : (index + 1) * width] = value.to_bytes(width, "big")
        return
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    mask = ((1 << bits) - 1) << shift
    byte = index // per_byte
    block[byte] = (block[byte] & ~mask & 0xFF) | (value << shift)


class Qcow2Refcounts:
    def __init__(
        self,
        file: BlockDriverState,
        header_update: Callable[[int, int], None],
        cluster_bits: int,
        refcount_order: int,
        table_offset: int,
        table_clusters: int,
        cache_tables: int,
        signal_corruption: CorruptionSignal,
        max_table_bytes: int,
    ) -> None:
        self.file = file
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.order = refcount_order
        self.max = (1 << (1 << refcount_order)) - 1
        # How many clusters one refcount block covers, as a shift.
        self.block_bits = cluster_bits + 3 - refcount_order
        self.table_offset = table_offset
        raw = file.pread(table_offset, table_clusters * self.cluster_size)
        self.table = be64_array(raw)
        self.cache = Qcow2Cache(cache_tables, self._load_block)
        self.signal_corruption = signal_corruption
        self.free_cluster_index = 0
        self.header_update = header_update  # (table offset, table clusters) -> header written
        self.max_table_entries = max_table_bytes // 8

    def _load_block(self, offset: int) -> bytearray:
        return bytearray(self.file.pread(offset, self.cluster_size))

    def _block_offset(self, table_index: int) -> int:
        if table_index >= len(self.table):
            return 0
        offset = self.table[table_index] & REFT_OFFSET_MASK
        if offset & (self.cluster_size - 1):
            raise self.signal_corruption(
                f"Refblock offset {offset:#x} unaligned (reftable index: {table_index:#x})"
            )
        if offset == 0 and self.table[table_index]:
            raise self.signal_corruption(f"Refblock at offset 0 (reftable index: {table_index:#x})")
        return offset

    def get(self, cluster: int) -> int:
        """The reference count of host cluster number ``cluster``."""
        offset = self._block_offset(cluster >> self.block_bits)
        if offset == 0:
            return 0
        block = self.cache.get(offset)
        return get_refcount_entry(block, cluster & ((1 << self.block_bits) - 1), self.order)

    def update(self, cluster: int, delta: int, avoid: range = range(0)) -> int:
        """Add ``delta`` to a cluster's refcount and write it; returns the new count."""
        table_index = cluster >> self.block_bits
        if table_index >= len(self.table):
            if delta < 0:
                raise self.signal_corruption(f"Freeing cluster {cluster:#x} beyond the refcount table")
            self._grow_table(table_index, avoid)
        offset = self._block_offset(table_index)
        if offset == 0:
            if delta < 0:
                raise self.signal_corruption(f"Freeing cluster {cluster:#x} which has no refcount block")
            offset = self._alloc_refcount_block(table_index, avoid)
        block = self.cache.get(offset)
        index = cluster & ((1 << self.block_bits) - 1)
        value = get_refcount_entry(block, index, self.order) + delta
        if value < 0:
            raise self.signal_corruption(f"Refcount of cluster {cluster:#x} drops below zero")
        if value > self.max:
            raise io_error(errno.ERANGE)
        set_refcount_entry(block, index, self.order, value)
        self._write_entry(offset, block, index)
        if value == 0 and cluster < self.free_cluster_index:
            self.free_cluster_index = cluster
        return value

    def _write_entry(self, block_offset: int, block: bytearray, index: int) -> None:
        bits = 1 << self.order
        start = (index * bits) // 8
        end = max(start + 1, ((index + 1) * bits + 7) // 8)
        self.file.pwrite(block_offset + start, block[start:end])

    def _alloc_refcount_block(self, table_index: int, avoid: range) -> int:
        """A new, empty refcount block placed inside the range it covers."""
        first = table_index << self.block_bits
        cluster = first
        while cluster in avoid:
            cluster += 1
        block = bytearray(self.cluster_size)
        set_refcount_entry(block, cluster - first, self.order, 1)
        offset = cluster << self.cluster_bits
        self.file.pwrite(offset, block)
        self.cache.put_new(offset, block)
        self.table[table_index] = offset
        self.file.pwrite(self.table_offset + table_index * 8, struct.pack(">Q", offset))
        return offset

    def _grow_table(self, needed_index: int, avoid: range) -> None:
        """A bigger refcount table, placed with a refcount block covering it past everything in use.

        The new area starts where the old table's coverage ends (and after
        clusters being allocated right now): one refcount block, then the
        table.  It is written completely before the header points to it; the
        old table's clusters are freed last.
        """
        per_block = 1 << self.block_bits
        entries_per_cluster = self.cluster_size // 8
        start = max(len(self.table) << self.block_bits, avoid.stop)
        while True:
            block_index = start >> self.block_bits
            entries = max(2 * len(self.table), needed_index + 1, block_index + 1)
            table_clusters = -(-entries // entries_per_cluster)
            if table_clusters * entries_per_cluster > self.max_table_entries:
                raise io_error(errno.EFBIG)
            if start + 1 + table_clusters <= (block_index + 1) * per_block:
                break
            start = (block_index + 1) * per_block  # does not fit in this block's range: next one
        block = bytearray(self.cluster_size)
        for cluster in range(start, start + 1 + table_clusters):
            set_refcount_entry(block, cluster - block_index * per_block, self.order, 1)
        block_offset = start << self.cluster_bits
        table_offset = (start + 1) << self.cluster_bits
        new_table = self.table + array.array("Q", bytes(8 * (table_clusters * entries_per_cluster - len(self.table))))
        new_table[block_index] = block_offset
        self.file.pwrite(block_offset, block)
        self.file.pwrite(table_offset, struct.pack(f">{len(new_table)}Q", *new_table))
        self.file.flush()
        old_offset, old_clusters = self.table_offset, len(self.table) * 8 // self.cluster_size
        self.header_update(table_offset, table_clusters)
        self.table, self.table_offset = new_table, table_offset
        self.cache.put_new(block_offset, block)
        self.free_range(old_offset, old_clusters * self.cluster_size)

    def alloc_clusters(self, count: int) -> int:
        """Host offset of ``count`` new contiguous clusters, each with refcount 1."""
        start = self.free_cluster_index
        run = 0
        while run < count:
            if self.get(start + run) == 0:
                run += 1
            else:
                start += run + 1
                run = 0
        clusters = range(start, start + count)
        for cluster in clusters:
            self.update(cluster, 1, avoid=clusters)
        self.free_cluster_index = start + count
        return start << self.cluster_bits

    def free_range(self, offset: int, length: int) -> None:
        """Drop one reference to every cluster touching [offset, offset+length)."""
        first = offset >> self.cluster_bits
        last = (offset + length - 1) >> self.cluster_bits
        for cluster in range(first, last + 1):
            self.update(cluster, -1)
