"""Images in a prompt: the encoders a Session runs them through, and how a prompt's placeholders become spans.

An encoder turns one preprocessed image (`image.PreparedImage`) into its soft tokens [n, H] float32. Two are
here: `EagerVisionEncoder` (our PyTorch tower, loaded from the checkpoint on first use) and
`ProgramVisionEncoder` (a bundle's vision program, one static method per budget). Both load on the first image
and let go of their weights after encoding (`release`), so a text-only session never pays for the tower.

`expand_prompt` is the processor's expansion: each image placeholder id in the prompt (one per image) becomes
boi + n × placeholder + eoi, n that image's soft tokens; a prompt without placeholders gets the images first
(after <bos>), as transformers' chat template puts an image turn's content before its text.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gemma_edge.contract.image import ImageTokens

from .image import PreparedImage


class ImagePromptError(ValueError):
    """An image prompt that cannot be run: says what was expected and what was found."""


def expand_prompt(ids: list[int], counts: list[int], tokens: ImageTokens, bos: int | None) -> list[int]:
    """`ids` with one `tokens.image` per image (or none: images first) -> the prompt with each image's span."""
    marks = [i for i, t in enumerate(ids) if t == tokens.image]
    if any(t in (tokens.boi, tokens.eoi) for t in ids):
        raise ImagePromptError(f"prompt: holds image frame ids ({tokens.boi} / {tokens.eoi}); expected one "
                               f"placeholder {tokens.image} per image, which the session expands")
    if not marks:
        at = 1 if ids and ids[0] == bos else 0
        return ids[:at] + [t for n in counts for t in tokens.span(n)] + ids[at:]
    if len(marks) != len(counts):
        raise ImagePromptError(f"prompt: {len(marks)} image placeholder(s) ({tokens.image}), expected one per "
                               f"image ({len(counts)})")
    out, prev = [], 0
    for at, n in zip(marks, counts):
        out += ids[prev:at] + tokens.span(n)
        prev = at + 1
    return out + ids[prev:]


class EagerVisionEncoder:
    """The checkpoint's tower in our PyTorch, fp32, loaded on first use."""

    name = "eager"

    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self._tower = None

    def encode(self, image: PreparedImage) -> np.ndarray:
        import torch

        from gemma_edge.export.vision import load_vision_tower

        if self._tower is None:
            self._tower = load_vision_tower(self.checkpoint_dir, dtype=torch.float32)
        with torch.no_grad():
            soft = self._tower(torch.from_numpy(image.pixel_values)[None], torch.from_numpy(image.positions)[None])
        return soft[0].numpy()

    def release(self) -> None:
        self._tower = None
