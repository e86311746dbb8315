"""Writes the golden files the Java core's tests compare against: PLE files + Python fetches, tokenizers + ids,
generation runs, chat prompts, a bundle.

Usage: python android_demo/core/golden/make_golden.py OUTDIR

Everything comes from the Python side of the project itself — no copies: gemma_edge.ple_store, HF `tokenizers`,
transformers' apply_chat_template over Gemma 4's chat template, the runtime's Session and Sampler, the
contract's manifest writer. (The loop's shared suite, tests/golden/loop.json, is committed and written by
tests/golden/make_loop_golden.py; Java's LoopGoldenTest reads it directly.) Output:
  OUTDIR/ple/*.ple, OUTDIR/ple/golden.json            rows, stored bytes, I/O counts, corrupt files + Python's error
  OUTDIR/tokenizer/<variant>/tokenizer.json, OUTDIR/tokenizer/golden.json
  OUTDIR/tokenizer/chat.json                          Gemma 4 chat conversations: apply_chat_template's text and ids
  OUTDIR/generation/golden.json                       a run recorded from Session (logits, tokens, PLE fetches), and
                                                      single draws of gemma_edge.runtime.sampling.Sampler
  OUTDIR/bundle/                                      a small valid bundle (manifest.json by the contract's writer,
                                                      model.pte stand-in, .ple, tokenizer)
  OUTDIR/exif.json                                    a small image under each EXIF orientation, as PIL turns it upright
  OUTDIR/bundle_vision/, OUTDIR/vision_refusals.json  the same with a vision program stand-in and entry; damaged
                                                      vision entries and the field Python's reader names for each
  OUTDIR/bundle_audio/, OUTDIR/audio_refusals.json    the same with an audio program stand-in and entry
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from gemma_edge import ple_store
from gemma_edge.contract import bundle_format as bf
from gemma_edge.contract.chat import TURN_TOKENS
from gemma_edge.contract.image import BOI, EOI, IMAGE, PATCH_DIM, SUPPORTED_BUDGETS, ImageTokens
from gemma_edge.contract.presets import preset
from gemma_edge.ple_store.format import CRC_COVERED
from gemma_edge.runtime.sampling import Sampler

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

SEED = 20261128

# ---------------------------------------------------------------------------------------------------
# PLE files
# ---------------------------------------------------------------------------------------------------

SHAPES = {   # name: (V, L, P) — small, but with rows that share pages, straddle them and span several
    "a": (3000, 4, 64),
    "b": (1000, 7, 40),
    "c": (200, 5, 300),
}


def table(v: int, width: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((v, width)).astype(np.float32)
    x[3] = 0.0                                                  # an all-zero row: s = 0
    x[4, :width // 2] = 0.0                                     # all-zero groups in a row
    x[5] *= 1e4                                                 # large values
    x[6] *= 1e-6                                                # tiny values
    x[7, ::3] = -x[7, ::3]
    return x


def field_of(message: str, path: str) -> str:
    """The field Python's PleFormatError names: the text between 'path: ' and ': expected' / ': CRC-32'."""
    rest = message[len(path) + 2:] if message.startswith(path + ": ") else message
    cut = [i for i in (rest.find(": expected"), rest.find(": CRC-32")) if i >= 0]
    return rest[: min(cut)] if cut else rest


