"""Issue 20 item 4: images' soft tokens spliced into our decoder, against transformers'
`Gemma4ForConditionalGeneration` on a tiny checkpoint whose E and E_ple row 0 are not zero (so "the PLE token half
is row 0" is told apart from "it is zeros")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_vision import build_tower

from gemma_edge.contract.image import ImageTokens
from gemma_edge.export.checkpoint import load_checkpoint
from gemma_edge.export.vision import load_vision_tower
from gemma_edge.runtime.image import preprocess

TOL = 1e-4  # fp32 logits, ours vs transformers (issue 20)


@pytest.fixture(scope="module")
def spliced(tmp_path_factory):
    """(transformers model, our decoder, our tower, image tokens) from one saved checkpoint."""
    _, hf, _, _ = build_tower("e", tmp_path_factory.mktemp("splice-src") / "checkpoint")
    with torch.no_grad():  # padding_idx zero-initialised row 0 of both tables
        lm = hf.model.language_model
        lm.embed_tokens.weight[0].normal_(0, 0.5)
        lm.embed_tokens_per_layer.weight[0].normal_(0, 0.5)
    path = tmp_path_factory.mktemp("splice") / "checkpoint"
    hf.save_pretrained(path)
    _, ours = load_checkpoint(path)
    return hf, ours, load_vision_tower(path), ImageTokens.for_vocab(hf.config.text_config.vocab_size)


def prompt(tokens: ImageTokens, soft_counts: list[int], seed: int = 0) -> list[int]:
    """Text, then each image's span, each followed by more text (ids well inside the vocabulary)."""
    rng = np.random.default_rng(seed)
    ids = [2] + rng.integers(5, 400, 4).tolist()
    for n in soft_counts:
        ids += tokens.span(n) + rng.integers(5, 400, 3).tolist()
    return ids


def images(budget: int, sizes):
    rng = np.random.default_rng(1)
    prepared = [preprocess(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), budget) for h, w in sizes]
    pixels = torch.from_numpy(np.stack([p.pixel_values for p in prepared]))
    positions = torch.from_numpy(np.stack([p.positions for p in prepared]))
    return pixels, positions, [p.soft_tokens for p in prepared]


def soft_embeds(tower, ids: torch.Tensor, tokens: ImageTokens, pixels, positions) -> torch.Tensor:
    """[1, T, H]: the images' soft tokens at their placeholders in order, zeros elsewhere (what a host passes)."""
    with torch.no_grad():
        rows = torch.cat(tower(pixels, positions))
    out = torch.zeros(1, ids.shape[1], rows.shape[-1])
    out[0, ids[0] == tokens.image] = rows
    return out


SIZES = [(60, 100), (200, 90)]  # two aspect ratios, both padded at budget 70


def test_spliced_logits_match_transformers(spliced):
    hf, ours, tower, tokens = spliced
    pixels, positions, counts = images(70, SIZES)
    ids = torch.tensor([prompt(tokens, counts)])
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pixels, image_position_ids=positions).logits
        got = ours(ids, soft_embeds=soft_embeds(tower, ids, tokens, pixels, positions))
    assert float((got - ref).abs().max()) <= TOL
    # the splice is what makes them agree: the placeholders' own embeddings give other logits
    with torch.no_grad():
        plain = ours(ids)
    assert float((plain - ref).abs().max()) > 100 * TOL


def test_ple_token_half_is_row_zero(spliced):
    """The rows a host fetches from the .ple — row 0 at every placeholder — give the same logits as the
    model's own lookup, and row 0 is not zeros here, so fetching the placeholder's row would differ."""
    hf, ours, tower, tokens = spliced
    pixels, positions, counts = images(70, SIZES[:1])
    ids = torch.tensor([prompt(tokens, counts)])
    soft = soft_embeds(tower, ids, tokens, pixels, positions)
    fetched = torch.where(ids == tokens.image, 0, ids)
    with torch.no_grad():
        ref = ours(ids, soft_embeds=soft)
        got = ours(ids, ple_rows=ours.model.lookup_ple(fetched), soft_embeds=soft)
        wrong = ours(ids, ple_rows=ours.model.lookup_ple(ids), soft_embeds=soft)
    assert float((got - ref).abs().max()) == 0.0
    assert float((wrong - ref).abs().max()) > 100 * TOL


