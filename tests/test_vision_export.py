"""Issue 20 item 3: the vision tower as an XNNPACK ExecuTorch program, one static method per budget, run in
ExecuTorch's runtime on preprocessed images against the eager tower; and the export-only rewrites it is built
with (scalar clamps, blocked queries), each against the eager module."""
from __future__ import annotations

import copy
import hashlib
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from test_vision import build_tower

from gemma_edge.contract import bundle_format as bf
from gemma_edge.export import vision_export as ve
from gemma_edge.export.exporter import ExportError
from gemma_edge.export.vision import CLIP_BOUNDS, ClippableLinear
from gemma_edge.runtime.image import preprocess

# The lowering fixtures take tens of seconds on two cores: their tests are marked slow.
BUDGETS = (70, 140)
BLOCK_Q = 128  # several query blocks at both budgets (630 and 1260 patches), the last one partial
TOL = 1e-4  # unquantized program vs the eager tower, fp32 (issue 20)
# 8da8w program vs the eager fp32 tower on this module's tiny tower: the relative Frobenius error of the valid
# soft tokens measured 0.062-0.076 on the three images (random weights make the tower sensitive: see
# bench/vision_quant_error.py); the bound leaves 2x.
TOL_8DA8W = 0.15
FLOAT, LONG, BOOL = 6, 4, 11  # ExecuTorch's ScalarType codes, as MethodMeta's TensorInfo.dtype() gives them
# (height, width) of synthetic images: wide, tall and 4:3, none of which fills its budget (padding is exercised)
SIZES = [(480, 640), (100, 2000), (1000, 90)]


def images(budget: int, seed: int = 0):
    """(pixel_values [1, 9·budget, 768], positions [1, 9·budget, 2], soft tokens) per synthetic image, through the
    runtime's preprocessing (identical to transformers' processor)."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        img = preprocess(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), budget)
        out.append((torch.from_numpy(img.pixel_values)[None], torch.from_numpy(img.positions)[None], img.soft_tokens))
    assert all(n < budget for *_, n in out)
    return out


@pytest.fixture(scope="module")
def tower(variant_towers):
    """Our tiny E-shaped tower (clipped linears whose checkpoint bounds bind), loaded from its checkpoint."""
    return variant_towers("e")


@pytest.fixture(scope="module")
def variant_towers(tmp_path_factory):
    """name -> our tower of test_vision's TOWERS[name], built on first use."""
    built = {}

    def get(name: str):
        if name not in built:
            built[name] = build_tower(name, tmp_path_factory.mktemp(f"vision-{name}") / "checkpoint")[3]
        return built[name]
    return get


@pytest.fixture(scope="module")
def lowered(tower, tmp_path_factory):
    """The unquantized program for BUDGETS, written by write_vision_program and loaded in ExecuTorch's runtime."""
    from executorch.runtime import Runtime

    path = tmp_path_factory.mktemp("pte") / "vision.pte"
    written = ve.write_vision_program(tower, path, BUDGETS, quantize=None, block_q=BLOCK_Q)
    return written, path, Runtime.get().load_program(str(path))


@pytest.fixture(scope="module")
def lowered_8da8w(tower, tmp_path_factory):
    from executorch.runtime import Runtime

    path = tmp_path_factory.mktemp("pte8") / "vision.pte"
    written = ve.write_vision_program(tower, path, (70,), quantize="8da8w", block_q=BLOCK_Q)
    return written, Runtime.get().load_program(str(path))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return float((a - b).abs().max())


# ---------------------------------------------------------------- the program
@pytest.mark.slow
def test_methods_are_the_budgets_each_with_static_shapes(tower, lowered):
    written, path, program = lowered
    assert written.methods == ("vision_70", "vision_140")
    assert program.method_names == set(written.methods)
    hidden = tower.cfg.text_hidden_size
    for budget in BUDGETS:
        meta = program.metadata(bf.vision_method(budget))
        assert (meta.num_inputs(), meta.num_outputs()) == (2, 2)
        shapes = [(list(t.sizes()), t.dtype()) for t in (meta.input_tensor_meta(0), meta.input_tensor_meta(1),
                                                          meta.output_tensor_meta(0), meta.output_tensor_meta(1))]
        assert shapes == [([1, 9 * budget, 768], FLOAT), ([1, 9 * budget, 2], LONG), ([1, budget, hidden], FLOAT),
                          ([1, budget], BOOL)]


