"""The audio tower side by side: gemma-edge's program vs ExecuTorch's Gemma 4 example vs transformers eager, on the
same random tower weights, at 5 s and 30 s of audio (issue 21's benchmark).

    python bench/audio.py [--seconds 5,30] [--systems ours,ours-8da4w,et,hf] [--out bench/results/audio.json]
        [--checkpoint CKPT] [--ttft-bundle BUNDLE] [--repeats 3]

One command. Writes (or reuses) under --work a random multimodal checkpoint with E2B's real audio tower
(`presets.AUDIO_PRESETS["e2b"]`: 1024 wide, 12 Conformer layers, clipped linears) and a small text part of E2B's
hidden size (1536, so embed_audio has its real shape); `--checkpoint` takes any multimodal checkpoint instead. Then
builds every system from it (cached under --work) and runs each at each length in a child process of its own
(bench/peers/audio_child.py), so each peak RSS is that run's: load time, one warm-up encode, the median of --repeats
encodes, peak RSS, on one synthetic speech-like clip (a gliding voiced pitch over a noise floor, 16 kHz):
  ours        audio.pte as `gemma-edge export` writes it (8da8w, the default), the front end inside
  ours-8da4w  the same with int4 weights (per channel)
  et          the example's speech_transform + audio_encoder, built by its own functions at its defaults (8da4w,
              groups of 128), run as its runner runs them
  hf          Gemma4AudioFeatureExtractor + get_audio_features, fp32 eager: the reference for every error
Encode time counts the whole clip -> soft tokens path of each (front end included). In the same run: this machine's
GEMM peaks (fp32 torch.matmul; one XNNPACK linear of the FFN's shape in 8da8w and 8da4w) and each system's achieved
GFLOP/s from the tower's FLOPs (runtime.budget.audio_budget: 14.8 GFLOP per second of audio for E2B's tower).

--ttft-bundle BUNDLE (a bundle with an audio program, e.g. full-size E2B): time to first token of 30 s of the clip +
a 16-token instruction through the Python Session (the clip cut, the audio program loaded, run and released, then
the prefill), beside the instruction alone, after one warm-up each; the median of --repeats runs.

Prints a table and writes JSON (cpu_isa, versions, load average at start, every figure, ratios, the targets).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

import audio_child  # noqa: E402
import childproc  # noqa: E402
from childproc import log  # noqa: E402

from gemma_edge.procfs import cpu_isa, isa_line  # noqa: E402

RESULTS = HERE / "results" / "audio.json"
SYSTEMS = ("ours", "ours-8da4w", "et", "hf")
LABELS = {"ours": "gemma-edge audio program (8da8w)", "ours-8da4w": "gemma-edge audio program (8da4w)",
          "et": "ExecuTorch example speech_transform + audio_encoder (8da4w g128)", "hf": "transformers eager (fp32)"}
SR = 16_000


def synthetic_speech(seconds: float, seed: int = 20) -> np.ndarray:
    """A voiced signal (a gliding 29-harmonic pitch at syllable rate) over a low noise floor, 16-bit quantised."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * SR))) / SR
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 3 * t)) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 30)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    x = 0.3 * x / np.abs(x).max() + 1e-3 * rng.standard_normal(len(t))
    return (np.round(x * 32767) / 32767).astype(np.float32)


