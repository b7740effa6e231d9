"""The qcow2 metadata caches (QEMU's block/qcow2-cache.c): L2 tables and refcount blocks.

A table is a cluster of big-endian entries loaded from the image file and
kept in a least-recently-used cache of a bounded number of tables.  The cache
is write-through: whoever changes an entry writes it to the file at once (in
the order that keeps the image consistent), so evicting is just forgetting.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

# Each loaded table is a bytearray of one cluster.
TableLoader = Callable[[int], bytearray]


class Qcow2Cache:
    def __init__(self, capacity: int, load: TableLoader) -> None:
        if capacity < 1:
            raise ValueError("a qcow2 cache holds at least one table")
        self.capacity = capacity
        self._load = load
        self._tables: OrderedDict[int, bytearray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, offset: int) -> bytearray:
        """The table at host ``offset``, loading it (and evicting the oldest) if needed."""
        table = self._tables.get(offset)
        if table is not None:
            self._tables.move_to_end(offset)
            self.hits += 1
            return table
        self.misses += 1
        table = self._load(offset)
        self._tables[offset] = table
        if len(self._tables) > self.capacity:
            self._tables.popitem(last=False)
        return table

    def put_new(self, offset: int, table: bytearray) -> None:
        """Insert a table just written at ``offset`` (a new or copied L2 table)."""
        self._tables[offset] = table
        self._tables.move_to_end(offset)
        if len(self._tables) > self.capacity:
            self._tables.popitem(last=False)

    def discard(self, offset: int) -> None:
        self._tables.pop(offset, None)

    def __contains__(self, offset: int) -> bool:
        return offset in self._tables

    def __len__(self) -> int:
        return len(self._tables)