def test_chunked_prefill_across_an_image_and_greedy_tokens_match(spliced):
    """Chunks of 7 that cut through both images, then 16 greedy steps: the same tokens as transformers'
    generate, and the prefill's last logits within TOL of its forward."""
    hf, ours, tower, tokens = spliced
    pixels, positions, counts = images(70, SIZES)
    ids = torch.tensor([prompt(tokens, counts, seed=3)])
    soft = soft_embeds(tower, ids, tokens, pixels, positions)
    t = ids.shape[1]
    ours.setup_cache(t + 16, max_step=7)
    with torch.no_grad():
        for start in range(0, t, 7):
            stop = min(start + 7, t)
            logits = ours.forward_cached(ids[:, start:stop], torch.arange(start, stop),
                                         soft_embeds=soft[:, start:stop])
        ref = hf(input_ids=ids, pixel_values=pixels, image_position_ids=positions).logits[:, -1]
        assert float((logits - ref).abs().max()) <= TOL
        out = []
        for i in range(16):
            nxt = int(logits.argmax(-1))
            out.append(nxt)
            logits = ours.forward_cached(torch.tensor([[nxt]]), torch.tensor([t + i]))
        want = hf.generate(input_ids=ids, pixel_values=pixels, image_position_ids=positions, max_new_tokens=16,
                           do_sample=False, min_new_tokens=16)[0, t:].tolist()
    ours.drop_cache()
    assert out == want


@pytest.mark.parametrize("edit, message", [
    ({"image_token_id": 512}, r"config.json: image_token_id: expected a token id in \[0, 512\), found 512"),
    ({"eoi_token_id": "7"}, r"config.json: eoi_token_id: expected a token id in \[0, 512\), found '7'"),
    ({"boi_token_id": 510, "image_token_id": 510}, r"expected three different ids, found \[510, 510, 511\]"),
])
def test_image_token_ids_are_checked(spliced, tmp_path, edit, message):
    import json
    import shutil

    from gemma_edge.export.checkpoint import CheckpointError, open_checkpoint

    hf, *_ = spliced
    hf.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt")


@pytest.fixture(scope="module")
def spliced_path(spliced, tmp_path_factory):
    hf, *_ = spliced
    path = tmp_path_factory.mktemp("splice-session") / "checkpoint"
    hf.save_pretrained(path)
    return path


def test_session_generates_from_images_as_transformers(spliced, spliced_path):
    """Session.generate(images=...) on the eager back-end: one placeholder per image expanded to its span, the
    tower run, the rows fetched once (row 0 at placeholders), prefill in chunks of 8: transformers' tokens."""
    from gemma_edge.runtime.session import Session

    hf, _, _, tokens = spliced
    rng = np.random.default_rng(7)
    pics = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    prepared = [preprocess(p, 70) for p in pics]
    text = [2, 17, 33, tokens.image, 40, 41, tokens.image, 99]
    full = torch.tensor([prompt_with(text, tokens, [p.soft_tokens for p in prepared])])
    pixels = torch.from_numpy(np.stack([p.pixel_values for p in prepared]))
    positions = torch.from_numpy(np.stack([p.positions for p in prepared]))
    with torch.no_grad():
        want = hf.generate(input_ids=full, pixel_values=pixels, image_position_ids=positions, max_new_tokens=12,
                           do_sample=False, min_new_tokens=12)[0, full.shape[1]:].tolist()
    with Session.from_checkpoint(spliced_path, max_context=256, prefill_chunk=8) as s:
        got = [t.token for t in s.generate(text, 12, images=pics, image_budget=70, stop_on_eos=False)]
        st = s.last_run
        assert st.prompt_tokens == full.shape[1] and st.prompt_fetches == 1 and st.images == 2
        assert 0 < st.encode_s < st.ttft_s
        assert s.vision._tower is None  # released after encoding
    assert got == want


