"""The vision tower (export/vision.py) lowered to an XNNPACK ExecuTorch program: one static method per budget.

    program = lower_vision(load_vision_tower(ckpt), budgets=(280,), quantize="8da8w")
    written = write_vision_program(model, "vision.pte", budgets=(70, 280))   # atomic; sha256 + method names

Method `vision_{budget}` takes pixel_values [1, 9·budget, 768] f32 and pixel_position_ids [1, 9·budget, 2] i64
(what `gemma_edge.runtime.image.preprocess` gives, batch 1) and returns (soft tokens [1, budget, H] f32,
valid [1, budget] bool). Every shape is static: a budget is a method, so no decomposition can fix a shape that
an image of another budget would need (ExecuTorch's Gemma 4 example loses its dynamic patch count that way), and
a method refuses inputs of any other budget.

Export-only rewrites, applied to a copy of the tower (or in place) before torch.export:
- `scalar_clamps`: the clipped linears' bounds are checkpoint buffers, which export as `clamp.Tensor`, an op
  XNNPACK does not take; read once here, they become scalar clamps (`clamp.default`, delegated), and an
  infinite bound is dropped.
- the decoder's RMSNorm and tanh-GELU rewrites (export/rewrites.py);
- queries in blocks (`VisionAttention.block_q`), so no [heads, N, N] score matrix exists at large budgets;
- torchao quantization of every linear: 8da8w (int8 dynamic activations, int8 per-channel weights; the
  default), 8da4w (int4 per-channel weights) or none; 8w (int8 weight-only) is prepared for measuring its
  error in eager mode but refused by `lower_vision`.
The position table stays an fp32 `F.embedding` gather.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gemma_edge.contract.bundle_format import PER_CHANNEL, vision_method
from gemma_edge.contract.image import PATCH, PATCH_DIM, POOL, SUPPORTED_BUDGETS, check_budget, max_patches

from . import rewrites
from .files import write_atomically
from .vision import CLIP_BOUNDS, ClippableLinear, Gemma4Vision, VisionAttention

QUANT_SCHEMES = ("8da8w", "8da4w", "8w", None)
DEFAULT_QUANT = "8da8w"
# Query rows per attention block: the score matrix per layer is heads × 512 × N fp32 (at 280 soft tokens,
# 12 × 512 × 2520 × 4 B = 62 MB instead of 305 MB unblocked; at 1120, 248 MB instead of 4.9 GB).
DEFAULT_BLOCK_Q = 512


def check_budgets(budgets) -> tuple[int, ...]:
    """Budgets as a sorted tuple of distinct supported soft-token counts; an error names the bad one."""
    budgets = tuple(budgets)
    if not budgets:
        raise ValueError(f"image budgets: expected at least one of {SUPPORTED_BUDGETS}, found none")
    for b in budgets:
        check_budget(b)
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"image budgets: expected distinct budgets, found {list(budgets)}")
    return tuple(sorted(budgets))


# ---------------------------------------------------------------------------------------------------- rewrites
class ScalarClampLinear(nn.Module):
    """A ClippableLinear whose bounds are Python floats (None where infinite): clamp(x) -> Linear -> clamp(y),
    the same values, exported as scalar `clamp.default` (or no clamp) instead of `clamp.Tensor`."""

    def __init__(self, linear: nn.Linear, bounds: dict[str, float | None]):
        super().__init__()
        self.linear = linear
        self.input_min, self.input_max = bounds["input_min"], bounds["input_max"]
        self.output_min, self.output_max = bounds["output_min"], bounds["output_max"]

    @staticmethod
    def _clamp(x: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
        return x if lo is None and hi is None else torch.clamp(x, lo, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(self._clamp(x, self.input_min, self.input_max))
        return self._clamp(y, self.output_min, self.output_max)


def scalar_clamps(model: nn.Module) -> dict[str, int]:
    """Swap every clipped ClippableLinear for a ScalarClampLinear in place, reading its bounds now, exactly
    (the exported tower computes in fp32, where the eager module's cast of a bound to x's dtype is exact).
    Returns {"kept": finite bounds now scalar clamps, "dropped": infinite bounds removed}. A NaN bound or
    a min above its max (which clamps everything to the max) is refused, naming the module."""
    counts = Counter(kept=0, dropped=0)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, ClippableLinear) or not child.clipped:
                continue
            where = f"{parent_name}.{name}" if parent_name else name
            values = {b: float(getattr(child, b)) for b in CLIP_BOUNDS}
            for side in ("input", "output"):
                lo, hi = values[f"{side}_min"], values[f"{side}_max"]
                if math.isnan(lo) or math.isnan(hi) or lo > hi:
                    raise ValueError(f"{where}.{side}_min/{side}_max: expected min ≤ max, found {lo} and {hi}")
            bounds = {b: None if math.isinf(v) else v for b, v in values.items()}
            counts["kept"] += sum(v is not None for v in bounds.values())
            counts["dropped"] += sum(v is None for v in bounds.values())
            setattr(parent, name, ScalarClampLinear(child.linear, bounds))
    return dict(counts)


def check_settings(quantize: str | None, block_q: int | None) -> None:
    if quantize not in QUANT_SCHEMES:
        raise ValueError(f"vision quantization: expected one of {QUANT_SCHEMES}, found {quantize!r}")
    if block_q is not None and (not isinstance(block_q, int) or isinstance(block_q, bool) or block_q < 1):
        raise ValueError(f"block_q: expected a positive number of query rows or None, found {block_q!r}")


def set_block_q(model: nn.Module, block_q: int | None) -> None:
    """Every VisionAttention computes its queries `block_q` rows at a time (None: all at once, by sdpa)."""
    check_settings(None, block_q)
    for m in model.modules():
        if isinstance(m, VisionAttention):
            m.block_q = block_q


def quantize_vision(model: nn.Module, quantize: str | None) -> nn.Module:
    """torchao-quantize every linear of the tower and embed_vision in place, as the decoder's linears are
    (`rewrites.quantize_linears`, per output channel); "8w" is int8 weights dequantized to fp32 activations."""
    check_settings(quantize, None)
    if quantize is None:
        return model
    if quantize != "8w":
        return rewrites.quantize_linears(model, quantize, PER_CHANNEL)  # 8da4w: in_features % 32 ≠ 0 stays fp32
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis

    config = IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    for m in [m for m in model.modules() if isinstance(m, nn.Linear)]:
        rewrites.quantize_by_rows(m, config)
    return model


def prepare_vision(model: Gemma4Vision, quantize: str | None = DEFAULT_QUANT, block_q: int | None = DEFAULT_BLOCK_Q,
                   in_place: bool = False) -> Gemma4Vision:
    """The tower as it is exported: scalar clamps, quantized linears, fp32, XNNPACK-friendly norms and GELU,
    blocked queries. Works on a deep copy unless `in_place`; a tower loaded zero-copy from its checkpoint
    (`load_vision_tower(dtype=None)`) for this export alone should be prepared in place, as a deep copy
    brings every mapped weight into RAM."""
    check_settings(quantize, block_q)
    if not in_place:
        model = copy.deepcopy(model)
    scalar_clamps(model)
    quantize_vision(model, quantize)
    rewrites.to_float32(model)
    rewrites.replace_rmsnorm_for_xnnpack(model)
    rewrites.replace_gelu_for_xnnpack(model)
    set_block_q(model, block_q)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- export
class EncodeMethod(nn.Module):
    """`Gemma4Vision.encode` as a module: the exported method's forward."""

    def __init__(self, model: Gemma4Vision):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, pixel_position_ids: torch.Tensor):
        return self.model.encode(pixel_values, pixel_position_ids)


