"""The `gemma-edge` entry point: subcommands registered, bad input reported without a traceback."""
from __future__ import annotations

import numpy as np

from gemma_edge.cli import build_parser, main


def test_every_subcommand_is_registered():
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"random-checkpoint", "parity", "export", "inspect", "run", "budget", "demo"} <= names


def test_inspect_ple_file(tmp_path, capsys):
    from gemma_edge.ple_store import write

    rows = np.random.default_rng(0).standard_normal((300, 3 * 8)).astype(np.float32)
    write(tmp_path / "t.ple", [rows], vocab_size=300, num_layers=3, ple_dim=8, dtype="int4", embed_scale=8**0.5,
          progress=False)
    assert main(["inspect", str(tmp_path / "t.ple")]) == 0
    out = capsys.readouterr().out
    assert "int4" in out and "300" in out


def test_bad_input_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "bad.ple").write_bytes(b"NOTAPLE!" + bytes(5000))
    assert main(["inspect", str(tmp_path / "bad.ple")]) == 2
    err = capsys.readouterr().err
    assert "magic" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "b")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_run_refuses_a_bundle_that_cannot_fit_the_phone_before_loading_it(tiny_bundle, tmp_path, monkeypatch, capsys):
    """`run --device` checks the budget first: a phone with too little RAM for the bundle is refused with the
    figures, and nothing is loaded; --no-fit-check runs it anyway."""
    from conftest import json_at_end

    from gemma_edge.runtime import budget, run_report

    need = budget.estimate_bundle(tiny_bundle).ram_bytes
    small = {"name": "Tiny Phone", "ram_bytes": need, "app_ram_fraction": 0.5, "flash_seq_read_Bps": 2e9,
             "flash_rand4k_qd1_iops": 30000, "flash_rand4k_qd32_iops": 90000, "mem_bandwidth_Bps": 5e10,
             "cpu_cores": 8}
    devices = {**budget.load_devices(), "tiny-phone": small}
    monkeypatch.setattr(run_report, "load_devices", lambda: devices)
    loaded = []
    real_session = run_report.Session
    monkeypatch.setattr(run_report, "Session", lambda *a, **k: loaded.append(a) or real_session(*a, **k))

    assert main(["run", str(tiny_bundle), "--ids", "2,5,9", "--max-new-tokens", "2", "--device", "tiny-phone"]) == 2
    err = capsys.readouterr().err
    assert "predicted RAM" in err and "Tiny Phone" in err and "Traceback" not in err
    assert loaded == []
    main(["run", str(tiny_bundle), "--ids", "2,5,9", "--max-new-tokens", "2", "--device", "tiny-phone",
          "--no-fit-check", "--json"])
    assert len(loaded) == 1
    assert len(json_at_end(capsys.readouterr().out)["tokens"]) == 2
