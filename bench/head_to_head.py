"""Head-to-head: gemma-edge vs LiteRT-LM vs ExecuTorch's own Gemma 4 example, one checkpoint, one machine.

    python bench/head_to_head.py --model e2b-10l          # reduced-depth E2B (real widths, 10 layers)
    python bench/head_to_head.py --model e2b --litert-staged --et-rss-limit-gib 20

One command: writes (or reuses) a random-weight checkpoint of the preset, builds each system from it —
our bundle (8da4w per-channel, int4 PLE; and the int8-PLE bundle from the same program), LiteRT-LM's
`.litertlm` (litert-torch + the gemma4_mixed48 recipe, PLE externalized) and the ExecuTorch example's
`.pte` (`--no-audio --no-vision`, 8da4w+emb8) — each peer in its own virtualenv installed from the package
index (bench/peers/), builds cached under --work keyed by the checkpoint's hash. Then runs every system on
the same prompts (greedy, EOS ignored where the runtime allows), the same thread count, systems
alternating, one warm-up then the median of --repeats runs each, every ExecuTorch program loaded as an
Android app would (no mlock). Measures this machine's memory bandwidth in the same run and reports each
system's decode time per token against its weight bytes read per token ÷ bandwidth.

Prints one table and merges the results into bench/results/head_to_head.json under --label (default: the
model name), with ours/LiteRT-LM ratios (`peak_rss_ratio`, `decode_tps_ratio`, `prefill_tps_ratio`,
`device_bytes_ratio`) and the same against the ExecuTorch example under `vs_executorch`.

How long: e2b-10l from nothing ≈ 1.5 h on 2 cores (venvs ~5 min each; builds: ours ~15 min, LiteRT ~15
min, ET example ~15 min; runs ~10 min); cached builds leave only the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers import et_example, litert_lm, ours  # noqa: E402

from gemma_edge.procfs import cpu_isa  # noqa: E402

RESULTS = HERE / "results" / "head_to_head.json"
SYSTEMS = ("ours", "ours-int8", "ours-py", "litert", "et", "litert-notes")
# ours / ours-int8 run in the native host (gemma-edge-run: C++, no Python in the process, as on a phone);
# ours-py is the same int4 bundle under the Python runtime (Session), whose host alone is 0.37 GB.
LABELS = {"ours": "gemma-edge native (.pte + int4 .ple)", "ours-int8": "gemma-edge native (.pte + int8 .ple)",
          "ours-py": "gemma-edge Python host (.pte + int4 .ple)",
          "litert": "LiteRT-LM (.litertlm, gemma4_mixed48)", "et": "ExecuTorch example (.pte, 8da4w+emb8)",
          "litert-notes": "LiteRT-LM, full E2B, from its notes*"}
# LiteRT-LM on the full E2B as measured on this machine earlier (../shared/docs/litert-lm-notes.md: medians
# of the ranges given there; 2 threads, warm, text only). Its float conversion does not fit in 24 GiB in one
# process; `--systems litert --litert-staged` builds it here in stages instead.
LITERT_NOTES_E2B = {
    "bytes": 2_580_000_000, "decode_bytes_per_token": 1_190_000_000,
    128: {"load_s": None, "ttft_s": 0.66, "prefill_tok_s": 216.5, "decode_tok_s": 12.65,
          "peak_rss_bytes": 1_680_000_000, "rss_anon_bytes": 430_000_000, "rss_file_bytes": 1_240_000_000,
          "ple_resident_bytes": None},
    512: {"load_s": None, "ttft_s": 2.43, "prefill_tok_s": 216.5, "decode_tok_s": 12.45,
          "peak_rss_bytes": 1_870_000_000, "rss_anon_bytes": None, "rss_file_bytes": None,
          "ple_resident_bytes": None},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_checkpoint(model: str, work: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    ckpt = work / f"ckpt-{model}"
    if not (ckpt / "config.json").exists():
        log(f"writing a random {model} checkpoint to {ckpt}")
        subprocess.run([str(Path(sys.prefix) / "bin" / "gemma-edge"), "random-checkpoint", str(ckpt), "--preset",
                        model], check=True)
    return ckpt


def cached(path: Path, make) -> dict:
    """A build's result, from `path` (JSON) when an earlier run left it and its output still exists."""
    if path.exists():
        res = json.loads(path.read_text())
        if res.get("killed_at_rss_bytes") is not None or Path(res.get("path", "/nonexistent")).exists():
            return res
    res = make()
    path.write_text(json.dumps(res, indent=2))
    return res


