"""Tests of the memory budget and the phone simulator: counts against the model definition, KV rules, verdicts,
measured RSS."""
import json
import subprocess
import sys

import pytest
from conftest import json_at_end

from gemma_edge.contract.presets import preset
from gemma_edge.export.model import count_params
from gemma_edge.runtime.budget import (
    estimate,
    estimate_bundle,
    kv_cache_bytes,
    linear_bytes,
    load_devices,
    model_config,
    plot_budget,
)
from gemma_edge.runtime.phone import fetch_seconds, simulate


@pytest.mark.parametrize("name", ["tiny", "e2b", "e4b", "e2b-10l"])
def test_unquantized_weights_equal_the_model_definition(name):
    """fp32 program: every parameter once, the tied matrix twice (embedding + untied head), layer scalars."""
    cfg, _ = model_config(name)
    c = count_params(cfg)
    b = estimate(name, quant="none", embedding_quant="none")
    assert b.weight_bytes == 4 * (c["body"] + 2 * c["embedding"]) + 4 * cfg.num_hidden_layers


def test_8da4w_bytes_per_weight():
    assert linear_bytes(2048, 1536, "8da4w", 32) == 2048 * 1536 // 2 + 2048 * 1536 // 32 * 2
    assert linear_bytes(2048, 1536, "8da4w", 0) == 2048 * 1536 // 2 + 2048 * 2   # one bf16 scale per row
    grouped, channel, b8 = (estimate("e2b", quant="8da4w", group_size=32), estimate("e2b", quant="8da4w"),
                            estimate("e2b", quant="8da8w"))
    body = lambda b: b.weights["mlp"] + b.weights["attention"]  # noqa: E731
    assert 0.55 < body(grouped) / body(b8) < 0.58   # (0.5 + 2/32) / (1 + small) bytes per weight
    assert 0.49 < body(channel) / body(b8) < 0.51   # the per-channel default: (0.5 + small) / (1 + small)


def test_kv_cache_e2b_by_hand():
    """E2B owns K/V on 15 layers: 12 sliding (1 KV head × 256, a ring of window 512 + one 128-token chunk),
    3 full (1 × 512)."""
    cfg = preset("e2b")
    for ctx in (256, 1024, 8192):
        want = 4 * (12 * 2 * 256 * min(512 + 128, ctx) + 3 * 2 * 512 * ctx)
        assert kv_cache_bytes(cfg, ctx) == want
    # sliding layers stop growing at the window: doubling the context past it grows only the full layers
    assert kv_cache_bytes(cfg, 4096) - kv_cache_bytes(cfg, 2048) == 4 * 3 * 2 * 512 * 2048


def test_kv_shared_layers_cost_nothing():
    shared, unshared = preset("e2b"), preset("e2b", num_kv_shared_layers=0)
    assert kv_cache_bytes(unshared, 1024) > 2 * kv_cache_bytes(shared, 1024)


def test_big_model_shapes_match_published_parameter_counts():
    for name, published in (("26b-a4b", 25.2e9), ("31b", 30.7e9)):
        b = estimate(name, quant="none", embedding_quant="none")
        params = (b.weight_bytes - b.weights["embedding"]) / 4     # head once, as the published count does
        assert abs(params / published - 1) < 0.02, (name, params)
    cfg, moe = model_config("26b-a4b")
    assert moe["num_experts"] == 128 and cfg.layers[5].k_eq_v and cfg.layers[5].num_key_value_heads == 2


def test_verdicts():
    devices = load_devices()
    assert set(devices) >= {"pixel-8", "pixel-9", "galaxy-s24", "galaxy-s25", "midrange-6gb", "this-machine"}
    for d in devices.values():
        assert d["sources"], d["name"]
    e2b, big = estimate("e2b"), estimate("31b")
    v = e2b.verdict(devices["pixel-8"])
    assert v["fits"] and v["headroom_bytes"] == v["usable_bytes"] - e2b.ram_bytes
    assert not big.verdict(devices["pixel-9"])["fits"]
    assert estimate("e2b", context=32768).ram_bytes > e2b.ram_bytes


def test_flash_bytes_equal_the_written_ple(tiny_bundle):
    b = estimate_bundle(tiny_bundle)
    assert b.flash_ple == (tiny_bundle / "model.ple").stat().st_size


def test_simulator_matches_anchor_arithmetic():
    """anchors.md: 512 tokens × 3 pages at int8 on UFS 3.1 ≈ 15 ms issued together, ≈ 41 ms one by one."""
    dev = load_devices()["pixel-8"]
    assert fetch_seconds(1536, dev, 32) == pytest.approx(0.01536, rel=1e-6)
    assert fetch_seconds(1536, dev, 1) == pytest.approx(1536 / 37000, rel=1e-6)
    r = simulate(dev, prompt_tokens=512, prompt_pages=1536, row_pages=3, generated=10,
                 weight_bytes=1 << 30, kv_bytes_per_token=0, ram_needed=1 << 30, context_at_end=522)
    assert r.batched_fetch_s < r.per_token_fetch_s
    assert r.decode_ram_s == pytest.approx((1 << 30) / dev["mem_bandwidth_Bps"])


