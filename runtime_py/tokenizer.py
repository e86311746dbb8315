"""Text in and out: the bundle's tokenizer.json, Gemma 4's chat format, and a Gemma-style test tokenizer.

Gemma 4 chat format (Google's "Gemma 4 prompt formatting" page, ai.google.dev/gemma/docs/core/
prompt-formatting-gemma4, and the checkpoints' chat_template.jinja as summarised by third parties):

    <bos><|turn>system\\n{system}<turn|>\\n<|turn>user\\n{user}<turn|>\\n<|turn>model\\n

`<|turn>` / `<turn|>` open and close a turn (ids 105 / 106 in Gemma's vocabulary; 106 is the
instruction-tuned eos), roles are plain text (`system`, `user`, `model` — "assistant" is written as
`model`), thinking is switched on by `<|think|>` at the start of the system turn. With thinking off the
E2B/E4B templates end the generation prompt at `<|turn>model\\n`; the 26B/31B ones append an empty
`<|channel>thought\\n<channel|>`. A bundle's own `chat_template` (jinja) wins when it has one.
"""
from __future__ import annotations

import json
from pathlib import Path

TURN_OPEN, TURN_CLOSE, THINK = "<|turn>", "<turn|>", "<|think|>"
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")            # ids 0..3, as in Gemma
TURN_TOKENS = {105: TURN_OPEN, 106: TURN_CLOSE, 107: THINK, 108: "<|channel>", 109: "<channel|>"}
SPACE = "\u2581"                                          # "▁", Gemma's space marker

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
    """A tokenizer file, chat request or token id the runtime cannot use."""


def _byte_order() -> list[int]:
    """Byte values by usefulness, so a vocab too small for all 256 byte tokens keeps the common ones."""
    first = [0x0A, 0x09] + list(range(0x20, 0x7F))
    return first + [b for b in range(256) if b not in first]


def build_test_tokenizer(vocab_size: int):
    """A Gemma-style byte-fallback BPE with exactly `vocab_size` ids (256 .. 262144).

    ids 0..3 <pad> <eos> <bos> <unk>; when vocab_size >= 512, Gemma's turn tokens at 105.. (4..104 are
    <unusedN>); then "▁"; then the <0xXX> byte tokens (all 256 when they fit, else the most common bytes first);
    then characters and merges trained on a small built-in corpus; the rest <unusedN>.
    """
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    if not 256 <= vocab_size <= 262_144:
        raise TokenizerError(f"vocab_size: expected 256..262144, found {vocab_size}")
    vocab: dict[str, int] = {}
    unused = 0

    def add(token: str) -> None:
        vocab[token] = len(vocab)

    for tok in SPECIALS:
        add(tok)
    turns = vocab_size >= 512
    if turns:
        while len(vocab) < min(TURN_TOKENS):
            add(f"<unused{unused}>")
            unused += 1
        for i in sorted(TURN_TOKENS):
            add(TURN_TOKENS[i])
    add(SPACE)   # the space marker is a token of its own (else it would decode as bytes, after Replace)
    for b in _byte_order()[: max(0, min(256, vocab_size - len(vocab)))]:
        add(f"<0x{b:02X}>")
    budget = vocab_size - len(vocab)
    merges: list[tuple[str, str]] = []
    if budget > 0:
        trainer = BpeTrainer(vocab_size=budget, show_progress=False, min_frequency=2, limit_alphabet=min(budget, 200))
        learner = Tokenizer(BPE(unk_token=None))
        learner.normalizer = normalizers.Replace(" ", SPACE)
        learner.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer=trainer)
        learned = json.loads(learner.to_str())["model"]
        for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
            if len(vocab) < vocab_size and tok not in vocab:
                add(tok)
        for m in learned["merges"]:
            a, b = m if isinstance(m, list) else m.split(" ", 1)
            if a in vocab and b in vocab and a + b in vocab:
                merges.append((a, b))
    while len(vocab) < vocab_size:
        add(f"<unused{unused}>")
        unused += 1
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(list(SPECIALS) + ([TURN_TOKENS[i] for i in sorted(TURN_TOKENS)] if turns else []))
    if tok.get_vocab_size() != vocab_size:
        raise TokenizerError(f"test tokenizer: expected {vocab_size} ids, built {tok.get_vocab_size()}")
    return tok


