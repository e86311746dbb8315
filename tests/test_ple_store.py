"""Tests of the `.ple` store: format contract, writer, reader, validation, checksums and page-cache residency."""
import hashlib
import mmap
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from gemma_edge import ple_store
from gemma_edge.ple_store import PleFormatError
from gemma_edge.ple_store.format import (
    CRC_COVERED,
    HEADER_FIELDS,
    IDENTITY_PREFIX,
    PAGE_SIZE,
    PleHeader,
    StoredDtype,
    choose_layout,
    row_payload_bytes,
)
from gemma_edge.ple_store.inspect import describe

FORMAT_MD = Path(ple_store.__file__).parent / "FORMAT.md"
V, L, P = 1000, 3, 16        # a tiny model: every dtype, several groups
ES = 4.0                     # embed_scale


def make_rows(v=V, width=L * P, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((v, width)).astype(np.float32) * rng.uniform(0.1, 3.0, (v, 1)).astype(np.float32)
    x[3] = 0.0               # an all-zero row: scale 0
    x[4, :P] = 0.0           # one all-zero layer group
    return x


def chunks(x, sizes=(1, 7, 100, 333)):
    """Irregular chunk sizes, so groups straddle chunks."""
    i, k = 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        yield x[i: i + n]
        i, k = i + n, k + 1


def write(path, x, dtype, **kw):
    args = dict(vocab_size=len(x), num_layers=L, ple_dim=P, dtype=dtype, embed_scale=ES, progress=False)
    args.update(kw)
    return ple_store.write(path, chunks(x), **args)


def patch_header(path, offset, fmt, value, fix_crc=True, fix_identity=True):
    """Change one header field; by default also recompute the identity and the header CRC, as a writer would."""
    with open(path, "r+b") as f:
        raw = bytearray(f.read(PAGE_SIZE))
        struct.pack_into(fmt, raw, offset, value)
        if fix_identity:
            h = PleHeader.unpack(bytes(raw))
            f.seek(h.checksum_offset)
            table = f.read(h.checksum_table_bytes)
            raw[IDENTITY_PREFIX: IDENTITY_PREFIX + 32] = hashlib.sha256(bytes(raw[:IDENTITY_PREFIX]) + table).digest()
        if fix_crc:
            struct.pack_into("<I", raw, CRC_COVERED, zlib.crc32(bytes(raw[:CRC_COVERED])))
        f.seek(0)
        f.write(raw)


# ---------------------------------------------------------------------------------------------------
# The format contract
# ---------------------------------------------------------------------------------------------------

def test_header_offsets_match_format_md():
    table = re.findall(r"^\| (\d+) \| [^|]+ \| (\w+) \|", FORMAT_MD.read_text(), re.M)
    documented = {name: int(off) for off, name in table}
    ours = {name: off for off, _, name in HEADER_FIELDS if not name.startswith("reserved")}
    assert len(documented) >= 25
    for name, off in ours.items():
        assert documented.get(name) == off, name


@pytest.mark.parametrize("dtype,rows,pages,pages_per_row", [
    ("int4", 7, 8, 2), ("int8", 4, 9, 3), ("bf16", 2, 9, 5), ("fp32", 1, 9, 9)])
def test_layout_e2b_examples_from_format_md(dtype, rows, pages, pages_per_row):
    lay = choose_layout(row_payload_bytes(StoredDtype.parse(dtype), 35, 256))
    assert (lay.rows_per_group, lay.group_bytes // PAGE_SIZE, lay.pages_per_row) == (rows, pages, pages_per_row)


@pytest.mark.parametrize("row_crc", [True, False])
@pytest.mark.parametrize("row_bytes", [1, 16, 36, 100, 1000, 2047, 2049, 4092, 4095, 4096, 4097, 4620, 5544, 6000,
                                       8191, 9100, 10920, 12289, 17920, 21672, 35840])
def test_layout_every_row_touches_minimum_pages(row_bytes, row_crc):
    lay = choose_layout(row_bytes, row_crc=row_crc)
    record = row_bytes + (4 if row_crc else 0)     # the row and the CRC after it arrive together
    assert lay.record_bytes == record
    minimum = -(-record // PAGE_SIZE)
    assert lay.row_stride % 16 == 0 and lay.row_stride >= record
    assert lay.group_bytes % PAGE_SIZE == 0 and 1 <= lay.rows_per_group <= 64
    for j in range(lay.rows_per_group):
        start = j * lay.row_stride
        assert start + record <= lay.group_bytes
        assert (start + record - 1) // PAGE_SIZE - start // PAGE_SIZE + 1 == minimum, j
    assert lay.worst_pages_per_row == minimum
    # never worse than padding every record to whole pages
    assert lay.bytes_per_row <= minimum * PAGE_SIZE


def test_layout_beats_page_padding_for_e2b_int4():
    lay = choose_layout(4620)
    assert lay.padding_overhead < 0.02    # page padding would cost +77 %


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("strategy", ["willneed", "preadv"])
def test_round_trip(tmp_path, dtype, strategy):
    x = make_rows()
    report = write(tmp_path / "t.ple", x, dtype)
    ids = np.arange(V)[::-1].copy()
    with ple_store.open(report.path) as r:
        got = r.fetch(ids, strategy=strategy)                              # [V, L, P]
    assert got.shape == (V, L, P) and got.dtype == np.float32
    ref = x[ids].reshape(V, L, P)
    if dtype == "fp32":
        np.testing.assert_array_equal(got, ref * np.float32(ES))
        assert report.quant_error.max_abs == 0
    elif dtype == "bf16":
        bf = torch.from_numpy(ref).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(got, bf * np.float32(ES))
        assert report.quant_error.max_abs == pytest.approx(np.abs(bf - ref).max(), rel=1e-6)
    else:
        qmax = StoredDtype.parse(dtype).qmax
        s = np.abs(ref).max(-1, keepdims=True) / qmax                     # [V, L, 1]
        err = np.abs(got / np.float32(ES) - ref)
        assert np.all(err <= s / 2 * (1 + 1e-5) + 1e-7)
        assert np.all(got[ids == 3] == 0) and np.all(got[ids == 4][:, 0] == 0)
        q = report.quant_error
        assert 0 < q.mean_abs < q.max_abs <= float((s / 2).max()) * (1 + 1e-5)
        assert q.max_rel <= 0.5 / qmax * (1 + 1e-5) and q.max_rel > 0.25 / qmax
        assert q.max_abs == pytest.approx(err.max(), rel=1e-4)


def test_int4_nibble_order_and_scale_first(tmp_path):
    x = np.array([[7.0, -7.0, 1.0, 0.0, 3.0, -1.0]], np.float32)       # L=1, P=6: scale 1
    path = tmp_path / "n.ple"
    ple_store.write(path, [x], vocab_size=1, num_layers=1, ple_dim=6, dtype="int4", embed_scale=1.0, progress=False)
    with ple_store.open(path) as r:
        raw = r.fetch([0], dtype="stored")[0]
        assert raw.tobytes() == struct.pack("<f", 1.0) + bytes([0x97, 0x01, 0xF3])
        np.testing.assert_array_equal(r.fetch_one(0), x.reshape(1, 6))


def test_sources_torch_bf16_and_numpy_float64(tmp_path):
    x = make_rows()
    bf = torch.from_numpy(x).to(torch.bfloat16)
    a = ple_store.write(tmp_path / "a.ple", (bf[i: i + 64] for i in range(0, V, 64)), vocab_size=V, num_layers=L,
                        ple_dim=P, dtype="bf16", embed_scale=1.0, progress=False)
    b = ple_store.write(tmp_path / "b.ple", [x.astype(np.float64)], vocab_size=V, num_layers=L, ple_dim=P,
                        dtype="bf16", embed_scale=1.0, progress=False)
    assert a.quant_error.max_abs == 0            # bf16 in, bf16 stored: exact
    assert a.identity == b.identity              # same rounding either way
    with ple_store.open(a.path) as r:
        np.testing.assert_array_equal(r.fetch(np.arange(V)).reshape(V, -1), bf.float().numpy())


def test_write_report_and_identity(tmp_path):
    x = make_rows()
    rep = write(tmp_path / "t.ple", x, "int8", model_hash=bytes(range(32)))
    assert rep.bytes == os.path.getsize(rep.path) and rep.rows == V and rep.dtype == "int8"
    with ple_store.open(rep.path) as r:
        assert r.header.identity.hex() == rep.identity and r.header.model_hash == bytes(range(32))
        r.verify()
    rep2 = write(tmp_path / "u.ple", x, "int8", model_hash=bytes(32))
    assert rep2.identity != rep.identity         # the model hash is part of the identity


# ---------------------------------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------------------------------

def test_duplicates_empty_and_bad_ids(tmp_path):
    x = make_rows()
    with ple_store.open(write(tmp_path / "t.ple", x, "fp32").path) as r:
        got = r.fetch([5, 9, 5, 5, 0])
        np.testing.assert_array_equal(got, x[[5, 9, 5, 5, 0]].reshape(5, L, P) * np.float32(ES))
        st = r.fetch_log[-1]
        assert (st.tokens, st.unique_rows) == (5, 3)
        empty = r.fetch([])
        assert empty.shape == (0, L, P) and empty.dtype == np.float32
        n = len(r.fetch_log)
        for bad, word in (([1, V], str(V)), ([-1], "-1"), ([0, 10**12], str(10**12))):
            with pytest.raises(ValueError, match=word):
                r.fetch(bad)
        with pytest.raises(ValueError, match="integer"):
            r.fetch([1.5])
        assert len(r.fetch_log) == n             # rejected before any read
    with pytest.raises(ValueError, match="closed"):
        r.fetch([1])


# ---------------------------------------------------------------------------------------------------
# Validation and checksums
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def good(tmp_path):
    # fp32 rows of 1 KiB: 3 checksum blocks, so a damaged one can be told apart
    x = make_rows(v=3000, width=4 * 64)
    rep = ple_store.write(tmp_path / "g.ple", [x], vocab_size=3000, num_layers=4, ple_dim=64, dtype="fp32",
                          embed_scale=1.0, progress=False)
    return Path(rep.path)


@pytest.mark.parametrize("offset,fmt,value,fix_crc,field", [
    (0, "8s", b"GEMMAPLF", True, "magic"),
    (8, "<H", 2, True, "version_major"),
    (16, "<I", 2999, False, "header_crc32"),
    (28, "<I", 9, True, "dtype"),
    (32, "<I", 1, True, "quant_scheme"),
    (44, "<I", 1000, True, "row_stride"),
    (96, "<Q", 1 << 30, True, "file_bytes"),
])
def test_header_validation_names_field(good, offset, fmt, value, fix_crc, field):
    patch_header(good, offset, fmt, value, fix_crc)
    with pytest.raises(PleFormatError, match=re.escape(field)) as e:
        ple_store.open(good)
    assert str(good) in str(e.value) and "expected" in str(e.value)


def test_minor_version_is_accepted(good):
    patch_header(good, 10, "<H", 7)
    with ple_store.open(good) as r:
        assert r.header.version_minor == 7
        r.fetch([0, 2999])


@pytest.mark.parametrize("change", ["truncate", "append", "tiny"])
def test_size_mismatch(good, change):
    size = good.stat().st_size
    with open(good, "r+b") as f:
        if change == "truncate":
            f.truncate(size - PAGE_SIZE)
        elif change == "append":
            f.seek(0, 2)
            f.write(b"x")
        else:
            f.truncate(100)
    with pytest.raises(PleFormatError, match="file size") as e:
        ple_store.open(good)
    assert re.search(r"expected (at least )?\d+ bytes.*, found \d+ bytes", str(e.value))


def test_verify_names_damaged_block(good):
    with ple_store.open(good) as r:
        h = r.header
        last = h.num_blocks - 1
        assert last >= 2
        block_bytes = h.block_groups * h.group_bytes
        r.verify()
    with open(good, "r+b") as f:   # flip one byte inside the last block
        f.seek(h.data_offset + last * block_bytes + 5000)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))
    rows_per_block = h.block_groups * h.rows_per_group
    with ple_store.open(good) as r:   # the header is fine: opens
        r.verify_rows([0, rows_per_block])                 # blocks 0 and 1 are intact
        with pytest.raises(PleFormatError, match=rf"data block {last} .*rows \[{last * rows_per_block}, 3000\)"):
            r.verify()
        with pytest.raises(PleFormatError, match=f"data block {last}"):
            r.verify_rows([2999])
    assert "DAMAGED" in describe(good) and f"data block {last}" in describe(good)


def test_open_recomputes_identity_over_checksum_table(good):
    with ple_store.open(good) as r:
        off = r.header.checksum_offset
    with open(good, "r+b") as f:
        f.seek(off)
        f.write(b"\0\0\0\0")
    with pytest.raises(PleFormatError, match=r"identity: expected [0-9a-f]{64} \(header\), found [0-9a-f]{64}"):
        ple_store.open(good)


def test_describe(good):
    text = describe(good)
    for needle in ("GEMMAPLE", "vocab_size        3000", "rows/group", "padding overhead", "ok (identity"):
        assert needle in text


# ---------------------------------------------------------------------------------------------------
# Atomic, validated writing
# ---------------------------------------------------------------------------------------------------

def failing_source(x, after):
    yield x[:after]
    raise RuntimeError("checkpoint shard went away")


def test_failed_write_leaves_nothing(tmp_path):
    x = make_rows()
    with pytest.raises(RuntimeError, match="shard"):
        ple_store.write(tmp_path / "t.ple", failing_source(x, 500), vocab_size=V, num_layers=L, ple_dim=P,
                        dtype="int8", embed_scale=ES, progress=False)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path):
    x = make_rows()
    rep = write(tmp_path / "t.ple", x, "int4")
    with pytest.raises(ValueError, match=rf"expected {V} rows .*found 999"):
        ple_store.write(tmp_path / "t.ple", [x[:999]], vocab_size=V, num_layers=L, ple_dim=P, dtype="int4",
                        embed_scale=ES, progress=False)
    assert os.listdir(tmp_path) == ["t.ple"]
    with ple_store.open(tmp_path / "t.ple") as r:
        assert r.header.identity.hex() == rep.identity


