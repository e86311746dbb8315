"""Issue 18, the exporter and checkpoint loading under careless or hostile input: what --overwrite may delete,
other architectures' configs, damaged checkpoints, a full disk, killed exports' partials, model-dependent
defaults. Every refusal is reached before the export's stages run, except where the test says otherwise."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_EXPORT

from gemma_edge.cli import main
from gemma_edge.contract.bundle_format import read_manifest, verify_bundle
from gemma_edge.contract.config import ConfigError, TextConfig
from gemma_edge.export.checkpoint import CheckpointError, open_checkpoint
from gemma_edge.export.exporter import ExportSettings, export_bundle

PYTHON = sys.executable
GEMMA_EDGE = str(Path(sys.executable).with_name("gemma-edge"))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes (to prove nothing was touched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def cli(capsys, *argv) -> tuple[int, str]:
    """`gemma-edge ARGV` in this process: exit code and stderr, which must be one line when it fails."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    if rc:
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return rc, err


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint, free to damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle, free to overwrite."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "out"))


def reuse_args(tiny_bundle) -> list[str]:
    """CLI flags of an export that copies tiny_bundle's program (no lowering): a few seconds."""
    return ["--quant", "none", "--embedding-quant", "none", "--max-context", str(TINY_EXPORT["max_context"]),
            "--prefill-chunk", str(TINY_EXPORT["prefill_chunk"]), "--ple-dtype", "int4", "--quiet",
            "--reuse-program", str(tiny_bundle)]


def edit_config(ckpt: Path, change) -> None:
    d = json.loads((ckpt / "config.json").read_text())
    change(d)
    (ckpt / "config.json").write_text(json.dumps(d))


