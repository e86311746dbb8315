"""Cold-cache benchmark of the batched PLE fetch on full-size E2B `.ple` files vs naive reads and the disk's limits.

Run: python bench/ple_fetch.py [--workdir DIR] [--repeats 3]. Writes bench/results/ple_fetch.json.
     python bench/ple_fetch.py --row-crc-cost [--repeats 7] [--delete-after]: what checking the rows costs the
     cold batched fetch (FORMAT.md "Checksums"): row CRCs on, off, and a minor-0 file's block check on first
     touch, side by side on one int4 E2B file. Writes bench/results/ple_row_crc.json.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gemma_edge import ple_store
from gemma_edge.procfs import cpu_isa

V, L, P = 262144, 35, 256            # Gemma 4 E2B's PLE table
PAGE = 4096
QD = 32                              # queue depth of the O_DIRECT random-read limit
RESULTS = Path(__file__).parent / "results" / "ple_fetch.json"
ROW_CRC_RESULTS = Path(__file__).parent / "results" / "ple_row_crc.json"


# ---------------------------------------------------------------------------------------------------
# Writing the files (in a child process, so its peak RSS is the writer's alone)
# ---------------------------------------------------------------------------------------------------

def write_one(dtype: str, path: str) -> None:
    """Child: write a random E2B table, print a JSON line with the report and VmHWM."""
    import torch

    def rows(chunk=2048):
        g = torch.Generator().manual_seed(1234)
        for lo in range(0, V, chunk):
            yield torch.randn(min(chunk, V - lo), L * P, generator=g).mul_(0.05).to(torch.bfloat16)

    rep = ple_store.write(path, rows(), vocab_size=V, num_layers=L, ple_dim=P, dtype=dtype, embed_scale=16.0,
                          progress=sys.stderr.isatty())
    hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"dtype": dtype, "bytes": rep.bytes, "seconds": rep.seconds, "identity": rep.identity,
                      "quant_error": vars(rep.quant_error), "peak_rss_bytes": hwm_kib * 1024,
                      "layout": vars(rep.layout)}))


def ensure_file(workdir: Path, dtype: str, rewrite: bool) -> dict:
    path, meta = workdir / f"e2b_{dtype}.ple", workdir / f"e2b_{dtype}.write.json"
    if path.exists() and meta.exists() and not rewrite:
        try:
            with ple_store.open(path) as r:
                if (r.header.vocab_size, r.header.num_layers, r.header.ple_dim) == (V, L, P):
                    return json.loads(meta.read_text())
        except ple_store.PleFormatError:
            pass
    print(f"writing {path} ...", flush=True)
    out = subprocess.run([sys.executable, __file__, "--write-one", dtype, str(path)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    meta.write_text(json.dumps(info, indent=1))
    return info


# ---------------------------------------------------------------------------------------------------
# The readers being compared; each returns (seconds, extra info)
# ---------------------------------------------------------------------------------------------------

def ours(reader, ids, strategy, dtype):
    t = time.perf_counter()
    reader.fetch(ids, dtype=dtype, strategy=strategy)
    return time.perf_counter() - t


def naive_per_token(path, reader, ids):
    """(a) one row after another through an MADV_RANDOM mapping: each page fault waits for its read."""
    h = reader.header
    offs = reader.row_offsets(ids).tolist()
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm.madvise(mmap.MADV_RANDOM)
        buf = np.frombuffer(mm, np.uint8)
        out = np.empty((len(ids), h.row_bytes), np.uint8)
        t = time.perf_counter()
        for i, off in enumerate(offs):
            out[i] = buf[off: off + h.row_bytes]
        dt = time.perf_counter() - t
        del buf
        mm.close()
    return dt


def naive_per_layer(path, reader, ids):
    """(b) each token's each layer read on its own (scale, then that layer's values), as a per-layer gather does."""
    h = reader.header
    quant = ple_store.StoredDtype(h.dtype).quantized
    vbytes = (h.row_bytes - (4 * L if quant else 0)) // L
    base = 4 * L if quant else 0
    offs = reader.row_offsets(ids).tolist()
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm.madvise(mmap.MADV_RANDOM)
        buf = np.frombuffer(mm, np.uint8)
        out = np.empty((len(ids), L, vbytes), np.uint8)
        scales = np.empty((len(ids), L, 4), np.uint8)
        t = time.perf_counter()
        for i, off in enumerate(offs):
            for layer in range(L):
                if quant:
                    scales[i, layer] = buf[off + 4 * layer: off + 4 * layer + 4]
                v = off + base + layer * vbytes
                out[i, layer] = buf[v: v + vbytes]
        dt = time.perf_counter() - t
        del buf
        mm.close()
    return dt


def _aligned_ranges(reader, ids):
    offs = reader.row_offsets(np.unique(ids))
    starts = offs // PAGE * PAGE
    ends = -(-(offs + reader.header.row_bytes) // PAGE) * PAGE
    return starts.tolist(), (ends - starts).tolist()


def direct_random(path, reader, ids, pool):
    """(c) limit: the same rows' page ranges read with O_DIRECT, QD threads each issuing preadv."""
    starts, lens = _aligned_ranges(reader, ids)
    total = sum(lens)
    buf = mmap.mmap(-1, total)                                     # page-aligned, as O_DIRECT needs
    view = memoryview(buf)
    pos = np.concatenate([[0], np.cumsum(lens)[:-1]]).tolist()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)

    def lane(k):
        for i in range(k, len(starts), QD):
            os.preadv(fd, [view[pos[i]: pos[i] + lens[i]]], starts[i])

    t = time.perf_counter()
    for fut in [pool.submit(lane, k) for k in range(min(QD, len(starts)))]:
        fut.result()
    dt = time.perf_counter() - t
    os.close(fd)
    view.release()
    buf.close()
    return dt, total


