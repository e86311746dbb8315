"""The vision tower side by side: gemma-edge's program vs ExecuTorch's Gemma 4 example vs transformers eager, on the
same random tower weights, per image budget (issue 20's benchmark).

    python bench/vision.py [--tower e2b|tiny] [--budgets 70,140,280,560,1120] [--systems ours,et,hf]
        [--out bench/results/vision.json] [--checkpoint CKPT] [--bundle BUNDLE] [--quick]

One command. Writes (or reuses) under --work a random multimodal checkpoint whose tower is the preset's real one
(`presets.VISION_PRESETS`; E2B's: 768 wide, 16 layers, clipped linears) with a small text part (E2B's hidden size,
1536, so embed_vision has its real shape; the text layers are not used here); `--checkpoint` takes any multimodal
checkpoint instead. Then builds every system from it (cached under --work by the checkpoint's hash):
  ours       `write_vision_program` (8da8w, the export default), one program per budget, each lowering in a child
  ours-fp32  the same with quantize="none"
  et         the example's own vision export (bench/peers/vision_et.py: its functions, its defaults: 8da8w, the
             int8 position table, max_patches 1260)
  hf         transformers 5.23.0 `get_image_features`, fp32 eager: the reference for every output's error
and runs each system at each budget in a child process of its own (bench/peers/vision_child.py), so each peak
RSS is that run's: load time, one warm-up encode, the median of --repeats encodes, peak RSS (load and encode),
on one synthetic 480×640 image preprocessed as the runtime does (`runtime.image.preprocess`; padded at every
budget). A system that fails at a budget (the example's program at any patch count but the one its export
fixed) is recorded with its error, not left out. In the same run: this machine's GEMM peaks (fp32 torch.matmul of a
large square; one XNNPACK linear of the tower's MLP shape in fp32 and 8da8w; the attention's fp32 bmm pairs over
every query block at each budget) and each system's achieved GFLOP/s from the tower's FLOPs per budget
(torch.utils.flop_counter over the HF tower on the meta device, as ../shared/docs/gemma4-multimodal.md §4 counts
them: patch embedder + encoder, plus embed_vision). "% peak" is that against the linear kernel's peak. The
attention's matmuls (29 % of the FLOPs at 280, 62 % at 1120) run in fp32 in every program, so "% bound" is the share
of the kernel bound: the linears' FLOPs at the linear's peak plus the attention's at the bmm's, the least time these
kernels allow.

--ttft-bundle BUNDLE (a multimodal bundle, e.g. full-size E2B exported with its tower): time to first token of the
synthetic image at budget 280 + a 32-token question through the native host (gemma-edge-run: the image decoded,
preprocessed, encoded by the bundle's vision.pte, loaded for it and released, then the prefill), beside the same
question without the image, after one warm-up run each; the median of --repeats runs.

--bundle uses that bundle's vision.pte for ours (its budgets only; pass the checkpoint it was exported from).
--quick: budgets 70,280, one timed encode, a small GEMM; with --et-max-patches 630 the example's fixed size is
budget 70 (what the fast test uses). Prints a table and writes JSON (cpu_isa, versions, load average at start,
every figure, ratios ours/et and ours/hf).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

import childproc  # noqa: E402
import vision_child  # noqa: E402
import vision_et  # noqa: E402
from childproc import log  # noqa: E402

from gemma_edge.contract.image import SUPPORTED_BUDGETS  # noqa: E402
from gemma_edge.procfs import cpu_isa, isa_line  # noqa: E402

RESULTS = HERE / "results" / "vision.json"
SYSTEMS = ("ours", "ours-fp32", "et", "hf")
LABELS = {"ours": "gemma-edge vision program (8da8w)", "ours-fp32": "gemma-edge vision program (fp32)",
          "et": "ExecuTorch example vision_encoder (8da8w)", "hf": "transformers eager (fp32)"}
MODULES = {"ours": "ours", "ours-fp32": "ours", "et": "et", "hf": "hf"}
IMAGE_HW = (480, 640)   # a 4:3 photo: padded at every budget (266 of 280 soft tokens at 280)
HF_MAX_BUDGET = 280     # eager fp32 at 560 / 1120 materialises 1.2 / 4.9 GB score matrices per layer


def ensure_checkpoint(tower: str, work: Path, given: str | None) -> Path:
    """A random multimodal checkpoint: the preset's tower, a small text part of the real hidden size."""
    if given:
        return Path(given).resolve()
    import torch

    from gemma_edge.contract.presets import VISION_PRESETS, preset
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    ckpt = work / f"ckpt-{tower}"
    if not (ckpt / "config.json").exists():
        text = preset("tiny", hidden_size=1536) if tower == "e2b" else preset("tiny")
        log(f"writing a random {tower}-tower checkpoint to {ckpt}")
        write_random_checkpoint(ckpt, text, dtype=torch.bfloat16, seed=20, multimodal=True,
                                vision_config=VISION_PRESETS[tower], progress=False)
    return ckpt


