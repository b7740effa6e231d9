"""The qcow2 format driver (QEMU's block/qcow2.c, qcow2-cluster.c; docs/interop/qcow2.txt).

Versions 2 and 3.  Guest offsets map through a two-level table: the L1 table
(kept in memory, capped at 32 MiB as in QEMU) points to L2 tables (one cluster
each, in an LRU :class:`Qcow2Cache`), whose entries point to data clusters,
to compressed data (read only: a write copies the cluster out), or nowhere
(read from the backing file, or zeros).

The file is untrusted input: the header is checked as QEMU checks it
(:func:`parse_header`, pure and table-tested), and a bad table entry found
while running marks the image corrupt as QEMU does and fails the request with
EIO instead of reading or writing somewhere it should not.

Writes allocate clusters in the safe order: refcount, then data, then the L2
entry, then (for a new L2 table) the L1 entry.  Clusters with a refcount above
one (internal snapshots) are copied before they are written.
"""

from __future__ import annotations

import errno
import struct
import zlib
from dataclasses import dataclass, field

from pemu.block.block_int import BlockDriver, BlockDriverState, BlockOpenError, io_error
from pemu.block.qcow2_cache import Qcow2Cache
from pemu.block.qcow2_refcount import Qcow2Refcounts, be64_array
from pemu.util.error import error_report

QCOW_MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
QCOW_MAX_L1_SIZE = 0x2000000  # bytes (32 MiB)
QCOW_MAX_REFTABLE_SIZE = 0x800000  # bytes (8 MiB)
QCOW_MAX_SNAPSHOTS = 65536
BACKING_FILE_NAME_MAX = 1023
V2_HEADER_SIZE = 72
V3_HEADER_SIZE = 104

L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_SUPPORTED = INCOMPAT_DIRTY | INCOMPAT_CORRUPT
COMPAT_LAZY_REFCOUNTS = 1 << 0

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857

QCOW_CRYPT_NONE, QCOW_CRYPT_AES, QCOW_CRYPT_LUKS = 0, 1, 2

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_V3 = struct.Struct(">QQQII")

# Names of the incompatible features pemu knows but does not implement.
_KNOWN_INCOMPAT_NAMES = {
    2: "external data file",
    3: "compression type",
    4: "extended L2 entries",
}


@dataclass
class Qcow2Header:
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = V2_HEADER_SIZE
    compression_type: int = 0
    backing_file: str = ""
    backing_format: str = ""
    feature_names: dict[int, str] = field(default_factory=dict)  # incompatible bit -> name

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def _valid_table_offset(offset: int, entries: int, entry_len: int, cluster_size: int) -> bool:
    size = entries * entry_len
    return size <= (1 << 63) - 1 - offset and offset % cluster_size == 0


def size_to_l1(cluster_bits: int, size: int) -> int:
    shift = cluster_bits + cluster_bits - 3
    return (size + (1 << shift) - 1) >> shift


