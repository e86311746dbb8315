"""Writes tests/golden/loop.json, the generation loop's golden suite, from the Python loop itself.

Usage: python tests/golden/make_loop_golden.py [OUT]   (default: tests/golden/loop.json beside this file)

Every case runs `Session.generate` — its up-front checks and `Session._loop` — over a replaying back-end
and a recording PLE source (`ReplayBackend`, `RecordingPle`), with the sampler of
`gemma_edge.runtime.sampling`: the tokens, stop reasons, fetch / prefill / decode calls and refusals
recorded are what the runtime does, not what a copy of it does. tests/test_loop_golden.py regenerates
the file (it must be current) and replays it; Java's LoopGoldenTest and the native host's
gemma-edge-loop-golden replay the same file. The loop is specified in gemma_edge/contract/loop.md.

It lives under tests/ rather than in gemma_edge/contract: it drives the runtime, and the contract imports
nothing of the runtime (nor numpy).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from gemma_edge.contract.audio import AudioTokens
from gemma_edge.contract.image import PATCH_DIM, SUPPORTED_BUDGETS, ImageTokens
from gemma_edge.contract.presets import preset
from gemma_edge.runtime.audio import PreparedClip
from gemma_edge.runtime.image import PreparedImage
from gemma_edge.runtime.session import GenerationError, Session

GOLDEN = Path(__file__).resolve().parent / "loop.json"
VOCAB = 96
EOS = [1, 50]
BOS = 2
IMAGE_TOKENS = ImageTokens.for_vocab(VOCAB)    # boi 93, image 94, eoi 95
AUDIO_TOKENS = AudioTokens.for_vocab(VOCAB)    # boa 90, audio 91, eoa 92
IMAGE_BUDGET = 70
SEED = 20260419


class GoldenError(RuntimeError):
    """The loop did not do what a case is there to show (a stop reason, a refusal): the suite would not test it."""


class RecordingPle:
    """A PLE source whose row for id t is the single value t, recording every fetch call."""

    def __init__(self):
        self.fetches: list[list[int]] = []
        self.fetch_log: list = []          # Session reads the last entry's I/O counts when there is one

    def fetch(self, ids) -> np.ndarray:
        ids = [int(t) for t in ids]
        self.fetches.append(ids)
        return np.asarray(ids, np.float32).reshape(-1, 1, 1)          # [T, L=1, P=1]

    def fetch_one(self, token: int) -> np.ndarray:
        self.fetches.append([int(token)])
        return np.full((1, 1), token, np.float32)

    def close(self) -> None:
        pass


class ReplayBackend:
    """Returns steps[0] from the last prefill chunk (NaN logits from the others: the loop must not read them)
    and steps[k] from the k-th decode call; checks the PLE rows it is handed are its tokens' rows.

    `steps` is a list, or a function of k that makes step k when the loop first asks for it (recording)."""

    def __init__(self, steps, prompt_len: int, placeholders: tuple[int, ...] = (), pad_id: int = 0):
        self.placeholders, self.pad_id = list(placeholders), pad_id
        self.prefill_soft: list[list[float]] = []
        self.prefill_ids: list[list[int]] = []
        self.make = steps if callable(steps) else None
        self.steps = [] if callable(steps) else [np.asarray(s, np.float32) for s in steps]
        self.prompt_len = prompt_len
        self.prefill_calls: list[list[int]] = []
        self.decode_calls: list[list[int]] = []

    def _step(self, k: int) -> np.ndarray:
        if self.make is not None and k == len(self.steps):
            self.steps.append(self.make(k))
        if k >= len(self.steps):
            raise AssertionError(f"the loop asked for logits step {k}, the case records {len(self.steps)}")
        return self.steps[k]

    def prefill(self, ids, start: int, rows, soft=None) -> np.ndarray:
        self.prefill_calls.append([int(start), len(ids)])
        self.prefill_ids.append([int(t) for t in ids])
        fetched = np.asarray(ids)
        if self.placeholders:                    # an image or audio placeholder's PLE row is the pad row
            fetched = np.where(np.isin(fetched, self.placeholders), self.pad_id, fetched)
        if not np.array_equal(np.asarray(rows).reshape(-1), fetched.astype(np.float32)):
            raise AssertionError(f"prefill at {start}: the rows are not the batched fetch's rows of its tokens")
        if soft is not None:
            soft = np.asarray(soft)
            if soft.shape[0] != len(ids) or not (soft == soft[:, :1]).all():
                raise AssertionError(f"prefill at {start}: soft rows {soft.shape} are not the replay encoder's")
            self.prefill_soft.append([float(v) for v in soft[:, 0]])
        elif self.placeholders:
            self.prefill_soft.append([0.0] * len(ids))
        if start + len(ids) < self.prompt_len:
            return np.full(VOCAB, np.nan, np.float32)
        return self._step(0)

    def decode(self, token: int, pos: int, row) -> np.ndarray:
        self.decode_calls.append([int(token), int(pos)])
        if np.asarray(row).reshape(-1).tolist() != [float(token)]:
            raise AssertionError(f"decode of token {token}: handed another token's PLE row")
        return self._step(len(self.decode_calls))


class ReplayEncoder:
    """A vision encoder whose k-th image's soft tokens are rows all equal to k + 1 (0 is text's soft row),
    recording the soft-token count of every encode call."""

    budgets = SUPPORTED_BUDGETS

    def __init__(self, hidden: int):
        self.hidden = hidden
        self.encode_calls: list[int] = []

    def encode(self, image: PreparedImage) -> np.ndarray:
        self.encode_calls.append(image.soft_tokens)
        return np.full((image.soft_tokens, self.hidden), float(len(self.encode_calls)), np.float32)

    def release(self) -> None:
        pass


class ReplayAudioEncoder:
    """An audio encoder whose j-th clip (counted over the prompt's items) has soft tokens all equal to -(j + 1),
    recording the soft-token count of every encode call."""

    def __init__(self, hidden: int):
        self.hidden = hidden
        self.encode_calls: list[int] = []

    def encode(self, clip: PreparedClip) -> np.ndarray:
        self.encode_calls.append(clip.soft_tokens)
        return np.full((clip.soft_tokens, self.hidden), -float(len(self.encode_calls)), np.float32)

    def release(self) -> None:
        pass


def replay_item(clips: list[int]) -> list[PreparedClip]:
    """An audio item as the loop sees it once read and cut: its clips' soft-token counts (the samples are the
    encoder's)."""
    return [PreparedClip(np.zeros((0, 160), np.float32), np.zeros(0, np.float32), n, 0) for n in clips]


def replay_image(soft_tokens: int) -> PreparedImage:
    """An image as the loop sees it once preprocessed: its soft-token count (the pixels are the encoder's)."""
    return PreparedImage(np.zeros((0, PATCH_DIM), np.float32), np.zeros((0, 2), np.int64), soft_tokens,
                         (48, 48 * soft_tokens), IMAGE_BUDGET)


def session_for(case: dict, backend: ReplayBackend, ple: RecordingPle) -> Session:
    cfg = preset("tiny", vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB, bos_token_id=BOS)
    session = Session.from_parts(cfg, backend, ple, max_context=case["max_context"],
                                 prefill_chunk=case["prefill_chunk"], eos_token_ids=case["eos"])
    if case.get("image_tokens") is not None:
        t = case["image_tokens"]
        session.image_tokens = ImageTokens(t["boi"], t["image"], t["eoi"])
        session.vision = ReplayEncoder(case["hidden"])
    if case.get("audio_tokens") is not None:
        t = case["audio_tokens"]
        session.audio_tokens = AudioTokens(t["boa"], t["audio"], t["eoa"])
        session.audio = ReplayAudioEncoder(case["hidden"])
    return session


def run_case(case: dict, steps) -> dict:
    """Runs one case through Session; returns its outcome in the golden's terms (plus the steps used)."""
    soft = "images" in case or "audio" in case
    placeholders = tuple(t for key, name in (("image_tokens", "image"), ("audio_tokens", "audio"))
                         if case.get(key) is not None for t in [case[key][name]])
    backend, ple = ReplayBackend(steps, -1, placeholders, case.get("pad_token_id", 0)), RecordingPle()
    session = session_for(case, backend, ple)
    backend.prompt_len = len(case["prompt"])
    if soft:   # the expanded prompt's last chunk gives steps[0]
        try:
            backend.prompt_len = len(session._expand(case["prompt"], [replay_image(n) for n in case.get("images", [])],
                                                     IMAGE_BUDGET, [replay_item(c) for c in case.get("audio", [])])[0])
        except GenerationError:
            pass
    s = case["sampler"]

    def encoded() -> dict:
        calls = {}
        for key, enc in (("encode_calls", session.vision), ("audio_encode_calls", session.audio)):
            if isinstance(enc, (ReplayEncoder, ReplayAudioEncoder)):
                calls[key] = enc.encode_calls
        return calls

    try:
        tokens = [g.token for g in session.generate(case["prompt"], case["max_new_tokens"],
                                                    temperature=s["temperature"], top_k=s["top_k"],
                                                    top_p=s["top_p"], seed=s["seed"],
                                                    stop_on_eos=case["stop_on_eos"],
                                                    images=[replay_image(n) for n in case.get("images", [])],
                                                    image_budget=IMAGE_BUDGET,
                                                    audio=[replay_item(c) for c in case.get("audio", [])])]
    except GenerationError as e:
        return {"error": {"field": e.field, "message": str(e)}, "fetches": ple.fetches,
                "prefill_calls": backend.prefill_calls, **encoded(), "steps": backend.steps}
    expect = {"tokens": tokens, "stop_reason": session.last_run.stop_reason, "fetches": ple.fetches,
              "prefill_calls": backend.prefill_calls, "decode_calls": backend.decode_calls}
    if soft:
        prompt = [int(t) for c in backend.prefill_ids for t in c]
        expect.update(expanded_prompt=prompt, **{"encode_calls": [], **encoded()}, prefill_soft=backend.prefill_soft)
        if "audio" in case:
            expect.setdefault("audio_encode_calls", [])
        else:
            expect.pop("audio_encode_calls", None)
    return {"expect": expect, "steps": backend.steps}


# ------------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------------

def f32(x: float) -> float:
    return float(np.float32(x))


GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, seed=0)

