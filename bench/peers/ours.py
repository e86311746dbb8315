"""gemma-edge itself as a head-to-head system, with the same interface as the peers beside it.

    venv = ensure_venv(Path("work_dirs/peers"))          # this project's own interpreter
    built = build(checkpoint_dir, out_dir, venv)          # `gemma-edge export`, timed, peak RSS of the child
    timed = run(Path(built["path"]), venv, ids, n_new)    # medians of `repeats` runs, in one child

Two hosts run the same bundle:
* host="native" (default): `gemma-edge-run`, the C++ host (gemma_edge.runtime.native) — ExecuTorch's C++
  Module and our .ple reader in a process with no Python, as an app on a phone runs it.
* host="python": `gemma_edge.runtime.Session` in a Python child (the .pte through the stock
  `executorch.runtime`, torch imported), which costs 0.37 GB of host before the model. This file is that
  child (`python ours.py run SPEC_JSON`).
Both: PLE rows of the prompt in one batched fetch, one warm-up generation, then `repeats` timed ones, each
from position 0, greedy, EOS ignored.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

try:
    from . import childproc
except ImportError:  # run as a child script: this folder is on sys.path
    import childproc

RAN_ON = "this machine (2 cores, 24 GiB)"
RESULT_MARK = "@@OURS_RESULT@@ "


def ensure_venv(root: Path) -> Path:
    """Ours runs in this project's own environment (the README's install), not a separate venv."""
    return Path(sys.prefix)


def _stale(bundle: Path) -> int:
    """The program revision of a bundle an older gemma-edge exported (0 when it is current)."""
    from gemma_edge.contract.bundle_format import PROGRAM_REVISION

    rev = json.loads((bundle / "manifest.json").read_text())["export"].get("program_revision", 1)
    return 0 if rev == PROGRAM_REVISION else rev


def build(checkpoint_dir: Path, out_dir: Path, venv: Path, *, ple_dtype: str = "int4", quant: str = "8da4w",
          max_context: int = 1024, prefill_chunk: int = 128, reuse_program: Path | None = None,
          rss_limit_bytes: int | None = None) -> dict:
    """`gemma-edge export CHECKPOINT --out OUT_DIR` (defaults: 8da4w per-channel, int4 per-row embedding, the given
    PLE dtype) in a child; reuses an existing bundle of the same checkpoint and settings as it is.
    Returns {"path" (bundle dir), "bytes" (.pte + .ple), "export_s", "export_peak_rss_bytes", "stages", ...}."""
    out_dir = Path(out_dir)
    gemma_edge = Path(venv) / "bin" / "gemma-edge"
    cmd = [str(gemma_edge), "export", str(checkpoint_dir), "--out", str(out_dir), "--quant", quant,
           "--ple-dtype", ple_dtype, "--max-context", str(max_context), "--prefill-chunk", str(prefill_chunk),
           "--quiet"]
    if reuse_program is not None:
        cmd += ["--reuse-program", str(reuse_program)]
    stale_rev = _stale(out_dir) if (out_dir / "manifest.json").exists() else 0
    if stale_rev:
        stale = out_dir.with_name(out_dir.name + f".rev{stale_rev}")
        shutil.rmtree(stale, ignore_errors=True)
        os.rename(out_dir, stale)  # kept for comparison, never reused as current
    if not (out_dir / "manifest.json").exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        log = out_dir.parent / f"{out_dir.name}.export.log"
        child = childproc.run(cmd, log, RESULT_MARK, rss_limit_bytes=rss_limit_bytes)
        if child["killed_at_rss_bytes"] is not None:
            return {"killed_at_rss_bytes": child["killed_at_rss_bytes"], "export_s": round(child["elapsed_s"], 1),
                    "log": str(log), "ran_on": RAN_ON}
        if child["rc"] != 0:
            raise RuntimeError(f"gemma-edge export exited with {child['rc']} (log: {log})")
        (out_dir / "export_run.json").write_text(json.dumps(
            {"export_s": round(child["elapsed_s"], 1), "export_peak_rss_bytes": child["peak_rss_bytes"],
             "command": cmd, "ran_on": RAN_ON}, indent=2))
    manifest = json.loads((out_dir / "manifest.json").read_text())
    run_info = json.loads((out_dir / "export_run.json").read_text()) if (out_dir / "export_run.json").exists() else {}
    files = manifest["files"]
    return {"path": str(out_dir), "bytes": files["program"]["bytes"] + files.get("ple", {}).get("bytes", 0),
            "program_bytes": files["program"]["bytes"], "ple_bytes": files.get("ple", {}).get("bytes", 0),
            "export_s": run_info.get("export_s"), "export_peak_rss_bytes": run_info.get("export_peak_rss_bytes"),
            "stages": manifest["export"]["stages"],
            "program_reused_from": manifest["export"].get("program_reused_from"),
            "quantization": manifest["quantization"], "ran_on": run_info.get("ran_on", RAN_ON)}


def run(bundle: Path, venv: Path, prompt_ids: list[int], n_new: int, threads: int = 2, repeats: int = 3,
        *, mlock: bool = False, host: str = "native") -> dict:
    """Time `bundle` on `prompt_ids` + `n_new` greedy tokens (EOS ignored) in a child: one warm-up, then
    `repeats` timed runs. host: "native" (gemma-edge-run) or "python" (Session). mlock=False (default) loads
    as an Android app (no CAP_IPC_LOCK, 64 KiB memlock limit), as the peers are run. Returns medians and
    memory at the end while the program is loaded."""
    if host == "native":
        return _run_native(Path(bundle), prompt_ids, n_new, threads, repeats, mlock)
    if host != "python":
        raise ValueError(f"host: expected 'native' or 'python', found {host!r}")
    spec = {"bundle": str(Path(bundle).resolve()), "ids": [int(i) for i in prompt_ids], "n_new": n_new,
            "threads": threads, "repeats": repeats}
    log = Path(bundle) / f"run-{os.getpid()}.log"
    cmd = [str(Path(venv) / "bin" / "python"), str(Path(__file__).resolve()), "run", json.dumps(spec)]
    child = childproc.run(cmd, log, RESULT_MARK, env=childproc.clean_env(OMP_NUM_THREADS=str(threads)),
                          preexec_fn=None if mlock else childproc.as_android_app)
    if child["rc"] != 0 or child["result"] is None:
        raise RuntimeError(f"our run exited with {child['rc']} (log: {log})")
    log.unlink()
    res = child["result"]
    med = lambda k: statistics.median(r[k] for r in res["runs"])   # noqa: E731
    return {"load_s": res["load_s"], "ttft_s": med("ttft_s"), "prefill_tok_s": med("prefill_tok_s"),
            "decode_tok_s": med("decode_tok_s"), **res["memory"], "ple_resident_bytes": res["ple_resident_bytes"],
            "ple_page_cache_bytes": res["ple_page_cache_bytes"], "embedding_resident_bytes": res["pte_resident_bytes"],
            "host": "python",
            "threads": res["threads"], "prompt_tokens": len(prompt_ids), "n_new": n_new, "mlock": mlock,
            "tokens_identical_across_runs": all(r["tokens"] == res["runs"][0]["tokens"] for r in res["runs"]),
            "ran_on": RAN_ON, "runs": res["runs"]}


def _run_native(bundle: Path, prompt_ids: list[int], n_new: int, threads: int, repeats: int, mlock: bool) -> dict:
    from gemma_edge.runtime import native

    exe, log = native.build(), bundle / f"run-native-{os.getpid()}.log"

    def child(ids, n, reps, warm):
        out = childproc.run(native.command(exe, bundle, ids, n, ids_file=log.with_suffix(".ids"), threads=threads,
                                           repeats=reps, warmup=warm), log,
                            '{"runtime": ', mark_in_json=True, env=childproc.clean_env(),
                            preexec_fn=None if mlock else childproc.as_android_app)
        if out["rc"] != 0 or out["result"] is None:
            raise RuntimeError(f"gemma-edge-run exited with {out['rc']} at {out['stage']!r} (log: {log})")
        log.unlink()
        log.with_suffix(".ids").unlink()
        return out["result"]

    # The first load of a program packs XNNPACK's weights into the cache file beside it; every later load
    # maps it (LiteRT-LM's .xnnpack_cache works the same way and exists before its timed runs too). That
    # first load is made here when the cache is missing, and its figures are kept.
    first = None
    if not native.weight_cache_path(bundle).exists():
        r = child(prompt_ids[:1], 1, 1, 0)
        first = {"load_s": r["load_s"], "peak_rss_bytes": r["memory"]["end"]["VmHWM"],
                 "weight_cache_bytes": r["weight_cache"]["bytes"]}
    res = child(prompt_ids, n_new, repeats, 1)
    runs = res["runs"]
    med = lambda k: statistics.median(r[k] for r in runs)   # noqa: E731
    host, end = res["memory"]["host"], res["memory"]["end"]
    return {"load_s": res["load_s"], "ttft_s": med("ttft_s"), "prefill_tok_s": med("prefill_tok_s"),
            "decode_tok_s": med("decode_tok_s"), "peak_rss_bytes": end["VmHWM"], "rss_anon_bytes": end["RssAnon"],
            "rss_file_bytes": end["RssFile"], "host_rss_before_load_bytes": host["VmRSS"],
            "host_rss_anon_before_load_bytes": host["RssAnon"], "after_load": res["memory"]["after_load"],
            # rows are pread into a buffer, never mapped: none of the .ple is in this process's RSS
            "ple_resident_bytes": 0, "embedding_resident_bytes": res["program_resident_bytes"],
            "threads": res["threads"], "prompt_tokens": len(prompt_ids), "n_new": n_new, "mlock": mlock,
            "host": "native", "tokens_identical_across_runs": all(r["tokens"] == runs[0]["tokens"] for r in runs),
            "weight_cache": res.get("weight_cache"), "first_load_packing_weight_cache": first,
            "ran_on": RAN_ON, "runs": runs}


def _child_run(spec: dict) -> dict:
    from executorch.extension.pybindings import portable_lib

    from gemma_edge.contract import bundle_format as bf
    from gemma_edge.procfs import mapping_resident_bytes, proc_status
    from gemma_edge.runtime import Session
    from gemma_edge.runtime.backends import preload

    portable_lib._unsafe_reset_threadpool(spec["threads"])
    preload("pte")
    host = proc_status()   # the Python host with torch and the ExecuTorch runtime imported, before the model
    bundle = Path(spec["bundle"])
    t0 = time.perf_counter()
    session = Session(bundle)
    load_s = time.perf_counter() - t0
    ids, n_new = spec["ids"], spec["n_new"]
    runs = []
    for i in range(spec["repeats"] + 1):        # the first is the warm-up
        toks = [t.token for t in session.generate(ids, n_new, stop_on_eos=False)]
        st = session.last_run
        if i == 0:
            ple_rss = mapping_resident_bytes(bundle / bf.PLE_FILE)
            ple_cache = session.ple.resident_bytes() if hasattr(session.ple, "resident_bytes") else None
            pte_rss = mapping_resident_bytes(bundle / bf.PROGRAM_FILE)
            continue
        runs.append({"ttft_s": st.ttft_s, "prefill_tok_s": st.prefill_tok_s, "decode_tok_s": st.decode_tok_s,
                     "prefill_s": st.prefill_s, "decode_s": st.decode_s, "tokens": toks})
    mem = proc_status()
    return {"load_s": load_s, "runs": runs, "threads": portable_lib._threadpool_get_thread_count(),
            "memory": {"peak_rss_bytes": mem["VmHWM"], "rss_anon_bytes": mem.get("RssAnon", 0),
                       "rss_file_bytes": mem.get("RssFile", 0), "host_rss_before_load_bytes": host["VmRSS"],
                       "host_rss_anon_before_load_bytes": host.get("RssAnon", 0)},
            "ple_resident_bytes": ple_rss, "ple_page_cache_bytes": ple_cache, "pte_resident_bytes": pte_rss}


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    if mode != "run":
        raise SystemExit(f"ours.py: expected mode 'run', found {mode!r}")
    print(RESULT_MARK + json.dumps(_child_run(spec)), flush=True)
