"""Writes tests/golden/image_preprocess.json, the image preprocessing's cross-host golden, from runtime_py/image.py.

Usage: python tests/golden/make_image_golden.py [OUT]   (default: tests/golden/image_preprocess.json beside this file)

Small seeded RGB8 images (hex) — noise, so that every tap of the resampler shows, and a gradient — each at every
budget: the resized size, the soft tokens, the SHA-256 of the resized RGB8 pixels, of pixel_values (float32
little-endian) and of positions (int64 little-endian), and a few values for a readable failure. And bare resizes
(input, output size, the resized bytes in hex) that take each pass order of Pillow's resampler. All of it comes
from `gemma_edge.runtime.image`, whose output tests/test_image_preprocess.py checks against transformers;
that test also checks this file is current. Java's ImagePreprocessorGoldenTest replays it.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from gemma_edge.contract.image import SUPPORTED_BUDGETS
from gemma_edge.runtime.image import preprocess, resize_rgb8

GOLDEN = Path(__file__).resolve().parent / "image_preprocess.json"
SEED = 20261203
# (name, height, width): tiny (upscaled a thousandfold), thin (one side rounds to 48), odd, one already a multiple
IMAGES = [("one_pixel", 1, 1), ("two_by_three", 2, 3), ("thin_5x300", 5, 300), ("odd_37x61", 37, 61),
          ("gradient_24x40", 24, 40), ("tall_90x7", 90, 7)]
# bare resizes: (height, width, out height, out width) — both passes down, either first; one axis only; up
RESIZES = [(40, 12, 30, 10), (12, 40, 10, 30), (33, 17, 20, 16), (17, 33, 9, 30), (30, 30, 30, 7), (9, 5, 41, 23)]


def image(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    if name.startswith("gradient"):
        y, x = np.mgrid[0:h, 0:w]
        return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def sha(a: np.ndarray, dtype: str) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.dtype(dtype)).tobytes()).hexdigest()


def golden() -> dict:
    rng = np.random.default_rng(SEED)
    cases = []
    for name, h, w in IMAGES:
        rgb = image(name, h, w, rng)
        runs = []
        for budget in SUPPORTED_BUDGETS:
            p = preprocess(rgb, budget)
            real = p.soft_tokens * 9
            flat = p.pixel_values.reshape(-1)
            picks = sorted({0, 1, 767, 768 * (real - 1), 768 * real - 1, 768 * real})   # the last one is padding
            runs.append({
                "budget": budget, "resized": list(p.size), "soft_tokens": p.soft_tokens,
                "resized_sha256": sha(resize_rgb8(rgb, *p.size), "u1"),
                "pixel_values_sha256": sha(p.pixel_values, "<f4"), "positions_sha256": sha(p.positions, "<i8"),
                "samples": [[i, float(flat[i])] for i in picks],
                "last_real_position": p.positions[real - 1].tolist(),
            })
        cases.append({"name": name, "height": h, "width": w, "rgb_hex": rgb.tobytes().hex(), "runs": runs})
    resizes = []
    for h, w, oh, ow in RESIZES:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        resizes.append({"height": h, "width": w, "rgb_hex": rgb.tobytes().hex(), "out": [oh, ow],
                        "resized_hex": resize_rgb8(rgb, oh, ow).tobytes().hex()})
    return {"about": "written by tests/golden/make_image_golden.py from gemma_edge.runtime.image; do not edit",
            "images": cases, "resizes": resizes}


def text() -> str:
    return json.dumps(golden(), indent=1) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    out.write_text(text())
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
