"""Issue 20 item 1: the vision tower against transformers' `get_image_features`, its config, its loader's errors,
and the specs random checkpoints write it from."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma_edge import procfs
from gemma_edge.contract.config import ConfigError
from gemma_edge.contract.image import ImageTokens
from gemma_edge.contract.presets import preset
from gemma_edge.export import checkpoint as checkpoint_module
from gemma_edge.export.checkpoint import CheckpointError
from gemma_edge.export.vision import (
    CLIP_BOUNDS,
    VisionConfig,
    load_vision_tower,
    random_vision_values,
    vision_tensor_specs,
)

TOL = 1e-4  # fp32 soft tokens, ours vs transformers (issue 20)

# Tiny towers with the processor's constants (patch 16, pooling 3) and the real position table, so every budget's
# images fit. "e": E2B/E4B-shaped (MHA, clipped linears). "variant": GQA, theta 50, no clipping, standardized.
TOWERS = {
    "e": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=2, head_dim=16, use_clipped_linears=True),
    "variant": dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=12, use_clipped_linears=False, standardize=True,
                    rope_parameters={"rope_type": "axial", "rope_theta": 50.0}),
}
# (budget, image sizes as (height, width)): wide, tall, square, tiny (scaled up), all padded up to 9 × budget.
CASES = {
    "70-wide-tall": (70, [(60, 100), (100, 2000), (1000, 90)]),
    "140-4:3": (140, [(480, 640)]),
    "280-square-tiny": (280, [(1024, 1024), (64, 64)]),
    "560-16:9": (560, [(1080, 1920)]),
}


def image_inputs(budget: int, sizes, seed: int = 0):
    """What transformers' processor gives the model: (pixel_values [B, 9·budget, 768], positions [B, 9·budget, 2])."""
    from PIL import Image
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    out = Gemma4ImageProcessorPil(max_soft_tokens=budget)(images=images, return_tensors="pt")
    return out["pixel_values"], out["image_position_ids"]


def calibrate_clip_bounds(hf_model) -> None:
    """Clip bounds that bind in every clipped linear: asymmetric fractions of the largest value each one sees
    on a calibration image (finite bounds, unlike transformers' ±inf defaults)."""
    linears = {n: m for n, m in hf_model.model.vision_tower.named_modules()
               if type(m).__name__ == "Gemma4ClippableLinear"}
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0].abs().max(), o.abs().max())))
             for n, m in linears.items()]
    with torch.no_grad():
        hf_model.model.get_image_features(*image_inputs(70, [(90, 120)], seed=1))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for n, m in linears.items():
            x_max, y_max = seen[n]
            m.input_min.fill_(-0.5 * x_max), m.input_max.fill_(0.7 * x_max)
            m.output_min.fill_(-0.6 * y_max), m.output_max.fill_(0.8 * y_max)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """name -> (name, transformers Gemma4ForConditionalGeneration, its saved folder, our tower loaded from it),
    each built on first use."""
    built: dict[str, tuple] = {}

    def get(name: str):
        if name not in built:
            built[name] = build_tower(name, tmp_path_factory.mktemp(f"vision-{name}") / "checkpoint")
        return built[name]
    return get


@pytest.fixture(params=sorted(TOWERS))
def tower(request, towers):
    return towers(request.param)


@pytest.fixture
def e_tower(towers):
    return towers("e")


def build_tower(name: str, path):
    import transformers

    torch.manual_seed(0)
    text = preset("tiny").to_hf()
    vision = transformers.Gemma4VisionConfig(**TOWERS[name])
    hf = transformers.Gemma4ForConditionalGeneration(
        transformers.Gemma4Config(text_config=text.to_dict(), vision_config=vision, audio_config=None,
                                  **ImageTokens.for_vocab(text.vocab_size).to_dict())).eval()
    with torch.no_grad():
        for name, p in [*hf.model.vision_tower.named_parameters(), *hf.model.embed_vision.named_parameters()]:
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
        for name, b in hf.model.vision_tower.named_buffers():
            if name.startswith("std_"):
                b.copy_(0.3 * torch.randn_like(b) + (1.0 if name == "std_scale" else 0.0))
    if vision.use_clipped_linears:
        calibrate_clip_bounds(hf)
    hf.save_pretrained(path)
    return name, hf, path, load_vision_tower(path)


