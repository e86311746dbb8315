"""Image preprocessing on every host, exactly: the contract's resize rule and runtime_py/image.py against
transformers' Gemma4ImageProcessorPil (np.array_equal, never allclose), the native host's gemma-edge-image-golden
against Python (raw RGB8, PNG decoded by stb vs PIL, the resampler over random sizes), and the golden file the
Java core replays (tests/golden/image_preprocess.json) current with Python."""
import importlib.util
import io
import json
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers.image_utils import load_image as hf_load_image
from transformers.models.gemma4.image_processing_pil_gemma4 import (
    Gemma4ImageProcessorPil,
    get_aspect_ratio_preserving_size,
)

from gemma_edge.contract import image as ci
from gemma_edge.runtime import native
from gemma_edge.runtime.image import load_image, preprocess, resize_rgb8

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_image_golden", HERE / "golden" / "make_image_golden.py")
mig = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mig)

# several aspect ratios: tiny (scaled up a thousandfold), thin (one side rounds to 0 at some budgets), square,
# already a multiple of 48, landscape and portrait photos
SIZES = [(1, 1), (2, 3), (5, 300), (300, 5), (37, 61), (48, 48), (768, 768), (480, 640), (1080, 1920), (4000, 60),
         (60, 4000), (100, 2000)]
PROC = Gemma4ImageProcessorPil()


def hf(image, budget: int):
    out = PROC(images=image, max_soft_tokens=budget, return_tensors="np")
    return out["pixel_values"][0], out["image_position_ids"][0], int(out["num_soft_tokens_per_image"][0])


def noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_same(got, image, budget: int, what: str):
    pv, pos, n = hf(image, budget)
    assert got.soft_tokens == n, f"{what} at {budget}: soft tokens {got.soft_tokens}, transformers {n}"
    assert got.pixel_values.dtype == np.float32 and got.positions.dtype == np.int64
    assert np.array_equal(got.pixel_values, pv), \
        f"{what} at {budget}: {int((got.pixel_values != pv).sum())} pixel values differ from transformers'"
    assert np.array_equal(got.positions, pos), f"{what} at {budget}: positions differ from transformers'"


# ---------------------------------------------------------------------------------------------------------------
# The contract: budgets and the resize rule
# ---------------------------------------------------------------------------------------------------------------

