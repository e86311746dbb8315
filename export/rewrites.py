"""Export-time rewrites of the eager decoder, each a separate function with its own allclose test.

The eager model stays the readable reference; these only change how the same math is stored or
computed for ExecuTorch / XNNPACK: an explicit head module, XNNPACK-friendly norms and GELU,
torchao-quantized linears and embedding. The program's step itself is `step.InPlaceKVStep`.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.contract.bundle_format import PER_CHANNEL

from .checkpoint import release_file_pages
from .model import Gemma4CausalLM

log = logging.getLogger("gemma_edge.export")

LINEAR_QUANT = ("none", "8da4w", "8da8w")
EMBEDDING_QUANT = ("none", "int8", "int4")


class TiedHead(nn.Module):
    """The output head as its own Linear over the embedding matrix, so it can be quantized on its own."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")  # nothing allocated
        self.proj.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


def untie_head(model: Gemma4CausalLM) -> Gemma4CausalLM:
    """Route `model.head` through an `nn.Linear` (sharing the tied matrix until one side is quantized)."""
    w = model.model.embed_tokens.weight if model.cfg.tie_word_embeddings else model.lm_head.weight
    model.export_head = TiedHead(w)
    cap = model.cfg.final_logit_softcapping

    def head(h: torch.Tensor) -> torch.Tensor:
        logits = model.export_head(h)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    model.head = head  # instance attribute shadows the method
    return model


class RMSNormXnnpack(nn.Module):
    """RMSNorm from ops XNNPACK delegates, the mean square as a linear with a row of 1/dim: XNNPACK's
    fully-connected kernel is about twice as fast as its mean (the only one it delegates is a 4-D mean over
    dims (2, 3)), and the eager `pow(mean(-1), -0.5)` would leave two undelegated ops in every norm
    (figures: bench/RESULTS.md, "Figures behind design choices")."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.register_buffer("mean_row", torch.full((1, norm.dim), 1.0 / norm.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(F.linear(x * x, self.mean_row) + self.eps)  # mean square [..., 1]
        return y if self.weight is None else y * self.weight


class GeluTanhExplicit(nn.Module):
    """tanh-approximated GELU written out for XNNPACK. ExecuTorch 1.5.1's XNNPACK lowering of
    `gelu(approximate="tanh")` drops the `approximate` argument and computes the erf GELU instead —
    a silent ~1e-3 error per activation that reached 7e-3 on the logits of a tiny model.
    0.5·(1 + tanh(z)) = sigmoid(2z), so x·sigmoid(2·√(2/π)·(x + 0.044715·x³)): 6 elementwise ops
    instead of 9, and faster (figures: bench/RESULTS.md, "Figures behind design choices")."""

    C1 = 2 * math.sqrt(2 / math.pi)
    C3 = C1 * 0.044715

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * (self.C1 + self.C3 * (x * x)))


def replace_gelu_for_xnnpack(model: nn.Module) -> nn.Module:
    """Swap every tanh-approximated `nn.GELU` for `GeluTanhExplicit` (same function, lowered faithfully)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GELU):
                if child.approximate != "tanh":
                    raise ValueError(f"{name}: only the tanh-approximated GELU is used by Gemma 4")
                setattr(module, name, GeluTanhExplicit())
    return model


def replace_rmsnorm_for_xnnpack(model: nn.Module) -> nn.Module:
    """Swap every RMSNorm for `RMSNormXnnpack` (same math; for fp32 export)."""
    from .model import RMSNorm

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, RMSNorm):
                setattr(module, child_name, RMSNormXnnpack(child))
    return model


def _is_body_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) and not fqn.startswith("model.embed")


# XNNPACK delegates int4 blocks (bf16 scales) only when the block is a multiple of 32 values; a
# per-channel linear is one block of in_features.
XNNPACK_INT4_BLOCK_MULTIPLE = 32


