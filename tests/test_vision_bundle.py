"""Issue 20, items 3 and 5: the vision program in the bundle — exported by default from a checkpoint with a tower,
bound to the model by the manifest, every exported budget usable, loaded only for an image and released after —
and image prompts run from the bundle as transformers runs them."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gemma_edge.contract import bundle_format as bf

SIZES = [(120, 200), (300, 90)]   # landscape and portrait: different soft-token counts and padding


def pictures(seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def vision_entry(tiny_bundle) -> dict:
    """tiny_bundle's manifest (a text-only revision-6 bundle) given a vision entry that validates."""
    m = json.loads((tiny_bundle / bf.MANIFEST_FILE).read_text())
    m["files"]["vision"] = {"path": bf.VISION_FILE, "bytes": 1, "sha256": "0" * 64}
    vocab = m["vocab_size"]
    m["vision"] = bf.vision_entry(model_hash=bytes.fromhex(m["model_hash"]), budgets=[70, 280],
                                  hidden_size=m["config"]["hidden_size"], patch_dim=768,
                                  image_tokens={"boi": vocab - 3, "image": vocab - 2, "eoi": vocab - 1},
                                  quantization="8da8w", block_q=512,
                                  config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                              position_embedding_size=10240),
                                  activation_bytes={70: 1 << 20, 280: 1 << 24})
    return m


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["files"].pop("vision"), "files.vision: missing, but vision is present"),
    (lambda m: m.pop("vision"), "vision: missing, but files.vision is present"),
    (lambda m: m["vision"].__setitem__("model_hash", "1" * 64), "vision.model_hash: expected"),
    (lambda m: m["vision"].__setitem__("budgets", [280, 70]), "vision.budgets: expected a sorted list"),
    (lambda m: m["vision"].__setitem__("budgets", [100]), "vision.budgets: expected a sorted list"),
    (lambda m: m["vision"].__setitem__("budgets", []), "vision.budgets: expected a sorted list"),
    (lambda m: m["vision"]["methods"].pop("280"), "vision.methods: expected one method per budget"),
    (lambda m: m["vision"]["methods"].__setitem__("70", 7), "vision.methods.70: expected a method name"),
    (lambda m: m["vision"].__setitem__("hidden_size", 65), "vision.hidden_size: expected 64"),
    (lambda m: m["vision"]["image_tokens"].__setitem__("image", 512), r"vision.image_tokens.image: expected a token"),
    (lambda m: m["vision"]["image_tokens"].__setitem__("eoi", 509), "vision.image_tokens: expected three distinct"),
    (lambda m: m["vision"].__setitem__("quantization", "8w"), "vision.quantization: expected 8da8w or 8da4w"),
    (lambda m: m["vision"].__setitem__("block_q", 0), "vision.block_q: expected a positive row count"),
    (lambda m: m["export"].__setitem__("program_revision", 5), "export.program_revision: expected ≥ 6"),
    (lambda m: m["files"]["vision"].__setitem__("path", "../vision.pte"), "files.vision.path"),
    (lambda m: m["vision"].pop("config"), "vision.config: expected the tower's vision_config"),
    (lambda m: m["vision"]["config"].__setitem__("head_dim", 0), "vision.config.head_dim"),
    (lambda m: m["vision"]["activation_bytes"].pop("70"), "vision.activation_bytes: expected bytes per budget"),
    (lambda m: m["vision"]["activation_bytes"].__setitem__("70", -1), "vision.activation_bytes.70"),
])
def test_manifest_vision_entry_is_validated(tiny_bundle, edit, message):
    m = vision_entry(tiny_bundle)
    bf.validate_manifest(json.loads(json.dumps(m)), tiny_bundle)   # the unedited entry is accepted
    edit(m)
    with pytest.raises(bf.BundleError, match=message):
        bf.validate_manifest(m, tiny_bundle)


@pytest.mark.slow
def test_export_writes_the_vision_program(tiny_vision_bundle, tiny_vision_checkpoint):
    from executorch.runtime import Runtime

    from gemma_edge.export.checkpoint import model_hash

    m = bf.read_manifest(tiny_vision_bundle)
    v = m["vision"]
    assert v["model_hash"] == m["model_hash"] == model_hash(tiny_vision_checkpoint).hex()
    assert v["budgets"] == [70, 280] and v["methods"] == {"70": "vision_70", "280": "vision_280"}
    assert v["quantization"] == "none" and v["hidden_size"] == m["config"]["hidden_size"]
    assert bf.sha256_file(tiny_vision_bundle / bf.VISION_FILE) == m["files"]["vision"]["sha256"]
    assert [s["stage"] for s in m["export"]["stages"]].count("lower_vision") == 1
    assert 0 < v["activation_bytes"]["70"] < v["activation_bytes"]["280"]
    program = Runtime.get().load_program(tiny_vision_bundle / bf.VISION_FILE)
    assert program.method_names == {"vision_70", "vision_280"}
    for b in (70, 280):
        meta = program.metadata(f"vision_{b}")
        assert list(meta.input_tensor_meta(0).sizes()) == [1, 9 * b, 768]
        assert list(meta.input_tensor_meta(1).sizes()) == [1, 9 * b, 2]
        assert list(meta.output_tensor_meta(0).sizes()) == [1, b, v["hidden_size"]]


