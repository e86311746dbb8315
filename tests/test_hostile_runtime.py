"""Hostile and careless input to the Python runtime and the bundle manifest reader (issue 18): every case a
one-line error naming the file and field, or a correct answer — never a crash, a traceback or a silent guess."""
import hashlib
import json
import logging
import mmap
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from gemma_edge.contract import bundle_format as bf
from gemma_edge.runtime import Session
from gemma_edge.runtime.run_report import parse_ids

IDS = "2,17,300,45,9"


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle, free to corrupt."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def edit_manifest(bundle: Path, fn) -> None:
    path = bundle / bf.MANIFEST_FILE
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def restamp(bundle: Path, role: str) -> None:
    """Make the manifest's size and digest agree with the file now on disk (a manifest rewritten to match)."""
    def fn(m):
        path = bundle / m["files"][role]["path"]
        m["files"][role].update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    edit_manifest(bundle, fn)


def cli(*args, input_bytes=None, env=None) -> subprocess.CompletedProcess:
    """`gemma-edge ARGS` in a fresh process (bytes in argv pass through as they are)."""
    return subprocess.run([sys.executable, "-m", "gemma_edge.cli", *args], capture_output=True, input=input_bytes,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2, (p.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], err[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------
# 4. The Python process must never abort: verify before loading, bound ids by the program itself
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow  # runs the CLI in child processes
def test_garbage_program_with_matching_manifest_is_refused_not_aborted(bundle):
    """Random bytes as model.pte and a manifest rewritten to match them: ExecuTorch never sees the file."""
    path = bundle / bf.PROGRAM_FILE
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, np.uint8).tobytes())
    restamp(bundle, "program")
    assert_one_line_error(cli("run", str(bundle), "--ids", IDS, "--max-new-tokens", "2"),
                          "model.pte: file identifier: expected b'ET12'")


@pytest.mark.slow  # runs the CLI in child processes
def test_damaged_program_body_is_a_load_error(bundle):
    """A program whose header is intact but whose body is damaged: ExecuTorch's internal-consistency check."""
    path = bundle / bf.PROGRAM_FILE
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for i in rng.integers(64, 4096, 200):
        raw[i] = int(rng.integers(0, 256))
    path.write_bytes(bytes(raw))
    restamp(bundle, "program")
    assert_one_line_error(cli("run", str(bundle), "--ids", IDS), "model.pte: ExecuTorch cannot load this program")


def test_inspect_verifies_before_loading(bundle):
    path = bundle / bf.PROGRAM_FILE
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, np.uint8).tobytes())
    p = cli("inspect", str(bundle))
    out = p.stdout.decode()
    assert p.returncode == 1, (p.returncode, p.stderr.decode()[-2000:])
    assert "(not loaded: it does not match the manifest)" in out and "sha256: expected" in out


def test_manifest_vocab_larger_than_the_program_is_refused(bundle):
    """A manifest claiming 600 ids for a 512-logit program: ids 512..599 must never reach the program."""
    def lie(m):
        m["vocab_size"] = m["config"]["vocab_size"] = 600
    edit_manifest(bundle, lie)
    with pytest.raises(bf.BundleError, match=r"vocab_size: expected 512 \(the program's model\.pte metadata\), "
                                             r"found 600"):
        Session(bundle)


def test_manifest_chunk_larger_than_the_program_is_refused(bundle):
    def lie(m):
        m["prefill_chunk"] = m["methods"]["prefill"]["max_tokens"] = 16
    edit_manifest(bundle, lie)
    with pytest.raises(bf.BundleError, match=r"prefill_chunk: expected ≤ 8 \(the program's tokens input\), found 16"):
        Session(bundle)


def test_program_execute_error_names_the_method(tiny_bundle):
    with Session(tiny_bundle) as s:
        with pytest.raises(bf.BundleError, match=r"model\.pte: method forward failed at positions 0\.\.0"):
            s.backend.decode(5, 0, np.zeros((7, 8), np.float32))    # ple_rows of the wrong shape


def test_garbage_onnx_model_is_a_load_error(bundle):
    (bundle / bf.ONNX_FILE).write_bytes(b"\x08\x07 not a protobuf of a graph " * 64)
    edit_manifest(bundle, lambda m: m["files"].update(onnx={"path": bf.ONNX_FILE, "bytes": 0, "sha256": "0" * 64}))
    restamp(bundle, "onnx")
    with pytest.raises(bf.BundleError, match=r"model\.onnx: ONNX Runtime cannot load this model"):
        Session(bundle, backend="onnx")


