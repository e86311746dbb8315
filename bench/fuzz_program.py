"""Program-corruption fuzz: damaged copies of a bundle's model.pte and of its XNNPACK weight cache, run by the
native host and by the Python runtime, every outcome classified (issue 18).

Run: python bench/fuzz_program.py [--bundle B] [--seconds 300] [--seed 0]. Without --bundle it exports the
tests' tiny random model first. Writes bench/results/fuzz_program.json. The bundle given is never modified:
each case runs on a private copy.

Each case flips random bits, zeroes a random run of bytes or truncates the file, then runs the prompt through
  native  gemma-edge-run (runtime_py/native.py's argv; the host checks size and SHA-256 itself), and
  python  gemma_edge.runtime.Session in a child process (an abort there must not end the fuzz).
Targets and what counts as right:
  program            model.pte damaged, manifest as shipped: every run must end in a documented error.
  program-resigned   model.pte damaged and the manifest rewritten to match it (a broken exporter, or a
                     bundle forged whole): no digest can tell, so exit 0 with other tokens is "undetectable",
                     not a failure; a crash or hang still is.
  cache              the native host's weight cache damaged, its checksum sidecar as written: the host must
                     discard it and give the clean tokens (the Python runtime has no cache).
Outcomes: ok_error (a documented error: the native host's one line with status 2, bad input, or 1, a program
ExecuTorch refused to run; the Python runtime's USER_ERRORS, status 2 here), same_tokens,
undetectable; failures: crash (killed by a signal), hang (no result within --case-timeout), wrong_tokens
(exit 0, tokens that are not the clean run's), traceback (any other failure: an undocumented error).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from gemma_edge.contract import bundle_format as bf
from gemma_edge.runtime import native

RESULTS = Path(__file__).parent / "results" / "fuzz_program.json"
PROMPT = [2, 100, 200, 300, 400, 100, 17, 18, 19, 20, 21, 22, 23]
NEW_TOKENS = 8
FAILURES = ("crash", "hang", "wrong_tokens", "traceback")

# The Python runtime's child: the errors the CLI documents (gemma_edge.cli.USER_ERRORS) are status 2 and one
# line, as `gemma-edge run` prints them; anything else is left to raise (status 1, a traceback).
PY_CHILD = r"""
import json, sys
from gemma_edge.cli import USER_ERRORS
from gemma_edge.runtime import Session
try:
    with Session(sys.argv[1]) as s:
        tokens = [t.token for t in s.generate(json.loads(sys.argv[2]), int(sys.argv[3]))]
except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"tokens": tokens}))
"""


def tiny_bundle(work: Path) -> Path:
    """The tests' tiny random checkpoint and its bundle (tests/conftest.py's settings)."""
    from gemma_edge.contract.presets import preset
    from gemma_edge.export.exporter import ExportSettings, export_bundle
    from gemma_edge.export.parity import random_hf_model
    from gemma_edge.export.random_tokenizer import write_test_tokenizer

    cfg = preset("tiny")
    ckpt = work / "checkpoint"
    random_hf_model(cfg, seed=0).save_pretrained(ckpt)
    write_test_tokenizer(ckpt, cfg.vocab_size)
    settings = ExportSettings(quant="none", embedding_quant="none", ple_dtype="int8", max_context=64, prefill_chunk=8)
    return export_bundle(ckpt, work / "bundle", settings, progress=False)


# ---------------------------------------------------------------------------------------------------
# Damage
# ---------------------------------------------------------------------------------------------------

def damage(raw: bytes, rng: random.Random) -> tuple[bytes, dict]:
    """One random change of `raw` that really changes it: flipped bits, a zeroed run, or a truncation."""
    while True:
        op = rng.choice(("flip", "zero", "truncate"))
        b = bytearray(raw)
        if op == "flip":
            where = sorted(rng.randrange(len(b)) for _ in range(rng.choice((1, 1, 2, 8))))
            for i in where:
                b[i] ^= 1 << rng.randrange(8)
            detail = {"offsets": where}
        elif op == "zero":
            start, n = rng.randrange(len(b)), rng.choice((1, 8, 64, 4096))
            b[start:start + n] = bytes(len(b[start:start + n]))
            detail = {"offset": start, "bytes": n}
        else:
            keep = rng.randrange(len(b))
            b = b[:keep]
            detail = {"kept_bytes": keep}
        if bytes(b) != raw:
            return bytes(b), {"op": op, **detail}


def resign(bundle: Path, manifest: dict) -> None:
    """The manifest rewritten to describe model.pte as it now is."""
    m = json.loads(json.dumps(manifest))
    path = bundle / m["files"]["program"]["path"]
    m["files"]["program"].update(bytes=path.stat().st_size, sha256=bf.sha256_file(path))
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(m, indent=2))


# ---------------------------------------------------------------------------------------------------
# Running and classifying
# ---------------------------------------------------------------------------------------------------

def classify(rc: int | None, stdout: str, stderr: str, clean: list[int], resigned: bool, error_prefix: str,
             documented: tuple[int, ...]) -> tuple[str, str]:
    """(outcome, message) of one run; rc None: it hung and was killed. `documented`: the statuses that, with a
    line starting `error_prefix`, are the host's documented errors."""
    if rc is None:
        return "hang", ""
    if rc < 0:
        return "crash", f"killed by signal {signal.Signals(-rc).name}"
    lines = [ln for ln in stderr.splitlines() if ln.startswith(error_prefix) and "warning:" not in ln]
    if rc in documented and lines:
        return "ok_error", lines[-1][:300]
    if rc != 0:
        return "traceback", " | ".join(stderr.strip().splitlines()[-3:])[-300:]
    try:
        tokens = json.loads(stdout.strip().splitlines()[-1])
        tokens = tokens["runs"][0]["tokens"] if "runs" in tokens else tokens["tokens"]
    except (IndexError, KeyError, json.JSONDecodeError):
        return "traceback", f"status 0 without a result: {stdout[-200:]!r}"
    if tokens == clean:
        return "same_tokens", ""
    return ("undetectable" if resigned else "wrong_tokens"), f"tokens {tokens}"


