"""Issue 4: the exporter — .pte and ONNX parity, quantized faithfulness, the PLE table kept out of the
program, manifest binding, export-time rewrites, atomic bundles."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gemma_edge.contract.bundle_format import PROGRAM_REVISION, read_manifest, sha256_file, verify_bundle
from gemma_edge.contract.presets import preset
from gemma_edge.export import rewrites
from gemma_edge.export.checkpoint import load_checkpoint
from gemma_edge.export.exporter import ExportSettings, StageLog, export_bundle, prepare_model
from gemma_edge.export.model import RMSNorm, attend, build_model
from gemma_edge.export.parity import hf_logits, random_hf_model
from gemma_edge.export.step import InPlaceKVStep
from gemma_edge.ple_store import open as open_ple

PTE_TOL = 1e-3  # unquantized .pte vs eager / transformers (issue 4)


def load_methods(bundle):
    """(prefill, decode) as the manifest maps those roles to program methods (one method may play both)."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (registers kernels)
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    from gemma_edge.contract.bundle_format import role_methods

    roles = role_methods(read_manifest(bundle))
    program = Runtime.get().load_program(bundle / "model.pte")
    assert set(program.method_names) == set(roles.values())
    prefill = program.load_method(roles["prefill"])
    return prefill, prefill if roles["decode"] == roles["prefill"] else program.load_method(roles["decode"])


def run_pte(bundle, ids: torch.Tensor, chunk: int, prompt: int) -> tuple[torch.Tensor, list[int]]:
    """Prefill `prompt` tokens in chunks, then decode the rest one by one; logits [N, V] at `positions`."""
    prefill, decode = load_methods(bundle)
    hidden = read_manifest(bundle)["config"]["hidden_size"]
    with open_ple(bundle / "model.ple") as ple:
        rows = torch.from_numpy(ple.fetch(ids[0].tolist()))[None]
    out, positions = [], []
    for a in range(0, prompt, chunk):
        b = min(prompt, a + chunk)
        out.append(prefill.execute([ids[:, a:b], torch.arange(a, b), rows[:, a:b].contiguous(),
                                    torch.empty(b, dtype=torch.long), torch.zeros(1, b - a, hidden)])[0][0])
        positions.append(b - 1)
    for t in range(prompt, ids.shape[1]):
        out.append(decode.execute([ids[:, t:t + 1], torch.tensor([t]), rows[:, t:t + 1].contiguous(),
                                   torch.empty(t + 1, dtype=torch.long), torch.zeros(1, 1, hidden)])[0][0])
        positions.append(t)
    return torch.stack(out), positions


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """E4B-like tiny (GQA 4:2, KV sharing, window 6), fp32 PLE, exported to .pte and ONNX."""
    cfg = preset("tiny-e4b")
    hf = random_hf_model(cfg, seed=5)
    ckpt = tmp_path_factory.mktemp("gqa") / "ckpt"
    hf.save_pretrained(ckpt)
    settings = ExportSettings(quant="none", embedding_quant="none", ple_dtype="fp32", max_context=64,
                              prefill_chunk=6, formats=("pte", "onnx"))
    bundle = export_bundle(ckpt, ckpt.parent / "bundle", settings, progress=False)
    return cfg, hf, ckpt, bundle


@pytest.mark.slow  # the gqa fixture lowers and ONNX-exports a model
def test_pte_matches_transformers_and_eager_past_the_window(gqa):
    cfg, hf, ckpt, bundle = gqa
    ids = torch.randint(0, cfg.vocab_size, (1, 15 + 32), generator=torch.Generator().manual_seed(0))
    got, positions = run_pte(bundle, ids, chunk=6, prompt=15)  # 3 prefill calls past the 6-slot ring, 32 decodes
    ref = hf_logits(hf, ids)[0, positions]
    _, eager = load_checkpoint(ckpt)
    with torch.no_grad():
        ours = eager(ids)[0, positions]
    assert ref.abs().max() > 0.5
    assert (got - ref).abs().max().item() <= PTE_TOL
    assert (got - ours).abs().max().item() <= PTE_TOL