def direct_sequential(path, nbytes, offset):
    """(c) limit: one sequential O_DIRECT read of the same number of bytes."""
    buf = mmap.mmap(-1, nbytes)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    t = time.perf_counter()
    got = os.preadv(fd, [buf], offset)
    dt = time.perf_counter() - t
    assert got == nbytes, (got, nbytes)
    os.close(fd)
    buf.close()
    return dt


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------

def zipf_prompt(rng, perm, n, a=1.1):
    """Token ids with Zipf-like frequencies; ranks scattered over the vocabulary by a fixed permutation."""
    ranks = rng.zipf(a, n) - 1
    return perm[ranks % V]


def cold_interleaved(reader, methods, repeats):
    """Median seconds of each method over `repeats` rounds; every run starts from an evicted page cache.

    Methods take turns within a round, so a slow spell of this shared machine hits all of them alike.
    """
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            reader.evict()
            times[name].append(fn())
    return {name: statistics.median(t) for name, t in times.items()}


def bench_file(path, reader, prompts, repeats, pool):
    rows = []
    for T, ids in prompts.items():
        uniq = np.unique(ids)
        nbytes = direct_random(path, reader, ids, pool)[1]
        r = {"dtype": ple_store.StoredDtype(reader.header.dtype).name.lower(), "tokens": T,
             "unique_rows": int(len(uniq)), "direct_bytes": nbytes}
        r.update(cold_interleaved(reader, {
            "ours_willneed_s": lambda: ours(reader, ids, "willneed", "stored"),
            "ours_preadv_s": lambda: ours(reader, ids, "preadv", "stored"),
            "ours_default_f32_s": lambda: ours(reader, ids, None, None),
            "naive_per_token_s": lambda: naive_per_token(path, reader, ids),
            "naive_per_layer_s": lambda: naive_per_layer(path, reader, ids),
            "direct_random_qd32_s": lambda: direct_random(path, reader, ids, pool)[0],
            "direct_sequential_s": lambda: direct_sequential(path, nbytes, PAGE * 1024),
        }, repeats))
        reader.evict()
        ours(reader, ids, None, "stored")   # once more, to read its accounting and what it left resident
        st = reader.fetch_log[-1]
        r.update(pages_touched=st.pages_touched, pages_per_row=st.pages_touched / st.unique_rows,
                 min_pages_per_row=reader.header.layout.pages_per_row, bytes_requested=st.bytes_requested,
                 resident_bytes_after_fetch=reader.resident_bytes(), file_bytes=reader.header.file_bytes)
        default = r["ours_" + ple_store.reader.DEFAULT_STRATEGY + "_s"]
        r.update(ours_s=default,
                 best_strategy="willneed" if r["ours_willneed_s"] <= r["ours_preadv_s"] else "preadv",
                 speedup_vs_naive_per_token=r["naive_per_token_s"] / default,
                 speedup_vs_naive_per_layer=r["naive_per_layer_s"] / default,
                 ratio_to_random_limit=default / r["direct_random_qd32_s"],
                 ratio_to_sequential=default / r["direct_sequential_s"])
        rows.append(r)
        print(f"  {r['dtype']} T={T}: ours {1e3 * default:.1f} ms ({r['unique_rows']} rows)", flush=True)
    return rows