def write_inputs(work: Path, budgets) -> dict[int, Path]:
    from gemma_edge.runtime.image import preprocess

    rgb = np.random.default_rng(20).integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
    paths = {}
    for b in budgets:
        img = preprocess(rgb, b)
        paths[b] = work / f"image-{IMAGE_HW[0]}x{IMAGE_HW[1]}-b{b}.npz"
        np.savez(paths[b], pixel_values=img.pixel_values, positions=img.positions, soft_tokens=img.soft_tokens)
    return paths


def tower_gflop(ckpt: Path, budgets) -> tuple[dict[int, float], dict[int, float]]:
    """GFLOP per image of the checkpoint's tower at each budget (every patch, padding included, is computed), and
    the part of it in the attention's batched matmuls (aten.bmm: the rest is the linears' aten.mm)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Gemma4Config
    from transformers.models.gemma4.modeling_gemma4 import Gemma4VisionModel

    cfg = Gemma4Config.from_pretrained(ckpt)
    with torch.device("meta"):
        vt = Gemma4VisionModel(cfg.vision_config).eval()
    text_hidden = cfg.text_config.hidden_size
    out, attention = {}, {}
    for b in budgets:
        n = 9 * b
        side = int(n**0.5)
        pos = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(n // side + 1), indexing="xy"), -1)
        pos = pos.reshape(-1, 2)[:n][None].to("meta")
        pv = torch.zeros(1, n, cfg.vision_config.patch_size**2 * 3, device="meta")
        with FlopCounterMode(display=False) as fc, torch.no_grad():   # no padding: no mask (a bool mask calls .item())
            vt.encoder(vt.patch_embedder(pv, pos, torch.zeros(1, n, dtype=torch.bool, device="meta")), None, pos)
        out[b] = (fc.get_total_flops() + 2 * b * cfg.vision_config.hidden_size * text_hidden) / 1e9
        attention[b] = sum(v for op, v in fc.get_flop_counts()["Global"].items() if "bmm" in str(op)
                           or "attention" in str(op)) / 1e9
    return out, attention


def child(mode: str, spec: dict, log_path: Path, rss_limit_bytes: int) -> dict:
    return childproc.run_child(HERE / "peers" / "vision_child.py", mode, spec, log_path, vision_child.RESULT_MARK,
                               rss_limit_bytes)


def executorch_errors(log_path: Path) -> list[str]:
    """ExecuTorch's own error lines in a child's log (its C++ runtime logs to stderr, 'E 00:00:…' lines)."""
    lines = Path(log_path).read_text(errors="replace").splitlines()
    return [ln.strip() for ln in lines if ln.startswith("E ") or "Attempted to resize" in ln][:8]


def build(system: str, ckpt: Path, root: Path, budgets, args) -> dict:
    """{budget: build result} (cached beside each program as JSON)."""
    if system == "hf":
        return {b: {"path": str(ckpt)} for b in budgets}
    if system.startswith("ours") and args.bundle:
        manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
        pte = Path(args.bundle) / manifest["files"]["vision"]["path"]
        return {b: {"path": str(pte), "bytes": pte.stat().st_size, "quantize": manifest["vision"]["quantization"],
                    "from_bundle": str(args.bundle)} for b in budgets if b in manifest["vision"]["budgets"]}
    if system.startswith("ours"):
        quant = "none" if system == "ours-fp32" else "8da8w"
        jobs = {b: (root / f"ours-{quant}-b{b}.pte", {"module": "ours", "checkpoint": str(ckpt), "budgets": [b],
                                                       "quantize": None if quant == "none" else quant})
                for b in budgets}
    else:
        pte = root / f"et-vision-8da8w-p{args.et_max_patches}.pte"
        spec = {"module": "et", "checkpoint": str(ckpt), "quantize": "8da8w", "max_patches": args.et_max_patches}
        jobs = {b: (pte, spec) for b in budgets}   # one program for every budget: its method is "dynamic"
    out, done = {}, {}
    for b, (pte, spec) in jobs.items():
        if pte not in done:
            sidecar = pte.with_suffix(".json")
            if pte.exists() and sidecar.exists():
                done[pte] = json.loads(sidecar.read_text())
            else:
                log(f"build {system} -> {pte.name}")
                res = child("build", {**spec, "pte": str(pte)}, pte.with_suffix(".build.log"),
                            int(args.rss_limit_gib * 2**30))
                if res["rc"] != 0 or res["result"] is None:
                    raise RuntimeError(f"{system}: build exited with {res['rc']} at {res['stage']!r} "
                                       f"(log: {res['log']})")
                done[pte] = {**res["result"], "build_wall_s": round(res["elapsed_s"], 1),
                             "command": f"vision_child.py build ({system})"}
                sidecar.write_text(json.dumps(done[pte], indent=2))
            log(f"  {system} b{b}: {done[pte]['bytes'] / 2**20:.1f} MiB, built in {done[pte].get('build_s')} s, "
                f"peak {done[pte].get('build_peak_rss_bytes', 0) / 2**30:.2f} GiB")
        out[b] = done[pte]
    return out


def run_one(system: str, built: dict, budget: int, inputs: Path, work: Path, args) -> dict:
    repeats = args.repeats if budget < 560 else min(args.repeats, args.large_repeats)
    spec = {"module": MODULES[system], "budget": budget, "inputs": str(inputs), "repeats": repeats,
            "threads": args.threads, "output": str(work / f"out-{system}-b{budget}.npy")}
    spec["checkpoint" if system == "hf" else "pte"] = built["path"]
    if os.path.exists(spec["output"]):
        os.unlink(spec["output"])
    res = child("run", spec, work / f"run-{system}-b{budget}.log", int(args.rss_limit_gib * 2**30))
    if res["killed_at_rss_bytes"] is not None:
        return {"killed_at_rss_bytes": res["killed_at_rss_bytes"], "log": res["log"]}
    if res["result"] is None:
        return {"error": {"type": "child exit", "message": f"exit {res['rc']} at {res['stage']!r}"},
                "executorch_log": executorch_errors(res["log"]), "log": res["log"]}
    r = res["result"]
    if r["error"]:
        r["executorch_log"] = executorch_errors(res["log"])
    return r


def gemm_peak(work: Path, ckpt: Path, budgets, args) -> dict:
    from gemma_edge.export.vision_export import DEFAULT_BLOCK_Q

    vc = json.loads((ckpt / "config.json").read_text())["vision_config"]
    rows = 9 * (70 if args.quick else 280)
    spec = {"threads": args.threads, "repeats": 3 if args.quick else 5, "square": 1024 if args.quick else 4096,
            "rows": rows, "in_features": vc["hidden_size"], "out_features": vc["intermediate_size"],
            "heads": vc["num_attention_heads"], "head_dim": vc["head_dim"], "block_q": DEFAULT_BLOCK_Q,
            "attention_rows": [9 * b for b in budgets], "work": str(work)}
    res = child("gemm", spec, work / "gemm.log", int(args.rss_limit_gib * 2**30))
    if res["result"] is None:
        raise RuntimeError(f"GEMM peak: child exited with {res['rc']} at {res['stage']!r} (log: {res['log']})")
    return res["result"]


def ttft(bundle: Path, work: Path, args) -> dict:
    """TTFT of a 280-budget image + a 32-token question on `bundle`, through the native host, and of the question
    alone (see the module docstring)."""
    from PIL import Image

    from gemma_edge.contract import bundle_format as bf
    from gemma_edge.runtime import native

    m = bf.read_manifest(bundle)
    if 280 not in (m.get("vision") or {}).get("budgets", []):
        raise SystemExit(f"--ttft-bundle: {bundle} has no vision program at budget 280")
    png = work / f"image-{IMAGE_HW[0]}x{IMAGE_HW[1]}.png"
    Image.fromarray(np.random.default_rng(20).integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)).save(png)
    question = [m["bos_token_id"], *range(10, 42)]   # <bos> + 32 ordinary ids; the image goes after <bos>
    out = {"bundle": str(bundle), "model_hash": m["model_hash"], "question_tokens": 32, "image_budget": 280}
    for name, images in (("image_and_question", [png]), ("question_only", [])):
        log(f"TTFT {name} on {bundle.name}")
        res = native.run(bundle, question, 4, threads=args.threads, repeats=args.repeats, warmup=1, images=images,
                         image_budget=280 if images else None)
        runs = res["runs"]
        med = lambda key: float(np.median([r[key] for r in runs]))   # noqa: E731
        entry = {"prompt_tokens": len(res["prompt_tokens"]), "ttft_s": med("ttft_s"), "prefill_s": med("prefill_s"),
                 "fetch_s": med("fetch_s"), "runs": len(runs),
                 "peak_rss_bytes": res["memory"]["end"].get("VmHWM"), "load_s": res.get("load_s")}
        if images:
            entry["encode_s"] = float(np.median([r["vision"]["encode_s"] for r in runs]))
            entry["vision_load_s"] = float(np.median([r["vision"]["load_s"] for r in runs]))
            entry["soft_tokens"] = res["images"][0]["soft_tokens"]
        out[name] = entry
        log(f"  prompt {entry['prompt_tokens']} tokens: TTFT {entry['ttft_s']:.3f} s"
            + (f" (encode {entry['encode_s']:.3f} s, of which the program's load {entry['vision_load_s']:.3f} s)"
               if images else ""))
    return out


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "executorch", "torchao", "transformers", "numpy")}


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def summarize(rows: dict, gflop: dict, attention_gflop: dict, gemm: dict) -> dict:
    """Per budget: ours vs et and vs hf (encode time and peak RSS ratios; speedup = their time / ours). Each
    XNNPACK system's run also gets its kernel bound: the linears' GFLOP at the linear kernel's measured peak plus
    the attention's at the fp32 bmm's, the least time these kernels allow, and the share of it achieved."""
    rate = lambda key: gemm.get(key, {}).get("gflop_s")   # noqa: E731
    peak = {"ours": rate("xnnpack_linear_8da8w"), "et": rate("xnnpack_linear_8da8w"),
            "ours-fp32": rate("xnnpack_linear_fp32"), "hf": rate("torch_matmul_fp32")}
    out = {}
    for b in gflop:
        per = {s: r for (s, bb), r in rows.items() if bb == b}
        for s, r in per.items():
            if r.get("encode_median_s"):
                r["achieved_gflop_s"] = round(gflop[b] / r["encode_median_s"], 1)
                r["share_of_gemm_peak"] = ratio(r["achieved_gflop_s"], peak.get(s))
                bmm = rate(f"xnnpack_attention_bmm_fp32_n{9 * b}")
                if s != "hf" and peak.get(s) and bmm:
                    linears, attention = gflop[b] - attention_gflop[b], attention_gflop[b]
                    r["kernel_bound_s"] = round(linears / peak[s] + attention / bmm, 3)
                    r["share_of_kernel_bound"] = ratio(r["kernel_bound_s"], r["encode_median_s"])
        ours = per.get("ours", {})
        entry = {}
        for other in ("et", "hf", "ours-fp32"):
            o = per.get(other)
            if not o or not ours.get("encode_median_s"):
                continue
            ok = o.get("encode_median_s") is not None
            entry[f"vs_{other}"] = {
                "ran": ok, "encode_time_ratio": ratio(ours["encode_median_s"], o.get("encode_median_s")),
                "speedup": ratio(o.get("encode_median_s"), ours["encode_median_s"]),
                "peak_rss_ratio": ratio(ours["memory"]["peak_rss_bytes"], o.get("memory", {}).get("peak_rss_bytes")),
                "peak_rss_above_host_ratio": ratio(above_host(ours), above_host(o)),
                "load_time_ratio": ratio(ours.get("load_s"), o.get("load_s"))}
        out[b] = entry
    return out


def above_host(r: dict) -> int | None:
    m = r.get("memory")
    return m["peak_rss_bytes"] - m["host_rss_before_load_bytes"] if m else None


def targets(rows: dict, summary: dict, gemm: dict) -> dict:
    """Issue 20's benchmark targets, each with its measured figure (None where not measured)."""
    from gemma_edge.runtime.budget import load_devices

    px = load_devices()["pixel-8"]
    app_ram = px["ram_bytes"] * px["app_ram_fraction"]
    et_ok = [b for (s, b), r in rows.items() if s == "et" and r.get("encode_median_s")]
    vs_et = {b: summary[b].get("vs_et", {}) for b in et_ok}
    peak8 = gemm.get("xnnpack_linear_8da8w", {}).get("gflop_s")
    ours = {b: r for (s, b), r in rows.items() if s == "ours" and r.get("memory")}
    return {
        "encode_speedup_vs_et_ge_1.5": {b: v.get("speedup") for b, v in vs_et.items()},
        "peak_rss_ratio_vs_et_le_0.8": {b: v.get("peak_rss_ratio") for b, v in vs_et.items()},
        "peak_rss_above_host_ratio_vs_et": {b: v.get("peak_rss_above_host_ratio") for b, v in vs_et.items()},
        "ours_peak_rss_above_host_within_pixel8_app_ram": {
            "app_ram_bytes": app_ram, **{b: {"above_host_bytes": above_host(r), "fits": above_host(r) <= app_ram}
                                         for b, r in ours.items()}},
        "ours_gflop_s_share_of_8da8w_linear_peak_ge_0.5": {
            "peak_gflop_s": peak8, **{b: r.get("share_of_gemm_peak") for b, r in ours.items()}},
        "ours_share_of_kernel_bound (not a target: linears at the 8da8w peak, attention at the fp32 bmm's)": {
            b: r.get("share_of_kernel_bound") for b, r in ours.items()}}


