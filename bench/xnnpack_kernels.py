"""Which formulation XNNPACK (ExecuTorch 1.5.1) runs fastest here, for the choices the exporter makes.

    python bench/xnnpack_kernels.py [--threads 1] [--json bench/results/xnnpack_kernels.json]

Side by side, in one process, on E2B widths (hidden 1536, MLP 6144), at T = 128 (a prefill chunk) and
T = 1 (a decode step):
- int4 linear weights: groups of 32 (bf16 scales), one block per output row with bf16 scales (XNNPACK's
  blockwise kernel; the export default) and per channel with fp32 scales (its channelwise kernel); on an
  MLP pair, with the relative error of each lowered program against torchao's eager result;
- RMSNorm's mean square: the 4-D mean over dims (2, 3) (the only mean XNNPACK delegates) vs a linear
  with a row of 1/dim (the export default);
- tanh-GELU: written out with tanh (9 elementwise ops) vs x·sigmoid(2z) (6 ops; the export default).
Each variant is lowered once; the timings interleave the variants over 5 rounds and keep the fastest.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

H, FF = 1536, 6144
REPEAT = 8  # norms / 4 GELUs per program, so per-call overhead does not dominate


class MlpPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(H, FF, bias=False), nn.Linear(FF, H, bias=False)

    def forward(self, x):
        return self.down(self.up(x))


class NormMean4d(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.rand(H))

    def forward(self, x):
        for _ in range(REPEAT):
            ms = (x * x).reshape(-1, 1, 1, H).mean(dim=(2, 3), keepdim=True)
            x = x * torch.rsqrt(ms + 1e-6).reshape(*x.shape[:-1], 1) * self.w
        return x


class NormLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.rand(H))
        self.register_buffer("row", torch.full((1, H), 1.0 / H))

    def forward(self, x):
        for _ in range(REPEAT):
            x = x * torch.rsqrt(F.linear(x * x, self.row) + 1e-6) * self.w
        return x


class GeluTanh(nn.Module):
    def forward(self, x):
        for _ in range(REPEAT // 4):
            x = 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * (x * x * x))))
        return x


class GeluSigmoid(nn.Module):
    C1 = 2 * math.sqrt(2 / math.pi)

    def forward(self, x):
        for _ in range(REPEAT // 4):
            x = x * torch.sigmoid(x * (self.C1 + self.C1 * 0.044715 * (x * x)))
        return x


def lower(module: nn.Module, width: int):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackDynamicallyQuantizedPartitioner,
        XnnpackPartitioner,
    )
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime

    t = torch.export.Dim("T", min=1, max=128)
    ep = torch.export.export(module.eval(), (torch.randn(1, 128, width),), dynamic_shapes=({1: t},))
    buf = to_edge_transform_and_lower(ep, partitioner=[XnnpackDynamicallyQuantizedPartitioner(), XnnpackPartitioner()],
                                      compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch().buffer
    program = Runtime.get().load_program(buf)
    return program, program.load_method("forward")


def build() -> dict:
    import executorch.kernels.quantized  # noqa: F401
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    variants = {}
    for name, gran, scale in (("int4 groups of 32, bf16 scales", PerGroup(32), torch.bfloat16),
                              ("int4 per row, bf16 scales (default)", PerAxis(0), torch.bfloat16),
                              ("int4 per channel, fp32 scales", PerAxis(0), torch.float32)):
        torch.manual_seed(0)
        m = MlpPair()
        quantize_(m, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=gran,
                                                          weight_scale_dtype=scale))
        program, method = lower(m, H)
        x = torch.randn(1, 7, H)
        with torch.no_grad():
            want = m(x)
        got = method.execute([x])[0]
        variants[name] = {"group": "MLP pair 1536-6144-1536", "width": H, "calls": 1, "program": program,
                          "method": method, "rel_err_vs_torchao": ((got - want).abs().max() / want.abs().max()).item()}
    for name, module, width, calls in (("RMSNorm, 4-D mean", NormMean4d(), H, REPEAT),
                                       ("RMSNorm, linear with 1/dim (default)", NormLinear(), H, REPEAT),
                                       ("GELU, tanh written out", GeluTanh(), FF, REPEAT // 4),
                                       ("GELU, x*sigmoid(2z) (default)", GeluSigmoid(), FF, REPEAT // 4)):
        program, method = lower(module, width)
        variants[name] = {"group": name.split(",")[0], "width": width, "calls": calls, "program": program,
                          "method": method}
    return variants


def time_all(variants: dict, rounds: int = 5) -> dict:
    best = {(n, t): float("inf") for n in variants for t in (128, 1)}
    for _ in range(rounds):
        for t in (128, 1):
            for name, v in variants.items():
                x = torch.randn(1, t, v["width"])
                v["method"].execute([x])
                reps = 40 if t == 1 else 5
                t0 = time.perf_counter()
                for _ in range(reps):
                    v["method"].execute([x])
                best[(name, t)] = min(best[(name, t)], (time.perf_counter() - t0) / reps / v["calls"])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "xnnpack_kernels.json")
    args = ap.parse_args()
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)
    variants = build()
    best = time_all(variants)
    rows = []
    print(f"{'variant':<40}{'T=128 ms':>10}{'T=1 ms':>9}{'vs first of its group':>23}{'rel err':>10}")
    firsts = {}
    for name, v in variants.items():
        first = firsts.setdefault(v["group"], name)
        ratio = best[(name, 128)] / best[(first, 128)]
        err = v.get("rel_err_vs_torchao")
        print(f"{name:<40}{best[(name, 128)] * 1e3:>10.3f}{best[(name, 1)] * 1e3:>9.3f}{ratio:>22.2f}x"
              f"{'' if err is None else f'{err:>10.1e}'}")
        rows.append({"variant": name, "group": v["group"], "ms_per_call_t128": best[(name, 128)] * 1e3,
                     "ms_per_call_t1": best[(name, 1)] * 1e3, "t128_vs_first_of_group": ratio,
                     "rel_err_vs_torchao": err})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "rows": rows,
                                     "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
