"""One measured run of a bundle: stream the text, then timings, PLE fetch stats, peak RSS vs predicted, phone figures.

Used by `gemma-edge run` and `gemma-edge demo`. The PLE file is evicted from the page cache after the
session opens, so the residency check after the run sees only what the run itself fetched.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gemma_edge.contract.image import DEFAULT_BUDGET
from gemma_edge.procfs import proc_status, reset_peak_rss

from .budget import estimate_bundle, load_devices
from .phone import check_run, kv_bytes_per_token, simulate
from .session import Session


@dataclass
class RunResult:
    tokens: list[int]
    text: str
    stats: object
    rss_before: dict
    rss_after: dict
    predicted_rss: int
    phone: object | None
    validation: dict | None = None
    lines: list[str] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    peak_reset: bool = True       # False: VmHWM could not be reset, so it may hold earlier work's peak

    @property
    def rss_gap(self) -> float:
        return (self.rss_after["VmHWM"] - self.predicted_rss) / self.predicted_rss


_ID = re.compile(r"[0-9]+")
ID_LIMIT = 2**63   # ids travel as int64: anything at or past it is refused here, not overflowed later


def parse_ids(ids: str) -> list[int]:
    """`--ids 2,45,...` as a list of token ids: decimal integers separated by commas (spaces around a comma
    are allowed, inside a number they are not: "2 60 70" is refused, never read as 26070)."""
    items = ids.split(",")
    out = []
    for i, item in enumerate(items):
        item = item.strip()
        if not _ID.fullmatch(item):
            raise ValueError(f"--ids: item {i}: expected a non-negative decimal integer (ids separated by commas), "
                             f"found {item!r} in {ids[:60]!r}")
        value = int(item)
        if value >= ID_LIMIT:
            raise ValueError(f"--ids: item {i}: expected a token id < 2^63, found {item[:30]}")
        out.append(value)
    return out


def prompt_ids(session: Session, prompt: str | None, ids: str | None, chat: bool,
               prompt_file: str | Path | None = None, images: int = 0, audio: int = 0) -> list[int]:
    given = [name for name, v in (("--prompt", prompt), ("--ids", ids), ("--prompt-file", prompt_file))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"give one of --prompt TEXT, --prompt-file PATH or --ids 2,45,...; found "
                         f"{' and '.join(given) or 'none'}")
    if ids is not None:
        return parse_ids(ids)
    if prompt_file is not None:
        from .tokenizer import read_prompt_file

        prompt = read_prompt_file(prompt_file)
    return session.encode(prompt, chat=chat, images=images if chat else 0, audio=audio if chat else 0)


def check_fit(bundle: str | Path, device: dict) -> None:
    """Refuse, before anything is loaded, a bundle whose predicted RAM exceeds what one app may hold on
    `device` (the budget `gemma-edge budget` prints): on the phone the low-memory killer would end it."""
    need = estimate_bundle(bundle).ram_bytes
    usable = int(device["ram_bytes"] * device["app_ram_fraction"])
    if need > usable:
        raise ValueError(f"{bundle}: predicted RAM {need / 2**30:.2f} GiB, expected ≤ {usable / 2**30:.2f} GiB usable "
                         f"by one app on {device['name']} (--device); --no-fit-check runs it anyway")


def run_bundle(bundle: str | Path, *, prompt: str | None = None, ids: str | None = None, chat: bool = False,
               prompt_file: str | Path | None = None,
               max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               seed: int = 0, device: str = "pixel-8", backend: str = "pte", validate: bool = False,
               checkpoint: str | Path | None = None, out=None, fit_check: bool = True, images=(),
               image_budget: int = DEFAULT_BUDGET, audio=()) -> RunResult:
    """Generate once with `bundle` and report speed, memory, PLE I/O and the phone simulation. `images`: paths
    of images for the prompt (its image placeholders, or before its text), each of `image_budget` soft tokens;
    `audio`: WAV paths (its audio placeholders, or after the images), each cut into 30 s clips."""
    out = sys.stdout if out is None else out   # looked up now: a default bound at import goes stale
    if validate and (images or audio):
        raise ValueError("--validate: compares text prompts only (leave out --image and --audio)")
    devices = load_devices()
    if device not in devices:
        raise ValueError(f"--device: expected one of {sorted(devices)}, found {device!r}")
    if fit_check:
        check_fit(bundle, devices[device])
    from .backends import preload

    preload(backend)
    # The peak is the run's own: VmHWM restarts from here, so work done earlier in this process (the demo's
    # export, a test suite) is not counted as the run's. Where the kernel refuses the reset, the figure says so.
    peak_reset = reset_peak_rss()
    rss_before = proc_status()
    session = Session(bundle, backend=backend)
    try:
        resident_before = []
        if session.ple is not None:
            session.ple.evict()
            resident_before = session.ple.resident_pages().tolist()
        ids_list = prompt_ids(session, prompt, ids, chat, prompt_file, images=len(images), audio=len(audio))
        pieces = []
        for step in session.generate(ids_list, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                     seed=seed, images=list(images), image_budget=image_budget,
                                     audio=list(audio)):
            pieces.append(step.text)
            print(step.text, end="", file=out, flush=True)
        print(file=out)
        st = session.last_run
        rss_after = proc_status()
        budget = estimate_bundle(bundle, runtime_bytes=rss_before["VmRSS"], image_budget=image_budget if images
                                 else None, audio_tokens=st.audio_tokens if audio else None)
        if not images:
            budget.vision = None   # a text prompt: the vision program was never loaded
        if not audio:
            budget.audio = None    # nor the audio program
        dev = devices[device]
        fetched = st.prompt_fetched + st.tokens[:-1]
        pf = st.prompt_fetch
        row_pages = session.ple.header.layout.pages_per_row if session.ple is not None else 0
        phone = simulate(dev, prompt_tokens=st.prompt_tokens, prompt_pages=pf.pages_touched if pf else 0,
                         row_pages=row_pages,
                         generated=st.generated, weight_bytes=budget.decode_read_bytes,
                         kv_bytes_per_token=kv_bytes_per_token(session.config),
                         ram_needed=estimate_bundle(bundle).ram_bytes,
                         context_at_end=st.prompt_tokens + st.generated, images=st.images,
                         encode_flops=(budget.vision.flops if budget.vision is not None else 0.0)
                         + (budget.audio.flops if budget.audio is not None else 0.0))
        check_run(phone, st, session.ple, fetched, None, resident_before)
        result = RunResult(st.tokens, "".join(pieces), st, rss_before, rss_after, budget.ram_bytes, phone,
                           prompt_ids=list(ids_list), peak_reset=peak_reset)
    finally:
        session.close()
    if validate:
        result.validation = validate_against_eager(bundle, ids_list + st.tokens, checkpoint, backend)
    result.lines = report_lines(result, session)
    print("\n".join(result.lines), file=out)
    return result


def validate_against_eager(bundle: str | Path, token_ids: list[int], checkpoint, backend: str) -> dict:
    """Logits of the bundle (decode method token by token) vs the eager model on the checkpoint."""
    from gemma_edge.contract import bundle_format as bf

    m = bf.read_manifest(bundle)
    ckpt = checkpoint or (m.get("export") or {}).get("source_checkpoint") or m.get("source_checkpoint")
    if not isinstance(ckpt, (str, Path)) or not ckpt or not Path(ckpt).is_dir():
        raise ValueError(f"--validate: no checkpoint: pass --checkpoint DIR (manifest records {ckpt!r})")
    with Session(bundle, backend=backend) as s:
        got = s.logits(token_ids)
    out = {"checkpoint": str(ckpt), "tokens": len(token_ids)}
    # end to end: the checkpoint's own full-precision PLE table; program only: the bundle's .ple rows
    for key, ple_file in (("", None), ("program_", bf.bundle_file(bundle, m, "ple"))):
        eager = Session.from_checkpoint(ckpt, max_context=m["max_context"], prefill_chunk=m["prefill_chunk"],
                                        ple_file=ple_file)
        ref = eager.logits(token_ids)
        eager.close()
        out.update({key + "max_abs": float(np.abs(got - ref).max()), key + "logit_scale": float(np.abs(ref).max()),
                    key + "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())})
    return out


def report_lines(r: RunResult, session: Session) -> list[str]:
    st = r.stats
    from gemma_edge.ple_store import FetchStats

    pf = st.prompt_fetch or FetchStats()
    tf = st.token_fetch
    mib = lambda n: f"{n / 2**20:8.1f} MiB"   # noqa: E731
    media = [f"{st.images} image(s)"] * bool(st.images) + [f"{st.audio_clips} audio clip(s)"] * bool(st.audio_clips)
    images = (f" ({' and '.join(media)} encoded in {st.encode_s * 1e3:.1f} ms, counted in TTFT)" if media else "")
    lines = [f"prompt {st.prompt_tokens} tokens{images}, generated {st.generated} (stop: {st.stop_reason})",
             f"  prefill {st.prefill_s * 1e3:8.1f} ms  ({st.prefill_tok_s:8.1f} tok/s, {st.prefill_chunks} chunk(s) "
             f"of ≤ {session.prefill_chunk})",
             f"  TTFT    {st.ttft_s * 1e3:8.1f} ms   decode {st.decode_tok_s:8.1f} tok/s",
             f"  PLE prompt fetch: 1 batched call, {pf.tokens} ids → {pf.unique_rows} unique rows, "
             f"{pf.bytes_requested} B requested, {pf.pages_touched} pages, {pf.read_calls} read calls, "
             f"{pf.wall_s * 1e3:.2f} ms",
             f"  PLE per-token fetches: {st.token_fetches} × fetch_one, {tf.bytes_requested} B, "
             f"{tf.pages_touched} pages",
             f"  peak RSS {mib(r.rss_after['VmHWM'])} measured vs {mib(r.predicted_rss)} predicted "
             f"({r.rss_gap:+.1%}); now anon {mib(r.rss_after.get('RssAnon', 0))}, file-backed "
             f"{mib(r.rss_after.get('RssFile', 0))}; process before loading {mib(r.rss_before['VmRSS'])}"
             + ("" if r.peak_reset else " (peak not reset by the kernel: it may be earlier work's)")]
    if r.phone is not None:
        lines += r.phone.lines()
    if r.validation:
        v = r.validation
        lines.append(f"validate vs eager ({v['checkpoint']}, {v['tokens']} positions): max |Δlogit| "
                     f"{v['max_abs']:.2e} (max |logit| {v['logit_scale']:.2f}), "
                     f"top-1 agreement {v['top1_agreement']:.1%}"
                     f"; program only (eager fed the bundle's .ple rows): max |Δlogit| {v['program_max_abs']:.2e}, "
                     f"top-1 {v['program_top1_agreement']:.1%}")
    return lines


def result_json(r: RunResult) -> str:
    st = r.stats
    return json.dumps({"tokens": r.tokens, "text": r.text, "prefill_tok_s": st.prefill_tok_s,
                       "decode_tok_s": st.decode_tok_s, "ttft_s": st.ttft_s, "prompt_tokens": st.prompt_tokens,
                       "images": st.images, "audio_clips": st.audio_clips, "encode_s": st.encode_s,
                       "peak_rss": r.rss_after["VmHWM"],
                       "predicted_rss": r.predicted_rss, "validation": r.validation}, indent=2)