# name, prompt length, prefill_chunk, max_context, max_new_tokens, sampler, stop_on_eos, logits shaping,
# and what the case is there to show: a stop reason, or a refusal (field, text its message must contain)
CASES = [
    ("greedy_max_new", 7, 4, 64, 6, GREEDY, True, {}, "max_new_tokens"),
    ("greedy_ties_lowest_index", 5, 8, 64, 4, GREEDY, True, dict(tie_at=(0, 2)), "max_new_tokens"),
    ("greedy_eos_first_token", 6, 4, 64, 10, GREEDY, True, dict(eos_at=(0,)), "eos"),
    ("greedy_eos_later", 9, 4, 64, 12, GREEDY, True, dict(eos_at=(4,)), "eos"),
    ("greedy_second_eos_id", 4, 2, 64, 12, GREEDY, True, dict(eos_at=(3,), eos_id=EOS[1]), "eos"),
    ("stop_on_eos_false", 6, 3, 64, 6, GREEDY, False, dict(eos_at=(0, 2)), "max_new_tokens"),
    ("max_new_tokens_1", 5, 4, 64, 1, GREEDY, True, {}, "max_new_tokens"),
    ("max_new_tokens_1_eos", 5, 4, 64, 1, GREEDY, True, dict(eos_at=(0,)), "eos"),
    ("multi_chunk_prefill", 21, 4, 64, 5, GREEDY, True, {}, "max_new_tokens"),
    ("prompt_one_chunk_exactly", 8, 8, 64, 3, GREEDY, True, {}, "max_new_tokens"),
    ("prefill_chunk_1", 5, 1, 64, 3, GREEDY, True, {}, "max_new_tokens"),
    ("fills_context_exactly", 13, 4, 16, 3, GREEDY, True, {}, "max_new_tokens"),
    ("prompt_one_short_of_context", 15, 4, 16, 1, GREEDY, True, {}, "max_new_tokens"),
    ("greedy_top_k_1", 5, 4, 64, 5, dict(temperature=1.0, top_k=1, top_p=1.0, seed=9), True, {}, "max_new_tokens"),
    ("temperature_0_with_top_k", 5, 4, 64, 5, dict(temperature=0.0, top_k=40, top_p=f32(0.5), seed=3), True, {},
     "max_new_tokens"),
    ("sample_temperature", 6, 4, 64, 10, dict(temperature=f32(0.7), top_k=0, top_p=1.0, seed=12345), True, {},
     "max_new_tokens"),
    ("sample_top_k", 6, 4, 64, 10, dict(temperature=1.25, top_k=5, top_p=1.0, seed=7), True, {}, "max_new_tokens"),
    ("sample_top_k_past_vocab", 4, 4, 64, 8, dict(temperature=f32(1.7), top_k=1000, top_p=1.0, seed=0), True, {},
     "max_new_tokens"),
    ("sample_top_p_seed_past_2_63", 6, 4, 64, 10, dict(temperature=1.0, top_k=0, top_p=f32(0.9), seed=2**63 + 5),
     True, {}, "max_new_tokens"),
    ("sample_all_seed_2_64_minus_1", 6, 4, 64, 10,
     dict(temperature=f32(0.8), top_k=20, top_p=f32(0.95), seed=2**64 - 1), True, {}, "max_new_tokens"),
    ("sample_ties", 5, 4, 64, 8, dict(temperature=f32(0.3), top_k=3, top_p=1.0, seed=424242), True,
     dict(tie_at=(0, 1, 2, 3, 4, 5, 6, 7)), "max_new_tokens"),
    ("sample_eos", 6, 4, 64, 12, dict(temperature=f32(0.9), top_k=50, top_p=f32(0.95), seed=2**40 + 1), True,
     dict(eos_at=(5,)), "eos"),
    ("refuse_context", 10, 4, 16, 7, GREEDY, True, {}, ("context", "prompt 10 + max_new_tokens 7 = 17 tokens")),
    ("refuse_prompt_fills_context", 16, 4, 16, 1, GREEDY, True, {},
     ("context", "prompt 16 + max_new_tokens 1 = 17 tokens")),
    ("refuse_max_new_tokens_0", 5, 4, 64, 0, GREEDY, True, {}, ("max_new_tokens", "found 0")),
    ("refuse_empty_prompt", 0, 4, 64, 4, GREEDY, True, {}, ("prompt", "expected at least one token")),
    ("refuse_prompt_id_past_vocab", 5, 4, 64, 4, GREEDY, True, dict(bad_id=VOCAB), ("prompt", "vocab_size")),
    # two checks fail: the first in loop.md's order names the field
    ("refuse_bad_id_before_context", 10, 4, 16, 7, GREEDY, True, dict(bad_id=VOCAB), ("prompt", "vocab_size")),
    ("refuse_max_new_tokens_before_context", 20, 4, 16, 0, GREEDY, True, {}, ("max_new_tokens", "found 0")),
]