def ensure_checkpoint(work: Path, given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    import torch

    from gemma_edge.contract.presets import AUDIO_PRESETS, preset
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    ckpt = work / "ckpt-e2b-audio"
    if not (ckpt / "config.json").exists():
        log(f"writing a random E2B-audio-tower checkpoint to {ckpt}")
        write_random_checkpoint(ckpt, preset("tiny", hidden_size=1536), dtype=torch.bfloat16, seed=21,
                                multimodal=True, audio_config=AUDIO_PRESETS["e2b"], progress=False)
    return ckpt


def child(mode: str, spec: dict, log_path: Path, rss_limit_bytes: int) -> dict:
    return childproc.run_child(HERE / "peers" / "audio_child.py", mode, spec, log_path, audio_child.RESULT_MARK,
                               rss_limit_bytes)


def build(system: str, ckpt: Path, work: Path, args) -> dict:
    if system == "hf":
        return {"path": str(ckpt)}
    quant = {"ours": "8da8w", "ours-8da4w": "8da4w", "et": audio_child.ET_AUDIO_QUANT}[system]
    pte = work / f"{system}-{quant}.pte"
    sidecar = pte.with_suffix(".json")
    if pte.exists() and sidecar.exists():
        return json.loads(sidecar.read_text())
    log(f"build {system} -> {pte.name}")
    spec = {"module": "et" if system == "et" else "ours", "checkpoint": str(ckpt), "pte": str(pte),
            "quantize": quant}
    res = child("build", spec, pte.with_suffix(".build.log"), int(args.rss_limit_gib * 2**30))
    if res["rc"] != 0 or res["result"] is None:
        raise RuntimeError(f"{system}: build exited with {res['rc']} at {res['stage']!r} (log: {res['log']})")
    out = {**res["result"], "build_wall_s": round(res["elapsed_s"], 1)}
    sidecar.write_text(json.dumps(out, indent=2))
    return out


def run_one(system: str, built: dict, seconds: float, inputs: Path, work: Path, args) -> dict:
    module = "ours" if system.startswith("ours") else system
    spec = {"module": module, "inputs": str(inputs), "repeats": args.repeats, "threads": args.threads,
            "output": str(work / f"out-{system}-{seconds:g}s.npy")}
    spec["checkpoint" if system == "hf" else "pte"] = built["path"]
    if os.path.exists(spec["output"]):
        os.unlink(spec["output"])
    res = child("run", spec, work / f"run-{system}-{seconds:g}s.log", int(args.rss_limit_gib * 2**30))
    if res["killed_at_rss_bytes"] is not None:
        return {"killed_at_rss_bytes": res["killed_at_rss_bytes"], "log": res["log"]}
    if res["result"] is None:
        return {"error": {"type": "child exit", "message": f"exit {res['rc']} at {res['stage']!r}"},
                "log": res["log"]}
    return res["result"]


def gemm_peak(work: Path, ckpt: Path, args) -> dict:
    ac = json.loads((ckpt / "config.json").read_text())["audio_config"]
    spec = {"threads": args.threads, "repeats": 5, "square": 4096, "rows": 750, "in_features": ac["hidden_size"],
            "out_features": 4 * ac["hidden_size"], "work": str(work)}
    res = child("gemm", spec, work / "gemm.log", int(args.rss_limit_gib * 2**30))
    if res["result"] is None:
        raise RuntimeError(f"GEMM peak: child exited with {res['rc']} at {res['stage']!r} (log: {res['log']})")
    return res["result"]


def ttft(bundle: Path, args) -> dict:
    """TTFT of 30 s of audio + a 16-token instruction, and of the instruction alone, through the Python Session."""
    import torch

    from gemma_edge.runtime.session import Session

    torch.set_num_threads(args.threads)
    wave = synthetic_speech(30.0)
    out = {}
    with Session(bundle) as s:
        t = s.audio_tokens
        rng = np.random.default_rng(3)
        instruction = rng.integers(1000, 20000, 16).tolist()
        for name, ids, audio in (("instruction_only", [s.bos_token_id] + instruction, ()),
                                 ("audio_30s_plus_instruction", [s.bos_token_id, t.audio] + instruction, [wave])):
            runs = []
            for _ in range(args.repeats + 1):
                list(s.generate(ids, 1, audio=audio))
                st = s.last_run
                runs.append({"ttft_s": st.ttft_s, "encode_s": st.encode_s, "prefill_s": st.prefill_s,
                             "prompt_tokens": st.prompt_tokens})
            timed = runs[1:]
            out[name] = {"ttft_median_s": statistics.median(r["ttft_s"] for r in timed),
                         "encode_median_s": statistics.median(r["encode_s"] for r in timed),
                         "prefill_median_s": statistics.median(r["prefill_s"] for r in timed),
                         "prompt_tokens": timed[0]["prompt_tokens"], "runs": runs}
    out["bundle"] = str(bundle)
    return out


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "executorch", "torchao", "transformers")}


def summarize(rows: dict, gflop: dict, gemm: dict) -> dict:
    peak = gemm["gflop_s"]
    out = {}
    for sec, by_system in rows.items():
        s = {}
        for system, r in by_system.items():
            t = r.get("encode_median_s")
            if t is None:
                continue
            s[system] = {"encode_s": t, "rtf": t / float(sec), "gflop_s": gflop[sec] / t,
                         "peak_rss_bytes": r["memory"]["peak_rss_bytes"],
                         "above_host_bytes": r["memory"]["peak_rss_bytes"] - r["memory"]["host_rss_before_load_bytes"]}
            kernel = peak["xnnpack_linear_8da4w" if system == "ours-8da4w" else "xnnpack_linear_8da8w"]
            s[system]["share_of_linear_peak"] = s[system]["gflop_s"] / kernel
        for ours in ("ours", "ours-8da4w"):
            if ours in s and "et" in s:
                s[f"{ours}_vs_et"] = {"speed": s["et"]["encode_s"] / s[ours]["encode_s"],
                                      "peak_rss": s[ours]["peak_rss_bytes"] / s["et"]["peak_rss_bytes"]}
        out[sec] = s
    return out