# ---------------------------------------------------------------- item 5: what --overwrite may replace
def test_out_is_the_checkpoint_or_inside_or_above_it(ckpt, tmp_path, capsys):
    before = tree(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(ckpt)
    cases = [(ckpt, "is the checkpoint"), (ckpt / "bundle", "inside the checkpoint"),
             (tmp_path, "holds the checkpoint"), (link, "is the checkpoint"), (link / "b", "inside the checkpoint"),
             (ckpt / "config.json" / "b", "inside the checkpoint")]
    for out, message in cases:
        rc, err = cli(capsys, "export", ckpt, "--out", out, "--overwrite", "--quiet")
        assert rc == 2 and message in err and str(out) in err, (out, err)
    link.unlink()
    assert tree(tmp_path) == before and siblings(ckpt) == ["ckpt"]


@pytest.mark.parametrize("case", ["user-folder", "bundle-with-user-file", "bundle-with-subfolder", "file",
                                  "other-format", "symlink-to-bundle"])
def test_overwrite_replaces_only_a_bundle(case, ckpt, bundle, tmp_path, capsys):
    out = tmp_path / "out"
    if case == "user-folder":
        shutil.rmtree(out)
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    elif case == "bundle-with-user-file":
        (out / "notes.txt").write_text("mine")
    elif case == "bundle-with-subfolder":
        (out / "photos").mkdir()
    elif case == "file":
        shutil.rmtree(out)
        out.write_text("not a folder")
    elif case == "other-format":
        (out / "manifest.json").write_text(json.dumps({"format": "someone-elses-bundle"}))
    else:
        real = Path(shutil.copytree(bundle, tmp_path / "real"))
        shutil.rmtree(out)
        out.symlink_to(real)
    before = tree(tmp_path)
    rc, err = cli(capsys, "export", ckpt, "--out", out, "--overwrite", "--quiet")
    assert rc == 2 and str(out) in err and "only a" in err, err
    assert tree(tmp_path) == before  # nothing deleted, nothing left beside it


def test_without_overwrite_an_existing_out_is_refused(ckpt, bundle, tmp_path, capsys):
    rc, err = cli(capsys, "export", ckpt, "--out", bundle, "--quiet")
    assert rc == 2 and "already exists" in err
    (tmp_path / "file").write_text("x")
    rc, err = cli(capsys, "export", ckpt, "--out", tmp_path / "file" / "b", "--quiet")
    assert rc == 2 and f"{tmp_path / 'file'} is not a folder" in err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_overwrite_swaps_a_bundle_in_and_deletes_the_old(exchange, ckpt, bundle, tiny_bundle, monkeypatch, caplog):
    """A bundle (with the native host's weight cache beside its program) is replaced by a whole new one,
    with or without the filesystem's atomic exchange; nothing is left beside it."""
    import gemma_edge.export.exporter as exporter

    if not exchange:  # a filesystem without RENAME_EXCHANGE: the old bundle is renamed aside first
        real = exporter._renameat2
        monkeypatch.setattr(exporter, "_renameat2",
                            lambda a, b, flags: False if flags == exporter._RENAME_EXCHANGE else real(a, b, flags))
    (bundle / "model.pte.0123456789abcdef.xnnpack_cache").write_bytes(b"packed")
    (bundle / "model.pte.0123456789abcdef.xnnpack_cache.sha256").write_text("0" * 64 + " 6\n")  # its sidecar
    assert read_manifest(bundle)["quantization"]["ple_dtype"] == "int8"
    settings = ExportSettings(**{**TINY_EXPORT, "ple_dtype": "int4"})
    export_bundle(ckpt, bundle, settings, progress=False, overwrite=True, reuse_program=tiny_bundle)
    assert read_manifest(bundle)["quantization"]["ple_dtype"] == "int4" and verify_bundle(bundle) == []
    assert not any(p.name.startswith("model.pte.0123456789abcdef") for p in bundle.iterdir())
    assert siblings(bundle) == ["ckpt", "out"]


def test_overwrite_of_the_current_folder(ckpt, bundle, tiny_bundle, monkeypatch):
    """`--out .` from inside a bundle: the partial goes beside the folder, not into it."""
    monkeypatch.chdir(bundle)
    export_bundle(ckpt, ".", ExportSettings(**{**TINY_EXPORT, "ple_dtype": "int4"}), progress=False,
                  overwrite=True, reuse_program=tiny_bundle)
    assert read_manifest(bundle)["quantization"]["ple_dtype"] == "int4" and verify_bundle(bundle) == []
    assert siblings(bundle) == ["ckpt", "out"] and not list(bundle.glob("*.partial-*"))


def test_a_failed_overwrite_keeps_the_old_bundle(ckpt, bundle, tiny_bundle, monkeypatch):
    import gemma_edge.export.exporter as exporter

    before = tree(bundle)

    def boom(*a, **k):
        raise RuntimeError("PLE writer crashed")

    monkeypatch.setattr(exporter, "write_ple", boom)
    with pytest.raises(RuntimeError, match="PLE writer crashed"):
        export_bundle(ckpt, bundle, ExportSettings(**TINY_EXPORT), progress=False, overwrite=True,
                      reuse_program=tiny_bundle)
    assert tree(bundle) == before and siblings(bundle) == ["ckpt", "out"]


@pytest.mark.parametrize("damage", ["no-quantization-linear", "quantization-list", "export-string"])
def test_reuse_program_with_a_damaged_manifest(damage, ckpt, bundle, tmp_path, capsys):
    m = json.loads((bundle / "manifest.json").read_text())
    if damage == "no-quantization-linear":
        del m["quantization"]["linear"]
    elif damage == "quantization-list":
        m["quantization"] = []
    else:
        m["export"] = "x"
    (bundle / "manifest.json").write_text(json.dumps(m))
    rc, err = cli(capsys, "export", ckpt, "--out", tmp_path / "b", *reuse_args(bundle))
    assert rc == 2 and str(bundle / "manifest.json") in err  # one line (cli() checks) naming the manifest
    assert siblings(bundle) == ["ckpt", "out"]


# ---------------------------------------------------------------- item 12: another architecture's config
@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(model_type="llama"),
     "model_type: expected 'gemma4_text' or 'gemma4' \\(Gemma 4\\), found 'llama'"),
    (lambda d: d.update(architectures=["LlamaForCausalLM"]), "architectures: expected one of"),
    (lambda d: d.pop("model_type"), "model_type: expected .* found None \\(key missing\\)"),
    (lambda d: d.pop("hidden_size"), "missing required key\\(s\\) \\['hidden_size'\\]"),
    (lambda d: (d.pop("num_hidden_layers"), d.pop("sliding_window")),
     "missing required key\\(s\\) \\['num_hidden_layers', 'sliding_window'\\]"),
    (lambda d: d.update(hidden_size="64"), "hidden_size: expected an integer ≥ 1, found '64'"),
    (lambda d: d.update(num_key_value_heads=3), "num_key_value_heads: expected a divisor of num_attention_heads"),
    (lambda d: d.update(rms_norm_eps=None), "rms_norm_eps: expected a number"),
    (lambda d: d.update(layer_types=[["x"]] * 6), "layer_types: unknown attention types"),
    (lambda d: d.update(rope_parameters={"full_attention": {"rope_theta": "big"}}),
     "rope_parameters.full_attention.rope_theta: expected a number > 0"),
    (lambda d: d.clear() or d.update(model_type="gemma4", text_config={"model_type": "llama"}),
     "text_config.model_type: expected 'gemma4_text', found 'llama'"),
    (lambda d: d.update(model_type="gemma4", text_config=None), "text_config: expected the text decoder's config"),
], ids=["llama", "llama-architectures", "no-model-type", "missing-key", "missing-keys", "string-int", "gqa-ratio",
        "eps-null", "layer-type-list", "rope-string", "multimodal-llama", "multimodal-no-text"])