def print_table(rows, writes):
    ms = lambda s: f"{1e3 * s:8.1f}"   # noqa: E731
    print("\ncold page cache, median of repeats; times in ms; ours = default strategy "
          f"({ple_store.reader.DEFAULT_STRATEGY}), stored bytes")
    head = (f"{'dtype':5} {'T':>5} {'uniq':>5} {'pg/row':>6} {'min':>3} {'willneed':>8} {'preadv':>8} {'ours+f32':>8} "
            f"{'(a)tok':>8} {'x':>5} {'(b)layer':>8} {'x':>5} {'(c)rand':>8} {'ours/c':>6} {'(c)seq':>8} "
            f"{'ours/seq':>8} {'resident':>9}")
    print(head)
    for r in rows:
        print(f"{r['dtype']:5} {r['tokens']:5} {r['unique_rows']:5} {r['pages_per_row']:6.2f} "
              f"{r['min_pages_per_row']:3} {ms(r['ours_willneed_s'])} {ms(r['ours_preadv_s'])} "
              f"{ms(r['ours_default_f32_s'])} {ms(r['naive_per_token_s'])} {r['speedup_vs_naive_per_token']:5.1f} "
              f"{ms(r['naive_per_layer_s'])} {r['speedup_vs_naive_per_layer']:5.1f} {ms(r['direct_random_qd32_s'])} "
              f"{r['ratio_to_random_limit']:6.2f} {ms(r['direct_sequential_s'])} {r['ratio_to_sequential']:8.2f} "
              f"{r['resident_bytes_after_fetch'] / 2**20:7.1f}MB")
    for w in writes:
        print(f"write {w['dtype']}: {w['bytes'] / 2**30:.2f} GiB in {w['seconds']:.0f} s, "
              f"peak RSS {w['peak_rss_bytes'] / 2**20:.0f} MiB, max abs err {w['quant_error']['max_abs']:.3g}, "
              f"max rel err {w['quant_error']['max_rel']:.3g}")


# ---------------------------------------------------------------------------------------------------
# --row-crc-cost: the fetch's own check, on and off
# ---------------------------------------------------------------------------------------------------

class UncheckedReader(ple_store.PleReader):
    """The same reads as the real reader (records: row and CRC), with the row-CRC comparison skipped."""

    def _check_row_crcs(self, uniq, records):
        pass


class TimedCheckReader(ple_store.PleReader):
    """The real reader, timing its own row check inside each fetch: the check's cost without the cold reads'
    run-to-run spread (two medians of cold fetches differ by several per cent from run to run)."""

    check_s: list = []   # reset per prompt by row_crc_cost

    def _check_row_crcs(self, uniq, records):
        t = time.perf_counter()
        super()._check_row_crcs(uniq, records)
        self.check_s.append(time.perf_counter() - t)


class BlockCheckReader(ple_store.PleReader):
    """What a minor-0 file costs: each touched block's CRC checked on first touch (no row CRCs compared);
    `forget()` empties the per-reader cache so every cold run pays the first touch."""

    def forget(self):
        self._block_ok = np.zeros(self.header.num_blocks, bool)

    def _check_row_crcs(self, uniq, records):
        if self._block_ok is None:
            self.forget()
        self._check_blocks_of(uniq)   # before the rows are used; here after the reads, same I/O


def crc_isa() -> dict:
    """The machine class (gemma_edge.procfs.cpu_isa) and what the CRC's speed depends on: carry-less multiply and
    the zlib build."""
    import zlib

    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {**cpu_isa(), "crc_flags": sorted(flags & {"sse4_2", "pclmulqdq", "vpclmulqdq"}),
            "zlib": zlib.ZLIB_RUNTIME_VERSION}