# name, prompt (B = bos, I = image placeholder, O = boi, C = eoi, X = an id past the vocabulary, else a
# random text id), soft tokens per image, prefill_chunk, max_context, max_new_tokens, the model has a tower,
# logits shaping, and what the case is there to show
IMAGE_CASES = [
    ("image_first_after_bos", "Btttt", [5], 4, 64, 4, True, {}, "max_new_tokens"),
    ("image_first_no_bos", "tttt", [3], 4, 64, 3, True, {}, "max_new_tokens"),
    ("image_at_placeholder", "BttIttt", [6], 4, 64, 4, True, {}, "max_new_tokens"),
    ("two_images_across_chunks", "BtIttIt", [4, 7], 3, 64, 5, True, {}, "max_new_tokens"),
    ("two_images_first", "Bttt", [2, 3], 8, 64, 3, True, {}, "max_new_tokens"),
    ("image_then_eos", "BtIt", [5], 4, 64, 8, True, dict(eos_at=(2,)), "eos"),
    ("image_fills_context_exactly", "BtIt", [10], 4, 16, 1, True, {}, "max_new_tokens"),
    ("refuse_images_no_tower", "Bttt", [4], 4, 64, 4, False, {}, ("images", "no vision tower")),
    ("refuse_image_frame_ids", "BtOtt", [4], 4, 64, 4, True, {}, ("images", "image frame ids")),
    ("refuse_eoi_in_prompt", "BttC", [4], 4, 64, 4, True, {}, ("images", "image frame ids")),
    ("refuse_placeholders_not_one_per_image", "BtItIt", [4], 4, 64, 4, True, {}, ("images", "one per image")),
    ("refuse_context_counts_image_tokens", "BtIt", [10], 4, 16, 4, True, {},
     ("context", "prompt 15 + max_new_tokens 4 = 19 tokens")),
    ("refuse_bad_id_before_images", "BtOtX", [4], 4, 64, 4, True, {}, ("prompt", "vocab_size")),
    ("refuse_images_before_max_new_tokens", "BtOt", [4], 4, 64, 0, True, {}, ("images", "image frame ids")),
]