@pytest.mark.slow  # the gqa fixture lowers and ONNX-exports a model
def test_attention_reads_the_attended_slots_inside_xnnpack(gqa):
    """attend_len's length bounds the slots attention reads, and the grouped bmm / softmax stay in XNNPACK
    delegates (sized from input shapes); attending every slot instead gives the same logits."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    cfg, _, _, bundle = gqa
    plans = deserialize_pte_binary((bundle / "model.pte").read_bytes())
    native = {o.name for plan in getattr(plans, "program", plans).execution_plan for o in plan.operators}
    assert "llama::update_cache" in native and not native & {"aten::bmm", "aten::_softmax"}, sorted(native)

    ids = torch.randint(0, cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(3))
    with open_ple(bundle / "model.ple") as ple:
        rows = torch.from_numpy(ple.fetch(ids[0].tolist()))[None]
    (tight, _), (every, _) = load_methods(bundle), load_methods(bundle)   # two programs: two sets of caches
    worst = 0.0
    for a, b in [(0, 6), (6, 12), (12, 13), *[(t, t + 1) for t in range(13, 20)]]:
        step = [ids[:, a:b], torch.arange(a, b), rows[:, a:b].contiguous()]
        soft = torch.zeros(1, b - a, cfg.hidden_size)  # a text step's soft_embeds
        got = tight.execute([*step, torch.empty(b, dtype=torch.long), soft])[0]
        ref = every.execute([*step, torch.empty(64, dtype=torch.long), soft])[0]   # max_context: every slot
        worst = max(worst, (got - ref).abs().max().item())
    assert worst <= 1e-5
    # The length is what bounds the reads: the last step again (rewriting the same keys), attending only
    # its first 10 positions, gives other logits.
    again = [ids[:, 19:20], torch.tensor([19]), rows[:, 19:20].contiguous()]
    soft = torch.zeros(1, 1, cfg.hidden_size)
    assert torch.allclose(tight.execute([*again, torch.empty(20, dtype=torch.long), soft])[0], got, atol=1e-6)
    assert (tight.execute([*again, torch.empty(10, dtype=torch.long), soft])[0] - got).abs().max() > 1e-3


@pytest.mark.slow  # the gqa fixture lowers and ONNX-exports a model
def test_onnx_matches_eager(gqa):
    import onnxruntime as ort

    cfg, _, ckpt, bundle = gqa
    sess = ort.InferenceSession(str(bundle / "model.onnx"))
    names = [i.name for i in sess.get_inputs()]
    caches = [np.zeros(i.shape, dtype=np.float32) for i in sess.get_inputs()[3:]]
    ids = torch.randint(0, cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(1))
    _, eager = load_checkpoint(ckpt)
    rows = eager.model.lookup_ple(ids).detach()
    with torch.no_grad():
        ref = eager(ids)[0]
    worst = 0.0
    for a, b in [(0, 6), (6, 12), (12, 13), *[(t, t + 1) for t in range(13, 20)]]:
        out = sess.run(None, dict(zip(names, [ids[:, a:b].numpy(), np.arange(a, b), rows[:, a:b].numpy(), *caches])))
        caches = out[1:]
        worst = max(worst, float(np.abs(out[0][0] - ref[b - 1].numpy()).max()))
    assert worst <= PTE_TOL


@pytest.mark.slow  # the gqa fixture lowers and ONNX-exports a model
def test_pte_does_not_hold_the_ple_table(gqa):
    cfg, _, ckpt, bundle = gqa
    pte = (bundle / "model.pte").read_bytes()
    _, eager = load_checkpoint(ckpt)
    table = eager.model.embed_tokens_per_layer.weight.detach().numpy()
    for row in (1, 57, cfg.vocab_size - 1):  # no stretch of any row's fp32 bytes is in the program
        assert table[row, :16].tobytes() not in pte
    # The main embedding is in it (control: the search would find a table that is there).
    assert eager.model.embed_tokens.weight.detach().numpy()[57, :16].tobytes() in pte
    with open_ple(bundle / "model.ple") as ple:
        assert ple.fetch([57])[0].reshape(-1)[:16] == pytest.approx(table[57, :16] * cfg.ple_scale)


@pytest.mark.slow  # the gqa fixture lowers and ONNX-exports a model
def test_manifest_describes_the_bundle(gqa):
    cfg, _, _, bundle = gqa
    m = read_manifest(bundle)
    assert m["num_layers"] == cfg.num_hidden_layers and m["ple_dim"] == cfg.hidden_size_per_layer_input
    assert set(m["methods"]) == {"prefill", "decode"} and m["methods"]["prefill"]["max_tokens"] == 6
    assert m["methods"]["prefill"]["method"] == m["methods"]["decode"]["method"] == "forward"  # one dynamic method
    assert m["files"]["program"]["sha256"] == sha256_file(bundle / "model.pte")
    with open_ple(bundle / "model.ple") as ple:
        assert m["files"]["ple"]["identity"] == ple.header.identity.hex()
        assert ple.header.model_hash.hex() == m["model_hash"]
    assert [s["stage"] for s in m["export"]["stages"]][:3] == ["hash_checkpoint", "load", "rewrite"]
    assert verify_bundle(bundle) == []


@pytest.mark.slow  # the gqa fixture lowers and ONNX-exports a model
def test_manifest_rejects_a_ple_file_from_another_export(gqa, tmp_path):
    from gemma_edge.ple_store import write

    cfg, _, _, bundle = gqa
    copy = shutil.copytree(bundle, tmp_path / "b")
    rng = np.random.default_rng(0)
    source = [rng.standard_normal((cfg.vocab_size, cfg.ple_width)).astype(np.float32)]
    write(copy / "model.ple", source, vocab_size=cfg.vocab_size, num_layers=cfg.num_hidden_layers,
          ple_dim=cfg.hidden_size_per_layer_input, dtype="fp32", embed_scale=cfg.ple_scale, progress=False)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["files"]["ple"]  # same size and a matching hash: only the identity can catch it
    entry["bytes"], entry["sha256"] = (copy / "model.ple").stat().st_size, sha256_file(copy / "model.ple")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_bundle(copy)
    assert len(problems) == 1 and "another export" in problems[0]


@pytest.mark.slow  # exports and lowers an 8da4w model
def test_quantized_program_is_faithful_to_eager_quantized(tmp_path):
    # Weights at transformers' init scale (std 0.02): `random_hf_model`'s larger weights make a network that
    # amplifies any per-op difference ~3x a layer, so it measures its own chaos, not the lowering.
    # The main embedding stays fp32 here: an int8 embedding's rows lie on a grid, so the first dynamically
    # quantized linear they feed (per_layer_model_projection) meets activations at or near .5 ties of its
    # int8 grid, which XNNPACK and torchao round differently: one linear on such input differs by 2.6e-3
    # (2e-7 on other input), and this whole model by 5.2e-2. That is rounding at ties, not a lowering error.
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    cfg = preset("tiny-e4b")
    ckpt = write_random_checkpoint(tmp_path / "ckpt", cfg, dtype=torch.float32, seed=7, progress=False)
    settings = ExportSettings(quant="8da4w", embedding_quant="none", ple_dtype="int4",  # per-channel int4
                              max_context=48, prefill_chunk=6)
    bundle = export_bundle(ckpt, tmp_path / "bundle", settings, progress=False)
    ids = torch.randint(0, cfg.vocab_size, (1, 8 + 16), generator=torch.Generator().manual_seed(2))
    got, positions = run_pte(bundle, ids, chunk=6, prompt=8)  # prefill chunks [0, 6) [6, 8), then 16 decodes
    # The same torchao quantization applied to our eager model, fed the same int4 PLE rows, same steps.
    _, qmodel = prepare_model(ckpt, settings, StageLog(), progress=False)
    with open_ple(bundle / "model.ple") as ple:
        rows = torch.from_numpy(ple.fetch(ids[0].tolist()))[None]
    qmodel.reset_cache()
    steps = [(0, 6), (6, 8)] + [(t, t + 1) for t in range(8, 24)]
    with torch.no_grad():
        ref = torch.stack([qmodel.forward_cached(ids[:, a:b], torch.arange(a, b), rows[:, a:b])[0] for a, b in steps])
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 5e-2, rel
    _, fp32 = load_checkpoint(ckpt)
    with torch.no_grad():
        full = fp32(ids)[0, positions]
    print(f"\n8da4w + PLE int4 vs fp32 eager: max |Δ| {(got - full).abs().max():.4f} of max |logit| "
          f"{full.abs().max():.3f}; top-1 agreement {(got.argmax(-1) == full.argmax(-1)).float().mean():.0%}; "
          f"vs eager-quantized rel {rel:.2e}")
    assert (bundle / "model.pte").stat().st_size < 0.6 * sum(p.numel() * 4 for p in fp32.parameters())


@pytest.mark.parametrize("scheme,group,bound", [("8da4w", 0, 1e-5), ("8da4w", 32, 1e-5), ("8da8w", 0, 1e-5)])
def test_one_quantized_linear_lowers_faithfully(scheme, group, bound):
    """XNNPACK's dynamically quantized linear vs torchao's eager one, on a single layer."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    from gemma_edge.export.exporter import lower_to_executorch

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 128, bias=False))
    rewrites.quantize_linears(lin, scheme, group_size=group)
    x = torch.randn(1, 5, 64)
    with torch.no_grad():
        ref = lin(x)
    program = lower_to_executorch({"forward": torch.export.export(lin, (x,), strict=False)})
    got = Runtime.get().load_program(program.buffer).load_method("forward").execute([x])[0]
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= bound


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_embedding_lowers_faithfully(scheme):
    """The program's gather from a per-row int8 / int4 table equals torchao's eager dequantized rows, and the
    table is stored at its quantized size (int4: two values a byte)."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    from gemma_edge.export.exporter import lower_to_executorch

    torch.manual_seed(0)
    rows, dim = 4096, 64
    m = torch.nn.Module()
    m.model = torch.nn.Module()
    m.model.embed_tokens = torch.nn.Embedding(rows, dim)
    rewrites.quantize_embedding(m, scheme)
    emb = m.model.embed_tokens
    ids = torch.tensor([[0, 7, 4095, 7, 1234]])
    with torch.no_grad():
        ref = emb(ids)
    program = lower_to_executorch({"forward": torch.export.export(emb, (ids,), strict=False)})
    got = Runtime.get().load_program(program.buffer).load_method("forward").execute([ids])[0]
    assert torch.equal(got, ref)
    values = rows * dim // (2 if scheme == "int4" else 1)
    assert values < len(program.buffer) < values * 1.25


def test_cache_views_stay_outside_xnnpack():
    """A KV cache reaches XNNPACK as an external input, and XNNPACK runs a reshape of one as a copy of the
    whole cache: every view of a cache — of the buffer or of its in-place update, through chains of views —
    must stay out of the delegate (a free `et_view`), and the attention math in it."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    from executorch.exir.lowered_backend_module import get_lowered_submodules
    from executorch.runtime import Runtime

    from gemma_edge.export.exporter import lower_to_executorch

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("k", torch.zeros(1, 16, 1, 8))

        def forward(self, q, k_new, pos):
            start = pos[0].item()
            torch._check(start >= 0)
            torch._check(start + 1 <= 16)
            torch.ops.llama.update_cache(k_new, self.k, start)
            k = self.k.view(1, 1, 16, 8).reshape(1, 16, 8)  # a chain of views, as attend() makes
            return torch.bmm(q, k.transpose(1, 2)).softmax(-1)

    args = (torch.randn(1, 4, 8), torch.randn(1, 1, 1, 8), torch.tensor([3]))
    program = lower_to_executorch({"forward": torch.export.export(Step(), args, strict=False)})
    inner = [str(n.target) for _, lowered, _ in get_lowered_submodules(program.exported_program().graph_module)
             for n in lowered.original_module.graph.nodes if n.op == "call_function"]
    assert any("bmm" in t for t in inner) and not any("view_copy" in t for t in inner), inner
    got = Runtime.get().load_program(program.buffer).load_method("forward").execute(list(args))[0]
    cache = torch.zeros(1, 16, 8)
    cache[0, 3] = args[1][0, 0, 0]
    assert torch.allclose(got, torch.bmm(args[0], cache.transpose(1, 2)).softmax(-1), atol=1e-6)