def test_config_of_another_architecture_or_missing_keys(change, message, ckpt, tmp_path, capsys):
    edit_config(ckpt, change)
    with pytest.raises(ConfigError, match=message):
        export_bundle(ckpt, tmp_path / "b", progress=False)
    rc, err = cli(capsys, "export", ckpt, "--out", tmp_path / "b", "--quiet")
    assert rc == 2 and str(ckpt / "config.json") in err
    assert siblings(ckpt) == ["ckpt"]


def test_gemma4_configs_as_transformers_writes_them_still_load(tmp_path):
    """The multimodal wrapper Google ships (model_type gemma4, text_config gemma4_text) and the text-only
    config, both as transformers' save_pretrained writes them (which drops keys equal to its defaults)."""
    from gemma_edge.contract.presets import preset
    from gemma_edge.export.parity import random_hf_model

    cfg = preset("tiny-e4b")
    for multimodal in (False, True):
        d = tmp_path / str(multimodal)
        random_hf_model(cfg, multimodal=multimodal).config.save_pretrained(d)
        ours = TextConfig.from_json(d / "config.json")
        assert ours.layers == cfg.layers


# ---------------------------------------------------------------- item 9: damaged checkpoints, a full disk
def sharded(tmp_path) -> Path:
    from gemma_edge.contract.presets import preset
    from gemma_edge.export.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path / "sharded", preset("tiny"), dtype=torch.float32, shard_bytes=200_000,
                                   progress=False)


def _truncate(f: Path, keep: int) -> None:
    data = f.read_bytes()
    f.write_bytes(data[:keep] if keep >= 0 else data[:keep])


@pytest.mark.parametrize("damage,message", [
    ("truncated", "model.safetensors: not a readable safetensors file"),
    ("truncated-header", "model.safetensors: not a readable safetensors file"),
    ("garbage", "model.safetensors: not a readable safetensors file"),
    ("a-folder", "model.safetensors: not a readable safetensors file"),
])
def test_damaged_single_file_checkpoint(damage, message, ckpt, tmp_path, capsys):
    f = ckpt / "model.safetensors"
    if damage == "truncated":
        _truncate(f, -1000)
    elif damage == "truncated-header":
        _truncate(f, 100)
    elif damage == "garbage":
        f.write_bytes(os.urandom(4096))
    else:  # an unreadable file (a folder where the file should be: what root, which ignores modes, cannot read)
        f.unlink()
        f.mkdir()
    with pytest.raises(CheckpointError, match=message):
        export_bundle(ckpt, tmp_path / "b", progress=False)
    rc, err = cli(capsys, "export", ckpt, "--out", tmp_path / "b", "--quiet")
    assert rc == 2 and str(f) in err
    assert siblings(ckpt) == ["ckpt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_shard(ckpt, tmp_path, capsys):
    f = ckpt / "model.safetensors"
    f.chmod(0)
    rc, err = cli(capsys, "export", ckpt, "--out", tmp_path / "b", "--quiet")
    assert rc == 2 and str(f) in err and "Permission denied" in err


@pytest.mark.parametrize("damage,message", [
    ("missing-shard", "model-00002-of-.*: shard named in model.safetensors.index.json is missing"),
    ("truncated-shard", "model-00002-of-.*: not a readable safetensors file"),
    ("path-in-index", "weight_map\\[.*\\]: expected a shard file name in this folder, found '../elsewhere"),
    ("tensor-not-in-shard", "tensor\\(s\\) model.safetensors.index.json places here are not in it"),
    ("index-not-json", "model.safetensors.index.json: not a safetensors index"),
    ("weight-map-list", "weight_map: expected an object, found list"),
])
def test_damaged_sharded_checkpoint(damage, message, tmp_path, capsys):
    ck = sharded(tmp_path)
    index = ck / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    second = sorted(set(d["weight_map"].values()))[1]
    if damage == "missing-shard":
        (ck / second).unlink()
    elif damage == "truncated-shard":
        _truncate(ck / second, -64)
    elif damage == "path-in-index":
        d["weight_map"][next(iter(d["weight_map"]))] = "../elsewhere/model.safetensors"
    elif damage == "tensor-not-in-shard":
        key = next(k for k, v in d["weight_map"].items() if v != second)
        d["weight_map"][key] = second
    elif damage == "index-not-json":
        index.write_text("{ not json")
    else:
        d["weight_map"] = list(d["weight_map"])
    if damage in ("path-in-index", "tensor-not-in-shard", "weight-map-list"):
        index.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(ck)
    rc, err = cli(capsys, "export", ck, "--out", tmp_path / "b", "--quiet")
    assert rc == 2 and str(ck) in err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob("b.*"))


