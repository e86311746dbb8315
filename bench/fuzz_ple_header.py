"""Header fuzz of the `.ple` readers: mutated copies of tiny files go through the Python, C++ and Java readers.

Run: python bench/fuzz_ple_header.py [--seconds 120] [--seed 0] [--readers python,native,java]
Writes bench/results/fuzz_ple_header.json.

Each case mutates a good file — header fields set to edge values (with the header CRC and the identity
recomputed or not, so the checks behind them are reached too), random header, checksum-table or data bytes,
a truncated or extended file — and hands it to every reader, which opens it, compares its identity with the
good file's (what a bundle manifest holds; the host gets it as --ple-identity) and fetches every row. An
outcome is *ok* when the reader refuses the file with its documented error (Python PleFormatError, C++ exit
status 2 with one line on stderr, Java PleFormatException), or accepts it and returns exactly the good file's
rows. It is a *failure* when the reader crashes (a signal, an undocumented exception), hangs (no answer within
--case-timeout), or returns other rows for the good file's identity (a silent wrong answer).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from gemma_edge import ple_store
from gemma_edge.ple_store.format import CRC_COVERED, HEADER_FIELDS, IDENTITY_PREFIX, PAGE_SIZE, PleHeader

RESULTS = Path(__file__).parent / "results" / "fuzz_ple_header.json"
REPO = Path(__file__).resolve().parent.parent
JAVA_CORE = REPO / "android_demo" / "core"
BASES = [   # (name, dtype, row CRCs, V, L, P): every dtype, both minor versions, rows sharing and straddling pages
    ("int8", "int8", True, 300, 3, 16),
    ("int4", "int4", True, 700, 5, 12),
    ("bf16", "bf16", True, 200, 2, 40),
    ("fp32_minor0", "fp32", False, 300, 4, 64),
]

# ---------------------------------------------------------------------------------------------------
# Readers: each a long-lived child answering one case per line (so a crash or hang is seen and survived)
# ---------------------------------------------------------------------------------------------------

PY_WORKER = r'''
import hashlib, json, sys
import numpy as np
from gemma_edge import ple_store
for line in sys.stdin:
    case = json.loads(line)
    try:
        with ple_store.open(case["path"]) as r:
            if r.header.identity.hex() != case["identity"]:
                out = {"outcome": "refused", "error": "identity (manifest)", "message": "identity differs"}
            else:
                rows = r.fetch(np.arange(r.header.vocab_size))
                out = {"outcome": "rows", "rows_sha256": hashlib.sha256(rows.tobytes()).hexdigest(),
                       "vocab_size": int(r.header.vocab_size)}
    except ple_store.PleFormatError as e:
        out = {"outcome": "refused", "error": "PleFormatError", "message": str(e)}
    except Exception as e:   # undocumented: the fuzz's finding
        out = {"outcome": "undocumented", "error": type(e).__name__, "message": str(e)[:300]}
    print(json.dumps(out), flush=True)
'''

JAVA_DRIVER = r'''
package dev.gemmaedge.core;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;

/** Fuzz driver: one line "path identity" in,
 *  one line "rows SHA" / "refused CLASS MSG" / "undocumented CLASS MSG" out. */
public final class PleFuzzDriver {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        for (String line; (line = in.readLine()) != null; ) {
            int sp = line.lastIndexOf(' ');
            String path = line.substring(0, sp), identity = line.substring(sp + 1);
            String out;
            try (PleFile p = PleFile.open(path)) {
                p.checkIdentity(identity, "the good file");
                int v = p.header().vocabSize;
                int[] ids = new int[v];
                for (int i = 0; i < v; i++) ids[i] = i;
                float[] rows = p.fetch(ids);
                ByteBuffer b = ByteBuffer.allocate(rows.length * 4).order(ByteOrder.LITTLE_ENDIAN);
                for (float x : rows) b.putInt(Float.floatToRawIntBits(x));
                out = "rows " + PleFile.hex(MessageDigest.getInstance("SHA-256").digest(b.array()));
            } catch (PleFormatException e) {
                out = "refused " + e.getClass().getSimpleName() + " " + e.getMessage().replace('\n', ' ');
            } catch (Throwable e) {
                out = "undocumented " + e.getClass().getName() + " "
                    + String.valueOf(e.getMessage()).replace('\n', ' ');
            }
            System.out.println(out);
            System.out.flush();
        }
    }
}
'''


class LineWorker:
    """A child process answering one JSON/text line per case; restarted after a crash or a hang."""

    def __init__(self, argv, env=None):
        self.argv, self.env, self.p = argv, env, None

    def ask(self, line: str, timeout: float) -> tuple[str, str | None]:
        """('answer', text) | ('crash', why) | ('hang', None)."""
        if self.p is None or self.p.poll() is not None:
            self.p = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=self.env, bufsize=1)
        import selectors
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            return self._died()
        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.p.kill()
            self.p.wait()
            self.p = None
            return "hang", None
        out = self.p.stdout.readline()
        if not out:
            return self._died()
        return "answer", out.strip()

    def _died(self):
        rc = self.p.wait()
        err = self.p.stderr.read()[-500:]
        self.p = None
        return "crash", f"exit {rc} ({'signal ' + str(-rc) if rc < 0 else 'status'}): {err.strip()}"

    def close(self):
        if self.p is not None and self.p.poll() is None:
            self.p.stdin.close()
            self.p.wait()


def python_reader():
    worker = LineWorker([sys.executable, "-c", PY_WORKER])

    def run(path, identity, timeout):
        kind, text = worker.ask(json.dumps({"path": str(path), "identity": identity}), timeout)
        if kind != "answer":
            return {"outcome": kind, "message": text}
        return json.loads(text)
    return run, worker.close


def native_reader():
    from gemma_edge.runtime import native
    exe = native.build()

    def run(path, identity, timeout, vocab=None):
        out = Path(path).with_suffix(".rows")
        ids = Path(path).with_suffix(".ids")
        ids.write_text(",".join(map(str, range(vocab))))
        try:
            p = subprocess.run([str(exe), "--ple", str(path), "--ple-identity", identity, "--ids",
                                ids.read_text(), "--rows-out", str(out)], capture_output=True, text=True,
                               errors="backslashreplace", timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"outcome": "hang"}
        if p.returncode < 0:
            return {"outcome": "crash", "message": f"signal {-p.returncode}: {p.stderr[-300:]}"}
        lines = p.stderr.strip().splitlines()
        if p.returncode == 2 and len(lines) == 1:
            return {"outcome": "refused", "error": "exit 2", "message": lines[0]}
        if p.returncode != 0:
            return {"outcome": "undocumented", "error": f"exit {p.returncode}", "message": p.stderr[-300:]}
        rows = out.read_bytes()
        return {"outcome": "rows", "rows_sha256": hashlib.sha256(rows).hexdigest()}
    return run, lambda: None


def java_reader(tmp: Path):
    if shutil.which("javac") is None or shutil.which("java") is None:
        raise RuntimeError("javac/java not found: install a JDK >= 11 or leave java out of --readers")
    classes = tmp / "java-classes"
    classes.mkdir()
    src = tmp / "PleFuzzDriver.java"
    src.write_text(JAVA_DRIVER)
    sources = [str(f) for f in (JAVA_CORE / "src" / "main" / "java").rglob("*.java")] + [str(src)]
    subprocess.run(["javac", "--release", "11", "-encoding", "UTF-8", "-nowarn", "-d", str(classes), *sources],
                   check=True, capture_output=True)
    worker = LineWorker(["java", "-cp", str(classes), "dev.gemmaedge.core.PleFuzzDriver"])

    def run(path, identity, timeout):
        kind, text = worker.ask(f"{path} {identity}", timeout)
        if kind != "answer":
            return {"outcome": kind, "message": text}
        word, _, rest = text.partition(" ")
        if word == "rows":
            return {"outcome": "rows", "rows_sha256": rest}
        cls, _, msg = rest.partition(" ")
        return {"outcome": word, "error": cls, "message": msg}
    return run, worker.close


# ---------------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------------

FIELD_FMT = {off: (code, name) for off, code, name in HEADER_FIELDS}


def edge_values(code: str, orig, rng: random.Random):
    if code in ("I", "H", "Q"):
        bits = {"H": 16, "I": 32, "Q": 64}[code]
        top = (1 << bits) - 1
        pool = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 63, 64, 65, 255, 256, 4095, 4096, 4097, 8192, 65535, 1 << 20,
                (1 << (bits - 1)) - 1, 1 << (bits - 1), top, orig - 1, orig + 1, orig * 2, orig // 2, orig + 4096,
                orig - 4096, orig + 16, orig ^ (1 << rng.randrange(bits)), rng.randrange(top + 1)]
        return [v & top for v in pool]
    if code == "f":
        return [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e38, 1e-45, orig * 2, -orig]
    return None   # byte strings: mutated bytewise


def mutate(good: bytes, h: PleHeader, rng: random.Random) -> tuple[bytes, str]:
    """One mutated file and a short description of what was done."""
    b = bytearray(good)
    kind = rng.choices(["fields", "header_bytes", "pad_bytes", "table", "data", "size"],
                       weights=[55, 15, 4, 8, 12, 6])[0]
    what = []
    if kind == "fields":
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            off, code, name = rng.choice([f for f in HEADER_FIELDS if f[2] not in ("header_crc32",)])
            if code.endswith("s"):
                k = off + rng.randrange(int(code[:-1]))
                b[k] ^= 1 << rng.randrange(8)
                what.append(f"{name}[{k - off}]^")
                continue
            orig = struct.unpack_from("<" + code, b, off)[0]
            v = rng.choice(edge_values(code, orig, rng))
            struct.pack_into("<" + code, b, off, v)
            what.append(f"{name}={v}")
    elif kind == "header_bytes":
        for _ in range(rng.choice([1, 2, 4])):
            k = rng.randrange(CRC_COVERED)
            b[k] = rng.randrange(256)
            what.append(f"h[{k}]")
    elif kind == "pad_bytes":   # after the last field: readers must ignore them
        k = rng.randrange(CRC_COVERED + 4, PAGE_SIZE)
        b[k] = rng.randrange(1, 256)
        what.append(f"pad[{k}]")
    elif kind == "table":
        k = h.checksum_offset + rng.randrange(h.checksum_table_bytes)
        b[k] ^= 1 << rng.randrange(8)
        what.append(f"table[{k - h.checksum_offset}]^")
    elif kind == "data":
        for _ in range(rng.choice([1, 1, 3])):
            k = h.data_offset + rng.randrange(h.data_bytes)
            b[k] ^= 1 << rng.randrange(8)
            what.append(f"data[{k}]^")
    else:
        n = rng.choice([0, 100, PAGE_SIZE, len(b) - 1, len(b) - PAGE_SIZE, len(b) + 1, len(b) + PAGE_SIZE])
        b = b[:n] if n <= len(b) else b + bytes(n - len(b))
        what.append(f"size={n}")
    fix = "none"
    if kind in ("fields", "header_bytes", "table") and len(b) >= PAGE_SIZE:
        fix = rng.choices(["none", "crc", "crc+identity"], weights=[10, 30, 60])[0]
        if fix == "crc+identity":   # a consistent header: the identity check passes, the manifest's does not
            m = PleHeader.unpack(bytes(b[:PAGE_SIZE]))
            lo, n = m.checksum_offset, 4 * m.num_blocks
            if 0 <= lo and lo + n <= len(b) and n <= 1 << 24:
                b[IDENTITY_PREFIX: IDENTITY_PREFIX + 32] = hashlib.sha256(
                    bytes(b[:IDENTITY_PREFIX]) + bytes(b[lo: lo + n])).digest()
            else:
                fix = "crc"
        if fix != "none":
            struct.pack_into("<I", b, CRC_COVERED, zlib.crc32(bytes(b[:CRC_COVERED])))
    return bytes(b), f"{kind}: {' '.join(what)} (fixed: {fix})"


def refusal_key(res: dict) -> str:
    """The field a refusal names, with row / block numbers folded: 'PleFormatError: row N (bytes [N, N))'."""
    msg = res.get("message") or ""
    parts = msg.split(": ")
    field = parts[2] if res.get("error") == "exit 2" and len(parts) > 2 else parts[1] if len(parts) > 1 else "?"
    folded = re.sub(r"\b[0-9]+\b", "N", field)
    return f"{res.get('error')}: {folded}"


def classify(res: dict, good_sha: str) -> str:
    """ok_refused | ok_rows | silent_wrong | crash | hang | undocumented."""
    o = res["outcome"]
    if o == "refused":
        return "ok_refused"
    if o == "rows":
        return "ok_rows" if res["rows_sha256"] == good_sha else "silent_wrong"
    return o


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="stop starting new cases after this long")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readers", default="python,native,java")
    ap.add_argument("--case-timeout", type=float, default=20.0, help="a reader silent this long on a case hangs")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="fuzz_ple_"))
    wanted = [r for r in args.readers.split(",") if r]
    readers, closers = {}, []
    try:
        for name in wanted:
            run, close = {"python": python_reader, "native": native_reader,
                          "java": lambda: java_reader(tmp)}[name]()
            readers[name] = run
            closers.append(close)
        bases = []
        for name, dtype, row_crc, v, layers, dim in BASES:
            x = np.random.default_rng(len(bases)).standard_normal((v, layers * dim)).astype(np.float32)
            path = tmp / f"base_{name}.ple"
            ple_store.write(path, [x], vocab_size=v, num_layers=layers, ple_dim=dim, dtype=dtype, embed_scale=3.0,
                            progress=False, row_crc=row_crc)
            with ple_store.open(path) as r:
                rows = r.fetch(np.arange(v))
                bases.append((name, path.read_bytes(), r.header, r.header.identity.hex(),
                              hashlib.sha256(rows.tobytes()).hexdigest()))
        counts = {r: {} for r in readers}
        by_kind = {r: {} for r in readers}
        failures, refusals = [], {r: {} for r in readers}
        cases, disagreements = 0, []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            name, good, h, identity, good_sha = rng.choice(bases)
            data, what = mutate(good, h, rng)
            path = tmp / "case.ple"
            path.write_bytes(data)
            cases += 1
            classes = {}
            for rname, run in readers.items():
                kw = {"vocab": h.vocab_size} if rname == "native" else {}
                res = run(path, identity, args.case_timeout, **kw)
                cls = classify(res, good_sha)
                classes[rname] = cls
                counts[rname][cls] = counts[rname].get(cls, 0) + 1
                kind = what.split(":")[0]
                by_kind[rname].setdefault(kind, {}).setdefault(cls, 0)
                by_kind[rname][kind][cls] += 1
                if cls == "ok_refused":
                    key = refusal_key(res)
                    refusals[rname][key] = refusals[rname].get(key, 0) + 1
                if cls not in ("ok_refused", "ok_rows"):
                    failures.append({"reader": rname, "base": name, "case": what, "class": cls, "result": res})
                    keep = tmp / f"failure_{len(failures)}.ple"
                    keep.write_bytes(data)
                    print(f"FAILURE {rname} {cls}: {name} {what}: {res}", flush=True)
            if len(set(classes.values())) > 1:   # each may be ok, but the readers should agree
                disagreements.append({"base": name, "case": what, "classes": classes})
            if cases % 1000 == 0:
                print(f"{cases} cases, {time.monotonic() - t0:.0f} s: {counts}", flush=True)
        elapsed = time.monotonic() - t0
    finally:
        for close in closers:
            close()
    summary = {r: {"cases": cases, "crashes": c.get("crash", 0), "hangs": c.get("hang", 0),
                   "silent_wrong": c.get("silent_wrong", 0), "undocumented": c.get("undocumented", 0),
                   "refused": c.get("ok_refused", 0), "accepted_correct_rows": c.get("ok_rows", 0)}
               for r, c in counts.items()}
    out = {"seconds": elapsed, "seed": args.seed, "cases": cases, "readers": list(readers),
           "bases": [{"name": n, "dtype": d, "row_crc": c, "vocab_size": v, "num_layers": L, "ple_dim": P}
                     for n, d, c, v, L, P in BASES],
           "summary": summary, "reader_disagreements": len(disagreements),
           "disagreement_examples": disagreements[:20], "by_mutation": by_kind, "refusals_by_field": refusals,
           "failures": failures[:50]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\n{cases} cases in {elapsed:.0f} s (seed {args.seed})")
    print(f"{'reader':8} {'refused':>8} {'rows ok':>8} {'crash':>6} {'hang':>5} {'wrong':>6} {'undoc':>6}")
    for r, s in summary.items():
        print(f"{r:8} {s['refused']:8} {s['accepted_correct_rows']:8} {s['crashes']:6} {s['hangs']:5} "
              f"{s['silent_wrong']:6} {s['undocumented']:6}")
    print(f"readers disagreeing (refused vs accepted) on {len(disagreements)} cases")
    print(f"wrote {args.out}" + (f"; failing files kept in {tmp}" if failures else ""))
    if not failures:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
