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