# ---------------------------------------------------------------------------------------------------
# 6 and 8. Files the manifest names: the PLE table required, every path inside the bundle folder
# ---------------------------------------------------------------------------------------------------

def test_ple_model_without_ple_entry_is_refused(bundle):
    edit_manifest(bundle, lambda m: m["files"].pop("ple"))
    with pytest.raises(bf.BundleError, match=r"files\.ple: missing, but the model has per-layer embeddings"):
        Session(bundle)


@pytest.mark.parametrize("name", ["/etc/passwd", "../other/tokenizer.json", "sub/../../x.json", ""])
def test_manifest_paths_outside_the_bundle_are_refused(bundle, name):
    edit_manifest(bundle, lambda m: m["files"]["tokenizer"].update(path=name))
    with pytest.raises(bf.BundleError, match=r"files\.tokenizer\.path: expected"):
        bf.read_manifest(bundle)


def test_symlink_out_of_the_bundle_is_refused(bundle, tmp_path):
    """model.pte a symlink to another folder's (identical) program: the digest matches, the place does not."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.move(bundle / bf.PROGRAM_FILE, other / bf.PROGRAM_FILE)
    (bundle / bf.PROGRAM_FILE).symlink_to(other / bf.PROGRAM_FILE)
    with pytest.raises(bf.BundleError, match=r"files\.program\.path: 'model\.pte' resolves to .*elsewhere.*outside"):
        Session(bundle)
    p = cli("run", str(bundle), "--ids", IDS)
    assert_one_line_error(p, "outside the bundle folder")


# ---------------------------------------------------------------------------------------------------
# 9. One-line errors, no tracebacks
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow  # runs the CLI in child processes
def test_malformed_manifest_json_is_one_line(bundle):
    (bundle / bf.MANIFEST_FILE).write_text('{"format": "gemma-edge-bundle", ')
    assert_one_line_error(cli("run", str(bundle), "--ids", IDS), "manifest.json: not valid JSON")
    (bundle / bf.MANIFEST_FILE).write_bytes(b'{"format": "\xff"}')
    assert_one_line_error(cli("inspect", str(bundle)), "manifest.json: not UTF-8 text (byte 0xff at offset 12)")
    (bundle / bf.MANIFEST_FILE).write_text("[" * 100_000)
    assert_one_line_error(cli("budget", "--bundle", str(bundle)), "manifest.json: not valid JSON")
    (bundle / bf.MANIFEST_FILE).write_text("[1, 2]")
    assert_one_line_error(cli("run", str(bundle), "--ids", IDS), "manifest: expected a JSON object")


def test_special_files_are_refused_without_blocking(bundle):
    """A directory or FIFO where a file should be: refused from its stat, never opened (a FIFO's open blocks)."""
    (bundle / bf.PROGRAM_FILE).unlink()
    os.mkfifo(bundle / bf.PROGRAM_FILE)
    with pytest.raises(bf.BundleError, match=r"model\.pte: expected a regular file, found a FIFO"):
        Session(bundle)
    (bundle / bf.MANIFEST_FILE).unlink()
    (bundle / bf.MANIFEST_FILE).mkdir()
    with pytest.raises(bf.BundleError, match=r"manifest\.json: expected a regular file, found a directory"):
        bf.read_manifest(bundle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_program_is_one_line(bundle):
    (bundle / bf.PROGRAM_FILE).chmod(0)
    assert_one_line_error(cli("run", str(bundle), "--ids", IDS), "model.pte: cannot read (Permission denied)")


def test_cli_turns_os_errors_into_one_line_and_keeps_bugs_loud(monkeypatch, capsys):
    from gemma_edge.cli import DEBUG_ENV, main
    from gemma_edge.runtime import cli as runtime_cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/x/model.pte")

    monkeypatch.setattr(runtime_cli, "_budget", denied)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert main(["budget"]) == 2
    assert capsys.readouterr().err == "gemma-edge budget: error: /x/model.pte: Permission denied\n"
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(PermissionError):
        main(["budget"])

    def bug(args):
        return {}["missing"]

    monkeypatch.setattr(runtime_cli, "_budget", bug)
    monkeypatch.delenv(DEBUG_ENV)
    with pytest.raises(KeyError):   # a bug is not an input error: its traceback stays
        main(["budget"])


@pytest.mark.slow  # runs the CLI in child processes
def test_ids_at_or_past_2_63(tiny_bundle):
    assert_one_line_error(cli("run", str(tiny_bundle), "--ids", "2,9223372036854775808"),
                          "--ids: item 1: expected a token id < 2^63")
    with Session(tiny_bundle) as s:
        with pytest.raises(ValueError,
                           match=r"prompt token 1: expected an id in \[0, 512\).*found 9223372036854775808"):
            s.generate([2, 2**63], 2)
        with pytest.raises(ValueError, match=r"prompt token 1: expected an id in \[0, 512\).*found 1\.7"):
            s.generate([2, 1.7], 2)    # never truncated to 1
        with pytest.raises(ValueError, match=r"prompt token 0: .*found True"):
            s.generate([True], 2)


@pytest.mark.slow  # runs the CLI in child processes
def test_invalid_utf8_prompts(tiny_bundle, tmp_path):
    p = cli("run", str(tiny_bundle), "--prompt", b"caf\xe9 au lait", "--max-new-tokens", "2")
    assert_one_line_error(p, "prompt: not valid UTF-8 text (byte 0xe9 at character 3)")
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"The quick \xff fox")
    assert_one_line_error(cli("run", str(tiny_bundle), "--prompt-file", str(bad)),
                          "prompt.txt: not valid UTF-8 text (byte 0xff at offset 10)")
    good = tmp_path / "good.txt"
    good.write_text("The quick brown fox", encoding="utf-8")
    ok = cli("run", str(tiny_bundle), "--prompt-file", str(good), "--max-new-tokens", "2")
    assert ok.returncode == 0, ok.stderr.decode()[-2000:]
    with Session(tiny_bundle) as s:
        assert s.encode("The quick brown fox") == s.encode(good.read_text())
        with pytest.raises(ValueError, match=r"prompt: not valid UTF-8 text \(surrogate U\+D800 at character 1\)"):
            s.encode("a\ud800b")


def test_chat_template_runs_sandboxed(bundle):
    """A manifest's chat template is data: it cannot reach Python objects (jinja's sandbox refuses it)."""
    edit_manifest(bundle, lambda m: m.update(chat_template="{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    with Session(bundle) as s:
        with pytest.raises(ValueError, match=r"chat_template of the bundle's manifest: SecurityError"):
            s.tokenizer.chat_prompt("hi")


# ---------------------------------------------------------------------------------------------------
# 10 and 13. The manifest validated once, where it is read: field, expected, found
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda m: m["files"]["program"].update(bytes="1545088"),
     r"files\.program\.bytes: expected an integer in \[0, \d+\], found \"1545088\" \(string\)"),
    (lambda m: m["config"].update(num_hidden_layers="6"),
     r"config\.num_hidden_layers: expected an integer in \[1, \d+\], found \"6\" \(string\)"),
    (lambda m: m["config"].pop("sliding_window"), r"config: keys \['sliding_window'\] missing"),
    (lambda m: m.update(prefill_chunk=-1), r"prefill_chunk: expected an integer in \[1, 64\], found -1 \(integer\)"),
    (lambda m: m.update(eos_token_ids="1"), r"eos_token_ids: expected an array of token ids in \[0, 512\), "
                                            r"found \"1\" \(string\)"),
    (lambda m: m.update(eos_token_ids=[1, 512]), r"eos_token_ids\[1\]: expected a token id in \[0, 512\), found 512"),
    (lambda m: m.update(bos_token_id=None), r"bos_token_id: expected a token id in \[0, 512\), found null"),
    (lambda m: m.update(num_layers=7), r"num_layers: expected 6 \(config\.num_hidden_layers\), found 7"),
    (lambda m: m["files"]["ple"].update(sha256="xyz"), r"files\.ple\.sha256: expected 64 lowercase hex digits"),
    (lambda m: m["quantization"].update(group_size=-1), r"quantization\.group_size: expected an integer in \[0,"),
    (lambda m: m["methods"].update(decode="forward"), r"methods\.decode: expected an object, found \"forward\""),
    (lambda m: m["config"].update(layer_types="sliding"), r"config\.layer_types: expected an array of strings"),
])
def test_manifest_fields_are_validated_where_read(bundle, edit, message):
    edit_manifest(bundle, edit)
    with pytest.raises(bf.BundleError, match=message):
        bf.read_manifest(bundle)


