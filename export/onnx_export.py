"""The same step graph to ONNX: KV caches become explicit inputs and outputs, PLE rows stay an input.

One graph with a dynamic token count serves prefill (T ≤ prefill_chunk) and decode (T = 1). Inputs:
`tokens [1,T] i64, input_pos [T] i64, ple_rows [1,T,L,P] f32, cache_in_<buffer>...`; outputs: `logits
[1,V]`, `cache_out_<buffer>...` in the same order (the caller feeds them back next step).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def cache_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_buffers() if n.startswith(("k_cache_", "v_cache_")) or n == "ring_pos"]


class OnnxStep(nn.Module):
    """forward_cached with the model's cache buffers swapped for explicit tensors (functional state)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.names = cache_names(model)

    def forward(self, tokens, input_pos, ple_rows, caches: list[torch.Tensor]):
        state = {name: c.clone() for name, c in zip(self.names, caches)}
        saved = {name: getattr(self.model, name) for name in self.names}
        try:
            for name, tensor in state.items():
                self.model._buffers[name] = tensor
            logits = self.model.forward_cached(tokens, input_pos, ple_rows)
        finally:
            for name, tensor in saved.items():
                self.model._buffers[name] = tensor
        return (logits, *[state[name] for name in self.names])


def export_onnx(cfg, model: nn.Module, settings, path: Path) -> Path:
    if settings.quant != "none" or settings.embedding_quant != "none":
        raise ValueError("ONNX export: only --quant none --embedding-quant none (torchao's quantized tensors "
                         "have no ONNX lowering here); export the ONNX graph from an unquantized bundle")
    from .exporter import example_inputs

    step = OnnxStep(model).eval()
    caches = [getattr(model, n).clone() for n in step.names]
    t = torch.export.Dim("T", min=1, max=settings.prefill_chunk)
    shapes = {"tokens": {1: t}, "input_pos": {0: t}, "ple_rows": {1: t}, "caches": [None for _ in caches]}
    args = (*example_inputs(cfg, min(2, settings.prefill_chunk), start=0)[:3], caches)  # no attend_len: ONNX runs forward_cached
    with torch.no_grad():
        program = torch.onnx.export(
            step, args, dynamo=True, dynamic_shapes=shapes, optimize=True,
            input_names=["tokens", "input_pos", "ple_rows", *[f"cache_in_{n}" for n in step.names]],
            output_names=["logits", *[f"cache_out_{n}" for n in step.names]])
    program.save(str(path))
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return path