@pytest.mark.slow
@pytest.mark.parametrize("budget", [70, 280])
def test_every_exported_budget_equals_the_eager_tower(tiny_vision_bundle, tiny_vision_checkpoint, budget):
    from gemma_edge.runtime.image import preprocess
    from gemma_edge.runtime.vision import EagerVisionEncoder, ProgramVisionEncoder

    program = ProgramVisionEncoder(tiny_vision_bundle, bf.read_manifest(tiny_vision_bundle))
    eager = EagerVisionEncoder(tiny_vision_checkpoint)
    for pic in pictures():
        p = preprocess(pic, budget)
        got, want = program.encode(p), eager.encode(p)
        assert got.shape == want.shape == (p.soft_tokens, program.hidden) and p.soft_tokens < budget  # padded
        assert float(np.abs(got - want).max()) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("budget", [70, 280])
def test_bundle_generates_from_images_as_transformers(tiny_vision_bundle, tiny_vision_checkpoint, budget):
    """Two images at their placeholders, the unquantized bundle (vision program, step, fp32 .ple): 16 greedy
    tokens equal to Gemma4ForConditionalGeneration.generate's."""
    from transformers import Gemma4ForConditionalGeneration

    from gemma_edge.runtime.image import preprocess
    from gemma_edge.runtime.session import Session

    m = bf.read_manifest(tiny_vision_bundle)
    t = m["vision"]["image_tokens"]
    pics = pictures()
    prepared = [preprocess(p, budget) for p in pics]
    text = [2, 17, 33, t["image"], 40, 41, t["image"], 99]
    full = []
    counts = iter(p.soft_tokens for p in prepared)
    for tok in text:
        full += [t["boi"]] + [t["image"]] * next(counts) + [t["eoi"]] if tok == t["image"] else [tok]
    hf = Gemma4ForConditionalGeneration.from_pretrained(tiny_vision_checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(input_ids=torch.tensor([full]),
                           pixel_values=torch.from_numpy(np.stack([p.pixel_values for p in prepared])),
                           image_position_ids=torch.from_numpy(np.stack([p.positions for p in prepared])),
                           max_new_tokens=16, min_new_tokens=16, do_sample=False)[0, len(full):].tolist()
    with Session(tiny_vision_bundle) as s:
        got = [g.token for g in s.generate(text, 16, images=pics, image_budget=budget, stop_on_eos=False)]
        st = s.last_run
        assert st.prompt_tokens == len(full) and st.images == 2 and st.prompt_fetches == 1
        assert st.prompt_fetched == [m["pad_token_id"] or 0 if tok == t["image"] else tok for tok in full]
        assert st.prompt_fetch.unique_rows == len(set(st.prompt_fetched))   # each image costs one row, row 0
        assert 0 < st.encode_s < st.ttft_s
        assert s.vision._program is None and not s.vision._loaded   # released after encoding
    assert got == want


@pytest.mark.slow
def test_text_runs_never_read_the_vision_program(tiny_vision_bundle, tmp_path):
    """A damaged vision.pte of the right size: a fast-verified session opens and runs text without reading it;
    the first image is refused naming files.vision.sha256; verify="full" refuses the bundle at once."""
    from gemma_edge.runtime.session import GenerationError, Session

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_vision_bundle, bundle)
    data = bytearray((bundle / bf.VISION_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / bf.VISION_FILE).write_bytes(bytes(data))
    with Session(bundle) as s:
        assert len(list(s.generate([2, 5, 6], 4))) == 4
        assert s.vision._program is None
        with pytest.raises(bf.BundleError, match=r"vision.pte: sha256: expected [0-9a-f]{64} \(manifest files"
                                                 r".vision.sha256\)"):
            list(s.generate([2, 5, 6], 4, images=pictures()[:1], image_budget=70))
        with pytest.raises(GenerationError, match=r"image_budget: expected one of \[70, 280\]") as e:
            list(s.generate([2, 5, 6], 4, images=pictures()[:1], image_budget=140))
        assert e.value.field == "image_budget"
    with pytest.raises(bf.BundleError, match="vision.pte: sha256: expected"):
        Session(bundle, verify="full")


@pytest.mark.slow
def test_no_vision_exports_a_text_only_bundle(tiny_vision_bundle, tiny_vision_checkpoint, tmp_path):
    from conftest import TINY_VISION_EXPORT

    from gemma_edge.export.exporter import ExportSettings, export_bundle
    from gemma_edge.runtime.session import GenerationError, Session

    out = export_bundle(tiny_vision_checkpoint, tmp_path / "text", ExportSettings(**{**TINY_VISION_EXPORT,
                                                                                      "vision": False}),
                        progress=False, reuse_program=tiny_vision_bundle)
    m = bf.read_manifest(out)
    assert "vision" not in m and "vision" not in m["files"] and not (out / bf.VISION_FILE).exists()
    with Session(out) as s:
        with pytest.raises(GenerationError, match="has no vision tower") as e:
            list(s.generate([2, 5], 2, images=pictures()[:1], image_budget=70))
        assert e.value.field == "images"


@pytest.mark.slow
def test_cli_run_with_an_image(tiny_vision_bundle, tmp_path):
    from conftest import json_at_end
    from PIL import Image

    from gemma_edge.cli import main

    Image.fromarray(pictures()[0]).save(tmp_path / "pic.png")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["run", str(tiny_vision_bundle), "--ids", "2,5,6", "--image", str(tmp_path / "pic.png"),
                   "--image-budget", "70", "--max-new-tokens", "4", "--json"])
    assert rc == 0
    r = json_at_end(out.getvalue())
    assert r["images"] == 1 and r["prompt_tokens"] == 3 + 2 + 60 and len(r["tokens"]) == 4 and r["encode_s"] > 0
    assert "1 image(s) encoded in" in out.getvalue()
