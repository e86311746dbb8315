"""Hostile and careless `.ple` input (issue 18, items 3, 7, 13): damaged rows are refused by the fetch that would
return them, the identity is recomputed at open, non-regular files are refused without blocking, and the Python
reader survives close racing fetch, closed-reader calls, non-integral ids and long sessions. Python reader and
the native host's C++ reader; the Java reader's twins are in android_demo/core (PleFileHostileTest, goldens)."""
import hashlib
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from gemma_edge import ple_store
from gemma_edge.ple_store import PleFormatError
from gemma_edge.ple_store.format import CRC_COVERED, IDENTITY_PREFIX, PAGE_SIZE, PleHeader
from gemma_edge.ple_store.reader import FETCH_LOG_MAX

V, L, P = 3000, 4, 64          # fp32 rows of 1 KiB: several checksum blocks
HANG_GUARD_S = 120             # a reader waiting on a FIFO forever fails instead of stalling the suite


def rows(v=V, width=L * P, seed=0):
    return np.random.default_rng(seed).standard_normal((v, width)).astype(np.float32)


def write(path, dtype="fp32", row_crc=True, v=V):
    ple_store.write(path, [rows(v)], vocab_size=v, num_layers=L, ple_dim=P, dtype=dtype, embed_scale=2.0,
                    progress=False, row_crc=row_crc)
    return Path(path)


def flip(path, offset, mask=0x10):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def rewrite_header(path, **fields):
    """Set header fields, then recompute identity and header CRC as a writer would: a consistent header."""
    with open(path, "r+b") as f:
        h = PleHeader.unpack(f.read(PAGE_SIZE))
        for k, v in fields.items():
            setattr(h, k, v)
        f.seek(h.checksum_offset)
        table = f.read(h.checksum_table_bytes)
        h.identity = hashlib.sha256(h.pack()[:IDENTITY_PREFIX] + table).digest()
        f.seek(0)
        f.write(h.pack())


def row_offset(path, t):
    with ple_store.open(path) as r:
        return int(r.row_offsets(np.array([t]))[0]), r.header


@pytest.fixture
def good(tmp_path):
    return write(tmp_path / "m.ple")


@pytest.fixture
def legacy(tmp_path):
    """A minor-0 file: no row CRCs, as every exporter before minor version 1 wrote."""
    return write(tmp_path / "old.ple", row_crc=False)


# ---------------------------------------------------------------------------------------------------
# Item 3: the identity is recomputed at open; every fetch checks the rows it returns
# ---------------------------------------------------------------------------------------------------

def test_open_recomputes_the_identity_instead_of_trusting_the_header(good):
    # model_hash changed and the header CRC fixed, the identity field left as it was: the stored identity
    # (what a manifest compares with) no longer describes the header
    with open(good, "r+b") as f:
        raw = bytearray(f.read(PAGE_SIZE))
        raw[112] ^= 1
        struct.pack_into("<I", raw, CRC_COVERED, zlib.crc32(bytes(raw[:CRC_COVERED])))
        f.seek(0)
        f.write(raw)
    with pytest.raises(PleFormatError, match=rf"^{re.escape(str(good))}: identity: expected [0-9a-f]{{64}} \(header\), "
                                             rf"found [0-9a-f]{{64}} \(sha256 of header\[0:144\] \+ checksum table\)$"):
        ple_store.open(good)


def test_open_refuses_a_changed_checksum_table(good):
    with ple_store.open(good) as r:
        off = r.header.checksum_offset + 4
    flip(good, off)
    with pytest.raises(PleFormatError, match="identity"):
        ple_store.open(good)


@pytest.mark.parametrize("strategy", ["willneed", "preadv"])
@pytest.mark.parametrize("where", ["payload", "crc"])
def test_fetch_refuses_a_damaged_row_by_its_crc(good, strategy, where):
    t = 1234
    off, h = row_offset(good, t)
    assert h.row_crc and h.version_minor == 1
    flip(good, off + (17 if where == "payload" else h.row_bytes + 2))
    with ple_store.open(good) as r:                  # the header and table are intact: opens
        want = r.fetch([0, 1, 2999], strategy=strategy)      # other rows are fine
        assert want.shape == (3, L, P)
        for dtype in (None, "stored"):
            with pytest.raises(PleFormatError,
                               match=rf"^{re.escape(str(good))}: row {t} \(bytes \[{off}, {off + h.row_bytes}\)\): "
                                     rf"CRC-32 expected 0x[0-9a-f]{{8}} \(stored after the row\), "
                                     rf"found 0x[0-9a-f]{{8}}$"):
                r.fetch([5, t, 5], dtype=dtype, strategy=strategy)
        with pytest.raises(PleFormatError, match=f"row {t} "):
            r.fetch_one(t)


