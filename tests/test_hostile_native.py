"""The native host gemma-edge-run and its Python driver against hostile and careless input (issue 18): a program
that is not the manifest's, a damaged or stale weight cache, ids outside the vocabulary or past argv's limit,
garbage ids, a host killed by a signal — each a one-line error or the right answer, never a crash or other tokens."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import edit_manifest

from gemma_edge import ple_store
from gemma_edge.contract import bundle_format as bf
from gemma_edge.runtime import native

PROMPT = [2, 100, 200, 300, 400, 100, 17, 18, 19, 20, 21, 22, 23]


@pytest.fixture(scope="module")
def exe() -> Path:
    return native.build()


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle, free to damage (and to hold its own weight cache)."""
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
    return out


@pytest.fixture(scope="module")
def clean_tokens(exe, tiny_bundle, tmp_path_factory) -> list[int]:
    copy = tmp_path_factory.mktemp("clean") / "b"
    shutil.copytree(tiny_bundle, copy, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
    return native.run(copy, PROMPT, 12, threads=1, exe=exe, weight_cache=False)["runs"][0]["tokens"]


def host_args(bundle: Path, ids_file: Path, *extra) -> list[str]:
    """The host's arguments for `bundle` (it reads the manifest itself) and the prompt 2,100,200 in `ids_file`."""
    ids_file.write_text("2,100,200\n")
    return [str(bundle), "--ids-file", str(ids_file), "--new-tokens", "4", "--threads", "1", "--json",
            *map(str, extra)]


def last_line(p: subprocess.CompletedProcess) -> str:
    return p.stderr.strip().splitlines()[-1]


def resign(bundle: Path) -> None:
    """Make the manifest describe model.pte as it is now (a hostile or broken bundle that is self-consistent)."""
    m = bf.read_manifest(bundle)
    path = bundle / m["files"]["program"]["path"]
    m["files"]["program"].update(bytes=path.stat().st_size, sha256=bf.sha256_file(path))
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(m, indent=2))


# ---- item 1: the program is the manifest's, and verified before it is parsed --------------------------------

@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_a_program_that_is_not_the_manifests_is_refused_before_it_runs(exe, bundle, damage):
    # A flipped byte deep in the weights ran before, exit 0 with other tokens (or crashed the host):
    # now the host's own SHA-256 / size check refuses it with one line naming the file and the field.
    path = bundle / bf.PROGRAM_FILE
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) * 2 // 3] ^= 0x40
    elif damage == "truncate":
        raw = raw[:-1000]
    else:
        raw += b"\0" * 16
    path.write_bytes(raw)
    with pytest.raises(ValueError) as e:
        native.run(bundle, PROMPT, 4, threads=1, exe=exe)
    field = "sha256" if damage == "flip" else "bytes"
    assert f"{path.resolve()}: {field}: expected" in str(e.value) and "(the manifest's), found" in str(e.value)
    assert "\n" not in str(e.value)
    assert not native.weight_cache_path(bundle).exists()   # nothing was loaded, nothing packed


def test_the_cli_shows_one_line_for_a_damaged_program(bundle):
    # this bit, flipped in the tiny program's flatbuffer, made the host before the digest check die of SIGSEGV
    # (the CLI printed a bare RuntimeError)
    path = bundle / bf.PROGRAM_FILE
    raw = bytearray(path.read_bytes())
    raw[21819] ^= 0x01
    path.write_bytes(raw)
    p = subprocess.run([sys.executable, "-m", "gemma_edge.cli", "run-native", str(bundle), "--ids", "2,100,200",
                        "--max-new-tokens", "4", "--threads", "1"], capture_output=True, text=True)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("gemma-edge run-native: error: gemma-edge-run: ") and ": sha256: expected" in lines[0]


def test_a_self_consistent_but_broken_program_fails_verification_not_the_process(exe, bundle):
    # The manifest re-signed over a program whose flatbuffer is cut short: the digest check passes, so
    # ExecuTorch's internal-consistency verification is what must refuse it (status 2, one line).
    path = bundle / bf.PROGRAM_FILE
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    resign(bundle)
    with pytest.raises(ValueError, match=r"model\.pte: not a program this runtime can run"):
        native.run(bundle, PROMPT, 4, threads=1, exe=exe)


