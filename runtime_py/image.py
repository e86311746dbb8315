"""Images into the vision tower's inputs, exactly as transformers' `Gemma4ImageProcessorPil` prepares them.

    rgb8 = load_image("photo.jpg")          # uint8 [h, w, 3], as transformers' load_image decodes a path
    img = preprocess(rgb8, budget=280)      # pixel_values [9·280, 768] f32, positions [9·280, 2] i64, soft tokens

The steps (transformers 5.23.0, image_processing_pil_gemma4.py and the PIL backend it sits on):
1. To 8-bit RGB. A path goes through transformers' `load_image`: the EXIF orientation applied
   (`ImageOps.exif_transpose`), then `convert("RGB")`, which drops an alpha channel. A PIL image handed to the
   processor goes through `convert_to_rgb` instead, which composites transparency onto white; `to_rgb8` does the
   same. The native host and the Java core start from the decoded RGB8 pixels.
2. Resize to `contract.image.resized_size` with PIL's bicubic filter on the 8-bit image (PIL's fixed-point,
   antialiased two-pass resampler: the C++ and Java ports reproduce it), skipped when the size is already right.
3. Rescale: float64(v) · (1/255), cast to float32 (transformers' `rescale`); no normalisation (the tower
   applies 2·(x − 0.5) itself).
4. Patchify: row-major 16×16 patches, HWC within a patch -> [ph·pw, 768]; positions (x = column, y = row).
5. Pad to 9·budget rows with zero patches at position (−1, −1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from gemma_edge.contract.image import DEFAULT_BUDGET, PATCH, PATCH_DIM, POOL, ImageError, max_patches, resized_size

# float64(v) · (1/255) rounded to float32, for every byte: transformers' rescale, as a table the hosts share
RESCALE = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)


@dataclass(frozen=True)
class PreparedImage:
    pixel_values: np.ndarray     # [9·budget, 768] float32: real patches, then zero rows
    positions: np.ndarray        # [9·budget, 2] int64: (x = patch column, y = patch row); padding (-1, -1)
    soft_tokens: int             # (H'/48) · (W'/48): the tower's output rows for this image
    size: tuple[int, int]        # (H', W'), the resized image
    budget: int


def load_image(path: str | Path) -> np.ndarray:
    """The 8-bit RGB pixels [h, w, 3] of a PNG or JPEG file, decoded as transformers' `load_image` does."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except (OSError, SyntaxError, ValueError) as e:   # PIL's UnidentifiedImageError is an OSError
        raise ImageError(f"{path}: not an image PIL can decode ({e})") from None
    return np.asarray(im, dtype=np.uint8).copy()


def to_rgb8(image: Image.Image | np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] from a PIL image (transformers' `convert_to_rgb`: transparency composited onto white) or
    from an array that already is one."""
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ImageError(f"image pixels: expected uint8 [height, width, 3] (RGB8), found {a.dtype} {list(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image pixels: expected at least 1x1 pixels, found {a.shape[0]}x{a.shape[1]} (empty)")
    return a


def resize_rgb8(rgb8: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: PIL's bicubic resize of an RGB8 image (the original itself when the size is
    already right, as the processor skips the resize then)."""
    if rgb8.shape[:2] == (height, width):
        return rgb8
    return np.asarray(Image.fromarray(rgb8, "RGB").resize((width, height), Image.Resampling.BICUBIC))


def patchify(rgb8: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """pixel_values [9·budget, 768] f32 and positions [9·budget, 2] i64 of an already resized RGB8 image."""
    h, w = rgb8.shape[:2]
    ph, pw = h // PATCH, w // PATCH
    n = max_patches(budget)
    pixels = np.zeros((n, PATCH_DIM), np.float32)
    pixels[: ph * pw] = RESCALE[rgb8].reshape(ph, PATCH, pw, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(ph * pw, -1)
    positions = np.full((n, 2), -1, np.int64)
    positions[: ph * pw, 0] = np.tile(np.arange(pw), ph)       # x: the patch's column
    positions[: ph * pw, 1] = np.repeat(np.arange(ph), pw)     # y: its row
    return pixels, positions


def preprocess(image: Image.Image | np.ndarray, budget: int = DEFAULT_BUDGET) -> PreparedImage:
    """The tower's inputs for one image (RGB8 array or PIL image) at `budget` soft tokens at most."""
    rgb8 = to_rgb8(image)
    h, w = resized_size(rgb8.shape[0], rgb8.shape[1], budget)
    pixels, positions = patchify(resize_rgb8(rgb8, h, w), budget)
    return PreparedImage(pixels, positions, (h // (PATCH * POOL)) * (w // (PATCH * POOL)), (h, w), budget)
