"""Streaming, atomic writer of `.ple` files: row chunks in, quantized page-aligned groups and CRCs out."""
from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from tqdm import tqdm

from .format import (
    DATA_OFFSET,
    FLAG_ROW_CRC,
    HEADER_BYTES,
    IDENTITY_PREFIX,
    MAGIC,
    PAGE_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    Layout,
    PleHeader,
    QuantScheme,
    StoredDtype,
    block_groups_for,
    choose_layout,
    file_bytes_for,
    row_payload_bytes,
)

SLICE_BYTES = 16 << 20   # rows are converted and quantized ~16 MiB of fp32 at a time: bounded memory


@dataclass
class QuantError:
    """Storage error in source units (before embed_scale); rel = |error| / absmax of the value's (row, layer) group."""
    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0
    mean_rel: float = 0.0


@dataclass
class WriteReport:
    path: str
    bytes: int
    identity: str          # hex of the header's identity field
    rows: int
    dtype: str
    layout: Layout
    quant_error: QuantError
    seconds: float


class _ErrorAccumulator:
    def __init__(self):
        self.max_abs = self.max_rel = 0.0
        self.sum_abs = self.sum_rel = 0.0
        self.count = 0

    def add(self, err: torch.Tensor, absmax: torch.Tensor) -> None:
        """err [n, L, P] absolute errors; absmax [n, L] of the same groups."""
        self.count += err.numel()
        group_sum = err.sum(-1).double()                     # [n, L]; f32 over P values, then f64
        group_max = err.amax(-1)                             # [n, L]
        self.max_abs = max(self.max_abs, float(group_max.max()))
        self.sum_abs += float(group_sum.sum())
        nz = absmax > 0   # an all-zero group is stored exactly
        if bool(nz.any()):
            self.max_rel = max(self.max_rel, float((group_max[nz] / absmax[nz]).max()))
            self.sum_rel += float((group_sum[nz] / absmax[nz].double()).sum())

    def result(self) -> QuantError:
        n = max(self.count, 1)
        return QuantError(self.max_abs, self.sum_abs / n, self.max_rel, self.sum_rel / n)


# ---------------------------------------------------------------------------------------------------
# Encoding one slice of rows into row payloads
# ---------------------------------------------------------------------------------------------------

def encode_rows(x: torch.Tensor, dtype: StoredDtype, num_layers: int, ple_dim: int,
                errors: _ErrorAccumulator | None = None, first_row: int = 0) -> np.ndarray:
    """x [n, L·P] float32 -> row payloads [n, row_bytes] uint8 (scales, then layer-major values)."""
    n = x.shape[0]
    xg = x.view(n, num_layers, ple_dim)                      # [n, L, P]
    absmax = xg.abs().amax(-1)                               # [n, L]
    if not bool(torch.isfinite(absmax).all()):
        bad = int(first_row + torch.nonzero(~torch.isfinite(absmax))[0, 0])
        raise ValueError(f"source row {bad}: expected finite values, found NaN or inf")
    payload = np.empty((n, row_payload_bytes(dtype, num_layers, ple_dim)), dtype=np.uint8)
    if dtype == StoredDtype.FP32:
        payload[:] = x.numpy().astype("<f4", copy=False).view(np.uint8).reshape(n, -1)
        if errors is not None:
            errors.add(torch.zeros(n, num_layers, 1), absmax)
        return payload
    if dtype == StoredDtype.BF16:
        y = x.to(torch.bfloat16)                             # round-to-nearest-even, as FORMAT.md says
        payload[:] = y.view(torch.int16).numpy().astype("<i2", copy=False).view(np.uint8).reshape(n, -1)
        if errors is not None:
            errors.add((xg - y.float().view(n, num_layers, ple_dim)).abs(), absmax)
        return payload
    qmax = dtype.qmax
    scale = absmax / qmax                                    # [n, L]; 0 for an all-zero group
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.where(scale[..., None] > 0, torch.round(xg / safe[..., None]), torch.zeros_like(xg))
    q = q.clamp_(-qmax, qmax).to(torch.int8)                 # [n, L, P]
    if errors is not None:
        errors.add((xg - q.float() * scale[..., None]).abs(), absmax)
    nscale = 4 * num_layers
    payload[:, :nscale] = scale.numpy().astype("<f4", copy=False).view(np.uint8).reshape(n, nscale)
    if dtype == StoredDtype.INT8:
        payload[:, nscale:] = q.view(n, -1).numpy().view(np.uint8)
        return payload
    nib = (q.view(n, -1).numpy().view(np.uint8) & 0x0F)      # [n, L·P] two's-complement nibbles
    if nib.shape[1] % 2:
        nib = np.concatenate([nib, np.zeros((n, 1), np.uint8)], axis=1)
    payload[:, nscale:] = nib[:, 0::2] | (nib[:, 1::2] << 4)   # value 2k low nibble, 2k+1 high nibble
    return payload


