"""Tests of the Python runtime: .pte session vs eager vs transformers, PLE fetch accounting, bad bundles, sampler,
tokenizer."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gemma_edge.contract import bundle_format as bf
from gemma_edge.contract.chat import TURN_CLOSE, TURN_OPEN, render_gemma4_chat
from gemma_edge.export.random_tokenizer import build_test_tokenizer
from gemma_edge.runtime import Session
from gemma_edge.runtime.sampling import Sampler, SplitMix64

PROMPT = [2, 17, 300, 45, 45, 9, 120, 7, 88, 300, 5, 511, 64, 3, 17, 200, 42, 42, 42, 99]   # 20 ids: 3 chunks of 8
SAMPLER_JAVA = Path(__file__).resolve().parents[1] / "android_demo/core/src/main/java/dev/gemmaedge/core/Sampler.java"


@pytest.fixture(scope="module")
def pte(tiny_bundle):
    with Session(tiny_bundle) as s:
        yield s


@pytest.fixture(scope="module")
def eager(tiny_checkpoint, tiny_bundle):
    """Our eager model fed the bundle's own .ple rows: the same weights the program has, PLE int8 included."""
    m = bf.read_manifest(tiny_bundle)
    return Session.from_checkpoint(tiny_checkpoint, max_context=m["max_context"], prefill_chunk=m["prefill_chunk"],
                                   ple_file=tiny_bundle / bf.PLE_FILE)


def greedy(session, ids, n=32):
    return [t.token for t in session.generate(ids, n, stop_on_eos=False)]


def transformers_greedy(checkpoint, ids, n=32, ple_file=None):
    """transformers' own greedy loop (whole sequence each step); with `ple_file` its PLE table is replaced by
    the .ple's dequantized rows, so it computes with exactly the values the program is given."""
    from transformers import Gemma4ForCausalLM

    from gemma_edge import ple_store

    hf = Gemma4ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    if ple_file is not None:
        with ple_store.open(ple_file) as r:
            rows = r.fetch(np.arange(r.header.vocab_size))                   # [V, L, P], × sqrt(P)
        table = hf.model.embed_tokens_per_layer
        with torch.no_grad():
            table.weight.copy_(torch.from_numpy(rows.reshape(rows.shape[0], -1)) / table.embed_scale)
    seq = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):
            tok = int(hf(input_ids=seq).logits[0, -1].argmax())
            out.append(tok)
            seq = torch.cat([seq, torch.tensor([[tok]])], dim=1)
    return out


# ---------------------------------------------------------------------------------------------------
# Golden: three implementations, same greedy tokens
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow  # runs transformers' generate beside both sessions
def test_greedy_pte_equals_eager_and_transformers(pte, eager, tiny_checkpoint, tiny_bundle):
    got = greedy(pte, PROMPT)
    assert len(got) == 32
    assert got == greedy(eager, PROMPT)
    assert got == transformers_greedy(tiny_checkpoint, PROMPT, ple_file=tiny_bundle / bf.PLE_FILE)
    assert len(set(got)) > 3, "degenerate model: the comparison would prove little"


def test_logits_pte_vs_eager(pte, eager):
    a, b = pte.logits(PROMPT), eager.logits(PROMPT)
    assert a.shape == b.shape == (len(PROMPT), pte.config.vocab_size)
    assert np.abs(a - b).max() < 5e-3 * max(1.0, np.abs(b).max())   # XNNPACK fp32 vs eager: ~2.5e-3 measured
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_int8_ple_vs_full_precision_table(pte, tiny_checkpoint, tiny_bundle):
    """End to end against the checkpoint's own fp32 table: only the .ple's int8 rounding separates them."""
    m = bf.read_manifest(tiny_bundle)
    full = Session.from_checkpoint(tiny_checkpoint, max_context=m["max_context"], prefill_chunk=m["prefill_chunk"])
    a, b = pte.logits(PROMPT), full.logits(PROMPT)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8


# ---------------------------------------------------------------------------------------------------
# PLE fetch accounting and page residency
# ---------------------------------------------------------------------------------------------------

