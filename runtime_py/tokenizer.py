"""Text in and out: the bundle's tokenizer.json through HF `tokenizers`, the chat prompt, streamed decoding.

The chat format itself is `gemma_edge.contract.chat`'s.
"""
from __future__ import annotations

from pathlib import Path

from gemma_edge.contract.audio import AUDIO
from gemma_edge.contract.chat import TURN_CLOSE, TURN_OPEN, ChatError, render_gemma4_chat  # noqa: F401
from gemma_edge.contract.image import IMAGE


class TokenizerError(ValueError):
    """A tokenizer file or token id the runtime cannot use."""


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

    def chat_prompt(self, user: str, system: str | None = None, images: int = 0, audio: int = 0) -> str:
        """The chat prompt of one user turn; with `images` / `audio`, that many image items, then audio items,
        before its text (the order transformers' processor examples use), each one placeholder."""
        check_text(user, "chat user message")
        if system:
            check_text(system, "chat system message")
        media = [{"type": "image"}] * images + [{"type": "audio"}] * audio
        content = user if not media else media + [{"type": "text", "text": user}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
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

    def encode_chat(self, user: str, system: str | None = None, images: int = 0, audio: int = 0) -> list[int]:
        """The chat prompt's ids (chat_prompt); an image / audio item becomes the tokenizer's `<|image|>` /
        `<|audio|>` id, which the session expands to the image's or clip's span."""
        for special in (TURN_OPEN, TURN_CLOSE):
            if self.tok.token_to_id(special) is None:
                raise TokenizerError(f"{self.path}: --chat needs the Gemma 4 turn token {special!r}, which this "
                                     "tokenizer does not have (a base or tiny-vocabulary model: use a raw prompt)")
        if images:
            self.image_placeholder_id()
        if audio:
            self.placeholder_id(AUDIO, "an audio clip")
        text = self.chat_prompt(user, system, images, audio)
        return self.tok.encode(text, add_special_tokens=False).ids   # "<bos>" in the text is the bos token

    def image_placeholder_id(self) -> int:
        """The id `<|image|>` encodes to (placeholder_id)."""
        return self.placeholder_id(IMAGE, "an image")

    def placeholder_id(self, token: str, what: str) -> int:
        """The id a placeholder encodes to; refused unless it is one special token (spelled out in bytes, the
        placeholder would reach the model as text and nothing would be spliced)."""
        ids = self.tok.encode(token, add_special_tokens=False).ids
        if len(ids) != 1 or self.tok.token_to_id(token) != ids[0]:
            raise TokenizerError(f"{self.path}: a chat with {what} needs the Gemma 4 special token {token!r}, "
                                 f"which this tokenizer does not have (the text encodes to ids {ids[:8]})")
        return ids[0]

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