def test_no_delegate_spans_layers():
    """Each layer's closing `* layer_scalar` stays a native op, so XNNPACK never packs two layers' weights in
    one delegate (it holds a delegate's source weights until all are packed: peak RSS at load)."""
    from executorch.exir.lowered_backend_module import get_lowered_submodules
    from executorch.runtime import Runtime

    from gemma_edge.export.exporter import lower_to_executorch

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.register_buffer("layer_scalar", torch.tensor([0.5]))

        def forward(self, h):
            return (h + torch.nn.functional.gelu(self.proj(h))) * self.layer_scalar

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Layer() for _ in range(3))

        def forward(self, h):
            for layer in self.layers:
                h = layer(h)
            return h * 2.0

    model, args = Stack().eval(), (torch.randn(1, 4, 8),)
    program = lower_to_executorch({"forward": torch.export.export(model, args, strict=False)})
    delegates = get_lowered_submodules(program.exported_program().graph_module)
    linears = [sum("linear" in str(n.target) for n in lowered.original_module.graph.nodes)
               for _, lowered, _ in delegates]
    assert linears == [1, 1, 1, 0], linears  # a delegate per layer, and one for the final `* 2`
    got = Runtime.get().load_program(program.buffer).load_method("forward").execute(list(args))[0]
    assert torch.allclose(got, model(*args), atol=1e-6)


