"""The `.ple` format's constants, header struct and layout chooser, shared by writer and reader (see FORMAT.md)."""
from __future__ import annotations

import enum
import math
import struct
import zlib
from dataclasses import dataclass, fields

MAGIC = b"GEMMAPLE"
VERSION_MAJOR = 1
VERSION_MINOR = 1              # 1: flags bit 0 (ROW_CRC), a CRC-32 after every row
HEADER_BYTES = 4096
PAGE_SIZE = 4096
DATA_OFFSET = HEADER_BYTES
MAX_ROWS_PER_GROUP = 64
STRIDE_ALIGN = 16
BLOCK_TARGET_BYTES = 1 << 20   # a checksum block is about 1 MiB of data
IDENTITY_PREFIX = 144          # identity = sha256(header[0:144] + checksum table)
CRC_COVERED = 176              # header_crc32 covers header[0:176)
FLAG_ROW_CRC = 1               # flags bit 0: each row is followed by the CRC-32 of its payload (u32, inside the stride)
ROW_CRC_BYTES = 4


class StoredDtype(enum.IntEnum):
    """How values are stored in a row (header field `dtype`)."""
    FP32 = 0
    BF16 = 1
    INT8 = 2
    INT4 = 3

    @classmethod
    def parse(cls, name: "str | StoredDtype") -> "StoredDtype":
        if isinstance(name, StoredDtype):
            return name
        try:
            return cls[str(name).upper()]
        except KeyError:
            raise ValueError(f"dtype: expected one of 'fp32', 'bf16', 'int8', 'int4', found {name!r}") from None

    @property
    def quantized(self) -> bool:
        return self in (StoredDtype.INT8, StoredDtype.INT4)

    @property
    def qmax(self) -> int:
        """Largest stored magnitude of a quantized value: q in [-qmax, qmax]."""
        return {StoredDtype.INT8: 127, StoredDtype.INT4: 7}[self]


class QuantScheme(enum.IntEnum):
    NONE = 0
    SYMMETRIC_ABSMAX = 1


def values_bytes(dtype: StoredDtype, count: int) -> int:
    """Bytes of `count` stored values (int4 packs two a byte; an odd count leaves the last high nibble 0)."""
    if dtype == StoredDtype.FP32:
        return 4 * count
    if dtype == StoredDtype.BF16:
        return 2 * count
    if dtype == StoredDtype.INT8:
        return count
    return (count + 1) // 2


def row_payload_bytes(dtype: StoredDtype, num_layers: int, ple_dim: int) -> int:
    """One row: L fp32 scales (quantized dtypes only), then L·P values."""
    scales = 4 * num_layers if dtype.quantized else 0
    return scales + values_bytes(dtype, num_layers * ple_dim)