def test_a_program_passing_a_cache_kernel_mistyped_arguments_fails_in_one_line(exe, bundle):
    # The manifest re-signed over a program whose llama::update_cache_with_indices call gets an int where
    # its value tensor goes: ExecuTorch's generated unboxing aborted the host (SIGABRT); our kernels check
    # the argument types, so the step fails and the host says so.
    from executorch.exir._serialize import _program as pte_format

    path = bundle / bf.PROGRAM_FILE
    pte = pte_format.deserialize_pte_binary(path.read_bytes())
    plan = pte.program.execution_plan[0]
    calls = [i.instr_args for c in plan.chains for i in c.instructions if type(i.instr_args).__name__ == "KernelCall"
             and plan.operators[i.instr_args.op_index].name.startswith("llama::update_cache")]
    assert calls
    args = calls[0].args
    args[0], args[2] = args[2], args[0]   # (value, cache, start_pos, ...) -> (start_pos, cache, value, ...)
    path.write_bytes(bytes(pte_format.serialize_pte_binary(pte, extract_delegate_segments=True)))
    resign(bundle)
    with pytest.raises(native.NativeRunError, match=r"method 'forward' failed with ExecuTorch error") as e:
        native.run(bundle, PROMPT, 4, threads=1, exe=exe)
    assert e.value.returncode == 1


def test_the_program_digest_is_required(exe, bundle, tmp_path):
    # the host reads the digest from the manifest itself: a manifest without one (or a malformed one) is refused
    args = host_args(bundle, tmp_path / "ids")
    edit_manifest(bundle, files__program__sha256=None)
    p = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert p.returncode == 2 and last_line(p).endswith("manifest.json: files.program.sha256: missing")
    edit_manifest(bundle, files__program__sha256="Z" * 64)
    p = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert p.returncode == 2 and "files.program.sha256: expected 64 lowercase hex digits" in last_line(p)


# ---- item 1: a host killed by a signal is reported as such ---------------------------------------------------

@pytest.fixture
def crashing_host(tmp_path) -> Path:
    """An executable that dies of SIGSEGV, as a host crashing inside ExecuTorch does."""
    path = tmp_path / "segv-host"
    path.write_text("#!/bin/sh\nkill -SEGV $$\n")
    path.chmod(0o755)
    return path


def test_a_host_killed_by_a_signal_is_reported_as_such(bundle, crashing_host):
    with pytest.raises(native.NativeRunError) as e:
        native.run(bundle, PROMPT, 4, exe=crashing_host)
    assert str(e.value) == "gemma-edge-run killed by signal SIGSEGV (Segmentation fault)"
    assert e.value.returncode == -signal.SIGSEGV


