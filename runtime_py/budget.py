"""The memory budget: RAM-resident and flash bytes of a model at a quantization and context, and whether it fits
a phone.

Program bytes = the weights as the exported .pte stores them (8da4w: int4 values + one bf16 scale per
group; 8da8w: int8 + one fp32 scale per output channel; none: fp32), the tied matrix counted TWICE — the
exporter unties it (`rewrites.untie_head`): the head is a linear (quantized like the linears), the
embedding a separate gather table (embedding_quant). How close this comes to a real .pte: bench/RESULTS.md,
"Figures behind design choices".

RAM = how ExecuTorch 1.5.1 + XNNPACK hold that program, as measured here (/proc smaps, E2B-10l 8da4w):
the embedding stays in the mmap'd file (file-backed, paged in as read); every linear is an XNNPACK
delegate whose weights are repacked into anonymous memory by EACH method that loads it (`packed_copies`:
1 for our default one-method program; a two-method export's prefill and decode each pack a copy) — and
while a delegate is packed its serialized blob is held too (`load_transient`: the largest linear, the
head). Plus KV caches (fp32; sliding layers capped at sliding_window slots, KV-shared layers none),
activations of one prefill chunk, and a runtime overhead. Flash = the .ple file. The PLE table is not in RAM.

Big-model shapes (no PLE; this decoder does not run them, the budget counts them):
* 26B-A4B (MoE): hidden 2816, 30 layers (5 sliding : 1 full), 16 heads, 8 KV heads (2 on full layers,
  K = V there), head_dim 256 / 512, dense MLP 2112 in every layer PLUS 128 experts of width 704
  (top-8) with a router [128, H], window 1024, vocab 262144, tied.
* 31B (dense): hidden 5376, 60 layers (5:1), 32 heads, 16 KV heads (4 on full layers, K = V), head_dim
  256 / 512, MLP 21504, window 1024, vocab 262144, tied.
Source: the google/gemma-4-26B-A4B(-it) and gemma-4-31B(-it) config.json values as restated verbatim in
public test fixtures of several independent Gemma 4 ports (the hub itself is not reachable from here),
and transformers 5.23 `Gemma4TextDecoderLayer` / `Gemma4TextExperts` for how the MoE block is built.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gemma_edge.contract.config import TextConfig, ring_slots
from gemma_edge.contract.presets import BIG_MODELS, model_config  # noqa: F401 (budget.model_config: the API)

DEVICES_FILE = Path(__file__).with_name("devices.json")
RUNTIME_OVERHEAD = 60 << 20     # native ExecuTorch runtime + XNNPACK threadpool + allocator slack on a phone

def load_devices() -> dict[str, dict]:
    return json.loads(DEVICES_FILE.read_text())["devices"]


# ---------------------------------------------------------------------------------------------------
# Bytes of stored tensors
# ---------------------------------------------------------------------------------------------------

def linear_bytes(n_out: int, n_in: int, quant: str, group_size: int) -> int:
    """Bytes of one [n_out, n_in] linear as the exporter stores it (rewrites.quantize_linears: an 8da4w
    linear whose input width its int4 groups cannot tile stays fp32)."""
    from gemma_edge.export.rewrites import XNNPACK_INT4_BLOCK_MULTIPLE

    n = n_out * n_in
    if quant == "none" or (quant == "8da4w" and n_in % (group_size or XNNPACK_INT4_BLOCK_MULTIPLE)):
        return 4 * n
    if quant == "8da4w" and group_size == 0:                # bundle_format.PER_CHANNEL
        return n // 2 + 2 * n_out                        # packed int4 + bf16 per-channel scale
    if quant == "8da4w":
        return n // 2 + (n // group_size) * 2           # packed int4 + bf16 group scales
    if quant == "8da8w":
        return n + 4 * n_out                             # int8 + fp32 per-channel scale
    raise ValueError(f"quant: expected none, 8da4w or 8da8w, found {quant!r}")


def embedding_bytes(rows: int, dim: int, quant: str) -> int:
    n = rows * dim
    if quant == "none":
        return 4 * n
    if quant == "int8":
        return n + 4 * rows                              # int8 + fp32 scale per row
    if quant == "int4":
        return n // 2 + 4 * rows                         # packed int4 + fp32 scale per row
    raise ValueError(f"embedding quant: expected none, int8 or int4, found {quant!r}")


def ple_file_bytes(cfg: TextConfig, ple_dtype: str) -> int:
    """Size of the .ple file the writer would produce (layout from ple_store.format)."""
    if not cfg.has_ple:
        return 0
    from gemma_edge.ple_store.format import (
        DATA_OFFSET,
        StoredDtype,
        block_groups_for,
        choose_layout,
        file_bytes_for,
        row_payload_bytes,
    )

    dt = StoredDtype.parse(ple_dtype)
    layout = choose_layout(row_payload_bytes(dt, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input))
    groups = layout.num_groups(cfg.vocab_size_per_layer_input)
    blocks = -(-groups // block_groups_for(layout.group_bytes))
    return file_bytes_for(DATA_OFFSET + groups * layout.group_bytes, blocks)


# ---------------------------------------------------------------------------------------------------
# The budget
# ---------------------------------------------------------------------------------------------------

@dataclass
class Budget:
    model: str
    quant: str
    group_size: int
    embedding_quant: str
    ple_dtype: str
    context: int
    prefill_chunk: int
    weights: dict[str, int] = field(default_factory=dict)   # part -> bytes as the program stores it
    packed_copies: int = 1                                    # methods that each repack the delegated linears
    kv_cache: int = 0
    activations: int = 0
    runtime: int = 0
    flash_ple: int = 0
    vision: VisionBudget | None = None                        # the vision program at its largest budget, if any
    audio: AudioBudget | None = None                          # the audio program at a clip's length, if any

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights in the program file (what one decode step reads once)."""
        return sum(self.weights.values())

    @property
    def decode_read_bytes(self) -> int:
        """Weight bytes one decode step reads: every linear and norm, but only one row of the embedding."""
        return self.weight_bytes - self.weights.get("embedding", 0)

    @property
    def linear_bytes(self) -> int:
        return sum(v for k, v in self.weights.items() if k not in ("embedding", "norms"))

    @property
    def resident_weight_bytes(self) -> int:
        """Weights in RAM after the program's methods are loaded: the embedding and norms once, linears per method."""
        return self.weight_bytes + (self.packed_copies - 1) * self.linear_bytes

    @property
    def load_transient(self) -> int:
        """Extra bytes while a delegate is being packed: its serialized blob (the largest linear, the head)."""
        return self.weights.get("head", 0)

    @property
    def text_ram_bytes(self) -> int:
        """Peak of a text prompt: weights as held, KV caches, activations, runtime, and the load transient."""
        return self.resident_weight_bytes + self.kv_cache + self.activations + self.runtime + self.load_transient

    @property
    def image_ram_bytes(self) -> int:
        """Peak of an image prompt: the decoder loaded (weights, KV caches, runtime) while the vision program
        loads and encodes; it is released before the prefill, whose peak is the text one."""
        if self.vision is None:
            return 0
        return self.resident_weight_bytes + self.kv_cache + self.runtime + self.vision.peak_bytes

    @property
    def audio_ram_bytes(self) -> int:
        """Peak of an audio prompt: the decoder loaded while the audio program loads and encodes (released before
        the prefill, as the vision program is)."""
        if self.audio is None:
            return 0
        return self.resident_weight_bytes + self.kv_cache + self.runtime + self.audio.peak_bytes

    @property
    def ram_bytes(self) -> int:
        """Peak resident bytes of any prompt the bundle takes (an image or audio prompt's where it has a tower)."""
        return max(self.text_ram_bytes, self.image_ram_bytes, self.audio_ram_bytes)

    def verdict(self, device: dict) -> dict:
        usable = int(device["ram_bytes"] * device["app_ram_fraction"])
        return {"device": device["name"], "ram_bytes": device["ram_bytes"], "usable_bytes": usable,
                "needed_bytes": self.ram_bytes, "headroom_bytes": usable - self.ram_bytes,
                "fits": self.ram_bytes <= usable}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(weight_bytes=self.weight_bytes, resident_weight_bytes=self.resident_weight_bytes,
                 load_transient=self.load_transient, text_ram_bytes=self.text_ram_bytes,
                 image_ram_bytes=self.image_ram_bytes, audio_ram_bytes=self.audio_ram_bytes, ram_bytes=self.ram_bytes)
        if self.vision is not None:
            d["vision"].update(peak_bytes=self.vision.peak_bytes)
        if self.audio is not None:
            d["audio"].update(peak_bytes=self.audio.peak_bytes)
        return d