# name, prompt (as above, and A = audio placeholder, P = boa, Q = eoa), soft tokens per image, soft tokens per
# clip of each audio item (an item over 30 s is several clips), prefill_chunk, max_context, max_new_tokens, the
# model has a vision tower, an audio tower, logits shaping, and what the case is there to show
AUDIO_CASES = [
    ("audio_first_after_bos", "Btttt", [], [[5]], 4, 64, 4, False, True, {}, "max_new_tokens"),
    ("audio_first_no_bos", "tttt", [], [[3]], 4, 64, 3, False, True, {}, "max_new_tokens"),
    ("audio_at_placeholder", "BttAttt", [], [[6]], 4, 64, 4, False, True, {}, "max_new_tokens"),
    ("audio_item_of_two_clips", "BtAt", [], [[4, 3]], 4, 64, 4, False, True, {}, "max_new_tokens"),
    ("two_audio_items_across_chunks", "BtAttAt", [], [[4], [2, 3]], 3, 64, 5, False, True, {}, "max_new_tokens"),
    ("audio_after_images_first", "Bttt", [2], [[3]], 4, 64, 3, True, True, {}, "max_new_tokens"),
    ("image_and_audio_placeholders", "BtAtIt", [3], [[2]], 4, 64, 4, True, True, {}, "max_new_tokens"),
    ("audio_then_eos", "BtAt", [], [[5]], 4, 64, 8, False, True, dict(eos_at=(1,)), "eos"),
    ("audio_fills_context_exactly", "BtAt", [], [[5, 5]], 4, 18, 1, False, True, {}, "max_new_tokens"),
    ("refuse_audio_no_tower", "Bttt", [], [[4]], 4, 64, 4, True, False, {}, ("audio", "no audio tower")),
    ("refuse_audio_frame_ids", "BtPtt", [], [[4]], 4, 64, 4, False, True, {}, ("audio", "audio frame ids")),
    ("refuse_eoa_in_prompt", "BttQ", [], [[4]], 4, 64, 4, False, True, {}, ("audio", "audio frame ids")),
    ("refuse_audio_placeholders_not_one_per_item", "BtAtAt", [], [[4]], 4, 64, 4, False, True, {},
     ("audio", "one per item")),
    ("refuse_context_counts_audio_tokens", "BtAt", [], [[5, 5]], 4, 18, 2, False, True, {},
     ("context", "prompt 17 + max_new_tokens 2 = 19 tokens")),
    ("refuse_images_before_audio", "BtOtP", [4], [[4]], 4, 64, 4, True, True, {}, ("images", "image frame ids")),
    ("refuse_audio_before_max_new_tokens", "BtPt", [], [[4]], 4, 64, 0, False, True, {}, ("audio", "audio frame ids")),
]