def test_session_refuses_eos_given_as_a_string(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["eos_token_id"] = "12"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"eos_token_id"):   # never the eos set {1, 2}
        Session.from_checkpoint(ckpt, max_context=64, prefill_chunk=8)


# ---------------------------------------------------------------------------------------------------
# 11. Flags refused, not reinterpreted
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["2 60 70", "2,,3", "2,-5", "2,0x10", "", "2,3,"])
def test_ids_are_comma_separated_integers(text):
    with pytest.raises(ValueError, match=r"--ids: item \d+: expected a non-negative decimal integer"):
        parse_ids(text)


def test_ids_with_spaces_around_commas():
    assert parse_ids(" 2, 60 ,70") == [2, 60, 70]


@pytest.mark.slow  # runs the CLI in child processes
def test_ids_with_spaces_refused_by_the_cli(tiny_bundle):
    assert_one_line_error(cli("run", str(tiny_bundle), "--ids", "2 60 70"), "found '2 60 70'")


@pytest.mark.parametrize("flags", [["--group-size", "-1"], ["--context", "0"], ["--context", "-5"],
                                   ["--prefill-chunk", "0"]])
def test_budget_flags_out_of_range(flags, capsys):
    from gemma_edge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["budget", "--model", "e2b", *flags])
    assert e.value.code == 2
    assert f"argument {flags[0]}: expected an integer ≥" in capsys.readouterr().err


