"""The Gemma 4 text-decoder architecture as one dataclass, with transformers' own field names.

`TextConfig.from_dict` takes a `Gemma4TextConfig` JSON (or a multimodal `config.json` with a nested
`text_config`) unchanged and ignores keys it does not know; `from_json`, the reader of a checkpoint's
`config.json`, also refuses another architecture and a config missing a key that fixes the model's shape.
Every per-layer fact — attention type, head_dim, KV heads, MLP width, who owns / stores / reuses K and V,
RoPE — is derived once, in `__post_init__`, into `config.layers` (a list of `LayerSpec`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast

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


TEXT_MODEL_TYPE = "gemma4_text"  # Gemma4TextConfig: the text decoder's own config
MULTIMODAL_MODEL_TYPE = "gemma4"  # Gemma4Config: the wrapper Google ships, the decoder's under `text_config`
ARCHITECTURES = ("Gemma4ForCausalLM", "Gemma4ForConditionalGeneration", "Gemma4TextModel", "Gemma4Model")
# Keys a checkpoint's config must spell out: each fixes tensor shapes or which layer does what, so a
# default in their place would build another model than the one whose weights sit beside it. transformers
# writes every one of them (they are not PreTrainedConfig's own, so save_pretrained never drops them).
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "layer_types",
                 "hidden_size_per_layer_input", "vocab_size_per_layer_input", "num_kv_shared_layers")
# Integer fields and the least value each may take (0: the feature is off).
_INT_FIELDS = {"vocab_size": 1, "hidden_size": 1, "intermediate_size": 1, "num_hidden_layers": 1,
               "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 1, "global_head_dim": 1,
               "max_position_embeddings": 1, "sliding_window": 1, "vocab_size_per_layer_input": 1,
               "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0}
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "attention_k_eq_v", "enable_moe_block", "use_double_wide_mlp")


def is_int(v) -> TypeGuard[int]:
    """A JSON integer (true/false are not)."""
    return isinstance(v, int) and not isinstance(v, bool)


def read_config_json(path: Path) -> Any:
    """A config.json's object; unreadable or not JSON is a ConfigError naming the file."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read a JSON config ({e})") from e