def max_delta(ours, ref) -> float:
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in ref]
    return max(float((a - b).abs().max()) for a, b in zip(ours, ref))


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("case", sorted(CASES))
def test_soft_tokens_match_transformers(tower, case):
    _, hf, _, ours = tower
    pixels, positions = image_inputs(*CASES[case])
    assert (positions == -1).all(-1).any(-1).all()  # every image of every case is padded
    with torch.no_grad():
        ref = hf.model.get_image_features(pixels, positions).pooler_output
        got = ours(pixels, positions)
    assert [len(t) for t in got] == [int((p != -1).all(-1).sum()) // 9 for p in positions]
    assert max_delta(got, ref) <= TOL


def test_unpadded_image_matches_transformers(tower):
    _, hf, _, ours = tower
    pixels, positions = image_inputs(70, [(60, 100)])
    real = int((positions[0] != -1).all(-1).sum())
    pixels, positions = pixels[:, :real], positions[:, :real]  # 540 real patches, no padding: 60 soft tokens
    with torch.no_grad():
        assert max_delta(ours(pixels, positions), hf.model.get_image_features(pixels, positions).pooler_output) <= TOL


@pytest.mark.slow
def test_largest_budget_matches_transformers(tower):
    _, hf, _, ours = tower
    pixels, positions = image_inputs(1120, [(100, 2000), (1584, 1584)])
    with torch.no_grad():
        assert max_delta(ours(pixels, positions), hf.model.get_image_features(pixels, positions).pooler_output) <= TOL


def test_clip_bounds_bind(e_tower):
    """The parity cases exercise the clamps: without them the 'e' tower's soft tokens move far past TOL."""
    _, _, path, ours = e_tower
    pixels, positions = image_inputs(*CASES["140-4:3"])
    unclipped = load_vision_tower(path)
    for m in unclipped.modules():
        if getattr(m, "clipped", False):
            m.clipped = False
    with torch.no_grad():
        assert max_delta(unclipped(pixels, positions), ours(pixels, positions)) > 100 * TOL


def test_encode_is_fixed_shape_with_valid_tokens_first(tower):
    _, _, _, ours = tower
    pixels, positions = image_inputs(*CASES["70-wide-tall"])
    with torch.no_grad():
        soft, valid = ours.encode(pixels, positions)
        per_image = ours(pixels, positions)
    assert soft.shape == (3, 70, ours.cfg.text_hidden_size) and valid.shape == (3, 70)
    for i, t in enumerate(per_image):
        assert valid[i].tolist() == [True] * len(t) + [False] * (70 - len(t))
        assert torch.equal(soft[i, :len(t)], t)


def test_bad_inputs_are_refused(tower):
    _, _, _, ours = tower
    pixels, positions = image_inputs(70, [(60, 100)])
    with pytest.raises(ValueError, match=r"pixel_values: expected a positive multiple of 9 patches"):
        ours(pixels[:, :100], positions[:, :100])
    with pytest.raises(ValueError, match=r"pixel_values: expected \[batch, patches, 768\]"):
        ours(pixels[..., :700], positions)
    bad = positions.clone()
    bad[0, 3] = torch.tensor([5, -1])
    with pytest.raises(ValueError, match=r"pixel_position_ids\[0, 3\]: expected \(x, y\) in \[0, 10240\)"):
        ours(pixels, bad)
    with pytest.raises(ValueError, match=r"pixel_position_ids\[0\]: every patch is padding"):
        ours(pixels, torch.full_like(positions, -1))
    with pytest.raises(ValueError, match=r"pixel_position_ids\[0\]: 539 real patches do not tile"):
        ours(pixels, torch.where(torch.arange(630)[None, :, None] == 539, -1, positions))


# ---------------------------------------------------------------- config
def test_config_reads_what_transformers_wrote(tower):
    import transformers

    name, hf, path, _ = tower
    cfg = VisionConfig.from_json(path / "config.json")
    assert cfg.text_hidden_size == preset("tiny").hidden_size
    back = transformers.Gemma4VisionConfig(**{k: v for k, v in cfg.to_dict().items() if k != "model_type"})
    for key, value in hf.config.vision_config.to_dict().items():
        if key not in ("transformers_version", "dtype", "initializer_range", "max_position_embeddings",
                       "attention_bias", "attention_dropout"):  # keys the tower's shape and math do not read
            assert getattr(back, key) == value, key


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("vision_config"), r"vision_config: expected the vision tower's config .* text-only"),
    (lambda d: d["vision_config"].pop("head_dim"), r"missing required key\(s\) \['vision_config.head_dim'\]"),
    (lambda d: d["vision_config"].update(num_key_value_heads=3), r"vision_config.num_key_value_heads: expected a "
                                                                  r"divisor of num_attention_heads \(2\), found 3"),
    (lambda d: d["vision_config"].update(head_dim=18), r"vision_config.head_dim: expected a multiple of 4"),
    (lambda d: d["vision_config"].update(hidden_size="32"), r"vision_config.hidden_size: expected an integer ≥ 1, "
                                                             r"found '32'"),
    (lambda d: d["vision_config"].update(pooling_kernel_size=1), r"vision_config.pooling_kernel_size: expected an "
                                                                  r"integer ≥ 2, found 1"),
    (lambda d: d["vision_config"].update(rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
     r"vision_config.rope_parameters.rope_type: expected 'axial', found 'default'"),
    (lambda d: d["vision_config"].update(use_clipped_linears=1), r"vision_config.use_clipped_linears: expected true "
                                                                  r"or false, found 1"),
    (lambda d: d["vision_config"].update(model_type="siglip_vision_model"),
     r"vision_config.model_type: expected 'gemma4_vision', found 'siglip_vision_model'"),
])
def test_config_errors_name_file_and_field(e_tower, tmp_path, edit, message):
    raw = json.loads((e_tower[2] / "config.json").read_text())
    edit(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'config.json'}: {message}"):
        VisionConfig.from_json(tmp_path / "config.json")