def test_the_cli_reports_a_killed_host_in_one_line(bundle, crashing_host, monkeypatch, capsys):
    from gemma_edge import cli

    monkeypatch.setattr(native, "build", lambda build_dir=None: crashing_host)
    rc = cli.main(["run-native", str(bundle), "--ids", "2,100", "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == ["gemma-edge run-native: error: gemma-edge-run killed by signal SIGSEGV "
                               "(Segmentation fault)"]


# ---- item 2: the weight cache is the program's, and checked before it is mapped ------------------------------

def test_a_damaged_weight_cache_is_discarded_and_packed_again(exe, bundle, clean_tokens):
    # Before: flipped bytes in the packed weights changed the tokens of every later run, exit 0.
    first = native.run(bundle, PROMPT, 12, threads=1, exe=exe)
    assert first["runs"][0]["tokens"] == clean_tokens and first["warnings"] == []
    cache = native.weight_cache_path(bundle)
    assert Path(first["weight_cache"]["path"]) == cache and cache.with_name(cache.name + ".sha256").exists()
    raw = bytearray(cache.read_bytes())
    for k in range(0, len(raw) // 2, 4096):   # damage the packed weights, not XNNPACK's trailer
        raw[k + 100] ^= 0x55
    cache.write_bytes(raw)
    again = native.run(bundle, PROMPT, 12, threads=1, exe=exe)
    assert again["runs"][0]["tokens"] == clean_tokens
    assert again["weight_cache"]["discarded"] is True and again["weight_cache"]["existed_before_load"] is False
    assert len(again["warnings"]) == 1 and "discarded, packing it again" in again["warnings"][0]
    third = native.run(bundle, PROMPT, 12, threads=1, exe=exe)   # the repacked cache is sealed and mapped
    assert third["weight_cache"]["existed_before_load"] is True and third["warnings"] == []
    assert third["runs"][0]["tokens"] == clean_tokens


def test_a_weight_cache_without_its_checksum_is_not_trusted(exe, bundle, clean_tokens):
    # A packing load killed before the sidecar was written leaves a cache nobody vouches for.
    native.run(bundle, PROMPT, 2, threads=1, exe=exe)
    cache = native.weight_cache_path(bundle)
    cache.with_name(cache.name + ".sha256").unlink()
    res = native.run(bundle, PROMPT, 12, threads=1, exe=exe)
    assert res["weight_cache"]["discarded"] is True and "missing" in res["warnings"][0]
    assert res["runs"][0]["tokens"] == clean_tokens


def test_the_weight_cache_is_named_after_the_programs_own_digest(exe, bundle, tmp_path):
    # The host names the cache from the digest it has just checked, not from a name the caller passes.
    args = host_args(bundle, tmp_path / "ids", "--weight-cache-dir", bundle)
    p = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    real = bf.sha256_file(bundle / bf.PROGRAM_FILE)
    assert json.loads(p.stdout)["weight_cache"]["path"] == str(bundle / f"model.pte.{real[:16]}.xnnpack_cache")


def test_a_weight_cache_that_is_a_link_is_refused(exe, bundle, tmp_path):
    # XNNPACK truncates a cache it cannot read in place: through a link, that would be any file.
    victim = tmp_path / "victim.txt"
    victim.write_text("user data\n")
    native.weight_cache_path(bundle).symlink_to(victim)
    with pytest.raises(ValueError, match="expected a regular file"):
        native.run(bundle, PROMPT, 2, threads=1, exe=exe)
    assert victim.read_text() == "user data\n"


# ---- item 4: ids outside the program's vocabulary never reach it ---------------------------------------------

def test_ids_are_bounded_by_the_programs_own_vocabulary(exe, bundle, tmp_path):
    # A .ple (and a manifest) that claim a vocabulary twice the program's: the .ple's check lets id 700
    # through, the program's logits [1, 512] do not.
    m = bf.read_manifest(bundle)
    V, L, P = m["vocab_size"], m["num_layers"], m["ple_dim"]
    with ple_store.open(bundle / bf.PLE_FILE) as ple:
        rows = ple.fetch(np.arange(V)).reshape(V, L * P)
    big = tmp_path / "big.ple"
    ple_store.write(big, [rows, rows], vocab_size=2 * V, num_layers=L, ple_dim=P, dtype="int8", embed_scale=1.0,
                    progress=False)
    big = big.rename(bundle / "big.ple")
    with ple_store.open(big) as reader:
        identity = reader.header.identity.hex()
    edit_manifest(bundle, vocab_size=2 * V, files__ple__path="big.ple", files__ple__identity=identity,
                  files__ple__bytes=big.stat().st_size, files__ple__sha256=bf.sha256_file(big))
    args = host_args(bundle, tmp_path / "ids")
    (tmp_path / "ids").write_text(f"2,{V + 188},3\n")
    p = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert last_line(p) == (f"gemma-edge-run: prompt id {V + 188} at position 1: expected 0 ≤ id < vocab_size {V} "
                            f"({(bundle / bf.PROGRAM_FILE).resolve()} logits [1, V])")
    # and the manifest's own vocabulary, when it is the smaller one
    (tmp_path / "ids").write_text("2,300\n")
    edit_manifest(bundle, vocab_size=256)
    p = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert p.returncode == 2 and "expected 0 ≤ id < vocab_size 256 (the manifest's vocab_size)" in last_line(p)


# ---- item 9: ids through a file, garbage ids, ExecuTorch errors as one line ----------------------------------

def test_a_prompt_longer_than_argv_allows_gets_the_hosts_own_error(exe, bundle):
    # 40,000 ids (160 KB as text, past argv's 128 KiB per argument): on argv this was OSError "Argument list
    # too long"; through the ids file the host reads them all and refuses the prompt for what it is.
    with pytest.raises(ValueError, match=r"context: prompt 40000 \+ max_new_tokens 1 = 40001 tokens, expected "
                                         r"≤ max_context 64"):
        native.run(bundle, [500] * 40000, 1, exe=exe)


@pytest.mark.parametrize("text,message", [
    ("2,9223372036854775808\n", "id 1: expected an id below 2^63, found '9223372036854775808'"),
    ("2,99999999999999999999999\n", "id 1: expected an id below 2^63"),
    ("2,-5\n", "id 1: expected comma-separated integers, found '-5'"),
    ("2 60 70\n", "id 0: expected comma-separated integers, found '2 60 70'"),
    ("2,,3\n", "id 1: expected comma-separated integers, found ''"),
    ("2,0x10\n", "id 1: expected comma-separated integers, found '0x10'"),
    ("\n", "expected at least one token"),
    ("2,\xff\n", "id 1: expected comma-separated integers"),
])
def test_garbage_ids_get_one_line(exe, bundle, tmp_path, text, message):
    args = host_args(bundle, tmp_path / "ids")
    (tmp_path / "ids").write_bytes(text.encode("latin-1"))
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, errors="replace")
    assert p.returncode == 2 and message in last_line(p), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_ids_from_stdin_and_a_fifo_refused_without_blocking(exe, bundle, tmp_path):
    args = host_args(bundle, tmp_path / "ids")
    i = args.index("--ids-file")
    args[i + 1] = "-"
    p = subprocess.run([str(exe), *args], input="2,100,200\n", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["runs"][0]["tokens"]) == 4
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)
    args[i + 1] = str(fifo)
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)   # a hang fails here
    assert p.returncode == 2 and "expected a regular file" in last_line(p)


