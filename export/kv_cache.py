"""Per-layer KV caches, chosen for each layer in one place: `make_cache`.

Every attention asks its layer's cache for the keys and values to attend over (`update_and_fetch`) and
which of them each query may see (`allowed`, asked of the first layer of each kind, an owning one); what
that means is the cache's business:

  SequenceKV  the whole-sequence forward: keeps nothing, attends this forward's own keys
  FullKV      a full-attention layer: one slot per position, `max_context` slots
  RingKV      a sliding layer: a ring of `ring_slots(window, max_context, max_step)` slots
  SharedKV    a KV-shared layer: the keys and values its source layer fetched in this same step

A step's positions travel in a `StepPositions`, which builds what every layer of one kind needs (the
last position, ring slots, the attended span) once per step, not once per layer.

Stored caches are buffers `k_cache_<layer>` / `v_cache_<layer>` of the module whose forward runs them
(`owner`: the model for `forward_cached`, the exported step for the program), laid out [B·KV, S, 1, D]:
the KV heads are the batch lines of ExecuTorch's cache ops, so a cache is also the [B, KV, S, D] view
`attend` takes. They are written one of two ways (`in_place`):
with `index_copy_` (eager, and ONNX, whose exporter makes the writes functional), or with ExecuTorch's
in-place cache ops (`llama::update_cache`, `llama::update_cache_with_indices`; batch 1), which the
exported program needs: `index_copy_` exports as a copy of every cache per step (see `step.py`).

A ring is written before it is attended, and has one step's worth of slots beyond the window, so no key
of a step overwrites a key an earlier query of that same step still needs. Which position a ring slot
holds follows from the step's last position alone (`last - (last - slot) mod R`, < 0 for a slot this
sequence has not written), so no positions buffer is kept, and a sequence restarting at position 0
ignores whatever an older one left in the caches (full layers mask slots past each query the same way).
"""
from __future__ import annotations

import torch
from torch import nn

from gemma_edge.contract.config import LayerSpec, TextConfig, ring_slots


class StepPositions:
    """One step's positions [T] (consecutive) and what the caches derive from them, built once per step.

    `attended`: how many slots attention reads (the program's `attend_len` length, last position + 1);
    None: every slot. `start`: the first position as an integer (the in-place full-layer write takes it).
    `fetched` collects what each owning layer attended, for the layers that share it."""

    def __init__(self, positions: torch.Tensor, attended: int | None = None, start: int | None = None):
        self.positions, self.attended, self.start = positions, attended, start
        self.fetched: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._once: dict[tuple, object] = {}

    def once(self, key: tuple, build):
        """`build()` the first time `key` is asked for in this step; the same value afterwards."""
        if key not in self._once:
            self._once[key] = build()
        return self._once[key]

    @property
    def last(self) -> torch.Tensor:
        return self.once(("last",), lambda: self.positions[-1:])  # [1]

    @property
    def queries(self) -> torch.Tensor:
        return self.once(("queries",), lambda: self.positions[:, None])  # [T, 1]


def as_lines(new: torch.Tensor) -> torch.Tensor:
    """New keys or values [B, T, KV, D] -> [B·KV, T, 1, D], the caches' layout."""
    b, t, kv, d = new.shape
    if b == 1:  # the exported program's case: a reshape when KV = 1 (E2B), XNNPACK copies for a transpose
        return new.reshape(1, t, 1, d) if kv == 1 else new[0].transpose(0, 1).unsqueeze(2).contiguous()
    return new.transpose(1, 2).reshape(b * kv, t, 1, d)