@pytest.mark.slow
@pytest.mark.parametrize("budget", BUDGETS)
def test_every_budget_matches_the_eager_tower(tower, lowered, budget):
    _, _, program = lowered
    method = program.load_method(bf.vision_method(budget))
    for pixels, positions, n in images(budget):
        soft, valid = method.execute([pixels, positions])
        with torch.no_grad():
            ref_soft, ref_valid = tower.encode(pixels, positions)
        assert valid.tolist() == ref_valid.tolist() == [[True] * n + [False] * (budget - n)]
        assert max_abs(soft, ref_soft) <= TOL


@pytest.mark.slow
def test_another_budgets_patches_are_refused(lowered):
    _, _, program = lowered
    (pixels, positions, _), *_ = images(140)
    with pytest.raises(RuntimeError):
        program.load_method("vision_70").execute([pixels, positions])
    # and the method still runs its own budget afterwards
    (pixels, positions, _), *_ = images(70)
    program.load_method("vision_70").execute([pixels, positions])


@pytest.mark.slow
def test_no_clamp_of_a_clip_bound_is_left_outside_xnnpack(tower, lowered):
    """The tower's 28 clip clamps (input and output of 7 linears × 2 layers) are all delegated; the two clamps
    left are the integer position clamps (padding's -1 -> row 0) of the embedder and the pooler."""
    written, _, _ = lowered
    assert sum(isinstance(m, ClippableLinear) for m in tower.modules()) * 2 == 28
    for method, ops in written.undelegated.items():
        assert not [op for op in ops if "clamp.Tensor" in op], method
        assert ops.get("aten.clamp.out", 0) == 2, (method, ops)


@pytest.mark.slow
def test_the_file_is_the_program_written(lowered):
    written, path, _ = lowered
    data = path.read_bytes()
    assert written.sha256 == hashlib.sha256(data).hexdigest() and written.size == len(data)
    assert sorted(p.name for p in path.parent.iterdir()) == ["vision.pte"]  # no temporary file left


@pytest.mark.slow
def test_8da8w_program_is_quantized_and_within_its_bound(tower, lowered_8da8w):
    _, program = lowered_8da8w
    method = program.load_method("vision_70")
    for pixels, positions, n in images(70):
        soft = method.execute([pixels, positions])[0][0, :n]
        with torch.no_grad():
            ref = tower.encode(pixels, positions)[0][0, :n]
        error = float(torch.linalg.norm(soft - ref) / torch.linalg.norm(ref))
        assert 100 * TOL < error <= TOL_8DA8W  # quantized (not the fp32 program's 1e-6 level), within the bound


# ---------------------------------------------------------------- rewrites
def test_scalar_clamps_give_the_same_values(tower):
    pixels, positions, _ = images(70)[0]
    rewritten = copy.deepcopy(tower)
    assert ve.scalar_clamps(rewritten) == {"kept": 56, "dropped": 0}  # 4 bounds × 14 linears
    assert not any(isinstance(m, ClippableLinear) for m in rewritten.modules())
    with torch.no_grad():
        assert torch.equal(rewritten.encode(pixels, positions)[0], tower.encode(pixels, positions)[0])


def test_infinite_clip_bounds_are_dropped(tower):
    pixels, positions, _ = images(70)[0]
    edited = copy.deepcopy(tower)
    layer = edited.vision_tower.encoder.layers[0]
    layer.self_attn.q_proj.input_min.fill_(-math.inf)
    layer.mlp.down_proj.output_max.fill_(math.inf)
    for bound in CLIP_BOUNDS:
        getattr(layer.mlp.up_proj, bound).fill_(math.inf if bound.endswith("max") else -math.inf)
    rewritten = copy.deepcopy(edited)
    assert ve.scalar_clamps(rewritten) == {"kept": 50, "dropped": 6}
    up = rewritten.vision_tower.encoder.layers[0].mlp.up_proj
    assert (up.input_min, up.input_max, up.output_min, up.output_max) == (None, None, None, None)
    with torch.no_grad():
        assert torch.equal(rewritten.encode(pixels, positions)[0], edited.encode(pixels, positions)[0])


def test_scalar_clamps_export_as_clamp_default(tower):
    """Before: clamp.Tensor (portable only); after: scalar clamp.default, one per clamp of a linear."""
    args = ve.example_inputs(tower, 70)

    def clamps(model):
        ep = torch.export.export(ve.EncodeMethod(model).eval(), args, strict=False).run_decompositions()
        return {str(t): n for t, n in Counter(n.target for n in ep.graph.nodes).items() if "clamp" in str(t)}

    rewritten = copy.deepcopy(tower)
    ve.scalar_clamps(rewritten)
    assert clamps(tower)["aten.clamp.Tensor"] == 28
    assert clamps(rewritten) == {"aten.clamp.default": 28 + 2}  # + the two integer position clamps