# ---------------------------------------------------------------- rewrites, each against what it replaces
def _tiny_model(seed=0):
    cfg = preset("tiny")
    torch.manual_seed(seed)
    from gemma_edge.export.model import build_model

    m = build_model(cfg)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    return cfg, m


def test_rmsnorm_rewrite_allclose():
    norm = RMSNorm(48, 1e-6)
    torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    x = torch.randn(2, 5, 48) * 3
    torch.testing.assert_close(rewrites.RMSNormXnnpack(norm)(x), norm(x), rtol=1e-6, atol=1e-6)
    plain = RMSNorm(48, 1e-6, with_scale=False)
    torch.testing.assert_close(rewrites.RMSNormXnnpack(plain)(x), plain(x), rtol=1e-6, atol=1e-6)


def test_gelu_rewrite_allclose():
    x = torch.linspace(-8, 8, 4001)
    torch.testing.assert_close(rewrites.GeluTanhExplicit()(x), torch.nn.functional.gelu(x, approximate="tanh"),
                               rtol=1e-6, atol=1e-6)
    cfg, m = _tiny_model(3)
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        before = m(ids)
        rewrites.replace_gelu_for_xnnpack(m)
        assert not any(isinstance(x, torch.nn.GELU) for x in m.modules())
        torch.testing.assert_close(m(ids), before, rtol=1e-5, atol=1e-5)


