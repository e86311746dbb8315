"""Gemma 4's image input — budgets, the resize rule, the image tokens: the one statement every host is checked against.

An image becomes `budget` soft tokens at most, for a budget of SUPPORTED_BUDGETS chosen per image (transformers'
`Gemma4ImageProcessorPil`, `max_soft_tokens`). It is resized, aspect ratio kept, to the largest H'×W' that are
multiples of 48 (PATCH · POOL) with (H'/16)·(W'/16) ≤ 9·budget patches — small images are scaled up, so every
image lands near its budget — then cut into 16×16 patches, each a 3×3 block of which the tower pools into one soft
token: soft tokens = (H'/48)·(W'/48). In the prompt an image is `<|image>` + soft tokens × `<|image|>` + `<image|>`.

`resized_size` is transformers' `get_aspect_ratio_preserving_size` (image_processing_pil_gemma4.py) to the bit:
the same double arithmetic (one correctly rounded sqrt and three divisions), which C++ and Java reproduce exactly.
The pixels themselves (PIL's bicubic resize, rescale, patchify, padding) are runtime_py/image.py's and the hosts'
concern; tests/test_image_preprocess.py checks all of them against transformers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SUPPORTED_BUDGETS = (70, 140, 280, 560, 1120)   # soft tokens per image: transformers' _SUPPORTED_SOFT_TOKENS
DEFAULT_BUDGET = 280                            # the processor's default and the E models' default_output_length
PATCH = 16                                      # pixels per patch side
POOL = 3                                        # patches per pooled soft token side
SIDE = PATCH * POOL                             # 48: resized sides are multiples of this
PATCH_DIM = PATCH * PATCH * 3                   # 768 values per patch, HWC within the patch

BOI, IMAGE, EOI = "<|image>", "<|image|>", "<image|>"
BOI_ID, IMAGE_ID, EOI_ID = 255999, 258880, 258882  # Gemma 4's vocabulary (Gemma4Config defaults)


class ImageError(ValueError):
    """An image or budget the preprocessing cannot take: says what was expected and what was found."""


@dataclass(frozen=True)
class ImageTokens:
    """The ids that frame an image in a prompt: `boi`, one `image` placeholder per soft token, `eoi`. Gemma 4's
    own by default; a checkpoint's config.json (Gemma4Config: boi_token_id, image_token_id, eoi_token_id) may
    name others (tiny test models do)."""

    boi: int = BOI_ID
    image: int = IMAGE_ID
    eoi: int = EOI_ID

    @classmethod
    def from_config(cls, d: dict, vocab_size: int, where: str = "config.json") -> "ImageTokens":
        """The ids a multimodal config names (defaults for the keys it leaves out), each checked to be a token
        of the vocabulary and the three distinct."""
        found = {}
        for name, key in (("boi", "boi_token_id"), ("image", "image_token_id"), ("eoi", "eoi_token_id")):
            v = d.get(key, getattr(cls, name))
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size:
                raise ImageError(f"{where}: {key}: expected a token id in [0, {vocab_size}), found {v!r}")
            found[name] = v
        if len(set(found.values())) != 3:
            raise ImageError(f"{where}: boi_token_id, image_token_id, eoi_token_id: expected three different ids, "
                             f"found {list(found.values())}")
        return cls(**found)

    @classmethod
    def for_vocab(cls, vocab_size: int) -> "ImageTokens":
        """Gemma 4's ids where the vocabulary holds them, else its last three ids (small random test models)."""
        if vocab_size > max(BOI_ID, IMAGE_ID, EOI_ID):
            return cls()
        return cls(vocab_size - 3, vocab_size - 2, vocab_size - 1)

    def to_dict(self) -> dict[str, int]:
        return {"boi_token_id": self.boi, "image_token_id": self.image, "eoi_token_id": self.eoi}

    def manifest_dict(self) -> dict[str, int]:
        """The bundle manifest's `vision.image_tokens`."""
        return {"boi": self.boi, "image": self.image, "eoi": self.eoi}

    def span(self, n_soft_tokens: int) -> list[int]:
        """The prompt ids of one image of n soft tokens: boi, n × image, eoi."""
        if isinstance(n_soft_tokens, bool) or not isinstance(n_soft_tokens, int) or not 1 <= n_soft_tokens <= 1120:
            raise ImageError(f"image soft tokens: expected 1..{SUPPORTED_BUDGETS[-1]}, found {n_soft_tokens!r}")
        return [self.boi] + [self.image] * n_soft_tokens + [self.eoi]


def check_budget(budget: object) -> int:
    """`budget` as an int when it is one of SUPPORTED_BUDGETS; ImageError otherwise."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget not in SUPPORTED_BUDGETS:
        raise ImageError(f"image budget: expected one of {', '.join(map(str, SUPPORTED_BUDGETS))}, found {budget!r}")
    return budget


def max_patches(budget: int) -> int:
    """Patch rows of pixel_values and image_position_ids (real patches, then padding): 9 · budget."""
    return check_budget(budget) * POOL * POOL


def resized_size(height: int, width: int, budget: int) -> tuple[int, int]:
    """(H', W') the image is resized to: the largest multiples of 48 within 9·budget patches, aspect ratio kept.

    A side that rounds down to 0 (an image more than ~budget times longer than wide) becomes 48, and the other
    floor(long / short) · 48, capped at budget · 48.
    """
    n = max_patches(budget)
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ImageError(f"image {name}: expected a positive number of pixels, found {v!r} (an empty image?)")
    target_px = n * PATCH * PATCH
    factor = math.sqrt(target_px / (height * width))
    h = math.floor(factor * height / SIDE) * SIDE
    w = math.floor(factor * width / SIDE) * SIDE
    if h == 0 and w == 0:   # cannot happen for a positive size and budget ≥ 70; transformers refuses it too
        raise ImageError(f"image {height}x{width}: resizes to 0x0 at budget {budget}")
    max_side = (n // (POOL * POOL)) * SIDE
    if h == 0:
        h, w = SIDE, min(math.floor(width / height) * SIDE, max_side)
    elif w == 0:
        h, w = min(math.floor(height / width) * SIDE, max_side), SIDE
    if h * w > target_px:
        raise ImageError(f"image {height}x{width}: resizes to {h}x{w}, more than {n} patches of {PATCH}x{PATCH}")
    return h, w


def soft_tokens(height: int, width: int, budget: int) -> int:
    """Soft tokens an image of height × width pixels becomes at `budget` (≤ budget)."""
    h, w = resized_size(height, width, budget)
    return (h // SIDE) * (w // SIDE)


def image_span_ids(n_soft_tokens: int) -> list[int]:
    """The prompt ids of one image of n soft tokens: <|image>, n × <|image|>, <image|>."""
    return ImageTokens().span(n_soft_tokens)
