"""The error of each vision quantization scheme against the fp32 eager tower, lowered to XNNPACK and run in
ExecuTorch's runtime, on random towers at small scale.

    python bench/vision_quant_error.py [--towers tiny,wide2] [--budgets 70,280] [--schemes fp32,8w,8da8w,8da4w]
        [--out bench/results/vision_quant_error.json]

Towers (random weights drawn as `gemma-edge random-checkpoint` draws them: `vision.random_vision_values`, so
finite clip bounds): "tiny" (32 wide, 2 layers, the test suite's shape) and "wideN" (E2B's width, 768, with N
layers). Per tower, scheme and budget: max |Δ| of the program's soft tokens against the fp32 eager tower,
that relative to the largest |soft token| value, and the relative Frobenius error ‖Δ‖/‖ref‖, over valid tokens
of a few synthetic images (wide, tall, 4:3) preprocessed as the runtime does; also the eager torchao-quantized
tower against fp32 (the quantization's own error, without XNNPACK's kernels), the .pte size and the lowering
time. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gemma_edge.export import vision_export as ve
from gemma_edge.export.vision import Gemma4Vision, VisionConfig, random_vision_values, vision_tensor_specs
from gemma_edge.procfs import cpu_isa
from gemma_edge.runtime.image import preprocess

HERE = Path(__file__).resolve().parent
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            head_dim=16)
WIDE = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_key_value_heads=12, head_dim=64)
SIZES = [(480, 640), (100, 2000), (1000, 90)]  # (height, width): wide, tall, 4:3; all padded at every budget


def tower_config(name: str) -> VisionConfig:
    if name == "tiny":
        shape = TINY
    elif name.startswith("wide") and name[4:].isdigit():
        shape = {**WIDE, "num_hidden_layers": int(name[4:])}
    else:
        raise SystemExit(f"--towers: expected tiny or wide<layers>, found {name!r}")
    return VisionConfig(**shape, use_clipped_linears=True, text_hidden_size=1536)


def random_tower(cfg: VisionConfig, seed: int = 0) -> Gemma4Vision:
    gen = torch.Generator().manual_seed(seed)
    model = Gemma4Vision(cfg).eval()
    state = {}
    for key, spec in vision_tensor_specs(cfg).items():
        shape = spec.shape or (1,)
        state[key[len("model."):]] = random_vision_values(key, shape, gen, slice(0, shape[0])).reshape(spec.shape)
    model.load_state_dict(state)
    return model


def inputs(budget: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for h, w in SIZES:
        img = preprocess(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), budget)
        yield torch.from_numpy(img.pixel_values)[None], torch.from_numpy(img.positions)[None], img.soft_tokens


def errors(got: list[torch.Tensor], ref: list[torch.Tensor]) -> dict:
    g, r = torch.cat(got), torch.cat(ref)
    d = (g - r).abs()
    return {"max_abs": float(d.max()), "max_abs_rel": float(d.max() / r.abs().max()),
            "rel_fro": float(torch.linalg.norm(g - r) / torch.linalg.norm(r))}


def measure(tower_name: str, budgets: list[int], schemes: list[str], tmp: Path) -> list[dict]:
    from executorch.runtime import Runtime

    cfg = tower_config(tower_name)
    model = random_tower(cfg)
    cases = {b: list(inputs(b)) for b in budgets}
    with torch.no_grad():
        ref = {b: [model.encode(p, q)[0][0, :n] for p, q, n in cases[b]] for b in budgets}
    rows = []
    for scheme in schemes:
        quantize = None if scheme == "fp32" else scheme
        prepared = ve.prepare_vision(model, quantize)
        start = time.perf_counter()
        # through the stages, not lower_vision, which refuses 8w: the bench measures what it would give
        program = ve.lower_programs(ve.export_vision(prepared, budgets))
        lower_s = time.perf_counter() - start
        path = tmp / f"{tower_name}-{scheme}.pte"
        path.write_bytes(program.buffer)
        loaded = Runtime.get().load_program(str(path))
        undelegated = {m: sum(c.values()) for m, c in ve.undelegated_ops(program).items()}
        for b in budgets:
            method = loaded.load_method(ve.method_name(b))
            with torch.no_grad():
                eager_q = [prepared.encode(p, q)[0][0, :n] for p, q, n in cases[b]]
            got = [method.execute([p, q])[0][0, :n] for p, q, n in cases[b]]
            rows.append({"tower": tower_name, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                         "scheme": scheme, "budget": b, "pte_bytes": path.stat().st_size,
                         "lower_s": round(lower_s, 1), "undelegated_ops": undelegated[ve.method_name(b)],
                         "program_vs_fp32": errors(got, ref[b]), "eager_quantized_vs_fp32": errors(eager_q, ref[b]),
                         "soft_abs_max": float(torch.cat(ref[b]).abs().max())})
            r, e = rows[-1]["program_vs_fp32"], rows[-1]["eager_quantized_vs_fp32"]
            print(f"{tower_name:>7} {scheme:>6} {b:>5}  max|Δ| {r['max_abs']:.2e}  rel {r['max_abs_rel']:.2e}  "
                  f"fro {r['rel_fro']:.2e}  | eager {e['max_abs']:.2e} / {e['rel_fro']:.2e}  "
                  f"| pte {path.stat().st_size / 2**20:7.1f} MiB  lower {lower_s:5.1f} s", flush=True)
        path.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--towers", default="tiny,wide2")
    ap.add_argument("--budgets", default="70,280")
    ap.add_argument("--schemes", default="fp32,8w,8da8w,8da4w")
    ap.add_argument("--out", default=str(HERE / "results" / "vision_quant_error.json"))
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    schemes = args.schemes.split(",")
    bad = set(schemes) - {"fp32", "8w", "8da8w", "8da4w"}
    if bad:
        raise SystemExit(f"--schemes: expected fp32, 8w, 8da8w, 8da4w, found {sorted(bad)}")
    print(f"{'tower':>7} {'scheme':>6} {'budget':>5}  program vs fp32 eager (max |Δ|, / max |ref|, Frobenius) "
          "| eager quantized vs fp32 (max |Δ| / Frobenius)")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for t in args.towers.split(",") for r in measure(t, budgets, schemes, Path(tmp))]
    out = {"bench": "vision_quant_error", "machine": {**cpu_isa(), "torch": torch.__version__},
           "images": [list(s) for s in SIZES], "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
