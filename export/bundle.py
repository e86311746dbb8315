"""`gemma-edge inspect BUNDLE_DIR`: what an export bundle holds — methods and their signatures, files, sizes,
quantization — and whether its files match the manifest."""
from __future__ import annotations

from pathlib import Path

from gemma_edge.contract import bundle_format as bf

# ExecuTorch ScalarType codes as TensorInfo.dtype() returns them
_SCALAR_TYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 11: "bool", 15: "bfloat16"}


def _dtype(t) -> str:
    d = t.dtype()
    return _SCALAR_TYPES.get(int(d), str(d)) if isinstance(d, int) or hasattr(d, "__int__") else str(d)


def _program_methods(path: Path) -> list[str]:
    """Method names and tensor metadata read from the .pte itself (ExecuTorch runtime), one line each.
    Called only for a program that matches its manifest's size and SHA-256."""
    try:
        bf.check_program_header(path)
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401
        from executorch.runtime import Runtime, Verification

        program = Runtime.get().load_program(path, verification=Verification.InternalConsistency)
    except Exception as e:   # a damaged program: report it, do not crash the inspection
        return [f"    (cannot load {path.name}: {e})"]
    lines = []
    for name in sorted(program.method_names):
        lines.append(f"    {name}:")
        try:
            meta = program.load_method(name).metadata
            for i in range(meta.num_inputs()):
                t = meta.input_tensor_meta(i)
                lines.append(f"      in[{i}]  {_dtype(t):<8} {list(t.sizes())}  (upper bounds)")
            for i in range(meta.num_outputs()):
                t = meta.output_tensor_meta(i)
                lines.append(f"      out[{i}] {_dtype(t):<8} {list(t.sizes())}")
        except Exception as e:
            lines.append(f"      (no method metadata: {e})")
    return lines


def describe_bundle(path: str | Path, full_hash: bool = True) -> tuple[str, bool]:
    """A human-readable description of the bundle and whether every file matches its manifest."""
    path = Path(path)
    m = bf.read_manifest(path)
    cfg, q = m["config"], m["quantization"]
    lines = [f"bundle {path}  ({m['format']} v{m['format_version']})",
             f"  model: {cfg.get('num_hidden_layers')} layers, hidden {cfg.get('hidden_size')}, "
             f"vocab {m['vocab_size']}, "
             f"PLE {m['num_layers']} × {m['ple_dim']}; model_hash {m['model_hash'][:16]}…",
             f"  context {m['max_context']}, prefill chunk {m['prefill_chunk']}; bos {m['bos_token_id']}, "
             f"eos {m['eos_token_ids']}",
             f"  quantization: linear {q['linear']} ({bf.granularity_name(q.get('group_size'))}), "
             f"embedding {q['embedding']}, "
             f"PLE {q['ple_dtype']}",
             f"  chat template: "
             f"{'yes' if m.get('chat_template') else 'none (raw prompts or the built-in Gemma 4 format)'}",
             "  files:"]
    for role, entry in m["files"].items():
        lines.append(f"    {role:<10} {entry['path']:<16} {entry['bytes'] / 2**20:10.2f} MiB  "
                     f"sha256 {entry['sha256'][:16]}…"
                     + (f"  identity {entry['identity'][:16]}…" if "identity" in entry else ""))
    lines.append("  methods (manifest: role -> program method):")
    for role, meth in m["methods"].items():
        ins = ", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in meth.get("inputs", []))
        outs = ", ".join(f"{o['name']} {o['dtype']} {o['shape']}" for o in meth.get("outputs", []))
        lines.append(f"    {role} -> {meth.get('method', role)}({ins}) -> {outs}; max_tokens {meth.get('max_tokens')}")
    # Verify before loading: ExecuTorch must never parse a program that is not the one the manifest names
    # (a damaged one can abort the process inside the loader).
    problems = bf.verify_bundle(path, full_hash=full_hash, manifest=m)
    if "program" in m["files"]:
        program = bf.bundle_file(path, m, "program")
        bad = [p for p in problems if p.startswith(f"{program}:")]
        if not bad and not full_hash:   # sizes only: still hash the program before ExecuTorch reads it
            bad = [p for p in bf.verify_bundle(path, full_hash=True, hash_ple=False, manifest=m)
                   if p.startswith(f"{program}:")]
            problems += bad
        lines.append("  methods (program):")
        lines += _program_methods(program) if not bad else ["    (not loaded: it does not match the manifest)"]
    for role in ("vision", "audio"):
        if role not in m:
            continue
        e = m[role]
        if role == "vision":
            lines.append(f"  vision program: budgets {e['budgets']} (soft tokens per image), linears "
                         f"{e['quantization']}, image ids boi {e['image_tokens']['boi']} / image "
                         f"{e['image_tokens']['image']} / eoi {e['image_tokens']['eoi']}; loaded only for a prompt "
                         "with an image")
        else:
            lines.append(f"  audio program: up to {e['max_tokens']} soft tokens a clip (30 s), linears "
                         f"{e['quantization']}, audio ids boa {e['audio_tokens']['boa']} / audio "
                         f"{e['audio_tokens']['audio']} / eoa {e['audio_tokens']['eoa']}; loaded only for a prompt "
                         "with audio")
        tower = bf.bundle_file(path, m, role)
        bad = [p for p in problems if p.startswith(f"{tower}:")]
        if not bad and not full_hash and bf.sha256_file(tower) != m["files"][role]["sha256"]:  # before ET reads it
            bad = [f"{tower}: sha256: expected {m['files'][role]['sha256']} (manifest files.{role}.sha256)"]
            problems += [p for p in bad if p not in problems]
        lines += _program_methods(tower) if not bad else ["    (not loaded: it does not match the manifest)"]
    lines.append("  check: " + ("all files match the manifest"
                                + (" (sha256 verified)" if full_hash else " (sizes only)")
                                if not problems else f"{len(problems)} problem(s)"))
    lines += [f"    ✗ {p}" for p in problems]
    return "\n".join(lines), not problems