@pytest.mark.parametrize("source,message", [
    (lambda x: [x, x[:1]], rf"expected {V} rows .*found more"),
    (lambda x: [x[:, :-1]], rf"expected shape \[n, {L * P}\].*found \[{V}, {L * P - 1}\]"),
    (lambda x: [x.astype(np.int32)], "expected a float array"),
    (lambda x: [x[0]], r"found \[48\]"),
    (lambda x: [np.where(np.arange(V)[:, None] == 7, np.nan, x)], "row 7: expected finite"),
])
def test_bad_sources_are_refused(tmp_path, source, message):
    with pytest.raises(ValueError, match=message):
        ple_store.write(tmp_path / "t.ple", source(make_rows()), vocab_size=V, num_layers=L, ple_dim=P,
                        dtype="int8", embed_scale=ES, progress=False)
    assert os.listdir(tmp_path) == []


def test_bad_dtype_name(tmp_path):
    with pytest.raises(ValueError, match="'int3'"):
        write(tmp_path / "t.ple", make_rows(), "int3")


# ---------------------------------------------------------------------------------------------------
# I/O accounting and page-cache residency on an E2B-shaped row (35 layers × 256, int4: 2 pages a row)
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def e2b_rows_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ple") / "e2b_rows.ple"
    g = torch.Generator().manual_seed(0)
    src = (torch.randn(512, 35 * 256, generator=g) for _ in range(8))   # 4096 rows, ~19 MB
    ple_store.write(path, src, vocab_size=4096, num_layers=35, ple_dim=256, dtype="int4", embed_scale=16.0,
                    progress=False)
    return path


