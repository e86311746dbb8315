"""`gemma-edge` subcommands of the export package: random-checkpoint, parity, inspect."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _random_checkpoint(args) -> int:
    from gemma_edge.contract.presets import AUDIO_PRESETS, VISION_PRESETS, preset

    from .random_checkpoint import write_random_checkpoint

    vision = VISION_PRESETS.get(args.preset) if args.multimodal else None
    audio = AUDIO_PRESETS.get(args.preset) if args.multimodal else None
    out = write_random_checkpoint(args.out, preset(args.preset), dtype=_DTYPES[args.dtype], seed=args.seed,
                                  multimodal=args.multimodal, vision_config=vision, audio_config=audio,
                                  shard_bytes=int(args.shard_gb * (1 << 30)))
    print(f"wrote {args.preset} checkpoint ({args.dtype}, seed {args.seed}) to {out}")
    return 0


def _parity(args) -> int:
    from .parity import parity_report

    report = parity_report(args.preset, seq_len=args.tokens, seed=args.seed, multimodal=args.multimodal)
    print("\n".join(report.lines()))
    ok = max(report.full_max_abs, report.cached_max_abs) <= 1e-4
    print("  PASS (≤ 1e-4)" if ok else "  FAIL (> 1e-4)")
    return 0 if ok else 1


def _budgets(text: str) -> list[int]:
    """`--image-budgets 70,280` -> [70, 280]; each must be a budget the image processor supports."""
    from gemma_edge.contract.image import SUPPORTED_BUDGETS

    try:
        budgets = [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected budgets such as 70,280, found {text!r}") from None
    bad = [b for b in budgets if b not in SUPPORTED_BUDGETS]
    if bad or len(set(budgets)) != len(budgets):
        raise argparse.ArgumentTypeError(f"expected distinct budgets from {list(SUPPORTED_BUDGETS)}, found {text!r}")
    return budgets


def export_settings(args):
    """The ExportSettings the export options build; options not given stay None, filled from the model."""
    from .exporter import ExportSettings

    formats = ("pte", "onnx") if args.format == "both" else (args.format,)
    return ExportSettings(quant=args.quant, group_size=args.group_size, embedding_quant=args.embedding_quant,
                          ple_dtype=args.ple_dtype, max_context=args.max_context,
                          prefill_chunk=args.prefill_chunk, formats=formats, methods=args.methods,
                          vision=not args.no_vision, image_budgets=tuple(args.image_budgets),
                          vision_quant=args.vision_quant, audio=not args.no_audio, audio_quant=args.audio_quant)


def _export(args) -> int:
    import logging

    from .exporter import export_bundle

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    settings = export_settings(args)
    out = export_bundle(args.checkpoint, args.out, settings, progress=not args.quiet, overwrite=args.overwrite,
                        reuse_program=args.reuse_program)
    from .bundle import describe_bundle

    print(describe_bundle(out)[0])
    return 0


def _inspect(args) -> int:
    path = Path(args.path)
    if path.is_dir():
        from .bundle import describe_bundle

        text, ok = describe_bundle(path)
        print(text)
        return 0 if ok else 1
    from gemma_edge.ple_store.inspect import describe

    print(describe(path, verify=not args.no_verify))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from gemma_edge.contract.presets import PRESETS

    p = sub.add_parser("random-checkpoint", help="write a Hugging Face checkpoint with random weights")
    p.add_argument("out", help="folder to create")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--multimodal", action="store_true", help="keys under model.language_model. (as Google ships), "
                   "with the preset's vision and audio towers")
    p.add_argument("--shard-gb", type=float, default=2.0, help="shard size in GiB")
    p.set_defaults(func=_random_checkpoint)

    p = sub.add_parser("parity", help="compare our decoder with transformers on a tiny random model")
    p.add_argument("--preset", default="tiny", choices=sorted(k for k in PRESETS if k.startswith("tiny")))
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--multimodal", action="store_true")
    p.set_defaults(func=_parity)

    from gemma_edge.contract.bundle_format import AUDIO_QUANT, VISION_QUANT
    from gemma_edge.contract.image import DEFAULT_BUDGET, SUPPORTED_BUDGETS

    from .exporter import (
        DEFAULT_AUDIO_QUANT,
        DEFAULT_MAX_CONTEXT,
        DEFAULT_PREFILL_CHUNK,
        DEFAULT_VISION_QUANT,
        FORMATS,
        PLE_DTYPES,
    )
    from .rewrites import EMBEDDING_QUANT, LINEAR_QUANT

    p = sub.add_parser("export", help="checkpoint folder -> bundle (model.pte + model.ple + manifest.json)")
    p.add_argument("checkpoint", help="Hugging Face checkpoint folder (config.json + safetensors)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--quant", default="8da4w", choices=LINEAR_QUANT,
                   help="the program's linears and output head: int8 dynamic activations with int4 (8da4w) or "
                        "int8 (8da8w) weights; none: an unquantized program (the main embedding follows unless "
                        "--embedding-quant says otherwise; the .ple file's rows are --ple-dtype's)")
    p.add_argument("--reuse-program", metavar="BUNDLE",
                   help="copy model.pte from an earlier bundle of this checkpoint with the same program settings "
                        "(e.g. to make an int8-PLE bundle beside an int4 one without lowering again)")
    p.add_argument("--group-size", type=int, default=0,
                   help="8da4w weights per scale: 0 = one scale per output channel (default; what LiteRT-LM "
                        "uses, fastest), else a group size such as 32 or 128 (more accurate, slower)")
    p.add_argument("--embedding-quant", default=None, choices=EMBEDDING_QUANT,
                   help="main embedding table, one scale per row (default: none with --quant none, else int4)")
    p.add_argument("--ple-dtype", default="int4", choices=PLE_DTYPES, help="stored dtype of the PLE flash file")
    p.add_argument("--max-context", type=int, default=None,
                   help=f"positions the program holds (default: {DEFAULT_MAX_CONTEXT}, or the model's "
                        "max_position_embeddings if smaller)")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help=f"most tokens per prefill call, ≤ the sliding window (default: {DEFAULT_PREFILL_CHUNK}, or "
                        "the model's sliding_window or --max-context if smaller)")
    p.add_argument("--format", default="pte", choices=FORMATS)
    p.add_argument("--methods", default="one", choices=("one", "two"),
                   help="one dynamic method for prefill and decode (weights packed once), or two methods")
    p.add_argument("--no-vision", action="store_true",
                   help="leave the vision tower out (by default a checkpoint with one gets vision.pte, loaded only "
                        "for prompts with an image)")
    p.add_argument("--image-budgets", type=_budgets, default=[DEFAULT_BUDGET], metavar="N[,N...]",
                   help=f"soft tokens per image the vision program takes, one method each, from "
                        f"{','.join(map(str, SUPPORTED_BUDGETS))} (default {DEFAULT_BUDGET}; more tokens: more "
                        "detail, slower encode)")
    p.add_argument("--vision-quant", default=DEFAULT_VISION_QUANT, choices=VISION_QUANT,
                   help="the vision tower's linears: int8 dynamic activations with int8 (8da8w, default) or int4 "
                        "weights, or none")
    p.add_argument("--no-audio", action="store_true",
                   help="leave the audio tower out (by default a checkpoint with one gets audio.pte, the log-mel "
                        "front end and the tower in one method, loaded only for prompts with audio)")
    p.add_argument("--audio-quant", default=DEFAULT_AUDIO_QUANT, choices=AUDIO_QUANT,
                   help="the audio tower's linears: int8 dynamic activations with int8 (8da8w, default) or int4 "
                        "weights, or none")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing bundle folder (only a gemma-edge bundle: never another folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_export)

    p = sub.add_parser("inspect", help="describe a .ple file or an export bundle folder")
    p.add_argument("path")
    p.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    p.set_defaults(func=_inspect)
