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

from gemma_edge.contract import bundle_format as bf
from gemma_edge.contract.image import SUPPORTED_BUDGETS, ImageTokens

from .image import PreparedImage


class ImagePromptError(ValueError):
    """An image prompt that cannot be run: says what was expected and what was found."""


def check_placeholders(ids: list[int], n_images: int, tokens: ImageTokens) -> None:
    """Refuse a prompt the expansion cannot take: frame ids in it, or placeholders but not one per image."""
    if any(t in (tokens.boi, tokens.eoi) for t in ids):
        raise ImagePromptError(f"images: the prompt holds image frame ids ({tokens.boi} / {tokens.eoi}); expected "
                               f"one placeholder {tokens.image} per image, which the session expands")
    marks = sum(t == tokens.image for t in ids)
    if marks and marks != n_images:
        raise ImagePromptError(f"images: the prompt has {marks} image placeholder(s) ({tokens.image}) for "
                               f"{n_images} image(s); expected one per image, or none (images first)")


def expand_prompt(ids: list[int], counts: list[int], tokens: ImageTokens, bos: int | None) -> list[int]:
    """`ids` with one `tokens.image` per image (or none: images first) -> the prompt with each image's span."""
    check_placeholders(ids, len(counts), tokens)
    marks = [i for i, t in enumerate(ids) if t == tokens.image]
    if not marks:
        at = 1 if ids and ids[0] == bos else 0
        return ids[:at] + [t for n in counts for t in tokens.span(n)] + ids[at:]
    out, prev = [], 0
    for at, n in zip(marks, counts):
        out += ids[prev:at] + tokens.span(n)
        prev = at + 1
    return out + ids[prev:]


class EagerVisionEncoder:
    """The checkpoint's tower in our PyTorch, fp32, loaded on first use."""

    name = "eager"
    budgets = SUPPORTED_BUDGETS

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


class ProgramVisionEncoder:
    """A bundle's vision program (`vision.pte`, one static method per budget), loaded on the first image —
    its SHA-256 checked against the manifest first, as a text-only session never reads the file — and let go
    of by `release`. Soft tokens are the rows the method marks valid; their count must be the image's."""

    name = "pte"

    def __init__(self, bundle_dir: str | Path, manifest: dict):
        self.path = bf.bundle_file(bundle_dir, manifest, "vision")
        self.sha256 = manifest["files"]["vision"]["sha256"]
        v = manifest["vision"]
        self.methods = {int(b): v["methods"][str(b)] for b in v["budgets"]}
        self.budgets = tuple(self.methods)
        self.hidden = v["hidden_size"]
        self._program = None
        self._loaded: dict[str, object] = {}

    def _method(self, budget: int):
        from .backends import executorch_call, load_tower_program

        name = self.methods.get(budget)
        if name is None:
            raise ImagePromptError(f"image budget {budget}: this bundle's vision program has budgets "
                                   f"{list(self.budgets)} (export with --image-budgets to add it)")
        if self._program is None:
            self._program = load_tower_program(self.path, self.sha256, "vision", self.methods.values(),
                                               "vision.methods")
        if name not in self._loaded:
            self._loaded[name] = executorch_call(f"{self.path}: method {name}: ExecuTorch cannot load it",
                                                 self._program.load_method, name)
        return name, self._loaded[name]

    def encode(self, image: PreparedImage) -> np.ndarray:
        import torch

        from .backends import ProgramError, executorch_call

        name, method = self._method(image.budget)
        inputs = [torch.from_numpy(image.pixel_values)[None], torch.from_numpy(image.positions)[None]]
        out = executorch_call(f"{self.path}: method {name}", method.execute, inputs)
        soft, valid = out[0][0].numpy(), out[1][0].numpy().astype(bool)
        if soft.shape != (image.budget, self.hidden) or valid.shape != (image.budget,):
            raise ProgramError(f"{self.path}: method {name}: expected outputs [1, {image.budget}, {self.hidden}] and "
                               f"[1, {image.budget}], found {list(out[0].shape)} and {list(out[1].shape)}")
        rows = soft[valid]
        if len(rows) != image.soft_tokens or not valid[:image.soft_tokens].all():
            raise ProgramError(f"{self.path}: method {name}: expected the first {image.soft_tokens} soft tokens "
                               f"valid (the image's), found {int(valid.sum())} valid")
        return np.ascontiguousarray(rows, dtype=np.float32)

    def release(self) -> None:
        """Drop the methods and the program (its packed weights go with them)."""
        self._loaded.clear()
        self._program = None