def _text_section(d: dict, strict: bool) -> tuple[dict, str]:
    """The text decoder's part of a config dict and the prefix naming its keys ("" or "text_config.").
    Refuses another architecture; `strict` (a checkpoint's config.json) also wants `model_type` present."""
    model_type = d.get("model_type")
    if model_type not in (TEXT_MODEL_TYPE, MULTIMODAL_MODEL_TYPE) and (strict or model_type is not None):
        raise ConfigError(f"model_type: expected {TEXT_MODEL_TYPE!r} or {MULTIMODAL_MODEL_TYPE!r} (Gemma 4), "
                          f"found {model_type!r}" + (" (key missing)" if model_type is None else ""))
    archs = d.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not any(a in ARCHITECTURES for a in archs)):
        raise ConfigError(f"architectures: expected one of {list(ARCHITECTURES)} (Gemma 4), found {archs!r}")
    if model_type == MULTIMODAL_MODEL_TYPE or (model_type is None and not strict and "text_config" in d):
        text = d.get("text_config")
        if not isinstance(text, dict):
            raise ConfigError(f"text_config: expected the text decoder's config (an object) under a "
                              f"{MULTIMODAL_MODEL_TYPE!r} config, found {text!r}")
        inner = text.get("model_type", TEXT_MODEL_TYPE)
        if inner != TEXT_MODEL_TYPE:
            raise ConfigError(f"text_config.model_type: expected {TEXT_MODEL_TYPE!r}, found {inner!r}")
        return text, "text_config."
    return d, ""


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
        self._check_types()
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
        bad = sorted({str(t) for t in self.layer_types if t not in (SLIDING, FULL)})
        if bad:
            raise ConfigError(f"layer_types: unknown attention types {bad}")
        self.layer_types[-1] = FULL  # transformers forces the last layer to full attention
        if self.rope_parameters is None:
            self.rope_parameters = json.loads(json.dumps(_DEFAULT_ROPE))
        if not 0 <= self.num_kv_shared_layers < n:
            raise ConfigError(f"num_kv_shared_layers: expected 0..{n - 1}, found {self.num_kv_shared_layers}")
        self.layers = [self._layer_spec(i) for i in range(n)]

    def _check_types(self) -> None:
        """Every field's type and range, named, before anything is derived from it."""
        for name, least in _INT_FIELDS.items():
            v = getattr(self, name)
            if not is_int(v) or v < least:
                raise ConfigError(f"{name}: expected an integer ≥ {least}, found {v!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, found {getattr(self, name)!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_key_value_heads: expected a divisor of num_attention_heads "
                              f"({self.num_attention_heads}), found {self.num_key_value_heads}")
        if self.num_global_key_value_heads is not None and not (is_int(self.num_global_key_value_heads)
                                                                and self.num_global_key_value_heads >= 1):
            raise ConfigError(f"num_global_key_value_heads: expected null or an integer ≥ 1, "
                              f"found {self.num_global_key_value_heads!r}")
        eps = self.rms_norm_eps
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
            raise ConfigError(f"rms_norm_eps: expected a number in (0, 1), found {eps!r}")
        cap = self.final_logit_softcapping
        if cap is not None and (not isinstance(cap, (int, float)) or isinstance(cap, bool) or not cap > 0):
            raise ConfigError(f"final_logit_softcapping: expected null or a number > 0, found {cap!r}")
        eos = self.eos_token_id
        if not (eos is None or is_int(eos) or (isinstance(eos, list) and all(is_int(e) for e in eos))):
            raise ConfigError(f"eos_token_id: expected null, an integer or a list of integers, found {eos!r}")
        for name in ("bos_token_id", "pad_token_id"):
            if getattr(self, name) is not None and not is_int(getattr(self, name)):
                raise ConfigError(f"{name}: expected null or an integer, found {getattr(self, name)!r}")
        for name in ("rope_parameters", "per_layer_config"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name}: expected null or an object, found {getattr(self, name)!r}")
        if self.layer_types is not None and not isinstance(self.layer_types, list):
            raise ConfigError(f"layer_types: expected null or a list, found {self.layer_types!r}")

    @property
    def last_kv_owner(self) -> int:
        """The last layer that owns K/V: every later one borrows K/V and caches nothing."""
        return self.num_hidden_layers - self.num_kv_shared_layers - 1

    def _overrides(self, i: int) -> dict[str, Any]:
        """Per-layer overrides as transformers derives them (`per_layer_config` or the global_* keys)."""
        if self.per_layer_config is not None:
            over = self.per_layer_config.get(str(i), self.per_layer_config.get(i, {})) or {}
            if not isinstance(over, dict):
                raise ConfigError(f"per_layer_config[{i}]: expected an object, found {over!r}")
            over = dict(over)
        elif self._types[i] == FULL:
            over = {"head_dim": self.global_head_dim}
            if self.attention_k_eq_v and self.num_global_key_value_heads is not None:
                over["num_key_value_heads"] = self.num_global_key_value_heads
        else:
            over = {}
        unknown = sorted(set(over) - {"head_dim", "num_key_value_heads"})
        if unknown:
            raise ConfigError(f"per_layer_config[{i}]: unsupported override keys {unknown}")
        return over

    @property
    def _types(self) -> list[str]:
        """layer_types, which __post_init__ always fills (the field is optional only as an input)."""
        return cast(list, self.layer_types)

    def _kv_modes(self) -> list[str | None]:
        """Who owns, stores and reuses K/V — transformers' `kv_sharing_modes`."""
        n, shared = self.num_hidden_layers, self.num_kv_shared_layers
        if shared == 0:
            return [None] * n
        first_shared = n - shared
        modes: list[str | None] = [None if i < first_shared else "reuse" for i in range(n)]
        producers = self._types[:first_shared]
        for layer_type in set(self._types):
            if layer_type not in producers:
                raise ConfigError(f"num_kv_shared_layers={shared}: no earlier {layer_type} layer owns K/V to share")
            modes[first_shared - 1 - producers[::-1].index(layer_type)] = "store"
        return modes

    def _layer_spec(self, i: int) -> LayerSpec:
        layer_type = self._types[i]
        over = self._overrides(i)
        modes = self._kv_modes()
        if modes[i] == "reuse":
            source = max(j for j in range(i) if modes[j] == "store" and self._types[j] == layer_type)
        else:
            source = i
        rope = cast(dict, self.rope_parameters).get(layer_type) or {}
        double = self.use_double_wide_mlp and modes[i] == "reuse"
        if not isinstance(rope, dict):
            raise ConfigError(f"rope_parameters.{layer_type}: expected an object, found {rope!r}")
        for key in ("rope_theta", "partial_rotary_factor", "factor"):
            v = rope.get(key, 1.0)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ConfigError(f"rope_parameters.{layer_type}.{key}: expected a number > 0, found {v!r}")
        for key, v in over.items():
            if not is_int(v) or v < 1:
                raise ConfigError(f"per_layer_config[{i}].{key}: expected an integer ≥ 1, found {v!r}")
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
    def from_dict(cls, d: dict[str, Any], *, strict: bool = False) -> "TextConfig":
        """A Gemma4TextConfig dict, or a multimodal Gemma4Config dict with `text_config`; unknown keys ignored.

        Another architecture (`model_type`, `architectures`) is refused. `strict` — a checkpoint's own
        config.json — also wants `model_type` and every key of REQUIRED_KEYS spelled out, not defaulted."""
        if not isinstance(d, dict):
            raise ConfigError(f"expected a JSON object, found {type(d).__name__}")
        text, prefix = _text_section(d, strict)
        if strict:
            missing = [prefix + k for k in REQUIRED_KEYS if k not in text]
            if missing:
                raise ConfigError(f"missing required key(s) {missing} (a Gemma 4 config spells out each)")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        try:
            return cls(**{k: v for k, v in text.items() if k in names})
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> "TextConfig":
        """A checkpoint's config.json (strict: Gemma 4 only, shape-defining keys present)."""
        path = Path(path)
        d = read_config_json(path)
        try:
            return cls.from_dict(d, strict=True)
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