def make_ple(out: str) -> str:
    d = os.path.join(out, "ple")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(SEED)
    files = []
    for shape, (v, L, P) in SHAPES.items():
        x = table(v, L * P, rng)
        prompts = [
            [1, 2, 3, 2, 1],
            [0, v - 1, 5, 5, 5, 17, 0],
            rng.integers(0, v, 40).tolist() + [3, 3, 4, 5, 6, 7],
            [v // 2],
            sorted(set(rng.integers(0, v, 25).tolist())),
        ]
        # every dtype with row CRCs (minor 1), and int4 / fp32 without them (minor 0: the block-check fallback)
        for dtype, row_crc in (("fp32", True), ("bf16", True), ("int8", True), ("int4", True), ("int4", False),
                               ("fp32", False)):
            name = f"{shape}_{dtype}" + ("" if row_crc else "_minor0")
            path = os.path.join(d, name + ".ple")
            ple_store.write(path, (x[i: i + 97] for i in range(0, v, 97)), vocab_size=v, num_layers=L, ple_dim=P,
                            dtype=dtype, embed_scale=float(np.sqrt(np.float32(P))),
                            model_hash=hashlib.sha256(name.encode()).digest(), progress=False, row_crc=row_crc)
            r = ple_store.open(path)
            r.verify()
            fetches = []
            for ids in prompts:
                rows = r.fetch(ids)                             # float32 [T, L, P]
                st = r.fetch_log[-1]
                stored = r.fetch(ids, dtype="stored")           # uint8 [T, row_bytes]
                st2 = r.fetch_log[-1]
                assert (st.unique_rows, st.bytes_requested, st.pages_touched) == \
                       (st2.unique_rows, st2.bytes_requested, st2.pages_touched)
                fetches.append({
                    "ids": [int(i) for i in ids],
                    "floats_hex": np.ascontiguousarray(rows, "<f4").tobytes().hex(),
                    "stored_hex": np.ascontiguousarray(stored, np.uint8).tobytes().hex(),
                    "unique_rows": st.unique_rows, "bytes_requested": st.bytes_requested,
                    "pages_touched": st.pages_touched,
                })
            h = r.header
            files.append({"name": name, "path": path, "dtype": dtype, "row_crc": h.row_crc, "vocab_size": v,
                          "num_layers": L,
                          "ple_dim": P, "embed_scale": h.embed_scale, "identity": h.identity.hex(),
                          "model_hash": h.model_hash.hex(), "row_bytes": h.row_bytes, "row_stride": h.row_stride,
                          "rows_per_group": h.rows_per_group, "group_bytes": h.group_bytes,
                          "num_blocks": h.num_blocks, "file_bytes": h.file_bytes, "fetches": fetches})
            r.close()
    corrupt = make_corrupt(d, os.path.join(d, "a_int8.ple"), os.path.join(d, "a_fp32.ple"),
                           os.path.join(d, "a_fp32_minor0.ple"))
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump({"files": files, "corrupt": corrupt}, f)
    return os.path.join(d, "a_int4.ple")


def make_corrupt(d: str, src: str, src_multiblock: str, src_minor0: str) -> list:
    """Damaged copies of a good file, each with the stage ("open", "fetch" of its fetch_ids, or "verify") and
    the error Python gave."""
    good = open(src, "rb").read()
    multi = open(src_multiblock, "rb").read()
    minor0 = open(src_minor0, "rb").read()

    def with_crc(buf: bytearray) -> bytearray:
        struct.pack_into("<I", buf, CRC_COVERED, zlib.crc32(bytes(buf[:CRC_COVERED])))
        return buf

    def patch(buf: bytes, off: int, fmt: str, value, fix_crc=True) -> bytes:
        b = bytearray(buf)
        struct.pack_into(fmt, b, off, value)
        return bytes(with_crc(b) if fix_crc else b)

    def flip(buf: bytes, off: int) -> bytes:
        b = bytearray(buf)
        b[off] ^= 0x5A
        return bytes(b)

    hdr = ple_store.PleHeader.unpack(good)
    hm = ple_store.PleHeader.unpack(multi)
    h0 = ple_store.PleHeader.unpack(minor0)
    assert hdr.row_crc and not h0.row_crc and h0.num_blocks >= 2

    def row_at(h, t: int) -> int:
        return h.layout.row_offset(t)
    cases = {
        "bad_magic": patch(good, 0, "8s", b"GEMMAPLX"),
        "wrong_major": patch(good, 8, "<H", 2),
        "truncated": good[:-4096],
        "truncated_header": good[:100],
        "trailing_bytes": good + bytes(4096),
        "header_crc": flip(good, 16),
        "bad_header_bytes": patch(good, 12, "<I", 8192),
        "bad_dtype": patch(good, 28, "<I", 7),
        "bad_quant_scheme": patch(good, 32, "<I", 0),
        "bad_row_bytes": patch(good, 40, "<I", hdr.row_bytes + 4),
        "bad_row_stride": patch(good, 44, "<I", hdr.row_stride + 8),
        "bad_group_bytes": patch(good, 52, "<I", hdr.group_bytes + 100),
        "bad_num_blocks": patch(good, 64, "<I", hdr.num_blocks + 1),
        "bad_file_bytes": patch(good, 96, "<Q", hdr.file_bytes + 4096),
        "bad_embed_scale": patch(good, 104, "<f", float("inf")),
        "zero_vocab": patch(good, 16, "<I", 0),
        "flipped_data_byte": flip(good, hdr.data_offset + 5),
        "flipped_last_block": flip(multi, hm.data_offset + hm.data_bytes - 3),
        "damaged_checksum_table": flip(good, hdr.checksum_offset + 1),
        "row_crc_flag_without_room": patch(minor0, 68, "<I", 1),   # ROW_CRC, but strides hold no CRC
    }
    # fetches: a damaged row is refused by the fetch that returns it (row CRC, or a minor-0 file's block CRC)
    fetch_cases = {
        "flipped_row_payload": (flip(good, row_at(hdr, 5) + 7), [1, 5, 9]),
        "flipped_row_crc": (flip(good, row_at(hdr, 5) + hdr.row_bytes + 1), [5]),
        "minor0_flipped_block": (flip(minor0, row_at(h0, h0.vocab_size - 1) + 2), [0, h0.vocab_size - 1]),
    }
    out = []
    for name, (data, fetch_ids) in [*((n, (c, None)) for n, c in cases.items()), *fetch_cases.items()]:
        path = os.path.join(d, f"corrupt_{name}.ple")
        with open(path, "wb") as f:
            f.write(data)
        stage, error, message = "none", None, None
        try:
            r = ple_store.open(path)
        except Exception as e:                                  # noqa: BLE001 - the class is the golden value
            stage, error, message = "open", type(e).__name__, str(e)
        else:
            try:
                if fetch_ids is not None:
                    stage = "fetch"
                    r.fetch(fetch_ids)
                stage = "verify"
                r.verify()
                stage = "none"
            except Exception as e:                              # noqa: BLE001
                error, message = type(e).__name__, str(e)
            r.close()
        if stage == "none" or (fetch_ids is not None and stage != "fetch"):
            raise SystemExit(f"{path}: expected Python to refuse corrupt case {name} at "
                             f"{'fetch' if fetch_ids else 'open or verify'}, it got to {stage}")
        out.append({"name": name, "path": path, "stage": stage, "error": error, "message": message,
                    "field": field_of(message, path), "fetch_ids": fetch_ids})
    return out


# ---------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------

WORDS = ("the of and to in is was for on with as by at from that this it are be or an not have which one you "
         "were all we when there can has more if will their would about what so up out into other than then time "
         "model token phone memory flash layer embedding cache prefill decode sample tensor export runtime "
         "gemma edge android kernel page byte row group scale quant float batch prompt stream").split()
LATIN = "café naïve façade über straße déjà vu señor coöperate Ærø smörgåsbord crème brûlée jalapeño"
GREEK_CYR = "Καλημέρα κόσμε Привет мир Здравствуйте λόγος"
CJK = "你好世界 日本語のテキスト 한국어 텍스트 中文分词测试 東京 漢字"
EMOJI = "😀 🚀 👍🏽 🇯🇵 ❤️ 👨‍👩‍👧 🧪"
CODE = ["def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
        "if x != None and y >= 3: print(f'{x!r}')", "SELECT * FROM t WHERE id = 42;",
        "<div class=\"a\">&amp;</div>", "fn main() { println!(\"hi\"); }", "x = {'a': [1, 2, 3]}  # comment"]


def corpus(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(4000):
        n = rng.randint(3, 18)
        s = " ".join(rng.choice(WORDS) for _ in range(n))
        if rng.random() < 0.3:
            s = s.capitalize() + rng.choice([".", "!", "?", ",", ";", ":"])
        if rng.random() < 0.15:
            s += " " + str(rng.randint(0, 100000))
        lines.append(s)
    lines += [LATIN, GREEK_CYR] * 40 + [CJK[:6]] * 5 + CODE * 30
    return lines


def test_strings(rng: random.Random) -> list[str]:
    out = ["", " ", "  ", "\t", "\n", "a", "hello", " hello", "hello ", "hello  world", "  leading and trailing  ",
           "tabs\tand\nnewlines\r\n", "multiple\n\n\nnewlines", "    indented code", LATIN, GREEK_CYR, CJK, EMOJI,
           "mixed 中文 and English 😀 together", "<bos>hello<eos>", "<|turn>user\nHi!<turn|>\n",
           "<|turn>model\n<|channel>thought\n<channel|>", "<|turn>system\n<|think|>Be brief.<turn|>\n",
           "<start_of_turn>user\nGemma 3's turns are plain text here<end_of_turn>\n", "literal <0x41> byte token text",
           "<eos><eos><pad>", "a<bos>b", "<bo", "<eos",
           "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "combining e\u0301 accent", "control\u0001char",
           "ÿþ", "\u2581already has metaspace", "\u2581\u2581", "end with metaspace\u2581", "12345 67890 3.14159",
           "email@example.com https://example.com/path?q=1&r=2", "ALL CAPS TEXT", "under_score camelCase"]
    out += CODE
    pool = [WORDS, LATIN.split(), GREEK_CYR.split(), CJK.split(), EMOJI.split(),
            list("!@#$%^&*()[]{};:'\",.<>/?\\|`~-_=+")]
    seps = [" ", "  ", "   ", "\t", "\n", " \n ", "", "\t\t", "\r\n"]
    while len(out) < 320:
        parts = []
        for _ in range(rng.randint(1, 12)):
            parts.append(rng.choice(rng.choice(pool)))
            parts.append(rng.choice(seps))
        s = "".join(parts)
        if rng.random() < 0.2:
            s = rng.choice(seps) + s
        if rng.random() < 0.1:
            s += rng.choice(["<eos>", "<|turn>", "<turn|>", "<bos>"])
        if rng.random() < 0.1:
            s = "".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff), rng.randint(0x4e00, 0x9fff),
                                        rng.randint(0x1f300, 0x1faff)])) for _ in range(rng.randint(1, 20)))
        out.append(s)
    return out