@dataclass
class TowerBudget:
    """A tower's program while it encodes (loaded for its input, released after): the fields VisionBudget and
    AudioBudget share. peak_bytes is what is resident meanwhile; flops what one input costs."""

    quant: str
    weights: dict[str, int] = field(default_factory=dict)
    packed: int = 0
    transient: int = 0
    activations: int = 0
    preprocess: int = 0
    flops: float = 0.0

    @property
    def peak_bytes(self) -> int:
        """Resident while the tower loads and encodes (a vision table's rows aside)."""
        return self.packed + self.transient + self.activations + self.preprocess

    def encode_seconds(self, device: dict) -> float | None:
        """FLOPs at the device's int8 GEMM rate (devices.json `int8_gemm_ops`; None where a profile has none)."""
        rate = device.get("int8_gemm_ops")
        return self.flops / rate if rate else None


@dataclass
class VisionBudget(TowerBudget):
    """The vision program at one image budget, while it encodes (it is loaded for an image and released after).

    weights: the linears as vision.pte stores them (8da8w: int8 + an fp32 scale per output channel; none:
    fp32) and the fp32 position table (a gather: only the rows an image's positions touch are paged in);
    packed: XNNPACK's repacked linears (anonymous memory; the serialized blobs are released after loading);
    transient: the largest delegate's blob while it is packed (one encoder layer's linears);
    activations: what the method allocates while it encodes — for a bundle, measured when its program was
    written (manifest vision.activation_bytes: XNNPACK's workspace is in no metadata); for a named model, the
    live tensors of one encoder layer at N = 9 · budget patches — the residual stream and its normed copy,
    q/k/v/attention output, the MLP's gate and up halves, one block of attention scores and their softmax
    (heads × block_q × N, fp32) — plus the inputs and the output (a lower bound);
    preprocess: the image resized and patchified — pixel_values [N, 768] fp32, the fp32 resize before it
    and one copy in between (the decoded source image comes on top: 3 bytes a pixel)."""

    budget: int = field(kw_only=True)   # soft tokens per image