def _unshare_works() -> bool:
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return r.returncode == 0


def test_disk_full_while_writing_the_bundle(ckpt, tiny_bundle, tmp_path):
    """A real ENOSPC: the export writes into a 512 KiB tmpfs (mounted in a private user + mount namespace),
    too small for the program; one line names the file, and the filesystem is left as it was."""
    if shutil.which("unshare") is None or not _unshare_works():
        pytest.skip("no unprivileged user + mount namespaces here")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = textwrap.dedent(f"""\
        mount -t tmpfs -o size=512k tmpfs {mnt} || exit 99
        {GEMMA_EDGE} export {ckpt} --out {mnt}/bundle {' '.join(reuse_args(tiny_bundle))} 2>{tmp_path}/err
        echo "rc=$?"
        ls -A {mnt}
    """)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert "rc=" in r.stdout, r.stdout + r.stderr
    rc_line, *left = r.stdout.split("rc=", 1)[1].splitlines()
    err = [line for line in (tmp_path / "err").read_text().splitlines() if "error:" in line or "Traceback" in line]
    assert rc_line == "2" and len(err) == 1, (rc_line, err)
    assert "no space left on the device" in err[0] and f"{mnt}/bundle.partial-" in err[0], err[0]
    assert left == []  # no bundle, no partial


