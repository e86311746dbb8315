"""The Gemma 4 text-decoder architecture as one dataclass, with transformers' own field names.

`TextConfig.from_dict` takes a `Gemma4TextConfig` JSON (or a multimodal `config.json` with a nested
`text_config`) unchanged and ignores keys it does not know. Every per-layer fact — attention type,
head_dim, KV heads, MLP width, who owns / stores / reuses K and V, RoPE — is derived once, in
`__post_init__`, into `config.layers` (a list of `LayerSpec`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"

_DEFAULT_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}


def ring_slots(sliding_window: int, max_context: int, prefill_chunk: int) -> int:
    """Slots of a sliding layer's KV ring in the exported program: the window plus one prefill chunk, so a
    chunk written before it is attended never overwrites a key an earlier query of that chunk still needs."""
    return min(sliding_window + prefill_chunk, max_context)


class ConfigError(ValueError):
    """A config that names an unsupported feature or is inconsistent."""


@dataclass(frozen=True)
class LayerSpec:
    """Everything that differs from one decoder layer to the next."""

    index: int
    layer_type: str  # SLIDING or FULL
    head_dim: int
    num_key_value_heads: int
    intermediate_size: int
    kv_mode: str | None  # None: owns K/V; "store": owns and lends them; "reuse": borrows them
    kv_source: int  # the layer whose K/V this layer attends over (itself unless kv_mode == "reuse")
    k_eq_v: bool  # V is the raw k_proj output (only v_norm applied)
    rope_type: str
    rope_theta: float
    partial_rotary_factor: float
    rope_factor: float

    @property
    def is_sliding(self) -> bool:
        return self.layer_type == SLIDING

    @property
    def owns_kv(self) -> bool:
        return self.kv_mode != "reuse"


@dataclass
class TextConfig:
    """Gemma 4 text decoder; field names and defaults are `Gemma4TextConfig`'s."""

    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    global_head_dim: int = 512
    num_global_key_value_heads: int | None = None
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    attention_bias: bool = False
    sliding_window: int = 512
    layer_types: list[str] | None = None
    final_logit_softcapping: float | None = None
    use_bidirectional_attention: str | None = None
    vocab_size_per_layer_input: int = 262_144
    hidden_size_per_layer_input: int = 256
    attention_k_eq_v: bool = False
    num_kv_shared_layers: int = 0
    enable_moe_block: bool = False
    use_double_wide_mlp: bool = False
    per_layer_config: dict | None = None
    layers: list[LayerSpec] = field(default_factory=list, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ derivation
    def __post_init__(self) -> None:
        if self.enable_moe_block:
            raise ConfigError("enable_moe_block=True (the 26B-A4B mixture-of-experts decoder) is not supported "
                              "by this decoder; E2B/E4B and the dense 31B are")
        if self.use_bidirectional_attention is not None:
            raise ConfigError(f"use_bidirectional_attention={self.use_bidirectional_attention!r}: only the causal "
                              "text decoder (None) is supported")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ConfigError(f"hidden_activation: expected 'gelu_pytorch_tanh', found {self.hidden_activation!r}")
        n = self.num_hidden_layers
        if self.layer_types is None:  # transformers' default: 5 sliding : 1 full
            self.layer_types = [SLIDING if (i + 1) % 6 else FULL for i in range(n)]
        self.layer_types = list(self.layer_types)
        if len(self.layer_types) != n:
            raise ConfigError(f"layer_types: expected {n} entries (num_hidden_layers), found {len(self.layer_types)}")
        bad = sorted(set(self.layer_types) - {SLIDING, FULL})
        if bad:
            raise ConfigError(f"layer_types: unknown attention types {bad}")
        self.layer_types[-1] = FULL  # transformers forces the last layer to full attention
        if self.rope_parameters is None:
            self.rope_parameters = json.loads(json.dumps(_DEFAULT_ROPE))
        if not 0 <= self.num_kv_shared_layers < n:
            raise ConfigError(f"num_kv_shared_layers: expected 0..{n - 1}, found {self.num_kv_shared_layers}")
        self.layers = [self._layer_spec(i) for i in range(n)]

    @property
    def last_kv_owner(self) -> int:
        """The last layer that owns K/V: every later one borrows K/V and caches nothing."""
        return self.num_hidden_layers - self.num_kv_shared_layers - 1

    def _overrides(self, i: int) -> dict[str, Any]:
        """Per-layer overrides as transformers derives them (`per_layer_config` or the global_* keys)."""
        if self.per_layer_config is not None:
            over = dict(self.per_layer_config.get(str(i), self.per_layer_config.get(i, {})) or {})
        elif self.layer_types[i] == FULL:
            over = {"head_dim": self.global_head_dim}
            if self.attention_k_eq_v and self.num_global_key_value_heads is not None:
                over["num_key_value_heads"] = self.num_global_key_value_heads
        else:
            over = {}
        unknown = sorted(set(over) - {"head_dim", "num_key_value_heads"})
        if unknown:
            raise ConfigError(f"per_layer_config[{i}]: unsupported override keys {unknown}")
        return over

    def _kv_modes(self) -> list[str | None]:
        """Who owns, stores and reuses K/V — transformers' `kv_sharing_modes`."""
        n, shared = self.num_hidden_layers, self.num_kv_shared_layers
        if shared == 0:
            return [None] * n
        first_shared = n - shared
        modes: list[str | None] = [None if i < first_shared else "reuse" for i in range(n)]
        producers = self.layer_types[:first_shared]
        for layer_type in set(self.layer_types):
            if layer_type not in producers:
                raise ConfigError(f"num_kv_shared_layers={shared}: no earlier {layer_type} layer owns K/V to share")
            modes[first_shared - 1 - producers[::-1].index(layer_type)] = "store"
        return modes

    def _layer_spec(self, i: int) -> LayerSpec:
        layer_type = self.layer_types[i]
        over = self._overrides(i)
        modes = self._kv_modes()
        if modes[i] == "reuse":
            source = max(j for j in range(i) if modes[j] == "store" and self.layer_types[j] == layer_type)
        else:
            source = i
        rope = self.rope_parameters.get(layer_type) or {}
        double = self.use_double_wide_mlp and modes[i] == "reuse"
        return LayerSpec(
            index=i,
            layer_type=layer_type,
            head_dim=int(over.get("head_dim", self.head_dim)),
            num_key_value_heads=int(over.get("num_key_value_heads", self.num_key_value_heads)),
            intermediate_size=self.intermediate_size * (2 if double else 1),
            kv_mode=modes[i],
            kv_source=source,
            k_eq_v=self.attention_k_eq_v and layer_type == FULL,
            rope_type=rope.get("rope_type", "default"),
            rope_theta=float(rope.get("rope_theta", 10_000.0)),
            partial_rotary_factor=float(rope.get("partial_rotary_factor", 1.0)),
            rope_factor=float(rope.get("factor", 1.0)),
        )

    # ------------------------------------------------------------------ convenience
    @property
    def has_ple(self) -> bool:
        return bool(self.hidden_size_per_layer_input)

    @property
    def ple_width(self) -> int:
        """Values in one token's PLE row: L·P."""
        return self.num_hidden_layers * self.hidden_size_per_layer_input

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @property
    def embed_scale(self) -> float:
        return self.hidden_size**0.5

    @property
    def ple_scale(self) -> float:
        return math.sqrt(self.hidden_size_per_layer_input)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextConfig":
        """A Gemma4TextConfig dict, or a multimodal Gemma4Config dict with `text_config`; unknown keys ignored."""
        if "text_config" in d and isinstance(d["text_config"], dict):
            d = d["text_config"]
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "TextConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read a JSON config ({e})") from e
        try:
            return cls.from_dict(d)
        except (TypeError, ConfigError) as e:
            raise ConfigError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """A dict `Gemma4TextConfig(**d)` accepts and that round-trips through `from_dict`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        d["model_type"] = "gemma4_text"
        if d["per_layer_config"] is None:  # transformers reads the global_* keys only from kwargs
            d.pop("per_layer_config")
        return d

    def to_hf(self):
        """The matching `transformers.Gemma4TextConfig` (the parity oracle)."""
        from transformers import Gemma4TextConfig

        d = self.to_dict()
        d.pop("model_type")
        if d.get("num_global_key_value_heads") is None:
            d.pop("num_global_key_value_heads", None)
        return Gemma4TextConfig(**d)
