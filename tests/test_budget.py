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