# ---------------------------------------------------------------- loading
def edited_checkpoint(src, dst, edit):
    """A copy of checkpoint `src` whose tensors `edit(dict)` changed."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


LAYER0 = "model.vision_tower.encoder.layers.0."


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop(LAYER0 + "self_attn.q_norm.weight"),
     r"missing 1 key\(s\) \['model.vision_tower.encoder.layers.0.self_attn.q_norm.weight'\], unexpected 0"),
    (lambda t: t.pop("model.embed_vision.embedding_projection.weight"),
     r"missing 1 key\(s\) \['model.embed_vision.embedding_projection.weight'\]"),
    (lambda t: t.update({"model.vision_tower.encoder.layers.7.mlp.up_proj.linear.weight": torch.zeros(2)}),
     r"missing 0 key\(s\) \[\], unexpected 1 key\(s\) \['model.vision_tower.encoder.layers.7.mlp.up_proj"),
    (lambda t: t.update({LAYER0 + "mlp.down_proj.linear.weight": torch.zeros(32, 65)}),
     r"tensor model.vision_tower.encoder.layers.0.mlp.down_proj.linear.weight has shape \[32, 65\], config.json's "
     r"vision_config needs \[32, 64\]"),
    (lambda t: t.update({LAYER0 + "self_attn.k_proj.input_max": torch.tensor(3)}),
     r"tensor model.vision_tower.encoder.layers.0.self_attn.k_proj.input_max has dtype torch.int64"),
])
def test_bad_checkpoints_name_the_key(e_tower, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_vision_tower(edited_checkpoint(e_tower[2], tmp_path / "ckpt", edit))


def test_pooler_scale_is_tolerated(e_tower, tmp_path):
    _, _, src, ours = e_tower
    path = edited_checkpoint(src, tmp_path / "ckpt",
                             lambda t: t.update({"model.vision_tower.pooler.scale": torch.ones(1, 1, 32)}))
    again = load_vision_tower(path)
    pixels, positions = image_inputs(70, [(60, 100)])
    with torch.no_grad():
        assert max_delta(again(pixels, positions), ours(pixels, positions)) == 0.0


def test_each_tensor_read_once_and_never_copied(tower, monkeypatch):
    """dtype=None: every parameter and buffer is the shard's own mapping (built on meta, nothing copied), and
    each checkpoint tensor of the tower is read exactly once, no text tensor at all."""
    _, hf, path, _ = tower
    reads: list[str] = []
    real_open = checkpoint_module.safe_open

    class CountingShard:
        def __init__(self, *args, **kwargs):
            self.shard = real_open(*args, **kwargs)

        def __enter__(self):
            self.shard.__enter__()
            return self

        def __exit__(self, *exc):
            return self.shard.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.shard, name)

        def get_tensor(self, key):
            reads.append(key)
            return self.shard.get_tensor(key)

    monkeypatch.setattr(checkpoint_module, "safe_open", CountingShard)
    ours = load_vision_tower(path)
    expected = [k for k in hf.state_dict() if k.startswith(("model.vision_tower.", "model.embed_vision."))]
    assert sorted(reads) == sorted(expected)
    tensors = dict(ours.state_dict())
    assert len(tensors) == len(expected)
    for key, t in tensors.items():
        mapping = procfs.file_mapping_at(t.data_ptr())
        assert mapping is not None and mapping[2] == str(path / "model.safetensors"), key


def test_bf16_load_casts_every_tensor_and_matches_transformers(tower):
    _, hf, path, _ = tower
    ours = load_vision_tower(path, dtype=torch.bfloat16)
    ref = hf.state_dict()
    for key, t in ours.state_dict().items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, ref["model." + key].to(torch.bfloat16)), key
    # transformers' own bf16 load (from_pretrained keeps its RoPE frequencies fp32, as axial_rope does): the same
    # casts in the same places give the same soft tokens.
    hf16 = type(hf).from_pretrained(path, dtype=torch.bfloat16).eval()
    pixels, positions = image_inputs(*CASES["70-wide-tall"])
    with torch.no_grad():
        got, ref = ours(pixels, positions), hf16.model.get_image_features(pixels, positions).pooler_output
    assert all(t.dtype == torch.bfloat16 for t in got)
    assert max_delta([t.float() for t in got], [t.float() for t in ref]) <= TOL


def test_decoder_loader_leaves_the_tower_alone(e_tower):
    """The decoder reads the same folder and sets exactly the tower's tensors aside (checkpoint.py unchanged)."""
    from gemma_edge.export.checkpoint import load_checkpoint, open_checkpoint

    _, hf, path, _ = e_tower
    load_checkpoint(path)
    tower_keys = {k for k in hf.state_dict() if k.startswith(("model.vision_tower.", "model.embed_vision."))}
    assert set(open_checkpoint(path).ignored) == tower_keys