def prompt_with(text: list[int], tokens: ImageTokens, counts: list[int]) -> list[int]:
    out, it = [], iter(counts)
    for t in text:
        out += tokens.span(next(it)) if t == tokens.image else [t]
    return out


def test_session_refuses_image_prompts_it_cannot_run(spliced, spliced_path, tiny_checkpoint):
    from gemma_edge.runtime.session import GenerationError, Session

    _, _, _, tokens = spliced
    pic = np.zeros((50, 60, 3), np.uint8)
    with Session.from_checkpoint(spliced_path, max_context=256, prefill_chunk=8) as s:
        with pytest.raises(GenerationError, match=r"2 image placeholder\(s\) \(510\) for 1 image\(s\); "
                                                  "expected one per image") as e:
            list(s.generate([2, tokens.image, tokens.image], 2, images=[pic], image_budget=70))
        assert e.value.field == "images"
        with pytest.raises(GenerationError, match="holds image frame ids"):
            list(s.generate([2, tokens.boi, 5], 2, images=[pic], image_budget=70))
        with pytest.raises(GenerationError, match=r"image_budget: expected one of \[70, 140, 280, 560, 1120\] "
                                                  r"\(the budgets the processor supports\), found 100") as e:
            list(s.generate([2, 5], 2, images=[pic], image_budget=100))
        assert e.value.field == "image_budget"
        # the context rule counts the image's tokens, and refuses before the tower is loaded
        with pytest.raises(GenerationError, match=r"context: prompt 67 \+ max_new_tokens 250"):
            s.generate([2, 5], 250, images=[pic], image_budget=70)
        assert s.vision._tower is None
    with Session.from_checkpoint(tiny_checkpoint, max_context=64, prefill_chunk=8) as s:
        with pytest.raises(GenerationError, match="has no vision tower"):
            list(s.generate([2, 5], 2, images=[pic]))


@pytest.mark.slow
def test_program_takes_soft_tokens(spliced, spliced_path, tmp_path):
    """The exported revision-6 step (XNNPACK, unquantized) given the soft tokens: the eager model's logits at every
    chunk of a prompt with an image; zeros in place of them give others (the input is read)."""
    from conftest import TINY_EXPORT

    from gemma_edge.contract import bundle_format as bf
    from gemma_edge.export.exporter import ExportSettings, export_bundle
    from gemma_edge.runtime.backends import EagerBackend, PteBackend

    _, ours, tower, tokens = spliced
    # the step alone: the vision program is tests/test_vision_bundle.py's
    bundle = export_bundle(spliced_path, tmp_path / "bundle",
                           ExportSettings(**{**TINY_EXPORT, "max_context": 128, "vision": False}), progress=False)
    m = bf.read_manifest(bundle)
    assert m["export"]["program_revision"] == 6 and m["methods"]["prefill"]["inputs"][4]["name"] == "soft_embeds"
    pixels, positions, counts = images(70, SIZES[:1])
    ids = torch.tensor([prompt(tokens, counts)])
    soft = soft_embeds(tower, ids, tokens, pixels, positions)[0].numpy()
    fetched = torch.where(ids == tokens.image, 0, ids)
    rows = ours.model.lookup_ple(fetched)[0].numpy()
    pte = PteBackend(bundle / "model.pte", "forward", "forward")
    eager = EagerBackend(ours, 128)
    t = ids.shape[1]
    for start in range(0, t, 8):
        a = ids[0, start:start + 8].numpy()
        got = pte.prefill(a, start, rows[start:start + 8], soft[start:start + 8])
        want = eager.prefill(a, start, rows[start:start + 8], soft[start:start + 8])
        assert float(np.abs(got - want).max()) <= 1e-3
    ours.drop_cache()
    fresh = PteBackend(bundle / "model.pte", "forward", "forward")
    for start in range(0, t, 8):
        zeros = fresh.prefill(ids[0, start:start + 8].numpy(), start, rows[start:start + 8])
    assert float(np.abs(zeros - got).max()) > 1e-2
