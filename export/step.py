"""The exported program's step: tokens, positions, PLE rows, attend_len -> last logits, KV caches in place.

`InPlaceKVStep` is what `torch.export` traces (for the .pte); `example_inputs` are the step inputs it is
traced with, shared with the ONNX export.
"""
from __future__ import annotations

import torch
from torch import nn

from gemma_edge.contract.config import TextConfig

from .kv_cache import RingKV, StepPositions, make_cache
from .model import Gemma4CausalLM


def example_inputs(cfg: TextConfig, t: int, start: int = 2) -> tuple[torch.Tensor, ...]:
    """A step of `t` tokens at positions start..start+t-1 (start > 0 keeps `attend_len`'s length apart from
    T's, so export does not fuse the two dimensions)."""
    layers, p = cfg.num_hidden_layers, max(cfg.hidden_size_per_layer_input, 1)
    return (torch.zeros(1, t, dtype=torch.long), torch.arange(start, start + t, dtype=torch.long),
            torch.zeros(1, t, layers, p, dtype=torch.float32), torch.zeros(start + t, dtype=torch.long),
            torch.zeros(1, t, cfg.hidden_size, dtype=torch.float32))


class InPlaceKVStep(nn.Module):
    """The program's step over KV caches written in place (`kv_cache.make_cache(..., in_place=True)`).

    The eager caches' `index_copy_` writes export as a copy of every cache per step (index_put into a new
    tensor, then copy_ back). These caches write with the cache ops
    ExecuTorch's wheel ships kernels for (`import executorch.extension.llm.custom_ops`):
    `llama::update_cache` puts a full layer's new keys at their positions, `llama::update_cache_with_indices`
    a sliding layer's into its ring slots, in place. Attention stays the grouped `bmm` over the cache that
    XNNPACK runs: ExecuTorch's `llama::custom_sdpa` kernel is far slower here (figures: bench/RESULTS.md,
    "Figures behind design choices").

    A sliding layer's ring has `ring_slots` = window + prefill chunk slots (see `kv_cache`). The model's
    own `setup_cache` caches are removed (this step owns its caches); call `model.setup_cache` again to
    run `forward_cached`.

    Attention reads only the cache slots the sequence has written: `attend_len`, an input whose *length*
    N is the last position + 1 (its values are not read), bounds it. A full layer attends slots [0, N), a
    sliding layer ring slots [0, min(N, R)) (the ring fills in order, so those are the written ones). The
    length travels as a shape, not a value, because XNNPACK sizes a delegate's operators from its input
    shapes: sliced by a value read inside the program, the grouped `bmm` fell out of the delegate to the
    portable kernel, several times slower (figures: bench/RESULTS.md, "Figures behind design choices"). A 128-token
    prompt's first chunk thus attends 128 slots, not 1024 / 640, and a decode step at position p reads
    p + 1 keys per full layer instead of `max_context`. The slice is ExecuTorch's `slice_copy`, outside the
    delegates: a copy of the N attended rows, where the whole-cache view it replaces was free.
    """

    def __init__(self, model: Gemma4CausalLM, prefill_chunk: int):
        super().__init__()
        if model.caches is None:
            raise RuntimeError("call setup_cache(max_context) before InPlaceKVStep")
        model.drop_cache()
        self.model, self.max_context = model, model.max_context
        self.caches = make_cache(model.cfg, self.max_context, owner=self, max_step=prefill_chunk, in_place=True)
        sliding = [c.slots for c in self.caches if isinstance(c, RingKV)]
        self.ring = sliding[0] if sliding else None  # slots of every sliding layer's ring

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, ple_rows: torch.Tensor,
                attend_len: torch.Tensor, soft_embeds: torch.Tensor | None = None) -> torch.Tensor:
        t = tokens.shape[1]
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + t <= self.max_context)
        step = StepPositions(input_pos, attended=attend_len.shape[0], start=start)
        # soft_embeds is read where a token is an image placeholder (a text step passes zeros, unread).
        soft = soft_embeds if self.model.model.soft_token_ids and soft_embeds is not None else None
        return self.model.forward_over(self.caches, tokens, step, ple_rows, soft_embeds=soft)