def test_text_only_checkpoint_is_refused(tiny_checkpoint):
    with pytest.raises(ConfigError, match=r"config.json: model_type: expected 'gemma4' \(a checkpoint with a vision"):
        load_vision_tower(tiny_checkpoint)


# ---------------------------------------------------------------- random checkpoints
E_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                num_key_value_heads=12, head_dim=64, patch_size=16, pooling_kernel_size=3,
                position_embedding_size=10240, use_clipped_linears=True, standardize=False,
                rope_parameters={"rope_type": "axial", "rope_theta": 100.0})


def test_specs_are_transformers_tensors(tower):
    name, hf, _, ours = tower
    specs = vision_tensor_specs(ours.cfg)
    ref = {k: tuple(t.shape) for k, t in hf.state_dict().items()
           if k.startswith(("model.vision_tower.", "model.embed_vision."))}
    assert {k: s.shape for k, s in specs.items()} == ref


def test_full_size_specs_count_the_published_parameters():
    for text_hidden, embed in ((1536, 1_179_648), (2560, 1_966_080)):  # E2B, E4B
        specs = vision_tensor_specs(VisionConfig.from_dict(E_VISION, text_hidden, strict=True))
        clips = [k for k in specs if k.endswith(CLIP_BOUNDS)]
        tower = sum(np.prod(s.shape) for k, s in specs.items() if k.startswith("model.vision_tower.")) - len(clips)
        assert (tower, len(clips)) == (167_364_608, 448)
        assert np.prod(specs["model.embed_vision.embedding_projection.weight"].shape) == embed