def test_fetch_accounting_numbers(e2b_rows_file):
    with ple_store.open(e2b_rows_file) as r:
        assert (r.header.row_bytes, r.header.row_stride, r.header.rows_per_group) == (4620, 4624, 7)
        r.fetch([0, 1, 7, 7, 100], strategy="preadv")
        r.fetch([100], strategy="willneed")
        a, b = r.fetch_log
        # rows 0 {1,2}, 1 {2,3}, 7 {9,10}, 100 {115,116}: pages counted once
        assert (a.tokens, a.unique_rows, a.bytes_requested, a.pages_touched, a.read_calls) == (5, 4, 4 * 4620, 7, 4)
        assert (b.unique_rows, b.pages_touched, b.read_calls) == (1, 2, 1)
        assert r.fetch_totals.pages_touched == 9 and r.fetch_totals.tokens == 6
        r.fetch([0, 1, 7], strategy="willneed")            # rows 0 and 1 share page 2: one madvise for both
        assert (r.fetch_log[-1].read_calls, r.fetch_log[-1].pages_touched) == (2, 5)
        r.fetch([])
        assert (r.fetch_log[-1].unique_rows, r.fetch_log[-1].pages_touched, r.fetch_log[-1].read_calls) == (0, 0, 0)
        assert a.wall_s > 0