def test_budget_api_refuses_what_the_flags_refuse(tiny_bundle):
    from gemma_edge.runtime.budget import estimate, estimate_bundle

    with pytest.raises(ValueError, match=r"context: expected an integer ≥ 1, found 0"):
        estimate_bundle(tiny_bundle, context=0)   # never silently the bundle's max_context
    with pytest.raises(ValueError, match=r"group_size: expected an integer ≥ 0, found -1"):
        estimate("e2b", group_size=-1)


def test_budget_counts_linears_the_exporter_keeps_in_fp32():
    """8da4w groups must tile a linear's input width, else the exporter keeps it fp32: so must the budget."""
    from gemma_edge.runtime.budget import linear_bytes

    assert linear_bytes(64, 8, "8da4w", 0) == 4 * 64 * 8        # per-channel int4 needs 32 | in_features
    assert linear_bytes(64, 96, "8da4w", 7) == 4 * 64 * 96      # groups of 7 do not tile 96
    assert linear_bytes(64, 96, "8da4w", 32) == 64 * 96 // 2 + 2 * (64 * 96 // 32)
    assert linear_bytes(64, 96, "8da8w", 7) == 64 * 96 + 4 * 64


# ---------------------------------------------------------------------------------------------------
# 14. The reported peak is the run's own; third-party noise is filtered narrowly
# ---------------------------------------------------------------------------------------------------

def test_run_peak_excludes_earlier_work_in_the_process(tiny_bundle):
    """The demo exports, then runs, in one process: the run's measured peak must not be the export's."""
    from gemma_edge.runtime.run_report import run_bundle

    block = mmap.mmap(-1, 400 << 20)          # 400 MiB touched and returned: VmHWM rises, VmRSS comes back
    block.write(b"\1" * (400 << 20))
    block.close()
    with open(os.devnull, "w") as out:
        r = run_bundle(tiny_bundle, ids=IDS, max_new_tokens=4, out=out)
    assert r.peak_reset
    assert abs(r.rss_gap) < 0.10, (r.rss_after["VmHWM"], r.predicted_rss)


@pytest.mark.slow  # runs the CLI in child processes
def test_commands_print_no_third_party_noise(tiny_bundle):
    p = cli("run", str(tiny_bundle), "--ids", IDS, "--max-new-tokens", "2")
    err = p.stderr.decode()
    assert p.returncode == 0, err[-2000:]
    for noise in ("Failed to load", "cpuinfo_utils", "is an Enum subclass", "Warning"):
        assert noise not in err, err


def test_noise_filters_are_narrow(capsys, caplog):
    """Only the named messages go: other messages of the same loggers, categories and stream pass."""
    from gemma_edge.cli import quiet_third_party

    with quiet_third_party():
        logging.getLogger("torchao").warning("Failed to load /x/torchao/_C_mxfp8.abi3.so: no CUDA")
        logging.getLogger("torchao").warning("something else from torchao")
        sys.stderr.write("[cpuinfo_utils.cpp:71] Reading file /sys/x\n[program.cpp:1] a real ExecuTorch error\n")
        with warnings.catch_warnings(record=True) as seen:   # records under the filters in force
            for text, module in (("_check_is_size will be removed in a future PyTorch release",
                                  "executorch.extension.llm.custom_ops.custom_ops"),
                                 ("_check_is_size will be removed (raised by another module)",
                                  "gemma_edge.export.model"),
                                 ("a FutureWarning of ours", "gemma_edge.export.exporter")):
                warnings.warn_explicit(text, FutureWarning, f"{module}.py", 1, module=module)
    err = capsys.readouterr().err
    assert "something else from torchao" in caplog.text and "_C_mxfp8" not in caplog.text
    assert "a real ExecuTorch error" in err and "cpuinfo_utils" not in err
    assert [str(w.message) for w in seen] == ["_check_is_size will be removed (raised by another module)",
                                              "a FutureWarning of ours"]