# ---------------------------------------------------------------- item 13: partials of killed exports
# A process that holds an exclusive flock on a folder (argv[1]) until killed, as a running export holds its partial's.
LOCK_AND_WAIT = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
                 "print('locked', flush=True); time.sleep(600)")


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_killed_export_partial_is_removed_by_the_next(ckpt, tiny_bundle, tmp_path, caplog):
    """A real export is SIGKILLed while its partial folder exists; the next export to the same --out removes
    that partial and says so. Partials of live exports (pid running, or folder locked) are left alone."""
    out = tmp_path / "bundle"
    child = subprocess.Popen([GEMMA_EDGE, "export", str(ckpt), "--out", str(out), "--quiet",
                              "--quant", "none", "--max-context", "64", "--prefill-chunk", "8"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # until its partial exists (bounded: the export takes far longer than this)
            partials = list(tmp_path.glob("bundle.partial-*"))
            if partials or child.poll() is not None:
                break
            time.sleep(0.1)
        assert partials, "the export never made its partial folder"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert partials[0].name.startswith(f"bundle.partial-{child.pid}-") and partials[0].exists()

    mine = tmp_path / f"bundle.partial-{os.getpid()}-live"  # this test's own process: alive
    mine.mkdir()
    locked = tmp_path / f"bundle.partial-{_dead_pid()}-locked"  # pid gone, but a process holds its lock
    locked.mkdir()
    holder = subprocess.Popen([PYTHON, "-c", LOCK_AND_WAIT, str(locked)], stdout=subprocess.PIPE, text=True)
    legacy = tmp_path / "bundle.partial-abc123"  # an older gemma-edge's name: no pid, no lock
    legacy.mkdir()
    (legacy / "model.ple").write_bytes(b"x" * 1000)
    users = tmp_path / "bundle.partial-notes"  # a user's folder that only looks like a partial: kept
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    try:
        assert holder.stdout.readline().strip() == "locked"
        caplog.set_level("WARNING", logger="gemma_edge.export")
        settings = ExportSettings(**{**TINY_EXPORT, "ple_dtype": "int4"})
        export_bundle(ckpt, out, settings, progress=False, reuse_program=tiny_bundle)
    finally:
        holder.kill()
        holder.wait()
    assert verify_bundle(out) == []
    assert sorted(p.name for p in tmp_path.glob("bundle.*")) == sorted([mine.name, locked.name, users.name])
    assert (users / "notes.txt").read_text() == "mine"
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert f"removed {partials[0]}" in said and f"export pid {child.pid}, no longer running" in said
    assert f"removed {legacy}" in said


def test_old_bundle_moved_aside_by_a_dead_export_is_put_back(ckpt, bundle, tiny_bundle, tmp_path, caplog):
    """Killed between moving the old bundle aside and renaming the new one in (filesystems without an atomic
    exchange): the next export to that --out puts the old bundle back before it decides what --out holds."""
    aside = tmp_path / f"out.replaced-{_dead_pid()}-x"
    bundle.rename(aside)
    before = tree(aside)
    export_bundle(ckpt, tmp_path / "other", ExportSettings(**TINY_EXPORT), progress=False,
                  reuse_program=tiny_bundle)
    assert aside.exists()  # another --out's cleanup leaves this one's folders alone
    caplog.set_level("WARNING", logger="gemma_edge.export")
    with pytest.raises(FileExistsError, match="already exists"):  # put back, so no overwrite without asking
        export_bundle(ckpt, bundle, ExportSettings(**TINY_EXPORT), progress=False, reuse_program=tiny_bundle)
    assert tree(bundle) == before and not aside.exists()
    assert f"restored {bundle} from {aside.name}" in caplog.text


# ---------------------------------------------------------------- item 14: defaults that follow the model
def test_defaults_follow_the_model_and_none_means_unquantized(ckpt, tmp_path, capsys):
    """A model whose sliding window (8) is under 128 and whose max_position_embeddings (256) is under 1024
    exports with no flags given: prefill_chunk and max_context default from it. --quant none is an
    unquantized program, main embedding included."""
    from gemma_edge.cli import build_parser
    from gemma_edge.export.cli import export_settings
    from gemma_edge.export.exporter import StageLog, prepare_model

    edit_config(ckpt, lambda d: d.update(max_position_embeddings=256))
    cfg = open_checkpoint(ckpt).config
    settings = export_settings(build_parser().parse_args(["export", str(ckpt), "--out", "x", "--quant", "none"]))
    settings.validate(cfg)
    assert (settings.max_context, settings.prefill_chunk, settings.embedding_quant) == (256, 8, "none")
    default = export_settings(build_parser().parse_args(["export", str(ckpt), "--out", "x"]))
    assert (default.quant, default.embedding_quant) == ("8da4w", "int4")
    _, model = prepare_model(ckpt, settings, StageLog(), progress=False)
    weights = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point() or t.dtype != torch.long]
    assert all(type(t) is torch.Tensor and t.dtype == torch.float32 for _, t in weights), \
        [(n, type(t).__name__, t.dtype) for n, t in weights if type(t) is not torch.Tensor or t.dtype != torch.float32]
    rc, err = cli(capsys, "export", ckpt, "--out", tmp_path / "b", "--quant", "none", "--prefill-chunk", "64")
    assert rc == 2 and "prefill_chunk: expected 1..8" in err  # a value the user did give is still checked


def test_load_checkpoint_is_public(tiny_checkpoint):
    from gemma_edge.export import ExportSettings as Public
    from gemma_edge.export import load_checkpoint

    cfg, model = load_checkpoint(tiny_checkpoint)
    assert Public is ExportSettings and model(torch.tensor([[1, 2, 3]])).shape == (1, 3, cfg.vocab_size)


# ---------------------------------------------------------------- the random checkpoint writer's --out
def test_random_checkpoint_bad_out(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = cli(capsys, "random-checkpoint", tmp_path / "file")
    assert rc == 2 and "already exists" in err
    rc, err = cli(capsys, "random-checkpoint", tmp_path / "file" / "ck")
    assert rc == 2 and f"{tmp_path / 'file'} is not a folder" in err
    assert siblings(tmp_path / "file") == ["file"]
