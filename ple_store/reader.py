"""The `.ple` reader: validates the header, maps the file read-only and fetches a prompt's rows in one batch."""
from __future__ import annotations

import ctypes
import hashlib
import math
import mmap
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .format import (CRC_COVERED, DATA_OFFSET, HEADER_BYTES, IDENTITY_PREFIX, MAGIC, PAGE_SIZE, VERSION_MAJOR,
                     PleHeader, QuantScheme, StoredDtype, file_bytes_for, values_bytes)

STRATEGIES = ("willneed", "preadv")
# Cold E2B fetches, interleaved medians (bench/ple_fetch.py): willneed ~1.5-2x faster at 128-512 tokens, a tie
# at 2048, and it needs no thread pool. Both already run at this disk's random-read bandwidth (~350 MB/s).
DEFAULT_STRATEGY = "willneed"
QUEUE_DEPTH = 32                # preadv strategy: reads in flight at once
VERIFY_CHUNK = 8 << 20          # verify reads this many bytes a call

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


class PleFormatError(ValueError):
    """A `.ple` file that is not what FORMAT.md describes: names the file, the field, expected and found."""


@dataclass
class FetchStats:
    """I/O accounting of one fetch, defined in FORMAT.md (identical in every reader)."""
    tokens: int = 0
    unique_rows: int = 0
    bytes_requested: int = 0    # unique_rows × row_bytes
    pages_touched: int = 0      # distinct pages covered by the unique rows' byte ranges
    read_calls: int = 0         # madvise or preadv calls issued
    wall_s: float = 0.0         # dedup, reads and copy; not dequantization
    strategy: str = ""

    def __add__(self, other: "FetchStats") -> "FetchStats":
        return FetchStats(self.tokens + other.tokens, self.unique_rows + other.unique_rows,
                          self.bytes_requested + other.bytes_requested, self.pages_touched + other.pages_touched,
                          self.read_calls + other.read_calls, self.wall_s + other.wall_s, "total")


# ---------------------------------------------------------------------------------------------------
# Header validation
# ---------------------------------------------------------------------------------------------------

