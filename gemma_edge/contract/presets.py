"""Named architectures: the real E2B / E4B, tiny ones that exercise every switch in tests, and the shapes of
the big Gemma 4 models that memory budgets compare against (their MoE part beside the decoder's config)."""
from __future__ import annotations

from .config import FULL, SLIDING, TextConfig


def _pattern(n: int, period: int) -> list[str]:
    """`period - 1` sliding layers, then one full layer, repeated."""
    return [FULL if (i + 1) % period == 0 else SLIDING for i in range(n)]


PRESETS: dict[str, dict] = {
    # Published values (transformers 5.23.0 reading of google/gemma-4-E2B / E4B), text decoder only.
    "e2b": dict(
        vocab_size=262_144, hidden_size=1536, intermediate_size=6144, num_hidden_layers=35,
        num_attention_heads=8, num_key_value_heads=1, head_dim=256, global_head_dim=512,
        layer_types=_pattern(35, 5), sliding_window=512, num_kv_shared_layers=20, use_double_wide_mlp=True,
        hidden_size_per_layer_input=256, vocab_size_per_layer_input=262_144, final_logit_softcapping=30.0,
        eos_token_id=[1, 106],
    ),
    "e4b": dict(
        vocab_size=262_144, hidden_size=2560, intermediate_size=10240, num_hidden_layers=42,
        num_attention_heads=8, num_key_value_heads=2, head_dim=256, global_head_dim=512,
        layer_types=_pattern(42, 6), sliding_window=512, num_kv_shared_layers=18, use_double_wide_mlp=False,
        hidden_size_per_layer_input=256, vocab_size_per_layer_input=262_144, final_logit_softcapping=30.0,
        eos_token_id=[1, 106],
    ),
    # Reduced-depth E2B: real widths, 10 layers [S,S,S,S,F]×2, 4 KV-shared — what every peer exports in 24 GiB.
    "e2b-10l": dict(
        vocab_size=262_144, hidden_size=1536, intermediate_size=6144, num_hidden_layers=10,
        num_attention_heads=8, num_key_value_heads=1, head_dim=256, global_head_dim=512,
        layer_types=_pattern(10, 5), sliding_window=512, num_kv_shared_layers=4, use_double_wide_mlp=True,
        hidden_size_per_layer_input=256, vocab_size_per_layer_input=262_144, final_logit_softcapping=30.0,
        eos_token_id=[1, 106],
    ),
    # Tiny E2B-shaped: MQA, double-wide MLP on the 2 KV-shared layers (one sliding, one full), window 8.
    "tiny": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, global_head_dim=32,
        layer_types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL], sliding_window=8,
        num_kv_shared_layers=2, use_double_wide_mlp=True, hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=512, final_logit_softcapping=30.0,
    ),
    # Tiny E4B-shaped: GQA 4:2, 5:1 pattern, 3 KV-shared layers, plain MLP.
    "tiny-e4b": dict(
        vocab_size=384, hidden_size=96, intermediate_size=160, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, global_head_dim=48,
        layer_types=_pattern(8, 3), sliding_window=6, num_kv_shared_layers=3, use_double_wide_mlp=False,
        hidden_size_per_layer_input=16, vocab_size_per_layer_input=384, final_logit_softcapping=30.0,
    ),
    # Tiny 31B-shaped: K = V on full layers with their own KV-head count, no PLE, no KV sharing, no softcap.
    "tiny-keqv": dict(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
        num_global_key_value_heads=1, attention_k_eq_v=True, layer_types=[SLIDING, SLIDING, SLIDING, FULL],
        sliding_window=5, num_kv_shared_layers=0, hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=256, final_logit_softcapping=None,
    ),
}


# The vision tower per preset, as transformers' `vision_config` (issue 20). E2B and E4B share Google's on-device
# tower: Gemma4VisionConfig's sizes with clipped linears. The tiny presets get a 2-layer tower with the processor's
# patch and pooling sizes and the real position table, so an image of any budget fits.
_E_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                 num_key_value_heads=12, head_dim=64, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                 patch_size=16, pooling_kernel_size=3, position_embedding_size=10_240,
                 rope_parameters={"rope_type": "axial", "rope_theta": 100.0}, use_clipped_linears=True,
                 standardize=False)
_TINY_VISION = {**_E_VISION, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16}
VISION_PRESETS: dict[str, dict] = {"e2b": _E_VISION, "e4b": _E_VISION, "e2b-10l": _E_VISION,
                                   "tiny": _TINY_VISION, "tiny-e4b": _TINY_VISION}

# The audio tower per preset, as transformers' `audio_config` (issue 21): E2B and E4B share one USM Conformer
# (Gemma4AudioConfig's sizes). The tiny presets get a 2-layer tower with the front end's 128 mel bins and Gemma 4's
# attention window.
_E_AUDIO = dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=8, hidden_act="silu",
                subsampling_conv_channels=[128, 32], conv_kernel_size=5, residual_weight=0.5,
                attention_chunk_size=12, attention_context_left=13, attention_context_right=0,
                attention_logit_cap=50.0, attention_invalid_logits_value=-1e9, use_clipped_linears=True,
                rms_norm_eps=1e-6, gradient_clipping=1e10, output_proj_dims=1536)
_TINY_AUDIO = {**_E_AUDIO, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
               "subsampling_conv_channels": [128, 8], "output_proj_dims": 48}
AUDIO_PRESETS: dict[str, dict] = {"e2b": _E_AUDIO, "e4b": _E_AUDIO, "e2b-10l": _E_AUDIO,
                                  "tiny": _TINY_AUDIO, "tiny-e4b": _TINY_AUDIO}


def preset(name: str, **overrides) -> TextConfig:
    """A `TextConfig` for a named architecture, with optional field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return TextConfig(**{**PRESETS[name], **overrides})


# Shapes only (budgets): the big Gemma 4 models, which gemma-edge does not export. MoE: 26B-A4B's experts.
BIG_MODELS: dict[str, dict] = {
    "26b-a4b": dict(config=dict(vocab_size=262_144, hidden_size=2816, intermediate_size=2112, num_hidden_layers=30,
                                num_attention_heads=16, num_key_value_heads=8, num_global_key_value_heads=2,
                                head_dim=256, global_head_dim=512, attention_k_eq_v=True, sliding_window=1024,
                                layer_types=_pattern(30, 6), hidden_size_per_layer_input=0,
                                final_logit_softcapping=30.0, eos_token_id=[1, 106]),
                    moe=dict(num_experts=128, top_k_experts=8, moe_intermediate_size=704)),
    "31b": dict(config=dict(vocab_size=262_144, hidden_size=5376, intermediate_size=21504, num_hidden_layers=60,
                            num_attention_heads=32, num_key_value_heads=16, num_global_key_value_heads=4,
                            head_dim=256, global_head_dim=512, attention_k_eq_v=True, sliding_window=1024,
                            layer_types=_pattern(60, 6), hidden_size_per_layer_input=0,
                            final_logit_softcapping=30.0, eos_token_id=[1, 106]),
                moe=None),
}


def model_config(name: str) -> tuple[TextConfig, dict | None]:
    """A preset ('e2b', 'e4b', 'e2b-10l', 'tiny', ...) or a big model ('26b-a4b', '31b') -> (config, moe)."""
    if name in BIG_MODELS:
        spec = BIG_MODELS[name]
        return TextConfig(**spec["config"]), spec["moe"]
    return preset(name), None
