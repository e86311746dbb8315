"""Issue 2: config facts, parity of our decoder with transformers, and checkpoint loading."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gemma_edge.contract.config import FULL, SLIDING, ConfigError, TextConfig
from gemma_edge.contract.presets import preset
from gemma_edge.export.checkpoint import CheckpointError, load_checkpoint, ple_row_chunks
from gemma_edge.export.model import build_model, count_params
from gemma_edge.export.parity import hf_logits, ours_cached_logits, random_hf_model
from gemma_edge.export.random_checkpoint import write_random_checkpoint

TOL = 1e-4  # fp32 logits, ours vs transformers (issue 2)


# ---------------------------------------------------------------- config
def test_e2b_per_layer_facts():
    cfg = preset("e2b")
    assert [s.index for s in cfg.layers if s.layer_type == FULL] == list(range(4, 35, 5))
    modes = {s.index: s.kv_mode for s in cfg.layers if s.kv_mode}
    assert modes[13] == "store" and modes[14] == "store"
    assert [i for i, m in modes.items() if m == "reuse"] == list(range(15, 35))
    for s in cfg.layers:
        assert s.head_dim == (512 if s.layer_type == FULL else 256)
        assert s.intermediate_size == (12288 if s.index >= 15 else 6144)
        assert s.kv_source == (s.index if s.index < 15 else 13 if s.is_sliding else 14)
        assert s.rope_theta == (1e6 if s.layer_type == FULL else 1e4)
    assert sum(s.owns_kv for s in cfg.layers) == 15


def test_e4b_per_layer_facts():
    cfg = preset("e4b")
    assert [s.index for s in cfg.layers if s.layer_type == FULL] == list(range(5, 42, 6))
    assert {s.kv_source for s in cfg.layers if not s.owns_kv} == {22, 23}
    assert all(s.intermediate_size == 10240 and s.num_key_value_heads == 2 for s in cfg.layers)


def test_param_budget_matches_published_sizes():
    e2b, e4b = count_params(preset("e2b")), count_params(preset("e4b"))
    assert round(e2b["ple_table"] / 1e9, 3) == 2.349 and round(e4b["ple_table"] / 1e9, 3) == 2.819
    assert round(e2b["embedding"] / 1e9, 3) == 0.403 and round(e4b["embedding"] / 1e9, 3) == 0.671
    assert round(e2b["body"] / 1e9, 3) == 1.877 and round(e4b["body"] / 1e9, 3) == 3.973


def test_hf_config_json_loads_unchanged(tmp_path):
    cfg = preset("tiny-e4b")
    cfg.to_hf().save_pretrained(tmp_path)  # transformers' own JSON (per_layer_config, extra keys)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["some_future_key"] = 1
    ours = TextConfig.from_dict(raw)
    assert [(s.head_dim, s.num_key_value_heads, s.kv_mode) for s in ours.layers] == \
           [(s.head_dim, s.num_key_value_heads, s.kv_mode) for s in cfg.layers]
    nested = TextConfig.from_dict({"model_type": "gemma4", "text_config": raw, "vision_config": {}})
    assert nested.layers == ours.layers


def test_last_layer_forced_full_and_bad_configs():
    cfg = TextConfig(num_hidden_layers=3, layer_types=[SLIDING] * 3, num_kv_shared_layers=0)
    assert cfg.layer_types[-1] == FULL
    with pytest.raises(ConfigError, match="layer_types"):
        TextConfig(num_hidden_layers=3, layer_types=[SLIDING] * 2)
    with pytest.raises(ConfigError, match="enable_moe_block"):
        TextConfig(enable_moe_block=True)
    with pytest.raises(ConfigError, match="owns K/V"):  # shared full layer with no full producer
        TextConfig(num_hidden_layers=3, layer_types=[SLIDING, SLIDING, FULL], num_kv_shared_layers=1)


# ---------------------------------------------------------------- parity with transformers
@pytest.fixture(scope="module", params=["tiny", "tiny-e4b", "tiny-keqv", "tiny-multimodal"])
def pair(request, tmp_path_factory):
    name = request.param.replace("-multimodal", "")
    cfg = preset(name)
    hf = random_hf_model(cfg, seed=1, multimodal=request.param.endswith("multimodal"))
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    _, ours = load_checkpoint(d)
    return cfg, hf, ours, d


def test_parity_whole_sequence(pair):
    cfg, hf, ours, _ = pair
    ids = torch.randint(0, cfg.vocab_size, (2, 3 * cfg.sliding_window + 1))  # well past the window
    ref = hf_logits(hf, ids)
    with torch.no_grad():
        out = ours(ids)
    assert ref.abs().max() > 0.5  # the logits carry signal
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("prefill", [1, 5, 20])
def test_parity_prefill_then_decode(pair, prefill):
    cfg, hf, ours, _ = pair
    ids = torch.randint(0, cfg.vocab_size, (1, 3 * cfg.sliding_window + 6))
    ref = hf_logits(hf, ids)
    out = ours_cached_logits(ours, ids, prefill=prefill)  # 20 > every window: a prefill past the ring
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("prefill", [1, 5, 20])
def test_last_only_prefill_narrows_past_the_last_kv_owner(pair, prefill):
    """A prefill that returns the last logits runs the layers past the last K/V owner for one position,
    yet caches every position's K/V: the decode after it matches transformers at every step."""
    cfg, hf, ours, _ = pair
    ids = torch.randint(0, cfg.vocab_size, (1, prefill + 2 * cfg.sliding_window))
    ref = hf_logits(hf, ids)
    narrow = ours.model.narrow_layer()
    assert ours.model.layers[narrow].spec.owns_kv and not any(s.owns_kv for s in cfg.layers[narrow + 1:])
    seen: dict[int, int] = {}  # layer -> positions its MLP saw in the prefill

    def saw(i):
        def hook(module, args, out):
            seen.setdefault(i, args[0].shape[1])
        return hook

    hooks = [layer.mlp.register_forward_hook(saw(i)) for i, layer in enumerate(ours.model.layers)]
    ours.setup_cache(ids.shape[1])
    try:
        with torch.no_grad():
            out = [ours.forward_cached(ids[:, :prefill], torch.arange(prefill))]
            for hook in hooks:
                hook.remove()
            out += [ours.forward_cached(ids[:, t:t + 1], torch.tensor([t])) for t in range(prefill, ids.shape[1])]
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {i: prefill if i < narrow else 1 for i in range(cfg.num_hidden_layers)}
    assert (torch.stack(out, 1) - ref[:, prefill - 1:]).abs().max().item() <= TOL


