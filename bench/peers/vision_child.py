"""The child process of bench/vision.py: one system × one budget per process, so its peak RSS is that run's.

    python vision_child.py run SPEC_JSON     # load the system, encode one image: warm-up + `repeats` timed runs
    python vision_child.py build SPEC_JSON   # lower / export a system's program (vision_ours, vision_et)
    python vision_child.py gemm SPEC_JSON    # GEMM peaks: fp32 torch.matmul, XNNPACK fp32 / 8da8w linear, fp32 bmm

Prints one line, RESULT_MARK + JSON, last. A system module (vision_ours, vision_et, vision_hf) gives
`imports()` (what its host imports before any model: counted as host RSS, not the model's), `load(spec)` ->
an encoder `fn(pixel_values [1, N, 768], positions [1, N, 2]) -> soft tokens [n, H]` (the image's valid rows)
and, for the lowered ones, `build(spec)`.

Memory: VmHWM is read after loading (the load's peak), then reset (`reset_peak_rss`) and read again after the
encodes (the encode's peak); `peak_rss_bytes` is the larger. `host_rss_before_load_bytes` is the process with its
runtime imported, before any weight.
"""
from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import childproc  # noqa: E402

RESULT_MARK = "@@VISION_RESULT@@ "
procfs = childproc.procfs


def set_threads(threads: int) -> None:
    """One thread count for torch's intra-op pool and ExecuTorch's XNNPACK pool."""
    import torch
    from executorch.extension.pybindings import portable_lib

    torch.set_num_threads(threads)
    portable_lib._unsafe_reset_threadpool(threads)


def child_run(spec: dict) -> dict:
    import numpy as np
    import torch

    system = importlib.import_module(f"vision_{spec['module']}")
    system.imports()
    set_threads(spec["threads"])
    host = procfs.proc_status()
    data = np.load(spec["inputs"])
    pv, pos = torch.from_numpy(data["pixel_values"])[None], torch.from_numpy(data["positions"])[None]
    n = int(data["soft_tokens"])
    t0 = time.perf_counter()
    encode = system.load(spec)
    load_s = time.perf_counter() - t0
    after_load = procfs.proc_status()
    procfs.reset_peak_rss()
    times, error, out = [], None, None
    try:
        for _ in range(spec["repeats"] + 1):   # the first is the warm-up
            t0 = time.perf_counter()
            with torch.no_grad():
                out = encode(pv, pos, n)
            times.append(time.perf_counter() - t0)
    except Exception as e:   # recorded, not hidden: what a system does with an input it cannot take
        error = {"type": type(e).__name__, "message": str(e)[:2000], "traceback": traceback.format_exc()[-2000:]}
    end = procfs.proc_status()
    if out is not None and error is None:
        np.save(spec["output"], np.ascontiguousarray(out.float().numpy() if hasattr(out, "numpy") else out))
    return {"load_s": load_s, "warmup_s": times[0] if times else None, "encode_s": times[1:],
            "encode_median_s": statistics.median(times[1:]) if len(times) > 1 else None,
            "error": error, "output_rows": None if out is None or error else int(out.shape[0]), "soft_tokens": n,
            "patches": int(pv.shape[1]), "threads": spec["threads"],
            "memory": {"host_rss_before_load_bytes": host["VmRSS"], "rss_after_load_bytes": after_load["VmRSS"],
                       "load_peak_rss_bytes": after_load["VmHWM"], "encode_peak_rss_bytes": end["VmHWM"],
                       "peak_rss_bytes": max(after_load["VmHWM"], end["VmHWM"]), "rss_end_bytes": end["VmRSS"],
                       "rss_anon_end_bytes": end.get("RssAnon"), "rss_file_end_bytes": end.get("RssFile")},
            **getattr(encode, "info", {})}


def child_build(spec: dict) -> dict:
    system = importlib.import_module(f"vision_{spec['module']}")
    t0 = time.perf_counter()
    res = system.build(spec)
    return {**res, "build_s": round(time.perf_counter() - t0, 1), "build_peak_rss_bytes": procfs.proc_status()["VmHWM"]}