def example_inputs(model: Gemma4Vision, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of a `budget` method's shapes: a 3 × 3·budget patch grid (every patch real). Tracing does not
    depend on their values (encode has no data-dependent control flow)."""
    n = max_patches(budget)
    cols = 3 * budget
    idx = torch.arange(n)
    positions = torch.stack([idx % cols, idx // cols], dim=-1)[None]
    return torch.rand(1, n, model.cfg.patch_dim), positions


def export_vision(model: Gemma4Vision, budgets) -> dict:
    """torch.export one static method per budget over the same (prepared) tower: {method name: program}."""
    method = EncodeMethod(model).eval()
    with torch.no_grad():
        return {vision_method(b): torch.export.export(method, example_inputs(model, b), strict=False)
                for b in check_budgets(budgets)}


def lower_programs(programs: dict):
    """XNNPACK-lower the methods into one program (the weights stored once for all of them). A dynamic dimension
    is planned at its upper bound (the default pass would plan it at the example's size, and a larger input
    would then be refused)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    edge = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True,
        do_quant_fusion_and_const_prop=True,
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))


def lower_vision(model: Gemma4Vision, budgets=(280,), quantize: str | None = DEFAULT_QUANT,
                 block_q: int | None = DEFAULT_BLOCK_Q, in_place: bool = False):
    """The tower as an ExecutorchProgramManager with one static method `vision_{budget}` per budget."""
    budgets = check_budgets(budgets)
    if quantize == "8w":
        raise ValueError("vision quantization 8w: not lowerable — XNNPACK has no weight-only int8 linear, and "
                         "ExecuTorch 1.5.1's lowering of torchao's weight-only linears gives wrong soft tokens "
                         "(bench/vision_quant_error.py); use 8da8w")
    cfg = model.cfg
    if (cfg.patch_dim, cfg.pooling_kernel_size) != (PATCH_DIM, POOL):
        raise ValueError(f"vision_config: the processor's budgets fix patch_size {PATCH} and pooling_kernel_size "
                         f"{POOL}, found {cfg.patch_size} and {cfg.pooling_kernel_size}")
    prepared = prepare_vision(model, quantize, block_q, in_place)
    return lower_programs(export_vision(prepared, budgets))