def linear_quant_config(scheme: str, group_size: int):
    """The torchao config of a linear scheme (8da4w / 8da8w). 8da4w with `group_size` PER_CHANNEL is one
    int4 block per output row: faster than groups of 32 on E2B-sized MLPs, in fewer bytes (no per-group
    scales) (figures: bench/RESULTS.md, "Figures behind design choices")."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        # bf16 scales: XNNPACK's blockwise int4 kernel (qb4w) stores them so; per channel, bf16 scales make
        # it take the same kernel with one block per row. With fp32 scales torchao's eager model differs from
        # the lowered program (one linear: 1.3e-3 per group of 32; 3.0e-3 per channel, where XNNPACK takes
        # its channelwise qc4w kernel); with bf16 scales 3e-7.
        granularity = PerAxis(0) if group_size == PER_CHANNEL else PerGroup(group_size)
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=granularity,
                                                     weight_scale_dtype=torch.bfloat16)
    if scheme == "8da8w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    raise ValueError(f"--quant: expected one of {LINEAR_QUANT}, found {scheme!r}")


QUANT_BLOCK_ROWS = 8192  # rows quantized at a time: torchao's temporaries are ~5x the fp32 block


def quantize_by_rows(module: nn.Linear | nn.Embedding, config, block_rows: int = QUANT_BLOCK_ROWS) -> None:
    """torchao-quantize a bias-free Linear or an Embedding in place, `block_rows` weight rows at a time
    (the same tensors: every scheme here is row-local), so a 262144-row head or embedding never has a
    full fp32 copy plus torchao's temporaries of it in RAM."""
    from torchao.quantization import quantize_

    weight = module.weight.detach()
    parts = []
    for start in range(0, weight.shape[0], block_rows):
        rows = min(block_rows, weight.shape[0] - start)
        block = (nn.Linear(weight.shape[1], rows, bias=False, device="meta") if isinstance(module, nn.Linear)
                 else nn.Embedding(rows, weight.shape[1], device="meta"))
        block.weight = nn.Parameter(weight[start:start + rows].float(), requires_grad=False)
        quantize_(block, config, filter_fn=lambda m, fqn: isinstance(m, type(module)))
        parts.append(block.weight)
        release_file_pages(weight[start:start + rows])  # the mmap'd source rows leave RSS once quantized
    names, attrs = parts[0].__tensor_flatten__()
    inner = {n: torch.cat([getattr(p, n) for p in parts]) for n in names}
    module.weight = nn.Parameter(type(parts[0]).__tensor_unflatten__(inner, attrs, weight.shape, weight.stride()),
                                 requires_grad=False)


def quantize_linears(model: nn.Module, scheme: str, group_size: int = PER_CHANNEL, progress: bool = False) -> nn.Module:
    """torchao int8-dynamic-activation / int4 (per channel or grouped) or int8 (per-channel) weights on
    every Linear.

    Quantizes one Linear at a time, a block of rows at a time, casting just that block to fp32, so a
    bf16-loaded model never holds a second full-precision copy.
    """
    if scheme == "none":
        return model
    if scheme not in LINEAR_QUANT:
        raise ValueError(f"--quant: expected one of {LINEAR_QUANT}, found {scheme!r}")
    from torchao.quantization import quantize_
    from tqdm import tqdm

    config = linear_quant_config(scheme, group_size)
    targets = [(n, m) for n, m in model.named_modules() if _is_body_linear(m, n)]
    skipped = []
    for name, module in tqdm(targets, desc=f"quantize {scheme}", unit="linear", disable=not progress):
        if scheme == "8da4w" and module.in_features % (group_size or XNNPACK_INT4_BLOCK_MULTIPLE):
            module.float()
            skipped.append(name)  # kept in fp32: int4 groups must tile the input dimension
            continue
        if module.bias is not None:
            module.float()
            quantize_(module, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
        else:
            quantize_by_rows(module, config)
    if skipped:
        listed = ", ".join(skipped[:4]) + (" ..." if len(skipped) > 4 else "")
        log.warning("%d linear(s) kept in fp32 (in_features not a multiple of %d): %s",
                    len(skipped), group_size or XNNPACK_INT4_BLOCK_MULTIPLE, listed)
    model.quant_skipped = skipped
    return model


def quantize_embedding(model: Gemma4CausalLM, scheme: str) -> Gemma4CausalLM:
    """Weight-only int8 or int4 main embedding, one scale per row (per token), dequantized at the gather.

    int4 per row is what Google's `gemma4_mixed48` recipe gives LiteRT-LM's embedder: half the bytes of int8
    (0.20 instead of 0.40 GB for E2B's 262144 × 1536 table); groups of 32 would add 50 MB of scales."""
    if scheme == "none":
        return model
    if scheme not in EMBEDDING_QUANT:
        raise ValueError(f"--embedding-quant: expected one of {EMBEDDING_QUANT}, found {scheme!r}")
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis

    dtype = torch.int8 if scheme == "int8" else torch.int4
    # A tied head keeps its own reference to the matrix: the embedding gets a quantized copy either way.
    quantize_by_rows(model.model.embed_tokens, IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0)))
    return model


def to_float32(model: nn.Module) -> nn.Module:
    """Cast the remaining full-precision parameters (norms, unquantized weights) to fp32 for XNNPACK."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.dtype in (torch.bfloat16, torch.float16):
                module._parameters[name] = nn.Parameter(p.detach().float(), requires_grad=False)
        for name, b in list(module._buffers.items()):
            if b is not None and b.dtype in (torch.bfloat16, torch.float16):
                module._buffers[name] = b.float()
    return model