def label(system: str, built: dict) -> str:
    """LABELS, or for ours from a bundle its vision program's own quantization."""
    first = next(iter(built[system].values()), {})
    if first.get("from_bundle"):
        return f"gemma-edge bundle vision.pte ({first['quantize']})"
    return LABELS[system]


def table(rows: dict, built: dict) -> str:
    head = (f"{'system':<44}{'budget':>7}{'tokens':>7}{'load s':>8}{'encode s':>10}{'GFLOP/s':>9}{'% peak':>8}"
            f"{'% bound':>9}{'peak RSS GB':>12}{'above host':>11}{'rel err':>10}  note")
    lines = [head, "-" * len(head)]
    for (s, b), r in rows.items():
        f = lambda x, w, spec: f"{x:{w}{spec}}" if x is not None else f"{'-':>{w}}"   # noqa: E731
        mem = r.get("memory") or {}
        err = (r.get("error_vs_hf") or {}).get("rel_fro")
        note = ""
        if r.get("killed_at_rss_bytes"):
            note = f"killed at {r['killed_at_rss_bytes'] / 2**30:.1f} GiB"
        elif r.get("error"):
            note = (r.get("executorch_log") or [r["error"]["message"]])[0][:90]
        share, bound = r.get("share_of_gemm_peak"), r.get("share_of_kernel_bound")
        lines.append(
            f"{label(s, built):<44}{b:>7}{f(r.get('soft_tokens'), 7, 'd')}{f(r.get('load_s'), 8, '.2f')}"
            f"{f(r.get('encode_median_s'), 10, '.3f')}{f(r.get('achieved_gflop_s'), 9, '.1f')}"
            f"{f(100 * share if share else None, 7, '.0f')}%"
            f"{f(100 * bound if bound else None, 8, '.0f')}%"
            f"{f(mem.get('peak_rss_bytes', 0) / 1e9 if mem else None, 12, '.3f')}"
            f"{f(above_host(r) / 1e9 if mem else None, 11, '.3f')}{f(err, 10, '.1e')}  {note}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tower", default="e2b", choices=("e2b", "tiny"))
    ap.add_argument("--budgets", default="70,140,280")
    ap.add_argument("--systems", default="ours,et,hf")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--work", default="work_dirs/bench_vision")
    ap.add_argument("--checkpoint", help="a multimodal checkpoint to use instead of writing a random one")
    ap.add_argument("--bundle", help="use this bundle's vision.pte for ours (exported from --checkpoint)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-repeats", type=int, default=1,
                    help="timed encodes at budgets 560 and 1120 (2.8 / 8 TFLOP an image), after the warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-max-budget", type=int, default=HF_MAX_BUDGET)
    ap.add_argument("--et-max-patches", type=int, default=vision_et.ET_MAX_PATCHES,
                    help="the example's --max_patches (its default 1260 = 140 soft tokens)")
    ap.add_argument("--rss-limit-gib", type=float, default=20.0)
    ap.add_argument("--quick", action="store_true", help="budgets 70,280 (unless given), one timed run, small GEMM")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--ttft-bundle", help="a multimodal bundle: TTFT of a 280-budget image + 32-token question")
    args = ap.parse_args()
    load_at_start = os.getloadavg()
    if args.quick:
        args.repeats = 1
        if args.budgets == ap.get_default("budgets"):
            args.budgets = "70,280"
    budgets = [int(b) for b in args.budgets.split(",")]
    bad = [b for b in budgets if b not in SUPPORTED_BUDGETS]
    if bad:
        raise SystemExit(f"--budgets: expected some of {SUPPORTED_BUDGETS}, found {bad}")
    systems = [s for s in args.systems.split(",") if s]
    if set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems: expected some of {SYSTEMS}, found {sorted(set(systems) - set(SYSTEMS))}")
    if args.bundle and not args.checkpoint:
        raise SystemExit("--bundle: pass --checkpoint too (the checkpoint the bundle was exported from)")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ckpt = ensure_checkpoint(args.tower, work, args.checkpoint)

    from gemma_edge.export.checkpoint import model_hash

    root = work / model_hash(ckpt).hex()[:12]
    root.mkdir(exist_ok=True)
    log(f"checkpoint {ckpt}; builds in {root}; load average at start {load_at_start}")
    built = {s: build(s, ckpt, root, [b for b in budgets if s != "hf" or b <= args.hf_max_budget], args)
             for s in systems}
    if args.build_only:
        return
    inputs = write_inputs(root, budgets)
    gflop, attention_gflop = tower_gflop(ckpt, budgets)
    log("GEMM peak")
    gemm = gemm_peak(root, ckpt, budgets, args)
    log("  " + ", ".join(f"{k} {v['gflop_s']:.1f} GFLOP/s" for k, v in gemm.items() if isinstance(v, dict)))
    rows = {}
    for b in budgets:
        for s in systems:
            if b not in built[s]:
                continue
            log(f"run {s} at {b}")
            rows[(s, b)] = run_one(s, built[s][b], b, inputs[b], root, args)
            r = rows[(s, b)]
            log(f"  load {r.get('load_s')} s, encode {r.get('encode_median_s')} s, "
                f"peak {r.get('memory', {}).get('peak_rss_bytes', 0) / 2**30:.2f} GiB"
                + (f"; FAILED: {r['error']['message'][:200]} {r.get('executorch_log')}" if r.get("error") else ""))
        if "hf" in systems:
            for s in systems:
                if (s, b) in rows and s != "hf":
                    rows[(s, b)]["error_vs_hf"] = childproc.output_errors(root / f"out-{s}-b{b}.npy",
                                                                          root / f"out-hf-b{b}.npy")
    summary = summarize(rows, gflop, attention_gflop, gemm)
    ttft_res = ttft(Path(args.ttft_bundle).resolve(), root, args) if args.ttft_bundle else None
    print(table(rows, built))
    if ttft_res:
        im, q = ttft_res["image_and_question"], ttft_res["question_only"]
        print(f"TTFT on {ttft_res['bundle']}: image (280) + 32-token question {im['ttft_s']:.3f} s "
              f"({im['prompt_tokens']} tokens; encode {im['encode_s']:.3f} s, prefill {im['prefill_s']:.3f} s); "
              f"the question alone {q['ttft_s']:.3f} s")
    print(isa_line())
    out = {"bench": "vision", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "machine": {**cpu_isa(), "load_average_at_start": load_at_start, "versions": versions()},
           "tower": args.tower, "checkpoint": str(ckpt), "image": {"height_width": list(IMAGE_HW),
                                                                    "source": "uniform random RGB8, seed 20"},
           "threads": args.threads, "repeats": args.repeats, "large_repeats": args.large_repeats,
           "gflop_per_image": gflop, "gflop_per_image_in_attention_bmm": attention_gflop, "gemm_peak": gemm,
           "builds": {s: {str(b): v for b, v in bs.items()} for s, bs in built.items()},
           "runs": [{"system": s, "label": label(s, built), "budget": b, **r} for (s, b), r in rows.items()],
           "summary": {str(b): v for b, v in summary.items()}, "ttft": ttft_res,
           "targets": targets(rows, summary, gemm)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