def parse_header(image: bytes) -> Qcow2Header:
    """Check a qcow2 header as QEMU's qcow2_do_open does.

    ``image`` is the start of the file: at least the header, ideally its
    whole first cluster (extensions and the backing file name live there).
    Missing bytes read as zeros, as reads past the end of a file do.
    """
    buf = image.ljust(V3_HEADER_SIZE, b"\0")
    fields = _V2.unpack_from(buf)
    if fields[0] != QCOW_MAGIC:
        raise BlockOpenError("Image is not in qcow2 format")
    h = Qcow2Header(*fields[1:])
    if h.version < 2 or h.version > 3:
        raise BlockOpenError(f"Unsupported qcow2 version {h.version}")
    if h.cluster_bits < MIN_CLUSTER_BITS or h.cluster_bits > MAX_CLUSTER_BITS:
        raise BlockOpenError(f"Unsupported cluster size: 2^{h.cluster_bits}")
    cluster_size = h.cluster_size
    if h.version == 3:
        (h.incompatible_features, h.compatible_features, h.autoclear_features,
         h.refcount_order, h.header_length) = _V3.unpack_from(buf, V2_HEADER_SIZE)
        if h.header_length < V3_HEADER_SIZE:
            raise BlockOpenError("qcow2 header too short")
        if h.header_length > cluster_size:
            raise BlockOpenError("qcow2 header exceeds cluster size")
        if h.header_length > V3_HEADER_SIZE:
            h.compression_type = image[V3_HEADER_SIZE] if len(image) > V3_HEADER_SIZE else 0
    if h.backing_file_offset > cluster_size:
        raise BlockOpenError("Invalid backing file offset")
    ext_end = h.backing_file_offset if h.backing_file_offset else cluster_size
    _read_extensions(h, image, h.header_length, ext_end)
    unknown = h.incompatible_features & ~INCOMPAT_SUPPORTED
    if unknown:
        raise BlockOpenError(_unsupported_features(h, unknown))
    if h.compression_type != 0:
        raise BlockOpenError(f"qcow2: unknown compression type: {h.compression_type}")
    if h.refcount_order > 6:
        raise BlockOpenError("Reference count entry width too large; may not exceed 64 bits")
    if h.crypt_method > QCOW_CRYPT_LUKS:
        raise BlockOpenError(f"Unsupported encryption method: {h.crypt_method}")
    if h.crypt_method == QCOW_CRYPT_AES:
        raise BlockOpenError("Use of AES-CBC encrypted qcow2 images is no longer supported in system emulators")
    if h.crypt_method == QCOW_CRYPT_LUKS:
        raise BlockOpenError("qcow2: LUKS-encrypted images are not supported by pemu")
    if h.l1_size > QCOW_MAX_L1_SIZE // 8:
        raise BlockOpenError("Active L1 table too large")
    if h.size > (1 << 62) or size_to_l1(h.cluster_bits, h.size) > 0x7FFFFFFF:
        raise BlockOpenError("Image is too big")
    if h.l1_size < size_to_l1(h.cluster_bits, h.size):
        raise BlockOpenError("L1 table is too small")
    if h.l1_size and not _valid_table_offset(h.l1_table_offset, h.l1_size, 8, cluster_size):
        raise BlockOpenError("Invalid L1 table offset")
    if h.refcount_table_clusters == 0 or h.refcount_table_clusters > QCOW_MAX_REFTABLE_SIZE // cluster_size:
        raise BlockOpenError("Reference count table too large" if h.refcount_table_clusters else
                             "Image does not contain a reference count table")
    if not _valid_table_offset(h.refcount_table_offset, h.refcount_table_clusters, cluster_size, cluster_size) \
            or h.refcount_table_offset == 0:
        raise BlockOpenError("Invalid reference count table offset")
    if h.nb_snapshots > QCOW_MAX_SNAPSHOTS:
        raise BlockOpenError("Too many snapshots")
    if h.nb_snapshots and not _valid_table_offset(h.snapshots_offset, h.nb_snapshots, 40, cluster_size):
        raise BlockOpenError("Invalid snapshot table offset")
    if h.backing_file_offset:
        if h.backing_file_size > BACKING_FILE_NAME_MAX or h.backing_file_size > cluster_size - h.backing_file_offset:
            raise BlockOpenError("Backing file name too long")
        raw = image[h.backing_file_offset : h.backing_file_offset + h.backing_file_size]
        if len(raw) < h.backing_file_size:
            raise BlockOpenError("Could not read backing file name")
        h.backing_file = raw.decode("utf-8", "surrogateescape")
    return h


def _read_extensions(h: Qcow2Header, image: bytes, start: int, end: int) -> None:
    offset = start
    while offset < end:
        if offset + 8 > len(image):
            return  # the header extensions run past what was read: treat as ended
        ext_type, ext_len = struct.unpack_from(">II", image, offset)
        offset += 8
        if ext_len > end - offset:
            raise BlockOpenError("Header extension too large")
        data = image[offset : offset + ext_len]
        if ext_type == EXT_END:
            return
        if ext_type == EXT_BACKING_FORMAT:
            if ext_len >= 16:
                raise BlockOpenError(f"ERROR: ext_backing_format: len={ext_len} too large (>=16)")
            h.backing_format = data.decode("ascii", "replace")
        elif ext_type == EXT_FEATURE_TABLE:
            for entry in range(0, len(data) - 47, 48):
                kind, bit = data[entry], data[entry + 1]
                if kind == 0 and bit < 64:
                    h.feature_names[bit] = data[entry + 2 : entry + 48].split(b"\0")[0].decode("utf-8", "replace")
        offset += (ext_len + 7) & ~7