def test_cache_restarts_cleanly_and_last_logits(pair):
    cfg, hf, ours, _ = pair
    ids = torch.randint(0, cfg.vocab_size, (1, 2 * cfg.sliding_window + 3))
    ours_cached_logits(ours, torch.randint(0, cfg.vocab_size, (1, 2 * cfg.sliding_window + 3)), prefill=4)
    # A second sequence from position 0 without reset must not see the first one's cache.
    with torch.no_grad():
        last = ours.forward_cached(ids[:, :5], torch.arange(5))
        for t in range(5, ids.shape[1]):
            last = ours.forward_cached(ids[:, t:t + 1], torch.tensor([t]))
    assert (last - hf_logits(hf, ids)[:, -1]).abs().max().item() <= TOL


def test_small_ring_wraps_and_matches_transformers(pair):
    """setup_cache(max_step=k): sliding layers keep a ring of window + k slots (the exported program's
    ring), written before attended; prefill chunks and decodes that wrap it several times match
    transformers, and a step longer than k is refused instead of overwriting keys it still needs."""
    cfg, hf, ours, _ = pair
    chunk = 3
    ids = torch.randint(0, cfg.vocab_size, (1, 4 * cfg.sliding_window + 5), generator=torch.Generator().manual_seed(2))
    ref = hf_logits(hf, ids)
    ours.setup_cache(ids.shape[1], max_step=chunk)
    rings = {c.slots for c, spec in zip(ours.caches, cfg.layers) if spec.owns_kv and spec.is_sliding}
    assert rings == {cfg.sliding_window + chunk}
    steps = [(0, 3), (3, 6), (6, 7)] + [(t, t + 1) for t in range(7, ids.shape[1])]
    with torch.no_grad():
        out = torch.stack([ours.forward_cached(ids[:, a:b], torch.arange(a, b))[0] for a, b in steps])
        with pytest.raises(ValueError, match="max_step=3"):
            ours.forward_cached(ids[:, :4], torch.arange(4))
    assert (out - ref[0, [b - 1 for _, b in steps]]).abs().max().item() <= TOL