def test_resized_size_is_transformers_rule_over_a_sweep():
    sides = sorted({1, 2, 3, 5, 7, 16, 47, 48, 49, 60, 95, 100, 333, 480, 641, 1000, 1080, 1920, 4000, 12345})
    n_zero_side = 0
    for budget in ci.SUPPORTED_BUDGETS:
        for h in sides:
            for w in sides:
                want = get_aspect_ratio_preserving_size(h, w, ci.PATCH, 9 * budget, ci.POOL)
                got = ci.resized_size(h, w, budget)
                assert got == want, f"{h}x{w} at {budget}: {got}, transformers {want}"
                assert ci.soft_tokens(h, w, budget) == (want[0] // 48) * (want[1] // 48) <= budget
                n_zero_side += min(want) == 48 and max(h, w) / min(h, w) > budget
    assert n_zero_side > 10, "the sweep must reach the side-rounds-to-0 case"


def test_resized_size_matches_the_docs_table():
    # ../shared/docs/gemma4-multimodal.md §1.2: (height, width) -> soft tokens per budget
    table = {(1024, 1024): (64, 121, 256, 529, 1089), (480, 640): (63, 130, 266, 540, 1064),
             (1080, 1920): (66, 120, 264, 527, 1100), (64, 64): (64, 121, 256, 529, 1089),
             (100, 2000): (37, 104, 222, 525, 1043)}
    for (h, w), tokens in table.items():
        assert tuple(ci.soft_tokens(h, w, b) for b in ci.SUPPORTED_BUDGETS) == tokens, (h, w)
    assert ci.resized_size(100, 2000, 70) == (48, 1776)
    assert ci.resized_size(1080, 1920, 1120) == (1200, 2112)


def test_contract_refuses_budgets_and_empty_images():
    for bad in (0, 69, 281, 2240, True, 280.0, "280", None):
        with pytest.raises(ci.ImageError, match=r"image budget: expected one of 70, 140, 280, 560, 1120, found"):
            ci.resized_size(10, 10, bad)
    for h, w in ((0, 10), (10, 0), (-1, 5)):
        with pytest.raises(ci.ImageError, match="expected a positive number of pixels"):
            ci.resized_size(h, w, 280)
    assert ci.image_span_ids(3) == [255999, 258880, 258880, 258880, 258882]
    with pytest.raises(ci.ImageError, match="expected 1..1120"):
        ci.image_span_ids(0)


# ---------------------------------------------------------------------------------------------------------------
# Python runtime vs transformers, bit for bit
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", ci.SUPPORTED_BUDGETS)
def test_preprocess_equals_transformers(budget):
    for i, (h, w) in enumerate(SIZES):
        rgb = noise(h, w, i)
        p = preprocess(rgb, budget)
        assert p.pixel_values.shape == (9 * budget, 768) and p.positions.shape == (9 * budget, 2)
        assert p.size == ci.resized_size(h, w, budget)
        real = p.soft_tokens * 9
        assert (p.positions[real:] == -1).all() and not p.pixel_values[real:].any()
        assert_same(p, Image.fromarray(rgb), budget, f"{h}x{w}")


def pil_variants() -> dict:
    """PIL images of every mode a PNG decodes to, transparency included."""
    rgb = noise(23, 41, 7)
    rgba = np.dstack([rgb, noise(23, 41, 8)[..., :1]])
    rgba[0, :5, 3] = 0                                                     # fully transparent pixels
    pal = Image.fromarray(rgb).quantize(16)
    pal_t = pal.copy()
    pal_t.info["transparency"] = 3                                         # one palette entry transparent
    grey = Image.fromarray(rgb[..., 0])
    grey_t = grey.copy()
    grey_t.info["transparency"] = int(rgb[0, 0, 0])
    return {"RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(rgba, "RGBA"), "L": grey, "L+tRNS": grey_t,
            "LA": Image.fromarray(rgba[..., [0, 3]], "LA"), "P": pal, "P+tRNS": pal_t,
            "1": Image.fromarray(rgb[..., 0] > 127)}


def test_preprocess_converts_pil_modes_as_transformers():
    """A PIL image handed over is made RGB as the processor does (transparency composited onto white)."""
    for mode, im in pil_variants().items():
        for budget in (70, 280):
            assert_same(preprocess(im, budget), im, budget, f"PIL mode {mode}")


def write_png_variants(d: Path) -> list[Path]:
    paths = []
    for mode, im in pil_variants().items():
        p = d / f"{mode.replace('+', '_')}.png"
        im.save(p, transparency=im.info["transparency"]) if "transparency" in im.info else im.save(p)
        paths.append(p)
    rgb16 = (noise(19, 27, 9).astype(np.uint16) * 257 + np.uint16(3))      # 16 bits per channel, low bytes set
    p = d / "rgb16.png"
    _write_rgb16_png(p, rgb16)                                             # (PIL writes no 16-bit RGB from numpy)
    paths.append(p)
    grey16 = np.random.default_rng(13).integers(0, 65536, (11, 15)).astype(np.uint16)
    grey16[0, :4] = (100, 255, 256, 65535)                                 # PIL's I;16 -> RGB clamps at 255
    p = d / "grey16.png"
    Image.fromarray(grey16).save(p)
    paths.append(p)
    p = d / "interlaced.png"
    _write_interlaced_png(p, noise(13, 17, 10))
    paths.append(p)
    for orientation in range(1, 9):                                        # EXIF orientation in a PNG eXIf chunk
        exif = Image.Exif()
        exif[0x0112] = orientation
        p = d / f"exif{orientation}.png"
        Image.fromarray(noise(9, 14, 11)).save(p, exif=exif)
        paths.append(p)
    return paths


def _write_png(path: Path, height: int, width: int, depth: int, interlace: bool, raw: bytes) -> None:
    """A colour-type-2 (RGB) PNG of the given bit depth around `raw`, the filtered (filter 0) scanlines."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, int(interlace))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _write_rgb16_png(path: Path, rgb16: np.ndarray) -> None:
    h, w, _ = rgb16.shape
    _write_png(path, h, w, 16, False, b"".join(b"\0" + rgb16[y].astype(">u2").tobytes() for y in range(h)))


def _write_interlaced_png(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB PNG, Adam7-interlaced (PIL writes none): the seven passes' scanlines, one after the other."""
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    raw = b"".join(b"\0" + row.tobytes() for y0, x0, dy, dx in passes for row in rgb[y0::dy, x0::dx] if row.size)
    _write_png(path, rgb.shape[0], rgb.shape[1], 8, True, raw)


def test_load_image_is_transformers_load_image(tmp_path):
    """A path decodes as transformers' load_image (EXIF orientation applied, then convert("RGB")), and the
    processor handed that path gives our arrays."""
    for p in write_png_variants(tmp_path):
        rgb = load_image(p)
        want = np.asarray(hf_load_image(str(p)))
        assert rgb.dtype == np.uint8 and rgb.shape == want.shape and np.array_equal(rgb, want), p.name
    jpeg = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(noise(30, 50, 12)).save(jpeg, exif=exif, quality=90)
    assert load_image(jpeg).shape == (50, 30, 3)                          # orientation 6 turns it upright
    for p in (tmp_path / "exif6.png", jpeg):
        assert_same(preprocess(load_image(p), 140), str(p), 140, p.name)


def test_load_image_names_bad_files(tmp_path):
    with pytest.raises(ci.ImageError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ci.ImageError, match="text.png: not an image PIL can decode"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ci.ImageError, match=r"expected uint8 \[height, width, 3\]"):
        preprocess(np.zeros((4, 4), np.uint8))
    with pytest.raises(ci.ImageError, match="empty"):
        preprocess(np.zeros((0, 4, 3), np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# The Java core's golden
# ---------------------------------------------------------------------------------------------------------------

def test_java_golden_is_current():
    assert mig.GOLDEN.exists(), f"{mig.GOLDEN}: missing; run python tests/golden/make_image_golden.py"
    assert mig.GOLDEN.read_text() == mig.text(), \
        f"{mig.GOLDEN} is stale: the preprocessing changed; rerun tests/golden/make_image_golden.py and " \
        "android_demo/core/run_tests.sh"
    g = json.loads(mig.GOLDEN.read_text())
    vertical_first = [r for r in g["resizes"] if r["out"][0] < r["height"]
                      and r["height"] - r["out"][0] > 2 * (r["width"] - r["out"][1]) and r["out"][1] != r["width"]]
    assert vertical_first and len(vertical_first) < len(g["resizes"]), "the golden must take both pass orders"


def test_java_golden_images_equal_transformers():
    g = json.loads(mig.GOLDEN.read_text())
    for case in g["images"]:
        rgb = np.frombuffer(bytes.fromhex(case["rgb_hex"]), np.uint8).reshape(case["height"], case["width"], 3)
        for run in case["runs"]:
            assert_same(preprocess(rgb, run["budget"]), Image.fromarray(rgb), run["budget"], case["name"])


# ---------------------------------------------------------------------------------------------------------------
# The native host
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_tool() -> Path:
    return native.tool("gemma-edge-image-golden")


def run_tool(tool: Path, out: Path, *args: str) -> dict:
    p = subprocess.run([str(tool), *args, "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def native_prepared(tool: Path, tmp: Path, budget: int, *source: str):
    meta = run_tool(tool, tmp / "o", *source, "--budget", str(budget))
    h, w = meta["resized"]
    return (meta, np.fromfile(tmp / "o.decoded.u8", np.uint8).reshape(meta["height"], meta["width"], 3),
            np.fromfile(tmp / "o.resized.u8", np.uint8).reshape(h, w, 3),
            np.fromfile(tmp / "o.pixels.f32", "<f4").reshape(9 * budget, 768),
            np.fromfile(tmp / "o.positions.i64", "<i8").reshape(9 * budget, 2))


@pytest.mark.parametrize("budget", ci.SUPPORTED_BUDGETS)
def test_native_equals_python_from_rgb8(image_tool, tmp_path, budget):
    for i, (h, w) in enumerate(SIZES):
        rgb = noise(h, w, 100 + i)
        rgb.tofile(tmp_path / "in.rgb")
        meta, _, resized, pv, pos = native_prepared(image_tool, tmp_path, budget, "--rgb", str(tmp_path / "in.rgb"),
                                                    str(h), str(w))
        p = preprocess(rgb, budget)
        assert tuple(meta["resized"]) == p.size and meta["soft_tokens"] == p.soft_tokens
        assert np.array_equal(resized, resize_rgb8(rgb, *p.size)), f"{h}x{w} at {budget}: resized pixels differ"
        assert np.array_equal(pv, p.pixel_values), f"{h}x{w} at {budget}: pixel_values differ"
        assert np.array_equal(pos, p.positions), f"{h}x{w} at {budget}: positions differ"


def test_native_resampler_is_pillows_over_random_sizes(image_tool, tmp_path):
    """Any size pair, both pass orders (the vertical pass first when the height shrinks by more than twice what
    the width does), one-axis resizes, up and down."""
    rng = np.random.default_rng(5)
    orders = {"vertical first": 0, "horizontal first": 0}
    for _ in range(120):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 160, 4))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rgb.tofile(tmp_path / "in.rgb")
        run_tool(image_tool, tmp_path / "o", "--rgb", str(tmp_path / "in.rgb"), str(h), str(w), "--resize", str(oh),
                 str(ow))
        got = np.fromfile(tmp_path / "o.resized.u8", np.uint8).reshape(oh, ow, 3)
        assert np.array_equal(got, resize_rgb8(rgb, oh, ow)), f"{h}x{w} -> {oh}x{ow}: differs from PIL"
        if oh != h and ow != w:
            orders["vertical first" if oh < h and h - oh > 2 * (w - ow) else "horizontal first"] += 1
    assert min(orders.values()) >= 10, orders


def test_native_png_decode_equals_pil(image_tool, tmp_path):
    """PNG is lossless: stb's pixels (alpha dropped, grey replicated, palette expanded, 16 bits cut to their high
    byte, the EXIF orientation applied) are transformers' load_image's, and so are the arrays."""
    for p in write_png_variants(tmp_path):
        meta, decoded, _, pv, pos = native_prepared(image_tool, tmp_path, 70, "--image", str(p))
        rgb = load_image(p)
        assert np.array_equal(decoded, rgb), f"{p.name}: stb's pixels differ from PIL's"
        want = preprocess(rgb, 70)
        assert np.array_equal(pv, want.pixel_values) and np.array_equal(pos, want.positions), p.name


def test_native_jpeg_decodes_to_the_right_size_and_close(image_tool, tmp_path):
    """JPEG decoders differ (IDCT and chroma upsampling rounding: stb vs PIL's libjpeg-turbo), so only the size,
    the orientation and closeness are checked here; the arrays' identity is asserted from decoded RGB8 above.
    The bound: a smooth photo-like image decodes within a few levels on average, while a transposed, flipped
    or channel-swapped decode is off by tens."""
    y, x = np.mgrid[0:120, 0:200]
    smooth = np.stack([x * 255 // 199, y * 255 // 119, 128 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0)], -1)
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        p = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(smooth.astype(np.uint8)).save(p, exif=exif, quality=92)
        meta, decoded, *_ = native_prepared(image_tool, tmp_path, 280, "--image", str(p))
        want = load_image(p).astype(np.int16)
        assert decoded.shape == want.shape, f"{p.name}: {decoded.shape}, PIL {want.shape}"
        mean = np.abs(decoded.astype(np.int16) - want).mean()
        wrong = np.abs(decoded[:, :, ::-1].astype(np.int16) - want).mean()
        assert mean < 2.0 < wrong, f"{p.name}: mean |stb - PIL| {mean:.2f} (channel-swapped: {wrong:.2f})"


def test_native_refuses_bad_input(image_tool, tmp_path):
    (tmp_path / "t.png").write_text("not an image")
    (tmp_path / "trunc.png").write_bytes(_truncated_png())
    cases = [(["--image", str(tmp_path / "missing.png"), "--budget", "280"], "cannot open the image file"),
             (["--image", str(tmp_path / "t.png"), "--budget", "280"], "expected a PNG or JPEG image"),
             (["--image", str(tmp_path / "trunc.png"), "--budget", "280"], "trunc.png: cannot decode this PNG"),
             (["--image", str(tmp_path / "t.png"), "--budget", "300"],
              "image budget: expected one of 70, 140, 280, 560, 1120, found 300")]
    for args, message in cases:
        p = subprocess.run([str(image_tool), *args, "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert p.returncode == 2 and message in p.stderr, (args, p.returncode, p.stderr)


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(20, 20, 1)).save(buf, "PNG")
    return buf.getvalue()[:60]