def test_untie_head_allclose():
    cfg, m = _tiny_model()
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        before = m(ids)
        rewrites.untie_head(m)
        torch.testing.assert_close(m(ids), before)


@pytest.mark.parametrize("scheme,group", [("8da4w", 32), ("8da4w", 0), ("8da8w", 0)])
def test_quantize_linears_close_and_reports_skips(scheme, group):
    cfg, m = _tiny_model(1)
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        before = m(ids)
        rewrites.quantize_linears(m, scheme, group_size=group)
        after = m(ids)
    assert not torch.equal(after, before)  # something was quantized
    assert ((after - before).abs().max() / before.abs().max()).item() < 0.1
    # int4 blocks (a group, or a whole row per channel) must be a multiple of 32 for XNNPACK
    expect = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and mod.in_features % 32] \
        if scheme == "8da4w" else []
    assert m.quant_skipped == expect


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantize_embedding_close(scheme):
    cfg, m = _tiny_model(2)
    rewrites.untie_head(m)
    ids = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.no_grad():
        before = m(ids)
        rewrites.quantize_embedding(m, scheme)
        after = m(ids)
    assert not torch.equal(after, before)
    assert ((after - before).abs().max() / before.abs().max()).item() < (0.02 if scheme == "int8" else 0.2)


def test_grouped_attention_equals_repeat_kv():
    q, k, v = torch.randn(1, 8, 5, 16), torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16)
    allowed = torch.rand(5, 7) > 0.3
    allowed[:, 0] = True
    kr, vr = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)  # transformers' repeat_kv
    ref = torch.softmax((q @ kr.transpose(2, 3)).masked_fill(~allowed, float("-inf")), -1) @ vr
    from gemma_edge.export.model import additive_mask

    got = attend(q.transpose(1, 2), k, v, additive_mask(allowed, 4))  # q as [B, T, H, D]
    torch.testing.assert_close(got, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- failure modes
def test_export_is_atomic(tmp_path, monkeypatch):
    import gemma_edge.export.exporter as exporter

    cfg = preset("tiny")
    random_hf_model(cfg).save_pretrained(tmp_path / "ckpt")

    def boom(*a, **k):
        raise RuntimeError("lowering failed")

    monkeypatch.setattr(exporter, "lower_to_executorch", boom)
    with pytest.raises(RuntimeError, match="lowering failed"):
        export_bundle(tmp_path / "ckpt", tmp_path / "bundle", ExportSettings(quant="none", embedding_quant="none",
                                                                              max_context=32, prefill_chunk=4),
                      progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_settings_are_named(tmp_path):
    cfg = preset("tiny")
    random_hf_model(cfg).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="prefill_chunk"):
        export_bundle(tmp_path / "ckpt", tmp_path / "b", ExportSettings(prefill_chunk=64), progress=False)
    with pytest.raises(ValueError, match="ple_dtype"):
        export_bundle(tmp_path / "ckpt", tmp_path / "b", ExportSettings(ple_dtype="int2", prefill_chunk=4),
                      progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.slow  # the gqa fixture lowers and ONNX-exports a model
def test_inspect_bundle_cli(gqa, capsys):
    from gemma_edge.cli import main

    assert main(["inspect", str(gqa[3])]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "decode" in out and "model.ple" in out


@pytest.mark.parametrize("scheme,group", [("8da4w", 32), ("8da4w", 0), ("8da8w", 0)])
def test_row_block_quantization_equals_whole(scheme, group):
    """Quantizing a linear a block of rows at a time (bounded memory on the 262144-row head) gives the
    very tensors torchao gives for the whole matrix."""
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    whole = torch.nn.Sequential(torch.nn.Linear(64, 100, bias=False))
    blocked = torch.nn.Sequential(torch.nn.Linear(64, 100, bias=False))
    blocked[0].weight.data.copy_(whole[0].weight.data.to(torch.bfloat16).float())
    whole[0].weight.data.copy_(blocked[0].weight.data)
    blocked[0].weight.data = blocked[0].weight.data.to(torch.bfloat16)  # as loaded from a bf16 checkpoint
    config = rewrites.linear_quant_config(scheme, group_size=group)
    quantize_(whole, config)
    rewrites.quantize_by_rows(blocked[0], config, block_rows=32)  # 100 rows: blocks of 32, 32, 32, 4
    for name in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(blocked[0].weight, name), getattr(whole[0].weight, name)), name
    x = torch.randn(3, 64)
    assert torch.equal(blocked(x), whole(x))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_row_block_embedding_quantization_equals_whole(scheme):
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    torch.manual_seed(0)
    whole, blocked = torch.nn.Embedding(100, 64), torch.nn.Embedding(100, 64)
    blocked.weight.data.copy_(whole.weight.data)
    config = IntxWeightOnlyConfig(weight_dtype=torch.int8 if scheme == "int8" else torch.int4, granularity=PerAxis(0))
    quantize_(whole, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Embedding))
    rewrites.quantize_by_rows(blocked, config, block_rows=32)
    ids = torch.tensor([[0, 31, 32, 99, 64]])
    assert torch.equal(blocked(ids), whole(ids))


def test_manifest_roles_map_to_program_methods():
    from gemma_edge.contract.bundle_format import BundleError, method_names_for, role_methods

    assert method_names_for("one") == {"prefill": "forward", "decode": "forward"}
    assert method_names_for("two") == {"prefill": "prefill", "decode": "decode"}
    with pytest.raises(ValueError, match="methods"):
        method_names_for("three")
    # A manifest entry without "method" names the method after its role (two-method bundles of format v1).
    assert role_methods({"methods": {"prefill": {}, "decode": {"method": "step"}}}) == {"prefill": "prefill",
                                                                                      "decode": "step"}
    with pytest.raises(BundleError, match="methods.decode"):
        role_methods({"methods": {"prefill": {}}})


def test_reuse_program_makes_another_ple_dtype_without_lowering(tiny_checkpoint, tiny_bundle, tmp_path):
    """--reuse-program: the same program bytes, a new PLE file of another dtype, a valid bundle; a program
    built with other settings (or from another checkpoint) is refused with the field named."""
    from conftest import TINY_EXPORT

    settings = ExportSettings(**{**TINY_EXPORT, "ple_dtype": "int4"})
    out = export_bundle(tiny_checkpoint, tmp_path / "int4", settings, progress=False, reuse_program=tiny_bundle)
    m = read_manifest(out)
    assert sha256_file(out / "model.pte") == read_manifest(tiny_bundle)["files"]["program"]["sha256"]
    assert m["files"]["ple"]["dtype"] == "int4" and m["quantization"]["ple_dtype"] == "int4"
    assert [s["stage"] for s in m["export"]["stages"]] == ["hash_checkpoint", "write_ple", "copy_pte"]
    assert m["export"]["program_reused_from"] == str(tiny_bundle)
    assert verify_bundle(out) == []
    with pytest.raises(ValueError, match="max_context: this export 32, that bundle 64"):
        export_bundle(tiny_checkpoint, tmp_path / "bad", ExportSettings(**{**TINY_EXPORT, "max_context": 32}),
                      progress=False, reuse_program=tiny_bundle)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob("bad.partial-*"))
    older = tmp_path / "older"  # a bundle an earlier gemma-edge exported: its program computes differently
    shutil.copytree(tiny_bundle, older)
    m = read_manifest(older)
    m["export"]["program_revision"] = 1
    (older / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=f"program_revision: this export {PROGRAM_REVISION}, that bundle 1"):
        export_bundle(tiny_checkpoint, tmp_path / "bad", settings, progress=False, reuse_program=older)