# ---------------------------------------------------------------------------------------------------
# Layout: where rows sit inside page-aligned groups
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    row_bytes: int        # payload bytes of one row
    row_stride: int       # bytes between consecutive rows of a group (multiple of 16)
    rows_per_group: int
    group_bytes: int      # multiple of page_size
    page_size: int = PAGE_SIZE
    crc_bytes: int = 0    # ROW_CRC_BYTES when each row is followed by its CRC-32 (flags bit 0), else 0

    @property
    def record_bytes(self) -> int:
        """What a fetch reads for one row: its payload and, with ROW_CRC, the CRC after it."""
        return self.row_bytes + self.crc_bytes

    @property
    def pages_per_row(self) -> int:
        """The minimum pages any byte range of record_bytes can touch; the chooser guarantees every row hits it."""
        return -(-self.record_bytes // self.page_size)

    @property
    def worst_pages_per_row(self) -> int:
        """The most pages any row's record of a group actually touches (equals pages_per_row for a chooser layout)."""
        ps, rec = self.page_size, self.record_bytes
        return max((j * self.row_stride + rec - 1) // ps - (j * self.row_stride) // ps + 1
                   for j in range(self.rows_per_group))

    @property
    def bytes_per_row(self) -> float:
        return self.group_bytes / self.rows_per_group

    @property
    def padding_overhead(self) -> float:
        """File bytes per row over payload bytes per row, minus one (0.013 = +1.3 %)."""
        return self.bytes_per_row / self.row_bytes - 1.0

    def num_groups(self, vocab_size: int) -> int:
        return -(-vocab_size // self.rows_per_group)

    def row_offset(self, t: int) -> int:
        """Byte offset of row t in the file."""
        return DATA_OFFSET + (t // self.rows_per_group) * self.group_bytes + (t % self.rows_per_group) * self.row_stride


def _rows_that_fit(row_bytes: int, stride: int, page_size: int, limit: int) -> int:
    """How many rows j = 0, 1, ... in a row satisfy (j·stride mod page) + row_bytes ≤ min_pages·page."""
    budget = -(-row_bytes // page_size) * page_size - row_bytes
    n = 0
    while n < limit and (n * stride) % page_size <= budget:
        n += 1
    return n


def choose_layout(row_bytes: int, page_size: int = PAGE_SIZE, row_crc: bool = True) -> Layout:
    """The group layout of FORMAT.md: every row touches its minimum page count, smallest file among those.

    With `row_crc` a row's record is its payload and the 4-byte CRC after it, and the search places records:
    the CRC arrives in the same pages as the row. Searches rows_per_group n ≤ 64 and strides (multiples of
    16) from the record size up to min_pages·page; a larger stride only grows the file. Ties go to the
    smaller group, then the smaller stride.
    """
    if row_bytes <= 0:
        raise ValueError(f"row_bytes: expected > 0, found {row_bytes}")
    payload, crc_bytes = row_bytes, ROW_CRC_BYTES if row_crc else 0
    row_bytes = payload + crc_bytes   # the search below places whole records
    min_pages = -(-row_bytes // page_size)
    first = -(-row_bytes // STRIDE_ALIGN) * STRIDE_ALIGN
    best = None   # (group_bytes, rows, stride)
    for stride in range(first, max(first, min_pages * page_size) + 1, STRIDE_ALIGN):
        fit = _rows_that_fit(row_bytes, stride, page_size, MAX_ROWS_PER_GROUP)
        for n in range(1, fit + 1):
            group = -(-((n - 1) * stride + row_bytes) // page_size) * page_size
            if best is None:
                best = (group, n, stride)
                continue
            # compare group/n exactly: group·best_n vs best_group·n
            lhs, rhs = group * best[1], best[0] * n
            if lhs < rhs or (lhs == rhs and (group, stride) < (best[0], best[2])):
                best = (group, n, stride)
    group, n, stride = best
    return Layout(row_bytes=payload, row_stride=stride, rows_per_group=n, group_bytes=group, page_size=page_size,
                  crc_bytes=crc_bytes)


# ---------------------------------------------------------------------------------------------------
# Header: 4096 bytes, fields at fixed offsets (one entry per row of FORMAT.md's table)
# ---------------------------------------------------------------------------------------------------

HEADER_FIELDS = [   # (offset, struct code, name)
    (0, "8s", "magic"),
    (8, "H", "version_major"),
    (10, "H", "version_minor"),
    (12, "I", "header_bytes"),
    (16, "I", "vocab_size"),
    (20, "I", "num_layers"),
    (24, "I", "ple_dim"),
    (28, "I", "dtype"),
    (32, "I", "quant_scheme"),
    (36, "I", "quant_group_size"),
    (40, "I", "row_bytes"),
    (44, "I", "row_stride"),
    (48, "I", "rows_per_group"),
    (52, "I", "group_bytes"),
    (56, "I", "page_size"),
    (60, "I", "block_groups"),
    (64, "I", "num_blocks"),
    (68, "I", "flags"),
    (72, "Q", "data_offset"),
    (80, "Q", "data_bytes"),
    (88, "Q", "checksum_offset"),
    (96, "Q", "file_bytes"),
    (104, "f", "embed_scale"),
    (108, "I", "reserved1"),
    (112, "32s", "model_hash"),
    (144, "32s", "identity"),
    (176, "I", "header_crc32"),
]
HEADER_STRUCT = struct.Struct("<" + "".join(code for _, code, _ in HEADER_FIELDS))
assert all(struct.calcsize("<" + "".join(c for _, c, _ in HEADER_FIELDS[:i])) == off
           for i, (off, _, _) in enumerate(HEADER_FIELDS)), "header field offsets drifted from FORMAT.md"


@dataclass
class PleHeader:
    """The decoded header; `pack()` gives the 4096 bytes (header_crc32 recomputed)."""
    magic: bytes
    version_major: int
    version_minor: int
    header_bytes: int
    vocab_size: int
    num_layers: int
    ple_dim: int
    dtype: int
    quant_scheme: int
    quant_group_size: int
    row_bytes: int
    row_stride: int
    rows_per_group: int
    group_bytes: int
    page_size: int
    block_groups: int
    num_blocks: int
    flags: int
    data_offset: int
    data_bytes: int
    checksum_offset: int
    file_bytes: int
    embed_scale: float
    reserved1: int
    model_hash: bytes
    identity: bytes
    header_crc32: int

    @classmethod
    def unpack(cls, buf: bytes) -> "PleHeader":
        return cls(*HEADER_STRUCT.unpack_from(buf, 0))

    def pack(self) -> bytes:
        """4096 header bytes with header_crc32 set from bytes [0, 176)."""
        values = [getattr(self, f.name) for f in fields(self)]
        raw = bytearray(HEADER_BYTES)
        HEADER_STRUCT.pack_into(raw, 0, *values)
        self.header_crc32 = zlib.crc32(bytes(raw[:CRC_COVERED]))
        struct.pack_into("<I", raw, CRC_COVERED, self.header_crc32)
        return bytes(raw)

    @property
    def stored_dtype(self) -> StoredDtype:
        return StoredDtype(self.dtype)

    @property
    def row_crc(self) -> bool:
        """Whether each row is followed by the CRC-32 of its payload (flags bit 0, minor version 1)."""
        return bool(self.flags & FLAG_ROW_CRC)

    @property
    def record_bytes(self) -> int:
        return self.row_bytes + (ROW_CRC_BYTES if self.row_crc else 0)

    @property
    def layout(self) -> Layout:
        return Layout(self.row_bytes, self.row_stride, self.rows_per_group, self.group_bytes, self.page_size,
                      ROW_CRC_BYTES if self.row_crc else 0)

    @property
    def num_groups(self) -> int:
        return -(-self.vocab_size // self.rows_per_group)

    @property
    def checksum_table_bytes(self) -> int:
        return 4 * self.num_blocks


def block_groups_for(group_bytes: int) -> int:
    return max(1, BLOCK_TARGET_BYTES // group_bytes)


def file_bytes_for(checksum_offset: int, num_blocks: int, page_size: int = PAGE_SIZE) -> int:
    """The checksum table is padded with zeros to a page boundary, which ends the file."""
    return checksum_offset + math.ceil(4 * num_blocks / page_size) * page_size