def write_tower_checkpoint(path, **vision) -> VisionConfig:
    """A bf16 checkpoint of the tower alone (config.json with the tiny decoder's text_config), drawn from the specs
    and random_vision_values as random-checkpoint draws it."""
    cfg = VisionConfig.from_dict({**E_VISION, **vision}, preset("tiny").hidden_size, strict=True)
    gen = torch.Generator().manual_seed(0)
    tensors = {key: random_vision_values(key, spec.shape or (1,), gen, slice(0, (spec.shape or (1,))[0]))
               .reshape(spec.shape).to(torch.bfloat16) for key, spec in vision_tensor_specs(cfg).items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"model_type": "gemma4", "text_config": preset("tiny").to_dict(),
                                                  "vision_config": cfg.to_dict(),
                                                  **ImageTokens.for_vocab(preset("tiny").vocab_size).to_dict()}))
    return cfg


# Run in a fresh process: an earlier test's freed memory, kept by the allocator, would hide what a load allocates.
_PEAK_OF_LOAD = """
import sys, torch
from gemma_edge import procfs
from gemma_edge.export.vision import load_vision_tower
assert procfs.reset_peak_rss()
before = procfs.proc_status()["VmRSS"]
ours = load_vision_tower(sys.argv[1], dtype=torch.float32)
print(sum(t.numel() * t.element_size() for t in ours.state_dict().values()), procfs.proc_status()["VmHWM"] - before)
"""


def test_cast_load_peaks_at_the_weights(tmp_path):
    """Casting bf16 -> fp32, peak RSS grows by the fp32 weights and little more: not by a second copy held beside
    them (2×) nor by the bf16 file pages the casts read (kept resident: 1.5×)."""
    import subprocess
    import sys

    write_tower_checkpoint(tmp_path, hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                           num_attention_heads=8, num_key_value_heads=8, head_dim=64, position_embedding_size=512)
    out = subprocess.run([sys.executable, "-c", _PEAK_OF_LOAD, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    weights, grown = (int(v) for v in out.stdout.split())
    assert weights > 90 << 20 and grown < 1.25 * weights, (weights, grown)


def test_random_values_load_and_run(tmp_path):
    """A tower drawn as random-checkpoint draws it loads, its clip bounds are finite with min < max, and its soft
    tokens are finite."""
    write_tower_checkpoint(tmp_path, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    ours = load_vision_tower(tmp_path, dtype=torch.float32)
    for m in ours.modules():
        if getattr(m, "clipped", False):
            assert torch.isfinite(torch.stack([getattr(m, b) for b in CLIP_BOUNDS])).all()
            assert m.input_min < m.input_max and m.output_min < m.output_max
    pixels, positions = image_inputs(280, [(480, 640)])
    with torch.no_grad():
        (soft,) = ours(pixels, positions)
    assert soft.shape == (266, 64) and torch.isfinite(soft).all() and soft.abs().max() > 0


def test_random_checkpoint_writes_the_tower(tmp_path):
    """`gemma-edge random-checkpoint --multimodal`'s writer: the decoder and the tower both load from one folder,
    transformers reads the tower to the same soft tokens, clip bounds are finite, rows 0 of E and E_ple non-zero.
    Needs the hook of work_dirs/helpers/issue20_vision_hook.patch in random_checkpoint.py and presets.py."""
    import transformers

    from gemma_edge.contract.presets import VISION_PRESETS
    from gemma_edge.export.checkpoint import load_checkpoint
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    path = write_random_checkpoint(tmp_path / "ckpt", preset("tiny"), dtype=torch.float32, multimodal=True,
                                   vision_config=VISION_PRESETS["tiny"], tokenizer=False, progress=False)
    _, decoder = load_checkpoint(path)
    for table in (decoder.model.embed_tokens.weight, decoder.model.embed_tokens_per_layer.weight):
        assert table[0].abs().min() > 0
    ours = load_vision_tower(path)
    for m in ours.modules():
        if getattr(m, "clipped", False):
            assert torch.isfinite(torch.stack([getattr(m, b) for b in CLIP_BOUNDS])).all()
            assert m.input_min < m.input_max and m.output_min < m.output_max
    hf = transformers.Gemma4ForConditionalGeneration.from_pretrained(path).eval()
    pixels, positions = image_inputs(*CASES["70-wide-tall"])
    with torch.no_grad():
        assert max_delta(ours(pixels, positions), hf.model.get_image_features(pixels, positions).pooler_output) <= TOL