def _unsupported_features(h: Qcow2Header, mask: int) -> str:
    names = []
    for bit in range(64):
        if mask & (1 << bit):
            name = h.feature_names.get(bit) or _KNOWN_INCOMPAT_NAMES.get(bit)
            if name:
                names.append(name)
                mask &= ~(1 << bit)
    if mask:
        names.append(f"Unknown incompatible feature: {mask:x}")
    return "Unsupported qcow2 feature(s): " + ", ".join(names)


class Qcow2Driver(BlockDriver):
    format_name = "qcow2"

    def __init__(self, bs: BlockDriverState, l2_cache_tables: int = 16, refcount_cache_tables: int = 4) -> None:
        super().__init__(bs)
        assert bs.file is not None
        self.file = bs.file
        file_size = self.file.getlength()
        head = self.file.pread(0, min(max(file_size, V3_HEADER_SIZE), 1 << MAX_CLUSTER_BITS))
        h = parse_header(head)
        self.header = h
        if h.incompatible_features & INCOMPAT_CORRUPT and bs.writable:
            raise BlockOpenError("qcow2: Image is corrupt; cannot be opened read/write")
        if h.incompatible_features & INCOMPAT_DIRTY and bs.writable:
            # QEMU repairs the refcounts of a dirty image on open; pemu asks for it.
            raise BlockOpenError(
                "qcow2: Image is dirty (lazy refcounts); repair it with 'qemu-img check -r all' first"
            )
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.l2_bits = h.cluster_bits - 3
        self.size = h.size
        raw_l1 = self.file.pread(h.l1_table_offset, h.l1_size * 8) if h.l1_size else b""
        self.l1 = be64_array(raw_l1)  # at most 32 MiB (the header check), not a Python int per entry
        self.l2_cache = Qcow2Cache(l2_cache_tables, self._load_l2)
        self.refcounts = Qcow2Refcounts(
            self.file, self._update_refcount_table_header, h.cluster_bits, h.refcount_order, h.refcount_table_offset,
            h.refcount_table_clusters, refcount_cache_tables, self._signal_corruption, QCOW_MAX_REFTABLE_SIZE,
        )
        self.csize_shift = 62 - (h.cluster_bits - 8)
        self.csize_mask = (1 << (h.cluster_bits - 8)) - 1
        self.coffset_mask = (1 << self.csize_shift) - 1
        self._compressed_cache: tuple[int, bytes] | None = None
        self.corrupt = False
        bs.backing_file = h.backing_file
        bs.backing_format = h.backing_format
        if bs.writable and h.version == 3 and h.autoclear_features:
            # Autoclear features (persistent bitmaps...) are not kept up to date by pemu.
            self.file.pwrite(88, struct.pack(">Q", 0))
            h.autoclear_features = 0

    # -- metadata --------------------------------------------------------------------
    def _load_l2(self, offset: int) -> bytearray:
        return bytearray(self.file.pread(offset, self.cluster_size))

    def _signal_corruption(self, message: str) -> Exception:
        """qcow2_signal_corruption: mark the image corrupt, fail this and later requests."""
        if not self.corrupt:
            self.corrupt = True
            if not self.bs.writable:
                error_report(f"qcow2: Image is corrupt: {message}; further non-fatal corruption events "
                             "will be suppressed")
            else:
                error_report(f"qcow2: Marking image as corrupt: {message}; further corruption events "
                             "will be suppressed")
                try:
                    flags = self.header.incompatible_features | INCOMPAT_CORRUPT
                    if self.header.version == 3:
                        self.file.pwrite(72, struct.pack(">Q", flags))
                        self.header.incompatible_features = flags
                except OSError:
                    pass
        return io_error(errno.EIO)

    def _update_refcount_table_header(self, offset: int, clusters: int) -> None:
        """Point the header at a new refcount table (offset and size in one write)."""
        self.file.pwrite(48, struct.pack(">QI", offset, clusters))
        self.file.flush()
        self.header.refcount_table_offset = offset
        self.header.refcount_table_clusters = clusters

    def _check_alive(self) -> None:
        if self.corrupt:
            raise io_error(errno.EIO)

    def _host_offset(self, entry: int, mask: int, what: str) -> int:
        offset = entry & mask
        if offset & (self.cluster_size - 1):
            raise self._signal_corruption(f"{what} offset {offset:#x} unaligned")
        if offset and offset < self.cluster_size:
            raise self._signal_corruption(f"{what} at offset {offset:#x} overlaps the header")
        return offset

    def _l2_location(self, guest_offset: int) -> tuple[int, int]:
        """(L1 index, L2 index) of a guest offset."""
        cluster = guest_offset >> self.cluster_bits
        return cluster >> self.l2_bits, cluster & ((1 << self.l2_bits) - 1)

    def _l2_table(self, l1_index: int) -> tuple[int, bytearray] | None:
        if l1_index >= len(self.l1):
            return None
        l2_offset = self._host_offset(self.l1[l1_index], L1E_OFFSET_MASK, "L2 table")
        if l2_offset == 0:
            return None
        return l2_offset, self.l2_cache.get(l2_offset)

    def _l2_entry(self, guest_offset: int) -> int:
        l1_index, l2_index = self._l2_location(guest_offset)
        found = self._l2_table(l1_index)
        if found is None:
            return 0
        return struct.unpack_from(">Q", found[1], l2_index * 8)[0]

    # -- reading ---------------------------------------------------------------------
    def getlength(self) -> int:
        return self.size

    def allocated_file_size(self) -> int:
        assert self.file.drv is not None
        return self.file.drv.allocated_file_size()

    def _check_range(self, offset: int, nbytes: int) -> None:
        """Nothing outside the virtual disk, whoever asks (the L1 table may reach further)."""
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise io_error(errno.EIO)

    def pread(self, offset: int, nbytes: int) -> bytes:
        self._check_alive()
        self._check_range(offset, nbytes)
        out = bytearray()
        while nbytes > 0:
            in_cluster = offset & (self.cluster_size - 1)
            chunk = min(nbytes, self.cluster_size - in_cluster)
            out += self._read_in_cluster(offset, in_cluster, chunk)
            offset += chunk
            nbytes -= chunk
        return bytes(out)

    def _read_in_cluster(self, offset: int, in_cluster: int, nbytes: int) -> bytes:
        entry = self._l2_entry(offset)
        if entry & QCOW_OFLAG_COMPRESSED:
            data = self._decompress(entry)
            return data[in_cluster : in_cluster + nbytes]
        host = self._host_offset(entry, L2E_OFFSET_MASK, "Cluster allocation")
        if entry & QCOW_OFLAG_ZERO:
            return bytes(nbytes)
        if host:
            return self.file.pread(host + in_cluster, nbytes)
        return self._read_backing(offset, nbytes)

    def _read_backing(self, offset: int, nbytes: int) -> bytes:
        backing = self.bs.backing
        if backing is None:
            return bytes(nbytes)
        backing_size = backing.getlength()
        if offset >= backing_size:
            return bytes(nbytes)
        part = min(nbytes, backing_size - offset)
        data = backing.pread(offset, part)
        return data + bytes(nbytes - part)

    def _compressed_range(self, entry: int) -> tuple[int, int]:
        coffset = entry & self.coffset_mask
        sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        return coffset, sectors * 512 - (coffset & 511)

    def _decompress(self, entry: int) -> bytes:
        coffset, csize = self._compressed_range(entry)
        if self._compressed_cache is not None and self._compressed_cache[0] == coffset:
            return self._compressed_cache[1]
        if coffset < self.cluster_size:
            raise self._signal_corruption(f"Compressed cluster at offset {coffset:#x} overlaps the header")
        compressed = self.file.pread(coffset, csize)
        try:
            inflater = zlib.decompressobj(-15)
            data = inflater.decompress(compressed, self.cluster_size)
        except zlib.error:
            raise io_error(errno.EIO) from None
        if len(data) != self.cluster_size:
            raise io_error(errno.EIO)
        self._compressed_cache = (coffset, data)
        return data

    def is_allocated(self, offset: int, nbytes: int) -> bool:
        entry = self._l2_entry(offset)
        return bool(entry & (QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO | L2E_OFFSET_MASK))

    # -- writing ---------------------------------------------------------------------
    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._check_alive()
        self._check_range(offset, len(data))
        view = memoryview(data)
        while view:
            in_cluster = offset & (self.cluster_size - 1)
            chunk = min(len(view), self.cluster_size - in_cluster)
            self._write_in_cluster(offset, in_cluster, view[:chunk])
            offset += chunk
            view = view[chunk:]

    def _writable_l2(self, l1_index: int) -> tuple[int, bytearray]:
        """The L2 table for ``l1_index``, allocated or copied so it can be written in place."""
        l1_entry = self.l1[l1_index]
        old_offset = self._host_offset(l1_entry, L1E_OFFSET_MASK, "L2 table")
        if old_offset and l1_entry & QCOW_OFLAG_COPIED:
            return old_offset, self.l2_cache.get(old_offset)
        table = bytearray(self.l2_cache.get(old_offset)) if old_offset else bytearray(self.cluster_size)
        new_offset = self.refcounts.alloc_clusters(1)
        self.file.pwrite(new_offset, table)
        self.l2_cache.put_new(new_offset, table)
        self.l1[l1_index] = new_offset | QCOW_OFLAG_COPIED
        self.file.pwrite(self.header.l1_table_offset + l1_index * 8, struct.pack(">Q", self.l1[l1_index]))
        if old_offset:  # it was shared with an internal snapshot
            self.l2_cache.discard(old_offset)
            self.refcounts.update(old_offset >> self.cluster_bits, -1)
        return new_offset, table

    def _write_in_cluster(self, offset: int, in_cluster: int, data: memoryview) -> None:
        l1_index, l2_index = self._l2_location(offset)
        if l1_index >= len(self.l1):
            raise io_error(errno.EIO)
        entry = self._l2_entry(offset)
        host = 0 if entry & QCOW_OFLAG_COMPRESSED else self._host_offset(entry, L2E_OFFSET_MASK, "Cluster allocation")
        if host and entry & QCOW_OFLAG_COPIED and not entry & QCOW_OFLAG_ZERO:
            self.file.pwrite(host + in_cluster, data)  # the common case: allocated, ours alone
            return
        # Copy-on-write: build the whole new cluster.
        cluster_start = offset - in_cluster
        whole = len(data) == self.cluster_size
        if whole:
            content = bytearray(data)
        else:
            if entry & QCOW_OFLAG_COMPRESSED:
                old = self._decompress(entry)
            elif entry & QCOW_OFLAG_ZERO:
                old = bytes(self.cluster_size)
            elif host:
                old = self.file.pread(host, self.cluster_size)
            else:
                old = self._read_backing(cluster_start, self.cluster_size)
            content = bytearray(old)
            content[in_cluster : in_cluster + len(data)] = data
        l2_offset, table = self._writable_l2(l1_index)
        reuse = host and entry & QCOW_OFLAG_COPIED  # a preallocated zero cluster
        new_host = host if reuse else self.refcounts.alloc_clusters(1)
        self.file.pwrite(new_host, content)
        new_entry = new_host | QCOW_OFLAG_COPIED
        struct.pack_into(">Q", table, l2_index * 8, new_entry)
        self.file.pwrite(l2_offset + l2_index * 8, struct.pack(">Q", new_entry))
        if entry & QCOW_OFLAG_COMPRESSED:
            self.refcounts.free_range(*self._compressed_range(entry))
            self._compressed_cache = None
        elif host and not reuse:
            self.refcounts.update(host >> self.cluster_bits, -1)

    def make_empty(self) -> None:
        """Unmap every cluster (data, compressed, L2 tables), freeing their references."""
        self._check_alive()
        for l1_index, l1_entry in enumerate(self.l1):
            l2_offset = self._host_offset(l1_entry, L1E_OFFSET_MASK, "L2 table")
            if not l2_offset:
                continue
            self.l1[l1_index] = 0
            self.file.pwrite(self.header.l1_table_offset + l1_index * 8, bytes(8))
            table = self.l2_cache.get(l2_offset)
            entries = struct.unpack(f">{self.cluster_size // 8}Q", table)
            self.l2_cache.discard(l2_offset)
            if l1_entry & QCOW_OFLAG_COPIED:  # ours alone: drop what it points to
                for entry in entries:
                    if entry & QCOW_OFLAG_COMPRESSED:
                        self.refcounts.free_range(*self._compressed_range(entry))
                    else:
                        host = self._host_offset(entry, L2E_OFFSET_MASK, "Cluster allocation")
                        if host:
                            self.refcounts.update(host >> self.cluster_bits, -1)
            self.refcounts.update(l2_offset >> self.cluster_bits, -1)
        self._compressed_cache = None

    def flush(self) -> None:
        """Metadata is written through, so the file's flush (done by the caller) suffices."""
