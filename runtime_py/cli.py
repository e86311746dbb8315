"""`gemma-edge` subcommands of the runtime package: run, budget, demo."""
from __future__ import annotations

import argparse
import json
import math
import sys

from gemma_edge.contract.image import DEFAULT_BUDGET


def _at_least(lo: int):
    """An argparse type: an integer ≥ lo (argparse names the flag and the value when it is refused)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {lo}, found {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {lo}, found {value}")
        return value

    parse.__name__ = f"integer ≥ {lo}"
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return value


def _run(args) -> int:
    from .run_report import result_json, run_bundle

    r = run_bundle(args.bundle, prompt=args.prompt, ids=args.ids, prompt_file=args.prompt_file, chat=args.chat,
                   max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   device=args.device, backend=args.backend, validate=args.validate, checkpoint=args.checkpoint,
                   fit_check=not args.no_fit_check, images=args.image, image_budget=args.image_budget,
                   audio=args.audio)
    if args.json:
        print(result_json(r))
    return 0 if r.phone is None or r.phone.ok else 1


def _budget(args) -> int:
    from gemma_edge.contract.bundle_format import method_names_for

    from .budget import estimate, estimate_bundle, format_budget, load_devices, plot_budget

    devices = load_devices()
    if args.device:
        if args.device not in devices:
            raise ValueError(f"--device: expected one of {sorted(devices)}, found {args.device!r}")
        devices = {args.device: devices[args.device]}
    if args.bundle:
        b = estimate_bundle(args.bundle, context=args.context)
        model = None
    else:
        model = args.model
        b = estimate(model, quant=args.quant, group_size=args.group_size, embedding_quant=args.embedding_quant,
                     ple_dtype=args.ple_dtype, context=1024 if args.context is None else args.context,
                     prefill_chunk=args.prefill_chunk,
                     packed_copies=len(set(method_names_for(args.methods).values())))
    if args.json:
        print(json.dumps({**b.to_dict(), "verdicts": {k: b.verdict(d) for k, d in devices.items()}}, indent=2))
    else:
        print(format_budget(b, devices))
    if args.plot:
        if model is None:
            raise ValueError("--plot: needs --model (it sweeps the context for a named model)")
        path = plot_budget(args.plot, model, devices, quant=args.quant, group_size=args.group_size,
                           embedding_quant=args.embedding_quant, ple_dtype=args.ple_dtype,
                           prefill_chunk=args.prefill_chunk)
        print(f"plot written to {path}", file=sys.stderr)
    return 0 if all(b.verdict(d)["fits"] for d in devices.values()) or not args.device else 1


def _run_native(args) -> int:
    from pathlib import Path

    from gemma_edge.contract import bundle_format as bf

    from . import native
    from .run_report import parse_ids
    from .tokenizer import TextCodec

    bundle = Path(args.bundle)
    manifest = bf.read_manifest(bundle)
    codec = None
    if "tokenizer" in manifest["files"]:
        codec = TextCodec(bundle / manifest["files"]["tokenizer"]["path"], manifest["bos_token_id"],
                          manifest.get("chat_template"))
    if args.ids:
        ids = parse_ids(args.ids)
    elif args.prompt is None:
        raise ValueError("give --prompt TEXT or --ids 2,45,...")
    elif codec is None:
        raise ValueError(f"{bundle}: no tokenizer.json; pass --ids instead of --prompt")
    else:
        ids = (codec.encode_chat(args.prompt, images=len(args.image), audio=len(args.audio)) if args.chat
               else codec.encode(args.prompt))
    try:
        res = native.run(bundle, ids, args.max_new_tokens, threads=args.threads, repeats=args.repeats,
                         warmup=args.warmup, stop_on_eos=True, weight_cache=not args.no_weight_cache,
                         images=args.image, image_budget=args.image_budget, audio=args.audio)
    except native.NativeRunError as e:  # the host failed or was killed: its one line, not a traceback
        print(f"gemma-edge run-native: error: {e}", file=sys.stderr)
        return 1
    for line in res["warnings"]:
        print(line, file=sys.stderr)
    r = res["runs"][-1]
    eos = set(manifest["eos_token_ids"])
    if codec is not None:
        print(codec.decode([t for t in r["tokens"] if t not in eos]))
    else:
        print(" ".join(map(str, r["tokens"])))
    mem, gb = res["memory"], lambda n: f"{n / 1e9:.3f} GB"  # noqa: E731
    if "vision" in r:
        print(f"[native] {len(res['images'])} image(s) at budget {res['image_budget']} "
              f"({', '.join(str(i['soft_tokens']) for i in res['images'])} soft tokens): encoded in "
              f"{r['vision']['encode_s']:.3f} s, the vision program's load included; released after: "
              f"{r['vision']['released']}", file=sys.stderr)
    if "audio" in r:
        clips = [n for item in res["audio"] for n in item["clip_soft_tokens"]]
        print(f"[native] {len(res['audio'])} audio file(s), {len(clips)} clip(s) ({', '.join(map(str, clips))} soft "
              f"tokens): encoded in {r['audio']['encode_s']:.3f} s, the audio program's load included; released "
              f"after: {r['audio']['released']}", file=sys.stderr)
    print(f"[native] prompt {len(res['prompt_tokens'])} tokens: TTFT {r['ttft_s']:.3f} s, "
          f"prefill {r['prefill_tok_s']:.1f} tok/s, "
          f"decode {r['decode_tok_s']:.1f} tok/s ({len(r['tokens'])} tokens, {r['stop_reason']}); load "
          f"{res['load_s']:.2f} s; peak RSS {gb(mem['end']['VmHWM'])} (host {gb(mem['host']['VmRSS'])}, "
          f"anon {gb(mem['end']['RssAnon'])}, file {gb(mem['end']['RssFile'])})", file=sys.stderr)
    if "weight_cache" in res:
        wc = res["weight_cache"]
        print(f"[native] packed weights {'mapped from' if wc['existed_before_load'] else 'packed into'} "
              f"{wc['path']} ({gb(wc['bytes'])})", file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


def _build_native(args) -> int:
    from . import native

    print(native.build(args.build_dir))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.work_dir, prompt=args.prompt, max_new_tokens=args.max_new_tokens, device=args.device)


def register(sub: argparse._SubParsersAction) -> None:
    from .budget import BIG_MODELS

    p = sub.add_parser("run", help="generate with an export bundle and report speed, memory and phone figures")
    p.add_argument("bundle", help="export bundle folder")
    p.add_argument("--prompt", help="prompt text (needs the bundle's tokenizer.json)")
    p.add_argument("--prompt-file", help="read the prompt text from this UTF-8 file")
    p.add_argument("--ids", help="raw prompt token ids, comma-separated (bos included if wanted)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in Gemma 4's chat template")
    p.add_argument("--max-new-tokens", type=_at_least(1), default=32)
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image (PNG, JPEG, ...) for the prompt, repeatable: each goes at one image placeholder "
                        "<|image|> of the prompt in order, or, with none, before the prompt's text (with --chat: the "
                        "user turn's image item); needs a bundle exported with its vision tower")
    p.add_argument("--image-budget", type=int, default=DEFAULT_BUDGET,
                   help=f"soft tokens per image: one of the bundle's vision budgets (default {DEFAULT_BUDGET})")
    p.add_argument("--audio", action="append", default=[], metavar="CLIP.wav",
                   help="a WAV file (PCM 8/16/24/32-bit or float, any rate and channels: downmixed to mono and "
                        "resampled to 16 kHz) for the prompt, repeatable: each goes at one audio placeholder "
                        "<|audio|> of the prompt in order, or, with none, before the prompt's text, after any images "
                        "(with --chat: the user turn's audio item). Audio longer than 30 s is cut into consecutive "
                        "30 s clips, each its own <|audio> ... <audio|> span, as transformers' processor would need "
                        "to see all of it (it truncates at 30 s). Needs a bundle exported with its audio tower")
    p.add_argument("--temperature", type=_finite, default=0.0)
    p.add_argument("--top-k", type=_at_least(0), default=0)
    p.add_argument("--top-p", type=_finite, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="pixel-8", help="phone profile of runtime_py/devices.json; a bundle "
                                                       "predicted not to fit it is refused before loading")
    p.add_argument("--no-fit-check", action="store_true", help="run even when the bundle is predicted not to fit "
                                                                "--device")
    p.add_argument("--backend", default="pte", choices=("pte", "onnx"))
    p.add_argument("--validate", action="store_true", help="compare logits with the eager model on a checkpoint")
    p.add_argument("--checkpoint", help="checkpoint for --validate (default: the manifest's source checkpoint)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.set_defaults(func=_run)

    p = sub.add_parser("run-native", help="generate with an export bundle through the native host (C++, no Python "
                                          "in the process): speed and the process's real memory")
    p.add_argument("bundle", help="export bundle folder (.pte + .ple)")
    p.add_argument("--prompt", help="prompt text (needs the bundle's tokenizer.json)")
    p.add_argument("--ids", help="raw prompt token ids, comma-separated (bos included if wanted)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in Gemma 4's chat template")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="a PNG or JPEG for the prompt, repeatable, as `run --image` (the host decodes and "
                        "preprocesses it itself)")
    p.add_argument("--image-budget", type=int, default=None,
                   help=f"soft tokens per image: one of the bundle's vision budgets (default {DEFAULT_BUDGET})")
    p.add_argument("--audio", action="append", default=[], metavar="CLIP.wav",
                   help="a WAV file for the prompt, repeatable, as `run --audio` (the host reads, downmixes, "
                        "resamples and cuts it into 30 s clips itself)")
    p.add_argument("--threads", type=int, default=0, help="ExecuTorch thread pool size (0: its default)")
    p.add_argument("--repeats", type=int, default=1, help="timed generations (the last one is printed)")
    p.add_argument("--warmup", type=int, default=0, help="untimed generations first")
    p.add_argument("--no-weight-cache", action="store_true",
                   help="pack the weights in RAM at every load instead of keeping them in a cache file beside the "
                        "program (the default: the first load writes it, later loads map it)")
    p.add_argument("--json", action="store_true", help="also print the runner's JSON")
    p.set_defaults(func=_run_native)

    p = sub.add_parser("build-native", help="build the native host gemma-edge-run (CMake + the ExecuTorch wheel)")
    p.add_argument("--build-dir", help="build folder (default: runtime_py/native/build/<hash of the sources>)")
    p.set_defaults(func=_build_native)

    p = sub.add_parser("budget", help="RAM and flash a model needs, and whether it fits a phone")
    p.add_argument("--model", default="e2b", help=f"a preset (e2b, e4b, e2b-10l, tiny, ...) or {', '.join(BIG_MODELS)}")
    p.add_argument("--bundle", help="an export bundle folder (its manifest's config and quantization)")
    p.add_argument("--quant", default="8da4w", choices=("none", "8da4w", "8da8w"))
    p.add_argument("--group-size", type=_at_least(0), default=0,
                   help="8da4w: 0 = per output channel (the export default)")
    p.add_argument("--embedding-quant", default="int4", choices=("none", "int8", "int4"))
    p.add_argument("--ple-dtype", default="int4", choices=("fp32", "bf16", "int8", "int4"))
    p.add_argument("--context", type=_at_least(1), default=None,
                   help="tokens of context (default 1024, or the bundle's)")
    p.add_argument("--prefill-chunk", type=_at_least(1), default=128)
    p.add_argument("--device", help="one phone profile (default: all)")
    p.add_argument("--methods", choices=("one", "two"), default="one",
                   help="program methods of a named model's export (two: prefill and decode each pack the linears); "
                        "a bundle's manifest says its own")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write RAM vs context per device to this PNG")
    p.set_defaults(func=_budget)

    p = sub.add_parser("demo", help="random tiny checkpoint → export → run → report, in a few minutes")
    p.add_argument("--work-dir", default="work_dirs/demo", help="reused if it already holds the files")
    p.add_argument("--prompt", default="The quick brown fox")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--device", default="pixel-8")
    p.set_defaults(func=_demo)
