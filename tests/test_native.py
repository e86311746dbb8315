"""The native host gemma-edge-run (runtime_py/native/): built against the ExecuTorch wheel, checked against the
Python runtime on the same bundle — logits bit for bit, PLE rows bit for bit, I/O accounting equal, sampled
tokens, tokenizer ids — against the shared golden loop suite, and against bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import edit_manifest, json_at_end

from gemma_edge import ple_store
from gemma_edge.contract import bundle_format as bf
from gemma_edge.runtime import native

PROMPT = [2, 100, 200, 300, 400, 100, 17, 18, 19, 20, 21, 22, 23]   # 13 tokens: two prefill chunks of 8


@pytest.fixture(scope="module")
def exe() -> Path:
    return native.build()


@pytest.fixture(scope="module")
def tiny_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The session's tiny bundle, copied: the native host writes its weight cache beside the program."""
    out = tmp_path_factory.mktemp("native") / "tiny"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
    return out


def python_logits(bundle: Path, ids: list[int], new_tokens: int, threads: int) -> np.ndarray:
    """The same steps through PteBackend (ExecuTorch's Python bindings) in this process: prefill in chunks,
    then greedy decode; every step's logits."""
    from executorch.extension.pybindings import portable_lib

    from gemma_edge.runtime.backends import PteBackend

    manifest = bf.read_manifest(bundle)
    chunk = manifest["prefill_chunk"]
    methods = bf.role_methods(manifest)
    old = portable_lib._threadpool_get_thread_count()
    portable_lib._unsafe_reset_threadpool(threads)
    try:
        backend = PteBackend(bundle / bf.PROGRAM_FILE, methods[bf.PREFILL_ROLE], methods[bf.DECODE_ROLE])
        with ple_store.open(bundle / bf.PLE_FILE) as ple:
            ids_a = np.array(ids)
            rows = ple.fetch(ids_a)
            for s in range(0, len(ids), chunk):
                logits = backend.prefill(ids_a[s:s + chunk], s, rows[s:s + chunk])
            out = [logits]
            for pos in range(len(ids), len(ids) + new_tokens - 1):
                tok = int(out[-1].argmax())
                out.append(backend.decode(tok, pos, ple.fetch_one(tok)))
    finally:
        portable_lib._unsafe_reset_threadpool(old)
    return np.stack(out)


@pytest.mark.parametrize("threads", [1, 2])
def test_native_logits_equal_the_python_runtime_bit_for_bit(exe, tiny_bundle, threads):
    # 13 + 30 tokens: two prefill chunks, then decode past the tiny model's sliding window (the ring's
    # update_cache_with_indices wraps) — every step's logits identical, not merely close
    new = 30
    res = native.run(tiny_bundle, PROMPT, new, threads=threads, with_logits=True, exe=exe)
    ours = res["logits"]
    ref = python_logits(tiny_bundle, PROMPT, new, threads)
    assert ours.shape == ref.shape == (new, bf.read_manifest(tiny_bundle)["vocab_size"])
    assert np.array_equal(ours, ref)
    assert res["runs"][0]["tokens"] == [int(x) for x in ref.argmax(-1)]
    assert res["threads"] == threads