def make_tokenizers(out: str) -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    d = os.path.join(out, "tokenizer")
    os.makedirs(d, exist_ok=True)
    rng = random.Random(SEED)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    # train per word (merges never cross a space), as Gemma's vocabulary; encode later with no pre-tokenizer
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=specials + byte_tokens, limit_alphabet=120,
                                  show_progress=False)
    tok.train_from_iterator(corpus(rng), trainer)
    base = json.loads(tok.to_str())
    # byte tokens stay in the vocabulary but are not added tokens (they must not be skipped or matched in text)
    base["added_tokens"] = [t for t in base["added_tokens"] if t["content"] in specials]
    nxt = max(base["model"]["vocab"].values()) + 1
    # Gemma 4's turn tokens, then its image tokens (<|image|>: the chat's image placeholder)
    for k, content in enumerate([TURN_TOKENS[i] for i in sorted(TURN_TOKENS)] + [BOI, IMAGE, EOI]):
        base["model"]["vocab"][content] = nxt + k
        base["added_tokens"].append({"id": nxt + k, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    rep = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    dec_rep = {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}

    variants = {}
    # A: Gemma's configuration
    a = json.loads(json.dumps(base))
    a["normalizer"] = rep
    a["pre_tokenizer"] = None
    a["decoder"] = {"type": "Sequence", "decoders": [dec_rep, {"type": "ByteFallback"}, {"type": "Fuse"}]}
    a["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}}
    variants["gemma"] = a
    # B: Llama-2 style — Prepend + Replace in a Sequence, Split pre-tokenizer, Strip decoder, "a b" merges
    b = json.loads(json.dumps(base))
    b["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, rep]}
    b["pre_tokenizer"] = {"type": "Split", "pattern": {"String": "\u2581"}, "behavior": "MergedWithNext",
                          "invert": False}
    b["decoder"] = {"type": "Sequence", "decoders": [dec_rep, {"type": "ByteFallback"}, {"type": "Fuse"},
                                                      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    b["post_processor"] = None
    b["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in b["model"]["merges"]]
    variants["prepend_split"] = b
    # C: Metaspace pre-tokenizer and decoder, Split behaviours via a regex Sequence
    c = json.loads(json.dumps(base))
    c["normalizer"] = None
    c["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated", "invert": False},
        {"type": "Split", "pattern": {"String": "\n"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[!?.]+"}, "behavior": "Contiguous", "invert": False},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}]}
    c["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"},
                                                      {"type": "Metaspace", "replacement": "\u2581",
                                                       "prepend_scheme": "first", "split": True},
                                                      {"type": "Fuse"}]}
    c["post_processor"] = None
    variants["metaspace"] = c
    # D: pieces removed by Split, and an added token that is matched after normalization
    e = json.loads(json.dumps(a))
    e["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "\t+"}, "behavior": "Removed", "invert": False}
    e["added_tokens"].append({"id": nxt + len(TURN_TOKENS), "content": "\u2581gemma\u2581edge", "single_word": False,
                              "lstrip": False,
                              "rstrip": False, "normalized": True, "special": False})
    e["model"]["vocab"]["\u2581gemma\u2581edge"] = nxt + len(TURN_TOKENS)
    variants["removed_normalized"] = e
    # E: no byte fallback — characters outside the vocabulary become <unk>, fused when adjacent
    u = json.loads(json.dumps(a))
    u["model"]["byte_fallback"] = False
    u["model"]["fuse_unk"] = True
    variants["unk_fused"] = u

    strings = test_strings(rng)
    out_variants = []
    for name, cfg in variants.items():
        vd = os.path.join(d, name)
        os.makedirs(vd, exist_ok=True)
        path = os.path.join(vd, "tokenizer.json")
        text = json.dumps(cfg, ensure_ascii=False)
        t = Tokenizer.from_str(text)                           # HF must accept what Java is asked to read
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        cases = []
        for s in strings:
            ids = t.encode(s, add_special_tokens=False).ids
            ids_sp = t.encode(s, add_special_tokens=True).ids
            cases.append({"text": s, "ids": ids, "ids_special": ids_sp,
                          "decoded": t.decode(ids, skip_special_tokens=True),
                          "decoded_special": t.decode(ids_sp, skip_special_tokens=False)})
        out_variants.append({"name": name, "path": path, "vocab_size": t.get_vocab_size(), "cases": cases})
    with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
        json.dump({"variants": out_variants}, f, ensure_ascii=False)
    return os.path.join(d, "gemma", "tokenizer.json")


# ---------------------------------------------------------------------------------------------------
# Generation runs over recorded logits
# ---------------------------------------------------------------------------------------------------

def runtime_recorded_case(v: int) -> dict:
    """A run recorded from the Python runtime itself: `Session.from_checkpoint` (the eager back-end of
    `gemma_edge.runtime`, same generation loop as a bundle) over a tiny random checkpoint, sampling with a
    seed. Its logits, tokens and the fetch / prefill / decode calls Session made become the expectations
    Java must reproduce over a real PLE file (the loop's other cases are tests/golden/loop.json's)."""
    import tempfile

    import torch

    from gemma_edge.export.random_checkpoint import write_random_checkpoint
    from gemma_edge.runtime import Session

    cfg = preset("tiny")
    assert cfg.vocab_size <= v, "the recorded prompt must index the golden PLE file"
    sampler_cfg = dict(temperature=0.9, top_k=50, top_p=0.95, seed=4242)
    chunk, max_context, max_new = 8, 64, 12
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "ckpt", cfg, dtype=torch.float32, seed=3, tokenizer=False,
                                       progress=False)
        session = Session.from_checkpoint(ckpt, max_context=max_context, prefill_chunk=chunk)
        recorded, prefill_calls, decode_calls, fetches, fetching, depth = [], [], [], [], [], [0]

        def record(fn, calls, call):
            def wrapped(*args):
                depth[0] += 1                                           # the eager decode calls its own prefill:
                try:                                                    # keep only the outermost call
                    out = fn(*args)
                finally:
                    depth[0] -= 1
                if depth[0] == 0:
                    calls.append(call(*args))
                    recorded.append(np.asarray(out, np.float32).reshape(-1).copy())
                return out
            return wrapped

        def record_fetch(fn, ids_of):
            def wrapped(arg):
                if not fetching:                                        # TablePle's fetch_one calls its fetch:
                    fetches.append(ids_of(arg))                         # keep only the call Session made
                fetching.append(True)
                try:
                    return fn(arg)
                finally:
                    fetching.pop()
            return wrapped

        b = session.backend
        b.prefill = record(b.prefill, prefill_calls, lambda ids, start, rows: [int(start), len(ids)])
        b.decode = record(b.decode, decode_calls, lambda tok, pos, row: [int(tok), int(pos)])
        session.ple.fetch = record_fetch(session.ple.fetch, lambda ids: [int(t) for t in ids])
        session.ple.fetch_one = record_fetch(session.ple.fetch_one, lambda tok: [int(tok)])
        rng = np.random.default_rng(SEED + 7)
        prompt = [2] + rng.integers(3, cfg.vocab_size, 18).tolist()
        prompt[9] = prompt[4]                                           # a duplicate id
        tokens = [g.token for g in session.generate(prompt, max_new, temperature=sampler_cfg["temperature"],
                                                     top_k=sampler_cfg["top_k"], top_p=sampler_cfg["top_p"],
                                                     seed=sampler_cfg["seed"])]
        eos = sorted(session.eos_ids)
    steps = recorded[len(prefill_calls) - 1:]                           # the logits each token was sampled from
    return {"name": "runtime_recorded_tiny", "prompt": prompt, "vocab_size": cfg.vocab_size, "prefill_chunk": chunk,
            "max_context": max_context,
            "max_new_tokens": max_new, "eos": eos, "steps": [{"logits": [float(f) for f in x]} for x in steps],
            "expected_tokens": tokens, "expected_fetches": fetches,
            "expected_prefill_calls": prefill_calls, "expected_decode_calls": decode_calls, "sampler": sampler_cfg}


def make_generation(out: str, ple_path: str) -> None:
    d = os.path.join(out, "generation")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)
    cases = [runtime_recorded_case(ple_store.open(ple_path).header.vocab_size)]
    # single draws of the runtime's sampler over varied logits (ties, -0.0/0.0, huge spreads)
    draws = []
    for k in range(60):
        n = int(rng.integers(1, 300))
        x = (rng.standard_normal(n) * rng.choice([0.1, 1, 10, 100])).astype(np.float32)
        if k % 5 == 0:
            x[: n // 2] = np.float32(0.5)
        if k % 7 == 0:
            x[0], x[-1] = np.float32(-0.0), np.float32(0.0)
        cfg = dict(temperature=float(rng.choice([0.0, 0.3, 1.0, 2.5])), top_k=int(rng.choice([0, 1, 5, 50])),
                   top_p=float(rng.choice([1.0, 0.5, 0.9, 0.99])), seed=int(rng.integers(-2**62, 2**62)))
        sampler = Sampler(cfg["temperature"], cfg["top_k"], cfg["top_p"], cfg["seed"])
        draws.append({"logits": [float(f) for f in x], "sampler": cfg, "picks": [sampler(x) for _ in range(5)]})
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump({"ple_file": ple_path, "cases": cases, "draws": draws}, f)


# ---------------------------------------------------------------------------------------------------
# Gemma 4 chat prompts: transformers' apply_chat_template over Gemma 4's chat template
# ---------------------------------------------------------------------------------------------------

def make_chat(out: str, tokenizer_path: str) -> None:
    """tests/golden/chat_cases.json's conversations through apply_chat_template with the golden "gemma"
    tokenizer: the text and the ids Java's Chat must give."""
    from transformers import PreTrainedTokenizerFast

    golden = os.path.join(REPO, "tests", "golden")
    with open(os.path.join(golden, "chat_cases.json"), encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    with open(os.path.join(golden, "gemma4_e_chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    hf = PreTrainedTokenizerFast(tokenizer_file=tokenizer_path, bos_token="<bos>", eos_token="<eos>",
                                 pad_token="<pad>", unk_token="<unk>")
    hf.chat_template = template
    out_cases = []
    for c in cases:
        kw = dict(add_generation_prompt=True, enable_thinking=c["thinking"])
        ids = hf.apply_chat_template(c["messages"], tokenize=True, **kw)
        ids = ids if isinstance(ids, list) else list(ids["input_ids"])
        out_cases.append({**c, "text": hf.apply_chat_template(c["messages"], tokenize=False, **kw), "ids": ids})
    with open(os.path.join(out, "tokenizer", "chat.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer": tokenizer_path, "cases": out_cases}, f, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------
# A small valid bundle, for the manifest reader
# ---------------------------------------------------------------------------------------------------

def make_bundle(out: str, ple_path: str, tokenizer_path: str, vision: bool = False, audio: bool = False) -> None:
    """The manifest is the exporter's own writer's (bf.build_manifest) over the files copied here, plus two
    keys no reader knows (one top-level, one in config), which every reader must ignore. With `vision`, the
    bundle is bundle_vision/: a vision program stand-in and the manifest's `vision` entry (bf.vision_entry); with
    `audio`, bundle_audio/: an audio program stand-in and the `audio` entry (bf.audio_entry)."""
    d = os.path.join(out, "bundle_vision" if vision else "bundle_audio" if audio else "bundle")
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(ple_path, os.path.join(d, bf.PLE_FILE))
    shutil.copyfile(tokenizer_path, os.path.join(d, bf.TOKENIZER_FILE))
    with open(os.path.join(d, bf.PROGRAM_FILE), "wb") as f:
        f.write(b"stand-in for an ExecuTorch program " * 10)
    if vision:
        with open(os.path.join(d, bf.VISION_FILE), "wb") as f:
            f.write(b"stand-in for the vision program " * 12)
    if audio:
        with open(os.path.join(d, bf.AUDIO_FILE), "wb") as f:
            f.write(b"stand-in for the audio program " * 12)
    r = ple_store.open(os.path.join(d, bf.PLE_FILE))
    h = r.header
    r.close()
    L, P, V = h.num_layers, h.ple_dim, h.vocab_size
    # A whole TextConfig (every key an export writes) of the table's shape.
    cfg = preset("tiny", vocab_size=V, vocab_size_per_layer_input=V, num_hidden_layers=L, hidden_size_per_layer_input=P,
                 layer_types=["sliding_attention", "full_attention"] * (L // 2), num_kv_shared_layers=L // 2,
                 eos_token_id=[1, 106], bos_token_id=2, pad_token_id=0)
    settings = dict(max_context=256, prefill_chunk=32, quant="8da4w", group_size=32, embedding_quant="int8",
                    ple_dtype="int4", methods="one")
    entry = None
    if vision:
        from gemma_edge.export.vision import VisionConfig

        tower = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, head_dim=16)
        entry = bf.vision_entry(model_hash=h.model_hash, budgets=[70, 280], hidden_size=cfg.hidden_size,
                                patch_dim=PATCH_DIM, image_tokens=ImageTokens.for_vocab(V).manifest_dict(),
                                quantization="8da8w", block_q=512, config=tower.to_dict())
    audio_entry = None
    if audio:
        from gemma_edge.contract.audio import AudioTokens
        from gemma_edge.contract.presets import AUDIO_PRESETS
        from gemma_edge.export.audio import AudioConfig

        tower = AudioConfig.from_dict(AUDIO_PRESETS["tiny"], cfg.hidden_size)
        audio_entry = bf.audio_entry(model_hash=h.model_hash, hidden_size=cfg.hidden_size, max_tokens=750,
                                     audio_tokens=AudioTokens.for_vocab(V).manifest_dict(), quantization="8da8w",
                                     config=tower.to_dict(), activation_bytes=1 << 24)
    manifest = bf.build_manifest(Path(d), cfg=cfg, settings=settings, model_hash=h.model_hash, stages=[],
                                 vision=entry, audio=audio_entry)
    manifest["config"]["some_future_field"] = [1, 2]
    manifest["unknown_top_level_key"] = {"ignored": True}
    with open(os.path.join(d, bf.MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=1)
    bf.read_manifest(d)                                          # the Python reader takes what Java is given
    if vision:
        write_refusals(out, d, manifest, VISION_MUTATIONS, "vision_refusals.json")
    if audio:
        write_refusals(out, d, manifest, AUDIO_MUTATIONS, "audio_refusals.json")


_REMOVE = {"remove": True}   # a mutation that deletes the key


# (dotted path, new value): damage to the vision entry each reader must refuse, naming the same field
VISION_MUTATIONS = [
    ("vision", _REMOVE), ("files.vision", _REMOVE), ("vision", "vision.pte"), ("export.program_revision", 5),
    ("vision.model_hash", "0" * 64),
    ("vision.budgets", []), ("vision.budgets", [280, 70]), ("vision.budgets", [70, 70]), ("vision.budgets", [71]),
    ("vision.budgets", [2**32 + 280]), ("vision.budgets", "280"),
    ("vision.methods", _REMOVE), ("vision.methods", {"70": "vision_70"}),
    ("vision.methods", {"70": "vision_70", "280": "vision_280", "560": "x"}),
    ("vision.methods.280", ""), ("vision.methods.280", 280),
    ("vision.hidden_size", 65), ("vision.hidden_size", "64"), ("vision.patch_dim", 0), ("vision.patch_dim", _REMOVE),
    ("vision.image_tokens", _REMOVE), ("vision.image_tokens", [1, 2, 3]), ("vision.image_tokens.boi", 3000),
    ("vision.image_tokens.image", -1), ("vision.image_tokens.eoi", "2999"), ("vision.image_tokens.eoi", _REMOVE),
    ("vision.image_tokens.eoi", 2997),   # = boi: not three distinct ids
    ("vision.quantization", "int8"), ("vision.quantization", _REMOVE), ("vision.block_q", 0), ("vision.block_q", 1.5),
    ("vision.config", _REMOVE), ("vision.config", "gemma4_vision"), ("vision.config.hidden_size", 0),
    ("vision.config.num_hidden_layers", _REMOVE), ("vision.config.position_embedding_size", 2**31),
    ("vision.config.head_dim", 16.0),
]


AUDIO_MUTATIONS = [
    ("audio", _REMOVE), ("files.audio", _REMOVE), ("audio", "audio.pte"), ("export.program_revision", 5),
    ("audio.model_hash", "0" * 64), ("audio.method", ""), ("audio.method", 3), ("audio.method", _REMOVE),
    ("audio.max_tokens", 0), ("audio.max_tokens", 751), ("audio.max_tokens", "750"), ("audio.max_tokens", 2**32 + 7),
    ("audio.hidden_size", 65), ("audio.hidden_size", "64"),
    ("audio.audio_tokens", _REMOVE), ("audio.audio_tokens", [1, 2, 3]), ("audio.audio_tokens.boa", 3000),
    ("audio.audio_tokens.audio", -1), ("audio.audio_tokens.eoa", "2999"), ("audio.audio_tokens.eoa", _REMOVE),
    ("audio.audio_tokens.eoa", 2994),   # = boa: not three distinct ids
    ("audio.quantization", "int8"), ("audio.quantization", _REMOVE),
    ("audio.config", _REMOVE), ("audio.config", "gemma4_audio"), ("audio.config.hidden_size", 0),
    ("audio.config.num_hidden_layers", _REMOVE), ("audio.config.output_proj_dims", 2**31),
    ("audio.activation_bytes", -1), ("audio.activation_bytes", 1.5),
]


def _mutate(manifest: dict, path: str, value) -> dict:
    m = json.loads(json.dumps(manifest))
    *keys, last = path.split(".")
    at = m
    for k in keys:
        at = at[k]
    if value is _REMOVE:
        del at[last]
    else:
        at[last] = value
    return m


def write_refusals(out: str, bundle_dir: str, manifest: dict, mutations: list, name: str) -> None:
    """`mutations` with the field Python's validate_manifest names for each: Java's Manifest must name the same."""
    cases = []
    for path, value in mutations:
        try:
            bf.validate_manifest(_mutate(manifest, path, value), bundle_dir)
        except bf.BundleError as e:
            message = str(e)
        else:
            raise AssertionError(f"Python accepted the mutation {path} = {value!r} ({name})")
        rest = message.removeprefix(os.path.join(bundle_dir, bf.MANIFEST_FILE) + ": ")
        field = rest.split(": ")[0]
        cases.append({"path": path, "remove": value is _REMOVE, "value": None if value is _REMOVE else value,
                      "field": field, "python": message})
    with open(os.path.join(out, name), "w") as f:
        json.dump({"bundle": bundle_dir, "cases": cases}, f, indent=1)


def make_exif(out: str) -> None:
    """A small image under each EXIF orientation (1..8), turned upright by PIL's ImageOps.exif_transpose, as
    transformers' load_image turns it: the pixels Java's ImagePreprocessor.exifTranspose must give."""
    import io

    from PIL import Image, ImageOps

    rng = np.random.default_rng(SEED + 2)
    w, h = 5, 3
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    cases = []
    for orientation in range(1, 9):
        im = Image.fromarray(rgb, "RGB")
        exif = im.getexif()
        exif[0x0112] = orientation   # Orientation
        buf = io.BytesIO()
        im.save(buf, "PNG", exif=exif)   # lossless, with the tag, read back as a file would be
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
        arr = np.asarray(upright.convert("RGB"))
        cases.append({"orientation": orientation, "height": arr.shape[0], "width": arr.shape[1],
                      "rgb": arr.reshape(-1).tolist()})
    assert cases[5]["rgb"] != cases[7]["rgb"] and cases[5]["width"] == h   # rotations, not the identity
    with open(os.path.join(out, "exif.json"), "w") as f:
        json.dump({"height": h, "width": w, "rgb": rgb.reshape(-1).tolist(), "cases": cases}, f)


def make_contract(out: str) -> None:
    """The manifest contract's key lists as the Python reader holds them, for Java's copies to be checked against."""
    with open(os.path.join(out, "contract.json"), "w") as f:
        json.dump({"required_keys": list(bf.REQUIRED_KEYS), "config_required_keys": list(bf.CONFIG_REQUIRED_KEYS),
                   "input_names": list(bf.INPUT_NAMES), "supported_budgets": list(SUPPORTED_BUDGETS),
                   "vision_quant": list(bf.VISION_QUANT), "vision_config_ints": list(bf.VISION_CONFIG_INTS),
                   "image_tokens": {"boi": BOI, "image": IMAGE, "eoi": EOI}}, f)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: make_golden.py OUTDIR", file=sys.stderr)
        return 2
    out = os.path.abspath(argv[1])
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    ple_path = make_ple(out)
    tok_path = make_tokenizers(out)
    make_chat(out, tok_path)
    make_generation(out, ple_path)
    make_bundle(out, ple_path, tok_path)
    make_bundle(out, ple_path, tok_path, vision=True)
    make_bundle(out, ple_path, tok_path, audio=True)
    make_contract(out)
    make_exif(out)
    print(f"golden files written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