def test_make_cache_picks_each_layers_cache():
    """One cache per layer, chosen by make_cache alone: rings for sliding owners, full caches for full
    owners, the source layer's K/V for KV-shared layers; nothing kept for the whole-sequence forward."""
    from gemma_edge.export.kv_cache import FullKV, RingKV, SequenceKV, SharedKV, make_cache

    cfg = preset("e2b")
    owner = torch.nn.Module()
    caches = make_cache(cfg, 16, owner=owner, max_step=4)
    for spec, cache in zip(cfg.layers, caches):
        if not spec.owns_kv:
            assert type(cache) is SharedKV and cache.source_index == spec.kv_source
        else:
            assert type(cache) is (RingKV if spec.is_sliding else FullKV)
            assert cache.slots == (16 if not spec.is_sliding else min(cfg.sliding_window + 4, 16))
    assert sorted(n for n, _ in owner.named_buffers()) == sorted(
        f"{kv}_cache_{s.index}" for s in cfg.layers if s.owns_kv for kv in "kv")
    assert all(isinstance(c, (SequenceKV, SharedKV)) for c in make_cache(cfg))
    with pytest.raises(ValueError, match="owner"):
        make_cache(cfg, 16)


def test_external_ple_rows_equal_in_module_lookup(pair):
    cfg, _, ours, _ = pair
    if not cfg.has_ple:
        pytest.skip("no PLE in this config")
    ids = torch.randint(0, cfg.vocab_size, (1, 11))
    rows = ours.model.lookup_ple(ids)
    assert rows.shape == (1, 11, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input)
    with torch.no_grad():
        assert torch.equal(ours(ids, ple_rows=rows), ours(ids))
        # a different row changes the answer: the input is really used
        assert not torch.equal(ours(ids, ple_rows=rows * 1.5), ours(ids))


# ---------------------------------------------------------------- loading
def test_load_without_ple_table_needs_rows(pair):
    cfg, _, ours, d = pair
    if not cfg.has_ple:
        pytest.skip("no PLE in this config")
    _, lean = load_checkpoint(d, load_ple_table=False)
    assert not hasattr(lean.model, "embed_tokens_per_layer")
    ids = torch.randint(0, cfg.vocab_size, (1, 6))
    with pytest.raises(RuntimeError, match="ple_rows"):
        lean(ids)
    with torch.no_grad():
        assert torch.equal(lean(ids, ple_rows=ours.model.lookup_ple(ids)), ours(ids))