def write_test_tokenizer(directory: str | Path, vocab_size: int) -> Path:
    """Write `tokenizer.json` (and a small tokenizer_config.json) for `vocab_size` into `directory`."""
    directory = Path(directory)
    tok = build_test_tokenizer(vocab_size)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    config = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
              "tokenizer_class": "GemmaTokenizer", "add_bos_token": True}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return path


# ---------------------------------------------------------------------------------------------------
# Runtime side
# ---------------------------------------------------------------------------------------------------

def render_gemma4_chat(messages: list[dict], *, thinking: bool = False) -> str:
    """The Gemma 4 (E2B/E4B) text-only chat prompt, generation prompt included; starts with <bos>."""
    out = ["<bos>"]
    msgs = list(messages)
    if thinking:
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {**msgs[0], "content": THINK + msgs[0]["content"]}
        else:
            msgs.insert(0, {"role": "system", "content": THINK})
    for m in msgs:
        role = {"assistant": "model"}.get(m["role"], m["role"])
        if role not in ("system", "user", "model"):
            raise TokenizerError(f"chat message role: expected system, user or assistant/model, found {m['role']!r}")
        out.append(f"{TURN_OPEN}{role}\n{m['content'].strip()}{TURN_CLOSE}\n")
    out.append(f"{TURN_OPEN}model\n")
    return "".join(out)


def check_text(text, what: str) -> str:
    """`text` must be a str that UTF-8 can encode: a lone surrogate (what Python makes of undecodable bytes
    on the command line, or of a broken "\\ud800" escape) is named with its position instead of reaching the
    tokenizer."""
    if not isinstance(text, str):
        raise TokenizerError(f"{what}: expected text (str), found {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = text[e.start]
        raw = f"byte {ord(ch) - 0xDC00:#04x}" if 0xDC80 <= ord(ch) <= 0xDCFF else f"surrogate U+{ord(ch):04X}"
        raise TokenizerError(f"{what}: not valid UTF-8 text ({raw} at character {e.start})") from None
    return text


def read_prompt_file(path: str | Path) -> str:
    """A prompt file's text, strictly UTF-8; errors name the file and the byte offset."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the prompt file ({e.strerror})") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not valid UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


class TextCodec:
    """The bundle's tokenizer: encode a prompt (raw or chat), stream-decode generated ids."""

    def __init__(self, path: str | Path, bos_token_id: int, chat_template: str | None = None):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self.tok = Tokenizer.from_file(str(self.path))
        except Exception as e:   # tokenizers raises its own Exception type
            raise TokenizerError(f"{self.path}: not a tokenizers JSON file ({e})") from e
        self.bos_token_id = bos_token_id
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        check_text(text, "prompt")
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_token_id] if add_bos else []) + ids

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        for m in messages:
            check_text(m["content"], f"chat {m['role']} message")
        if self.chat_template:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            # The template comes from the bundle's manifest, a file that travels: rendered in jinja's sandbox
            # (as transformers renders chat templates), so it can format text but never reach Python objects.
            env = ImmutableSandboxedEnvironment(undefined=jinja2.ChainableUndefined)
            try:
                text = env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=True,
                                                                  bos_token="<bos>", eos_token="<eos>")
            except jinja2.TemplateError as e:
                raise TokenizerError(f"chat_template of the bundle's manifest: {type(e).__name__}: {e}") from e
            return check_text(text, "chat_template's output")
        return render_gemma4_chat(messages)

    def encode_chat(self, user: str, system: str | None = None) -> list[int]:
        for special in (TURN_OPEN, TURN_CLOSE):
            if self.tok.token_to_id(special) is None:
                raise TokenizerError(f"{self.path}: --chat needs the Gemma 4 turn token {special!r}, which this "
                                     "tokenizer does not have (a base or tiny-vocabulary model: use a raw prompt)")
        text = self.chat_prompt(user, system)
        return self.tok.encode(text, add_special_tokens=False).ids   # "<bos>" in the text is the bos token

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


class TextStream:
    """Incremental detokenization: each pushed id yields the new text, holding back an incomplete UTF-8 tail."""

    def __init__(self, codec: TextCodec | None):
        self.codec, self.ids, self.emitted = codec, [], ""

    def push(self, token: int) -> str:
        if self.codec is None:
            return ""
        self.ids.append(int(token))
        full = self.codec.decode(self.ids)
        if full.endswith("\ufffd"):
            return ""
        delta = full[len(self.emitted):] if full.startswith(self.emitted) else full
        self.emitted = full
        return delta
