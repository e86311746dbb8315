"""The Gemma 4 E2B/E4B text decoder in plain PyTorch, written to be exported.

Module attribute names mirror the Hugging Face checkpoint (`model.layers.3.self_attn.q_proj`), so keys
load as they are. The Per-Layer Embedding (PLE) is split in two halves:

  lookup  `tok = E_ple[ids] * sqrt(P)`            the only use of the big table; it lives in flash
  mix     `(RMSNorm(x0 @ W.T / sqrt(H)) + tok) / sqrt(2)`   RAM compute, done inside the program

Every forward accepts the looked-up rows (`ple_rows`, [B, T, L, P]) instead of the table, so the table
can be dropped from the module (`drop_ple_table`). Every forward is `forward_over(caches, ...)` over one
cache per layer (`kv_cache.make_cache`, the one place a layer's kind of cache is chosen):
`forward(input_ids)`, the whole-sequence reference, over caches that keep nothing; `forward_cached(input_ids,
input_pos, ple_rows)`, the fixed-shape, index-based step, over the caches `setup_cache` holds as buffers; and
the exported program's step (`step.InPlaceKVStep`) over caches written in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.contract.config import LayerSpec, TextConfig

from .kv_cache import LayerKV, StepPositions, make_cache


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 that multiplies by `w` (not `1 + w`); `with_scale=False` for v_norm."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True):
        super().__init__()
        self.eps, self.dim = eps, dim
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.pow(y.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            y = y * self.weight.float()
        return y.type_as(x)


def rope_inv_freq(spec: LayerSpec) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2]; 'proportional' rotates only the first share, the rest get 0."""
    dim = spec.head_dim
    if spec.rope_type == "default":
        return 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    if spec.rope_type != "proportional":
        raise ValueError(f"layer {spec.index}: rope_type {spec.rope_type!r} is not supported")
    angles = int(spec.partial_rotary_factor * dim // 2)
    rotated = 1.0 / (spec.rope_theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.float) / dim))
    inv = torch.cat([rotated, torch.zeros(dim // 2 - angles)])
    return inv / spec.rope_factor


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on [B, T, heads, head_dim] with cos/sin [1, T, 1, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention scaled by 1.0 with an fp32 softmax: q [B,T,H,D], k/v [B,KV,S,D], additive mask [G·T,S];
    returns [B,T,H,D].

    Query heads are grouped under their KV head (head h uses KV head h // G, G = H/KV, as transformers'
    repeat_kv does) so K and V are never copied: one matmul per KV head covers its G query heads.
    """
    b, t, heads, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    qg = q.transpose(1, 2).reshape(b * kv, (heads // kv) * t, d)  # [B·KV, G·T, D]
    scores = torch.bmm(qg, k.reshape(b * kv, s, d).transpose(1, 2)) + mask  # [B·KV, G·T, S]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.bmm(probs, v.reshape(b * kv, s, d)).view(b, heads, t, d).transpose(1, 2)


def additive_mask(allowed: torch.Tensor, groups: int) -> torch.Tensor:
    """Bool [T, S] (True = may attend) -> float [G·T, S] of 0 / fp32-min in grouped-query row order;
    built once per forward and attention type, not in every layer."""
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min).repeat(groups, 1)


class Attention(nn.Module):
    """q/k/v projections with q/k/v norms and RoPE; KV-shared layers own only q and o."""

    def __init__(self, cfg: TextConfig, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        h, hd, heads, kvh = cfg.hidden_size, spec.head_dim, cfg.num_attention_heads, spec.num_key_value_heads
        self.q_proj = nn.Linear(h, heads * hd, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        if spec.owns_kv:
            self.k_proj = nn.Linear(h, kvh * hd, bias=cfg.attention_bias)
            self.v_proj = None if spec.k_eq_v else nn.Linear(h, kvh * hd, bias=cfg.attention_bias)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.v_norm = RMSNorm(hd, cfg.rms_norm_eps, with_scale=False)
        self.o_proj = nn.Linear(heads * hd, h, bias=cfg.attention_bias)

    def query(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, -1, self.spec.head_dim))
        return rotate(q, cos, sin)  # [B, T, H, D]

    def key_value(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, t, _ = x.shape
        k_raw = self.k_proj(x).view(b, t, -1, self.spec.head_dim)
        v = k_raw if self.v_proj is None else self.v_proj(x).view(b, t, -1, self.spec.head_dim)
        return rotate(self.k_norm(k_raw), cos, sin), self.v_norm(v)  # [B, T, KV, D] each

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        b, t = attn.shape[:2]
        return self.o_proj(attn.reshape(b, t, -1))  # attn [B, T, H, D]


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.act_fn = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Sandwich-normed attention and MLP, the PLE residual, then `h * layer_scalar`."""

    def __init__(self, cfg: TextConfig, spec: LayerSpec):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.spec = spec
        self.self_attn = Attention(cfg, spec)
        self.mlp = MLP(h, spec.intermediate_size)
        self.input_layernorm = RMSNorm(h, eps)
        self.post_attention_layernorm = RMSNorm(h, eps)
        self.pre_feedforward_layernorm = RMSNorm(h, eps)
        self.post_feedforward_layernorm = RMSNorm(h, eps)
        self.register_buffer("layer_scalar", torch.ones(1))
        if cfg.has_ple:
            p = cfg.hidden_size_per_layer_input
            self.per_layer_input_gate = nn.Linear(h, p, bias=False)
            self.per_layer_projection = nn.Linear(p, h, bias=False)
            self.post_per_layer_input_norm = RMSNorm(h, eps)
            self.act_fn = nn.GELU(approximate="tanh")

    def forward(self, h, cos, sin, cache: nn.Module, step: StepPositions, mask: torch.Tensor,
                ple: torch.Tensor | None, rows: str = "all") -> torch.Tensor:
        """Attends over what this layer's `cache` returns for the step's new keys (they are None in a
        KV-shared layer) under the additive `mask` [G·T', S] of its queries.

        `rows`: "all" positions go through; "narrow" computes K/V (what the cache keeps) for every position
        and the rest — query, MLP, PLE — for the last one only (T' = 1); "last": h and its inputs are the
        last position's already.
        """
        x = self.input_layernorm(h)
        k_new, v_new = self.self_attn.key_value(x, cos, sin) if self.spec.owns_kv else (None, None)
        if rows == "narrow":
            h, x, cos, sin = h[:, -1:], x[:, -1:], cos[:, -1:], sin[:, -1:]
            ple = None if ple is None else ple[:, -1:]
        q = self.self_attn.query(x, cos, sin)
        attn = attend(q, *cache.update_and_fetch(k_new, v_new, step), mask)
        h = h + self.post_attention_layernorm(self.self_attn.output(attn))
        h = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        if ple is not None:
            gated = self.act_fn(self.per_layer_input_gate(h)) * ple
            h = h + self.post_per_layer_input_norm(self.per_layer_projection(gated))
        return (h * self.layer_scalar).to(h.dtype)  # computed as the reference does, in the wider type


class TextModel(nn.Module):
    """Embeddings, the PLE halves, the decoder stack and the final norm (checkpoint prefix `model.`)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.has_ple:
            self.embed_tokens_per_layer = nn.Embedding(cfg.vocab_size_per_layer_input, cfg.ple_width)
            self.per_layer_model_projection = nn.Linear(cfg.hidden_size, cfg.ple_width, bias=False)
            self.per_layer_projection_norm = RMSNorm(cfg.hidden_size_per_layer_input, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(DecoderLayer(cfg, spec) for spec in cfg.layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # Placeholder ids whose embedding a tower's soft token replaces (the checkpoint's image_token_id, ...);
        # set by the loader from a multimodal config.json, empty for a text-only model.
        self.soft_token_ids: tuple[int, ...] = ()
        for layer_type in sorted(set(cfg.layer_types)):
            spec = next(s for s in cfg.layers if s.layer_type == layer_type)
            self.register_buffer(f"{layer_type}_inv_freq", rope_inv_freq(spec), persistent=False)

    # ---- the two PLE halves
    def lookup_ple(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The flash half: E_ple[ids] * sqrt(P) -> [B, T, L, P]. Needs the table."""
        table = getattr(self, "embed_tokens_per_layer", None)
        if table is None:
            raise RuntimeError("the PLE table was dropped from this model: pass the looked-up rows as ple_rows")
        scale = torch.tensor(self.cfg.ple_scale, dtype=table.weight.dtype)
        rows = table(input_ids) * scale
        return rows.view(*input_ids.shape, self.cfg.num_hidden_layers, self.cfg.hidden_size_per_layer_input)

    def mix_ple(self, x0: torch.Tensor, ple_rows: torch.Tensor) -> torch.Tensor:
        """The RAM half: combine the looked-up rows with a projection of the main embedding."""
        cfg = self.cfg
        ctx = self.per_layer_model_projection(x0) * cfg.hidden_size**-0.5
        ctx = self.per_layer_projection_norm(ctx.view(*x0.shape[:-1], cfg.num_hidden_layers, -1))
        return (ctx + ple_rows.to(ctx.dtype)) * 2.0**-0.5  # [B, T, L, P]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        w = self.embed_tokens.weight
        return self.embed_tokens(input_ids) * torch.tensor(self.cfg.embed_scale, dtype=w.dtype)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin [1, T, 1, head_dim] per attention type for absolute positions [T]."""
        out = {}
        for layer_type in sorted(set(self.cfg.layer_types)):
            freqs = positions.float()[None, :, None, None] * getattr(self, f"{layer_type}_inv_freq")
            emb = torch.cat([freqs, freqs], dim=-1)
            out[layer_type] = (emb.cos().to(dtype), emb.sin().to(dtype))
        return out

    def narrow_layer(self) -> int:
        """The last layer that owns K/V. Past it nothing is cached: when only the last position's logits are
        wanted (a prefill), every later layer — in E2B the 20 KV-shared ones with their double-wide MLPs,
        most of a prefill's matrix work — runs for the last position alone."""
        return self.cfg.last_kv_owner

    def soft_positions(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """[B, T] bool: the positions holding a soft-token placeholder (`soft_token_ids`), None if none are set."""
        hit = None
        for t in self.soft_token_ids:
            hit = input_ids == t if hit is None else hit | (input_ids == t)
        return hit

    def run_layers(self, input_ids, step: StepPositions, ple_rows, caches: list[LayerKV], masks: dict,
                   last_masks: dict | None = None, last_only: bool = False,
                   soft_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, H], or [B, 1, H] of the last position with `last_only` (the
        caches are written for every position either way); `masks` / `last_masks` per attention type for
        every query / the last one alone. `soft_embeds` [B, T, H]: a tower's soft tokens, taken at the
        positions whose id is one of `soft_token_ids` (other rows are not read)."""
        h = self.embed(input_ids)
        soft = self.soft_positions(input_ids) if soft_embeds is not None else None
        if soft is not None:  # transformers' splice: the soft token in place of the (scaled) embedding
            h = torch.where(soft[..., None], soft_embeds.to(h.dtype), h)
        ple = None
        if self.cfg.has_ple:
            if ple_rows is None:  # a placeholder's token half is the pad row's (what the runtime fetches)
                ids = input_ids if soft is None else torch.where(soft, self.cfg.pad_token_id or 0, input_ids)
                ple_rows = self.lookup_ple(ids)
            ple = self.mix_ple(h, ple_rows)  # the context half from the spliced x0: the soft token's own
        rope = self.rope(step.positions, h.dtype)
        narrow_at = self.narrow_layer() if last_only else -1
        rows = "all"
        for i, layer in enumerate(self.layers):
            if i == narrow_at:
                rows = "narrow"
            elif rows == "narrow":  # the layers after the narrowing one see the last position only
                rows = "last"
                rope = {kind: (cos[:, -1:], sin[:, -1:]) for kind, (cos, sin) in rope.items()}
                ple = None if ple is None else ple[:, -1:]
            cos, sin = rope[layer.spec.layer_type]
            layer_ple = None if ple is None else ple[:, :, i:i + 1, :].reshape(ple.shape[0], -1, ple.shape[-1])
            mask = (masks if rows == "all" else last_masks)[layer.spec.layer_type]
            h = layer(h, cos, sin, caches[i], step, mask, layer_ple, rows)
        return self.norm(h)


class Gemma4CausalLM(nn.Module):
    """The text decoder with its (usually tied) head and final logit softcap; owns its KV caches."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.model = TextModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.caches: list[LayerKV] | None = None  # setup_cache's, for forward_cached
        self.max_context = self.max_step = 0

    # ---- head
    def head(self, h: torch.Tensor) -> torch.Tensor:
        w = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        logits = F.linear(h, w)
        cap = self.cfg.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def drop_ple_table(self) -> None:
        """Remove the PLE table: from now on every forward needs `ple_rows`."""
        if hasattr(self.model, "embed_tokens_per_layer"):
            del self.model.embed_tokens_per_layer

    def masks(self, allowed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Additive masks per attention type, tiled for that type's query-heads-per-KV-head."""
        out = {}
        for spec in self.cfg.layers:
            if spec.layer_type not in out:
                groups = self.cfg.num_attention_heads // spec.num_key_value_heads
                out[spec.layer_type] = additive_mask(allowed[spec.layer_type], groups)
        return out

    def step_masks(self, allowed: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """`masks(allowed)` for every query of a step, and for its last query alone (the layers past
        `TextModel.narrow_layer` in a step that returns only the last logits)."""
        return self.masks(allowed), self.masks({kind: a[-1:] for kind, a in allowed.items()})

    # ---- the forwards, all over one cache per layer
    def forward_over(self, caches: list[LayerKV], input_ids: torch.Tensor, step: StepPositions,
                     ple_rows: torch.Tensor | None = None, all_logits: bool = False,
                     soft_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens [B, T] at `step`'s positions through `caches` (one per layer, from `make_cache`): logits
        [B, T, V] with `all_logits`, else [B, V] of the last position, the layers past
        `TextModel.narrow_layer` running that position alone."""
        # Which keys each query sees, per attention type, asked of the type's first layer (an owner of K/V:
        # a KV-shared layer comes after its source), once per step.
        allowed = {}
        for spec, cache in zip(self.cfg.layers, caches):
            if spec.owns_kv and spec.layer_type not in allowed:
                allowed[spec.layer_type] = cache.allowed(step)
        masks = (self.masks(allowed), None) if all_logits else self.step_masks(allowed)
        for cache in caches:
            cache.prepare(step)
        h = self.model.run_layers(input_ids, step, ple_rows, caches, *masks, last_only=not all_logits,
                                  soft_embeds=soft_embeds)
        return self.head(h if all_logits else h[:, -1, :])

    def forward(self, input_ids: torch.Tensor, ple_rows: torch.Tensor | None = None,
                soft_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] for a whole sequence starting at position 0; no cache kept."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.forward_over(make_cache(self.cfg), input_ids, StepPositions(positions), ple_rows,
                                 all_logits=True, soft_embeds=soft_embeds)

    def setup_cache(self, max_context: int, batch_size: int = 1, dtype: torch.dtype | None = None,
                    max_step: int | None = None) -> None:
        """KV caches as buffers (`kv_cache.make_cache`): full layers `max_context` slots, sliding layers a
        ring of the window plus `max_step` slots (default `max_context`: any step length fits)."""
        self.drop_cache()
        self.caches = make_cache(self.cfg, max_context, owner=self, max_step=max_step, batch_size=batch_size,
                                 dtype=dtype or self.model.embed_tokens.weight.dtype)
        self.max_context, self.max_step = max_context, max_step or max_context

    def reset_cache(self) -> None:
        for cache in self.caches:
            cache.reset()

    def drop_cache(self) -> None:
        """Remove the `setup_cache` caches (their buffers included)."""
        for cache in self.caches or ():
            cache.release()
        self.caches = None

    def forward_cached(self, input_ids: torch.Tensor, input_pos: torch.Tensor, ple_rows: torch.Tensor | None = None,
                       all_logits: bool = False, soft_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """One step over the `setup_cache` caches: tokens [B, T] at absolute positions [T] (consecutive).

        Returns logits [B, V] of the last position, or [B, T, V] with `all_logits`.
        """
        if self.caches is None:
            raise RuntimeError("call setup_cache(max_context) before forward_cached")
        if input_ids.shape[1] > self.max_step:
            raise ValueError(f"input_ids: {input_ids.shape[1]} tokens in one step, but setup_cache(max_step="
                             f"{self.max_step}) sized the sliding layers' rings for at most {self.max_step}")
        return self.forward_over(self.caches, input_ids, StepPositions(input_pos), ple_rows, all_logits, soft_embeds)


def build_model(cfg: TextConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """An uninitialised model (use the meta device to allocate nothing)."""
    with torch.device(device):
        model = Gemma4CausalLM(cfg)
    if str(device) != "meta":
        model.to(dtype)
    return model.eval()


def count_params(cfg: TextConfig) -> dict[str, int]:
    """Parameter counts by part, from the meta device (nothing allocated)."""
    model = build_model(cfg, "meta")
    parts = {"ple_table": 0, "embedding": 0, "body": 0}
    for name, p in model.named_parameters():
        if "embed_tokens_per_layer" in name:
            parts["ple_table"] += p.numel()
        elif "embed_tokens" in name or name.startswith("lm_head"):
            parts["embedding"] += p.numel()
        else:
            parts["body"] += p.numel()
    parts["total"] = sum(parts.values())
    return parts