def _as_float32(chunk, row_at: int, width: int) -> torch.Tensor:
    """One source chunk -> CPU float32 tensor [n, width], with a clear error for a wrong shape or dtype."""
    if isinstance(chunk, torch.Tensor):
        if not chunk.is_floating_point():
            raise ValueError(f"source chunk at row {row_at}: expected a float tensor, found {chunk.dtype}")
        t = chunk.detach()
    elif isinstance(chunk, np.ndarray):
        if chunk.dtype.kind != "f":
            raise ValueError(f"source chunk at row {row_at}: expected a float array, found {chunk.dtype}")
        t = torch.from_numpy(np.asarray(chunk))
    else:
        raise ValueError(f"source chunk at row {row_at}: expected a numpy array or torch tensor, "
                         f"found {type(chunk).__name__}")
    if t.dim() != 2 or t.shape[1] != width:
        raise ValueError(f"source chunk at row {row_at}: expected shape [n, {width}] (L·P), "
                         f"found {list(t.shape)}")
    return t


# ---------------------------------------------------------------------------------------------------
# Groups and checksum blocks
# ---------------------------------------------------------------------------------------------------

def with_row_crcs(payload: np.ndarray) -> np.ndarray:
    """Row payloads [n, row_bytes] -> records [n, row_bytes + 4]: each payload, then its CRC-32 (u32 LE)."""
    n, rb = payload.shape
    records = np.empty((n, rb + 4), np.uint8)
    records[:, :rb] = payload
    crcs = records[:, rb:].view("<u4")                                  # [n, 1]
    for k in range(n):
        crcs[k, 0] = zlib.crc32(payload[k])
    return records


class _GroupSink:
    """Places row records into zero-padded groups, writes them and keeps each block's running CRC-32."""

    def __init__(self, fd: int, layout: Layout, block_groups: int):
        self.fd, self.layout, self.block_groups = fd, layout, block_groups
        self.pending = np.empty((0, layout.record_bytes), np.uint8)   # < rows_per_group rows
        self.groups_written = 0
        self.crcs: list[int] = []
        self.crc = 0

    def add(self, payload: np.ndarray, final: bool = False) -> None:
        lay = self.layout
        rows = np.concatenate([self.pending, payload]) if len(self.pending) else payload
        full = len(rows) // lay.rows_per_group
        if final and len(rows) % lay.rows_per_group:
            full += 1   # the last group: rows past V stay zero
        take = min(len(rows), full * lay.rows_per_group)
        self.pending = rows[take:].copy()
        if full == 0:
            return
        buf = np.zeros((full, lay.group_bytes), np.uint8)            # [G, group_bytes]
        slots = np.lib.stride_tricks.as_strided(
            buf, shape=(full, lay.rows_per_group, lay.record_bytes),
            strides=(lay.group_bytes, lay.row_stride, 1))            # row j of group g at g·group + j·stride
        whole = take // lay.rows_per_group
        slots[:whole] = rows[: whole * lay.rows_per_group].reshape(whole, lay.rows_per_group, lay.record_bytes)
        if whole < full:   # the short last group
            slots[whole, : take - whole * lay.rows_per_group] = rows[whole * lay.rows_per_group: take]
        self._write(buf)

    def _write(self, buf: np.ndarray) -> None:
        g = 0
        while g < len(buf):
            in_block = self.block_groups - self.groups_written % self.block_groups
            part = buf[g: g + in_block]
            view = memoryview(part.reshape(-1))
            self.crc = zlib.crc32(view, self.crc)
            while view:
                view = view[os.write(self.fd, view):]
            g += len(part)
            self.groups_written += len(part)
            if self.groups_written % self.block_groups == 0:
                self.crcs.append(self.crc)
                self.crc = 0

    def finish(self) -> list[int]:
        self.add(np.empty((0, self.layout.record_bytes), np.uint8), final=True)
        if self.groups_written % self.block_groups:
            self.crcs.append(self.crc)   # the last, short block
        return self.crcs


# ---------------------------------------------------------------------------------------------------
# write()
# ---------------------------------------------------------------------------------------------------

