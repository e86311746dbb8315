"""transformers 5.23.0 as a bench/vision.py system: `Gemma4ForConditionalGeneration.from_pretrained(checkpoint,
dtype=float32)` (eager, its default sdpa attention) and `get_image_features(...).pooler_output`, the reference
every other system's soft tokens are compared with. The checkpoint's text part is loaded too (bench/vision.py's
checkpoints keep it small, so the tower is nearly all of it)."""
from __future__ import annotations


def imports() -> None:
    import executorch.runtime  # noqa: F401  (set_threads resets ExecuTorch's pool too)
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import Gemma4ForConditionalGeneration  # noqa: F401


def load(spec: dict):
    import torch
    from transformers import Gemma4ForConditionalGeneration

    model = Gemma4ForConditionalGeneration.from_pretrained(spec["checkpoint"], dtype=torch.float32).eval()

    def encode(pixel_values, positions, n):
        out = model.model.get_image_features(pixel_values, positions).pooler_output
        if len(out) != 1 or out[0].shape[0] != n:
            raise RuntimeError(f"get_image_features: expected one image of {n} soft tokens, found "
                               f"{[tuple(t.shape) for t in out]}")
        return out[0]

    encode.info = {"attn_implementation": model.config._attn_implementation,
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "tower_parameters": sum(p.numel() for p in model.model.vision_tower.parameters())}
    return encode