def test_exactly_one_batched_fetch_per_prompt(pte):
    before = len(pte.ple.fetch_log)
    toks = greedy(pte, PROMPT, 10)
    log = pte.ple.fetch_log[before:]
    st = pte.last_run
    assert st.prompt_fetches == 1 and st.token_fetches == len(toks) - 1   # the last token is never decoded
    assert len(log) == 1 + (len(toks) - 1)
    assert log[0].tokens == len(PROMPT) and log[0].unique_rows == len(set(PROMPT))
    assert all(f.tokens == 1 for f in log[1:])
    assert st.prompt_fetch is log[0]


def test_ple_residency_within_fetched_rows(pte, eager):
    eager.ple.evict()   # the eager fixture maps the same file: pages mapped anywhere cannot be dropped
    pte.ple.evict()
    assert pte.ple.resident_bytes() == 0, "evict must leave no page of the .ple cached"
    toks = greedy(pte, PROMPT, 6)
    fetched = np.unique(PROMPT + toks[:-1])
    resident = set(pte.ple.resident_pages().tolist())
    allowed = set(pte.ple.pages_of(fetched).tolist())
    assert resident and resident <= allowed, f"pages beyond the fetched rows: {sorted(resident - allowed)}"


def test_program_pages_released_after_load(tiny_bundle):
    """After loading, no page of the .pte stays mapped-resident or locked (ExecuTorch mlocks its constants
    when run as root): the delegates hold packed copies, the embedding rows fault back in on use."""
    from gemma_edge.procfs import mapping_resident_bytes

    session = Session(tiny_bundle)
    pte = tiny_bundle / bf.PROGRAM_FILE
    assert session.backend.released["mapped"] > 0
    assert mapping_resident_bytes(pte) == 0
    with open("/proc/self/status") as f:
        locked = next(int(line.split()[1]) for line in f if line.startswith("VmLck:"))
    assert locked == 0
    first = [t.token for t in session.generate(PROMPT, 4, stop_on_eos=False)]
    assert first == [t.token for t in Session(tiny_bundle).generate(PROMPT, 4, stop_on_eos=False)]


# ---------------------------------------------------------------------------------------------------
# Bad bundles and bad requests
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / bf.PLE_FILE).unlink()
    with pytest.raises(bf.BundleError, match=r"model\.ple: missing"):
        Session(bundle_copy)


def test_program_hash_mismatch_is_refused(bundle_copy):
    path = bundle_copy / bf.PROGRAM_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(bf.BundleError, match=r"model\.pte: sha256: expected [0-9a-f]{64} .*found [0-9a-f]{64}"):
        Session(bundle_copy)


def test_truncated_ple_is_refused(bundle_copy):
    path = bundle_copy / bf.PLE_FILE
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4096)
    with pytest.raises(bf.BundleError, match=r"model\.ple: size: expected \d+ bytes .*found \d+"):
        Session(bundle_copy)


def test_ple_from_another_export_is_refused(bundle_copy):
    """A .ple that is whole by itself but is not the one the manifest names (other model hash)."""
    from gemma_edge import ple_store

    with ple_store.open(bundle_copy / bf.PLE_FILE) as r:
        h = r.header
        rows = r.fetch(np.arange(h.vocab_size)) / h.embed_scale
    other = bundle_copy / "other.ple"
    ple_store.write(other, [rows.reshape(h.vocab_size, -1)], vocab_size=h.vocab_size, num_layers=h.num_layers,
                    ple_dim=h.ple_dim, dtype="int8", embed_scale=h.embed_scale, model_hash=b"\x01" * 32, progress=False)
    other.replace(bundle_copy / bf.PLE_FILE)
    m = json.loads((bundle_copy / bf.MANIFEST_FILE).read_text())
    assert (bundle_copy / bf.PLE_FILE).stat().st_size == m["files"]["ple"]["bytes"]
    with pytest.raises(bf.BundleError, match=r"PLE identity: expected [0-9a-f]{64} .*found [0-9a-f]{64}"):
        Session(bundle_copy)
    assert any("sha256" in p for p in bf.verify_bundle(bundle_copy, full_hash=True))