def image_prompt(pattern: str, rng: np.random.Generator) -> list[int]:
    marks = {"B": BOS, "I": IMAGE_TOKENS.image, "O": IMAGE_TOKENS.boi, "C": IMAGE_TOKENS.eoi, "X": VOCAB,
             "A": AUDIO_TOKENS.audio, "P": AUDIO_TOKENS.boa, "Q": AUDIO_TOKENS.eoa}
    text = [int(t) for t in rng.integers(3, AUDIO_TOKENS.boa, len(pattern)) if t not in EOS]
    return [marks.get(c, text[i % len(text)]) for i, c in enumerate(pattern)]


def logits_maker(rng: np.random.Generator, eos_at=(), eos_id=EOS[0], tie_at=(), bad_id=None):
    """Step k's logits [V]: multiples of 1/16 (exact in float32, short in JSON), shaped for the case."""
    def make(k: int) -> np.ndarray:
        x = np.round(rng.standard_normal(VOCAB) * 3 * 16) / 16
        x[EOS] = np.minimum(x[EOS], -8.0)                # eos only where the case puts it
        if k in eos_at:
            x[eos_id] = x.max() + 8
        if k in tie_at:
            x[[70, 13, 41]] = x.max() + 0.5             # greedy picks 13
        return x.astype(np.float32)
    return make


