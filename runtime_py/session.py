"""A Session: one model (an export bundle's .pte / .onnx, or a checkpoint run eagerly) and its generation loop.

The loop is gemma_edge/contract/loop.md's, which Generator.java and the native host's loop.cpp also run,
all held to tests/golden/loop.json: a run that cannot fit max_context is refused before any work; per
prompt exactly ONE batched PLE fetch (all prompt ids; the store dedupes), sliced per prefill chunk; then
repeat { sample; emit; stop on eos (stop_on_eos) / max_new_tokens; fetch_one(token); decode } — the token
that ends generation is never decoded, so it costs no fetch. Both kinds of fetch are counted in `RunStats`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from gemma_edge.contract import bundle_format as bf
from gemma_edge.contract.audio import AudioTokens
from gemma_edge.contract.config import TextConfig
from gemma_edge.contract.image import DEFAULT_BUDGET, ImageTokens
from gemma_edge.ple_store import FetchStats

from .backends import EagerBackend, OnnxBackend, PteBackend, TablePle
from .sampling import Sampler
from .tokenizer import TextCodec, TextStream


class GenerationError(ValueError):
    """A run the loop refuses before any work (gemma_edge/contract/loop.md): `field` names what is wrong
    ("prompt", "max_new_tokens" or "context"), as Java's GenerationException and the native LoopError do."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _count(v, name: str) -> int:
    if not _is_int(v) or v < 1:
        raise ValueError(f"{name}: expected an integer ≥ 1, found {v!r}")
    return int(v)


def check_program_bounds(runner: PteBackend, m: dict, bundle_dir: Path) -> None:
    """The manifest must describe the program it names: vocabulary, chunk, context and PLE row shape are
    read from the program's own method metadata, so a manifest that lies cannot push ids or positions
    past what the program was built for (ExecuTorch's kernels abort on some of those)."""
    where = f"{bundle_dir / bf.MANIFEST_FILE}"
    rows = [m["num_layers"], max(m["ple_dim"], 1)]
    for name, want, found in (("vocab_size", runner.vocab_size, m["vocab_size"]),
                               ("num_layers, ple_dim", runner.ple_rows_shape, rows)):
        if want != found:
            raise bf.BundleError(f"{where}: {name}: expected {want} (the program's {runner.path.name} "
                                 f"metadata), found {found}")
    if m["prefill_chunk"] > runner.max_tokens:
        raise bf.BundleError(f"{where}: prefill_chunk: expected ≤ {runner.max_tokens} (the program's tokens "
                             f"input), found {m['prefill_chunk']}")
    if runner.max_context is not None and m["max_context"] > runner.max_context:
        raise bf.BundleError(f"{where}: max_context: expected ≤ {runner.max_context} (the program's "
                             f"attend_len input), found {m['max_context']}")


@dataclass
class GeneratedToken:
    """One generated token as it streams out."""
    token: int
    text: str          # newly decoded text ("" while a UTF-8 character is incomplete, or without a tokenizer)
    index: int         # 0 for the first generated token
    elapsed_s: float   # since generate() started
    step_s: float      # time to produce it: fetch + prefill + sample for the first, fetch_one + decode + sample after


@dataclass
class RunStats:
    """Counters and timings of the last generate() call."""
    prompt_tokens: int = 0             # images' and audio clips' spans included
    generated: int = 0
    prompt_fetches: int = 0            # batched fetches for the prompt: exactly 1
    token_fetches: int = 0             # fetch_one calls: one per decoded token
    prefill_chunks: int = 0
    images: int = 0                    # images in the prompt
    audio_clips: int = 0               # audio clips in the prompt (an item over 30 s is several)
    audio_tokens: int = 0              # their soft tokens
    encode_s: float = 0.0              # their towers' runs (load, encode, release), part of ttft_s
    fetch_s: float = 0.0               # the prompt's batched fetch
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0              # from the first token to the last
    total_s: float = 0.0
    stop_reason: str = ""
    prompt_fetch: FetchStats | None = None
    token_fetch: FetchStats = field(default_factory=lambda: FetchStats(strategy="total"))
    tokens: list[int] = field(default_factory=list)
    prompt_fetched: list[int] = field(default_factory=list)  # the ids of the prompt's one batched fetch

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return (self.generated - 1) / self.decode_s if self.generated > 1 and self.decode_s > 0 else 0.0