def _median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child_gemm(spec: dict) -> dict:
    """GFLOP/s of fp32 torch.matmul on a large square, of one XNNPACK-lowered linear of the tower's MLP shape
    (rows = the patches of a budget, 768 -> 3072) in fp32 and 8da8w (the encoder's kernels), and of the attention's
    fp32 batched matmuls at each of `attention_rows` patches, in ExecuTorch."""
    import torch
    from torch import nn

    from gemma_edge.contract.bundle_format import PER_CHANNEL
    from gemma_edge.export import rewrites
    from gemma_edge.export import vision_export as ve

    set_threads(spec["threads"])
    reps, n = spec["repeats"], spec["square"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"threads": spec["threads"], "torch_matmul_fp32": {
        "shape": [n, n, n], "gflop_s": 2 * n**3 / _median_time(lambda: torch.matmul(a, b), reps) / 1e9}}
    from executorch.runtime import Runtime

    rows, k, m = spec["rows"], spec["in_features"], spec["out_features"]
    x = torch.randn(1, rows, k)
    for scheme in ("fp32", "8da8w"):
        model = nn.Sequential(nn.Linear(k, m, bias=False)).eval()
        if scheme != "fp32":
            rewrites.quantize_linears(model, scheme, PER_CHANNEL)   # as the tower's linears are quantized
        with torch.no_grad():
            program = ve.lower_programs({"forward": torch.export.export(model, (x,), strict=False)})
        path = Path(spec["work"]) / f"gemm-{scheme}.pte"
        path.write_bytes(program.buffer)
        method = Runtime.get().load_program(str(path)).load_method("forward")
        t = _median_time(lambda: method.execute([x]), reps)
        out[f"xnnpack_linear_{scheme}"] = {"shape": [rows, k, m], "gflop_s": 2 * rows * k * m / t / 1e9,
                                           "median_s": t}
        path.unlink()
    # The attention's two matmuls run in fp32 in every program (scores, then probabilities x values: 8da8w
    # quantizes the linears, and matmuls of two activations stay fp32), so they have a peak of their own.
    # Measured as the program runs them (export/vision.py's attend_in_query_blocks, whose blocking and block
    # order this copies; keep the two in step): every query block of a budget's patches against all keys, each
    # block after the one before, without the mask and softmax between (not a GEMM), so the inputs are a few MB
    # and their copy into the method is negligible.
    heads, block, d = spec["heads"], spec["block_q"], spec["head_dim"]

    class Pairs(nn.Module):
        def forward(self, q, k, v):
            kt, outs = k.transpose(1, 2), []
            for s in range(0, q.shape[1], block):
                qb = q[:, s:s + block] + (outs[-1][:, :1, :1] * 0.0 if outs else 0.0)
                outs.append(torch.bmm(torch.bmm(qb, kt), v))
            return torch.cat(outs, dim=1)

    for n in spec["attention_rows"]:
        q, k, v = (torch.randn(heads, n, d) for _ in range(3))
        with torch.no_grad():
            program = ve.lower_programs({"forward": torch.export.export(Pairs(), (q, k, v), strict=False)})
        path = Path(spec["work"]) / "gemm-bmm.pte"
        path.write_bytes(program.buffer)
        method = Runtime.get().load_program(str(path)).load_method("forward")
        t = _median_time(lambda: method.execute([q, k, v]), reps)
        out[f"xnnpack_attention_bmm_fp32_n{n}"] = {"shape": [heads, n, d, block], "gflop_s": 4 * heads * n * n * d
                                                   / t / 1e9, "median_s": t}
        path.unlink()
    return out


if __name__ == "__main__":
    mode, spec_json = sys.argv[1], sys.argv[2]
    modes = {"run": child_run, "build": child_build, "gemm": child_gemm}
    if mode not in modes:
        raise SystemExit(f"vision_child.py: expected mode run, build or gemm, found {mode!r}")
    print(RESULT_MARK + json.dumps(modes[mode](json.loads(spec_json))), flush=True)
    os._exit(0)   # skip interpreter teardown of loaded programs: the result is out
