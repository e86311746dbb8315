"""The Gemma 4 E2B/E4B vision tower and `embed_vision` in plain PyTorch, loaded from the multimodal checkpoint.

Images arrive as transformers' processor gives them: `pixel_values` [B, N, 3·p²] (patches in row-major order,
HWC inside a patch, in [0, 1]) and `pixel_position_ids` [B, N, 2] as (x = column, y = row), padding patches at
(-1, -1), N = 9 × the soft-token budget. The tower is

  patch embedder   input_proj(2·(x − 0.5)) + table[0][x] + table[1][y]     (the position part 0 on padding)
  L encoder layers sandwich-normed bidirectional attention (2-D axial RoPE, q/k/v norms, keys masked on padding)
                   and a GeGLU MLP; every linear clamps its input and output to bounds stored in the checkpoint
  pooler           the mean of each 3×3 block of patches (padding zeroed), × sqrt(hidden) in fp32
  embed_vision     weight-free RMSNorm, then a projection to the decoder's hidden size

as in transformers 5.23.0 (`Gemma4VisionModel`, `Gemma4MultimodalEmbedder`). Module attribute names mirror the
checkpoint (`model.vision_tower.encoder.layers.3.self_attn.q_proj.linear.weight` is `vision_tower.encoder.layers.
3.self_attn.q_proj.linear.weight` here), so keys load as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.contract.config import ConfigError, TowerConfig, is_int

from .checkpoint import load_tower_weights, open_checkpoint
from .model import RMSNorm, rotate

VISION_MODEL_TYPE = "gemma4_vision"
VISION_PREFIXES = ("model.vision_tower.", "model.embed_vision.")
# Written by Google's convert script (the JAX encoder's output scale); transformers 5.23.0 has no module for it.
TOLERATED_KEYS = ("model.vision_tower.pooler.scale",)
CLIP_BOUNDS = ("input_min", "input_max", "output_min", "output_max")


# ---------------------------------------------------------------------------------------------------- config
# Keys a checkpoint's vision_config must spell out: each fixes a tensor's shape or which tensors exist.
REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "patch_size", "pooling_kernel_size", "position_embedding_size",
                 "use_clipped_linears", "standardize")
# Integer fields and the least value each may take (pooling 1 is refused: transformers' pooler then keeps the
# padding rows and drops the real ones).
_INT_FIELDS = {"hidden_size": 1, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1,
               "num_key_value_heads": 1, "head_dim": 4, "patch_size": 1, "pooling_kernel_size": 2,
               "position_embedding_size": 1, "text_hidden_size": 1}


@dataclass
class VisionConfig(TowerConfig):
    """Gemma 4 vision tower; field names and defaults are `Gemma4VisionConfig`'s, plus the decoder's width."""

    KEY: ClassVar[str] = "vision_config"
    MODEL_TYPE: ClassVar[str] = VISION_MODEL_TYPE
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = REQUIRED_KEYS
    TOWER: ClassVar[str] = "vision"
    ABSENT: ClassVar[str] = "a text-only checkpoint"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 16
    num_attention_heads: int = 12
    num_key_value_heads: int = 12
    head_dim: int = 64
    hidden_activation: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    rope_parameters: dict | None = None
    pooling_kernel_size: int = 3
    patch_size: int = 16
    position_embedding_size: int = 10 * 1024
    use_clipped_linears: bool = False
    standardize: bool = False
    text_hidden_size: int = 1536  # text_config.hidden_size: embed_vision's output width (not a vision_config key)
    rope_theta: float = field(default=100.0, init=False)

    def __post_init__(self) -> None:
        for name, least in _INT_FIELDS.items():
            v = getattr(self, name)
            if not is_int(v) or v < least:
                raise ConfigError(f"{name}: expected an integer ≥ {least}, found {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_key_value_heads: expected a divisor of num_attention_heads "
                              f"({self.num_attention_heads}), found {self.num_key_value_heads}")
        if self.head_dim % 4:  # two axes, each rotated as rotate-half pairs
            raise ConfigError(f"head_dim: expected a multiple of 4 (2-D axial RoPE), found {self.head_dim}")
        for name in ("use_clipped_linears", "standardize"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, found {getattr(self, name)!r}")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ConfigError(f"hidden_activation: expected 'gelu_pytorch_tanh', found {self.hidden_activation!r}")
        eps = self.rms_norm_eps
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise ConfigError(f"rms_norm_eps: expected a number in (0, 1), found {eps!r}")
        rope = {"rope_type": "axial", "rope_theta": 100.0} if self.rope_parameters is None else self.rope_parameters
        if not isinstance(rope, dict):
            raise ConfigError(f"rope_parameters: expected null or an object, found {rope!r}")
        if rope.get("rope_type") != "axial":
            raise ConfigError(f"rope_parameters.rope_type: expected 'axial', found {rope.get('rope_type')!r}")
        theta = rope.get("rope_theta")
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
            raise ConfigError(f"rope_parameters.rope_theta: expected a number > 0, found {theta!r}")
        self.rope_theta = float(theta)

    @property
    def patch_dim(self) -> int:
        """Values in one patch: 3 channels × patch_size²."""
        return 3 * self.patch_size**2

    def to_dict(self) -> dict[str, Any]:
        """The `vision_config` object transformers reads (`Gemma4VisionConfig(**d)`)."""
        d = self.fields_dict()
        d["rope_parameters"] = {"rope_type": "axial", "rope_theta": self.rope_theta}
        return {**d, "model_type": VISION_MODEL_TYPE}


# ---------------------------------------------------------------------------------------------------- modules
class ClippableLinear(nn.Module):
    """clamp(x, input bounds) -> Linear without bias -> clamp(output bounds); the bounds are checkpoint buffers
    (scalars), absent when `use_clipped_linears` is off."""

    def __init__(self, cfg: VisionConfig, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.clipped = cfg.use_clipped_linears
        if self.clipped:
            for name, bound in zip(CLIP_BOUNDS, (-math.inf, math.inf, -math.inf, math.inf)):
                self.register_buffer(name, torch.tensor(bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.clipped:
            return self.linear(x)
        # Bounds in x's dtype: a checkpoint may store them wider than the weights.
        x = torch.clamp(x, self.input_min.to(x.dtype), self.input_max.to(x.dtype))
        y = self.linear(x)
        return torch.clamp(y, self.output_min.to(y.dtype), self.output_max.to(y.dtype))


class PatchEmbedder(nn.Module):
    """input_proj(2·(x − 0.5)) plus the learned 2-D position table's x row and y row (0 on padding)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.input_proj = nn.Linear(cfg.patch_dim, cfg.hidden_size, bias=False)
        self.position_embedding_table = nn.Parameter(torch.ones(2, cfg.position_embedding_size, cfg.hidden_size))

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = (2 * (pixel_values - 0.5)).to(self.input_proj.weight.dtype)  # the processor does not normalise
        pos = positions.clamp(min=0)  # padding's -1 -> a valid row, zeroed below
        table = self.position_embedding_table
        pos_emb = F.embedding(pos[..., 0], table[0]) + F.embedding(pos[..., 1], table[1])
        return self.input_proj(x) + torch.where(padding[..., None], 0.0, pos_emb)  # [B, N, D]


