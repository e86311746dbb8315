"""Issue 21 item 4: audio clips' soft tokens spliced into our decoder and run by the Session, against transformers'
`Gemma4ForConditionalGeneration` on a tiny checkpoint whose E and E_ple row 0 are not zero."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_audio import build_tower, reference_features, speech_like

from gemma_edge.contract import audio as contract
from gemma_edge.contract.audio import AudioTokens
from gemma_edge.export.audio import load_audio_tower
from gemma_edge.export.checkpoint import load_checkpoint
from gemma_edge.runtime.audio import prepare_audio

TOL = 1e-4  # fp32 logits, ours vs transformers (issue 21)
WAVES = [speech_like(0.7, seed=11), speech_like(1.3, seed=12)]


@pytest.fixture(scope="module")
def spliced(tmp_path_factory):
    """(transformers model, our decoder, our tower, audio tokens, checkpoint folder) from one saved checkpoint."""
    _, hf, _, _ = build_tower("e", tmp_path_factory.mktemp("audio-splice-src") / "checkpoint")
    with torch.no_grad():  # padding_idx zero-initialised row 0 of both tables
        lm = hf.model.language_model
        lm.embed_tokens.weight[0].normal_(0, 0.5)
        lm.embed_tokens_per_layer.weight[0].normal_(0, 0.5)
    path = tmp_path_factory.mktemp("audio-splice") / "checkpoint"
    hf.save_pretrained(path)
    _, ours = load_checkpoint(path)
    return hf, ours, load_audio_tower(path), AudioTokens.for_vocab(hf.config.text_config.vocab_size), path


def expanded(text: list[int], tokens: AudioTokens, counts: list[int]) -> list[int]:
    """`text` with each placeholder replaced by its clip's span (what transformers' processor writes)."""
    out, it = [], iter(counts)
    for t in text:
        out += tokens.span(next(it)) if t == tokens.audio else [t]
    return out


def hf_inputs(waves, tokens: AudioTokens, text: list[int]):
    features, mask = reference_features(waves)
    counts = [contract.audio_soft_tokens(len(w)) for w in waves]
    return torch.tensor([expanded(text, tokens, counts)]), features, mask


def soft_embeds(tower, ids: torch.Tensor, tokens: AudioTokens, waves) -> torch.Tensor:
    with torch.no_grad():
        rows = torch.cat([tower.encode(torch.from_numpy(w)[None])[0] for w in waves])
    out = torch.zeros(1, ids.shape[1], rows.shape[-1])
    out[0, ids[0] == tokens.audio] = rows
    return out


def text_with(tokens: AudioTokens) -> list[int]:
    return [2, 17, 33, tokens.audio, 40, 41, tokens.audio, 99]


def test_spliced_logits_match_transformers(spliced):
    hf, ours, tower, tokens, _ = spliced
    ids, features, mask = hf_inputs(WAVES, tokens, text_with(tokens))
    with torch.no_grad():
        ref = hf(input_ids=ids, input_features=features, input_features_mask=mask).logits
        got = ours(ids, soft_embeds=soft_embeds(tower, ids, tokens, WAVES))
        plain = ours(ids)
    assert float((got - ref).abs().max()) <= TOL
    assert float((plain - ref).abs().max()) > 100 * TOL  # the splice is what makes them agree


def test_chunked_prefill_across_clips_and_greedy_tokens_match(spliced):
    hf, ours, tower, tokens, _ = spliced
    ids, features, mask = hf_inputs(WAVES, tokens, text_with(tokens))
    soft = soft_embeds(tower, ids, tokens, WAVES)
    t = ids.shape[1]
    ours.setup_cache(t + 16, max_step=7)
    with torch.no_grad():
        for start in range(0, t, 7):
            stop = min(start + 7, t)
            logits = ours.forward_cached(ids[:, start:stop], torch.arange(start, stop),
                                         soft_embeds=soft[:, start:stop])
        out = []
        for i in range(16):
            nxt = int(logits.argmax(-1))
            out.append(nxt)
            logits = ours.forward_cached(torch.tensor([[nxt]]), torch.tensor([t + i]))
        want = hf.generate(input_ids=ids, input_features=features, input_features_mask=mask, max_new_tokens=16,
                           do_sample=False, min_new_tokens=16)[0, t:].tolist()
    ours.drop_cache()
    assert out == want


def test_session_generates_from_audio_as_transformers(spliced):
    """Session.generate(audio=...) on the eager back-end: one placeholder per clip expanded to boa + soft tokens +
    eoa, the tower run and released, one batched fetch: transformers' tokens."""
    from gemma_edge.runtime.session import Session

    hf, _, _, tokens, path = spliced
    ids, features, mask = hf_inputs(WAVES, tokens, text_with(tokens))
    with torch.no_grad():
        want = hf.generate(input_ids=ids, input_features=features, input_features_mask=mask, max_new_tokens=12,
                           do_sample=False, min_new_tokens=12)[0, ids.shape[1]:].tolist()
    with Session.from_checkpoint(path, max_context=256, prefill_chunk=8) as s:
        got = [t.token for t in s.generate(text_with(tokens), 12, audio=WAVES, stop_on_eos=False)]
        st = s.last_run
        assert st.prompt_tokens == ids.shape[1] and st.prompt_fetches == 1 and st.audio_clips == 2
        assert st.prompt_fetched == torch.where(ids[0] == tokens.audio, 0, ids[0]).tolist()  # row 0 at each
        assert 0 < st.encode_s < st.ttft_s
        assert s.audio._tower is None  # released after encoding
        # no placeholder: the clips go first, after <bos>; one clip may be passed as it is, not in a list
        first = [t.token for t in s.generate([2, 17, 33, 40], 4, audio=WAVES[0], stop_on_eos=False)]
        # and so may one clip already cut (a PreparedClip)
        (clip,) = prepare_audio(WAVES[0])
        assert [t.token for t in s.generate([2, 17, 33, 40], 4, audio=clip, stop_on_eos=False)] == first
    ids1, f1, m1 = hf_inputs(WAVES[:1], tokens, [2, tokens.audio, 17, 33, 40])
    with torch.no_grad():
        assert first == hf.generate(input_ids=ids1, input_features=f1, input_features_mask=m1, max_new_tokens=4,
                                    do_sample=False, min_new_tokens=4)[0, ids1.shape[1]:].tolist()
    assert got == want