class LayerKV:
    """What every layer's cache answers; one instance per layer, made by `make_cache`."""

    def allowed(self, step: StepPositions) -> torch.Tensor:
        """Bool [T, S]: which of the S keys `update_and_fetch` returns each of the step's queries may see."""
        raise NotImplementedError

    def prepare(self, step: StepPositions) -> None:
        """Build, before the layers run, what this kind of cache derives from the step's positions."""

    def reset(self) -> None:
        """Forget every sequence (a new one from position 0 ignores what is left anyway)."""

    def release(self) -> None:
        """Remove this cache's buffers from the module that holds them."""

    def update_and_fetch(self, k: torch.Tensor | None, v: torch.Tensor | None, step: StepPositions):
        """Keep the step's new keys and values [B, T, KV, D] (None in a KV-shared layer); return the ones
        to attend over, [B, KV, S, D] each."""
        raise NotImplementedError


class SequenceKV(LayerKV):
    """The whole-sequence forward's cache: nothing kept; a layer attends its own keys, causally (and within
    the window in a sliding layer)."""

    def __init__(self, spec: LayerSpec, window: int):
        self.index, self.window = spec.index, window if spec.is_sliding else None

    def allowed(self, step: StepPositions) -> torch.Tensor:
        pos = step.positions
        causal = pos[None, :] <= pos[:, None]  # [T, T]
        return causal if self.window is None else causal & (pos[:, None] - pos[None, :] < self.window)

    def update_and_fetch(self, k: torch.Tensor, v: torch.Tensor, step: StepPositions):
        kv = step.fetched[self.index] = (k.transpose(1, 2), v.transpose(1, 2))  # [B, KV, T, D]
        return kv