def undelegated_ops(program) -> dict[str, Counter]:
    """Method name -> Counter of the operators an ExecutorchProgramManager runs outside XNNPACK delegates
    (delegate calls, tuple unpacking and memory planning's allocations aside)."""
    import operator

    from executorch.exir import memory

    not_ops = {operator.getitem, memory.alloc, memory.view}
    out = {}
    for name in program.methods:
        graph = program.exported_program(name).graph
        out[name] = Counter(str(n.target) for n in graph.nodes if n.op == "call_function" and n.target not in not_ops
                            and str(n.target) != "executorch_call_delegate")
    return out


# ---------------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class VisionProgramFile:
    """What write_vision_program wrote: the .pte's sha256 (hex) and size, its methods in budget order, and per
    method the operators left outside XNNPACK delegates (name -> count)."""

    sha256: str
    size: int
    methods: tuple[str, ...]
    undelegated: dict[str, dict[str, int]]


def write_vision_program(model: Gemma4Vision, path: str | Path, budgets=(280,),
                         quantize: str | None = DEFAULT_QUANT, block_q: int | None = DEFAULT_BLOCK_Q,
                         in_place: bool = False) -> VisionProgramFile:
    """Lower the tower (`lower_vision`) and write the .pte atomically (`write_atomically`)."""
    budgets = check_budgets(budgets)
    program = lower_vision(model, budgets, quantize, block_q, in_place)
    left = {name: dict(sorted(c.items())) for name, c in undelegated_ops(program).items()}
    buffer = program.buffer
    digest = write_atomically(path, buffer)
    return VisionProgramFile(digest, len(buffer), tuple(vision_method(b) for b in budgets), left)


# ---------------------------------------------------------------------------------------------------- activations
_MEASURE_CHILD = r"""
import sys
import torch
from executorch.runtime import Runtime
from gemma_edge.procfs import proc_status, reset_peak_rss
path, b = sys.argv[1], int(sys.argv[2])
method = Runtime.get().load_program(path).load_method(f"vision_{b}")
n = 9 * b
idx = torch.arange(n)
inputs = [torch.rand(1, n, 768), torch.stack([idx % (3 * b), idx // (3 * b)], dim=-1)[None]]
reset_peak_rss()
before = proc_status()["VmRSS"]
method.execute(inputs)        # the first run: XNNPACK allocates its workspace, which then stays
print("ACTIVATIONS", proc_status()["VmHWM"] - before)
"""


def measure_activations(path: str | Path, budgets) -> dict[int, int]:
    """Bytes each `vision_{budget}` method adds to the resident set while it encodes an image of every patch
    real, measured by running it in a fresh process: XNNPACK's workspace holds a delegate's intermediate
    tensors and is not in the program's metadata, so the memory budget reads this figure (manifest
    `vision.activation_bytes`) instead of a formula."""
    # one process per method: each first run allocates its own workspace
    return {b: measure_in_child(_MEASURE_CHILD, path, b, f"vision_{b}") for b in check_budgets(budgets)}


def measure_in_child(child: str, path: str | Path, arg: int, what: str) -> int:
    """Run a measuring `child` script (`python -c child path arg`) in a fresh process and return the bytes it prints
    on its `ACTIVATIONS n` line; a failure names `what` and carries the child's stderr."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", child, str(path), str(arg)], capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("ACTIVATIONS ")), None)
    if r.returncode or line is None:
        raise RuntimeError(f"{path}: measuring {what}'s activations failed (status {r.returncode}): "
                           f"{r.stderr[-1500:]}")
    return int(line.split()[1])