@pytest.fixture(scope="module", params=[3, 4])
def old_bundle(request, tiny_checkpoint, tiny_bundle, tmp_path_factory) -> Path:
    """tiny_bundle with a program of an older interface: revision < 5's (tokens, input_pos, ple_rows) -> logits,
    no attend_len, or revision 5's, attend_len and no soft_embeds. The three-input step attends every cache slot
    (attend_len fixed at max_context), so the masks alone hide the unwritten ones, as before revision 5. Built
    from the same checkpoint with the exporter's own stages; the manifest describes the new program."""
    arity = request.param
    import json

    import torch
    from conftest import TINY_EXPORT

    from gemma_edge.export.exporter import ExportSettings, StageLog, lower_to_executorch, prepare_model
    from gemma_edge.export.step import InPlaceKVStep

    settings = ExportSettings(**TINY_EXPORT)
    cfg, model = prepare_model(tiny_checkpoint, settings, StageLog(), progress=False)

    class ThreeInputStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.step = InPlaceKVStep(model, settings.prefill_chunk)

        def forward(self, tokens, input_pos, ple_rows):
            return self.step(tokens, input_pos, ple_rows, torch.empty(settings.max_context, dtype=torch.long))

    class FourInputStep(ThreeInputStep):
        def forward(self, tokens, input_pos, ple_rows, attend_len):
            return self.step(tokens, input_pos, ple_rows, attend_len)

    t = torch.export.Dim("T", min=1, max=settings.prefill_chunk)
    shapes = {"tokens": {1: t}, "input_pos": {0: t}, "ple_rows": {1: t}}
    args = (torch.zeros(1, 2, dtype=torch.long), torch.arange(2, 4),
            torch.zeros(1, 2, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input))
    if arity == 4:
        shapes["attend_len"] = {0: torch.export.Dim("N", min=1, max=settings.max_context)}
        args = (*args, torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        program = torch.export.export((FourInputStep if arity == 4 else ThreeInputStep)().eval(), args,
                                      dynamic_shapes=shapes, strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
    bundle = tmp_path_factory.mktemp(f"rev{arity + 1}") / f"tiny-{arity}in"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / bf.PROGRAM_FILE, "wb") as f:
        lower_to_executorch({bf.STEP_METHOD: program}).write_to_file(f)
    manifest = bf.read_manifest(bundle)
    manifest["files"]["program"].update(bytes=(bundle / bf.PROGRAM_FILE).stat().st_size,
                                        sha256=bf.sha256_file(bundle / bf.PROGRAM_FILE))
    for method in manifest["methods"].values():
        method["inputs"] = method["inputs"][:arity]
    manifest["export"]["program_revision"] = arity + 1
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return bundle


@pytest.mark.slow  # lowers an older program of its own
def test_older_bundles_still_run(exe, old_bundle, tiny_bundle):
    # A program of revision 4's interface (three inputs) or revision 5's (four: no soft_embeds) from the same
    # checkpoint as tiny_bundle: both hosts still run it, bit-identical to each other, and it computes what the
    # current program does — the same arithmetic up to fp32 summation order.
    old = bf.read_manifest(old_bundle)
    arity = len(old["methods"]["prefill"]["inputs"])
    assert old["export"]["program_revision"] == arity + 1 and arity in (3, 4)
    assert bf.read_manifest(tiny_bundle)["export"]["program_revision"] == bf.PROGRAM_REVISION
    new = 30
    ref = python_logits(tiny_bundle, PROMPT, new, 1)
    py_old = python_logits(old_bundle, PROMPT, new, 1)
    nat_old = native.run(old_bundle, PROMPT, new, threads=1, with_logits=True, exe=exe)["logits"]
    assert np.array_equal(nat_old, py_old)
    assert np.abs(py_old - ref).max() <= 1e-5 * np.abs(ref).max()
    assert py_old.argmax(-1).tolist() == ref.argmax(-1).tolist()


@pytest.fixture(scope="module")
def two_method_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported as a `prefill` and a `decode` method sharing one KV-cache state."""
    from conftest import TINY_EXPORT

    from gemma_edge.export.exporter import ExportSettings, export_bundle

    out = tmp_path_factory.mktemp("two") / "tiny-two"
    return export_bundle(tiny_checkpoint, out, ExportSettings(**{**TINY_EXPORT, "methods": "two"}), progress=False)


@pytest.mark.slow  # exports its own two-method bundle
def test_native_two_method_bundle_shares_the_kv_state(exe, two_method_bundle):
    # decode must read the caches prefill wrote: with separate arenas the first decode step already differs
    new = 12
    res = native.run(two_method_bundle, PROMPT, new, threads=1, with_logits=True, exe=exe)
    assert np.array_equal(res["logits"], python_logits(two_method_bundle, PROMPT, new, 1))


def test_native_run_reports_speed_memory_and_fetch(exe, tiny_bundle):
    res = native.run(tiny_bundle, PROMPT, 6, threads=1, repeats=2, warmup=1, exe=exe)
    assert len(res["runs"]) == 2 and res["runs"][0]["tokens"] == res["runs"][1]["tokens"]
    r = res["runs"][0]
    assert len(r["tokens"]) == 6 and r["stop_reason"] == "max_new_tokens"
    assert 0 < r["fetch_s"] < r["ttft_s"] and r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
    assert r["prompt_fetch"]["tokens"] == 13 and r["prompt_fetch"]["unique_rows"] == 12   # 100 twice
    mem = res["memory"]
    # no Python in the process: the host before loading is a few MB (the Python runtime's is ~370 MB)
    assert 0 < mem["host"]["VmRSS"] < 32 << 20
    assert mem["end"]["VmHWM"] >= mem["end"]["VmRSS"] >= mem["host"]["VmRSS"]
    assert mem["end"]["VmRSS"] == pytest.approx(mem["end"]["RssAnon"] + mem["end"]["RssFile"], abs=1 << 20)


def test_native_weight_cache_packs_once_then_maps_the_same_weights(exe, tiny_bundle):
    cache = native.weight_cache_path(tiny_bundle)
    cache.unlink(missing_ok=True)
    first = native.run(tiny_bundle, PROMPT, 8, threads=1, with_logits=True, exe=exe)
    assert first["weight_cache"]["existed_before_load"] is False and first["weight_cache"]["bytes"] > 0
    again = native.run(tiny_bundle, PROMPT, 8, threads=1, with_logits=True, exe=exe)
    assert again["weight_cache"]["existed_before_load"] is True
    # every packed weight is used, and served from the cache's pages (mapped whole pages: 1 % covers rounding)
    assert again["weight_cache"]["resident_bytes"] == pytest.approx(again["weight_cache"]["bytes"], rel=0.01)
    assert again["weight_cache"]["bytes"] == first["weight_cache"]["bytes"]   # mapped, nothing appended
    bare = native.run(tiny_bundle, PROMPT, 8, threads=1, with_logits=True, exe=exe, weight_cache=False)
    assert "weight_cache" not in bare
    assert np.array_equal(first["logits"], again["logits"]) and np.array_equal(first["logits"], bare["logits"])
    assert cache.name.startswith(f"model.pte.{bf.read_manifest(tiny_bundle)['files']['program']['sha256'][:16]}")


def edited_copy(bundle: Path, out: Path, **fields) -> Path:
    """A copy of `bundle` whose manifest has `fields` set (dotted keys reach into objects: files__ple__identity)."""
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
    edit_manifest(out, **fields)
    return out


def test_native_stops_on_the_manifests_eos(exe, tiny_bundle, tmp_path):
    free = native.run(tiny_bundle, PROMPT, 20, threads=1, exe=exe)["runs"][0]["tokens"]
    eos = free[3]   # pretend the 4th greedy token is an end of sequence
    bundle = edited_copy(tiny_bundle, tmp_path / "b", eos_token_ids=[eos])
    run = native.run(bundle, PROMPT, 20, threads=1, stop_on_eos=True, exe=exe)["runs"][0]
    assert run["tokens"] == free[:free.index(eos) + 1] and run["stop_reason"] == "eos"
    # and --ignore-eos (stop_on_eos=False, what benchmarks run) generates past it
    assert native.run(bundle, PROMPT, 20, threads=1, exe=exe)["runs"][0]["tokens"] == free


@pytest.mark.parametrize("settings", [dict(temperature=0.8, seed=7), dict(temperature=1.3, top_k=5, seed=2**64 - 3),
                                      dict(temperature=0.7, top_p=0.9, seed=11)])
def test_native_sampling_draws_the_python_sessions_tokens(exe, tiny_bundle, settings):
    # the C++ sampler inside the real loop: same logits (bit for bit, above), same SplitMix64 draws
    from gemma_edge.runtime import Session

    with Session(tiny_bundle) as s:
        want = [t.token for t in s.generate(PROMPT, 24, stop_on_eos=False, **settings)]
    got = native.run(tiny_bundle, PROMPT, 24, threads=1, exe=exe, **settings)["runs"][0]["tokens"]
    assert got == want and len(set(got)) > 1


def test_native_prompt_text_is_tokenized_and_answered_as_the_python_session_does(exe, tiny_bundle, tmp_path):
    # --prompt-file text through the host's own tokenizer: the ids, the tokens and the printed text are Python's
    from gemma_edge.runtime import Session

    text = "hello  native host: Привет, 你好 🙂\n\tend "
    with Session(tiny_bundle) as s:
        ids = s.encode(text)
        want = [t.token for t in s.generate(ids, 10)]
        chat_ids = s.encode("  hi there \n", chat=True)
        eos = set(bf.read_manifest(tiny_bundle)["eos_token_ids"])
        want_text = s.tokenizer.decode([t for t in want if t not in eos])
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    base = [str(exe), str(tiny_bundle), "--new-tokens", "10", "--threads", "1"]
    p = subprocess.run(base + ["--prompt-file", str(tmp_path / "p.txt"), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["prompt_tokens"] == ids and res["runs"][0]["tokens"] == want and res["text"] == want_text
    p = subprocess.run(base + ["--prompt-file", str(tmp_path / "p.txt")], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == want_text + "\n"
    p = subprocess.run(base + ["--prompt-file", "-", "--chat", "--json"], input="  hi there \n", capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["prompt_tokens"] == chat_ids
    (tmp_path / "bad.txt").write_bytes(b"ok \xff no")
    p = subprocess.run(base + ["--prompt-file", str(tmp_path / "bad.txt")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().endswith("not valid UTF-8 text (byte 0xff at offset 3)")


# Strings for the tokenizer check: unicode of several scripts, combining marks, whitespace runs, tabs and
# newlines (outside the test vocabulary: byte fallback), added tokens inside text and run together, a
# prefix of an added token, characters no vocabulary has (byte fallback of 4-byte UTF-8), and random mixes.
TOKENIZER_STRINGS = [
    "hello native host", "The quick brown fox jumps over the lazy dog.", "  two  spaces   three    ", "\n\ttabs\n\n",
    "Привет, как дела?", "你好，世界。こんにちは。안녕하세요", "🙂🚀 emoji ✨",
    "<bos>hi<|turn>user\nhello<turn|>\n<|turn>model\n",
    "x\u0301y", "ǅ", "a" * 300, "", " ", "<unk>", "\x00\x01\x7f", "€£¥ → ← ≤", "<|turn><turn|><|think|>",
    "def f(x):\n    return x * 2\n", "Numbers: 0 1 2 3.14159 1e-6 -17", "مرحبا नमस्ते Γειά", "<eos><pad>text<bos",
    "\U0010FFFF\U0001F600\u200b\ufeff", "the the the the capital of France", "<|image><|image|><|image", "▁▁ ▁<0x41>",
]


def random_strings(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyz ABCXYZ  \n\t.,!?") + ["é", "ß", "ж", "中", "🙂", "<bos>", "<|turn>",
                                                                     "\u0301", "▁", "<0x41>", "<|image|>", "  "]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def merged_bpe_tokenizer(tmp_path_factory) -> Path:
    """A Gemma-format tokenizer.json (BPE, byte_fallback, fuse_unk, Replace normalizer, no pre-tokenizer, the
    ByteFallback decoder chain) with thousands of merges, trained here on the repository's own text; its
    byte tokens are added tokens, and two added tokens share a prefix (<|image> / <|image|>)."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    root = Path(__file__).resolve().parents[1]
    files = [f for d in ("runtime_py", "export", "ple_store", "tests") for f in sorted((root / d).glob("*.py"))]
    texts = [ln for f in files for ln in f.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|image>", "<|image|>"]
    tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(texts, trainer=BpeTrainer(
        vocab_size=6000, special_tokens=specials + [f"<0x{b:02X}>" for b in range(256)], show_progress=False,
        limit_alphabet=300))
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    assert len(json.loads(path.read_text())["model"]["merges"]) > 3000
    return path


@pytest.mark.parametrize("which", ["bundle", "merged_bpe"])
def test_native_tokenizer_ids_equal_hf_tokenizers(exe, tiny_bundle, merged_bpe_tokenizer, tmp_path, which):
    from tokenizers import Tokenizer

    path = tiny_bundle / bf.TOKENIZER_FILE if which == "bundle" else merged_bpe_tokenizer
    hf = Tokenizer.from_file(str(path))
    strings = TOKENIZER_STRINGS + random_strings(400)
    (tmp_path / "strings.json").write_text(json.dumps(strings))
    p = subprocess.run([str(native.tool("gemma-edge-tokenize")), str(path), str(tmp_path / "strings.json")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    byte_fallbacks = 0
    for s, ids, text in zip(strings, got["ids"], got["decoded"], strict=True):
        want = hf.encode(s, add_special_tokens=False).ids
        assert ids == want, s
        assert text == hf.decode(want, skip_special_tokens=True), s
        byte_fallbacks += any(hf.id_to_token(i).startswith("<0x") for i in want)
    assert byte_fallbacks > 50   # the check covers byte fallback, not only in-vocabulary text
    # decoding alone, as generated ids come: byte tokens that are not UTF-8 (HF's ByteFallback gives one U+FFFD
    # per byte token of a run that does not decode), special tokens skipped, byte runs split by other tokens
    byte = {b: hf.token_to_id(f"<0x{b:02X}>") for b in (0xE4, 0xBD, 0xA0, 0x41)}
    rng = np.random.default_rng(0)
    lists = [[byte[0xE4], byte[0xBD]], [byte[0xE4], byte[0xBD], byte[0xA0], byte[0x41]], [2, byte[0xE4], 3, byte[0xBD]]]
    lists += [rng.integers(0, hf.get_vocab_size(), 40).tolist() for _ in range(50)]
    (tmp_path / "ids.json").write_text(json.dumps(lists))
    p = subprocess.run([str(native.tool("gemma-edge-tokenize")), str(path), str(tmp_path / "strings.json"),
                        str(tmp_path / "ids.json")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["decoded_ids"] == [hf.decode(ids, skip_special_tokens=True) for ids in lists]


GOLDEN_LOOP = Path(__file__).resolve().parent / "golden" / "loop.json"


def test_native_loop_holds_the_golden_suite(exe):
    # the library's loop and sampler over the recorded logits of the suite every host runs: tokens, stop
    # reasons, fetch / prefill / decode calls and refusals must be the recorded ones
    if not GOLDEN_LOOP.exists():
        pytest.fail(f"{GOLDEN_LOOP}: missing (written by the Python loop's golden writer)")
    p = subprocess.run([str(native.tool("gemma-edge-loop-golden")), str(GOLDEN_LOOP)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    cases = json.loads(GOLDEN_LOOP.read_text())["cases"]
    assert f"{len(cases)} of {len(cases)} cases hold" in p.stdout


def test_native_loop_golden_runner_fails_on_a_wrong_recording(exe, tmp_path):
    # the golden runner can fail: a case whose recorded tokens, fetches or refusal are not what the loop does
    if not GOLDEN_LOOP.exists():
        pytest.fail(f"{GOLDEN_LOOP}: missing")
    golden = json.loads(GOLDEN_LOOP.read_text())
    ok = [c for c in golden["cases"] if "expect" in c]
    refused = [c for c in golden["cases"] if "error" in c]
    assert ok and refused
    wrong = json.loads(json.dumps(ok[0]))
    wrong["expect"]["tokens"][-1] = (wrong["expect"]["tokens"][-1] + 1) % golden["vocab_size"]
    fetch = json.loads(json.dumps(ok[0]))
    fetch["expect"]["fetches"] = fetch["expect"]["fetches"][:1]
    field = json.loads(json.dumps(refused[0]))
    field["error"]["field"] = "not-" + field["error"]["field"]
    for case in (wrong, fetch, field):
        (tmp_path / "g.json").write_text(json.dumps({**golden, "cases": [case]}))
        p = subprocess.run([str(native.tool("gemma-edge-loop-golden")), str(tmp_path / "g.json")],
                           capture_output=True, text=True)
        assert p.returncode == 1 and "FAIL" in p.stdout, p.stdout


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_native_ple_rows_and_io_accounting_equal_the_python_reader(exe, tmp_path, dtype):
    V, L, P = 300, 5, 12    # L·P = 60 values: int4 rows end on a full byte; rows straddle pages for fp32
    rng = np.random.default_rng(1)
    x = rng.standard_normal((V, L * P)).astype(np.float32) * rng.uniform(0.1, 3.0, (V, 1)).astype(np.float32)
    x[3] = 0.0
    path = tmp_path / f"{dtype}.ple"
    ple_store.write(path, [x[:100], x[100:]], vocab_size=V, num_layers=L, ple_dim=P, dtype=dtype,
                    embed_scale=3.4641, progress=False)
    ids = [0, 3, 299, 150, 3, 77, 78, 79, 200, 0]
    out = tmp_path / "rows.bin"
    p = subprocess.run([str(exe), "--ple", str(path), "--ids", ",".join(map(str, ids)), "--rows-out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    with ple_store.open(path) as ple:
        want = ple.fetch(ids)
        stats = ple.fetch_log[-1]
    assert np.array_equal(np.fromfile(out, np.float32).reshape(len(ids), L, P), want)
    for k in ("tokens", "unique_rows", "bytes_requested", "pages_touched"):
        assert got["fetch"][k] == getattr(stats, k), k


def run_exe(exe, *args):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)


def test_native_refuses_bad_input_with_one_line(exe, tiny_bundle, tmp_path):
    m = bf.read_manifest(tiny_bundle)
    V = m["vocab_size"]
    (tmp_path / "ids").write_text("2,3\n")
    base = ["--ids-file", tmp_path / "ids", "--threads", 1]
    cases = {
        "identity": ({"files__ple__identity": "00" * 32}, [], "identity (the manifest's): expected 00"),
        "vocab": ({}, ["--ids-file", tmp_path / "vocab"], f"expected 0 ≤ id < vocab_size {V}"),
        "context": ({"max_context": 64}, ["--new-tokens", 63], "expected ≤ max_context 64"),
        "flag": ({}, ["--bogus", "1"], "--bogus: unknown flag"),
        "ids": ({}, ["--ids-file", tmp_path / "x"], "id 1: expected comma-separated integers, found 'x'"),
        "method": ({"methods__prefill__method": "nope"}, [], "cannot load method 'nope'"),
        "manifest": ({"prefill_chunk": "8"}, [], 'prefill_chunk: expected an integer in [1, 64], found "8" (string)'),
        "escape": ({"files__ple__path": "../model.ple"}, [], "files.ple.path: expected a path inside the bundle"),
    }
    (tmp_path / "vocab").write_text(f"2,{V}\n")
    (tmp_path / "x").write_text("2,x\n")
    for name, (fields, extra, message) in cases.items():
        bundle = edited_copy(tiny_bundle, tmp_path / f"bundle-{name}", **fields)
        p = run_exe(exe, bundle, *base, *extra)
        assert p.returncode == 2, (name, p.stderr)
        assert message in p.stderr.strip().splitlines()[-1], (name, p.stderr)

    bad = edited_copy(tiny_bundle, tmp_path / "bad")
    raw = bytearray((tiny_bundle / bf.PLE_FILE).read_bytes())
    (bad / bf.PLE_FILE).write_bytes(raw[:-4096])
    p = run_exe(exe, bad, *base)
    assert p.returncode == 2 and "file size (truncated or trailing bytes)" in p.stderr
    raw[20] ^= 1   # num_layers, with the header CRC left stale
    (bad / bf.PLE_FILE).write_bytes(raw)
    p = run_exe(exe, bad, *base)
    assert p.returncode == 2 and "header_crc32" in p.stderr
    # the wrapper raises the runner's own line: ValueError for bad input (status 2), RuntimeError otherwise
    with pytest.raises(ValueError, match=r"^gemma-edge-run: .*header_crc32"):
        native.parse_result(p.stdout, p.stderr, p.returncode, [])
    with pytest.raises(RuntimeError, match="method 'forward' failed"):
        native.parse_result("", "gemma-edge-run: x.pte: method 'forward' failed with ExecuTorch error 18\n", 1, [])


def test_native_manifest_reader_requires_the_contracts_keys(exe, tiny_bundle, tmp_path):
    # the C++ reader's required keys are bundle_format.REQUIRED_KEYS: each one removed is refused, by name
    (tmp_path / "ids").write_text("2,3\n")
    for key in bf.REQUIRED_KEYS:
        bundle = edited_copy(tiny_bundle, tmp_path / key, **{key: None})
        with pytest.raises(bf.BundleError):
            bf.read_manifest(bundle)
        p = run_exe(exe, bundle, "--ids-file", tmp_path / "ids")
        assert p.returncode == 2
        assert p.stderr.strip().splitlines()[-1].endswith(f"manifest.json: keys ['{key}'] missing")


def test_cli_run_native_generates_what_the_python_session_does(exe, tiny_bundle):
    from gemma_edge.runtime import Session

    with Session(tiny_bundle) as s:
        ids = s.encode("hello native host")
        want = [t.token for t in s.generate(ids, 8)]
    p = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "run-native", str(tiny_bundle), "--prompt",
                        "hello native host", "--max-new-tokens", "8", "--threads", "1", "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    res = json_at_end(p.stdout)
    assert res["runs"][0]["tokens"] == want    # same greedy continuation, EOS stops both
    assert "[native] prompt" in p.stderr and "peak RSS" in p.stderr


# ---------------------------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def vision_bundle(tiny_vision_bundle, tmp_path_factory) -> Path:
    """The session's tiny multimodal bundle (vision.pte with its budgets), copied: the host writes its weight
    cache beside the program, and some tests corrupt their copy."""
    out = tmp_path_factory.mktemp("native-vision") / "tiny-vision"
    shutil.copytree(tiny_vision_bundle, out, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
    return out


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """Two PNGs of different aspect ratios (wide, tall) with structure at every scale, so that the tower's
    soft tokens, and so the answer, depend on which image it is."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    out = {}
    for name, (h, w) in {"wide": (90, 200), "tall": (170, 64)}.items():
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * y) % 256], -1) + rng.integers(0, 48, (h, w, 3))
        out[name] = d / f"{name}.png"
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(out[name])
    return out


def python_image_run(bundle: Path, ids, images, budget: int, new: int, threads: int, audio=()):
    """Session(bundle).generate with images (or audio), greedy and past eos, at `threads`: its tokens, every step's
    logits (what the back-end returned for the last prefill chunk and each decode) and the prefilled ids."""
    from executorch.extension.pybindings import portable_lib

    from gemma_edge.runtime import Session

    old = portable_lib._threadpool_get_thread_count()
    portable_lib._unsafe_reset_threadpool(threads)
    try:
        with Session(bundle) as s:
            steps, prefilled = [], []
            prefill, decode = s.backend.prefill, s.backend.decode

            def record_prefill(tokens, start, rows, soft=None):
                prefilled.extend(int(t) for t in tokens)
                out = prefill(tokens, start, rows, soft)
                if start + len(tokens) == len(prefilled) and len(prefilled) == s.last_run.prompt_tokens:
                    steps.append(np.array(out))
                return out

            def record_decode(token, pos, row):
                out = decode(token, pos, row)
                steps.append(np.array(out))
                return out

            s.backend.prefill, s.backend.decode = record_prefill, record_decode
            tokens = [t.token for t in s.generate(ids, new, images=images, image_budget=budget, stop_on_eos=False,
                                                  audio=list(audio))]
    finally:
        portable_lib._unsafe_reset_threadpool(old)
    return tokens, np.stack(steps), prefilled


@pytest.mark.slow  # the vision program runs on both hosts, at every budget the bundle exports
def test_native_image_prompts_equal_the_python_session_bit_for_bit(exe, vision_bundle, image_files):
    # one image at its placeholder, two images of different aspect ratios first (no placeholder), at every
    # budget: the same prefilled ids (each image's span from the same preprocessing), the same logits at every
    # step (the tower's soft tokens spliced identically), the same greedy tokens
    m = bf.read_manifest(vision_bundle)
    v = m["vision"]
    image_id = v["image_tokens"]["image"]
    wide, tall = str(image_files["wide"]), str(image_files["tall"])
    cases = {"one at its placeholder": ([2, 10, image_id, 20, 30], [wide]),
             "two first": ([2, 10, 20], [wide, tall])}
    new = 6
    seen = {}
    for budget in v["budgets"]:
        for name, (ids, images) in cases.items():
            want, want_logits, prefilled = python_image_run(vision_bundle, ids, images, budget, new, threads=1)
            res = native.run(vision_bundle, ids, new, threads=1, with_logits=True, exe=exe, images=images,
                             image_budget=budget)
            where = f"budget {budget}, {name}"
            assert res["prompt_tokens"] == prefilled, where
            assert res["image_budget"] == budget and len(res["images"]) == len(images), where
            assert np.array_equal(res["logits"], want_logits), where
            assert res["runs"][0]["tokens"] == want, where
            # loaded for the encode and released after: the file is no longer mapped when the answer is decoded
            assert res["vision"]["loads"] == 1 and not res["runs"][0]["vision"]["mapped_after"], where
            seen[budget, name] = want
    # the images decide the answer (a host that dropped the soft tokens would not fail the checks above
    # only by chance): the two cases, and each case across budgets, continue differently
    assert len(set(map(tuple, seen.values()))) == len(seen), seen
    text = native.run(vision_bundle, [2, 10, 20], new, threads=1, exe=exe)["runs"][0]["tokens"]
    assert text not in seen.values()


@pytest.mark.slow  # exports the tiny multimodal bundle (tiny_vision_bundle), about 85 s
def test_native_text_prompt_never_reads_the_vision_program(exe, vision_bundle, image_files, tmp_path):
    # a text prompt on a multimodal bundle runs with its vision.pte corrupted (the file is not opened), and
    # reports no vision program; the same bundle refuses an image prompt on the digest, before ExecuTorch
    # parses the file
    bundle = edited_copy(vision_bundle, tmp_path / "corrupt")
    raw = bytearray((bundle / "vision.pte").read_bytes())
    raw[len(raw) // 2] ^= 0x40
    (bundle / "vision.pte").write_bytes(raw)
    res = native.run(bundle, [2, 10, 20], 4, threads=1, exe=exe)
    assert "vision" not in res and "images" not in res
    intact = native.run(vision_bundle, [2, 10, 20], 4, threads=1, exe=exe)
    assert res["runs"][0]["tokens"] == intact["runs"][0]["tokens"]
    digest = r"vision\.pte: sha256: expected [0-9a-f]{64} \(the manifest's files\.vision\), found [0-9a-f]{64}"
    with pytest.raises(ValueError, match=digest):
        native.run(bundle, [2, 10, 20], 4, threads=1, exe=exe, images=[image_files["wide"]], image_budget=70)


@pytest.mark.slow  # exports the tiny multimodal bundle (tiny_vision_bundle), about 85 s
def test_native_refuses_bad_image_requests_as_the_python_session_does(exe, vision_bundle, tiny_bundle, image_files,
                                                                       tmp_path):
    # each refusal names loop.md's field and phrase, as Python's GenerationError does, and exits 2 before any
    # work; the order of the checks is loop.md's (images before the budget, the budget before the files)
    from gemma_edge.runtime import Session
    from gemma_edge.runtime.session import GenerationError

    m = bf.read_manifest(vision_bundle)
    t = m["vision"]["image_tokens"]
    budgets = m["vision"]["budgets"]
    unsupported = next(b for b in (70, 140, 280, 560, 1120) if b not in budgets)
    wide = image_files["wide"]
    cases = {  # name: (bundle, ids, images, budget, new tokens, field, phrase)
        "text-only bundle": (tiny_bundle, [2, 10], [wide], None, 4, "images", "has no vision tower"),
        "frame id": (vision_bundle, [2, t["boi"], 10], [wide], None, 4, "images", "image frame ids"),
        "eoi id": (vision_bundle, [2, 10, t["eoi"]], [wide], None, 4, "images", "image frame ids"),
        "placeholders": (vision_bundle, [2, t["image"], t["image"]], [wide], None, 4, "images", "one per image"),
        "frame id before budget": (vision_bundle, [2, t["boi"]], [wide], unsupported, 4, "images", "image frame ids"),
        "budget": (vision_bundle, [2, 10], [wide], unsupported, 4, "image_budget",
                   f"expected one of [{', '.join(map(str, budgets))}]"),
        "not a budget": (vision_bundle, [2, 10], [wide], 100, 4, "image_budget", "expected one of"),
        "context": (vision_bundle, [2, 10], [wide, wide], budgets[-1], m["max_context"], "context",
                    "tokens, expected ≤ max_context"),
    }
    for name, (bundle, ids, images, budget, new, field, phrase) in cases.items():
        with pytest.raises(ValueError) as native_error:
            native.run(bundle, ids, new, threads=1, exe=exe, images=images, image_budget=budget)
        line = str(native_error.value)
        assert f"gemma-edge-run: {field}: " in line and phrase in line, (name, line)
        with Session(bundle) as s, pytest.raises(GenerationError) as py_error:
            list(s.generate(ids, new, images=images, **({} if budget is None else {"image_budget": budget})))
        assert py_error.value.field == field and phrase in str(py_error.value), (name, py_error.value)

    (tmp_path / "ids").write_text("2,10\n")
    (tmp_path / "not.png").write_bytes(b"GIF89a not an image")
    for args, message in (
            (["--image-budget", "70"], "--image-budget: needs --image"),
            (["--image", tmp_path / "missing.png"], "missing.png"),
            (["--image", tmp_path / "not.png"], "not.png"),
            (["--image", wide, "--image-budget", "x"], "--image-budget: expected an integer")):
        p = run_exe(exe, vision_bundle, "--ids-file", tmp_path / "ids", *args)
        assert p.returncode == 2 and message in p.stderr.strip().splitlines()[-1], (args, p.stderr)


VISION_MANIFEST_EDITS = {  # field named in the refusal: the manifest edit
    "vision": {"vision": None},
    "files.vision": {"files__vision": None},
    "export.program_revision": {"export__program_revision": 5},
    "vision.model_hash": {"vision__model_hash": "ab" * 32},
    "vision.budgets": {"vision__budgets": [280, 70]},
    "vision.budgets ": {"vision__budgets": [100]},
    "vision.budgets  ": {"vision__budgets": []},
    "vision.methods": {"vision__methods": {"70": "vision_70"}},
    "vision.methods.70": {"vision__methods__70": ""},
    "vision.hidden_size": {"vision__hidden_size": 32},
    "vision.patch_dim": {"vision__patch_dim": 0},
    "vision.image_tokens": {"vision__image_tokens": [509, 510, 511]},
    "vision.image_tokens.boi": {"vision__image_tokens__boi": 10 ** 6},
    "vision.image_tokens ": {"vision__image_tokens__eoi": 510},
    "vision.quantization": {"vision__quantization": "int4"},
    "vision.block_q": {"vision__block_q": 0},
}


@pytest.mark.slow  # exports the tiny multimodal bundle (tiny_vision_bundle), about 85 s
def test_native_manifest_reader_checks_the_vision_entry_as_python_does(exe, vision_bundle, tmp_path):
    # every wrong field of the vision entry is refused by both readers, naming the same field — a text
    # prompt included: a manifest that is not valid is not run at all
    (tmp_path / "ids").write_text("2,3\n")
    assert bf.read_manifest(vision_bundle)["vision"]["budgets"] == [70, 280]   # the edits below assume it
    for i, (field, edit) in enumerate(VISION_MANIFEST_EDITS.items()):
        field = field.strip()
        bundle = edited_copy(vision_bundle, tmp_path / str(i), **edit)
        with pytest.raises(bf.BundleError, match=rf"manifest\.json: {field}: "):
            bf.read_manifest(bundle)
        p = run_exe(exe, bundle, "--ids-file", tmp_path / "ids", "--new-tokens", 2)
        line = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and f"manifest.json: {field}: " in line, (field, p.stderr)


AUDIO_MANIFEST_EDITS = {  # field named in the refusal: the manifest edit
    "audio": {"audio": None},
    "files.audio": {"files__audio": None},
    "export.program_revision": {"export__program_revision": 5},
    "audio.model_hash": {"audio__model_hash": "ab" * 32},
    "audio.method": {"audio__method": ""},
    "audio.max_tokens": {"audio__max_tokens": 751},
    "audio.hidden_size": {"audio__hidden_size": 32},
    "audio.audio_tokens": {"audio__audio_tokens": [506, 507, 508]},
    "audio.audio_tokens.audio": {"audio__audio_tokens__audio": 10 ** 6},
    "audio.audio_tokens ": {"audio__audio_tokens__eoa": 506},
    "audio.quantization": {"audio__quantization": "int4"},
}


@pytest.mark.slow  # exports the tiny audio bundle
def test_native_manifest_reader_checks_the_audio_entry_as_python_does(exe, tiny_audio_bundle, tmp_path):
    # the native host reads an audio bundle's manifest as Python does: every wrong field of the audio entry refused
    # by both readers, naming the same field; the valid one runs text
    (tmp_path / "ids").write_text("2,3\n")
    assert bf.read_manifest(tiny_audio_bundle)["audio"]["audio_tokens"]["boa"] == 506   # the edits below assume it
    p = run_exe(exe, tiny_audio_bundle, "--ids-file", tmp_path / "ids", "--new-tokens", 2)
    assert p.returncode == 0, p.stderr
    for i, (field, edit) in enumerate(AUDIO_MANIFEST_EDITS.items()):
        field = field.strip()
        bundle = edited_copy(tiny_audio_bundle, tmp_path / str(i), **edit)
        with pytest.raises(bf.BundleError, match=rf"manifest\.json: {field}: "):
            bf.read_manifest(bundle)
        p = run_exe(exe, bundle, "--ids-file", tmp_path / "ids", "--new-tokens", 2)
        line = p.stderr.strip().splitlines()[-1]
        assert p.returncode == 2 and f"manifest.json: {field}: " in line, (field, p.stderr)


def test_native_loop_golden_replays_the_image_cases(exe, tmp_path):
    # the suite's image cases are there and replayed; a recording whose expansion, encoder calls, soft rows
    # or one fetch differ from what the loop does fails
    golden = json.loads(GOLDEN_LOOP.read_text())
    image_cases = [c for c in golden["cases"] if "images" in c]
    ok = [c for c in image_cases if "expect" in c and len(c["images"]) > 1]
    assert ok and any("error" in c for c in image_cases)
    p = subprocess.run([str(native.tool("gemma-edge-loop-golden")), str(GOLDEN_LOOP)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
    for c in image_cases:
        assert f"ok   {c['name']}" in p.stdout

    def wrong(edit):
        case = json.loads(json.dumps(ok[0]))
        edit(case["expect"])
        return case

    cases = {
        "expanded_prompt": wrong(lambda e: e["expanded_prompt"].insert(1, e["expanded_prompt"][1])),
        "encode_calls": wrong(lambda e: e["encode_calls"].reverse()),
        "prefill_soft": wrong(lambda e: e["prefill_soft"][1].__setitem__(0, e["prefill_soft"][1][0] + 1)),
        "fetches": wrong(lambda e: e["fetches"][0].__setitem__(e["expanded_prompt"].index(
            ok[0]["image_tokens"]["image"]), ok[0]["image_tokens"]["image"])),
    }
    for key, case in cases.items():
        (tmp_path / "g.json").write_text(json.dumps({**golden, "cases": [case]}))
        p = subprocess.run([str(native.tool("gemma-edge-loop-golden")), str(tmp_path / "g.json")],
                           capture_output=True, text=True)
        assert p.returncode == 1 and f"FAIL {case['name']}: {key}: expected" in p.stdout, (key, p.stdout)


def test_native_loop_golden_replays_the_audio_cases(exe, tmp_path):
    # the suite's audio cases (an item of two clips, audio after images, the audio refusals) are replayed; a
    # recording whose expansion, clip order, soft rows or one fetch differ from what the loop does fails
    golden = json.loads(GOLDEN_LOOP.read_text())
    audio_cases = [c for c in golden["cases"] if "audio" in c]
    assert len(audio_cases) >= 12 and any("error" in c and c["error"]["field"] == "audio" for c in audio_cases)
    p = subprocess.run([str(native.tool("gemma-edge-loop-golden")), str(GOLDEN_LOOP)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
    for c in audio_cases:
        assert f"ok   {c['name']}" in p.stdout
    two = next(c for c in audio_cases if c["name"] == "two_audio_items_across_chunks")
    audio_id = two["audio_tokens"]["audio"]

    def wrong(edit):
        case = json.loads(json.dumps(two))
        edit(case["expect"])
        return case

    cases = {
        "expanded_prompt": wrong(lambda e: e["expanded_prompt"].pop(3)),
        "audio_encode_calls": wrong(lambda e: e["audio_encode_calls"].reverse()),
        "prefill_soft": wrong(lambda e: e["prefill_soft"][3].__setitem__(2, -1.0)),
        "fetches": wrong(lambda e: e["fetches"][0].__setitem__(e["expanded_prompt"].index(audio_id), audio_id)),
    }
    for key, case in cases.items():
        (tmp_path / "g.json").write_text(json.dumps({**golden, "cases": [case]}))
        p = subprocess.run([str(native.tool("gemma-edge-loop-golden")), str(tmp_path / "g.json")],
                           capture_output=True, text=True)
        assert p.returncode == 1 and f"FAIL {case['name']}: {key}: expected" in p.stdout, (key, p.stdout)


@pytest.mark.slow  # exports the tiny multimodal bundle (tiny_vision_bundle), about 85 s
def test_cli_run_native_takes_images_as_run_does(exe, vision_bundle, image_files):
    # `gemma-edge run-native --image` gives the Python session's greedy tokens for the same prompt and image,
    # and says what the encode cost
    from gemma_edge.runtime import Session

    with Session(vision_bundle) as s:
        ids = s.encode("hello native host")
        want = [t.token for t in s.generate(ids, 6, images=[image_files["tall"]], image_budget=70)]
        text_only = [t.token for t in s.generate(ids, 6)]
    assert want != text_only   # the image decides the answer
    p = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "run-native", str(vision_bundle), "--prompt",
                        "hello native host", "--image", str(image_files["tall"]), "--image-budget", "70",
                        "--max-new-tokens", "6", "--threads", "1", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    res = json_at_end(p.stdout)
    assert res["runs"][0]["tokens"] == want and res["image_budget"] == 70
    assert "[native] 1 image(s) at budget 70" in p.stderr and "released after: True" in p.stderr


# ------------------------------------------------------------------------------------------------------
# Audio: the native host reads WAV files, cuts them into clips and encodes them with the bundle's audio program
# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audio_bundle(tiny_audio_bundle, tmp_path_factory) -> Path:
    """The session's tiny audio bundle, copied (the host writes its weight cache beside the program)."""
    out = tmp_path_factory.mktemp("native-audio") / "tiny-audio"
    shutil.copytree(tiny_audio_bundle, out, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
    return out


@pytest.fixture(scope="module")
def wav_files(tmp_path_factory) -> dict[str, Path]:
    """Speech-like clips the tower's answer depends on: 1.3 s at 16 kHz mono (16-bit), 0.8 s at 44.1 kHz stereo
    (24-bit: resampled and downmixed), and 31 s at 16 kHz (two clips: 30 s and 1 s)."""
    from scipy.io import wavfile

    d = tmp_path_factory.mktemp("wav")
    rng = np.random.default_rng(11)

    def tone(n: int, rate: int, f0: float) -> np.ndarray:
        t = np.arange(n) / rate
        return 0.4 * np.sin(2 * np.pi * f0 * t * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))) + 0.05 * rng.standard_normal(n)

    out = {"mono16k": d / "mono16k.wav", "stereo44k": d / "stereo44k.wav", "long": d / "long.wav"}
    wavfile.write(out["mono16k"], 16000, (tone(20800, 16000, 220) * 32767).astype(np.int16))
    st = np.stack([tone(35280, 44100, 330), tone(35280, 44100, 180)], 1)
    wavfile.write(out["stereo44k"], 44100, (st * 2**31).astype(np.int32))   # 32-bit PCM
    wavfile.write(out["long"], 16000, (tone(31 * 16000, 16000, 140) * 32767).astype(np.int16))
    return out


@pytest.mark.slow  # exports the tiny audio bundle; the audio program runs on both hosts
def test_native_audio_prompts_equal_the_python_session_bit_for_bit(exe, audio_bundle, wav_files):
    # one file at its placeholder, two files first (one resampled and downmixed), one over 30 s (two clips): the
    # same prefilled ids (each clip's span from the same samples), the same logits at every step (the tower's soft
    # tokens spliced identically), the same greedy tokens; the program loaded for the clips and released after
    audio_id = bf.read_manifest(audio_bundle)["audio"]["audio_tokens"]["audio"]
    mono, stereo, long = (str(wav_files[k]) for k in ("mono16k", "stereo44k", "long"))
    cases = {"one at its placeholder": ([2, 10, audio_id, 20, 30], [mono]),
             "two first, one resampled": ([2, 10, 20], [stereo, mono]),
             "over 30 s": ([2, 10, 20], [long])}
    new, seen = 6, {}
    for name, (ids, files) in cases.items():
        want, want_logits, prefilled = python_image_run(audio_bundle, ids, [], 280, new, threads=1, audio=files)
        res = native.run(audio_bundle, ids, new, threads=1, with_logits=True, exe=exe, audio=files)
        assert res["prompt_tokens"] == prefilled, name
        assert np.array_equal(res["logits"], want_logits), name
        assert res["runs"][0]["tokens"] == want, name
        assert res["audio_program"]["loads"] == 1 and not res["runs"][0]["audio"]["mapped_after"], name
        seen[name] = want
    assert [len(item["clip_soft_tokens"]) for item in res["audio"]] == [2]   # 31 s: a 30 s clip and a 1 s one
    assert len(set(map(tuple, seen.values()))) == len(seen), seen
    assert native.run(audio_bundle, [2, 10, 20], new, threads=1, exe=exe)["runs"][0]["tokens"] not in seen.values()


@pytest.mark.slow  # exports the tiny audio bundle
def test_native_text_prompt_never_reads_the_audio_program(exe, audio_bundle, wav_files, tmp_path):
    # a text prompt runs with audio.pte corrupted (the file is never opened); an audio prompt is refused on the
    # digest, before ExecuTorch parses the file
    bundle = edited_copy(audio_bundle, tmp_path / "corrupt")
    pte = bundle / bf.read_manifest(bundle)["files"]["audio"]["path"]
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pte.write_bytes(bytes(data))
    res = native.run(bundle, [2, 10, 20], 3, threads=1, exe=exe)
    assert "audio_program" not in res and len(res["runs"][0]["tokens"]) == 3
    with pytest.raises(ValueError, match=r"audio\.pte: sha256: expected .* \(the manifest's files\.audio\)"):
        native.run(bundle, [2, 10, 20], 3, threads=1, exe=exe, audio=[wav_files["mono16k"]])


@pytest.mark.slow  # exports the tiny audio bundle
def test_native_refuses_bad_audio_requests_as_the_python_session_does(exe, audio_bundle, tiny_bundle, wav_files,
                                                                      tmp_path):
    # the loop's audio check (its field and words, as the Python session's), then the files: each refused with one
    # line naming what was expected, before any program runs
    from gemma_edge.runtime import GenerationError, Session

    t = bf.read_manifest(audio_bundle)["audio"]["audio_tokens"]
    mono = wav_files["mono16k"]
    (tmp_path / "short.wav").write_bytes(b"")
    from scipy.io import wavfile

    wavfile.write(tmp_path / "tiny.wav", 16000, np.zeros(100, np.int16))
    (tmp_path / "notes.wav").write_text("not audio")
    cases = [(audio_bundle, [2, 10, t["boa"], 20], [mono], "audio frame ids"),
             (audio_bundle, [2, t["audio"], 10, t["audio"]], [mono], "one per item"),
             (tiny_bundle, [2, 10, 20], [mono], "no audio tower"),
             (audio_bundle, [2, 10, 20], [tmp_path / "tiny.wav"], "make no soft token"),
             (audio_bundle, [2, 10, 20], [tmp_path / "notes.wav"], "expected a WAV file"),
             (audio_bundle, [2, 10, 20], [tmp_path / "missing.wav"], "missing.wav")]
    for bundle, ids, files, words in cases:
        with pytest.raises(ValueError, match=words):
            native.run(bundle, ids, 3, threads=1, exe=exe, audio=files)
        if words in ("audio frame ids", "one per item", "no audio tower", "make no soft token"):
            with Session(bundle) as s, pytest.raises(GenerationError, match=words) as e:
                list(s.generate(ids, 3, audio=[str(f) for f in files]))
            assert e.value.field == "audio"


@pytest.mark.slow  # exports the tiny audio bundle
def test_cli_run_native_takes_audio_as_run_does(exe, audio_bundle, wav_files):
    # `gemma-edge run-native --audio --chat` gives the Python session's greedy tokens for the same chat and clip
    from gemma_edge.runtime import Session

    with Session(audio_bundle) as s:
        ids = s.encode("transcribe this", chat=True, audio=1)
        want = [t.token for t in s.generate(ids, 6, audio=[str(wav_files["stereo44k"])])]
    p = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "run-native", str(audio_bundle), "--prompt",
                        "transcribe this", "--chat", "--audio", str(wav_files["stereo44k"]), "--max-new-tokens", "6",
                        "--threads", "1", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    res = json_at_end(p.stdout)
    assert res["runs"][0]["tokens"] == want
    assert "[native] 1 audio file(s), 1 clip(s)" in p.stderr and "released after: True" in p.stderr