def test_a_wav_file_at_another_rate_is_resampled_and_downmixed(spliced, tmp_path):
    """A 44.1 kHz stereo 16-bit WAV reads as the mean of its channels resampled to 16 kHz (scipy's polyphase
    filter): the session's tokens are transformers' on those samples."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    from gemma_edge.runtime.audio import load_audio
    from gemma_edge.runtime.session import Session

    hf, _, _, tokens, path = spliced
    left, right = speech_like(1.1, rate=44_100, seed=13), speech_like(1.1, rate=44_100, seed=14)
    pcm = np.round(np.stack([left, right], axis=1) * 32767).astype(np.int16)
    wav = tmp_path / "clip.wav"
    wavfile.write(wav, 44_100, pcm)
    samples = load_audio(wav)
    mono = (pcm.astype(np.float64) / 32768).mean(axis=1)
    np.testing.assert_allclose(samples, resample_poly(mono, 160, 441), atol=1e-6)
    assert len(samples) == round(1.1 * 16_000)
    ids, features, mask = hf_inputs([samples], tokens, [2, tokens.audio, 50])
    with torch.no_grad():
        want = hf.generate(input_ids=ids, input_features=features, input_features_mask=mask, max_new_tokens=6,
                           do_sample=False, min_new_tokens=6)[0, ids.shape[1]:].tolist()
    with Session.from_checkpoint(path, max_context=256, prefill_chunk=8) as s:
        assert [t.token for t in s.generate([2, tokens.audio, 50], 6, audio=[wav], stop_on_eos=False)] == want


def test_audio_over_thirty_seconds_is_several_clips(spliced):
    """31 s of audio: two clips, as transformers' processor sees the two pieces (750 tokens, then 25)."""
    from gemma_edge.runtime.audio import read_clips

    hf, _, _, tokens, path = spliced
    clips = read_clips(speech_like(31.0, seed=15))
    assert [c.soft_tokens for c in clips] == [750, 25]
    from gemma_edge.runtime.session import Session

    with Session.from_checkpoint(path, max_context=1024, prefill_chunk=8) as s:
        ids, _ = s._expand_audio([2, tokens.audio, 9], [speech_like(31.0, seed=15)])
    assert ids == [2] + tokens.span(750) + tokens.span(25) + [9]


@pytest.mark.parametrize("audio, text, message", [
    ([WAVES[0]], "two", "2 audio placeholder.*for 1 audio item"),
    ([WAVES[0]], "frame", "holds audio frame ids"),
    ([np.zeros(100, np.float32)], "one", "make no soft token"),
    (["/nonexistent.wav"], "one", "no such audio file"),
    ([np.array([1, 2, 3])], "one", "expected 16 kHz mono float samples"),
])
def test_session_refuses_audio_prompts_it_cannot_run(spliced, audio, text, message):
    from gemma_edge.runtime.session import GenerationError, Session

    _, _, _, tokens, path = spliced
    ids = {"two": [2, tokens.audio, tokens.audio], "frame": [2, tokens.boa, 5], "one": [2, tokens.audio]}[text]
    with Session.from_checkpoint(path, max_context=256, prefill_chunk=8) as s:
        with pytest.raises(GenerationError, match=message):
            s.generate(ids, 4, audio=audio)


def test_text_checkpoint_refuses_audio(tiny_checkpoint):
    from gemma_edge.runtime.session import GenerationError, Session

    with Session.from_checkpoint(tiny_checkpoint, max_context=64, prefill_chunk=8) as s:
        with pytest.raises(GenerationError, match="has no audio tower"):
            s.generate([2, 5], 2, audio=[WAVES[0]])