def write(path, source: Iterable, *, vocab_size: int, num_layers: int, ple_dim: int, dtype: str,
          embed_scale: float, model_hash: bytes = b"\0" * 32, progress: bool = True,
          row_crc: bool = True) -> WriteReport:
    """Stream `source` (chunks [n, L·P] of rows in order) into a `.ple` file at `path`, atomically.

    Writes to a temporary name in the same directory, header last; fsync, then rename. On any error the
    temporary file is removed and `path` is left as it was. `row_crc=False` writes a minor-version-0 file
    (no CRC after each row), for tests and benchmarks of what readers do with files written before it.
    """
    t0 = time.perf_counter()
    path = os.fspath(path)
    stored = StoredDtype.parse(dtype)
    for name, v in (("vocab_size", vocab_size), ("num_layers", num_layers), ("ple_dim", ple_dim)):
        if not isinstance(v, (int, np.integer)) or not 0 < v < 2**32:
            raise ValueError(f"{name}: expected a positive integer below 2^32, found {v!r}")
    if len(model_hash) != 32:
        raise ValueError(f"model_hash: expected 32 bytes, found {len(model_hash)}")
    width = num_layers * ple_dim
    layout = choose_layout(row_payload_bytes(stored, num_layers, ple_dim), row_crc=row_crc)
    num_groups = layout.num_groups(vocab_size)
    block_groups = block_groups_for(layout.group_bytes)
    num_blocks = -(-num_groups // block_groups)
    slice_rows = max(1, SLICE_BYTES // (4 * width))

    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, bytes(HEADER_BYTES))   # placeholder: all zeros, no magic, until the end
        sink = _GroupSink(fd, layout, block_groups)
        errors = _ErrorAccumulator()
        rows = 0
        with tqdm(total=vocab_size, unit="row", unit_scale=True, disable=not progress,
                  desc=f"write {os.path.basename(path)} ({stored.name.lower()})") as bar:
            for chunk in source:
                t = _as_float32(chunk, rows, width)
                if rows + t.shape[0] > vocab_size:
                    raise ValueError(f"source: expected {vocab_size} rows (vocab_size), found more "
                                     f"({rows + t.shape[0]} after this chunk)")
                for lo in range(0, t.shape[0], slice_rows):
                    x = t[lo: lo + slice_rows].to(torch.float32).contiguous()   # [n, L·P]
                    payload = encode_rows(x, stored, num_layers, ple_dim, errors, first_row=rows + lo)
                    sink.add(with_row_crcs(payload) if row_crc else payload)
                rows += t.shape[0]
                bar.update(t.shape[0])
        if rows != vocab_size:
            raise ValueError(f"source: expected {vocab_size} rows (vocab_size), found {rows}")
        crcs = sink.finish()
        assert sink.groups_written == num_groups and len(crcs) == num_blocks

        data_bytes = num_groups * layout.group_bytes
        checksum_offset = DATA_OFFSET + data_bytes
        file_bytes = file_bytes_for(checksum_offset, num_blocks)
        table = struct.pack(f"<{num_blocks}I", *crcs)
        os.write(fd, table + bytes(file_bytes - checksum_offset - len(table)))

        header = PleHeader(                                  # FORMAT.md's table, field by field
            magic=MAGIC,                                     # 0   b"GEMMAPLE"
            version_major=VERSION_MAJOR,                     # 8   readers refuse another major
            version_minor=VERSION_MINOR if row_crc else 0,   # 10  additions in reserved space only
            header_bytes=HEADER_BYTES,                       # 12  4096: one page
            vocab_size=vocab_size,                           # 16  V rows
            num_layers=num_layers,                           # 20  L
            ple_dim=ple_dim,                                 # 24  P
            dtype=int(stored),                               # 28  0 fp32, 1 bf16, 2 int8, 3 int4
            quant_scheme=int(QuantScheme.SYMMETRIC_ABSMAX if stored.quantized else QuantScheme.NONE),   # 32
            quant_group_size=ple_dim if stored.quantized else 0,   # 36  one scale per (row, layer)
            row_bytes=layout.row_bytes,                      # 40  scales + values of one row
            row_stride=layout.row_stride,                    # 44  row j of a group at j·stride
            rows_per_group=layout.rows_per_group,            # 48
            group_bytes=layout.group_bytes,                  # 52  whole pages
            page_size=PAGE_SIZE,                             # 56  4096
            block_groups=block_groups,                       # 60  groups per CRC block (~1 MiB)
            num_blocks=num_blocks,                           # 64  entries of the CRC table
            flags=FLAG_ROW_CRC if row_crc else 0,            # 68  bit 0: a CRC-32 after every row
            data_offset=DATA_OFFSET,                         # 72  4096, right after the header
            data_bytes=data_bytes,                           # 80  num_groups × group_bytes
            checksum_offset=checksum_offset,                 # 88  data_offset + data_bytes
            file_bytes=file_bytes,                           # 96  any other size is refused
            embed_scale=float(embed_scale),                  # 104 applied after dequantization
            reserved1=0,                                     # 108
            model_hash=bytes(model_hash),                    # 112 source checkpoint's SHA-256, from the caller
            identity=b"\0" * 32,                             # 144 set below: needs header[0:144] first
            header_crc32=0)                                  # 176 set by pack() over header[0:176)
        header.identity = hashlib.sha256(header.pack()[:IDENTITY_PREFIX] + table).digest()
        raw = header.pack()
        os.pwrite(fd, raw, 0)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)   # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return WriteReport(path=path, bytes=file_bytes, identity=header.identity.hex(), rows=rows,
                       dtype=stored.name.lower(), layout=layout, quant_error=errors.result(),
                       seconds=time.perf_counter() - t0)