def test_token_id_out_of_vocab(pte):
    with pytest.raises(ValueError, match=r"prompt token 2: expected an id in \[0, 512\).*found 512"):
        list(pte.generate([2, 5, 512], 4))


def test_prompt_over_context_fails_before_running(pte):
    before = len(pte.ple.fetch_log)
    with pytest.raises(ValueError,
                       match=r"context: prompt 60 \+ max_new_tokens 10 = 70 tokens, expected ≤ max_context 64"):
        pte.generate([2] * 60, 10)
    assert len(pte.ple.fetch_log) == before, "nothing may be fetched for a refused request"


def test_eos_stops_generation(pte):
    first = greedy(pte, PROMPT, 1)[0]
    pte.eos_ids.add(first)
    try:
        toks = [t.token for t in pte.generate(PROMPT, 10)]
    finally:
        pte.eos_ids.discard(first)
    assert toks == [first] and pte.last_run.stop_reason == "eos" and pte.last_run.token_fetches == 0


# ---------------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------------

def test_sampler_reproducible_with_seed(pte):
    kw = dict(temperature=1.5, top_k=40, top_p=0.9, stop_on_eos=False)
    a = [t.token for t in pte.generate(PROMPT, 12, seed=7, **kw)]
    b = [t.token for t in pte.generate(PROMPT, 12, seed=7, **kw)]
    c = [t.token for t in pte.generate(PROMPT, 12, seed=8, **kw)]
    assert a == b and a != c
    assert [t.token for t in pte.generate(PROMPT, 6, temperature=1.0, top_k=1, seed=3, stop_on_eos=False)] \
        == greedy(pte, PROMPT, 6)


def test_sampler_greedy_ties_and_nan():
    assert Sampler()(np.array([0.5, 2.0, 2.0, -1.0], np.float32)) == 1
    with pytest.raises(ValueError, match=r"logits\[2\]: expected a number, found NaN"):
        Sampler(temperature=1.0)(np.array([0.0, 1.0, np.nan], np.float32))
    # top-p keeps the smallest prefix reaching p: here only the dominant token
    s = Sampler(temperature=1.0, top_p=0.5, seed=1)
    assert {s(np.array([0.0, 10.0, 0.0, 0.0], np.float32)) for _ in range(50)} == {1}


def test_splitmix64_is_java_splittable_random():
    # java.util.SplittableRandom(0).nextDouble() twice — the SplitMix64 reference values
    r = SplitMix64(0)
    z1 = 0xE220A8397B1DCDAF
    assert r.next_double() == (z1 >> 11) * 2.0**-53


@pytest.mark.skipif(shutil.which("javac") is None or not SAMPLER_JAVA.exists(), reason="needs javac and Sampler.java")
def test_sampler_matches_java(tmp_path):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(300) * 3).astype(np.float32)
    logits[10] = logits[20] = logits.max()                    # a tie at the top
    (tmp_path / "logits.txt").write_text("\n".join(repr(float(x)) for x in logits))
    src = tmp_path / "src" / "dev/gemmaedge/core"
    src.mkdir(parents=True)
    shutil.copy(SAMPLER_JAVA, src / "Sampler.java")
    (src / "Golden.java").write_text("""package dev.gemmaedge.core;
import java.nio.file.*; import java.util.*;
public class Golden { public static void main(String[] a) throws Exception {
  List<String> lines = Files.readAllLines(Paths.get(a[0])); float[] l = new float[lines.size()];
  for (int i = 0; i < l.length; i++) l[i] = Float.parseFloat(lines.get(i));
  Sampler s = new Sampler(Float.parseFloat(a[1]), Integer.parseInt(a[2]), Float.parseFloat(a[3]), Long.parseLong(a[4]));
  StringBuilder b = new StringBuilder(); for (int i = 0; i < 40; i++) b.append(s.sample(l)).append(' ');
  System.out.println(b.toString().trim()); } }""")
    subprocess.run(["javac", "-d", str(tmp_path / "cls"), str(src / "Sampler.java"), str(src / "Golden.java")],
                   check=True, capture_output=True)
    for t, k, p, seed in ((0.0, 0, 1.0, 0), (1.0, 0, 1.0, 42), (0.7, 20, 1.0, -5), (1.3, 0, 0.8, 123456789),
                          (2.0, 50, 0.95, 2**62)):
        out = subprocess.run(["java", "-cp", str(tmp_path / "cls"), "dev.gemmaedge.core.Golden",
                              str(tmp_path / "logits.txt"), str(t), str(k), str(p), str(seed)],
                             check=True, capture_output=True, text=True).stdout.split()
        s = Sampler(t, k, p, seed)
        assert [s(logits) for _ in range(40)] == [int(x) for x in out], (t, k, p, seed)


