"""Creating an empty qcow2 v3 image (QEMU's qcow2_co_create, for -snapshot overlays).

Layout with clusters of 2**cluster_bits bytes: the header (with the backing
format extension and the backing file name) in cluster 0, the refcount table
in cluster 1, one refcount block in cluster 2, then the L1 table.
"""

from __future__ import annotations

import os
import struct

from pemu.block.qcow2 import EXT_BACKING_FORMAT, QCOW_MAGIC, V3_HEADER_SIZE, size_to_l1
from pemu.block.qcow2_refcount import set_refcount_entry

HEADER_LENGTH = V3_HEADER_SIZE + 8  # with the compression type byte, padded


def qcow2_create(path: str, size: int, backing_file: str = "", backing_format: str = "",
                 cluster_bits: int = 16) -> None:
    cluster_size = 1 << cluster_bits
    l1_entries = size_to_l1(cluster_bits, size)
    l1_clusters = max(1, -(-l1_entries * 8 // cluster_size))
    used_clusters = 3 + l1_clusters
    refcount_order = 4
    if used_clusters > cluster_size * 8 >> refcount_order:
        raise ValueError("image too large for a single refcount block")
    extensions = b""
    if backing_format:
        fmt = backing_format.encode()
        extensions += struct.pack(">II", EXT_BACKING_FORMAT, len(fmt)) + fmt.ljust((len(fmt) + 7) & ~7, b"\0")
    extensions += struct.pack(">II", 0, 0)
    name = backing_file.encode("utf-8", "surrogateescape")
    backing_offset = HEADER_LENGTH + len(extensions) if name else 0
    if backing_offset + len(name) > cluster_size or len(name) > 1023:
        raise ValueError("backing file name too long")
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        QCOW_MAGIC, 3, backing_offset, len(name), cluster_bits, size, 0,
        l1_entries, 3 * cluster_size, 1 * cluster_size, 1, 0, 0,
        0, 0, 0, refcount_order, HEADER_LENGTH,
    )
    header = header.ljust(HEADER_LENGTH, b"\0") + extensions + name
    reftable = struct.pack(">Q", 2 * cluster_size).ljust(cluster_size, b"\0")
    refblock = bytearray(cluster_size)
    for cluster in range(used_clusters):
        set_refcount_entry(refblock, cluster, refcount_order, 1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, header.ljust(cluster_size, b"\0"), 0)
        os.pwrite(fd, reftable, cluster_size)
        os.pwrite(fd, bytes(refblock), 2 * cluster_size)
        os.ftruncate(fd, used_clusters * cluster_size)
    finally:
        os.close(fd)