@pytest.mark.parametrize("preset_name", ["tiny", "tiny-e4b"])
def test_in_place_kv_step_allclose(preset_name):
    """The program's step (caches written in place, a ring of window + chunk) equals the readable
    index_copy step: chunked prefill past the window, decodes across the ring's wrap, then a new sequence
    from position 0 in the same caches."""
    cfg = preset(preset_name)
    model = build_model(cfg)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    chunk, ctx = 4, 40
    ids = torch.randint(0, cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    rows = model.model.lookup_ple(ids)
    model.drop_ple_table()
    steps = [(0, 4), (4, 8), (8, 11)] + [(t, t + 1) for t in range(11, 30)] + [(0, 3), (3, 4), (4, 5)]
    model.setup_cache(ctx)
    with torch.no_grad():
        ref = [model.forward_cached(ids[:, a:b], torch.arange(a, b), rows[:, a:b]) for a, b in steps]
        step = InPlaceKVStep(model, chunk)
        assert step.ring == cfg.sliding_window + chunk < 30  # the decodes wrap the ring
        got = [step(ids[:, a:b], torch.arange(a, b), rows[:, a:b], torch.empty(b, dtype=torch.long)) for a, b in steps]
    for (a, b), r, g in zip(steps, ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=f"step [{a}, {b})")