# ---------------------------------------------------------------------------------------------------
# Tokenizer, chat, CLI
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [256, 384, 512, 4096])
def test_test_tokenizer_sizes_and_round_trip(vocab):
    tok = build_test_tokenizer(vocab)
    assert tok.get_vocab_size() == vocab
    text = "Hello world! Größe 🙂 — 42"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert max(ids) < vocab and tok.decode(ids) == text
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    if vocab >= 512:
        assert tok.token_to_id(TURN_OPEN) == 105 and tok.token_to_id(TURN_CLOSE) == 106


def test_chat_prompt_uses_gemma4_turns(pte):
    assert render_gemma4_chat([{"role": "user", "content": "Hi"}]) == "<bos><|turn>user\nHi<turn|>\n<|turn>model\n"
    ids = pte.encode("Hi there", chat=True)
    assert ids[:2] == [2, 105] and ids[-3:-1] != [] and 106 in ids
    assert pte.tokenizer.decode(pte.encode("Hi there")) == "Hi there"


def test_cli_run_reports(tiny_bundle, capsys):
    from gemma_edge.cli import main

    assert main(["run", str(tiny_bundle), "--prompt", "The quick brown fox", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    for needle in ("TTFT", "decode", "PLE prompt fetch: 1 batched call", "peak RSS", "simulated on Google Pixel 8",
                   "[ok] one batched fetch per prompt", "[ok] PLE pages resident"):
        assert needle in out, needle


@pytest.fixture(scope="session")
def onnx_bundle(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported to ONNX alone, with the shared bundle's settings (PLE int8 included)."""
    from conftest import TINY_EXPORT

    from gemma_edge.export.exporter import ExportSettings, export_bundle

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    return export_bundle(tiny_checkpoint, out, ExportSettings(**TINY_EXPORT, formats=("onnx",)), progress=False)


@pytest.mark.slow
def test_onnx_session_matches_pte_and_eager(onnx_bundle, tiny_bundle, pte, eager):
    """Session(backend="onnx") runs the bundle's model.onnx: the .pte's greedy tokens, and logits close to
    eager's. Both sides compute in fp32 with the same ops over the same PLE rows; ONNX Runtime only sums in
    another order and fuses some ops, a few ulps per op — 1e-4 of the logit scale leaves room for that
    over six layers and nothing for a wrong mask, cache slot or position (those move logits by 1e-2 and more)."""
    files = bf.read_manifest(onnx_bundle)["files"]
    assert "onnx" in files and "program" not in files
    assert files["ple"]["sha256"] == bf.read_manifest(tiny_bundle)["files"]["ple"]["sha256"]   # the same rows
    with Session(onnx_bundle, backend="onnx") as s:
        got = greedy(s, PROMPT, 16)    # a 20-token prompt in chunks of 8, then decodes past the 8-slot window
        assert got == greedy(pte, PROMPT, 16)
        assert len(set(got)) > 3, "degenerate model: the comparison would prove little"
        a, b = s.logits(PROMPT), eager.logits(PROMPT)
    assert a.shape == b.shape == (len(PROMPT), s.config.vocab_size)
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())