def vision_budget(vision_config: dict, budget: int, *, quant: str = "8da8w", text_hidden: int = 1536,
                  block_q: int | None = 512) -> VisionBudget:
    """The vision program's bytes and FLOPs for images of `budget` soft tokens (transformers' vision_config)."""
    from gemma_edge.contract.image import PATCH_DIM, check_budget, max_patches

    check_budget(budget)
    v = vision_config
    d, inter, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    heads, kv_heads, hd = v["num_attention_heads"], v["num_key_value_heads"], v["head_dim"]
    n = max_patches(budget)
    per_layer = [(heads * hd, d), (kv_heads * hd, d), (kv_heads * hd, d), (d, heads * hd),
                 (inter, d), (inter, d), (d, inter)]

    def stored(n_out: int, n_in: int) -> int:
        return linear_bytes(n_out, n_in, quant, 0)   # one scale per output channel, as vision_export quantizes
    layer_bytes = sum(stored(o, i) for o, i in per_layer)
    weights = {"encoder_linears": layers * layer_bytes, "patch_embedder": stored(d, PATCH_DIM),
               "embed_vision": stored(text_hidden, d),
               "position_table": 2 * v["position_embedding_size"] * d * 4}
    linears = weights["encoder_linears"] + weights["patch_embedder"] + weights["embed_vision"]
    q_rows = n if block_q is None else min(block_q, n)
    acts = 4 * (n * (2 * d + (heads + 2 * kv_heads) * hd + d + 2 * inter) + 2 * heads * q_rows * n)
    acts += n * PATCH_DIM * 4 + n * 2 * 8 + budget * (text_hidden * 4 + 1)
    flops = 2.0 * n * sum(o * i for o, i in per_layer) * layers + layers * 4.0 * n * n * heads * hd
    flops += 2.0 * n * PATCH_DIM * d + 2.0 * budget * d * text_hidden
    return VisionBudget(budget=budget, quant=quant, weights=weights, packed=linears, transient=layer_bytes,
                        activations=acts, preprocess=3 * n * PATCH_DIM * 4, flops=flops)


