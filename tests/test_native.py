"""The native host gemma-edge-run (runtime_py/native/): built against the ExecuTorch wheel, checked against the
Python runtime on the same bundle — logits bit for bit, PLE rows bit for bit, I/O accounting equal — and
against bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gemma_edge import ple_store
from gemma_edge.contract import bundle_format as bf
from gemma_edge.runtime import native

from conftest import json_at_end

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


@pytest.fixture(scope="module")
def three_input_bundle(tiny_checkpoint, tiny_bundle, tmp_path_factory) -> Path:
    """tiny_bundle with a program of revision < 5's interface: (tokens, input_pos, ple_rows) -> logits, no
    attend_len. Its step attends every cache slot (attend_len fixed at max_context), so the masks alone
    hide the unwritten ones, as before revision 5. Built from the same checkpoint with the exporter's own
    stages; the manifest describes the new program."""
    import json

    import torch
    from conftest import TINY_EXPORT

    from gemma_edge.export import rewrites
    from gemma_edge.export.exporter import ExportSettings, StageLog, lower_to_executorch, prepare_model

    settings = ExportSettings(**TINY_EXPORT)
    cfg, model = prepare_model(tiny_checkpoint, settings, StageLog(), progress=False)

    class ThreeInputStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.step = rewrites.InPlaceKVStep(model, settings.prefill_chunk)

        def forward(self, tokens, input_pos, ple_rows):
            return self.step(tokens, input_pos, ple_rows, torch.empty(settings.max_context, dtype=torch.long))

    t = torch.export.Dim("T", min=1, max=settings.prefill_chunk)
    with torch.no_grad():
        program = torch.export.export(ThreeInputStep().eval(), (
            torch.zeros(1, 2, dtype=torch.long), torch.arange(2, 4), torch.zeros(1, 2, cfg.num_hidden_layers,
                                                                                  cfg.hidden_size_per_layer_input)),
            dynamic_shapes={"tokens": {1: t}, "input_pos": {0: t}, "ple_rows": {1: t}}, strict=False,
            prefer_deferred_runtime_asserts_over_guards=True)
    bundle = tmp_path_factory.mktemp("rev4") / "tiny-3in"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / bf.PROGRAM_FILE, "wb") as f:
        lower_to_executorch({bf.STEP_METHOD: program}).write_to_file(f)
    manifest = bf.read_manifest(bundle)
    manifest["files"]["program"].update(bytes=(bundle / bf.PROGRAM_FILE).stat().st_size,
                                        sha256=bf.sha256_file(bundle / bf.PROGRAM_FILE))
    for method in manifest["methods"].values():
        method["inputs"] = [i for i in method["inputs"] if i["name"] != "attend_len"]
    manifest["export"]["program_revision"] = 4
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return bundle


def test_revision4_bundle_still_runs(exe, three_input_bundle, tiny_bundle):
    # A program of revision < 5's interface (three inputs, no attend_len) from the same checkpoint as
    # tiny_bundle: both hosts still run it, bit-identical to each other, and it computes what the current
    # program does — the same arithmetic up to fp32 summation order.
    old = bf.read_manifest(three_input_bundle)
    assert old["export"]["program_revision"] == 4 and len(old["methods"]["prefill"]["inputs"]) == 3
    assert bf.read_manifest(tiny_bundle)["export"]["program_revision"] >= 5
    new = 30
    ref = python_logits(tiny_bundle, PROMPT, new, 1)
    py_old = python_logits(three_input_bundle, PROMPT, new, 1)
    nat_old = native.run(three_input_bundle, PROMPT, new, threads=1, with_logits=True, exe=exe)["logits"]
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


def test_native_stops_on_eos_when_asked(exe, tiny_bundle, tmp_path):
    free = native.run(tiny_bundle, PROMPT, 20, threads=1, exe=exe)["runs"][0]["tokens"]
    eos = free[3]   # pretend the 4th greedy token is an end of sequence
    cmd = native.command(exe, tiny_bundle, PROMPT, 20, ids_file=tmp_path / "ids", threads=1) + ["--eos", str(eos)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    run = native.parse_result(p.stdout, p.stderr, p.returncode, cmd)["runs"][0]
    assert run["tokens"] == free[:free.index(eos) + 1] and run["stop_reason"] == "eos"


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
    program = m["files"]["program"]
    base = ["--program", tiny_bundle / bf.PROGRAM_FILE, "--ple", tiny_bundle / bf.PLE_FILE, "--prefill-chunk", 8,
            "--max-context", 64, "--program-sha256", program["sha256"], "--program-bytes", program["bytes"]]
    cases = {
        "identity": (base + ["--ids", "2,3", "--ple-identity", "00" * 32], "identity (the manifest's): expected 00"),
        "vocab": (base + ["--ids", f"2,{m['vocab_size']}"], f"expected 0 ≤ id < vocab_size {m['vocab_size']}"),
        "context": (base + ["--ids", "2,3", "--new-tokens", 63], "expected ≤ --max-context 64"),
        "flag": (base + ["--ids", "2", "--bogus", "1"], "--bogus: unknown flag"),
        "ids": (base + ["--ids", "2,x"], "--ids: id 1: expected comma-separated integers, found 'x'"),
        "method": (base + ["--ids", "2", "--prefill-method", "nope"], "cannot load method 'nope'"),
    }
    for name, (args, message) in cases.items():
        p = run_exe(exe, *args)
        assert p.returncode == 2, (name, p.stderr)
        assert message in p.stderr.strip().splitlines()[-1], (name, p.stderr)

    bad = tmp_path / "bad.ple"
    raw = bytearray((tiny_bundle / bf.PLE_FILE).read_bytes())
    bad.write_bytes(raw[:-4096])
    p = run_exe(exe, *base[:2], "--ple", bad, *base[4:], "--ids", "2")
    assert p.returncode == 2 and "file size (truncated or trailing bytes)" in p.stderr
    raw[20] ^= 1   # num_layers, with the header CRC left stale
    bad.write_bytes(raw)
    p = run_exe(exe, *base[:2], "--ple", bad, *base[4:], "--ids", "2")
    assert p.returncode == 2 and "header_crc32" in p.stderr
    # the wrapper raises the runner's own line: ValueError for bad input (status 2), RuntimeError otherwise
    with pytest.raises(ValueError, match=r"^gemma-edge-run: .*header_crc32"):
        native.parse_result(p.stdout, p.stderr, p.returncode, [])
    with pytest.raises(RuntimeError, match="method 'forward' failed"):
        native.parse_result("", "gemma-edge-run: x.pte: method 'forward' failed with ExecuTorch error 18\n", 1, [])


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