@pytest.mark.parametrize("strategy", ["willneed", "preadv"])
def test_only_fetched_pages_become_resident(e2b_rows_file, strategy):
    ple_store.evict(e2b_rows_file)
    rng = np.random.default_rng(1)
    ids = (rng.zipf(1.2, 512) - 1) % 4096                               # a 512-token prompt
    with ple_store.open(e2b_rows_file) as r:
        table = set(range(r.header.checksum_offset // PAGE_SIZE, r.header.file_bytes // PAGE_SIZE))
        assert set(r.resident_pages().tolist()) <= {0} | table           # only what open read so far
        r.fetch(ids, strategy=strategy)
        wanted = set(r.pages_of(np.unique(ids)).tolist())
        resident = set(r.resident_pages().tolist())
        assert wanted <= resident                                        # everything fetched is there ...
        assert resident <= wanted | {0} | table                          # ... and nothing else: no readahead
        total_pages = r.header.file_bytes // PAGE_SIZE
        assert len(resident) < total_pages / 4
        assert r.fetch_log[-1].pages_touched == len(wanted) <= 2 * len(np.unique(ids))
        r.evict()
        assert len(r.resident_pages()) == 0


def test_plain_mmap_without_madvise_pulls_neighbours(e2b_rows_file):
    """The control for the residency test: one touch through a plain mapping reads around it."""
    ple_store.evict(e2b_rows_file)
    with open(e2b_rows_file, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm[PAGE_SIZE * 100]
        mm.close()
    with ple_store.open(e2b_rows_file) as r:
        assert len(r.resident_pages()) > 64
