"""The generation loop's golden suite (tests/golden/loop.json): current with the Python loop, replayed through it.

The same file is replayed by Java (LoopGoldenTest, android_demo/core/run_tests.sh) and by the native host
(test_native.py's gemma-edge-loop-golden); gemma_edge/contract/loop.md specifies the loop.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gemma_edge.runtime.sampling import Sampler

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_loop_golden", HERE / "golden" / "make_loop_golden.py")
mlg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mlg)


def golden() -> dict:
    return json.loads(mlg.GOLDEN.read_text())


def problem(case: dict) -> str:
    """"" when Session does what the case records, else what differs."""
    out = mlg.run_case(case, case["steps"])
    if "error" in case:
        if "error" not in out:
            return f"expected a refusal ({case['error']}), generated {out['expect']['tokens']}"
        if out["error"]["field"] != case["error"]["field"]:
            return f"refusal field: expected {case['error']['field']!r}, found {out['error']['field']!r}"
        if case["error"]["message_contains"] not in out["error"]["message"]:
            return f"refusal message: expected it to contain {case['error']['message_contains']!r}, found " \
                   f"{out['error']['message']!r}"
        if out["fetches"] or out["prefill_calls"]:
            return f"refused after work: fetches {out['fetches']}, prefill calls {out['prefill_calls']}"
        return ""
    if "error" in out:
        return f"refused: {out['error']}"
    for key, want in case["expect"].items():
        if out["expect"][key] != want:
            return f"{key}: expected {want}, found {out['expect'][key]}"
    if len(case["steps"]) != len(case["expect"]["tokens"]):
        return f"steps: {len(case['steps'])} recorded for {len(case['expect']['tokens'])} tokens"
    return ""


def test_loop_golden_is_current():
    # regenerated from Session and sampling.py now, it must be the committed file byte for byte
    assert mlg.GOLDEN.exists(), f"{mlg.GOLDEN}: missing; run python tests/golden/make_loop_golden.py"
    fresh = mlg.render(mlg.build())
    assert fresh == mlg.GOLDEN.read_text(), \
        f"{mlg.GOLDEN} is stale: the loop or the sampler changed; rerun tests/golden/make_loop_golden.py and " \
        "check every host still passes"


@pytest.mark.parametrize("name", [c["name"] for c in golden()["cases"]])
def test_loop_golden_case_replays_through_session(name):
    case = next(c for c in golden()["cases"] if c["name"] == name)
    assert problem(case) == ""


def test_loop_golden_replay_can_fail():
    # the checker above must see a wrong recording: tokens, fetches, decode calls, a refusal's field
    g = golden()
    ok = next(c for c in g["cases"] if c["name"] == "greedy_eos_later")
    refused = next(c for c in g["cases"] if c["name"] == "refuse_context")
    bad = []
    for key, edit in (("tokens", lambda e: e["tokens"].__setitem__(-1, 0)),
                      ("fetches", lambda e: e["fetches"].pop()),
                      ("decode_calls", lambda e: e["decode_calls"][0].__setitem__(1, 0)),
                      ("prefill_calls", lambda e: e["prefill_calls"].append([99, 1])),
                      ("stop_reason", lambda e: e.__setitem__("stop_reason", "max_new_tokens"))):
        c = json.loads(json.dumps(ok))
        edit(c["expect"])
        bad.append((key, c))
    c = json.loads(json.dumps(refused))
    c["error"]["field"] = "prompt"
    bad.append(("refusal field", c))
    img = next(c for c in g["cases"] if c["name"] == "two_images_across_chunks")
    for key, edit in (("expanded_prompt", lambda e: e["expanded_prompt"].__setitem__(3, 7)),
                      ("encode_calls", lambda e: e["encode_calls"].reverse()),
                      ("prefill_soft", lambda e: e["prefill_soft"][2].__setitem__(0, 2.0)),
                      ("image fetch", lambda e: e["fetches"][0].__setitem__(3, e["expanded_prompt"][3]))):
        c = json.loads(json.dumps(img))
        edit(c["expect"])
        bad.append((key, c))
    heard = next(c for c in g["cases"] if c["name"] == "two_audio_items_across_chunks")
    for key, edit in (("audio expanded_prompt", lambda e: e["expanded_prompt"].pop(3)),
                      ("audio_encode_calls", lambda e: e["audio_encode_calls"].reverse()),
                      ("audio prefill_soft", lambda e: e["prefill_soft"][3].__setitem__(2, -1.0)),
                      ("audio fetch", lambda e: e["fetches"][0].__setitem__(3, e["expanded_prompt"][3]))):
        c = json.loads(json.dumps(heard))
        edit(c["expect"])
        bad.append((key, c))
    for what, c in bad:
        assert problem(c) != "", f"a wrong {what} passed"


def test_loop_golden_covers_the_rules():
    # what loop.md promises each host is checked on; a suite that lost one of these could not catch its drift
    g = golden()
    cases = {c["name"]: c for c in g["cases"]}
    ran = [c for c in cases.values() if "expect" in c]
    eos = lambda c: c["expect"]["stop_reason"] == "eos"   # noqa: E731
    assert any(eos(c) and len(c["expect"]["tokens"]) == 1 and c["max_new_tokens"] > 1 for c in ran), \
        "eos as the first token"
    assert any(eos(c) and len(c["expect"]["tokens"]) > 1 for c in ran), "eos after the first token"
    assert any(not c["stop_on_eos"] and set(c["expect"]["tokens"][:-1]) & set(c["eos"]) for c in ran), \
        "an eos fed back with stop_on_eos false"
    assert any(len(c["prompt"]) + c["max_new_tokens"] == c["max_context"] for c in ran), "a run filling the context"
    assert any(len(c["expect"]["prefill_calls"]) > 2 for c in ran), "a multi-chunk prefill"
    assert any(c["sampler"]["seed"] >= 2**63 for c in ran if c["sampler"]["temperature"] > 0), "a seed past 2^63"
    for key in ("temperature", "top_k", "top_p"):
        default = {"temperature": 0.0, "top_k": 0, "top_p": 1.0}[key]
        assert any(c["sampler"][key] != default and c["sampler"]["temperature"] > 0 and c["sampler"]["top_k"] != 1
                   for c in ran), f"sampling with {key}"
    assert {c["error"]["field"] for c in cases.values() if "error" in c} == {"context", "max_new_tokens", "prompt",
                                                                             "images", "audio"}
    for c in ran:
        e = c["expect"]
        prompt = e.get("expanded_prompt", c["prompt"])
        marks = [t[k] for t, k in ((c.get("image_tokens"), "image"), (c.get("audio_tokens"), "audio")) if t]
        fetched = [c["pad_token_id"] if t in marks else t for t in prompt]
        assert e["fetches"][0] == fetched and e["fetches"][1:] == [[t] for t in e["tokens"][:-1]], c["name"]
        assert e["decode_calls"] == [[t, len(prompt) + i] for i, t in enumerate(e["tokens"][:-1])], c["name"]
    # images and audio: expanded at placeholders and first, one and two per prompt (an audio item of two clips),
    # spans cut by chunks, the soft rows at exactly the placeholders in order (image k: k + 1, clip j: -(j + 1)),
    # the context counting the expanded prompt
    shown = [c for c in ran if "images" in c]
    assert any(c["image_tokens"]["image"] in c["prompt"] for c in shown)
    assert any(c["image_tokens"]["image"] not in c["prompt"] and c["prompt"][0] == mlg.BOS for c in shown)
    assert any(c["image_tokens"]["image"] not in c["prompt"] and c["prompt"][0] != mlg.BOS for c in shown)
    assert any(len(c["images"]) == 2 for c in shown)
    heard = [c for c in ran if "audio" in c]
    assert any(c["audio_tokens"]["audio"] in c["prompt"] for c in heard)
    assert any(c["audio_tokens"]["audio"] not in c["prompt"] and c["prompt"][0] != mlg.BOS for c in heard)
    assert any(len(item) == 2 for c in heard for item in c["audio"]), "an item over 30 s: two clips"
    assert any("images" in c and c["audio_tokens"]["audio"] not in c["prompt"] for c in heard), "audio after images"
    for c in shown + heard:
        e = c["expect"]
        soft = [v for chunk in e["prefill_soft"] for v in chunk]
        owner = [0.0] * len(e["expanded_prompt"])
        for key, name, counts, value in (("image_tokens", "image", c.get("images", []), lambda k: float(k + 1)),
                                         ("audio_tokens", "audio", [n for item in c.get("audio", []) for n in item],
                                          lambda k: -float(k + 1))):
            if not counts:
                continue
            t = c[key]
            assert e["encode_calls" if name == "image" else "audio_encode_calls"] == counts, c["name"]
            at = [i for i, tok in enumerate(e["expanded_prompt"]) if tok == t[name]]
            assert len(at) == sum(counts), c["name"]
            for k, n in enumerate(counts):
                for i in at[sum(counts[:k]):sum(counts[:k + 1])]:
                    owner[i] = value(k)
            first, last = ("boi", "eoi") if name == "image" else ("boa", "eoa")
            assert e["expanded_prompt"].count(t[first]) == e["expanded_prompt"].count(t[last]) == len(counts)
        assert soft == owner, c["name"]
    assert any(len(c["expect"]["expanded_prompt"]) + c["max_new_tokens"] == c["max_context"] for c in shown)
    assert any(len(c["expect"]["expanded_prompt"]) + c["max_new_tokens"] == c["max_context"] for c in heard)
    assert any(c.get("error", {}).get("field") == "context" and "images" in c for c in cases.values())
    assert any(c.get("error", {}).get("field") == "context" and "audio" in c for c in cases.values())


def test_sampler_refuses_an_infinite_largest_logit():
    # as Java's Sampler: every weight would be NaN and the pick would be the last kept index, chosen by no logit
    for logits in ([0.0, np.inf, 1.0], [-np.inf, -np.inf]):
        with pytest.raises(ValueError, match="expected a finite largest logit"):
            Sampler(0.8, 0, 1.0, 3)(np.asarray(logits, np.float32))
    assert Sampler()(np.asarray([0.0, np.inf, 1.0], np.float32)) == 1          # greedy needs no weights
    assert Sampler(0.8, 0, 1.0, 3)(np.asarray([-np.inf, -50.0, 5.0], np.float32)) == 2


# ------------------------------------------------------------------------------------------------------
# The Gemma 4 chat format: render_gemma4_chat (and TextCodec's chat prompt) = apply_chat_template over
# Gemma 4's E2B/E4B chat template (tests/golden/gemma4_e_chat_template.jinja), as text and as token ids
# ------------------------------------------------------------------------------------------------------

CHAT_CASES = json.loads((HERE / "golden" / "chat_cases.json").read_text())["cases"]


@pytest.fixture(scope="module")
def chat_tokenizers(tmp_path_factory):
    """The Gemma-style test tokenizer (turn tokens at Gemma's ids, image tokens at a tiny model's), raw and as
    transformers' tokenizer carrying Gemma 4's chat template."""
    from transformers import PreTrainedTokenizerFast

    from gemma_edge.contract.image import ImageTokens
    from gemma_edge.export.random_tokenizer import build_test_tokenizer

    tok = build_test_tokenizer(512, ImageTokens.for_vocab(512))
    path = tmp_path_factory.mktemp("chat") / "tokenizer.json"
    tok.save(str(path))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                 unk_token="<unk>")
    hf.chat_template = (HERE / "golden" / "gemma4_e_chat_template.jinja").read_text()
    return tok, hf, path


def hf_chat(hf, case, tokenize: bool):
    out = hf.apply_chat_template(case["messages"], add_generation_prompt=True, enable_thinking=case["thinking"],
                                 tokenize=tokenize)
    return out if tokenize is False or isinstance(out, list) else list(out["input_ids"])


@pytest.mark.parametrize("case", CHAT_CASES, ids=[c["name"] for c in CHAT_CASES])
def test_gemma4_chat_equals_apply_chat_template(chat_tokenizers, case):
    from gemma_edge.contract.chat import count_images, render_gemma4_chat
    from gemma_edge.contract.image import ImageTokens

    tok, hf, _ = chat_tokenizers
    text = render_gemma4_chat(case["messages"], thinking=case["thinking"])
    assert text == hf_chat(hf, case, False)
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids == hf_chat(hf, case, True)
    # each image item is the one placeholder id the session expands (never the placeholder spelled out)
    assert ids.count(ImageTokens.for_vocab(512).image) == count_images(case["messages"])


def test_text_codec_chat_prompt_equals_apply_chat_template(chat_tokenizers):
    # the runtime's own path (Session.encode(chat=True) -> TextCodec.encode_chat): user, and system + user
    from gemma_edge.runtime.tokenizer import TextCodec

    _, hf, path = chat_tokenizers
    codec = TextCodec(path, 2)
    for system in (None, "You are terse."):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Hi!"}]
        assert codec.encode_chat("Hi!", system) == hf_chat(hf, {"messages": messages, "thinking": False}, True)


def test_e_template_is_llama_cpp_s_without_the_empty_thought_channel():
    """The E2B/E4B template the chat tests use is llama.cpp's Gemma 4 template less one block: the empty
    thought channel its generation prompt closes when thinking is off (26B/31B behaviour, not E2B/E4B's)."""
    full = (HERE / "golden" / "gemma4_chat_template.jinja").read_text()
    block = ("    {%- if not enable_thinking | default(false) -%}\n"
             "        {{- '<|channel>thought\\n<channel|>' -}}\n"
             "    {%- endif -%}\n")
    assert full.count(block) == 1
    assert (HERE / "golden" / "gemma4_e_chat_template.jinja").read_text() == full.replace(block, "")


def test_chat_cases_cover_the_format():
    names = {c["name"]: c for c in CHAT_CASES}
    assert any(c["thinking"] for c in CHAT_CASES) and any(not c["thinking"] for c in CHAT_CASES)
    assert any(m["role"] == "assistant" for c in CHAT_CASES for m in c["messages"]), "a model turn"
    assert any(c["messages"][0]["role"] == "system" and len(c["messages"]) > 2 for c in CHAT_CASES), "multi-turn"
    assert "thinking_system_multi_turn" in names
    images = [c for c in CHAT_CASES if any(isinstance(m["content"], list) for m in c["messages"])]
    kinds = [[item["type"] for m in c["messages"] if isinstance(m["content"], list) for item in m["content"]]
             for c in images]
    assert any(k[0] == "image" for k in kinds), "an image-first user turn"
    assert any("image" in k[1:-1] and k[0] == k[-1] == "text" for k in kinds), "an image between texts"
    assert any(k.count("image") >= 2 for k in kinds), "two images"
    assert any(m["role"] in ("assistant", "model") for c in images for m in c["messages"]), "a model turn after one"