def run_native(exe: Path, bundle: Path, timeout: float, weight_cache: bool) -> tuple[int | None, str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = native.command(exe, bundle, PROMPT, NEW_TOKENS, ids_file=Path(tmp) / "ids", threads=1,
                             stop_on_eos=True, weight_cache=weight_cache)
        return run_child(cmd, timeout)


def run_python(bundle: Path, timeout: float) -> tuple[int | None, str, str]:
    return run_child([sys.executable, "-c", PY_CHILD, str(bundle), json.dumps(PROMPT), str(NEW_TOKENS)], timeout,
                     env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_child(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, str]:
    # its own process group, so a hang is killed with whatever it started
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err


# ---------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", help="bundle to damage copies of (default: export the tests' tiny model)")
    ap.add_argument("--seconds", type=float, default=300, help="time for the cases (the clean runs come first)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-timeout", type=float, default=120, help="a run with no result by then is a hang")
    ap.add_argument("--python-share", type=float, default=0.5,
                    help="fraction of cases also run by the Python runtime (each costs a Python start)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    rng = random.Random(args.seed)
    exe = native.build()
    with tempfile.TemporaryDirectory(prefix="fuzz_program-") as tmp:
        work = Path(tmp)
        src = Path(args.bundle) if args.bundle else tiny_bundle(work / "export")
        bundle = work / "case"
        shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
        manifest = bf.read_manifest(bundle)
        program = bundle / manifest["files"]["program"]["path"]
        clean_program, clean_manifest = program.read_bytes(), (bundle / bf.MANIFEST_FILE).read_text()

        # clean runs: both hosts, the tokens every case is held to; the first native run packs the cache
        rc, out, err = run_native(exe, bundle, args.case_timeout, weight_cache=True)
        if rc != 0:
            raise SystemExit(f"the clean native run failed (status {rc}): {err.strip()[-300:]}")
        clean = json.loads(out.strip().splitlines()[-1])["runs"][0]["tokens"]
        rc, out, err = run_python(bundle, args.case_timeout)
        if rc != 0:
            raise SystemExit(f"the clean Python run failed (status {rc}): {err.strip()[-300:]}")
        clean_py = json.loads(out.strip().splitlines()[-1])["tokens"]
        cache = native.weight_cache_path(bundle, manifest)
        sidecar = cache.with_name(cache.name + ".sha256")
        clean_cache, clean_sidecar = cache.read_bytes(), sidecar.read_bytes()

        cases, t_end = [], time.monotonic() + args.seconds
        while time.monotonic() < t_end:
            target = rng.choice(("program", "program", "program-resigned", "cache"))
            # every case starts from the clean bundle, cache and sidecar
            program.write_bytes(clean_program)
            (bundle / bf.MANIFEST_FILE).write_text(clean_manifest)
            cache.write_bytes(clean_cache)
            sidecar.write_bytes(clean_sidecar)
            victim = cache if target == "cache" else program
            bad, detail = damage(victim.read_bytes(), rng)
            victim.write_bytes(bad)
            if target == "program-resigned":
                resign(bundle, manifest)
            hosts = ["native"] + (["python"] if target != "cache" and rng.random() < args.python_share else [])
            for host in hosts:
                t0 = time.monotonic()
                if host == "native":
                    rc, out, err = run_native(exe, bundle, args.case_timeout, weight_cache=True)
                    outcome, msg = classify(rc, out, err, clean, target == "program-resigned", "gemma-edge-run:",
                                            (1, 2))
                else:
                    rc, out, err = run_python(bundle, args.case_timeout)
                    outcome, msg = classify(rc, out, err, clean_py, target == "program-resigned", "error:", (2,))
                case = {"target": target, **detail, "host": host, "outcome": outcome, "message": msg,
                        "status": rc, "seconds": round(time.monotonic() - t0, 3)}
                if target == "cache" and outcome == "same_tokens":
                    case["discarded_with_warning"] = "discarded, packing it again" in err
                cases.append(case)
                print(f"{len(cases):5d} {target:17s} {detail['op']:8s} {host:6s} {outcome:13s} {msg[:110]}",
                      file=sys.stderr)

    summary: dict = {}
    for c in cases:
        summary.setdefault(f"{c['host']}/{c['target']}", Counter())[c["outcome"]] += 1
    failures = Counter(c["outcome"] for c in cases if c["outcome"] in FAILURES)
    # as-shipped bundles and the cache: every case must end in the documented error (or, for the cache, the
    # clean tokens after a discard); resigned programs are held only to no crash, no hang, no traceback
    result = {
        "bench": "fuzz_program", "seed": args.seed, "seconds": args.seconds, "bundle": str(src),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "prompt": PROMPT, "new_tokens": NEW_TOKENS, "clean_tokens": {"native": clean, "python": clean_py},
        "cases_run": len(cases), "summary": {k: dict(v) for k, v in sorted(summary.items())},
        "failures": {k: failures.get(k, 0) for k in FAILURES},
        "cache_cases_without_warning": sum(1 for c in cases if c.get("discarded_with_warning") is False),
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(args.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    os.replace(tmp_out, args.out)
    print(json.dumps({k: result[k] for k in ("cases_run", "summary", "failures", "cache_cases_without_warning")},
                     indent=1))
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