def row_crc_cost(args) -> int:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write = ensure_file(workdir, "int4", args.rewrite)
    path = str(workdir / "e2b_int4.ple")
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(V)
    prompts = {int(T): zipf_prompt(rng, perm, int(T)) for T in args.tokens.split(",")}
    rows = []
    with TimedCheckReader(path) as checked, UncheckedReader(path) as unchecked, BlockCheckReader(path) as blocks:
        assert checked.header.row_crc, f"{path}: expected a minor-1 file with row CRCs (--rewrite)"
        for T, ids in prompts.items():
            want = checked.fetch(ids)
            assert np.array_equal(unchecked.fetch(ids), want) and np.array_equal(blocks.fetch(ids), want)

            def cold_blocks(ids=ids):
                blocks.forget()
                return ours(blocks, ids, None, None)

            times = {name: [] for name in ("row_crc_s", "unchecked_s", "block_first_touch_s")}
            checked.check_s = []
            runs = (("row_crc_s", lambda: ours(checked, ids, None, None)),
                    ("unchecked_s", lambda: ours(unchecked, ids, None, None)),
                    ("block_first_touch_s", cold_blocks))
            for rep in range(args.repeats):
                # interleaved, so a slow spell of the machine hits all three alike, and rotated, so none always
                # runs first after the evictions or right after the block check's 90 ms of hashing
                for name, fn in runs[rep % 3:] + runs[:rep % 3]:
                    for reader in (checked, unchecked, blocks):   # fadvise skips pages any mapping holds
                        reader.evict()
                    times[name].append(fn())
            times["check_in_fetch_s"] = checked.check_s
            med = {k: statistics.median(v) for k, v in times.items()}
            h = checked.header
            uniq = int(len(np.unique(ids)))
            touched = int(len(np.unique(np.unique(ids) // h.rows_per_group // h.block_groups)))
            r = {"tokens": T, "unique_rows": uniq, "blocks_touched": touched, **med,
                 "row_crc_overhead": med["row_crc_s"] / med["unchecked_s"] - 1,
                 "check_share_of_unchecked": med["check_in_fetch_s"] / med["unchecked_s"],
                 "block_first_touch_overhead": med["block_first_touch_s"] / med["unchecked_s"] - 1,
                 "all_s": times}
            rows.append(r)
            print(f"  T={T}: {uniq} rows, checked {1e3 * med['row_crc_s']:.2f} ms, unchecked "
                  f"{1e3 * med['unchecked_s']:.2f} ms ({100 * r['row_crc_overhead']:+.1f} %; the check itself "
                  f"{1e3 * med['check_in_fetch_s']:.2f} ms, {100 * r['check_share_of_unchecked']:.1f} %), block check "
                  f"{1e3 * med['block_first_touch_s']:.1f} ms", flush=True)
    print("\ncold page cache, median of interleaved repeats, default fetch (float32 rows), ms")
    print(f"{'T':>5} {'uniq':>5} {'blocks':>6} {'unchecked':>9} {'row CRC':>9} {'cost':>7} {'block 1st touch':>15} "
          f"{'cost':>8} {'check alone':>11}")
    for r in rows:
        print(f"{r['tokens']:5} {r['unique_rows']:5} {r['blocks_touched']:6} {1e3 * r['unchecked_s']:9.2f} "
              f"{1e3 * r['row_crc_s']:9.2f} {100 * r['row_crc_overhead']:+6.1f}% "
              f"{1e3 * r['block_first_touch_s']:15.1f} "
              f"{100 * r['block_first_touch_overhead']:+7.0f}% "
              f"{100 * r['check_share_of_unchecked']:+10.1f}%")
    out = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(), **crc_isa()},
           "order": "interleaved; the order of the three readers rotates every repeat",
           "shape": {"vocab_size": V, "num_layers": L, "ple_dim": P, "dtype": "int4"}, "repeats": args.repeats,
           "seed": args.seed, "strategy": ple_store.reader.DEFAULT_STRATEGY, "write": write, "fetch": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    if args.delete_after:
        for f in (Path(path), workdir / "e2b_int4.write.json"):
            f.unlink(missing_ok=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/work/main/work_dirs/ple_bench")
    ap.add_argument("--dtypes", default="int8,int4")
    ap.add_argument("--tokens", default="128,512,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rewrite", action="store_true", help="write the files even if present")
    ap.add_argument("--out", default=None, help=f"default {RESULTS} ({ROW_CRC_RESULTS} with --row-crc-cost)")
    ap.add_argument("--row-crc-cost", action="store_true", help="compare the fetch with and without its row check")
    ap.add_argument("--delete-after", action="store_true", help="delete the .ple written for --row-crc-cost")
    ap.add_argument("--write-one", nargs=2, metavar=("DTYPE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write_one:
        write_one(*args.write_one)
        return 0
    if args.row_crc_cost:
        args.out = args.out or str(ROW_CRC_RESULTS)
        return row_crc_cost(args)
    args.out = args.out or str(RESULTS)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(V)
    prompts = {int(T): zipf_prompt(rng, perm, int(T)) for T in args.tokens.split(",")}
    writes, rows = [], []
    pool = ThreadPoolExecutor(QD)
    for fut in [pool.submit(time.sleep, 0.01) for _ in range(QD)]:   # start all QD threads before timing
        fut.result()
    for dtype in args.dtypes.split(","):
        writes.append(ensure_file(workdir, dtype, args.rewrite))
        path = str(workdir / f"e2b_{dtype}.ple")
        with ple_store.open(path) as reader:
            reader.fetch([1, 2, 3], strategy="preadv")   # start the reader's thread pool outside the timings
            rows += bench_file(path, reader, prompts, args.repeats, pool)
    pool.shutdown()
    print_table(rows, writes)
    out = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
           "shape": {"vocab_size": V, "num_layers": L, "ple_dim": P}, "repeats": args.repeats, "seed": args.seed,
           "default_strategy": ple_store.reader.DEFAULT_STRATEGY, "writes": writes, "fetch": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