def test_an_executorch_execute_error_is_one_line_with_status_1(exe, bundle, tmp_path):
    # A prefill chunk past the method's upper bound on T (8): ExecuTorch refuses the input, the host says so.
    args = host_args(bundle, tmp_path / "ids")
    edit_manifest(bundle, prefill_chunk=16)
    (tmp_path / "ids").write_text(",".join(map(str, PROMPT)))
    p = subprocess.run([str(exe), *args], capture_output=True, text=True)
    assert p.returncode == 1 and "method 'forward' failed with ExecuTorch error" in last_line(p), p.stderr
    assert last_line(p).startswith("gemma-edge-run: ")


# ---- the first generated token is checked against EOS too ----------------------------------------------------

def test_an_eos_first_token_ends_the_answer_as_in_the_python_session(exe, bundle, clean_tokens):
    from gemma_edge.runtime import Session

    m = bf.read_manifest(bundle)
    m["eos_token_ids"] = [clean_tokens[0]]   # the first greedy token now ends the answer
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(m, indent=2))
    with Session(bundle) as s:
        want = [t.token for t in s.generate(PROMPT, 6)]
    run = native.run(bundle, PROMPT, 6, threads=1, stop_on_eos=True, exe=exe, weight_cache=False)["runs"][0]
    assert run["tokens"] == want == [clean_tokens[0]] and run["stop_reason"] == "eos"


# ---------------------------------------------------------------------------------------------------- images
@pytest.fixture
def vision_bundle(tiny_vision_bundle, tmp_path) -> Path:
    """A private copy of the tiny multimodal bundle (vision.pte, budgets 70 and 280), free to damage."""
    out = tmp_path / "vision-bundle"
    shutil.copytree(tiny_vision_bundle, out, ignore=shutil.ignore_patterns("*.xnnpack_cache*"))
    return out


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    y, x = np.mgrid[0:90, 0:200]
    path = tmp_path / "wide.png"   # 60 soft tokens at budget 70
    Image.fromarray(np.stack([x, y, x ^ y], -1).astype(np.uint8)).save(path)
    return path