class TowerConfig:
    """What the towers' configs (export.vision.VisionConfig, export.audio.AudioConfig, dataclasses with transformers'
    field names plus `text_hidden_size`) share: reading their object of a multimodal config.json, errors named
    `<KEY>.<field>`, and writing it back. A subclass sets the class attributes below."""

    KEY: str           # "vision_config" / "audio_config"
    MODEL_TYPE: str    # its model_type
    REQUIRED_KEYS: tuple[str, ...]   # what a checkpoint's own config.json must spell out
    TOWER: str         # "vision" / "audio", for messages
    ABSENT: str        # what a missing object means

    @classmethod
    def from_dict(cls, d: Any, text_hidden_size: int, *, strict: bool = False) -> Any:
        """The tower's config object (transformers' JSON, unknown keys ignored); `strict` (a checkpoint's own
        config.json) also wants every key of REQUIRED_KEYS spelled out."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.KEY}: expected the {cls.TOWER} tower's config (an object), found {d!r}"
                              + (f" ({cls.ABSENT})" if d is None else ""))
        model_type = d.get("model_type", cls.MODEL_TYPE)
        if model_type != cls.MODEL_TYPE:
            raise ConfigError(f"{cls.KEY}.model_type: expected {cls.MODEL_TYPE!r}, found {model_type!r}")
        if strict:
            missing = [f"{cls.KEY}.{k}" for k in cls.REQUIRED_KEYS if k not in d]
            if missing:
                raise ConfigError(f"missing required key(s) {missing} (a Gemma 4 {cls.TOWER} config spells out each)")
        names = {f.name for f in dataclasses.fields(cast(Any, cls)) if f.init} - {"text_hidden_size"}
        try:
            make = cast(Any, cls)   # a dataclass subclass: its fields are the keyword arguments
            return make(**{k: v for k, v in d.items() if k in names}, text_hidden_size=text_hidden_size)
        except ConfigError as e:
            raise ConfigError(f"{cls.KEY}.{e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> Any:
        """A multimodal checkpoint's config.json (`model_type` 'gemma4' with the tower's object), strictly."""
        path = Path(path)
        d = read_config_json(path)
        try:
            text = TextConfig.from_dict(d, strict=True)
            if d.get("model_type") != MULTIMODAL_MODEL_TYPE:
                article = "an" if cls.TOWER[0] in "aeiou" else "a"
                raise ConfigError(f"model_type: expected {MULTIMODAL_MODEL_TYPE!r} (a checkpoint with {article} "
                                  f"{cls.TOWER} tower), found {d.get('model_type')!r}")
            return cls.from_dict(d.get(cls.KEY), text.hidden_size, strict=True)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    def fields_dict(self) -> dict[str, Any]:
        """The tower's own fields as transformers names them (text_hidden_size, the decoder's, left out)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(cast(Any, self)) if f.init}
        d.pop("text_hidden_size")
        return d