def test_minor0_file_checks_each_touched_block_on_first_fetch(legacy):
    with ple_store.open(legacy) as r:
        h = r.header
        assert not h.row_crc and h.version_minor == 0 and h.num_blocks >= 3
        per_block = h.block_groups * h.rows_per_group
        r.verify()
    off, _ = row_offset(legacy, 2 * per_block + 3)
    flip(legacy, off + 100)                           # damage block 2
    with ple_store.open(legacy) as r:
        r.fetch([0, per_block, per_block + 7])       # blocks 0 and 1: fine
        with pytest.raises(PleFormatError, match=rf"^{re.escape(str(legacy))}: data block 2 \(bytes \[\d+, \d+\), rows "
                                                 rf"\[{2 * per_block}, {min(V, 3 * per_block)}\)\): CRC-32 expected"):
            r.fetch([1, 2 * per_block + 9])           # another row of the damaged block: the block is refused


def test_minor0_block_check_leaves_only_the_rows_in_the_page_cache(legacy):
    ple_store.evict(legacy)
    ids = np.array([3, 700, 1500, 2999])
    with ple_store.open(legacy) as r:
        h = r.header
        r.fetch(ids)
        resident = set(r.resident_pages().tolist())
        allowed = set(r.pages_of(ids).tolist()) | {0} | set(range(h.checksum_offset // PAGE_SIZE,
                                                                   h.file_bytes // PAGE_SIZE))
        assert resident <= allowed, f"the block check left pages cached: {sorted(resident - allowed)[:10]}"
        assert len(r.fetch_log) == 1 and r.fetch_log[-1].pages_touched == len(r.pages_of(ids))


def test_a_reader_that_ignores_the_flag_reads_a_minor1_file_unchanged(good, tmp_path):
    # FORMAT.md: minor additions sit in reserved fields and padding. Clearing flags (and the minor version)
    # gives the file a minor-0 reader sees: its rows must be the same
    ids = np.arange(0, V, 7)
    with ple_store.open(good) as r:
        want = r.fetch(ids)
    rewrite_header(good, flags=0, version_minor=0)
    with ple_store.open(good) as r:
        assert not r.header.row_crc
        np.testing.assert_array_equal(r.fetch(ids), want)
        r.verify()


def test_row_crc_flag_needs_room_in_the_stride(legacy):
    rewrite_header(legacy, flags=1)                   # fp32 rows of 1024 B at stride 1024: no CRC slot
    with pytest.raises(PleFormatError, match=r"row_stride: expected a multiple of 16 ≥ row_bytes 1024 \+ 4 "
                                             r"\(flags ROW_CRC\), found 1024"):
        ple_store.open(legacy)


# ---------------------------------------------------------------------------------------------------
# Item 7: a FIFO, directory, device or socket is refused by type, without blocking
# ---------------------------------------------------------------------------------------------------

def open_in_child(path, what="open") -> subprocess.CompletedProcess:
    """ple_store.open / describe / evict in a child process, so a reader that blocks fails the test instead of
    hanging it."""
    calls = {"open": "ple_store.open(sys.argv[1]).close()", "inspect": "describe(sys.argv[1])",
             "evict": "ple_store.evict(sys.argv[1])"}
    code = ("import sys\nfrom gemma_edge import ple_store\nfrom gemma_edge.ple_store.inspect import describe\n"
            f"try:\n    {calls[what]}\n"
            "except ple_store.PleFormatError as e:\n    print(e); sys.exit(3)\n")
    try:
        return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} of {path} blocked (still waiting after {HANG_GUARD_S} s)")


@pytest.mark.parametrize("what", ["open", "inspect", "evict"])
def test_fifo_is_refused_without_blocking(tmp_path, what):
    fifo = tmp_path / "model.ple"
    os.mkfifo(fifo)
    p = open_in_child(fifo, what)
    assert p.returncode == 3, p.stderr
    assert p.stdout.strip() == f"{fifo}: file type: expected a regular file, found a FIFO (named pipe)"


def test_directory_socket_device_and_symlinked_fifo_are_refused(tmp_path):
    sock_path = tmp_path / "s.ple"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    os.mkfifo(tmp_path / "f")
    (tmp_path / "link.ple").symlink_to(tmp_path / "f")
    try:
        for path, kind in ((tmp_path, "a directory"), (Path("/dev/null"), "a character device"),
                           (tmp_path / "link.ple", "a FIFO (named pipe)")):
            with pytest.raises(PleFormatError,
                               match=f"^{re.escape(f'{path}: file type: expected a regular file, found {kind}')}$"):
                ple_store.open(path)
        # a socket cannot be opened at all (ENXIO): an OSError naming the path, not a hang
        with pytest.raises(OSError, match=str(sock_path)):
            ple_store.open(sock_path)
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------------
# Item 13 (reader): close racing fetch, calls after close, non-integral ids, a bounded fetch log
# ---------------------------------------------------------------------------------------------------

def test_close_racing_fetches_never_leaves_a_half_closed_reader(good):
    ids = [0, 5, 17, 2999, 5]
    with ple_store.open(good) as ref:
        want = ref.fetch(ids)
    for strategy in ("willneed", "preadv"):
        r = ple_store.open(good)
        errors, done, running = [], [0], threading.Barrier(5)

        def worker():
            running.wait()
            while True:
                try:
                    got = r.fetch(ids, strategy=strategy)
                except ValueError as e:
                    if str(e) != f"{good}: reader is closed":
                        errors.append(e)
                    return
                except Exception as e:   # noqa: BLE001 - anything else is the bug
                    errors.append(e)
                    return
                if not np.array_equal(got, want):
                    errors.append(AssertionError("a fetch racing close returned other rows"))
                done[0] += 1

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        running.wait()
        while done[0] < 20 and not errors:
            threading.Event().wait(0.001)
        r.close()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert r.closed and r.fd == -1


def test_calls_after_close_raise_a_clear_error(good):
    r = ple_store.open(good)
    r.fetch([1])
    r.close()
    r.close()                                          # twice is fine
    for call in (lambda: r.fetch([1]), lambda: r.fetch_one(1), r.resident_pages, r.resident_bytes, r.evict,
                 r.verify, lambda: r.verify_rows([1])):
        with pytest.raises(ValueError, match=rf"^{re.escape(str(good))}: reader is closed$"):
            call()
    assert r.fetch_totals.tokens == 1                  # the accounting outlives the mapping


@pytest.mark.parametrize("bad", [1.7, 1.0, True, np.float32(2), np.bool_(True), "1", None])
def test_fetch_one_refuses_non_integral_ids(good, bad):
    with ple_store.open(good) as r, pytest.raises(ValueError, match=r"^token_id: expected an integer id, found"):
        r.fetch_one(bad)


@pytest.mark.parametrize("bad,message", [
    ([1, True], r"token_ids\[1\]: expected an integer id, found True \(bool\)"),
    ([2, 1.5], r"token_ids\[1\]: expected an integer id, found 1.5 \(float\)"),
    (np.array([2.0]), r"expected a 1-D sequence of integers, found shape \[1\] dtype float64"),
    ([2**64], rf"token_ids\[0\]: expected an id in \[0, {V}\), found {2**64}"),
    ([0, 2**63], rf"token_ids\[1\]: expected an id in \[0, {V}\), found {2**63}"),
    ([[1, 2], [3]], r"token_ids\[0\]: expected an integer id, found \[1, 2\] \(list\)"),
    ([-1], rf"token_ids\[0\]: expected an id in \[0, {V}\), found -1"),
    (np.array([[1, 2]]), r"expected a 1-D sequence of integers, found shape \[1, 2\]"),
    (np.array([True, False]), "dtype bool"),
])
def test_fetch_refuses_ids_that_are_not_integers_in_range(good, bad, message):
    with ple_store.open(good) as r:
        with pytest.raises(ValueError, match=message):
            r.fetch(bad)
        assert len(r.fetch_log) == 0                   # refused before any read
    assert np.array_equal(ple_store.open(good).fetch_one(np.int64(3)).shape, (L, P))


def test_fetch_log_is_bounded_and_totals_stay_exact(good):
    n = FETCH_LOG_MAX + 50
    with ple_store.open(good) as r:
        for i in range(n):
            r.fetch_one(i % V)
        assert len(r.fetch_log) == FETCH_LOG_MAX
        assert r.fetch_totals.tokens == n and r.fetch_totals.unique_rows == n
        assert r.fetch_totals.bytes_requested == n * r.header.row_bytes
        before = len(r.fetch_log)
        r.fetch([1, 2, 2])
        assert r.fetch_log[before - 1:][-1].tokens == 3 and r.fetch_log[-1].unique_rows == 2


# ---------------------------------------------------------------------------------------------------
# The native host's C++ reader: the same checks, one line, exit status 2
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exe():
    from gemma_edge.runtime import native
    return native.build()


def host_fetch(exe, path, ids, out):
    try:
        return subprocess.run([str(exe), "--ple", str(path), "--ids", ",".join(map(str, ids)), "--rows-out", str(out)],
                              capture_output=True, text=True, timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gemma-edge-run --ple {path} blocked (still waiting after {HANG_GUARD_S} s)")


def refused(p) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    return p.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("row_crc", [True, False])
def test_native_reads_both_minor_versions_like_python(exe, tmp_path, row_crc):
    path = write(tmp_path / "m.ple", dtype="int4", row_crc=row_crc)
    ids = [0, 3, 2999, 1500, 3, 77]
    p = host_fetch(exe, path, ids, tmp_path / "rows.bin")
    assert p.returncode == 0, p.stderr
    with ple_store.open(path) as r:
        np.testing.assert_array_equal(np.fromfile(tmp_path / "rows.bin", np.float32).reshape(len(ids), L, P),
                                      r.fetch(ids))


def test_native_refuses_a_damaged_row_a_damaged_block_and_a_changed_table(exe, tmp_path):
    good = write(tmp_path / "m.ple")
    off, h = row_offset(good, 1234)
    flip(good, off + 9)
    line = refused(host_fetch(exe, good, [1, 1234], tmp_path / "r.bin"))
    assert line.startswith(f"gemma-edge-run: {good}: row 1234 (bytes [{off}, {off + h.row_bytes})): CRC-32 expected 0x")
    assert "(stored after the row), found 0x" in line
    assert host_fetch(exe, good, [1, 2999], tmp_path / "r.bin").returncode == 0     # other rows are fine

    old = write(tmp_path / "old.ple", row_crc=False)
    off, h = row_offset(old, 2999)
    flip(old, off + 9)
    assert host_fetch(exe, old, [0], tmp_path / "r.bin").returncode == 0
    line = refused(host_fetch(exe, old, [0, 2999], tmp_path / "r.bin"))
    assert f"{old}: data block {h.num_blocks - 1} (bytes [" in line and "(checksum table), found 0x" in line

    table = write(tmp_path / "t.ple")
    flip(table, PleHeader.unpack(table.read_bytes()[:PAGE_SIZE]).checksum_offset)
    line = refused(host_fetch(exe, table, [0], tmp_path / "r.bin"))
    assert f"{table}: identity: expected " in line and "(sha256 of header[0:144] + checksum table)" in line


def test_native_refuses_a_fifo_and_a_directory_without_blocking(exe, tmp_path):
    fifo = tmp_path / "model.ple"
    os.mkfifo(fifo)
    assert refused(host_fetch(exe, fifo, [0], tmp_path / "r.bin")) == \
        f"gemma-edge-run: {fifo}: file type: expected a regular file, found a FIFO (named pipe)"
    assert refused(host_fetch(exe, tmp_path, [0], tmp_path / "r.bin")) == \
        f"gemma-edge-run: {tmp_path}: file type: expected a regular file, found a directory"


@pytest.mark.slow  # a fuzz campaign
def test_header_fuzz_runs_clean_on_the_python_reader(tmp_path):
    """bench/fuzz_ple_header.py itself, briefly, on the Python reader: it runs and finds nothing."""
    import json
    p = subprocess.run([sys.executable, str(Path(__file__).parent.parent / "bench" / "fuzz_ple_header.py"),
                        "--seconds", "3", "--readers", "python", "--out", str(tmp_path / "f.json")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = json.loads((tmp_path / "f.json").read_text())
    s = out["summary"]["python"]
    assert s["cases"] > 0 and s["refused"] > 0 and s["accepted_correct_rows"] > 0
    assert s["crashes"] == s["hangs"] == s["silent_wrong"] == s["undocumented"] == 0


def test_native_names_a_bad_magic_on_one_printable_line(exe, tmp_path):
    path = write(tmp_path / "m.ple")
    with open(path, "r+b") as f:
        f.write(b"GEMMA\n\xff\x00")                   # a newline and non-UTF-8 bytes where the magic was
    p = subprocess.run([str(exe), "--ple", str(path), "--ids", "0", "--rows-out", str(tmp_path / "r.bin")],
                       capture_output=True, timeout=HANG_GUARD_S)
    assert p.returncode == 2
    err = p.stderr.decode("utf-8")                    # valid UTF-8 ...
    assert err.count("\n") == 1                       # ... on one line
    assert err == f"gemma-edge-run: {path}: magic: expected GEMMAPLE, found 'GEMMA\\x0a\\xff\\x00' (not a .ple file)\n"