def build() -> dict:
    rng = np.random.default_rng(SEED)
    cases = []
    for name, plen, chunk, max_context, max_new, sampler, stop_on_eos, shaping, want in CASES:
        prompt = [BOS] + [int(t) for t in rng.integers(3, VOCAB, max(plen - 1, 0))] if plen else []
        prompt = [t for t in prompt if t not in EOS]
        while len(prompt) < plen:
            prompt.append(7)
        if plen > 4:
            prompt[plen // 2] = prompt[1]                # a duplicate id: fetched as it is, the store dedupes
        bad_id = shaping.pop("bad_id", None)
        if bad_id is not None:
            prompt[2] = bad_id
        case = {"name": name, "prompt": prompt, "max_new_tokens": max_new, "max_context": max_context,
                "prefill_chunk": chunk, "eos": EOS, "stop_on_eos": stop_on_eos,
                "sampler": {"temperature": f32(sampler["temperature"]), "top_k": sampler["top_k"],
                            "top_p": f32(sampler["top_p"]), "seed": sampler["seed"]}}
        out = run_case(case, logits_maker(rng, **shaping))
        case["steps"] = [[float(v) for v in s] for s in out["steps"]]
        check_outcome(name, case, out, want)
        cases.append(case)
    hidden = preset("tiny").hidden_size
    for name, pattern, images, chunk, max_context, max_new, tower, shaping, want in IMAGE_CASES:
        case = {"name": name, "prompt": image_prompt(pattern, rng), "max_new_tokens": max_new,
                "max_context": max_context, "prefill_chunk": chunk, "eos": EOS, "stop_on_eos": True,
                "sampler": dict(GREEDY, temperature=0.0, top_p=1.0), "images": images,
                "image_tokens": IMAGE_TOKENS.manifest_dict() if tower else None, "pad_token_id": 0, "hidden": hidden}
        out = run_case(case, logits_maker(rng, **shaping))
        case["steps"] = [[float(v) for v in s] for s in out["steps"]]
        check_outcome(name, case, out, want)
        cases.append(case)
    for name, pattern, images, audio, chunk, max_context, max_new, vision, hears, shaping, want in AUDIO_CASES:
        case = {"name": name, "prompt": image_prompt(pattern, rng), "max_new_tokens": max_new,
                "max_context": max_context, "prefill_chunk": chunk, "eos": EOS, "stop_on_eos": True,
                "sampler": dict(GREEDY, temperature=0.0, top_p=1.0), **({"images": images} if images else {}),
                "image_tokens": IMAGE_TOKENS.manifest_dict() if vision else None, "audio": audio,
                "audio_tokens": AUDIO_TOKENS.manifest_dict() if hears else None, "pad_token_id": 0, "hidden": hidden}
        out = run_case(case, logits_maker(rng, **shaping))
        case["steps"] = [[float(v) for v in s] for s in out["steps"]]
        check_outcome(name, case, out, want)
        cases.append(case)
    return {"format": "gemma-edge-loop-golden", "version": 3, "vocab_size": VOCAB, "cases": cases}


def check_outcome(name: str, case: dict, out: dict, want) -> None:
    """Record the outcome in `case`, or GoldenError when it is not the one the case is there to show."""
    if "error" in out:
        if isinstance(want, str):
            raise GoldenError(f"{name}: expected the case to stop on {want}, the loop refused it: {out['error']}")
        field, text = want
        got = out["error"]
        if (got["field"] != field or text not in got["message"] or out["fetches"] or out["prefill_calls"]
                or out.get("encode_calls") or out.get("audio_encode_calls")):
            raise GoldenError(f"{name}: expected a refusal of {field} containing {text!r} before any work, "
                              f"the loop gave {got} after fetches {out['fetches']}")
        case["error"] = {"field": field, "message_contains": text}
        return
    if out["expect"]["stop_reason"] != want:
        raise GoldenError(f"{name}: expected the case to stop on {want}, it stopped on "
                          f"{out['expect']['stop_reason']} ({out['expect']['tokens']})")
    case["expect"] = out["expect"]


def render(golden: dict) -> str:
    """One case a line, so a change to the loop shows as the cases it changes."""
    head = {k: v for k, v in golden.items() if k != "cases"}
    lines = ",\n".join(json.dumps(c) for c in golden["cases"])
    return json.dumps(head)[:-1] + ',\n"cases": [\n' + lines + "\n]}\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else GOLDEN
    try:
        text = render(build())
    except GoldenError as e:
        print(f"make_loop_golden.py: {e}", file=sys.stderr)
        return 1
    out.write_text(text)
    print(f"{out}: {len(CASES) + len(IMAGE_CASES) + len(AUDIO_CASES)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