def resign_vision(bundle: Path) -> None:
    """Make the manifest describe vision.pte as it is now."""
    m = json.loads((bundle / bf.MANIFEST_FILE).read_text())
    path = bundle / m["files"]["vision"]["path"]
    m["files"]["vision"].update(bytes=path.stat().st_size, sha256=bf.sha256_file(path))
    (bundle / bf.MANIFEST_FILE).write_text(json.dumps(m, indent=2))


def image_run(exe, bundle: Path, image: Path, tmp_path: Path, budget: int = 70) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *host_args(bundle, tmp_path / "ids"), "--image", str(image), "--image-budget",
                           str(budget)], capture_output=True, text=True)


@pytest.mark.slow  # exports the tiny multimodal bundle (tiny_vision_bundle), about 85 s
def test_a_self_consistent_but_broken_vision_program_fails_verification_not_the_process(exe, vision_bundle, image,
                                                                                          tmp_path):
    path = vision_bundle / "vision.pte"
    raw = bytearray(path.read_bytes())
    raw[64:4096] = bytes(4096 - 64)   # the flatbuffer's tables gone, the manifest re-signed to match
    path.write_bytes(raw)
    resign_vision(vision_bundle)
    p = image_run(exe, vision_bundle, image, tmp_path)
    assert p.returncode == 2 and "vision.pte: not a program this runtime can run" in last_line(p), p.stderr


@pytest.mark.slow  # exports the tiny multimodal bundle (tiny_vision_bundle), about 85 s
def test_a_vision_method_of_another_budget_or_none_is_refused_by_its_signature(exe, vision_bundle, image, tmp_path):
    # the manifest's method for budget 70 is the 280 one: its inputs are 9·280 patches, not 9·70 — refused
    # before it runs, naming the input; a method the program does not have is named too
    edit_manifest(vision_bundle, vision__methods__70="vision_280")
    p = image_run(exe, vision_bundle, image, tmp_path)
    assert p.returncode == 2, p.stderr
    assert "method 'vision_280' input 0 (pixel_values): expected float32 [1, 630, 768]" in last_line(p)
    assert "found [1, 2520, 768]" in last_line(p)
    edit_manifest(vision_bundle, vision__methods__70="vision_71")
    p = image_run(exe, vision_bundle, image, tmp_path)
    assert p.returncode == 2 and "cannot load method 'vision_71'" in last_line(p), p.stderr


@pytest.mark.slow  # lowers a program of its own
def test_a_vision_program_marking_other_rows_valid_is_refused(exe, vision_bundle, image, tmp_path):
    # a program with the right signature whose valid mask is not the preprocessor's grid (every row valid,
    # padding included): its soft tokens are not the image's, and the host says so instead of splicing them
    import torch
    from executorch.exir import to_edge

    hidden = bf.read_manifest(vision_bundle)["vision"]["hidden_size"]

    class EveryRowValid(torch.nn.Module):
        def forward(self, pixel_values, pixel_position_ids):
            soft = pixel_values[:, :70, :hidden] * 2.0
            return soft, pixel_position_ids[:, :70, 0] > -2   # padding positions are -1: valid too

    args = (torch.zeros(1, 630, 768), torch.zeros(1, 630, 2, dtype=torch.long))
    program = to_edge({"vision_70": torch.export.export(EveryRowValid(), args)}).to_executorch()
    (vision_bundle / "vision.pte").write_bytes(program.buffer)
    resign_vision(vision_bundle)
    edit_manifest(vision_bundle, vision__budgets=[70], vision__methods={"70": "vision_70"})
    p = image_run(exe, vision_bundle, image, tmp_path)
    assert p.returncode == 1, p.stderr
    assert "method 'vision_70' marks 70 soft tokens valid for image 0" in last_line(p)
    assert "expected the first 60 (the preprocessor's)" in last_line(p)