class StoredKV(LayerKV):
    """A layer's K and V [B·KV, slots, 1, D], buffers `k_cache_<layer>` / `v_cache_<layer>` of the module
    that runs the forward (`owner`); `update_and_fetch` writes the step's keys, then returns the first
    `span` slots as [B, KV, span, D] views."""

    def __init__(self, owner: nn.Module, spec: LayerSpec, slots: int, batch_size: int, dtype: torch.dtype,
                 in_place: bool):
        self.index, self.slots, self.batch_size, self.in_place = spec.index, slots, batch_size, in_place
        self.owner, self.names = owner, (f"k_cache_{spec.index}", f"v_cache_{spec.index}")
        shape = (batch_size * spec.num_key_value_heads, slots, 1, spec.head_dim)
        for name in self.names:
            owner.register_buffer(name, torch.zeros(shape, dtype=dtype), persistent=False)

    # Looked up at every call, not kept: torch.export (and the ONNX step) swap the module's buffers.
    @property
    def k(self) -> torch.Tensor:
        return getattr(self.owner, self.names[0])

    @property
    def v(self) -> torch.Tensor:
        return getattr(self.owner, self.names[1])

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()

    def release(self) -> None:
        for name in self.names:
            delattr(self.owner, name)

    def span(self, step: StepPositions):
        raise NotImplementedError

    def write(self, lines: torch.Tensor, cache: torch.Tensor, step: StepPositions) -> None:
        raise NotImplementedError

    def update_and_fetch(self, k: torch.Tensor, v: torch.Tensor, step: StepPositions):
        self.write(as_lines(k), self.k, step)
        self.write(as_lines(v), self.v, step)
        span, b = self.span(step), self.batch_size
        kv = step.fetched[self.index] = tuple(
            c[:, :span].reshape(b, c.shape[0] // b, span, c.shape[3]) for c in (self.k, self.v))
        return kv


class FullKV(StoredKV):
    """A full-attention layer's cache: slot p holds position p."""

    def span(self, step: StepPositions):
        return self.slots if step.attended is None else step.attended

    def allowed(self, step: StepPositions) -> torch.Tensor:
        return torch.arange(self.span(step))[None, :] <= step.queries  # [T, span]

    def write(self, lines: torch.Tensor, cache: torch.Tensor, step: StepPositions) -> None:
        if self.in_place:
            torch.ops.llama.update_cache(lines, cache, step.start)
        else:
            cache.index_copy_(1, step.positions, lines)


class RingKV(StoredKV):
    """A sliding layer's ring: position p goes to slot p mod `slots`; a query sees the keys of the last
    `window` positions up to its own. Reads slots [0, min(attended, slots)): the ring fills in order, so
    those are the written ones."""

    def __init__(self, owner: nn.Module, spec: LayerSpec, slots: int, window: int, batch_size: int,
                 dtype: torch.dtype, in_place: bool):
        super().__init__(owner, spec, slots, batch_size, dtype, in_place)
        self.window = window

    def span(self, step: StepPositions):
        if step.attended is None:
            return self.slots
        return step.once(("ring span", self.slots), lambda: torch.sym_min(step.attended, self.slots))

    def allowed(self, step: StepPositions) -> torch.Tensor:
        last, slot = step.last, torch.arange(self.span(step))
        held = last - torch.remainder(last - slot, self.slots)  # position in each ring slot; < 0: not written
        q = step.queries
        return (held >= 0)[None, :] & (held[None, :] <= q) & (q - held[None, :] < self.window)  # [T, span]

    def prepare(self, step: StepPositions) -> None:
        self.ring_slots(step)

    def ring_slots(self, step: StepPositions) -> torch.Tensor:
        """[1, T]: the slot of each of the step's positions."""
        return step.once(("ring slots", self.slots), lambda: torch.remainder(step.positions, self.slots)[None, :])

    def write(self, lines: torch.Tensor, cache: torch.Tensor, step: StepPositions) -> None:
        slots = self.ring_slots(step)
        if self.in_place:
            lines_index = step.once(("ring index", self.slots, lines.shape[0]),
                                    lambda: slots.expand(lines.shape[0], lines.shape[1]).contiguous())  # [B·KV, T]
            torch.ops.llama.update_cache_with_indices(lines, cache, 0, lines_index)
        else:
            cache.index_copy_(1, slots[0], lines)


class SharedKV(LayerKV):
    """A KV-shared layer: attends what its source layer (`kv_source`, an earlier layer of the same kind)
    fetched in this step, under that kind's mask."""

    def __init__(self, spec: LayerSpec):
        self.index, self.source_index = spec.index, spec.kv_source

    def update_and_fetch(self, k: None, v: None, step: StepPositions):
        return step.fetched[self.source_index]


def make_cache(cfg: TextConfig, max_context: int | None = None, *, owner: nn.Module | None = None,
               max_step: int | None = None, batch_size: int = 1, dtype: torch.dtype = torch.float32,
               in_place: bool = False) -> list[LayerKV]:
    """The cache of every layer, in layer order — the one place where a layer's kind of cache is chosen.

    Without `max_context`: the whole-sequence forward's (nothing kept). Otherwise full layers keep
    `max_context` slots and sliding layers a ring of the window plus `max_step` slots (the most tokens one
    step may bring; default `max_context`, which makes the ring `max_context` slots that never wrap), as
    buffers `k_cache_<layer>` / `v_cache_<layer>` of `owner`, the module whose forward uses them (so that
    torch.export sees them as its state). `in_place`: written with ExecuTorch's cache ops (batch 1), as the
    exported program is."""
    if max_context is not None and owner is None:
        raise ValueError("make_cache: stored caches need an owner module to hold their buffers")
    if in_place:
        if batch_size != 1:
            raise ValueError(f"batch_size: ExecuTorch's in-place cache ops take batch 1, found {batch_size}")
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers the llama:: ops)
    caches: list[LayerKV] = []
    for spec in cfg.layers:
        if not spec.owns_kv:
            caches.append(SharedKV(spec))
        elif max_context is None:
            caches.append(SequenceKV(spec, cfg.sliding_window))
        elif spec.is_sliding:
            ring = ring_slots(cfg.sliding_window, max_context, max_step or max_context)
            caches.append(RingKV(owner, spec, ring, min(cfg.sliding_window, max_context), batch_size, dtype, in_place))
        else:
            caches.append(FullKV(owner, spec, max_context, batch_size, dtype, in_place))
    return caches