def bandwidth_gbs(gib: float = 1.0, reps: int = 7) -> dict:
    """This machine's memory bandwidth now: read-only (a 2-thread sum) and copy (read + write), median GB/s."""
    import torch

    torch.set_num_threads(2)
    x = torch.ones(int(gib * 2**30) // 4)
    y = torch.empty_like(x)

    def med(fn) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    read = x.numel() * 4 / med(lambda: x.sum()) / 1e9
    copy = 2 * x.numel() * 4 / med(lambda: y.copy_(x)) / 1e9
    return {"read_gbs": round(read, 2), "copy_gbs": round(copy, 2), "buffer_gib": gib}


def decode_bytes_per_token(system: str, built: dict) -> int | None:
    """Weight bytes one decode step reads: ours from the bundle's budget (all program weights but the
    embedding table); LiteRT-LM its prefill/decode section; the ET example its .pte less the in-program
    embedding and PLE tables (both only gathered)."""
    if system.startswith("ours"):
        from gemma_edge.runtime.budget import estimate_bundle

        return estimate_bundle(built["path"]).decode_read_bytes
    if system == "litert":
        secs = [s for s in built.get("sections", []) if "prefill_decode" in str(s.get("model_type", "")).lower()]
        return sum(s["end"] - s["begin"] for s in secs) or None
    if system == "et":   # its XNNPACK delegates: every linear and the head (embedding and PLE are gathered)
        return built.get("program", {}).get("delegate_segment_bytes")
    return None


def build_all(systems, ckpt: Path, work: Path, args) -> dict:
    from gemma_edge.export.checkpoint import model_hash

    key = model_hash(ckpt).hex()[:12]
    root = work / key
    root.mkdir(parents=True, exist_ok=True)
    venvs = work / "venvs"
    built = {}
    for system in systems:
        log(f"build {system} (cache {root})")
        if system == "litert-notes":
            built[system] = {"bytes": LITERT_NOTES_E2B["bytes"], "export_s": None, "export_peak_rss_bytes": None,
                             "decode_bytes_per_token": LITERT_NOTES_E2B["decode_bytes_per_token"],
                             "ran_on": "this machine, earlier session (../shared/docs/litert-lm-notes.md); not re-run"}
            continue
        if system == "ours":
            built[system] = ours.build(ckpt, root / "ours-int4", ours.ensure_venv(venvs))
        elif system == "ours-py":   # the int4 bundle again, run under the Python host
            built[system] = built.get("ours") or ours.build(ckpt, root / "ours-int4", ours.ensure_venv(venvs))
        elif system == "ours-int8":
            if "ours" not in built:
                built["ours"] = ours.build(ckpt, root / "ours-int4", ours.ensure_venv(venvs))
            built[system] = ours.build(ckpt, root / "ours-int8", ours.ensure_venv(venvs), ple_dtype="int8",
                                       reuse_program=root / "ours-int4")
        elif system == "litert":
            venv = litert_lm.ensure_venv(venvs)
            built[system] = cached(root / "litert.json", lambda: litert_lm.build(
                ckpt, root / "litert", venv, staged=args.litert_staged,
                rss_limit_bytes=int(args.rss_limit_gib * 2**30)))
        elif system == "et":
            venv = et_example.ensure_venv(venvs)
            built[system] = cached(root / "et.json", lambda: et_example.build(
                ckpt, root / "et", venv, rss_limit_bytes=int(args.rss_limit_gib * 2**30)))
        b = built[system]
        log(f"  {system}: " + (f"killed at {b['killed_at_rss_bytes'] / 2**30:.1f} GiB ({b.get('stage')})"
                               if b.get("killed_at_rss_bytes") else
                               f"{b['bytes'] / 1e9:.2f} GB, export {b.get('export_s')} s, "
                               f"peak {(b.get('export_peak_rss_bytes') or 0) / 2**30:.1f} GiB"))
    return built


def run_one(system: str, built: dict, ids: list[int], args, venvs: Path) -> dict:
    if system == "litert-notes":
        if len(ids) not in LITERT_NOTES_E2B:
            raise SystemExit("litert-notes: figures exist for prompts "
                             f"{[k for k in LITERT_NOTES_E2B if isinstance(k, int)]}")
        return {**LITERT_NOTES_E2B[len(ids)], "source": built["ran_on"]}
    if system.startswith("ours"):
        return ours.run(Path(built["path"]), ours.ensure_venv(venvs), ids, args.new_tokens, args.threads, args.repeats,
                        host="python" if system == "ours-py" else "native")
    if system == "litert":
        return litert_lm.run(Path(built["path"]), litert_lm.ensure_venv(venvs), ids, args.new_tokens, args.threads,
                             args.repeats)
    return et_example.run(Path(built["path"]), et_example.ensure_venv(venvs), ids, args.new_tokens, args.threads,
                          args.repeats, mlock=False)


def above_host(r: dict) -> int | None:
    """Peak RSS less the host process's RSS before the model was loaded: what loading and running the model
    cost. Hosts: a Python one with torch + ExecuTorch's bindings imported is 0.37 GB (ours-py, the ET
    example); LiteRT-LM's Python wrapper 0.09 GB; our native host about 5 MB."""
    host = r.get("host_rss_before_load_bytes")
    return r["peak_rss_bytes"] - host if host is not None and r.get("peak_rss_bytes") else None


def machine() -> str:
    """What ran the benchmark: the shared VMs behind this machine kind differ in CPU and memory bandwidth from
    day to day, so every result names its CPU (ratios are only compared within one run)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem:.1f} GiB; ISA {cpu_isa()['class']}"


def ratios(a: dict, b: dict, bytes_a: int, bytes_b: int) -> dict:
    div = lambda x, y: round(x / y, 3) if x and y else None   # noqa: E731
    return {"peak_rss_ratio": div(a["peak_rss_bytes"], b["peak_rss_bytes"]),
            "peak_rss_above_host_ratio": div(above_host(a), above_host(b)),
            "decode_tps_ratio": div(a["decode_tok_s"], b["decode_tok_s"]),
            "prefill_tps_ratio": div(a["prefill_tok_s"], b["prefill_tok_s"]),
            "ttft_ratio": div(a["ttft_s"], b["ttft_s"]),
            "device_bytes_ratio": div(bytes_a, bytes_b)}


def table(built: dict, runs: dict, bw: dict) -> str:
    gb = lambda n: f"{n / 1e9:.2f}" if n else "-"   # noqa: E731
    head = (f"{'system':<44}{'device GB':>10}{'export s':>9}{'exp. peak GiB':>14}{'prompt':>7}{'load s':>7}"
            f"{'TTFT s':>8}{'prefill t/s':>12}{'decode t/s':>11}{'peak RSS GB':>12}{'above host':>11}"
            f"{'anon/file GB':>14}"
            f"{'PLE res. MB':>12}{'GB/token':>9}{'% of bw bound':>14}")
    lines = [head, "-" * len(head)]
    for (system, prompt), r in runs.items():
        b = built[system]
        if b.get("killed_at_rss_bytes"):
            lines.append(f"{LABELS[system]:<44}  export killed at {b['killed_at_rss_bytes'] / 2**30:.1f} GiB: "
                         f"{b.get('stage', '')[:60]}")
            continue
        per_tok = b.get("decode_bytes_per_token")
        bound = bw["read_gbs"] * 1e9 / per_tok if per_tok else None
        ple = r.get("ple_resident_bytes", r.get("embedding_resident_bytes"))
        f = lambda x, w, spec, scale=1: f"{x / scale:{w}{spec}}" if x is not None else f"{'-':>{w}}"   # noqa: E731
        lines.append(
            f"{LABELS[system]:<44}{gb(b['bytes']):>10}{f(b.get('export_s'), 9, '.0f')}"
            f"{f(b.get('export_peak_rss_bytes'), 14, '.1f', 2**30)}{prompt:>7}{f(r['load_s'], 7, '.1f')}"
            f"{f(r['ttft_s'], 8, '.2f')}{f(r['prefill_tok_s'], 12, '.1f')}{f(r['decode_tok_s'], 11, '.1f')}"
            f"{f(r['peak_rss_bytes'], 12, '.2f', 1e9)}{f(above_host(r), 11, '.2f', 1e9)}"
            f"{f(r['rss_anon_bytes'], 8, '.2f', 1e9)}/"
            f"{f(r['rss_file_bytes'], 5, '.2f', 1e9)}{f(ple, 12, '.1f', 1e6)}{gb(per_tok):>9}"
            f"{f(100 * r['decode_tok_s'] / bound if bound else None, 13, '.0f')}%")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="e2b-10l", help="random-checkpoint preset (e2b-10l, e2b, e4b)")
    ap.add_argument("--checkpoint", help="use this checkpoint instead of writing a random one")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--prompts", default="128,512")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="work_dirs/h2h")
    ap.add_argument("--label")
    ap.add_argument("--litert-staged", action="store_true",
                    help="build LiteRT-LM in stages (the full E2B's float conversion does not fit in 24 GiB)")
    ap.add_argument("--build-only", action="store_true", help="build (or find) every system's files, run nothing")
    ap.add_argument("--rss-limit-gib", type=float, default=21.0,
                    help="kill a peer's export past this RSS (and record it) instead of taking the machine down")
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    if "litert-notes" in systems and args.model != "e2b":
        if args.systems != ap.get_default("systems"):
            raise SystemExit(f"--systems litert-notes: its figures are for the full E2B, not --model {args.model}")
        systems.remove("litert-notes")
    bad = set(systems) - set(SYSTEMS)
    if bad:
        raise SystemExit(f"--systems: expected some of {SYSTEMS}, found {sorted(bad)}")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = ensure_checkpoint(args.model, work, args.checkpoint)
    built = build_all(systems, ckpt, work, args)
    if args.build_only:
        return
    for system, b in built.items():
        if not b.get("killed_at_rss_bytes") and "decode_bytes_per_token" not in b:
            b["decode_bytes_per_token"] = decode_bytes_per_token(system, b)

    from gemma_edge.contract.config import TextConfig

    vocab = TextConfig.from_json(ckpt / "config.json").vocab_size
    import numpy as np

    rng = np.random.default_rng(0)
    log("memory bandwidth")
    bw = bandwidth_gbs()
    log(f"  read {bw['read_gbs']} GB/s, copy {bw['copy_gbs']} GB/s")
    runs = {}
    for prompt in (int(p) for p in args.prompts.split(",")):
        # ids 3..vocab-1 after <bos>; avoid the multimodal placeholders a real prompt would not hold
        ids = [2] + [int(i) for i in rng.integers(3, min(vocab, 255999), prompt - 1)]
        for system in systems:
            if built[system].get("killed_at_rss_bytes"):
                continue
            log(f"run {system}, prompt {prompt}, {args.new_tokens} new, {args.repeats} repeats")
            runs[(system, prompt)] = run_one(system, built[system], ids, args, work / "venvs")
            r = runs[(system, prompt)]
            log(f"  prefill {r['prefill_tok_s']:.1f} tok/s, decode {r['decode_tok_s']:.1f} tok/s, "
                f"peak {r['peak_rss_bytes'] / 2**30:.2f} GiB")
    print(table(built, runs, bw))

    summary = {}
    for prompt in sorted({p for _, p in runs}):
        row = {}
        # a LiteRT-LM run here wins over the figures from its notes (full E2B only)
        for base, key in (("litert-notes", "vs_litert"), ("litert", "vs_litert"), ("et", "vs_executorch")):
            if ("ours", prompt) in runs and (base, prompt) in runs:
                row[key] = ratios(runs[("ours", prompt)], runs[(base, prompt)], built["ours"]["bytes"],
                                  built[base]["bytes"])
        if ("ours", prompt) in runs and ("ours-py", prompt) in runs:   # one bundle, two hosts
            a, b = runs[("ours", prompt)], runs[("ours-py", prompt)]
            same_files = {k: v for k, v in ratios(a, b, 1, 1).items() if k != "device_bytes_ratio"}
            row["native_vs_python_host"] = {**same_files,
                                            "same_greedy_tokens": a["runs"][0]["tokens"] == b["runs"][0]["tokens"]}
        summary[str(prompt)] = row
    label = args.label or args.model
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    first = str(min(int(p) for p in summary)) if summary else None
    data[label] = {
        "model": args.model, "checkpoint": str(ckpt), "machine": machine(), "isa": cpu_isa(),
        "ran_on": "every build and run on this machine unless a build says otherwise",
        "date": time.strftime("%Y-%m-%d %H:%M"), "prompts": args.prompts, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "threads": args.threads, "bandwidth": bw,
        # headline ratios (ours / LiteRT-LM) at the shortest prompt; per prompt under "ratios"
        **(summary[first].get("vs_litert", {}) if first else {}),
        "vs_executorch": summary[first].get("vs_executorch", {}) if first else {},
        "ratios": summary,
        "builds": {s: {k: v for k, v in b.items() if k not in ("program", "stages")} for s, b in built.items()},
        "runs": {f"{s}@{p}": {k: v for k, v in r.items() if k not in ("runs", "program")}
                 for (s, p), r in runs.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))
    log(f"written to {RESULTS} under {label!r}")


if __name__ == "__main__":
    main()