@pytest.mark.slow  # measures a child process's peak RSS
def test_predicted_rss_within_10_percent_of_measured(tiny_bundle):
    """A real run in a fresh process: VmHWM vs baseline + weights + KV + activations."""
    out = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "run", str(tiny_bundle), "--ids",
                          ",".join(str(i) for i in range(2, 40)), "--max-new-tokens", "16", "--json"],
                         capture_output=True, text=True, check=True).stdout
    r = json_at_end(out)   # the generated text may hold braces of its own
    assert abs(r["peak_rss"] / r["predicted_rss"] - 1) < 0.10, r


def test_budget_cli(tmp_path, capsys):
    from gemma_edge.cli import main

    assert main(["budget", "--model", "e2b", "--device", "pixel-8"]) == 0
    assert "fits" in capsys.readouterr().out
    assert main(["budget", "--model", "31b", "--device", "midrange-6gb", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdicts"]["midrange-6gb"]["fits"] is False
    png = plot_budget(tmp_path / "ram.png", "e2b", load_devices(), max_context=4096)
    assert png.stat().st_size > 1000


def test_budget_cli_counts_packed_copies_per_method(capsys):
    from gemma_edge.cli import main

    ram = {}
    for methods in ("one", "two"):
        main(["budget", "--model", "e2b", "--device", "pixel-8", "--json", "--methods", methods])
        ram[methods] = json.loads(capsys.readouterr().out)
    assert ram["one"]["packed_copies"] == 1 and ram["two"]["packed_copies"] == 2
    b = estimate("e2b")
    assert ram["two"]["ram_bytes"] - ram["one"]["ram_bytes"] == b.linear_bytes  # the linears packed once more


def test_vision_flops_equal_the_flop_counters():
    # ../shared/docs/gemma4-multimodal.md §4: torch.utils.flop_counter on the E2B tower, N = 9 · budget patches
    from gemma_edge.contract.presets import VISION_PRESETS
    from gemma_edge.runtime.budget import vision_budget

    counted = {70: 210e9, 140: 460e9, 280: 1076e9, 560: 2777e9, 1120: 8050e9}
    for budget, flops in counted.items():
        v = vision_budget(VISION_PRESETS["e2b"], budget)
        assert abs(v.flops - flops) / flops < 0.005, (budget, v.flops)


def test_vision_bytes_by_hand():
    from gemma_edge.contract.presets import VISION_PRESETS
    from gemma_edge.runtime.budget import vision_budget

    e = VISION_PRESETS["e2b"]
    v = vision_budget(e, 280, quant="8da8w", text_hidden=1536)
    layer = 4 * (768 * 768 + 4 * 768) + 2 * (3072 * 768 + 4 * 3072) + 768 * 3072 + 4 * 768   # int8 + fp32 scales
    assert v.weights["encoder_linears"] == 16 * layer and v.transient == layer
    assert v.weights["position_table"] == 2 * 10240 * 768 * 4
    assert v.packed == 16 * layer + (768 * 768 + 4 * 768) + (1536 * 768 + 4 * 1536)
    fp32 = vision_budget(e, 280, quant="none")
    assert fp32.weights["encoder_linears"] == 16 * 4 * (4 * 768 * 768 + 3 * 768 * 3072)
    # blocked queries bound the score matrices: unblocked, 1120's attention alone is heads × N² × 4 B = 4.9 GB
    blocked, unblocked = vision_budget(e, 1120), vision_budget(e, 1120, block_q=None)
    assert blocked.activations < 1.2e9 < 2 * 12 * 10080**2 * 4 < unblocked.activations
    assert vision_budget(e, 70).activations < v.activations < blocked.activations


def test_image_prompt_peak_counts_the_tower_over_the_loaded_decoder():
    from gemma_edge.contract.presets import VISION_PRESETS
    from gemma_edge.runtime.budget import estimate, vision_budget

    b = estimate("e2b")
    text = b.ram_bytes
    b.vision = vision_budget(VISION_PRESETS["e2b"], 1120)
    assert b.text_ram_bytes == text
    assert b.image_ram_bytes == b.resident_weight_bytes + b.kv_cache + b.runtime + b.vision.peak_bytes
    assert b.ram_bytes == max(text, b.image_ram_bytes) > text
    dev = load_devices()["pixel-8"]
    assert b.vision.encode_seconds(dev) == b.vision.flops / dev["int8_gemm_ops"]
    r = simulate(dev, prompt_tokens=300, prompt_pages=10, row_pages=1, generated=4, weight_bytes=1,
                 kv_bytes_per_token=1, ram_needed=b.ram_bytes, context_at_end=304, images=2,
                 encode_flops=b.vision.flops)
    assert r.encode_s == 2 * b.vision.flops / dev["int8_gemm_ops"]
    assert any("vision encode: 2 image(s)" in line for line in r.lines())


@pytest.mark.slow  # measures a child process's peak RSS
def test_predicted_rss_within_10_percent_of_measured_on_an_image_prompt(tiny_vision_bundle, tmp_path):
    from PIL import Image

    Image.fromarray(__import__("numpy").full((300, 90, 3), 128, "uint8")).save(tmp_path / "pic.png")
    out = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "run", str(tiny_vision_bundle), "--ids", "2,5,6",
                          "--image", str(tmp_path / "pic.png"), "--image-budget", "280", "--max-new-tokens", "8",
                          "--json"], capture_output=True, text=True, check=True).stdout
    r = json_at_end(out)
    assert r["images"] == 1 and abs(r["peak_rss"] / r["predicted_rss"] - 1) < 0.10, r