@dataclass
class AudioBudget(TowerBudget):
    """The audio program while it encodes one clip of `tokens` soft tokens (loaded for audio, released after).

    weights: the linears as audio.pte stores them (8da8w: int8 + an fp32 scale per output channel) and its fp32
    constants (the front end's DFT and mel matrices, the convolutions, the folded relative keys); packed: XNNPACK's
    repacked linears; transient: the largest delegate's blob while it is packed (one Conformer layer's linears);
    activations: for a bundle, measured at 30 s when its program was written (manifest audio.activation_bytes —
    the method's memory is planned at its longest input, so every clip needs it); for a named model, one layer's
    live tensors at 750 tokens (a lower bound); preprocess: the clip's rows and mask (fp32)."""

    tokens: int = field(kw_only=True)   # soft tokens of the clip


def audio_budget(audio_config: dict, tokens: int = 750, *, quant: str = "8da8w",
                 text_hidden: int = 1536) -> AudioBudget:
    """The audio program's bytes and FLOPs for a clip of `tokens` soft tokens (transformers' audio_config)."""
    from gemma_edge.contract import audio as contract

    a = audio_config
    d, layers, out = a["hidden_size"], a["num_hidden_layers"], a["output_proj_dims"]
    c0, c1 = a.get("subsampling_conv_channels", [128, 32])
    k = a.get("conv_kernel_size", 5)
    if not 1 <= tokens <= 750:
        raise ValueError(f"audio tokens: expected 1..750 (a clip of up to 30 s), found {tokens}")
    per_layer = [(4 * d, d), (d, 4 * d)] * 2 + [(d, d)] * 4 + [(2 * d, d), (d, d)]

    def stored(n_out: int, n_in: int) -> int:
        return linear_bytes(n_out, n_in, quant, 0)
    layer_bytes = sum(stored(o, i) for o, i in per_layer)
    bins = contract.FFT // 2 + 1
    # the program's rows for a clip of `tokens` soft tokens (contract.audio.program_frames: 48m − 3)
    frames = contract.BLOCK_ROWS * -(-(contract.FRAMES_PER_TOKEN * tokens + 3) // contract.BLOCK_ROWS) - 3
    weights = {"conformer_linears": layers * layer_bytes, "input_proj": stored(d, (c0 // 4) * c1),
               "output_proj": stored(out, d), "embed_audio": stored(text_hidden, out),
               "fp32_constants": 4 * (2 * contract.HOP * 2 * bins + bins * contract.N_MELS + 9 * c0 + 9 * c0 * c1
                                      + layers * (d * k + 13 * d + 8 * d))}
    linears = sum(v for key, v in weights.items() if key != "fp32_constants")
    window = a.get("attention_context_left", 13) - 1
    acts = 4 * tokens * (8 * d + 4 * d + 2 * window * d) + 4 * frames * (2 * bins + c0 * 64)
    flops = 2.0 * tokens * sum(o * i for o, i in per_layer) * layers + layers * 4.0 * tokens * window * d
    flops += 2.0 * frames * contract.HOP * 2 * 2 * bins + 2.0 * tokens * (d * out + out * text_hidden)
    flops += 2.0 * (2 * tokens) * 64 * c0 * 9 + 2.0 * tokens * 32 * c0 * c1 * 9
    return AudioBudget(tokens=tokens, quant=quant, weights=weights, packed=linears, transient=layer_bytes,
                       activations=acts, preprocess=frames * (contract.HOP + 1) * 4, flops=flops)


def kv_cache_bytes(cfg: TextConfig, context: int, chunk: int = 128, dtype_bytes: int = 4) -> int:
    """K and V of every layer that owns them, as the program holds them: sliding layers a ring of
    `ring_slots` (window + one prefill chunk), full ones `context` slots."""
    ring = ring_slots(cfg.sliding_window, context, min(chunk, context))
    total = 0
    for spec in cfg.layers:
        if spec.owns_kv:
            slots = ring if spec.is_sliding else context
            total += 2 * spec.num_key_value_heads * slots * spec.head_dim * dtype_bytes
    return total


def activation_bytes(cfg: TextConfig, context: int, chunk: int) -> int:
    """One prefill chunk's live tensors (fp32), as memory planning lays them out: the widest MLP
    intermediates, q/k/v, the attention scores over the whole cache, the PLE inputs, and the logits. The
    layers past the last K/V owner run one position (`TextModel.narrow_layer`), so their (in E2B
    double-wide) MLPs do not set the chunk's widest intermediate."""
    h, t = cfg.hidden_size, chunk
    heads = cfg.num_attention_heads
    hd = max(s.head_dim for s in cfg.layers)
    inter = max(s.intermediate_size for s in cfg.layers[:cfg.last_kv_owner + 1])
    per_token = 3 * inter + 4 * h + 3 * heads * hd + 2 * cfg.ple_width
    scores = 2 * heads * t * (context + min(cfg.sliding_window, context) + t)
    return 4 * (t * per_token + scores + 2 * cfg.vocab_size)


def weight_parts(cfg: TextConfig, moe: dict | None, quant: str, group_size: int, emb_quant: str) -> dict[str, int]:
    lin = lambda o, i: linear_bytes(o, i, quant, group_size)   # noqa: E731
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    parts = {"embedding": embedding_bytes(cfg.vocab_size, h, emb_quant),
             "head": lin(cfg.vocab_size, h),   # tied or not, the program holds the head as its own linear
             "attention": 0, "mlp": 0, "moe": 0, "ple_mix": 0, "norms": 0}
    for s in cfg.layers:
        parts["attention"] += lin(heads * s.head_dim, h) + lin(h, heads * s.head_dim)
        if s.owns_kv:
            parts["attention"] += lin(s.num_key_value_heads * s.head_dim, h) * (1 if s.k_eq_v else 2)
            parts["norms"] += 4 * s.head_dim                            # k_norm (v_norm has no weight)
        parts["norms"] += 4 * (s.head_dim + 4 * h + 1)                  # q_norm, 4 sandwich norms, layer_scalar
        parts["mlp"] += 3 * lin(s.intermediate_size, h)
        if moe:
            e, w = moe["num_experts"], moe["moe_intermediate_size"]
            parts["moe"] += e * 3 * lin(w, h) + 4 * e * h + 4 * (e + h) + 4 * 3 * h
        if cfg.has_ple:
            p = cfg.hidden_size_per_layer_input
            parts["ple_mix"] += lin(p, h) + lin(h, p)
            parts["norms"] += 4 * h
    if cfg.has_ple:
        parts["ple_mix"] += lin(cfg.ple_width, h)
        parts["norms"] += 4 * cfg.hidden_size_per_layer_input
    parts["norms"] += 4 * h
    return {k: v for k, v in parts.items() if v}


def estimate(model: str | TextConfig, *, quant: str = "8da4w", group_size: int = 0, embedding_quant: str = "int4",
             ple_dtype: str = "int4", context: int = 1024, prefill_chunk: int = 128, moe: dict | None = None,
             runtime_bytes: int = RUNTIME_OVERHEAD, packed_copies: int = 1) -> Budget:
    if isinstance(model, str):
        name = model
        cfg, moe = model_config(model)
    else:
        name, cfg = "config", model
    for name, value, lo in (("context", context, 1), ("prefill_chunk", prefill_chunk, 1),
                            ("group_size", group_size, 0), ("packed_copies", packed_copies, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name}: expected an integer ≥ {lo}, found {value!r}")
    chunk = min(prefill_chunk, context)
    return Budget(model=name, quant=quant, group_size=group_size, embedding_quant=embedding_quant,
                  ple_dtype=ple_dtype, context=context, prefill_chunk=chunk,
                  weights=weight_parts(cfg, moe, quant, group_size, embedding_quant), packed_copies=packed_copies,
                  kv_cache=kv_cache_bytes(cfg, context, chunk), activations=activation_bytes(cfg, context, chunk),
                  runtime=runtime_bytes, flash_ple=ple_file_bytes(cfg, ple_dtype))


def estimate_bundle(bundle_dir: str | Path, context: int | None = None, runtime_bytes: int = RUNTIME_OVERHEAD,
                    packed_copies: int | None = None, image_budget: int | None = None,
                    audio_tokens: int | None = None) -> Budget:
    """The budget of an exported bundle, from its manifest (config, quantization, max_context, methods); with a
    vision program, an image of `image_budget` soft tokens (default: its largest budget) counted too; with an
    audio program, a clip of `audio_tokens` soft tokens (default 750: 30 s)."""
    from gemma_edge.contract import bundle_format as bf

    m = bf.read_manifest(bundle_dir)
    if packed_copies is None:
        packed_copies = len(set(bf.role_methods(m).values()))
    q = m["quantization"]
    b = estimate(TextConfig.from_dict(m["config"]), quant=q["linear"], group_size=q["group_size"],
                 embedding_quant=q["embedding"], ple_dtype=q["ple_dtype"],
                 context=m["max_context"] if context is None else context,
                 prefill_chunk=m["prefill_chunk"], runtime_bytes=runtime_bytes, packed_copies=packed_copies)
    b.model = str(bundle_dir)
    v = m.get("vision")
    if v is not None and "config" in v:
        budget = max(v["budgets"]) if image_budget is None else image_budget
        b.vision = vision_budget(v["config"], budget, quant=v["quantization"], text_hidden=v["hidden_size"],
                                 block_q=v["block_q"])
        measured = (v.get("activation_bytes") or {}).get(str(budget))
        if measured is not None:   # the program's own, measured when it was written (XNNPACK's workspace)
            b.vision.activations = measured
    a = m.get("audio")
    if a is not None and "config" in a:
        b.audio = audio_budget(a["config"], min(audio_tokens or a["max_tokens"], a["max_tokens"]),
                               quant=a["quantization"], text_hidden=a["hidden_size"])
        if a.get("activation_bytes") is not None:   # measured at the method's longest input, which it plans for
            b.audio.activations = a["activation_bytes"]
    return b


def format_budget(b: Budget, devices: dict[str, dict]) -> str:
    gib = lambda n: f"{n / 2**30:7.3f} GiB"   # noqa: E731
    from gemma_edge.contract.bundle_format import granularity_name

    lines = [f"memory budget: {b.model}  linear {b.quant} ({granularity_name(b.group_size)}), "
             f"embedding {b.embedding_quant}, "
             f"PLE {b.ple_dtype}, context {b.context}, prefill chunk {b.prefill_chunk}",
             f"  program weights (.pte):  {gib(b.weight_bytes)}"]
    for part, n in b.weights.items():
        lines.append(f"    {part:<20} {gib(n)}")
    lines += ["  RAM (peak resident):",
              f"    weights              {gib(b.resident_weight_bytes)}  (linears packed once per method × "
              f"{b.packed_copies}, embedding mmap'd once)",
              f"    load transient       {gib(b.load_transient)}  (a delegate's blob while it is packed: the head)",
              f"    kv_cache             {gib(b.kv_cache)}  (fp32; sliding layers a ring of window + one chunk, "
              "shared layers free)",
              f"    activations          {gib(b.activations)}  (one prefill chunk)",
              f"    runtime              {gib(b.runtime)}",
              f"    total                {gib(b.text_ram_bytes)}  (a text prompt)",
              f"  flash: .ple file       {gib(b.flash_ple)}  (not resident: one batched read per prompt)"]
    if b.vision is not None:
        v = b.vision
        lines += [f"  image prompt ({v.budget} soft tokens; the vision program is loaded for it, released after):",
                  f"    vision weights       {gib(sum(v.weights.values()))}  (vision.pte, linears {v.quant}; the "
                  f"position table {gib(v.weights['position_table']).strip()} stays in the file)",
                  f"    packed linears       {gib(v.packed)}",
                  f"    load transient       {gib(v.transient)}  (one encoder layer's blob while it is packed)",
                  f"    activations          {gib(v.activations)}  ({9 * v.budget} patches)",
                  f"    preprocessing        {gib(v.preprocess)}  (the resized image and its patches)",
                  f"    total                {gib(b.image_ram_bytes)}  (decoder loaded + vision at its peak; "
                  f"{v.flops / 1e9:.0f} GFLOP per image)"]
    if b.audio is not None:
        a = b.audio
        lines += [f"  audio prompt (a clip of {a.tokens} soft tokens, {a.tokens / 25:.1f} s; the audio program is "
                  "loaded for it, released after):",
                  f"    audio weights        {gib(sum(a.weights.values()))}  (audio.pte, linears {a.quant})",
                  f"    packed linears       {gib(a.packed)}",
                  f"    load transient       {gib(a.transient)}  (one Conformer layer's blob while it is packed)",
                  f"    activations          {gib(a.activations)}  (planned at 30 s, the method's longest clip)",
                  f"    total                {gib(b.audio_ram_bytes)}  (decoder loaded + audio at its peak; "
                  f"{a.flops / 1e9:.0f} GFLOP per clip)"]
    for key, dev in devices.items():
        v = b.verdict(dev)
        lines.append(f"  {key:<13} {'fits' if v['fits'] else 'DOES NOT FIT':<13} usable "
                     f"{v['usable_bytes'] / 2**30:5.2f} GiB ({dev['app_ram_fraction']:.0%} of "
                     f"{dev['ram_bytes'] / 1e9:.0f} GB), headroom {v['headroom_bytes'] / 2**30:+6.2f} GiB")
    lines.append("  usable = app_ram_fraction × RAM: Android keeps the system, GPU carve-outs and cached apps "
                 "resident and the low-memory killer ends a foreground app well before physical RAM runs out.")
    return "\n".join(lines)


def plot_budget(path: str | Path, model: str | TextConfig, devices: dict[str, dict], max_context: int = 131072,
                **kw) -> Path:
    """RAM needed vs context (log scale), one line per device's usable RAM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctxs = [2**k for k in range(8, max_context.bit_length()) if 2**k <= max_context]
    ram = [estimate(model, context=c, **kw).ram_bytes / 2**30 for c in ctxs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ctxs, ram, marker="o", label=f"{model if isinstance(model, str) else 'model'} RAM needed")
    for i, (key, dev) in enumerate(devices.items()):
        ax.axhline(dev["ram_bytes"] * dev["app_ram_fraction"] / 2**30, linestyle="--", linewidth=0.9,
                   color=f"C{i + 1}", label=f"{key} usable")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("GiB")
    ax.set_title(f"RAM vs context ({kw.get('quant', '8da4w')}, emb {kw.get('embedding_quant', 'int8')})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