def test_a_clip_min_above_its_max_is_refused(tower):
    edited = copy.deepcopy(tower)
    edited.vision_tower.encoder.layers[1].mlp.gate_proj.output_min.fill_(9.0)
    with pytest.raises(ValueError, match=r"vision_tower.encoder.layers.1.mlp.gate_proj.output_min/output_max: "
                                         r"expected min ≤ max, found 9.0 and"):
        ve.scalar_clamps(edited)


@pytest.mark.parametrize("name", ["e", "variant"])  # MHA with clipping; GQA (repeat_interleave), no clipping
@pytest.mark.parametrize("block_q", [8, 100, 630, 4096])  # partial last blocks (630 patches), exactly N, more
def test_blocked_queries_match_sdpa(variant_towers, name, block_q):
    ours = variant_towers(name)
    blocked = copy.deepcopy(ours)
    ve.set_block_q(blocked, block_q)
    for pixels, positions, _ in images(70):
        with torch.no_grad():
            assert max_abs(blocked.encode(pixels, positions)[0], ours.encode(pixels, positions)[0]) <= 1e-5


def test_blocked_graph_has_no_full_score_matrix(tower):
    """The biggest intermediate of the encoder layers in the exported (decomposed) graph is at most
    heads · block · N values blocked, and at least heads · N² unblocked. (Outside the layers the tiny tower's
    biggest tensors are the [N, 768] patches.)"""
    budget, heads = 140, tower.cfg.num_attention_heads
    n = 9 * budget

    def biggest(block_q):
        prepared = ve.prepare_vision(tower, None, block_q)
        ep = ve.export_vision(prepared, (budget,))[bf.vision_method(budget)].run_decompositions()
        return max(n.meta["val"].numel() for n in ep.graph.nodes
                   if n.op == "call_function" and isinstance(n.meta.get("val"), torch.Tensor)
                   and any("encoder.layers" in path for path, _ in n.meta.get("nn_module_stack", {}).values()))

    assert biggest(BLOCK_Q) <= heads * BLOCK_Q * n
    assert biggest(None) >= heads * n * n


@pytest.mark.slow
def test_xnnpack_holds_one_query_block_of_scores_not_the_whole_matrix(tower, tmp_path):
    """What the lowered program really allocates while it encodes, at a budget where the heads·N² fp32 score
    matrix dwarfs everything else: well under a quarter of that matrix. The graph check above cannot see this.
    The blocks used to be independent, so the fusion into a delegate ordered them breadth first (every block's
    bmm, then every softmax) and XNNPACK held all their scores at once: one whole matrix, at every block
    size."""
    budget, heads = 560, tower.cfg.num_attention_heads
    n = 9 * budget
    path = tmp_path / "vision.pte"
    ve.write_vision_program(tower, path, (budget,), quantize=None, block_q=BLOCK_Q)
    score_matrix = heads * n * n * 4
    assert ve.measure_activations(path, (budget,))[budget] < score_matrix / 4


# ---------------------------------------------------------------- arguments and writing
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(budgets=()), ValueError, r"image budgets: expected at least one of \(70, 140, 280, 560, 1120\)"),
    (dict(budgets=(70, 71)), ValueError, r"image budget: expected one of 70, 140, 280, 560, 1120, found 71"),
    (dict(budgets=(70, 70)), ValueError, r"image budgets: expected distinct budgets, found \[70, 70\]"),
    (dict(quantize="int4"), ValueError, r"vision quantization: expected one of \('8da8w', '8da4w', '8w', None\)"),
    (dict(quantize="8w"), ValueError, r"vision quantization 8w: not lowerable"),
    (dict(block_q=0), ValueError, r"block_q: expected a positive number of query rows or None, found 0"),
])
def test_bad_arguments_are_refused(tower, kwargs, error, message):
    with pytest.raises(error, match=message):
        ve.lower_vision(tower, **kwargs)


def test_write_atomically_replaces_whole_files_only(tmp_path, monkeypatch):
    path = tmp_path / "vision.pte"
    assert ve.write_atomically(path, b"old") == hashlib.sha256(b"old").hexdigest()
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(ExportError, match=rf"{path}: cannot write.*Input/output error"):
        ve.write_atomically(path, b"new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["vision.pte"]
    ve.write_atomically(path, b"new")
    assert path.read_bytes() == b"new"