class Session:
    """`Session(bundle_dir, backend="pte"|"onnx")` or `Session.from_checkpoint(dir)`; then `generate` / `logits`."""

    def __init__(self, bundle_dir: str | Path, backend: str = "pte", *, verify: str = "fast",
                 prefill_chunk: int | None = None):
        """verify: "full" hashes every file; "fast" (default) hashes all but the .ple, whose size, header
        and identity (SHA-256 of its header and CRC table) are checked instead — hashing it would pull
        the whole table into the page cache; "none" skips the checks (the manifest is validated and the
        program's identifier and metadata checked whatever the mode).

        "fast" hashes the program at every load rather than trusting a stamp of an earlier hash keyed by
        size, mtime and inode: ExecuTorch must never parse a program that is not the manifest's, and a
        stamp misses a file rewritten in place with its mtime restored, storage without ctimes (FAT
        over USB) and flash that returns bad bytes; the hash reads the file the load then reads from
        the page cache, and costs little against packing the weights."""
        from gemma_edge import ple_store

        self.bundle_dir = Path(bundle_dir)
        if verify not in ("full", "fast", "none"):
            raise ValueError(f"verify: expected 'full', 'fast' or 'none', found {verify!r}")
        self.manifest = m = bf.read_manifest(self.bundle_dir)      # validated: types, ranges, paths
        if verify != "none":
            bf.check_bundle(self.bundle_dir, m, full_hash=True, hash_ple=verify == "full")
        files = m["files"]
        cfg = TextConfig.from_dict(m["config"])
        if backend == "pte":
            if "program" not in files:
                raise bf.BundleError(f"{self.bundle_dir}: no program (model.pte) in the manifest's files")
            roles = bf.role_methods(m)
            runner = PteBackend(bf.bundle_file(self.bundle_dir, m, "program"), roles[bf.PREFILL_ROLE],
                                roles[bf.DECODE_ROLE])
            check_program_bounds(runner, m, self.bundle_dir)
        elif backend == "onnx":
            if "onnx" not in files:
                raise bf.BundleError(f"{self.bundle_dir}: no model.onnx in the manifest's files "
                                     "(export with formats=('pte', 'onnx'))")
            runner = OnnxBackend(bf.bundle_file(self.bundle_dir, m, "onnx"))
        else:
            raise ValueError(f"backend: expected 'pte' or 'onnx', found {backend!r}")
        codec = None
        if "tokenizer" in files:
            codec = TextCodec(bf.bundle_file(self.bundle_dir, m, "tokenizer"), m["bos_token_id"],
                              m.get("chat_template"))
        ple = ple_store.open(bf.bundle_file(self.bundle_dir, m, "ple")) if "ple" in files else None
        if ple is not None:
            h = ple.header
            for name, want, found in (("vocab_size", cfg.vocab_size_per_layer_input, h.vocab_size),
                                      ("num_layers", m["num_layers"], h.num_layers),
                                      ("ple_dim", m["ple_dim"], h.ple_dim)):
                if want != found:
                    ple.close()
                    raise bf.BundleError(f"{ple.path}: header {name} is {found}, the manifest needs {want}")
        self._setup(cfg, runner, ple, codec, m["max_context"], m["prefill_chunk"], prefill_chunk,
                    m["eos_token_ids"], m["bos_token_id"])
        if "vision" in m:
            from .vision import ProgramVisionEncoder

            if backend == "pte" and runner.soft_width != m["vision"]["hidden_size"]:
                raise bf.BundleError(f"{self.bundle_dir / bf.MANIFEST_FILE}: vision.hidden_size: expected "
                                     f"{runner.soft_width} (the program's soft_embeds width), found "
                                     f"{m['vision']['hidden_size']}")
            ids = m["vision"]["image_tokens"]
            self.image_tokens = ImageTokens(ids["boi"], ids["image"], ids["eoi"])
            self.vision = ProgramVisionEncoder(self.bundle_dir, m)
        if "audio" in m:
            from .audio import ProgramAudioEncoder

            if backend == "pte" and runner.soft_width != m["audio"]["hidden_size"]:
                raise bf.BundleError(f"{self.bundle_dir / bf.MANIFEST_FILE}: audio.hidden_size: expected "
                                     f"{runner.soft_width} (the program's soft_embeds width), found "
                                     f"{m['audio']['hidden_size']}")
            ids = m["audio"]["audio_tokens"]
            self.audio_tokens = AudioTokens(ids["boa"], ids["audio"], ids["eoa"])
            self.audio = ProgramAudioEncoder(self.bundle_dir, m)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, *, max_context: int = 1024, prefill_chunk: int = 128,
                        dtype=None, ple_file: str | Path | None = None) -> "Session":
        """The eager back-end: our Gemma4CausalLM over the same loop. PLE rows come from the checkpoint's table
        held in RAM (behind the reader's fetch interface), or from `ple_file` (a bundle's .ple: then the eager
        model sees exactly the rows the program sees, and the table is not loaded)."""
        import torch

        from gemma_edge import ple_store
        from gemma_edge.export.checkpoint import audio_tokens_of, image_tokens_of, load_checkpoint

        checkpoint_dir = Path(checkpoint_dir)
        cfg, model = load_checkpoint(checkpoint_dir, dtype=dtype or torch.float32, load_ple_table=ple_file is None)
        self = cls.__new__(cls)
        self.bundle_dir, self.manifest = None, None
        ple = None
        if cfg.has_ple and ple_file is not None:
            ple = ple_store.open(ple_file)
        elif cfg.has_ple:
            table = model.model.embed_tokens_per_layer.weight.detach()
            ple = TablePle(table, cfg.num_hidden_layers, cfg.hidden_size_per_layer_input, cfg.ple_scale)
            model.drop_ple_table()
        codec = None
        if (checkpoint_dir / bf.TOKENIZER_FILE).exists():
            codec = TextCodec(checkpoint_dir / bf.TOKENIZER_FILE, cfg.bos_token_id)
        self._setup(cfg, EagerBackend(model, max_context), ple, codec, max_context, prefill_chunk, None,
                    cfg.eos_token_ids, cfg.bos_token_id)
        # config.json alone (load_checkpoint has read every shard's header already)
        image_tokens = image_tokens_of(checkpoint_dir / "config.json", cfg)
        if image_tokens is not None:
            from .vision import EagerVisionEncoder

            self.image_tokens, self.vision = image_tokens, EagerVisionEncoder(checkpoint_dir)
        audio_tokens = audio_tokens_of(checkpoint_dir / "config.json", cfg)
        if audio_tokens is not None:
            from .audio import EagerAudioEncoder

            self.audio_tokens, self.audio = audio_tokens, EagerAudioEncoder(checkpoint_dir)
        return self

    @classmethod
    def from_parts(cls, config: TextConfig, backend, ple=None, *, max_context: int, prefill_chunk: int,
                   eos_token_ids: list[int], tokenizer: TextCodec | None = None) -> "Session":
        """The loop over any back-end (prefill / decode / all_logits, as backends.py's) and PLE source (fetch /
        fetch_one / fetch_log / close, as the store's reader), e.g. recorded logits replayed by the golden suite."""
        self = cls.__new__(cls)
        self.bundle_dir, self.manifest = None, None
        self._setup(config, backend, ple, tokenizer, max_context, prefill_chunk, None, eos_token_ids,
                    config.bos_token_id)
        return self

    def _setup(self, cfg, runner, ple, codec, max_context, chunk, chunk_override, eos, bos) -> None:
        self.config: TextConfig = cfg
        self.backend = runner
        self.ple = ple
        self.tokenizer: TextCodec | None = codec
        self.max_context = _count(max_context, "max_context")
        self.prefill_chunk = _count(chunk, "prefill_chunk")
        if chunk_override is not None:
            if not _is_int(chunk_override) or not 1 <= chunk_override <= chunk:
                raise ValueError(f"prefill_chunk: expected an integer in [1, {chunk}] (the program's maximum), "
                                 f"found {chunk_override!r}")
            self.prefill_chunk = int(chunk_override)
        # A list of ids, never a string or a lone number: "12" must not become the eos set {1, 2}.
        if not isinstance(eos, (list, tuple)) or not all(_is_int(e) and 0 <= e < cfg.vocab_size for e in eos):
            raise ValueError(f"eos_token_ids: expected a list of token ids in [0, {cfg.vocab_size}), found {eos!r}")
        self.eos_ids = set(int(e) for e in eos)
        self.bos_token_id = bos
        self.last_run = RunStats()
        self._rows_shape = (cfg.num_hidden_layers, max(cfg.hidden_size_per_layer_input, 1))
        self.image_tokens: ImageTokens | None = None  # set where the model reads images
        self.vision = None  # its encoder (runtime_py/vision.py), loaded on the first image
        self.audio_tokens: AudioTokens | None = None  # set where the model hears audio
        self.audio = None  # its encoder (runtime_py/audio.py), loaded on the first clip

    def close(self) -> None:
        if self.ple is not None:
            self.ple.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------
    def _check_ids(self, token_ids) -> np.ndarray:
        """The prompt as int64 [T]; every id an integer in [0, vocab_size) — checked on the Python values,
        before numpy could overflow (≥ 2^63) or truncate (1.7 -> 1) them."""
        if isinstance(token_ids, (str, bytes)):
            raise GenerationError("prompt", f"prompt: expected a sequence of token ids, found a "
                                            f"{type(token_ids).__name__}")
        if isinstance(token_ids, np.ndarray):
            if token_ids.ndim != 1 or not np.issubdtype(token_ids.dtype, np.integer):
                raise GenerationError("prompt", f"prompt: expected a 1-D array of integers, found "
                                                f"{token_ids.dtype} {list(token_ids.shape)}")
            token_ids = token_ids.tolist()
        ids = list(token_ids)
        if len(ids) == 0:
            raise GenerationError("prompt", "prompt: expected at least one token id, found 0")
        vocab = self.config.vocab_size
        for i, t in enumerate(ids):
            if not (_is_int(t) or isinstance(t, np.integer)) or not 0 <= int(t) < vocab:
                raise GenerationError("prompt", f"prompt token {i}: expected an id in [0, {vocab}) (vocab_size), "
                                                f"found {t!r}")
        return np.asarray([int(t) for t in ids], dtype=np.int64)

    def _fetch(self, ids: np.ndarray) -> np.ndarray:
        """The prompt's one batched fetch: rows [T, L, P] float32 (zeros for a model without PLE)."""
        if self.ple is None:
            return np.zeros((len(ids), *self._rows_shape), np.float32)
        return self.ple.fetch(ids)

    def _fetch_one(self, token: int) -> np.ndarray:
        if self.ple is None:
            return np.zeros(self._rows_shape, np.float32)
        return self.ple.fetch_one(token)

    def logits(self, token_ids) -> np.ndarray:
        """float32 [T, V] for positions 0..T-1 after one batched fetch. The .pte/.onnx back-ends run their
        decode step token by token (the program returns only the last position); eager runs one forward."""
        ids = self._check_ids(token_ids)
        if len(ids) > self.max_context:
            raise ValueError(f"prompt: {len(ids)} tokens exceed max_context {self.max_context}")
        return self.backend.all_logits(ids, self._fetch(ids))

    def encode(self, text: str, chat: bool = False, system: str | None = None, images: int = 0,
               audio: int = 0) -> list[int]:
        """The prompt's ids; with `chat`, in Gemma 4's chat template, `images` image items then `audio` audio items
        opening the user turn (one placeholder each, which generate() expands); a raw prompt gets its images and
        audio first from generate()."""
        if self.tokenizer is None:
            raise ValueError(f"{self.bundle_dir or 'checkpoint'}: no tokenizer.json; pass token ids instead")
        if chat:
            return self.tokenizer.encode_chat(text, system, images=images, audio=audio)
        return self.tokenizer.encode(text)

    def generate(self, token_ids, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, stop_on_eos: bool = True, images=(),
                 image_budget: int = DEFAULT_BUDGET, audio=()) -> Iterator[GeneratedToken]:
        """Yield generated tokens; greedy at temperature 0. Checks run before any work is done.

        `images`: paths, RGB8 arrays [h, w, 3] or PIL images, each `image_budget` soft tokens at most; the
        prompt holds one image placeholder id per image (or none: the images go first), expanded here to
        each image's span. The images are encoded (after every check) before the prompt's one batched PLE fetch.

        `audio`: WAV paths or 16 kHz mono float arrays; the prompt holds one audio placeholder id per item (or none:
        the audio goes first, after any images), expanded here to `<|audio>` + soft tokens + `<audio|>` per clip —
        an item over 30 s is several consecutive 30 s clips (contract.audio.split_samples)."""
        ids, prepared, clips = self._expand(token_ids, images, image_budget, audio)
        if not _is_int(max_new_tokens) or max_new_tokens < 1:
            raise GenerationError("max_new_tokens",
                                  f"max_new_tokens: expected an integer ≥ 1, found {max_new_tokens!r}")
        if len(ids) + max_new_tokens > self.max_context:
            raise GenerationError("context", f"context: prompt {len(ids)} + max_new_tokens {max_new_tokens} = "
                                             f"{len(ids) + max_new_tokens} tokens, expected ≤ max_context "
                                             f"{self.max_context}")
        sampler = Sampler(temperature, top_k, top_p, seed)
        return self._loop(ids, max_new_tokens, sampler, stop_on_eos, prepared, clips)

    def _expand(self, token_ids, images, image_budget: int, audio) -> tuple[np.ndarray, list | None, list | None]:
        """loop.md's checks of the prompt, its images and its audio, in that order, and the expansion: the prompt
        with every image's and clip's span, the images preprocessed and the clips cut (no tower run yet)."""
        prepared, clips = None, None
        if len(images):
            token_ids, prepared = self._expand_images(self._check_ids(token_ids).tolist(), list(images), image_budget)
        from .audio import PreparedClip

        if isinstance(audio, (str, Path, np.ndarray, PreparedClip)):   # one item, not a list (an array: its samples)
            audio = [audio]
        if len(audio):
            token_ids, clips = self._expand_audio(self._check_ids(token_ids).tolist(), list(audio))
        return self._check_ids(token_ids), prepared, clips

    def _expand_images(self, ids: list[int], images: list, budget: int) -> tuple[list[int], list]:
        """The prompt with each image's span, and the images preprocessed (the tower not yet run). The checks of
        loop.md's "images" step come first, then the budget, then the images are read and resized."""
        from .image import PreparedImage, load_image, preprocess
        from .vision import ImagePromptError, check_placeholders, expand_prompt

        if self.vision is None or self.image_tokens is None:
            where = self.bundle_dir or "this checkpoint"
            raise GenerationError("images", f"images: {where} has no vision tower (export a checkpoint with one, "
                                            "without --no-vision)")
        try:
            check_placeholders(ids, len(images), self.image_tokens)
        except ImagePromptError as e:
            raise GenerationError("images", str(e)) from None
        if budget not in self.vision.budgets:
            where = f"of {self.bundle_dir}'s vision program" if self.bundle_dir else "the processor supports"
            raise GenerationError("image_budget", f"image_budget: expected one of {list(self.vision.budgets)} (the "
                                                  f"budgets {where}), found {budget!r}")
        prepared = [im if isinstance(im, PreparedImage) else
                    preprocess(load_image(im) if isinstance(im, (str, Path)) else im, budget) for im in images]
        if any(p.budget != budget for p in prepared):
            raise GenerationError("images", f"images: prepared at budgets {[p.budget for p in prepared]}, "
                                            f"expected image_budget {budget}")
        return expand_prompt(ids, [p.soft_tokens for p in prepared], self.image_tokens, self.bos_token_id), prepared

    def _expand_audio(self, ids: list[int], items: list) -> tuple[list[int], list]:
        """The prompt with each audio item's spans, and its clips read and cut (the tower not yet run)."""
        from gemma_edge.contract.audio import AudioError

        from .audio import AudioPromptError, check_placeholders, expand_prompt, read_clips

        if self.audio is None or self.audio_tokens is None:
            where = self.bundle_dir or "this checkpoint"
            raise GenerationError("audio", f"audio: {where} has no audio tower (export a checkpoint with one, "
                                           "without --no-audio)")
        try:
            check_placeholders(ids, len(items), self.audio_tokens)
            per_item = [read_clips(item) for item in items]
        except (AudioPromptError, AudioError) as e:
            raise GenerationError("audio", str(e)) from None
        after = 1 if ids and ids[0] == self.bos_token_id else 0
        if self.image_tokens is not None:   # audio without a placeholder goes after the images that open the prompt
            frame = {self.image_tokens.boi, self.image_tokens.image, self.image_tokens.eoi}
            while after < len(ids) and ids[after] in frame:
                after += 1
        counts = [[c.soft_tokens for c in clips] for clips in per_item]
        return expand_prompt(ids, counts, self.audio_tokens, after), [c for clips in per_item for c in clips]

    def _soft_embeds(self, ids: np.ndarray, prepared: list | None, clips: list | None = None) -> np.ndarray:
        """soft_embeds [T, H]: the images' and clips' soft tokens at their placeholders in order, zeros elsewhere;
        each tower is released as soon as its inputs are encoded."""
        soft = np.zeros((len(ids), self.config.hidden_size), np.float32)
        for encoder, tokens, items in ((self.vision, self.image_tokens, prepared),
                                       (self.audio, self.audio_tokens, clips)):
            if not items:
                continue
            assert encoder is not None and tokens is not None
            try:
                rows = [encoder.encode(item) for item in items]
            finally:
                encoder.release()
            placeholder = tokens.image if isinstance(tokens, ImageTokens) else tokens.audio
            soft[ids == placeholder] = np.concatenate(rows)
        return soft

    def _placeholders(self) -> list[int]:
        """The ids whose token half of the PLE is the pad row: the image and audio placeholders."""
        return [t.image for t in (self.image_tokens,) if t is not None] + \
            [t.audio for t in (self.audio_tokens,) if t is not None]

    def _loop(self, ids: np.ndarray, max_new: int, sampler: Sampler, stop_on_eos: bool,
              prepared: list | None = None, clips: list | None = None) -> Iterator[GeneratedToken]:
        st = RunStats(prompt_tokens=len(ids))
        self.last_run = st
        stream = TextStream(self.tokenizer)
        t0 = time.perf_counter()
        soft = None
        if prepared or clips:
            soft = self._soft_embeds(ids, prepared, clips)
            st.images, st.audio_clips = len(prepared or ()), len(clips or ())
            st.audio_tokens = sum(c.soft_tokens for c in clips or ())
            st.encode_s = time.perf_counter() - t0
        # ONE batched fetch: [T, L, P]; a placeholder's token half is the pad row (transformers' splice)
        fetched = ids
        if soft is not None:
            fetched = np.where(np.isin(ids, self._placeholders()), self.config.pad_token_id or 0, ids)
        rows = self._fetch(fetched)
        st.prompt_fetches, st.prompt_fetched = 1, fetched.tolist()
        if self.ple is not None and self.ple.fetch_log:
            st.prompt_fetch = self.ple.fetch_log[-1]
        t1 = time.perf_counter()
        st.fetch_s = t1 - t0 - st.encode_s
        logits = None
        for start in range(0, len(ids), self.prefill_chunk):
            end = min(len(ids), start + self.prefill_chunk)
            if soft is None:
                logits = self.backend.prefill(ids[start:end], start, rows[start:end])
            else:
                logits = self.backend.prefill(ids[start:end], start, rows[start:end], soft[start:end])
            st.prefill_chunks += 1
        st.prefill_s = time.perf_counter() - t1
        pos, t_prev, t_first = len(ids), t0, 0.0
        while True:
            tok = sampler(logits)
            now = time.perf_counter()
            st.tokens.append(tok)
            st.generated = len(st.tokens)
            if st.generated == 1:
                st.ttft_s, t_first = now - t0, now
            st.decode_s = now - t_first
            st.total_s = now - t0
            if stop_on_eos and tok in self.eos_ids:
                st.stop_reason = "eos"
            elif st.generated >= max_new:      # generate() refused a run that could outgrow max_context
                st.stop_reason = "max_new_tokens"
            text = "" if tok in self.eos_ids else stream.push(tok)
            yield GeneratedToken(tok, text, st.generated - 1, now - t0, now - t_prev)
            if st.stop_reason:
                return
            t_prev = time.perf_counter()
            row = self._fetch_one(tok)
            st.token_fetches += 1
            if self.ple is not None and self.ple.fetch_log:
                st.token_fetch = st.token_fetch + self.ple.fetch_log[-1]
            logits = self.backend.decode(tok, pos, row)
            pos += 1
