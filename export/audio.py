"""The Gemma 4 E2B/E4B audio tower (a USM Conformer) and `embed_audio` in plain PyTorch, with the log-mel front end,
loaded from the multimodal checkpoint.

A clip arrives as 16 kHz mono samples, cut into rows of 160 on `contract.audio.program_frames`' grid with a validity
mask (`program_inputs`):

  front end        160 zeros in front, frames of 320 every 160, periodic Hann, |rfft 512|, 128 HTK mel bins,
                   log(mel + 1e-3) — `Gemma4AudioFeatureExtractor`, the DFT written as two matrix products
  subsampling      twice: Conv2d 3×3 stride 2 -> LayerNorm over channels -> ReLU; then a linear to hidden
  L Conformer      FFN½, local causal self-attention (each position sees itself and the 11 before it, a
  layers           Transformer-XL relative term, softcap 50), a causal depthwise light conv, FFN½, RMSNorm; the
                   linears clamp their input and output to bounds stored in the checkpoint
  output_proj      a linear with bias, then embed_audio: weight-free RMSNorm and a projection to the decoder width

as in transformers 5.23.0 (`Gemma4AudioModel`, `Gemma4MultimodalEmbedder`), for one clip. transformers pads a batch
and masks its attention; the tower is causal (left-only attention, causal conv, one frame of lookahead per stride-2
conv, which the masks zero), so a clip's valid positions need only the subsampling's masks, and the positions past
them that the grid adds are dropped. Its attention is transformers' blocks of 12 queries against 24 keys with the
`unfold` (which XNNPACK does not take) written as a pad and a concatenation (`local_attention`); a first version's
windows of 12 keys per query did half the products but held 12 copies of K and V (bench/RESULTS.md, audio). Module
attribute names mirror the checkpoint
(`model.audio_tower.layers.3.self_attn.q_proj.linear.weight` is `audio_tower.layers.3.self_attn.q_proj.linear.
weight` here).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gemma_edge.contract import audio as contract
from gemma_edge.contract.config import ConfigError, TowerConfig, is_int

from .checkpoint import load_tower_weights, open_checkpoint
from .model import RMSNorm
from .vision import ClippableLinear, TensorSpec, init_rule

AUDIO_MODEL_TYPE = "gemma4_audio"
AUDIO_PREFIXES = ("model.audio_tower.", "model.embed_audio.")


# ---------------------------------------------------------------------------------------------------- config
# Keys a checkpoint's audio_config must spell out: each fixes a tensor's shape or which tensors exist.
REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "subsampling_conv_channels",
                 "conv_kernel_size", "use_clipped_linears", "output_proj_dims")
_INT_FIELDS = {"hidden_size": 1, "num_hidden_layers": 1, "num_attention_heads": 1, "conv_kernel_size": 1,
               "attention_chunk_size": 1, "attention_context_left": 2, "attention_context_right": 0,
               "output_proj_dims": 1, "text_hidden_size": 1}
_FLOAT_FIELDS = ("residual_weight", "attention_logit_cap", "attention_invalid_logits_value", "rms_norm_eps",
                 "gradient_clipping")


@dataclass
class AudioConfig(TowerConfig):
    """Gemma 4 audio tower; field names and defaults are `Gemma4AudioConfig`'s, plus the decoder's width."""

    KEY: ClassVar[str] = "audio_config"
    MODEL_TYPE: ClassVar[str] = AUDIO_MODEL_TYPE
    REQUIRED_KEYS: ClassVar[tuple[str, ...]] = REQUIRED_KEYS
    TOWER: ClassVar[str] = "audio"
    ABSENT: ClassVar[str] = "a checkpoint without an audio tower"

    hidden_size: int = 1024
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    hidden_act: str = "silu"
    subsampling_conv_channels: list[int] = dataclasses.field(default_factory=lambda: [128, 32])
    conv_kernel_size: int = 5
    residual_weight: float = 0.5
    attention_chunk_size: int = 12
    attention_context_left: int = 13
    attention_context_right: int = 0
    attention_logit_cap: float = 50.0
    attention_invalid_logits_value: float = -1.0e9
    use_clipped_linears: bool = True
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10
    output_proj_dims: int = 1536
    text_hidden_size: int = 1536  # text_config.hidden_size: embed_audio's output width (not an audio_config key)

    def __post_init__(self) -> None:
        for name, least in _INT_FIELDS.items():
            v = getattr(self, name)
            if not is_int(v) or v < least:
                raise ConfigError(f"{name}: expected an integer ≥ {least}, found {v!r}")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{name}: expected a finite number, found {v!r}")
        if not 0 < self.rms_norm_eps < 1:
            raise ConfigError(f"rms_norm_eps: expected a number in (0, 1), found {self.rms_norm_eps!r}")
        if self.gradient_clipping <= 0 or self.attention_logit_cap <= 0:
            raise ConfigError(f"gradient_clipping, attention_logit_cap: expected numbers > 0, found "
                              f"{self.gradient_clipping!r}, {self.attention_logit_cap!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"num_attention_heads: expected a divisor of hidden_size ({self.hidden_size}), "
                              f"found {self.num_attention_heads}")
        ch = self.subsampling_conv_channels
        if not isinstance(ch, (list, tuple)) or len(ch) != 2 or not all(is_int(c) and c >= 1 for c in ch):
            raise ConfigError(f"subsampling_conv_channels: expected two positive channel counts, found {ch!r}")
        # transformers sizes input_proj_linear from channels[0] // 4, not from the mel bins (its M:403): the
        # two agree only at channels[0] = 128 = mel bins, the value every Gemma 4 checkpoint has.
        if ch[0] != contract.N_MELS:
            raise ConfigError(f"subsampling_conv_channels[0]: expected {contract.N_MELS} (the mel bins; "
                              f"transformers ties the projection's width to it), found {ch[0]}")
        self.subsampling_conv_channels = list(ch)
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act: expected 'silu', found {self.hidden_act!r}")
        if not isinstance(self.use_clipped_linears, bool):
            raise ConfigError(f"use_clipped_linears: expected true or false, found {self.use_clipped_linears!r}")
        # The window form of the attention (`local_attention`) holds for a causal window whose relative table
        # covers it; Gemma 4's (12, 13, 0) does.
        if self.attention_context_right != 0:
            raise ConfigError(f"attention_context_right: expected 0 (a causal encoder), found "
                              f"{self.attention_context_right}")
        if self.attention_chunk_size != self.attention_context_left - 1:
            raise ConfigError(f"attention_chunk_size: expected attention_context_left - 1 = "
                              f"{self.attention_context_left - 1} (Gemma 4's 12 and 13), found "
                              f"{self.attention_chunk_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def window(self) -> int:
        """Keys each query attends to: itself and the window − 1 positions before it (transformers' sliding
        mask (context_left − 1, context_right))."""
        return self.attention_context_left - 1

    def to_dict(self) -> dict[str, Any]:
        """The `audio_config` object transformers reads (`Gemma4AudioConfig(**d)`)."""
        d = self.fields_dict()
        return {**d, "model_type": AUDIO_MODEL_TYPE}


# ---------------------------------------------------------------------------------------------------- front end
def dft_matrices() -> tuple[np.ndarray, np.ndarray]:
    """(first, second) [HOP, 2·(FFT/2 + 1)] float64: frame i's windowed rfft, real parts then imaginary parts, is
    samples[i−1] @ first + samples[i] @ second, samples cut in rows of HOP (a frame is two rows)."""
    from transformers.audio_utils import window_function

    window = window_function(contract.FRAME, "hann").astype(np.float64)  # periodic, the extractor's own
    n = np.arange(contract.FRAME)[:, None]
    k = np.arange(contract.FFT // 2 + 1)[None, :]
    angle = 2 * np.pi * n * k / contract.FFT
    full = np.concatenate([window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)], axis=1)
    return full[:contract.HOP], full[contract.HOP:]


def mel_matrix() -> np.ndarray:
    """[FFT/2 + 1, N_MELS] float64: transformers' HTK filter bank, 0–8000 Hz, unnormalised (the extractor's)."""
    import warnings

    from transformers.audio_utils import mel_filter_bank

    with warnings.catch_warnings():  # the top filter falls between bins, as the extractor says and ignores
        warnings.simplefilter("ignore")
        return mel_filter_bank(num_frequency_bins=contract.FFT // 2 + 1, num_mel_filters=contract.N_MELS,
                               min_frequency=0.0, max_frequency=contract.SAMPLE_RATE / 2,
                               sampling_rate=contract.SAMPLE_RATE, norm=None, mel_scale="htk")


class LogMel(nn.Module):
    """rows [B, F, HOP] (a clip's `contract.frame_samples` at 16 kHz, cut in rows of HOP) -> log-mel features
    [B, F, N_MELS] fp32; frame i is rows i − 1 and i (zeros before the first: the semicausal padding).

    The windowed DFT is two [HOP, 514] matrices applied to consecutive rows: linears, where an rfft would run on
    portable kernels. In fp32 it stays within ~2e-5 of transformers' numpy extractor (whose own rfft is single
    precision) on speech-like audio."""

    def __init__(self):
        super().__init__()
        first, second = dft_matrices()
        self.register_buffer("dft_first", torch.tensor(first, dtype=torch.float32), persistent=False)
        self.register_buffer("dft_second", torch.tensor(second, dtype=torch.float32), persistent=False)
        self.register_buffer("mel", torch.tensor(mel_matrix(), dtype=torch.float32), persistent=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.float()
        before = F.pad(rows, (0, 0, 1, 0))[:, :-1]  # the row before each, zeros before the first
        spec = before @ self.dft_first + rows @ self.dft_second  # [B, F, 2·bins]
        bins = contract.FFT // 2 + 1
        real, imag = spec[..., :bins], spec[..., bins:]
        magnitude = torch.sqrt(real * real + imag * imag)
        return torch.log(magnitude @ self.mel + contract.MEL_FLOOR)


# ---------------------------------------------------------------------------------------------------- modules
class SubsampleLayer(nn.Module):
    """Conv2d 3×3 stride 2 (no bias) -> LayerNorm over channels (no bias) -> ReLU, on [B, C, T, mels]."""

    def __init__(self, in_channels: int, out_channels: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_channels, eps=eps, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.to(self.conv.weight.dtype))
        return torch.relu(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class SubsampleConvProjection(nn.Module):
    """features [B, F, 128] and their validity [B, F] -> [B, T, hidden], T = (F − 1)//4 + 1: twice (zero the invalid
    rows, a stride-2 conv layer), the result laid out frequency-major, channel-minor, and a linear."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        c0, c1 = cfg.subsampling_conv_channels
        self.layer0 = SubsampleLayer(1, c0, cfg.rms_norm_eps)
        self.layer1 = SubsampleLayer(c0, c1, cfg.rms_norm_eps)
        self.input_proj_linear = nn.Linear((c0 // 4) * c1, cfg.hidden_size, bias=False)

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = self.layer0((features * valid[..., None])[:, None])  # [B, c0, T1, mels / 2]
        x = self.layer1(x * valid[:, None, ::2, None])  # [B, c1, T, mels / 4]
        b, c, t, m = x.shape
        # sizes spelled out: a -1 here makes torch.export guard on a divisibility it cannot prove
        return self.input_proj_linear(x.permute(0, 2, 3, 1).reshape(b, t, m * c))


def relative_positions(cfg: AudioConfig) -> torch.Tensor:
    """[window + 1, hidden] fp32: the sinusoidal [sin | cos] encoding of distances window … 0 (transformers'
    Gemma4AudioRelPositionalEncoding, whose rows run over distances context_size//2 … 0)."""
    half = cfg.hidden_size // 2
    increment = math.log(10000.0) / max(half - 1, 1)
    inv_timescales = torch.exp(torch.arange(half) * -increment)
    distances = torch.arange((cfg.attention_chunk_size + cfg.window) // 2, -1, -1)[:, None]
    scaled = distances * inv_timescales
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


def block_context(x: torch.Tensor, block: int) -> torch.Tensor:
    """x [B, m·block, heads, D] -> [B, m, 2·block, heads, D]: each block's keys (or values) after the block before
    it (zeros before the first) — transformers' `_extract_block_context` for a causal window of `block`, written as a
    pad and a concatenation (delegated ops) instead of `unfold`."""
    b, t, heads, d = x.shape
    blocks = x.view(b, t // block, block, heads, d)
    before = F.pad(blocks, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]
    return torch.cat([before, blocks], dim=2)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """[..., block, R] -> [..., block, 2·block]: element (i, s) is x[i, s − i] where 0 ≤ s − i < R, else 0 — the
    Transformer-XL shift as transformers' `_rel_shift` does it (pad, flatten, cut, view; static sizes)."""
    *lead, block, r = x.shape
    context = 2 * block
    x = F.pad(x, (0, context + 1 - r)).reshape(*lead, block * (context + 1))
    return x[..., :block * context].reshape(*lead, block, context)


def window_mask(m, w: int, invalid: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocked attention's mask for m blocks of w queries against 2w key slots, as two [m, w, 2w] fp32 factors
    (keep, fill): scores · keep + fill is the score where slot s of query i is in its window (slots i + 1 … i + w,
    not before the start in the first block) and exactly `invalid` elsewhere. Built once per clip and shared by every
    layer; a multiply and an add are delegated ops, where masked_fill would run on portable kernels in each layer."""
    i, s = torch.arange(w)[:, None], torch.arange(2 * w)[None, :]
    outside = (s <= i) | (s > i + w)  # [W, 2W]: not in the query's window
    first = (torch.arange(m) == 0)[:, None, None] & (s < w)  # [m, 1, 2W]: the first block's zero keys
    masked = (outside | first).float()
    return 1.0 - masked, masked * invalid


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_k: torch.Tensor, cap: float,
                    invalid: float, mask: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Causal local attention of q, k, v [B, m·W, heads, D] (q and k already scaled; W = rel_k's rows − 1, the
    window and the block) with the relative term: query t attends to keys t − W + 1 … t, each scored q·k +
    q·rel_k[row of its distance], soft-capped at `cap`; keys before the start score `invalid` after the cap.
    -> [B, m·W, heads·D].

    In blocks of W queries against their block and the one before (2W keys), as transformers computes it: slot s of
    query i of a block holds key (block start − W + s), at distance W + i − s, which rel_k's row s − i encodes (its
    rows run over distances W … 0). The window keeps slots i + 1 … i + W; in the first block, slots < W are before the
    start. `mask`: window_mask(m, W, invalid), when the caller made it once for all layers."""
    b, t, heads, d = q.shape
    w = rel_k.shape[0] - 1
    m = t // w
    qf = q.view(b, m, w, heads, d).permute(0, 3, 1, 2, 4).reshape(b * heads * m, w, d)
    kf = block_context(k, w).permute(0, 3, 1, 4, 2).reshape(b * heads * m, d, 2 * w)
    vf = block_context(v, w).permute(0, 3, 1, 2, 4).reshape(b * heads * m, 2 * w, d)
    content = torch.bmm(qf, kf).view(b, heads, m, w, 2 * w)
    rel = rel_k.permute(1, 2, 0)  # [heads, D, W + 1]
    position = torch.bmm(q.permute(0, 2, 1, 3).reshape(b * heads, t, d), rel if b == 1 else rel.repeat(b, 1, 1))
    position = rel_shift(position.view(b, heads, m, w, w + 1))
    scores = torch.tanh((content + position) / cap) * cap
    keep, fill = mask if mask is not None else window_mask(m, w, invalid)
    scores = scores * keep + fill  # finite scores: × 1 + 0 is exact, × 0 + invalid is exactly invalid
    weights = torch.softmax(scores, dim=-1).view(b * heads * m, w, 2 * w)
    out = torch.bmm(weights, vf).view(b, heads, t, d)
    return out.permute(0, 2, 1, 3).reshape(b, t, heads * d)


class AudioAttention(nn.Module):
    """Local causal attention in fp32: q scaled by D^-½/ln 2 · softplus(per_dim_scale), k by ln(1 + e)/ln 2,
    a relative-position term from `relative_k_proj`, softcap, clippable q/k/v/post linears."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.q_proj = ClippableLinear(cfg, d, d)
        self.k_proj = ClippableLinear(cfg, d, d)
        self.v_proj = ClippableLinear(cfg, d, d)
        self.post = ClippableLinear(cfg, d, d)
        self.relative_k_proj = nn.Linear(d, d, bias=False)
        self.per_dim_scale = nn.Parameter(torch.zeros(self.head_dim))
        self.k_scale = math.log(1 + math.e) / math.log(2)

    def q_scale(self) -> torch.Tensor:
        """[head_dim] fp32: the query's scale per dimension (a constant of the weights)."""
        return (self.head_dim**-0.5 / math.log(2)) * F.softplus(self.per_dim_scale.float())

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask=None) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.heads, self.head_dim)
        q = self.q_proj(x).float().view(shape) * self.q_scale()
        k = self.k_proj(x).float().view(shape) * self.k_scale
        v = self.v_proj(x).float().view(shape)
        rel_k = self.relative_k_proj(positions.to(x.dtype)).float().view(-1, self.heads, self.head_dim)
        out = local_attention(q, k, v, rel_k, self.cfg.attention_logit_cap, self.cfg.attention_invalid_logits_value,
                              mask)
        return self.post(out.to(x.dtype))


def clamp_to(x: torch.Tensor, bound: float) -> torch.Tensor:
    """clamp(x, ±bound), the bound capped at x's dtype's largest value (transformers' gradient_clipping)."""
    bound = min(bound, torch.finfo(x.dtype).max)
    return torch.clamp(x, -bound, bound)


class AudioFeedForward(nn.Module):
    """x + residual_weight · post_norm(clamp(ffw_2(silu(ffw_1(pre_norm(clamp x))))))."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.ffw_layer_1 = ClippableLinear(cfg, d, 4 * d)
        self.ffw_layer_2 = ClippableLinear(cfg, 4 * d, d)
        # transformers builds these two with RMSNorm's default eps (1e-6), not the config's
        self.pre_layer_norm = RMSNorm(d, 1e-6)
        self.post_layer_norm = RMSNorm(d, 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clip = self.cfg.gradient_clipping
        h = self.pre_layer_norm(clamp_to(x, clip))
        h = self.ffw_layer_2(F.silu(self.ffw_layer_1(h)))
        return x + self.post_layer_norm(clamp_to(h, clip)) * self.cfg.residual_weight


class LightConv1d(nn.Module):
    """x + linear_end(silu(conv_norm(clamp(causal depthwise conv(glu(linear_start(pre_norm x)))))))."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.linear_start = ClippableLinear(cfg, d, 2 * d)
        self.linear_end = ClippableLinear(cfg, d, d)
        self.depthwise_conv1d = nn.Conv1d(d, d, kernel_size=cfg.conv_kernel_size, groups=d, bias=False)
        self.pre_layer_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.conv_norm = RMSNorm(d, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_start(self.pre_layer_norm(x))
        a, gate = h.chunk(2, dim=-1)
        h = (a * torch.sigmoid(gate)).transpose(1, 2)  # glu, written out: [B, hidden, T]
        h = self.depthwise_conv1d(F.pad(h, (self.cfg.conv_kernel_size - 1, 0))).transpose(1, 2)
        h = self.conv_norm(clamp_to(h, self.cfg.gradient_clipping))
        return x + self.linear_end(F.silu(h))


class ConformerLayer(nn.Module):
    """FFN½ -> attention (clamped, pre- and post-normed) -> light conv -> FFN½ -> norm_out(clamp)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.feed_forward1 = AudioFeedForward(cfg)
        self.feed_forward2 = AudioFeedForward(cfg)
        self.self_attn = AudioAttention(cfg)
        self.lconv1d = LightConv1d(cfg)
        self.norm_pre_attn = RMSNorm(d, 1e-6)  # RMSNorm's default eps in transformers, as the FFNs'
        self.norm_post_attn = RMSNorm(d, 1e-6)
        self.norm_out = RMSNorm(d, 1e-6)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask=None) -> torch.Tensor:
        clip = self.cfg.gradient_clipping
        x = self.feed_forward1(x)
        h = self.self_attn(self.norm_pre_attn(clamp_to(x, clip)), positions, mask)
        x = x + self.norm_post_attn(clamp_to(h, clip))
        x = self.feed_forward2(self.lconv1d(x))
        return self.norm_out(clamp_to(x, clip))


class AudioTower(nn.Module):
    """Log-mel features [B, F, 128] and their validity [B, F] (valid frames first) -> [B, (F − 1)//4 + 1,
    output_proj_dims]; the checkpoint's `model.audio_tower`. Positions past the valid ones are not transformers'
    values (its attention masks them as keys; a causal tower never reads them for a valid position)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.subsample_conv_projection = SubsampleConvProjection(cfg)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.output_proj = nn.Linear(cfg.hidden_size, cfg.output_proj_dims, bias=True)
        self.register_buffer("positions", relative_positions(cfg), persistent=False)

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.subsample_conv_projection(features, valid)
        w = self.positions.shape[0] - 1   # the attention's block (and window)
        mask = window_mask(h.shape[1] // w, w, self.cfg.attention_invalid_logits_value)
        for layer in self.layers:
            h = layer(h, self.positions, mask)
        return self.output_proj(h)


class AudioEmbedder(nn.Module):
    """embed_audio: weight-free RMSNorm over output_proj_dims, then a projection to the decoder's hidden size."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.embedding_pre_projection_norm = RMSNorm(cfg.output_proj_dims, cfg.rms_norm_eps, with_scale=False)
        self.embedding_projection = nn.Linear(cfg.output_proj_dims, cfg.text_hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(self.embedding_pre_projection_norm(x))


class Gemma4Audio(nn.Module):
    """The front end, the tower and embed_audio: a clip's samples -> the soft tokens the decoder takes in place of
    its audio placeholders."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        self.front_end = LogMel()
        self.audio_tower = AudioTower(cfg)
        self.embed_audio = AudioEmbedder(cfg)

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """samples [B, HOP·F] -> log-mel [B, F, 128] (transformers' `input_features` at the valid frames)."""
        return self.front_end(self.rows(samples))

    def encode(self, samples: torch.Tensor) -> torch.Tensor:
        """One clip's samples [1, n] (16 kHz mono float, 161 ≤ n ≤ 30 s) -> its soft tokens [1,
        contract.audio_soft_tokens(n), text hidden], through the exported method's grid (`program_inputs`)."""
        n = contract.audio_soft_tokens(samples.shape[-1]) if samples.dim() == 2 else 0
        return self.encode_rows(*program_inputs(samples))[:, :n]

    def encode_rows(self, rows: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """What the exported method runs: rows [B, 48m − 3, HOP] of samples and their validity [B, 48m − 3] (1.0 for
        a clip's frames, 0.0 for the zero rows after them) -> [B, 12m, text hidden], the clip's soft tokens first
        (the positions after them read only padding)."""
        frames = rows.shape[1]
        if rows.dim() != 3 or rows.shape[2] != contract.HOP or (frames + 3) % contract.BLOCK_ROWS:
            raise ValueError(f"audio rows: expected [batch, 48m − 3, {contract.HOP}] "
                             f"(contract.audio.program_frames), found {list(rows.shape)}")
        if tuple(valid.shape) != tuple(rows.shape[:2]):
            raise ValueError(f"audio rows' validity: expected {list(rows.shape[:2])}, found {list(valid.shape)}")
        features = self.front_end(rows)
        return self.embed_audio(self.audio_tower(features, valid.to(features.dtype)))

    @staticmethod
    def rows(samples: torch.Tensor) -> torch.Tensor:
        """samples [B, HOP·F] -> [B, F, HOP], refusing a length no clip's frame_samples has."""
        if samples.dim() != 2 or samples.shape[1] < contract.HOP or samples.shape[1] % contract.HOP:
            raise ValueError(f"audio samples: expected [batch, a positive multiple of {contract.HOP}] (the clip's "
                             f"contract.audio.frame_samples), found {list(samples.shape)}")
        if samples.is_complex() or not samples.is_floating_point():
            raise ValueError(f"audio samples: expected float samples in [-1, 1], found {samples.dtype}")
        return samples.view(samples.shape[0], -1, contract.HOP)


def program_inputs(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip [1, n] -> (rows [1, program_frames(n), HOP] f32, valid [1, program_frames(n)] f32): its first
    frame_samples(n) cut in rows, then zero rows, marked 1.0 and 0.0 — the audio program's inputs."""
    if samples.dim() != 2 or samples.shape[0] != 1 or samples.is_complex() or not samples.is_floating_point():
        raise ValueError(f"audio samples: expected one clip of float samples [1, n], found {samples.dtype} "
                         f"{list(samples.shape)}")
    n = samples.shape[1]
    if not contract.MIN_SAMPLES <= n <= contract.MAX_SAMPLES:
        raise ValueError(f"audio samples: expected {contract.MIN_SAMPLES}..{contract.MAX_SAMPLES} samples (one "
                         f"frame to 30 s at {contract.SAMPLE_RATE} Hz; split longer audio with "
                         f"contract.audio.split_samples), found {n}")
    frames, total = contract.mel_frames(n), contract.program_frames(n)
    rows = torch.zeros(1, total, contract.HOP)
    rows[:, :frames] = samples[:, :frames * contract.HOP].float().view(1, frames, contract.HOP)
    valid = torch.zeros(1, total)
    valid[:, :frames] = 1.0
    return rows, valid


# ---------------------------------------------------------------------------------------------------- loading
def load_audio_tower(checkpoint_dir: str | Path, dtype: torch.dtype | None = None) -> Gemma4Audio:
    """The audio tower and embed_audio of a multimodal checkpoint (the folder the decoder loads from), read as
    `checkpoint.load_tower_weights` reads a tower: each tensor once, zero-copy with `dtype=None`."""
    ckpt = open_checkpoint(checkpoint_dir)
    cfg = AudioConfig.from_json(ckpt.path / "config.json")
    with torch.device("meta"):
        model = Gemma4Audio(cfg)
    load_tower_weights(ckpt, model, AUDIO_PREFIXES, (), "audio tower", "audio_config", dtype)
    # The front end's and the relative encoding's constants are not checkpoint tensors: built on the meta
    # device with the rest, they are made here.
    model.front_end = LogMel()
    model.audio_tower.register_buffer("positions", relative_positions(cfg), persistent=False)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- random weights
def audio_tensor_specs(cfg: AudioConfig) -> dict[str, TensorSpec]:
    """Checkpoint key -> TensorSpec for every tensor of the tower and embed_audio, in the module's order (drawn by
    `vision.random_vision_values`' rules: clip bounds finite, norms near 1, the rest N(0, 0.02))."""
    with torch.device("meta"):
        model = Gemma4Audio(cfg)
    return {"model." + k: TensorSpec(tuple(t.shape), init_rule(k)) for k, t in model.state_dict().items()}