def test_ple_table_streams_by_row_range(pair):
    cfg, _, ours, d = pair
    if not cfg.has_ple:
        pytest.skip("no PLE in this config")
    chunks = list(ple_row_chunks(d, chunk_rows=100))
    assert len(chunks) == -(-cfg.vocab_size // 100)
    assert torch.equal(torch.cat(chunks), ours.model.embed_tokens_per_layer.weight)


def test_release_file_pages_drops_mmapped_rows_and_keeps_values(tmp_path):
    """The exporter's RSS fix: a quantized source tensor's pages of an mmap'd shard leave RSS, and the
    tensor still reads back the same values (from the file); anonymous memory is never touched."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gemma_edge.export.checkpoint import release_file_pages
    from gemma_edge.procfs import proc_status

    big = torch.randn(4096, 1024)  # 16 MiB
    save_file({"w": big}, tmp_path / "x.safetensors")
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        mapped = f.get_tensor("w")
    before = proc_status()["RssFile"]
    assert float(mapped.sum()) == float(big.sum())  # touch every page
    touched = proc_status()["RssFile"]
    assert touched - before >= 12 * 2**20
    assert release_file_pages(mapped[:2048]) >= 8 * 2**20
    assert touched - proc_status()["RssFile"] >= 6 * 2**20
    assert torch.equal(mapped, big)  # faulted back in from the file
    anon = big.clone()
    assert release_file_pages(anon) == 0 and torch.equal(anon, big)
    mapped[0, 0] = 42.0  # a written page of the private mapping is kept: its write is not undone
    release_file_pages(mapped[:8])
    assert mapped[0, 0] == 42.0


def _single_file(d):
    files = sorted(d.glob("*.safetensors"))
    assert len(files) == 1
    return files[0]


def test_google_style_shared_kv_leftovers_are_accepted(tmp_path):
    cfg = preset("tiny")
    hf = random_hf_model(cfg, seed=2)
    hf.save_pretrained(tmp_path)
    f = _single_file(tmp_path)
    sd = load_file(f)
    shared = [s.index for s in cfg.layers if not s.owns_kv]
    for i in shared:  # what Google's original files carry for KV-shared layers
        sd[f"model.layers.{i}.self_attn.k_proj.weight"] = torch.zeros(16, 64)
        sd[f"model.layers.{i}.self_attn.k_norm.weight"] = torch.ones(16)
    save_file(sd, f, metadata={"format": "pt"})
    _, ours = load_checkpoint(tmp_path)
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        assert (ours(ids) - hf_logits(hf, ids)).abs().max() <= TOL


@pytest.mark.parametrize("damage,message", [
    ("drop", "missing 1 key"), ("extra", "unexpected 1 key"), ("shape", "has shape"), ("int", "dtype")])
def test_bad_checkpoints_are_named(tmp_path, damage, message):
    cfg = preset("tiny")
    random_hf_model(cfg).save_pretrained(tmp_path)
    f = _single_file(tmp_path)
    sd = load_file(f)
    key = "model.layers.1.mlp.up_proj.weight"
    if damage == "drop":
        del sd[key]
    elif damage == "extra":
        sd["model.layers.1.mlp.bogus.weight"] = torch.zeros(2)
    elif damage == "shape":
        sd[key] = torch.zeros(3, 3)
    else:
        sd[key] = sd[key].to(torch.int32)
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints(tmp_path, dtype):
    import transformers

    cfg = preset("tiny")
    random_hf_model(cfg, seed=3).to(dtype).save_pretrained(tmp_path)
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    # Loaded in the checkpoint's own dtype: the same ops as transformers' eager attention, to one ulp.
    ref = transformers.Gemma4ForCausalLM.from_pretrained(tmp_path, dtype=dtype, attn_implementation="eager").eval()
    _, ours16 = load_checkpoint(tmp_path, dtype=dtype)
    assert ours16.model.embed_tokens.weight.dtype == dtype
    chunks = list(ple_row_chunks(tmp_path, chunk_rows=7, dtype=dtype))  # pread, not mmap: same rows
    assert torch.equal(torch.cat(chunks), ours16.model.embed_tokens_per_layer.weight)
    with torch.no_grad():
        r16 = ref(input_ids=ids).logits.float()
        assert (ours16(ids).float() - r16).abs().max() <= r16.abs().max() * torch.finfo(dtype).eps
    # Upcast on load: fp32 parity with transformers upcasting the same file.
    ref32 = transformers.Gemma4ForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _, ours32 = load_checkpoint(tmp_path)
    with torch.no_grad():
        assert (ours32(ids) - ref32(input_ids=ids).logits).abs().max() <= TOL


# ---------------------------------------------------------------- random checkpoints
def test_random_checkpoint_is_sharded_and_loads_in_transformers(tmp_path):
    import transformers

    cfg = preset("tiny-e4b")
    d = write_random_checkpoint(tmp_path / "ck", cfg, dtype=torch.float32, shard_bytes=300_000, progress=False)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _, ours = load_checkpoint(d)
    hf = transformers.Gemma4ForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 10))
    with torch.no_grad():
        assert (ours(ids) - hf(input_ids=ids).logits).abs().max() <= TOL
    with pytest.raises(FileExistsError):
        write_random_checkpoint(d, cfg, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folder left behind


def test_random_checkpoint_interrupted_leaves_nothing(tmp_path, monkeypatch):
    import gemma_edge.export.random_checkpoint as rc

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rc, "_fill", boom)
    with pytest.raises(KeyboardInterrupt):
        rc.write_random_checkpoint(tmp_path / "ck", preset("tiny"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_batch_of_two_cached_equals_whole():
    cfg = preset("tiny")
    torch.manual_seed(0)
    m = build_model(cfg)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    ids = torch.randint(0, cfg.vocab_size, (2, 19))
    with torch.no_grad():
        whole = m(ids)
    assert (ours_cached_logits(m, ids, prefill=7) - whole).abs().max() <= TOL


def test_cli_parity_runs():
    from gemma_edge.cli import main

    assert main(["parity", "--preset", "tiny", "--tokens", "12"]) == 0
