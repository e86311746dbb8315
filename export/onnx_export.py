"""The same step to ONNX: KV caches become explicit inputs and outputs, PLE rows stay an input.

One graph with a dynamic token count serves prefill (T ≤ prefill_chunk) and decode (T = 1). Inputs:
`tokens [1,T] i64, input_pos [T] i64, ple_rows [1,T,L,P] f32, cache_in_{k,v}_cache_<layer>...`; outputs:
`logits [1,V]`, `cache_out_{k,v}_cache_<layer>...` in the same order (the caller feeds them back next step).
The caches are the eager ones (`kv_cache.make_cache`, written with `index_copy_`, which the ONNX exporter
makes functional): full layers `max_context` slots, sliding layers the program's ring of window + chunk.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .step import example_inputs


class OnnxStep(nn.Module):
    """forward_cached with the model's cache buffers swapped for explicit tensors (functional state)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.names = [name for cache in model.caches for name in getattr(cache, "names", ())]  # k/v_cache_<layer>

    def forward(self, tokens, input_pos, ple_rows, caches: list[torch.Tensor]):
        store = self.model._buffers
        state = {name: c.clone() for name, c in zip(self.names, caches)}
        saved = {name: store[name] for name in self.names}
        try:
            store.update(state)
            logits = self.model.forward_cached(tokens, input_pos, ple_rows)
        finally:
            store.update(saved)
        return (logits, *[state[name] for name in self.names])


def export_onnx(cfg, model: nn.Module, settings, path: Path) -> Path:
    """Write `path` (and its external data) from `model`, which gets fresh eager caches for it."""
    if settings.quant != "none" or settings.embedding_quant != "none":
        raise ValueError("ONNX export: only --quant none --embedding-quant none (torchao's quantized tensors "
                         "have no ONNX lowering here); export the ONNX graph from an unquantized bundle")
    model.setup_cache(settings.max_context, dtype=torch.float32, max_step=settings.prefill_chunk)
    step = OnnxStep(model).eval()
    caches = [model.get_buffer(n).clone() for n in step.names]
    t = torch.export.Dim("T", min=1, max=settings.prefill_chunk)
    shapes = {"tokens": {1: t}, "input_pos": {0: t}, "ple_rows": {1: t}, "caches": [None for _ in caches]}
    # No attend_len: the ONNX step reads every cache slot, the masks hiding the unwritten ones.
    args = (*example_inputs(cfg, min(2, settings.prefill_chunk), start=0)[:3], caches)
    with torch.no_grad():
        program = torch.onnx.export(
            step, args, dynamo=True, dynamic_shapes=shapes, optimize=True,
            input_names=["tokens", "input_pos", "ple_rows", *[f"cache_in_{n}" for n in step.names]],
            output_names=["logits", *[f"cache_out_{n}" for n in step.names]])
    program.save(str(path))
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return path