def targets(summary: dict) -> dict:
    t = {}
    for sec, s in summary.items():
        for ours in ("ours", "ours-8da4w"):
            vs = s.get(f"{ours}_vs_et")
            if ours not in s:
                continue
            t[f"{ours}@{sec}s"] = {
                "encode_vs_et >= 1.5": None if vs is None else {"value": vs["speed"], "met": vs["speed"] >= 1.5},
                "rtf <= 0.1": {"value": s[ours]["rtf"], "met": s[ours]["rtf"] <= 0.1},
                "peak_rss_vs_et <= 0.8": None if vs is None else {"value": vs["peak_rss"],
                                                                  "met": vs["peak_rss"] <= 0.8},
                "share_of_linear_peak": s[ours]["share_of_linear_peak"]}
    return t


def table(rows: dict, summary: dict, errs: dict) -> str:
    lines = [f"{'clip':>5} {'system':<62} {'encode s':>9} {'RTF':>6} {'GFLOP/s':>8} {'% peak':>7} {'peak RSS':>9} "
             f"{'max|Δ| vs hf':>13}"]
    for sec, by_system in rows.items():
        for system, r in by_system.items():
            s = summary[sec].get(system)
            if s is None:
                err = r.get("error") or {"message": f"killed at {r.get('killed_at_rss_bytes')} B"}
                lines.append(f"{sec:>4}s {LABELS[system]:<62} failed: {err['message'][:60]}")
                continue
            e = (errs.get(sec) or {}).get(system)
            lines.append(f"{sec:>4}s {LABELS[system]:<62} {s['encode_s']:9.3f} {s['rtf']:6.3f} {s['gflop_s']:8.1f} "
                         f"{100 * s['share_of_linear_peak']:6.0f}% {s['peak_rss_bytes'] / 2**30:7.2f} G "
                         f"{'' if e is None else format(e.get('max_abs', float('nan')), '13.2e')}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", default="5,30")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--checkpoint")
    p.add_argument("--ttft-bundle")
    p.add_argument("--work", default=str(HERE.parent / "work_dirs" / "bench_audio"))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rss-limit-gib", type=float, default=16.0)
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seconds = [float(s) for s in args.seconds.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    bad = set(systems) - set(SYSTEMS)
    if bad:
        raise SystemExit(f"--systems: expected some of {SYSTEMS}, found {sorted(bad)}")
    started = {"load_average": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    ckpt = ensure_checkpoint(work, args.checkpoint)
    from gemma_edge.runtime.budget import audio_budget

    config = json.loads((ckpt / "config.json").read_text())
    text_hidden = config["text_config"]["hidden_size"]
    gflop = {f"{s:g}": audio_budget(config["audio_config"], min(750, round(s * 25)),
                                    text_hidden=text_hidden).flops / 1e9 for s in seconds}
    built = {s: build(s, ckpt, work, args) for s in systems}
    rows, errs = {}, {}
    for sec in seconds:
        key = f"{sec:g}"
        inputs = work / f"speech-{key}s.npy"
        np.save(inputs, synthetic_speech(sec))
        rows[key] = {}
        for system in systems:
            log(f"run {system} at {key} s")
            rows[key][system] = run_one(system, built[system], sec, inputs, work, args)
        if "hf" in systems:
            ref = work / f"out-hf-{key}s.npy"
            errs[key] = {s: childproc.output_errors(work / f"out-{s}-{key}s.npy", ref)
                         for s in systems if s != "hf"}
    log("GEMM peaks")
    gemm = gemm_peak(work, ckpt, args)
    summary = summarize(rows, gflop, gemm)
    result = {"cpu_isa": cpu_isa(), "isa": isa_line(), "versions": versions(), "started": started,
              "checkpoint": str(ckpt), "threads": args.threads, "gflop_per_clip": gflop, "gemm_peak": gemm,
              "built": built, "runs": rows, "errors_vs_hf": errs, "summary": summary, "targets": targets(summary)}
    if args.ttft_bundle:
        log("TTFT on the bundle")
        result["ttft"] = ttft(Path(args.ttft_bundle), args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(isa_line())
    print(table(rows, summary, errs))
    print(f"GEMM peaks (GFLOP/s): {json.dumps({k: round(v, 1) for k, v in gemm['gflop_s'].items()})}")
    for name, t in result["targets"].items():
        print(f"  {name}: " + "; ".join(f"{k} {v['value']:.3g} ({'met' if v['met'] else 'MISSED'})"
                                        if isinstance(v, dict) else f"{k} {v:.2f}" for k, v in t.items()
                                        if v is not None))
    if "ttft" in result:
        tt = result["ttft"]
        print(f"TTFT: 30 s audio + 16 tokens {tt['audio_30s_plus_instruction']['ttft_median_s']:.3f} s (encode "
              f"{tt['audio_30s_plus_instruction']['encode_median_s']:.3f} s), the instruction alone "
              f"{tt['instruction_only']['ttft_median_s']:.3f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