def validate_header(raw: bytes, path: str, size: int) -> PleHeader:
    """Decode and check every header field against FORMAT.md and the file's size; raise PleFormatError."""
    def fail(what: str, expected, found):
        raise PleFormatError(f"{path}: {what}: expected {expected}, found {found}")

    if size < HEADER_BYTES:
        fail("file size (truncated header)", f"at least {HEADER_BYTES} bytes", f"{size} bytes")
    h = PleHeader.unpack(raw)
    if h.magic != MAGIC:
        fail("magic", MAGIC, h.magic)
    if h.version_major != VERSION_MAJOR:
        fail("version_major", VERSION_MAJOR, h.version_major)
    crc = zlib.crc32(raw[:CRC_COVERED])
    if crc != h.header_crc32:
        fail("header_crc32", f"{crc:#010x} (CRC-32 of header bytes [0, {CRC_COVERED}))", f"{h.header_crc32:#010x}")
    for name, want in (("header_bytes", HEADER_BYTES), ("page_size", PAGE_SIZE), ("data_offset", DATA_OFFSET)):
        if getattr(h, name) != want:
            fail(name, want, getattr(h, name))
    for name in ("vocab_size", "num_layers", "ple_dim", "rows_per_group", "block_groups"):
        if getattr(h, name) <= 0:
            fail(name, "> 0", getattr(h, name))
    if h.dtype not in StoredDtype._value2member_map_:
        fail("dtype", "0 fp32, 1 bf16, 2 int8 or 3 int4", h.dtype)
    dt = StoredDtype(h.dtype)
    values = h.num_layers * h.ple_dim
    if dt.quantized:
        if h.quant_scheme != QuantScheme.SYMMETRIC_ABSMAX:
            fail(f"quant_scheme (dtype {dt.name.lower()})", int(QuantScheme.SYMMETRIC_ABSMAX), h.quant_scheme)
        if h.quant_group_size <= 0 or values % h.quant_group_size:
            fail("quant_group_size", f"a divisor of L·P = {values}", h.quant_group_size)
        row_bytes = 4 * (values // h.quant_group_size) + values_bytes(dt, values)
    else:
        if h.quant_scheme != QuantScheme.NONE:
            fail(f"quant_scheme (dtype {dt.name.lower()})", int(QuantScheme.NONE), h.quant_scheme)
        if h.quant_group_size != 0:
            fail("quant_group_size (quant_scheme 0)", 0, h.quant_group_size)
        row_bytes = values_bytes(dt, values)
    if h.row_bytes != row_bytes:
        fail("row_bytes", f"{row_bytes} for {dt.name.lower()} L={h.num_layers} P={h.ple_dim}", h.row_bytes)
    if h.row_stride % 16 or h.row_stride < h.row_bytes:
        fail("row_stride", f"a multiple of 16 ≥ row_bytes {h.row_bytes}", h.row_stride)
    last_row_end = (h.rows_per_group - 1) * h.row_stride + h.row_bytes
    if h.group_bytes % h.page_size or h.group_bytes < last_row_end:
        fail("group_bytes", f"a multiple of {h.page_size} ≥ {last_row_end} (rows_per_group·stride)", h.group_bytes)
    num_groups = -(-h.vocab_size // h.rows_per_group)
    for name, want in (("num_blocks", -(-num_groups // h.block_groups)),
                       ("data_bytes", num_groups * h.group_bytes),
                       ("checksum_offset", h.data_offset + num_groups * h.group_bytes)):
        if getattr(h, name) != want:
            fail(name, want, getattr(h, name))
    want_bytes = file_bytes_for(h.checksum_offset, h.num_blocks, h.page_size)
    if h.file_bytes != want_bytes:
        fail("file_bytes", want_bytes, h.file_bytes)
    if size != h.file_bytes:
        fail("file size (truncated or trailing bytes)", f"{h.file_bytes} bytes (header file_bytes)", f"{size} bytes")
    if not math.isfinite(h.embed_scale):
        fail("embed_scale", "a finite float", h.embed_scale)
    return h


# ---------------------------------------------------------------------------------------------------
# Decoding stored rows
# ---------------------------------------------------------------------------------------------------

def decode_rows(payload: np.ndarray, h: PleHeader) -> np.ndarray:
    """Stored rows [U, row_bytes] uint8 -> float32 [U, L, P]: (q · s) · embed_scale, in float32, in place."""
    n, L, P = payload.shape[0], h.num_layers, h.ple_dim
    dt, es = StoredDtype(h.dtype), np.float32(h.embed_scale)
    if dt == StoredDtype.FP32:
        x = payload.view("<f4").reshape(n, L, P).copy()
    elif dt == StoredDtype.BF16:
        x = (payload.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(n, L, P)
    else:
        nscale = L * P // h.quant_group_size
        scales = np.ascontiguousarray(payload[:, : 4 * nscale]).view("<f4")       # [U, nscale]
        body = payload[:, 4 * nscale:]
        if dt == StoredDtype.INT8:
            q = body.view(np.int8)
        else:
            packed = body.view(np.int8)
            q = np.empty((n, 2 * body.shape[1]), np.int8)                            # [U, 2·bytes]
            lo = q[:, 0::2]
            np.left_shift(packed, 4, out=lo)
            np.right_shift(lo, 4, out=lo)                                            # arithmetic: sign-extends
            np.right_shift(packed, 4, out=q[:, 1::2])
            q = q[:, : L * P]
        x = q.reshape(n, nscale, h.quant_group_size).astype(np.float32)
        x *= scales[..., None]
        x = x.reshape(n, L, P)
    x *= es
    return x


# ---------------------------------------------------------------------------------------------------
# The reader
# ---------------------------------------------------------------------------------------------------

class PleReader:
    """A read-only mapping of one `.ple` file; `fetch` is the single batched read for a prompt."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        self._pool = None
        self._mm = None
        try:
            # no readahead on this descriptor, before the first read (the header) pulls in neighbours
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
            size = os.fstat(self.fd).st_size
            self.header = validate_header(os.pread(self.fd, HEADER_BYTES, 0), self.path, size)
            self._mm = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)
            self._mm.madvise(mmap.MADV_RANDOM)   # a fault reads its page only, not its neighbours
        except BaseException:
            self.close()
            raise
        h = self.header
        self._bytes = np.frombuffer(self._mm, np.uint8)                               # [file_bytes]
        self._addr = self._bytes.ctypes.data
        self._rows = np.lib.stride_tricks.as_strided(                                # [groups, rows/group, row_bytes]
            self._bytes[h.data_offset:], shape=(h.num_groups, h.rows_per_group, h.row_bytes),
            strides=(h.group_bytes, h.row_stride, 1), writeable=False)
        self.fetch_log: list[FetchStats] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._mm is not None:
            self._rows = self._bytes = None   # numpy views must go before the mapping closes
            self._mm.close()
            self._mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PleReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- geometry ----------------------------------------------------------------------------------

    def row_offsets(self, ids: np.ndarray) -> np.ndarray:
        """File byte offset of each row id (int64)."""
        h = self.header
        ids = ids.astype(np.int64)
        return h.data_offset + (ids // h.rows_per_group) * h.group_bytes + (ids % h.rows_per_group) * h.row_stride

    def pages_of(self, ids: np.ndarray) -> np.ndarray:
        """Sorted distinct page indices covered by the byte ranges of rows `ids`."""
        offs = self.row_offsets(np.asarray(ids))
        first, last = offs // PAGE_SIZE, (offs + self.header.row_bytes - 1) // PAGE_SIZE
        span = int((last - first).max()) + 1 if len(offs) else 0
        pages = [first + k for k in range(span)]
        return np.unique(np.concatenate([p[p <= last] for p in pages])) if pages else np.empty(0, np.int64)

    def _check_ids(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.size == 0:
            return ids.reshape(0).astype(np.int64)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"token_ids: expected a 1-D sequence of integers, found shape {list(ids.shape)} "
                             f"dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.header.vocab_size))
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"token_ids[{i}]: expected an id in [0, {self.header.vocab_size}), found {int(ids[i])}"
                             f" ({len(bad)} out of range)")
        return ids.astype(np.int64)

    # -- fetching ----------------------------------------------------------------------------------

    def fetch(self, token_ids, dtype=None, strategy: str | None = None) -> np.ndarray:
        """Rows of `token_ids` in prompt order: float32 [T, L, P], or stored bytes [T, row_bytes] if dtype='stored'.

        Ids are deduplicated and every unique row's read is issued at once (see `strategy`).
        """
        if dtype not in (None, "float32", np.float32, "stored"):
            raise ValueError(f"dtype: expected None, 'float32' or 'stored', found {dtype!r}")
        strategy = strategy or DEFAULT_STRATEGY
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, found {strategy!r}")
        if self._mm is None:
            raise ValueError(f"{self.path}: reader is closed")
        h = self.header
        ids = self._check_ids(token_ids)
        t0 = time.perf_counter()
        uniq, inverse = np.unique(ids, return_inverse=True)                          # sorted unique ids
        if len(uniq) == 0:
            stored, calls = np.empty((0, h.row_bytes), np.uint8), 0
        elif strategy == "willneed":
            stored, calls = self._read_willneed(uniq)
        else:
            stored, calls = self._read_preadv(uniq)
        wall = time.perf_counter() - t0
        self.fetch_log.append(FetchStats(tokens=len(ids), unique_rows=len(uniq),
                                         bytes_requested=len(uniq) * h.row_bytes,
                                         pages_touched=len(self.pages_of(uniq)), read_calls=calls,
                                         wall_s=wall, strategy=strategy))
        if dtype == "stored":
            return stored[inverse]                                                   # [T, row_bytes]
        return decode_rows(stored[inverse], h)   # [T, L, P]; gathering bytes is cheaper than gathering floats

    def fetch_one(self, token_id: int) -> np.ndarray:
        """One row for a decode step: float32 [L, P]."""
        return self.fetch([int(token_id)])[0]

    def _read_willneed(self, uniq: np.ndarray) -> tuple[np.ndarray, int]:
        """Ask the kernel for every row's pages at once (async readahead), then copy the rows out."""
        h = self.header
        offs = self.row_offsets(uniq)
        starts = offs // PAGE_SIZE * PAGE_SIZE
        ends = offs + h.row_bytes                           # sorted, like starts: rows are sorted
        breaks = np.flatnonzero(starts[1:] > ends[:-1]) + 1  # rows whose pages do not touch the previous row's
        lo = starts[np.concatenate([[0], breaks])].tolist()
        hi = ends[np.concatenate([breaks - 1, [len(ends) - 1]])].tolist()
        for a, b in zip(lo, hi):   # one call per run of rows sharing pages
            self._mm.madvise(mmap.MADV_WILLNEED, a, b - a)
        calls = len(lo)
        g, j = uniq // h.rows_per_group, uniq % h.rows_per_group
        return self._rows[g, j], calls                                               # [U, row_bytes] copy

    def _read_preadv(self, uniq: np.ndarray) -> tuple[np.ndarray, int]:
        """QUEUE_DEPTH threads each preadv one row at a time: that many reads in flight."""
        h = self.header
        out = np.empty((len(uniq), h.row_bytes), np.uint8)                           # [U, row_bytes]
        offs = self.row_offsets(uniq).tolist()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(QUEUE_DEPTH, thread_name_prefix="ple-read")
        view = memoryview(out.reshape(-1))
        rb = h.row_bytes

        def worker(lane: int) -> None:
            for i in range(lane, len(offs), QUEUE_DEPTH):
                got = os.preadv(self.fd, [view[i * rb: (i + 1) * rb]], offs[i])
                if got != h.row_bytes:
                    raise OSError(f"{self.path}: short read at offset {offs[i]}: {got} of {h.row_bytes} bytes")

        lanes = min(QUEUE_DEPTH, len(offs))
        for fut in [self._pool.submit(worker, k) for k in range(lanes)]:
            fut.result()
        return out, len(offs)

    @property
    def fetch_totals(self) -> FetchStats:
        return sum(self.fetch_log, FetchStats(strategy="total"))

    # -- page cache --------------------------------------------------------------------------------

    def resident_pages(self) -> np.ndarray:
        """Indices of this file's pages now in the page cache (mincore over the whole mapping)."""
        n = self.header.file_bytes // PAGE_SIZE
        vec = (ctypes.c_ubyte * n)()
        if _libc.mincore(ctypes.c_void_p(self._addr), self.header.file_bytes, vec) != 0:
            raise OSError(ctypes.get_errno(), f"mincore on {self.path} failed")
        return np.flatnonzero(np.frombuffer(vec, np.uint8) & 1)

    def resident_bytes(self) -> int:
        return len(self.resident_pages()) * PAGE_SIZE

    def evict(self) -> None:
        """Drop this file's pages from our mapping and from the page cache (for cold measurements)."""
        self._mm.madvise(mmap.MADV_DONTNEED)   # mapped pages are skipped by fadvise otherwise
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    # -- checksums ---------------------------------------------------------------------------------

    def verify(self) -> None:
        """Check the identity and every block CRC; raise PleFormatError naming the first damaged block."""
        self._verify_blocks(range(self.header.num_blocks))

    def verify_rows(self, token_ids) -> None:
        """Check only the blocks that hold rows `token_ids`."""
        h = self.header
        ids = self._check_ids(token_ids)
        blocks = np.unique(ids // h.rows_per_group // h.block_groups)
        self._verify_blocks(blocks.tolist())

    def _verify_blocks(self, blocks) -> None:
        h = self.header
        table = os.pread(self.fd, h.checksum_table_bytes, h.checksum_offset)
        identity = hashlib.sha256(bytes(self._mm[:IDENTITY_PREFIX]) + table).digest()
        if identity != h.identity:
            raise PleFormatError(f"{self.path}: identity: expected {h.identity.hex()} (header), found "
                                 f"{identity.hex()} (sha256 of header[0:{IDENTITY_PREFIX}] + checksum table)")
        crcs = struct.unpack(f"<{h.num_blocks}I", table)
        block_bytes = h.block_groups * h.group_bytes
        with _UncachedFile(self.path) as f:
            for b in blocks:
                start = h.data_offset + b * block_bytes
                length = min(block_bytes, h.checksum_offset - start)
                crc = f.crc32(start, length)
                if crc != crcs[b]:
                    r0 = b * h.block_groups * h.rows_per_group
                    r1 = min(h.vocab_size, r0 + h.block_groups * h.rows_per_group)
                    raise PleFormatError(
                        f"{self.path}: data block {b} (bytes [{start}, {start + length}), rows [{r0}, {r1})): "
                        f"CRC-32 expected {crcs[b]:#010x} (checksum table), found {crc:#010x}")


class _UncachedFile:
    """Reads for verify: O_DIRECT where the filesystem allows it, so checking 2 GB does not fill the cache."""

    def __init__(self, path: str):
        try:
            self.fd, self.direct = os.open(path, os.O_RDONLY | os.O_DIRECT), True
        except OSError:
            self.fd, self.direct = os.open(path, os.O_RDONLY), False
        self.buf = mmap.mmap(-1, VERIFY_CHUNK)   # page-aligned, as O_DIRECT needs

    def crc32(self, start: int, length: int) -> int:
        crc, done = 0, 0
        view = memoryview(self.buf)
        while done < length:
            want = min(VERIFY_CHUNK, length - done)   # start and length are page multiples
            got = os.preadv(self.fd, [view[:want]], start + done)
            if got != want:
                raise PleFormatError(f"short read at offset {start + done}: {got} of {want} bytes")
            crc = zlib.crc32(view[:want], crc)
            done += want
        if not self.direct:
            os.posix_fadvise(self.fd, start, length, os.POSIX_FADV_DONTNEED)
        return crc

    def __enter__(self) -> "_UncachedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.buf.close()
        os.close(self.fd)


def open(path) -> PleReader:   # noqa: A001 - the package's public name, as in gemma_edge.ple_store.open
    """Open and validate a `.ple` file; raise PleFormatError on anything FORMAT.md does not allow."""
    return PleReader(path)


def evict(path) -> None:
    """Drop a file's pages from the page cache (pages mapped by a live reader: use reader.evict())."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fdatasync(fd)   # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
