"""The `.ple` reader: validates the header, maps the file read-only and fetches a prompt's rows in one batch."""
from __future__ import annotations

import collections
import collections.abc
import contextlib
import ctypes
import hashlib
import math
import mmap
import os
import stat
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .format import (
    CRC_COVERED,
    DATA_OFFSET,
    HEADER_BYTES,
    IDENTITY_PREFIX,
    MAGIC,
    PAGE_SIZE,
    ROW_CRC_BYTES,
    VERSION_MAJOR,
    PleHeader,
    QuantScheme,
    StoredDtype,
    file_bytes_for,
    values_bytes,
)

STRATEGIES = ("willneed", "preadv")
# willneed is the default: on cold E2B fetches it was faster than preadv at short prompts and tied at long ones
# (`python bench/ple_fetch.py`; bench/RESULTS.md, "Figures behind design choices"), and it needs no thread pool.
DEFAULT_STRATEGY = "willneed"
QUEUE_DEPTH = 32                # preadv strategy: reads in flight at once
VERIFY_CHUNK = 8 << 20          # verify reads this many bytes a call
FETCH_LOG_MAX = 1024            # fetch_log keeps this many recent fetches; fetch_totals counts all of them

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


class FetchLog(collections.abc.Sequence):
    """The most recent `maxlen` fetches, oldest first (a sequence: index, slice, len), and exact running totals.

    A reader serving a long session fetches once per token: an unbounded list would grow forever.
    """

    def __init__(self, maxlen: int = FETCH_LOG_MAX):
        self._recent: collections.deque[FetchStats] = collections.deque(maxlen=maxlen)
        self._total = FetchStats(strategy="total")
        self._lock = threading.Lock()

    def append(self, st: FetchStats) -> None:
        with self._lock:
            self._recent.append(st)
            self._total = self._total + st

    @property
    def total(self) -> FetchStats:
        """The sum over every fetch ever appended, the ones no longer kept included."""
        return self._total

    def __len__(self) -> int:
        return len(self._recent)

    def __getitem__(self, i):
        with self._lock:
            if isinstance(i, slice):
                return list(self._recent)[i]
            return self._recent[i]

    def __repr__(self) -> str:
        return f"FetchLog({len(self)} recent of maxlen {self._recent.maxlen}, total={self._total})"


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
    record = h.record_bytes   # the row, and its CRC-32 after it when flags has ROW_CRC
    what = f"row_bytes {h.row_bytes} + 4 (flags ROW_CRC)" if h.row_crc else f"row_bytes {h.row_bytes}"
    if h.row_stride % 16 or h.row_stride < record:
        fail("row_stride", f"a multiple of 16 ≥ {what}", h.row_stride)
    last_row_end = (h.rows_per_group - 1) * h.row_stride + record
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
    """A read-only mapping of one `.ple` file; `fetch` is the single batched read for a prompt.

    Opening checks every header field, the file type (a regular file, never waiting on a FIFO or device)
    and the identity (recomputed from the header and the checksum table). Every fetch checks what it
    returns: each row against the CRC-32 stored after it (flags ROW_CRC, minor version 1), or, in a file
    without row CRCs, each data block against the checksum table the first time a fetch touches it.
    A damaged row raises PleFormatError naming the file and the row. Fetches may run from several threads
    at once; `close` waits for the running ones, and any call after it raises ValueError.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._pool = None
        self._mm = None
        self._lock = threading.Condition()
        self._active = 0          # calls now using the descriptor or the mapping
        self._closed = False
        self.fetch_log = FetchLog()
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer forever; O_NOCTTY: a terminal given
        # as the path must not become ours. Neither changes anything for a regular file.
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(self.fd)   # the type of what we opened, not of what the path named a moment ago
            if not stat.S_ISREG(st.st_mode):
                raise PleFormatError(f"{self.path}: file type: expected a regular file, found {_file_kind(st.st_mode)}")
            os.set_blocking(self.fd, True)
            # no readahead on this descriptor, before the first read (the header) pulls in neighbours
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
            raw = os.pread(self.fd, HEADER_BYTES, 0)
            self.header = validate_header(raw, self.path, st.st_size)
            h = self.header
            table = self._read_table()
            self._check_identity(raw, table)
            self._block_crcs = struct.unpack(f"<{h.num_blocks}I", table)
            self._mm = mmap.mmap(self.fd, st.st_size, access=mmap.ACCESS_READ)
            self._mm.madvise(mmap.MADV_RANDOM)   # a fault reads its page only, not its neighbours
        except BaseException:
            self.close()
            raise
        self._bytes = np.frombuffer(self._mm, np.uint8)                               # [file_bytes]
        self._addr = self._bytes.ctypes.data
        self._records = np.lib.stride_tricks.as_strided(             # [groups, rows/group, record_bytes]
            self._bytes[h.data_offset:], shape=(h.num_groups, h.rows_per_group, h.record_bytes),
            strides=(h.group_bytes, h.row_stride, 1), writeable=False)
        # files without row CRCs: blocks already checked against the table by a fetch of this reader
        self._block_ok = np.zeros(h.num_blocks, bool) if not h.row_crc else None

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the mapping and the descriptor once no call is using them; later calls raise ValueError."""
        with self._lock:
            self._closed = True
            while self._active:
                self._lock.wait()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if self._mm is not None:
                self._records = self._bytes = None   # numpy views must go before the mapping closes
                self._mm.close()
                self._mm = None
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def _open_for_use(self):
        """Holds the reader open for one call: close() waits until every such call has finished."""
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.path}: reader is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._lock.notify_all()

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
        """Sorted distinct page indices covered by rows `ids`: each row's record (payload, then its CRC)."""
        offs = self.row_offsets(np.asarray(ids))
        first, last = offs // PAGE_SIZE, (offs + self.header.record_bytes - 1) // PAGE_SIZE
        span = int((last - first).max()) + 1 if len(offs) else 0
        pages = [first + k for k in range(span)]
        return np.unique(np.concatenate([p[p <= last] for p in pages])) if pages else np.empty(0, np.int64)

    def _check_ids(self, token_ids) -> np.ndarray:
        """Token ids -> int64 [T]; anything but integers in [0, vocab_size) (bools and floats too) -> ValueError."""
        vocab = self.header.vocab_size
        if isinstance(token_ids, (list, tuple)):
            # numpy reads [True, 5] as [1, 5], [0, 2**63] as floats and [2**64] as objects: check the elements
            for i, t in enumerate(token_ids):
                if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
                    raise ValueError(f"token_ids[{i}]: expected an integer id, found {t!r} ({type(t).__name__})")
                if not 0 <= t < vocab:
                    raise ValueError(f"token_ids[{i}]: expected an id in [0, {vocab}), found {t}")
            return np.array(token_ids, np.int64).reshape(-1)
        ids = np.asarray(token_ids)
        if ids.size == 0 and ids.ndim == 1:
            return ids.astype(np.int64)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"token_ids: expected a 1-D sequence of integers, found shape {list(ids.shape)} "
                             f"dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids >= vocab))
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"token_ids[{i}]: expected an id in [0, {vocab}), found {int(ids[i])}"
                             f" ({len(bad)} out of range)")
        return ids.astype(np.int64)

    # -- fetching ----------------------------------------------------------------------------------

    def fetch(self, token_ids, dtype=None, strategy: str | None = None) -> np.ndarray:
        """Rows of `token_ids` in prompt order: float32 [T, L, P], or stored bytes [T, row_bytes] if dtype='stored'.

        Ids are deduplicated and every unique row's read is issued at once (see `strategy`). Every row
        returned has been checked (the class docstring says how); a damaged one raises PleFormatError.
        """
        if dtype not in (None, "float32", np.float32, "stored"):
            raise ValueError(f"dtype: expected None, 'float32' or 'stored', found {dtype!r}")
        strategy = strategy or DEFAULT_STRATEGY
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, found {strategy!r}")
        with self._open_for_use():
            h = self.header
            ids = self._check_ids(token_ids)
            t0 = time.perf_counter()
            uniq, inverse = np.unique(ids, return_inverse=True)                      # sorted unique ids
            if len(uniq) == 0:
                records, calls = np.empty((0, h.record_bytes), np.uint8), 0
            else:
                if not h.row_crc:
                    self._check_blocks_of(uniq)
                if strategy == "willneed":
                    records, calls = self._read_willneed(uniq)
                else:
                    records, calls = self._read_preadv(uniq)
                if h.row_crc:
                    self._check_row_crcs(uniq, records)
            stored = records[:, : h.row_bytes]                                       # [U, row_bytes]
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
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
            raise ValueError(f"token_id: expected an integer id, found {token_id!r} ({type(token_id).__name__})")
        return self.fetch([token_id])[0]

    def _read_willneed(self, uniq: np.ndarray) -> tuple[np.ndarray, int]:
        """Ask the kernel for every row's pages at once (async readahead), then copy the records out."""
        h = self.header
        offs = self.row_offsets(uniq)
        starts = offs // PAGE_SIZE * PAGE_SIZE
        ends = offs + h.record_bytes                        # sorted, like starts: rows are sorted
        breaks = np.flatnonzero(starts[1:] > ends[:-1]) + 1  # rows whose pages do not touch the previous row's
        lo = starts[np.concatenate([[0], breaks])].tolist()
        hi = ends[np.concatenate([breaks - 1, [len(ends) - 1]])].tolist()
        for a, b in zip(lo, hi):   # one call per run of rows sharing pages
            self._mm.madvise(mmap.MADV_WILLNEED, a, b - a)
        calls = len(lo)
        g, j = uniq // h.rows_per_group, uniq % h.rows_per_group
        return self._records[g, j], calls                                            # [U, record_bytes] copy

    def _read_preadv(self, uniq: np.ndarray) -> tuple[np.ndarray, int]:
        """QUEUE_DEPTH threads each preadv one row at a time: that many reads in flight."""
        h = self.header
        rb = h.record_bytes
        out = np.empty((len(uniq), rb), np.uint8)                                    # [U, record_bytes]
        offs = self.row_offsets(uniq).tolist()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(QUEUE_DEPTH, thread_name_prefix="ple-read")
        view = memoryview(out.reshape(-1))

        def worker(lane: int) -> None:
            for i in range(lane, len(offs), QUEUE_DEPTH):
                got = os.preadv(self.fd, [view[i * rb: (i + 1) * rb]], offs[i])
                if got != rb:
                    raise PleFormatError(f"{self.path}: row at offset {offs[i]}: expected {rb} bytes, found a "
                                         f"short read of {got} (the file shrank)")

        lanes = min(QUEUE_DEPTH, len(offs))
        for fut in [self._pool.submit(worker, k) for k in range(lanes)]:
            fut.result()
        return out, len(offs)

    def _check_row_crcs(self, uniq: np.ndarray, records: np.ndarray) -> None:
        """Each record's payload against the CRC-32 stored after it: the bytes about to be returned."""
        h = self.header
        rb = h.row_bytes
        want = np.ascontiguousarray(records[:, rb: rb + ROW_CRC_BYTES]).view("<u4").reshape(-1).tolist()
        flat = memoryview(np.ascontiguousarray(records).reshape(-1))
        stride = records.shape[1]
        for k, crc in enumerate(want):
            found = zlib.crc32(flat[k * stride: k * stride + rb])
            if found != crc:
                t = int(uniq[k])
                off = int(self.row_offsets(uniq[k: k + 1])[0])
                raise PleFormatError(f"{self.path}: row {t} (bytes [{off}, {off + rb})): CRC-32 expected {crc:#010x} "
                                     f"(stored after the row), found {found:#010x}")

    def _check_blocks_of(self, uniq: np.ndarray) -> None:
        """A file without row CRCs: check each block holding one of these rows, once per reader."""
        h = self.header
        blocks = np.unique(uniq // h.rows_per_group // h.block_groups)
        todo = blocks[~self._block_ok[blocks]]
        if len(todo):
            self._verify_blocks(todo.tolist())
            self._block_ok[todo] = True

    @property
    def fetch_totals(self) -> FetchStats:
        """The sum over every fetch of this reader (exact, though fetch_log keeps only the recent ones)."""
        return self.fetch_log.total

    # -- page cache --------------------------------------------------------------------------------

    def resident_pages(self) -> np.ndarray:
        """Indices of this file's pages now in the page cache (mincore over the whole mapping)."""
        with self._open_for_use():
            n = self.header.file_bytes // PAGE_SIZE
            vec = (ctypes.c_ubyte * n)()
            if _libc.mincore(ctypes.c_void_p(self._addr), self.header.file_bytes, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore on {self.path} failed")
            return np.flatnonzero(np.frombuffer(vec, np.uint8) & 1)

    def resident_bytes(self) -> int:
        return len(self.resident_pages()) * PAGE_SIZE

    def evict(self) -> None:
        """Drop this file's pages from our mapping and from the page cache (for cold measurements)."""
        with self._open_for_use():
            self._mm.madvise(mmap.MADV_DONTNEED)   # mapped pages are skipped by fadvise otherwise
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    # -- checksums ---------------------------------------------------------------------------------

    def _read_table(self) -> bytes:
        h = self.header
        table = os.pread(self.fd, h.checksum_table_bytes, h.checksum_offset)
        if len(table) != h.checksum_table_bytes:
            raise PleFormatError(f"{self.path}: checksum table: expected {h.checksum_table_bytes} bytes at "
                                 f"offset {h.checksum_offset}, found {len(table)} (the file shrank)")
        return table

    def _check_identity(self, header: bytes, table: bytes) -> None:
        """The header's identity field against SHA-256(header[0:144] + checksum table), recomputed."""
        h = self.header
        identity = hashlib.sha256(header[:IDENTITY_PREFIX] + table).digest()
        if identity != h.identity:
            raise PleFormatError(f"{self.path}: identity: expected {h.identity.hex()} (header), found "
                                 f"{identity.hex()} (sha256 of header[0:{IDENTITY_PREFIX}] + checksum table)")

    def verify(self) -> None:
        """Check the identity and every block CRC; raise PleFormatError naming the first damaged block."""
        with self._open_for_use():
            self._check_identity(os.pread(self.fd, HEADER_BYTES, 0), self._read_table())
            self._verify_blocks(range(self.header.num_blocks))

    def verify_rows(self, token_ids) -> None:
        """Check only the blocks that hold rows `token_ids`."""
        with self._open_for_use():
            h = self.header
            ids = self._check_ids(token_ids)
            blocks = np.unique(ids // h.rows_per_group // h.block_groups)
            self._verify_blocks(blocks.tolist())

    def _verify_blocks(self, blocks) -> None:
        """Each block against the checksum table read at open, with reads that do not fill the page cache."""
        h = self.header
        block_bytes = h.block_groups * h.group_bytes
        with _UncachedFile(self.path, self.fd) as f:
            for b in blocks:
                start = h.data_offset + b * block_bytes
                length = min(block_bytes, h.checksum_offset - start)
                crc = f.crc32(start, length)
                if crc != self._block_crcs[b]:
                    r0 = b * h.block_groups * h.rows_per_group
                    r1 = min(h.vocab_size, r0 + h.block_groups * h.rows_per_group)
                    raise PleFormatError(
                        f"{self.path}: data block {b} (bytes [{start}, {start + length}), rows [{r0}, {r1})): "
                        f"CRC-32 expected {self._block_crcs[b]:#010x} (checksum table), found {crc:#010x}")


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return f"a file of mode {stat.S_IFMT(mode):#o}"


class _UncachedFile:
    """Reads for verify: O_DIRECT where the filesystem allows it, so checking 2 GB does not fill the cache.

    It reopens the reader's own descriptor (/proc/self/fd), never the path: the path may name another file by now.
    """

    def __init__(self, path: str, fd: int):
        self.path = path
        try:
            self.fd, self.direct = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC), True
        except OSError:
            self.fd, self.direct = os.dup(fd), False
        self.buf = mmap.mmap(-1, VERIFY_CHUNK)   # page-aligned, as O_DIRECT needs

    def crc32(self, start: int, length: int) -> int:
        crc, done = 0, 0
        view = memoryview(self.buf)
        while done < length:
            want = min(VERIFY_CHUNK, length - done)   # start and length are page multiples
            got = os.preadv(self.fd, [view[:want]], start + done)
            if got != want:
                raise PleFormatError(f"{self.path}: data at offset {start + done}: expected {want} bytes, found a "
                                     f"short read of {got} (the file shrank)")
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
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)   # a FIFO must not block us
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise PleFormatError(f"{path}: file type: expected a regular file, found {_file_kind(mode)}")
        os.fdatasync(fd)   # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
