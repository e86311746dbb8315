"""The child process of bench/audio.py: one system × one clip length per process, so its peak RSS is that run's.

    python audio_child.py build SPEC_JSON   # lower a system's program (ours: write_audio_program; et: the example's)
    python audio_child.py run SPEC_JSON     # load the system, encode the clip: warm-up + `repeats` timed runs
    python audio_child.py gemm SPEC_JSON    # this machine's peaks: fp32 torch.matmul, XNNPACK 8da8w / 8da4w linear

Systems (what each encodes, from the same 16 kHz samples):
  ours  gemma-edge's audio.pte: one method, the log-mel front end inside (rows of 160 samples + mask -> soft tokens)
  et    ExecuTorch 1.5.1's Gemma 4 example, built by its own functions (`_export_speech_transform`,
        `_export_audio_encoder(checkpoint, "8da4w", group_size=128)`, its partitioners and backend config) and run as
        its runner's `_run_audio_pipeline` runs them: speech_transform on the samples padded to a multiple of 128,
        then audio_encoder on the mel padded to its 48k − 25 frame grid with a mask
  hf    transformers 5.23.0: Gemma4AudioFeatureExtractor, then get_audio_features, fp32 eager

Prints one line, RESULT_MARK + JSON, last. Memory: VmHWM after loading, then reset and read after the encodes;
`peak_rss_bytes` is the larger; `host_rss_before_load_bytes` is the process with its runtime imported.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import childproc  # noqa: E402

RESULT_MARK = "@@AUDIO_RESULT@@ "
procfs = childproc.procfs
ET_AUDIO_QUANT, ET_GROUP = "8da4w", 128   # export_gemma4.py: --audio_quantize default, group_size default


def set_threads(threads: int) -> None:
    import torch
    from executorch.extension.pybindings import portable_lib

    torch.set_num_threads(threads)
    portable_lib._unsafe_reset_threadpool(threads)


# ---------------------------------------------------------------------------------------------------- build
def build_ours(spec: dict) -> dict:
    from gemma_edge.export.audio import load_audio_tower
    from gemma_edge.export.audio_export import write_audio_program

    tower = load_audio_tower(spec["checkpoint"], dtype=None)
    written = write_audio_program(tower, spec["pte"], spec["quantize"], in_place=True)
    return {"undelegated": written.undelegated}


def build_et(spec: dict) -> dict:
    from executorch.examples.models.gemma4 import export_gemma4 as ex
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.exir.capture._config import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    programs = {"speech_transform": ex._export_speech_transform(spec["checkpoint"]),
                "audio_encoder": ex._export_audio_encoder(spec["checkpoint"], ET_AUDIO_QUANT, group_size=ET_GROUP)}
    programs = {k: ep.run_decompositions({}) for k, ep in programs.items()}
    partitioners = ex._build_partitioners(True, False, ET_AUDIO_QUANT, "8da8w", "8da4w+emb8")
    edge = to_edge_transform_and_lower(programs, compile_config=EdgeCompileConfig(_check_ir_validity=False),
                                       partitioner={k: partitioners[k] for k in programs},
                                       transform_passes=ex._build_transform_passes(True, False))
    program = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass()))
    with open(spec["pte"], "wb") as f:
        program.write_to_file(f)
    return {"quantize": ET_AUDIO_QUANT, "group_size": ET_GROUP,
            "steps": "export_gemma4._export_speech_transform + _export_audio_encoder -> run_decompositions({}) -> "
                     "to_edge_transform_and_lower (its partitioners) -> to_executorch (its backend config)"}


def child_build(spec: dict) -> dict:
    t0 = time.perf_counter()
    info = (build_ours if spec["module"] == "ours" else build_et)(spec)
    return {**info, "path": spec["pte"], "bytes": Path(spec["pte"]).stat().st_size,
            "build_s": round(time.perf_counter() - t0, 1), "build_peak_rss_bytes": procfs.proc_status()["VmHWM"]}


# ---------------------------------------------------------------------------------------------------- run
def load_ours(spec: dict):
    from executorch.runtime import Runtime

    from gemma_edge.runtime.audio import prepare_audio

    method = Runtime.get().load_program(spec["pte"]).load_method("audio")

    def encode(wave):
        import torch

        (clip,) = prepare_audio(wave)
        out = method.execute([torch.from_numpy(clip.rows)[None], torch.from_numpy(clip.valid)[None]])[0][0]
        return out[:clip.soft_tokens]   # the clip's soft tokens come first (the grid adds whole blocks)
    return encode


def load_et(spec: dict):
    import torch
    from executorch.examples.models.gemma4.run_gemma4 import pad_to_valid_frames
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(spec["pte"])
    st, ae = program.load_method("speech_transform"), program.load_method("audio_encoder")

    def encode(wave):   # run_gemma4._run_audio_pipeline, from its waveform on
        waveform = torch.from_numpy(wave)
        padded_len = ((len(waveform) + 127) // 128) * 128
        mel = st.execute([torch.nn.functional.pad(waveform, (0, padded_len - len(waveform)))])[0]
        frames = mel.shape[0]
        valid = pad_to_valid_frames(frames)
        mel_padded = torch.nn.functional.pad(mel, (0, 0, 0, valid - frames)).unsqueeze(0)
        mask = torch.ones(1, valid, dtype=torch.bool)
        mask[0, frames:] = False
        out = ae.execute([(mel_padded * mask.unsqueeze(-1).float()).float(), mask])
        n = int(out[1].sum()) if len(out) > 1 else out[0].shape[1]
        return out[0][0, :n]
    encode.keep = program
    return encode


def load_hf(spec: dict):
    import torch
    from transformers import Gemma4AudioFeatureExtractor, Gemma4ForConditionalGeneration

    model = Gemma4ForConditionalGeneration.from_pretrained(spec["checkpoint"], dtype=torch.float32).eval()
    model.model.language_model = None   # the decoder is not used here
    fe = Gemma4AudioFeatureExtractor()

    def encode(wave):
        f = fe([wave], return_tensors="pt")
        out = model.model.get_audio_features(f["input_features"], f["input_features_mask"])
        return out.pooler_output[0][out.attention_mask[0]]
    return encode


def child_run(spec: dict) -> dict:
    import executorch.runtime  # noqa: F401  (the host's runtime: counted before any weight)
    import numpy as np
    import torch
    set_threads(spec["threads"])
    host = procfs.proc_status()
    wave = np.load(spec["inputs"])
    t0 = time.perf_counter()
    encode = {"ours": load_ours, "et": load_et, "hf": load_hf}[spec["module"]](spec)
    load_s = time.perf_counter() - t0
    after_load = procfs.proc_status()
    procfs.reset_peak_rss()
    times, error, out = [], None, None
    try:
        for _ in range(spec["repeats"] + 1):   # the first is the warm-up
            t0 = time.perf_counter()
            with torch.no_grad():
                out = encode(wave)
            times.append(time.perf_counter() - t0)
    except Exception as e:   # recorded, not hidden
        error = {"type": type(e).__name__, "message": str(e)[:2000], "traceback": traceback.format_exc()[-2000:]}
    end = procfs.proc_status()
    if out is not None and error is None:
        np.save(spec["output"], np.ascontiguousarray(out.float().numpy()))
    return {"load_s": load_s, "warmup_s": times[0] if times else None, "encode_s": times[1:],
            "encode_median_s": statistics.median(times[1:]) if len(times) > 1 else None, "error": error,
            "output_rows": None if out is None or error else int(out.shape[0]), "seconds": len(wave) / 16000,
            "threads": spec["threads"],
            "memory": {"host_rss_before_load_bytes": host["VmRSS"], "rss_after_load_bytes": after_load["VmRSS"],
                       "load_peak_rss_bytes": after_load["VmHWM"], "encode_peak_rss_bytes": end["VmHWM"],
                       "peak_rss_bytes": max(after_load["VmHWM"], end["VmHWM"]), "rss_end_bytes": end["VmRSS"]}}


# ---------------------------------------------------------------------------------------------------- gemm
def _median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def child_gemm(spec: dict) -> dict:
    """GFLOP/s of fp32 torch.matmul (a large square) and of one XNNPACK linear of the Conformer FFN's shape
    ([rows, hidden] @ [hidden, 4·hidden]) in 8da8w and 8da4w, lowered as the audio program's linears are."""
    import torch
    from executorch.runtime import Runtime

    from gemma_edge.export import rewrites
    from gemma_edge.export.vision_export import lower_programs

    set_threads(spec["threads"])
    n, reps = spec["square"], spec["repeats"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"torch_matmul_fp32": 2 * n**3 / _median_time(lambda: a @ b, reps) / 1e9}
    rows, d_in, d_out = spec["rows"], spec["in_features"], spec["out_features"]
    x = torch.randn(1, rows, d_in)
    for scheme in ("8da8w", "8da4w"):
        lin = torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=False)).eval()
        rewrites.quantize_linears(lin, scheme, 0)
        with torch.no_grad():
            ep = torch.export.export(lin, (x,), strict=False)
        path = Path(spec["work"]) / f"gemm-{scheme}.pte"
        path.write_bytes(lower_programs({"forward": ep}).buffer)
        method = Runtime.get().load_program(path).load_method("forward")
        out[f"xnnpack_linear_{scheme}"] = 2 * rows * d_in * d_out / _median_time(lambda: method.execute([x]),
                                                                                reps) / 1e9
    return {"gflop_s": out, "shape": {"rows": rows, "in": d_in, "out": d_out, "square": n}}


def main() -> None:
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    result = {"build": child_build, "run": child_run, "gemm": child_gemm}[mode](spec)
    print(RESULT_MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
