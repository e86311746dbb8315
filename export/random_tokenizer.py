"""A Gemma-style test tokenizer for random checkpoints (`gemma-edge random-checkpoint`) and tests: byte-fallback
BPE with Gemma's special and turn tokens at their ids (and, for a model that reads images, its image tokens at
the model's image ids), merges trained on a small built-in corpus."""
from __future__ import annotations

import json
from pathlib import Path

from gemma_edge.contract.audio import AUDIO, BOA, EOA, AudioTokens
from gemma_edge.contract.chat import SPACE, SPECIALS, TURN_TOKENS
from gemma_edge.contract.image import BOI, EOI, IMAGE, ImageTokens

# A small varied corpus for the test tokenizer's merges: prose, code, numbers, several scripts.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A phone keeps the model in RAM and the table in flash.
Per-layer embeddings are fetched once per prompt, with every row read issued at the same time.
Gemma runs on phones: prefill is bound by compute, decode by the bandwidth of reading the weights.
Once upon a time there was a small model that wanted to answer questions about the weather.
What is the capital of France? Paris is the capital of France, and Berlin is the capital of Germany.
def generate(prompt, max_new_tokens=32):\n    for token in session.generate(prompt):\n        print(token)
for (int i = 0; i < n; i++) { sum += values[i] * weights[i]; } return sum / n;
{"name": "gemma", "layers": 35, "hidden_size": 1536, "vocab_size": 262144, "ok": true}
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 512 1024 2048 3.14159 2.71828 1e-6 -17 +23 50%
Le renard brun saute par-dessus le chien paresseux. Die Katze schläft auf dem Sofa. ¿Dónde está?
Привет, как дела? 你好，世界。こんにちは。안녕하세요. مرحبا بالعالم. नमस्ते दुनिया. Γειά σου κόσμε.
Emoji 🙂 🚀 ✨ and symbols © ® ™ € £ ¥ → ← ≤ ≥ ± × ÷ — – … « » “quotes” ‘single’.
User: Write a short poem about the sea.\nModel: The sea is wide, the sea is deep, it sings the shore to sleep.
Memory budget: weights, KV cache, activations and the runtime must fit in what the phone lets an app use.
"""


class TokenizerError(ValueError):
    """A vocabulary size the test tokenizer cannot be built for."""


def _byte_order() -> list[int]:
    """Byte values by usefulness, so a vocab too small for all 256 byte tokens keeps the common ones."""
    first = [0x0A, 0x09] + list(range(0x20, 0x7F))
    return first + [b for b in range(256) if b not in first]


def build_test_tokenizer(vocab_size: int, image_tokens: ImageTokens | None = None,
                         audio_tokens: AudioTokens | None = None):
    """A Gemma-style byte-fallback BPE with exactly `vocab_size` ids (256 .. 262144).

    ids 0..3 <pad> <eos> <bos> <unk>; when vocab_size >= 512, Gemma's turn tokens at 105.. (4..104 are
    <unusedN>); then "▁"; then the <0xXX> byte tokens (all 256 when they fit, else the most common bytes first);
    then characters and merges trained on a small built-in corpus; the rest <unusedN>. With `image_tokens`
    (a multimodal model's ids, e.g. ImageTokens.for_vocab(vocab_size)), Gemma's image specials <|image>,
    <|image|>, <image|> are special tokens at its boi, image and eoi ids, so a chat's image item encodes to the
    placeholder id the model splices at. `audio_tokens` places <|audio>, <|audio|>, <audio|> the same way.
    """
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    if not 256 <= vocab_size <= 262_144:
        raise TokenizerError(f"vocab_size: expected 256..262144, found {vocab_size}")
    turns = vocab_size >= 512
    fixed = {i: t for i, t in enumerate(SPECIALS)} | (dict(TURN_TOKENS) if turns else {})
    placed: dict[int, str] = {}   # tokens at ids the model fixes, inserted when the running id reaches them
    wanted = []
    if image_tokens is not None:
        wanted += [("image_tokens.boi", BOI, image_tokens.boi), ("image_tokens.image", IMAGE, image_tokens.image),
                   ("image_tokens.eoi", EOI, image_tokens.eoi)]
    if audio_tokens is not None:
        wanted += [("audio_tokens.boa", BOA, audio_tokens.boa), ("audio_tokens.audio", AUDIO, audio_tokens.audio),
                   ("audio_tokens.eoa", EOA, audio_tokens.eoa)]
    for name, token, i in wanted:
        if not 0 <= i < vocab_size or i in fixed or i in placed:
            raise TokenizerError(f"{name}: expected an id in [0, {vocab_size}) that no special or "
                                 f"turn token holds, found {i}")
        placed[i] = token
    vocab: dict[str, int] = {}
    unused = 0

    def add(token: str) -> None:
        while len(vocab) in placed:
            vocab[placed[len(vocab)]] = len(vocab)
        vocab[token] = len(vocab)

    def room() -> int:
        """Ids left for tokens of no fixed id."""
        return vocab_size - len(vocab) - sum(1 for i in placed if i >= len(vocab))

    for tok in SPECIALS:
        add(tok)
    if turns:
        while len(vocab) < min(TURN_TOKENS):
            add(f"<unused{unused}>")
            unused += 1
        for i in sorted(TURN_TOKENS):
            add(TURN_TOKENS[i])
    add(SPACE)   # the space marker is a token of its own (else it would decode as bytes, after Replace)
    for b in _byte_order()[: max(0, min(256, room()))]:
        add(f"<0x{b:02X}>")
    budget = room()
    merges: list[tuple[str, str]] = []
    if budget > 0:
        trainer = BpeTrainer(vocab_size=budget, show_progress=False, min_frequency=2, limit_alphabet=min(budget, 200))
        learner = Tokenizer(BPE(unk_token=None))
        learner.normalizer = normalizers.Replace(" ", SPACE)
        learner.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
        learned = json.loads(learner.to_str())["model"]
        for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
            if room() > 0 and tok not in vocab:
                add(tok)
        for m in learned["merges"]:
            a, b = m if isinstance(m, list) else m.split(" ", 1)
            if a in vocab and b in vocab and a + b in vocab:
                merges.append((a, b))
    while room() > 0:
        add(f"<unused{unused}>")
        unused += 1
    while len(vocab) in placed:   # fixed ids after the last free one (for_vocab's: the last three or six)
        vocab[placed[len(vocab)]] = len(vocab)
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(list(SPECIALS) + ([TURN_TOKENS[i] for i in sorted(TURN_TOKENS)] if turns else [])
                           + [placed[i] for i in sorted(placed)])
    if tok.get_vocab_size() != vocab_size:
        raise TokenizerError(f"test tokenizer: expected {vocab_size} ids, built {tok.get_vocab_size()}")
    return tok


def write_test_tokenizer(directory: str | Path, vocab_size: int, image_tokens: ImageTokens | None = None,
                         audio_tokens: AudioTokens | None = None) -> Path:
    """Write `tokenizer.json` (and a small tokenizer_config.json) for `vocab_size` into `directory`; with
    `image_tokens` / `audio_tokens`, those specials at their ids (build_test_tokenizer)."""
    directory = Path(directory)
    tok = build_test_tokenizer(vocab_size, image_tokens, audio_tokens)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    config = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
              "tokenizer_class": "GemmaTokenizer", "add_bos_token": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return path
