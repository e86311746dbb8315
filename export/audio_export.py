"""The audio front end and tower (export/audio.py) lowered to an XNNPACK ExecuTorch program: one method, dynamic in
the clip length.

    program = lower_audio(load_audio_tower(ckpt), quantize="8da8w")
    written = write_audio_program(model, "audio.pte")   # atomic; sha256, the operators left outside XNNPACK

Method `audio` takes rows [1, 48m − 3, 160] f32 and valid [1, 48m − 3] f32 (a clip at 16 kHz mono on
`contract.audio.program_frames`' grid, `audio.program_inputs`; 1 ≤ m ≤ 63: up to 30 s) and returns [1, 12m, H] f32,
whose first `contract.audio_soft_tokens` rows are the clip's soft tokens. The log-mel front end runs inside it, so
every host gets the same features from the same kernels.

Export-only rewrites, applied to a copy of the tower (or in place) before torch.export:
- `vision_export.scalar_clamps`: the clipped linears' bounds become scalar clamps (delegated), ±inf dropped;
- constants of the weights folded once: each attention's query scale (softplus of per_dim_scale, a `log1p` XNNPACK
  does not take) and its relative keys (relative_k_proj of the fixed sinusoidal table);
- the decoder's RMSNorm rewrite, and the subsampling's LayerNorms written with the same linear-mean trick;
- torchao quantization of every linear: 8da8w (the default), 8da4w or none. The DFT and mel matrices are
  buffers used by matmul, not linears: they stay fp32.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.contract import audio as contract
from gemma_edge.contract.bundle_format import AUDIO_METHOD

from . import rewrites
from .audio import AudioAttention, Gemma4Audio, SubsampleLayer, local_attention
from .files import write_atomically
from .vision_export import lower_programs, measure_in_child, quantize_vision, scalar_clamps, undelegated_ops

QUANT_SCHEMES = ("8da8w", "8da4w", None)
DEFAULT_QUANT = "8da8w"
MAX_TOKENS = contract.audio_soft_tokens(contract.MAX_SAMPLES)  # 750: 30 s
MAX_BLOCKS = contract.program_blocks(contract.MAX_SAMPLES)  # 63 blocks of 12 positions


# ---------------------------------------------------------------------------------------------------- rewrites
class FoldedAttention(nn.Module):
    """An AudioAttention whose query scale and relative keys are constants read once from its weights."""

    def __init__(self, attn: AudioAttention, positions: torch.Tensor):
        super().__init__()
        self.cfg, self.heads, self.head_dim, self.k_scale = attn.cfg, attn.heads, attn.head_dim, attn.k_scale
        self.q_proj, self.k_proj, self.v_proj, self.post = attn.q_proj, attn.k_proj, attn.v_proj, attn.post
        with torch.no_grad():
            self.register_buffer("q_scale", attn.q_scale().clone())
            rel_k = attn.relative_k_proj(positions.to(attn.relative_k_proj.weight.dtype)).float()
            self.register_buffer("rel_k", rel_k.view(-1, self.heads, self.head_dim).clone())

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask=None) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.heads, self.head_dim)
        q = self.q_proj(x).float().view(shape) * self.q_scale
        k = self.k_proj(x).float().view(shape) * self.k_scale
        v = self.v_proj(x).float().view(shape)
        out = local_attention(q, k, v, self.rel_k, self.cfg.attention_logit_cap,
                              self.cfg.attention_invalid_logits_value, mask)
        return self.post(out.to(x.dtype))


class LayerNormXnnpack(nn.Module):
    """LayerNorm without bias from delegated ops: mean and variance as linears with a row of 1/dim (as
    rewrites.RMSNormXnnpack computes its mean square)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        (dim,) = norm.normalized_shape
        self.eps, self.weight = norm.eps, norm.weight
        self.register_buffer("mean_row", torch.full((1, dim), 1.0 / dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.mean_row)
        y = centred * torch.rsqrt(F.linear(centred * centred, self.mean_row) + self.eps)
        return y * self.weight


def fold_constants(model: Gemma4Audio) -> None:
    """Every AudioAttention becomes a FoldedAttention (before quantization: the relative keys are exact fp32)."""
    positions = model.audio_tower.positions
    for layer in model.audio_tower.layers:
        layer.self_attn = FoldedAttention(layer.self_attn, positions)


def replace_layernorm_for_xnnpack(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, SubsampleLayer):
            m.norm = LayerNormXnnpack(m.norm)


def check_quant(quantize: str | None) -> None:
    if quantize not in QUANT_SCHEMES:
        raise ValueError(f"audio quantization: expected one of {QUANT_SCHEMES}, found {quantize!r}")


def prepare_audio(model: Gemma4Audio, quantize: str | None = DEFAULT_QUANT, in_place: bool = False) -> Gemma4Audio:
    """The tower as it is exported: fp32, scalar clamps, folded constants, quantized linears, XNNPACK-friendly
    norms. Works on a deep copy unless `in_place` (a tower loaded zero-copy for this export alone: a deep copy
    would bring every mapped weight into RAM)."""
    check_quant(quantize)
    if not in_place:
        model = copy.deepcopy(model)
    rewrites.to_float32(model)
    scalar_clamps(model)
    fold_constants(model)
    quantize_vision(model, quantize)
    rewrites.replace_rmsnorm_for_xnnpack(model)
    replace_layernorm_for_xnnpack(model)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- export
class EncodeMethod(nn.Module):
    """`Gemma4Audio.encode_rows` as a module: the exported method's forward."""

    def __init__(self, model: Gemma4Audio):
        super().__init__()
        self.model = model

    def forward(self, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.model.encode_rows(rows, valid)


def export_audio(model: Gemma4Audio, max_blocks: int = MAX_BLOCKS) -> dict:
    """torch.export the (prepared) tower's `encode_rows`, dynamic in the block count m (1..max_blocks) through its
    rows, 48m − 3 (contract.audio.program_frames)."""
    m = torch.export.Dim("blocks", min=1, max=max_blocks)
    rows = contract.BLOCK_ROWS * 4 - 3
    example = (torch.zeros(1, rows, contract.HOP), torch.ones(1, rows))
    shapes = {"rows": {1: contract.BLOCK_ROWS * m - 3}, "valid": {1: contract.BLOCK_ROWS * m - 3}}
    with torch.no_grad():
        program = torch.export.export(EncodeMethod(model).eval(), example, strict=False, dynamic_shapes=shapes)
    return {AUDIO_METHOD: program}


def lower_audio(model: Gemma4Audio, quantize: str | None = DEFAULT_QUANT, in_place: bool = False,
                max_blocks: int = MAX_BLOCKS):
    """The front end and tower as an ExecutorchProgramManager with the one dynamic method `audio`."""
    return lower_programs(export_audio(prepare_audio(model, quantize, in_place), max_blocks))


# ---------------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class AudioProgramFile:
    """What write_audio_program wrote: the .pte's sha256 (hex) and size, and the operators left outside XNNPACK
    delegates (name -> count)."""

    sha256: str
    size: int
    undelegated: dict[str, int]


def write_audio_program(model: Gemma4Audio, path: str | Path, quantize: str | None = DEFAULT_QUANT,
                        in_place: bool = False, max_blocks: int = MAX_BLOCKS) -> AudioProgramFile:
    """Lower the tower (`lower_audio`) and write the .pte atomically (`write_atomically`)."""
    program = lower_audio(model, quantize, in_place, max_blocks)
    left = dict(sorted(undelegated_ops(program)[AUDIO_METHOD].items()))
    buffer = program.buffer
    digest = write_atomically(path, buffer)
    return AudioProgramFile(digest, len(buffer), left)


# ---------------------------------------------------------------------------------------------------- activations
_MEASURE_CHILD = r"""
import sys
import torch
from executorch.runtime import Runtime
from gemma_edge.procfs import proc_status, reset_peak_rss
path, k = sys.argv[1], int(sys.argv[2])
method = Runtime.get().load_program(path).load_method("audio")
rows = 48 * (-(-(4 * k + 3) // 48)) - 3     # contract.audio.program_frames of a clip of k soft tokens
inputs = [0.1 * torch.randn(1, rows, 160), torch.ones(1, rows)]
reset_peak_rss()
before = proc_status()["VmRSS"]
method.execute(inputs)        # the first run: XNNPACK allocates its workspace, which then stays
print("ACTIVATIONS", proc_status()["VmHWM"] - before)
"""


def measure_activations(path: str | Path, max_tokens: int = MAX_TOKENS) -> int:
    """Bytes the `audio` method adds to the resident set while it encodes a clip of `max_tokens` soft tokens (30 s),
    measured in a fresh process as vision_export.measure_activations measures a vision method: the memory
    budget reads this figure (manifest `audio.activation_bytes`)."""
    return measure_in_child(_MEASURE_CHILD, path, max_tokens, "the audio method")
