"""The benchmark harness's own parts: the child runner every peer shares (result line, peak RSS, the RSS
watchdog, an Android app's memory-lock limits) and the ETDump profiler on the tiny bundle."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peers import childproc  # noqa: E402

MARK = "@@TEST_RESULT@@ "


def test_child_result_line_and_peak_rss(tmp_path):
    code = ("import json; x = bytearray(80 << 20); x[::4096] = b'1' * len(x[::4096]); print('stage: loaded'); "
            f"print({MARK!r} + json.dumps({{'n': len(x)}}))")
    # childproc.run is called from a small process of its own, as a benchmark's parent is: Linux keeps a child's
    # ru_maxrss across execve, so the resident set of the process it was forked from counts too, and this suite's
    # own process holds models by the time it gets here.
    parent = ("import json, sys; sys.path.insert(0, sys.argv[1]); from peers import childproc; "
              "res = childproc.run([sys.executable, '-c', sys.argv[2]], __import__('pathlib').Path(sys.argv[3]), "
              "sys.argv[4], stage_prefix='stage:'); print(json.dumps(res))")
    out = subprocess.run([sys.executable, "-c", parent, str(Path(__file__).resolve().parents[1] / "bench"), code,
                          str(tmp_path / "child.log"), MARK], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0 and res["killed_at_rss_bytes"] is None
    assert res["result"] == {"n": 80 << 20}
    assert res["stage"] == "stage: loaded"
    assert 80 << 20 < res["peak_rss_bytes"] < 1 << 30


def test_child_past_the_rss_limit_is_killed(tmp_path):
    code = ("import time\nblocks = []\nfor _ in range(40):\n"
            "    b = bytearray(25 << 20); b[::4096] = b'1' * len(b[::4096]); "
            f"blocks.append(b); time.sleep(0.05)\nprint({MARK!r} + '{{}}')")
    res = childproc.run([sys.executable, "-c", code], tmp_path / "child.log", MARK, rss_limit_bytes=200 << 20)
    assert res["killed_at_rss_bytes"] is not None and res["killed_at_rss_bytes"] > 200 << 20
    assert res["rc"] == -9 and res["result"] is None


def test_android_app_limits_make_mlock_fail(tmp_path):
    code = ("import ctypes, json, resource; libc = ctypes.CDLL(None, use_errno=True); "
            "buf = ctypes.create_string_buffer(1 << 20); "
            "ok = libc.mlock(ctypes.addressof(buf), 1 << 20) == 0; "
            f"print({MARK!r} + json.dumps({{'memlock': resource.getrlimit(resource.RLIMIT_MEMLOCK)[0], "
            f"'mlock_ok': ok}}))")
    res = childproc.run([sys.executable, "-c", code], tmp_path / "child.log", MARK, preexec_fn=childproc.as_android_app)
    assert res["rc"] == 0, (tmp_path / "child.log").read_text()
    assert res["result"] == {"memlock": 64 << 10, "mlock_ok": False}


def test_profile_program_on_the_tiny_bundle(tiny_bundle):
    import profile_program

    res = profile_program.profile(tiny_bundle, threads=1, prompt=5, decode_steps=3)
    assert res["prefill_tok_s"] > 0 and res["decode_tok_s"] > 0
    for phase in ("prefill", "decode"):
        ops = {r["op"]: r for r in res["ops"][phase]}
        assert ops["Method::execute"]["calls_per_step"] == 1
        assert ops["DELEGATE_CALL"]["calls_per_step"] >= 1  # the step runs XNNPACK delegates
        assert any(name.startswith("DELEGATE:") for name in ops)  # ...and their operators are attributed
        assert all(0 <= r["share"] <= 1.0 + 1e-9 for r in res["ops"][phase]), phase
    json.dumps(res)  # what --json writes


def test_ab_programs_on_the_tiny_bundle(tiny_bundle):
    import ab_programs
    import program_steps

    res = ab_programs.run([tiny_bundle, tiny_bundle], rounds=3, prompt=5, decode_steps=4, threads=1)
    a, b = res["runs"]["a"], res["runs"]["b"]
    assert len(a["prefill_tok_s"]) == len(b["decode_tok_s"]) == 2  # the warm-up round is not timed
    assert a["prefill_median"] > 0 and b["decode_median"] > 0 and res["a_over_b"]["decode"] > 0
    assert len(a["tokens"]) == 5 and res["greedy_tokens_agree"] == 1.0  # one program: one continuation
    json.dumps(res)
    with pytest.raises(SystemExit, match="prefill takes"):
        program_steps.load(tiny_bundle, prompt=10_000, threads=1)


@pytest.mark.parametrize("host,peak,expect", [(370, 1800, 1430), (None, 1800, None), (370, 0, None)])
def test_above_host(host, peak, expect):
    import head_to_head

    assert head_to_head.above_host({"host_rss_before_load_bytes": host, "peak_rss_bytes": peak}) == expect


@pytest.mark.slow  # lowers the example's tiny vision tower (~1 min) and runs 6 children
def test_vision_bench_on_the_tiny_tower(tiny_vision_checkpoint, tiny_vision_bundle, tmp_path):
    """bench/vision.py end to end on the tiny tower: ours from the bundle's vision.pte (fp32), the ExecuTorch
    example exported at 630 patches (its fixed size: budget 70), transformers eager as the reference."""
    import subprocess

    out = tmp_path / "vision.json"
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "bench" / "vision.py"), "--tower", "tiny",
           "--quick", "--checkpoint", str(tiny_vision_checkpoint), "--bundle", str(tiny_vision_bundle),
           "--systems", "ours,et,hf", "--et-max-patches", "630", "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())
    runs = {(r["system"], r["budget"]): r for r in res["runs"]}
    assert set(runs) == {(s, b) for s in ("ours", "et", "hf") for b in (70, 280)}
    assert res["machine"]["class"] and len(res["machine"]["load_average_at_start"]) == 3
    assert res["gflop_per_image"]["280"] > res["gflop_per_image"]["70"] > 0
    assert all(v["gflop_s"] > 0 for k, v in res["gemm_peak"].items() if isinstance(v, dict))
    assert {"xnnpack_attention_bmm_fp32_n630", "xnnpack_attention_bmm_fp32_n2520"} <= set(res["gemm_peak"])
    assert 0 < res["gflop_per_image_in_attention_bmm"]["280"] < res["gflop_per_image"]["280"]
    for b in (70, 280):
        ours, hf = runs[("ours", b)], runs[("hf", b)]
        assert ours["error"] is None and hf["error"] is None
        assert ours["output_rows"] == hf["output_rows"] == ours["soft_tokens"]
        # the bundle's program is unquantized: within the README's .pte-vs-eager bound of transformers
        assert ours["error_vs_hf"]["max_abs_rel"] < 1e-3, ours["error_vs_hf"]
        assert ours["kernel_bound_s"] > 0 and ours["share_of_kernel_bound"] > 0
        assert ours["achieved_gflop_s"] > 0 and ours["memory"]["peak_rss_bytes"] > ours["memory"][
            "host_rss_before_load_bytes"] > 0
    # The example's method takes the patch count its export fixed and no other, and the run says so
    et70, et280 = runs[("et", 70)], runs[("et", 280)]
    assert et70["error"] is None and et70["input_sizes_max"] == [[1, 630, 768], [1, 630, 2]]
    # 8da8w on a 32-wide tower (~8e-2 relative); soft tokens of another image or misaligned rows are ~1.4
    assert et70["error_vs_hf"]["rel_fro"] < 0.3, et70["error_vs_hf"]
    assert et280["encode_median_s"] is None and et280["error"]["type"] == "RuntimeError"
    assert any("Attempted to resize a bounded tensor" in ln for ln in et280["executorch_log"]), et280
    assert res["summary"]["70"]["vs_et"]["speedup"] > 0 and res["summary"]["280"]["vs_et"]["ran"] is False