def axial_rope(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin [B, N, 1, head_dim] laid out [fx, fx, fy, fy]: the first half of each head rotates by the
    column x, the second half by the row y, each half as rotate-half pairs (j, j + head_dim/4).
    Padding's (-1, -1) is used as it is (its keys are masked and its rows dropped), as the reference does."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))  # [head_dim / 4]
    freqs = positions[..., None].float() * inv_freq  # [B, N, 2, head_dim / 4]
    fx, fy = freqs[:, :, 0], freqs[:, :, 1]
    emb = torch.cat([fx, fx, fy, fy], dim=-1)[:, :, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_axial(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE applied to each half of the head dim on its own ([B, N, heads, head_dim])."""
    h = x.shape[-1] // 2
    return torch.cat([rotate(x[..., :h], cos[..., :h], sin[..., :h]),
                      rotate(x[..., h:], cos[..., h:], sin[..., h:])], dim=-1)


def attend_in_query_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor,
                           block_q: int) -> torch.Tensor:
    """Attention scaled by 1.0 of q [B, heads, N, D] against all of k/v [B, heads, N, D], keys masked where
    key_valid [B, N] is False, `block_q` query rows at a time: the largest score matrix is [B, heads, block_q, N]
    instead of [B, heads, N, N] (12·N²·4 bytes fp32 per layer: 4.9 GB at 1120 soft tokens). Each query row's
    softmax reads all keys, as sdpa's does.

    Written out (matmul, additive mask, softmax, matmul) rather than as sdpa: sdpa's decomposition guards
    fully-masked rows with five ops over every score matrix that XNNPACK does not take (`eq`, `logical_not`,
    `any`, `full_like`, `where`). An image always has a real patch, so no row is fully masked; the mask is
    fp32-min, not -inf, so a row that were would average all keys instead of becoming NaN."""
    b, heads, n, d = q.shape
    bias = torch.where(key_valid, 0.0, torch.finfo(q.dtype).min).to(q.dtype)[:, None, None, :]  # [B, 1, 1, N]
    # bmm over [B·heads, rows, D]: a 4-D matmul exports as expand + bmm, and the expands stay outside XNNPACK
    # as copies of each operand, the score matrix included.
    q, kt, v = q.reshape(b * heads, n, d), k.reshape(b * heads, n, d).transpose(1, 2), v.reshape(b * heads, n, d)
    blocks: list[torch.Tensor] = []
    for s in range(0, n, block_q):
        rows = min(block_q, n - s)
        qb = q[:, s:s + rows]
        if blocks:
            # Independent blocks let the fusion into an XNNPACK delegate order the graph breadth first (every
            # block's bmm, then every softmax), so XNNPACK keeps all blocks' scores alive at once: the whole
            # heads·N² matrix again. Adding exactly zero read from the previous block's output makes each
            # block wait for the one before, and only one block's scores are ever alive.
            qb = qb + blocks[-1][:, :1, :1] * 0.0
        scores = torch.bmm(qb, kt).view(b, heads, rows, n) + bias
        blocks.append(torch.bmm(torch.softmax(scores, dim=-1).view(b * heads, rows, n), v))
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
    return out.view(b, heads, n, d)


class VisionAttention(nn.Module):
    """Bidirectional attention scaled by 1.0 with q/k norms (weighted), v norm (weight-free) and 2-D RoPE.
    `block_q` (None by default: sdpa over all queries at once) computes the queries in blocks of that many rows
    (`attend_in_query_blocks`)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.head_dim, self.heads, self.kv_heads = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = ClippableLinear(cfg, d, self.heads * hd)
        self.k_proj = ClippableLinear(cfg, d, self.kv_heads * hd)
        self.v_proj = ClippableLinear(cfg, d, self.kv_heads * hd)
        self.o_proj = ClippableLinear(cfg, self.heads * hd, d)
        self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)
        self.v_norm = RMSNorm(hd, cfg.rms_norm_eps, with_scale=False)
        self.block_q: int | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_valid: torch.Tensor):
        b, n, _ = x.shape
        q = rotate_axial(self.q_norm(self.q_proj(x).view(b, n, -1, self.head_dim)), cos, sin)
        k = rotate_axial(self.k_norm(self.k_proj(x).view(b, n, -1, self.head_dim)), cos, sin)
        v = self.v_norm(self.v_proj(x).view(b, n, -1, self.head_dim))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, N, head_dim]
        if self.kv_heads != self.heads:  # query head h reads KV head h // G, as transformers' repeat_kv
            k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
        if self.block_q is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :], scale=1.0)
        else:
            out = attend_in_query_blocks(q, k, v, key_valid, self.block_q)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class VisionMLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)), clippable linears."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.gate_proj = ClippableLinear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = ClippableLinear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = ClippableLinear(cfg, cfg.intermediate_size, cfg.hidden_size)
        self.act_fn = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class EncoderLayer(nn.Module):
    """h += post_attn_norm(attn(input_norm(h))); h += post_ffw_norm(mlp(pre_ffw_norm(h))). No layer scalar."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm = RMSNorm(d, eps)

    def forward(self, h, cos, sin, key_valid):
        h = h + self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, key_valid))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


def pool(h: torch.Tensor, positions: torch.Tensor, padding: torch.Tensor, length: int, k: int):
    """Mean of each k×k block of patches -> (pooled [B, length, D] in h's dtype, valid [B, length]).

    Block (cx, cy) = (x // k, y // k) is cell cx + (max_x + 1) // k · cy (row-major). Padding rows are zeroed
    and counted in cell 0, so they add nothing; a cell no patch falls in is not valid. The cell weights are
    built with `==` against arange (the same values as transformers' one_hot, which fixes an exported shape)."""
    h = h.masked_fill(padding[..., None], 0.0)
    pos = positions.clamp(min=0)
    cols = pos[..., 0].max(dim=-1, keepdim=True).values + 1  # [B, 1]
    cell = pos[..., 0] // k + (cols // k) * (pos[..., 1] // k)  # [B, N]
    weights = (cell[..., None] == torch.arange(length, device=cell.device)).float() / (k * k)  # [B, N, length]
    pooled = weights.transpose(1, 2) @ h.float()
    return pooled.to(h.dtype), (weights != 0).any(dim=1)


class VisionTower(nn.Module):
    """Patches -> pooled soft tokens [B, N / k², hidden] in fp32 (×sqrt(hidden), standardized if configured);
    the checkpoint's `model.vision_tower`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedder = PatchEmbedder(cfg)
        self.encoder = VisionEncoder(cfg)
        if cfg.standardize:
            self.register_buffer("std_bias", torch.zeros(cfg.hidden_size))
            self.register_buffer("std_scale", torch.ones(cfg.hidden_size))

    def forward(self, pixel_values: torch.Tensor, positions: torch.Tensor):
        cfg = self.cfg
        padding = (positions == -1).all(dim=-1)  # [B, N]
        h = self.patch_embedder(pixel_values, positions, padding)
        cos, sin = axial_rope(positions, cfg.head_dim, cfg.rope_theta, h.dtype)
        for layer in self.encoder.layers:
            h = layer(h, cos, sin, ~padding)
        k = cfg.pooling_kernel_size
        pooled, valid = pool(h, positions, padding, h.shape[1] // (k * k), k)
        # The sqrt(hidden) scale can pass fp16's range: it stays fp32 until standardized, then takes h's dtype.
        pooled = pooled.float() * cfg.hidden_size**0.5
        if cfg.standardize:
            pooled = (pooled - self.std_bias.float()) * self.std_scale.float()
        return pooled.to(h.dtype), valid


class MultimodalEmbedder(nn.Module):
    """embed_vision: weight-free RMSNorm, then a projection into the decoder's hidden size (no sqrt(H) scale)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embedding_pre_projection_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, with_scale=False)
        self.embedding_projection = nn.Linear(cfg.hidden_size, cfg.text_hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(self.embedding_pre_projection_norm(x))


class Gemma4Vision(nn.Module):
    """The tower and embed_vision: images -> the soft tokens the decoder takes in place of image placeholders."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = VisionTower(cfg)
        self.embed_vision = MultimodalEmbedder(cfg)

    def encode(self, pixel_values: torch.Tensor, pixel_position_ids: torch.Tensor):
        """Fixed-shape and data-independent (what an exported method runs): pixel_values [B, N, 3·p²],
        pixel_position_ids [B, N, 2] -> (soft tokens [B, N / k², text hidden], valid [B, N / k²]). An image's
        valid tokens come first, in row-major order of its 3×3 blocks."""
        self.check_shapes(pixel_values, pixel_position_ids)
        pooled, valid = self.vision_tower(pixel_values, pixel_position_ids)
        return self.embed_vision(pooled), valid

    def check_shapes(self, pixel_values: torch.Tensor, pixel_position_ids: torch.Tensor) -> None:
        cfg, k2 = self.cfg, self.cfg.pooling_kernel_size**2
        if pixel_values.dim() != 3 or pixel_values.shape[-1] != cfg.patch_dim:
            raise ValueError(f"pixel_values: expected [batch, patches, {cfg.patch_dim}] (3 × patch_size² = "
                             f"3 × {cfg.patch_size}²), found {list(pixel_values.shape)}")
        b, n = pixel_values.shape[:2]
        if tuple(pixel_position_ids.shape) != (b, n, 2):
            raise ValueError(f"pixel_position_ids: expected [{b}, {n}, 2] (x, y per patch), "
                             f"found {list(pixel_position_ids.shape)}")
        if n == 0 or n % k2:
            raise ValueError(f"pixel_values: expected a positive multiple of {k2} patches ({k2} × the soft-token "
                             f"budget), found {n}")

    def forward(self, pixel_values: torch.Tensor, pixel_position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """transformers' `get_image_features(...).pooler_output`: one [n_i, text hidden] tensor per image, n_i its
        real patches / k². Refuses, by image and patch, positions the processor would never give."""
        self.check_shapes(pixel_values, pixel_position_ids)
        self.check_positions(pixel_position_ids)
        soft, valid = self.encode(pixel_values, pixel_position_ids)
        real = (pixel_position_ids != -1).all(dim=-1).sum(dim=-1)  # [B]
        k2 = self.cfg.pooling_kernel_size**2
        for i, (n_real, n_valid) in enumerate(zip(real.tolist(), valid.sum(dim=-1).tolist())):
            if n_real != n_valid * k2:
                raise ValueError(f"pixel_position_ids[{i}]: {n_real} real patches do not tile into {n_valid} "
                                 f"full {self.cfg.pooling_kernel_size}×{self.cfg.pooling_kernel_size} blocks "
                                 "(the processor's grid is a multiple of the pooling kernel on each side)")
        return tuple(soft[i, :n] for i, n in enumerate(valid.sum(dim=-1).tolist()))

    def check_positions(self, positions: torch.Tensor) -> None:
        """Every patch is padding (-1, -1) or lies in the position table; every image has a real patch."""
        if positions.is_floating_point() or positions.is_complex():
            raise ValueError(f"pixel_position_ids: expected integer positions, found {positions.dtype}")
        padding = (positions == -1).all(dim=-1)
        size = self.cfg.position_embedding_size
        bad = ~padding & ((positions < 0) | (positions >= size)).any(dim=-1)
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"pixel_position_ids[{i}, {j}]: expected (x, y) in [0, {size}) (position_embedding_size)"
                             f" or (-1, -1) for padding, found {positions[i, j].tolist()}")
        empty = padding.all(dim=-1)
        if empty.any():
            raise ValueError(f"pixel_position_ids[{int(empty.nonzero()[0])}]: every patch is padding (an image "
                             "needs at least one real patch)")


# ---------------------------------------------------------------------------------------------------- loading
def load_vision_tower(checkpoint_dir: str | Path, dtype: torch.dtype | None = None) -> Gemma4Vision:
    """The vision tower and embed_vision of a multimodal checkpoint (the folder the decoder loads from).

    Reads only `model.vision_tower.*` and `model.embed_vision.*`, each tensor once, into a model built on the
    meta device: with `dtype=None` every tensor stays the safetensors mapping of its shard (nothing copied),
    otherwise each is cast on its own and the file pages it was read from are dropped. A missing key, an unknown
    one under those prefixes (`pooler.scale` aside), a wrong shape or a non-float dtype is an error naming the key."""
    ckpt = open_checkpoint(checkpoint_dir)
    cfg = VisionConfig.from_json(ckpt.path / "config.json")
    with torch.device("meta"):
        model = Gemma4Vision(cfg)
    load_tower_weights(ckpt, model, VISION_PREFIXES, TOLERATED_KEYS, "vision tower", "vision_config", dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- random weights
@dataclass(frozen=True)
class TensorSpec:
    """One tensor a random checkpoint writes: its shape and how its values are drawn (`random_vision_values`)."""

    shape: tuple[int, ...]
    init: str  # "normal": N(0, 0.02); "norm": 1 + N(0, 0.05); "clip_min" / "clip_max": ∓U(4, 8); "one"


def init_rule(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if leaf in ("input_min", "output_min"):
        return "clip_min"
    if leaf in ("input_max", "output_max"):
        return "clip_max"
    if leaf == "std_scale":
        return "one"
    return "norm" if "norm" in key else "normal"


def vision_tensor_specs(cfg: VisionConfig) -> dict[str, TensorSpec]:
    """Checkpoint key -> TensorSpec for every tensor of the tower and embed_vision, in the module's order; stored
    in the checkpoint's dtype, like the decoder's tensors."""
    with torch.device("meta"):
        model = Gemma4Vision(cfg)
    return {"model." + k: TensorSpec(tuple(t.shape), init_rule(k)) for k, t in model.state_dict().items()}


def random_vision_values(key: str, shape: tuple[int, ...], gen: torch.Generator, rows: slice) -> torch.Tensor:
    """Rows `rows` of tensor `key` (a 0-d tensor passes shape (1,)), fp32: random_checkpoint's `_fill` for the
    tower. Clip bounds are finite, so a random checkpoint keeps every clamp an exporter must honour, and wide
    enough to cut only outliers of N(0, 0.02) weights."""
    sub = (rows.stop - rows.start, *shape[1:])
    rule = init_rule(key)
    if rule in ("clip_min", "clip_max"):
        bound = 4.0 + 4.0 * torch.rand(sub, generator=gen)
        return -bound if rule == "clip_min" else bound
    if rule == "one":
        return torch.ones(sub)
    if rule == "norm":
        return 1.0 + 0.05 * torch.randn(sub, generator=gen)
    return 0.02 * torch.randn(sub, generator=gen)
