"""Gemma 4's chat format and special tokens: the one statement of it that every host is checked against.

Gemma 4 chat format, as the E2B/E4B chat template renders it (tests/golden/: llama.cpp's copy of Gemma 4's
template, and its E2B/E4B form; tests/test_loop_golden.py checks this function against transformers'
`apply_chat_template` over the latter, and the Java core's Chat.java against the same ids):

    <bos><|turn>system\n{system}<turn|>\n<|turn>user\n{user}<turn|>\n<|turn>model\n

`<|turn>` / `<turn|>` open and close a turn (ids 105 / 106 in Gemma's vocabulary; 106 is the
instruction-tuned eos), roles are plain text (`system`, `user`, `model` — "assistant" is written as
`model`), every content is stripped of surrounding whitespace, and a model turn's earlier thinking
(`<|channel>...<channel|>`) is dropped. Thinking is switched on by `<|think|>` at the start of the
system turn (one is opened for it when the messages have none). With thinking off the E2B/E4B generation
prompt ends at `<|turn>model\n` (Google's thinking guide, ai.google.dev/gemma/docs/capabilities/thinking,
table "Template Structure": E2B/E4B off `<|turn>user\n[Prompt]<turn|>\n<|turn>model`); the 26B/31B
template, llama.cpp's copy, closes an empty thought channel `<|channel>thought\n<channel|>` there. A
bundle's own `chat_template` (jinja) wins when it has one.

A user or model message's content may instead be a list of items, `{"type": "text", "text": ...}`,
`{"type": "image"}` and `{"type": "audio"}`, rendered in order with no separator: each text item as a string content
is (stripped; a model turn's thinking dropped), each image as `\n\n<|image|>\n\n` and each audio clip as
`<|audio|>` (the template adds no newlines around audio) — the one placeholder the session expands to the image's
span (boi, its soft tokens, eoi) or the clip's (boa, its soft tokens, eoa). `<|image|>` and `<|audio|>` must be
special tokens of the tokenizer (Gemma's ids 258880 and 258881), or a placeholder would be spelled out in bytes.
"""
from __future__ import annotations

from .audio import AUDIO
from .image import IMAGE

TURN_OPEN, TURN_CLOSE, THINK = "<|turn>", "<turn|>", "<|think|>"
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")            # ids 0..3, as in Gemma
TURN_TOKENS = {105: TURN_OPEN, 106: TURN_CLOSE, 107: THINK, 108: "<|channel>", 109: "<channel|>"}
SPACE = "\u2581"                                          # "▁", Gemma's space marker


class ChatError(ValueError):
    """A chat request the format cannot express."""


CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
ROLES = ("system", "developer", "user", "assistant", "model")


def strip_thinking(text: str) -> str:
    """A model turn's text without its thinking: every `<|channel>...<channel|>` span dropped, then stripped."""
    out = []
    for part in text.split(CHANNEL_CLOSE):
        out.append(part.split(CHANNEL_OPEN)[0] if CHANNEL_OPEN in part else part)
    return "".join(out).strip()


IMAGE_ITEM = f"\n\n{IMAGE}\n\n"   # how the template writes an image item of a message's content
AUDIO_ITEM = AUDIO                 # and an audio item: the placeholder alone
MEDIA_ITEMS = {"image": IMAGE_ITEM, "audio": AUDIO_ITEM}


def _check_content(content, role: str, i: int) -> None:
    """A message's content: text, or (not in a system turn, which the template trims as text) a list of
    text, image and audio items."""
    if isinstance(content, str):
        return
    if not isinstance(content, list) or role in ("system", "developer"):
        want = "text" if role in ("system", "developer") else "text or a list of text, image and audio items"
        raise ChatError(f"chat message {i} content: expected {want}, found {type(content).__name__}")
    for k, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in MEDIA_ITEMS:
            continue
        if kind != "text":
            raise ChatError(f"chat message {i} content[{k}]: expected {{'type': 'text', 'text': ...}}, "
                            f"{{'type': 'image'}} or {{'type': 'audio'}}, found {item!r}")
        if not isinstance(item.get("text"), str):
            raise ChatError(f"chat message {i} content[{k}].text: expected text, found "
                            f"{type(item.get('text')).__name__}")


def count_images(messages: list[dict], kind: str = "image") -> int:
    """Image (or `kind` "audio") items in the messages' contents: the images or clips a chat prompt needs."""
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for item in m["content"] if isinstance(item, dict) and item.get("type") == kind)


def _render_content(content, model: bool) -> str:
    text = strip_thinking if model else str.strip
    if isinstance(content, str):
        return text(content)
    return "".join(MEDIA_ITEMS[item["type"]] if item["type"] in MEDIA_ITEMS else text(item["text"])
                   for item in content)


def render_gemma4_chat(messages: list[dict], *, thinking: bool = False, add_generation_prompt: bool = True) -> str:
    """The Gemma 4 chat prompt, as its chat template renders it; starts with <bos>. A content may be a list of
    text, image and audio items (one `<|image|>` / `<|audio|>` placeholder per image / clip)."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ChatError(f"chat message {i} role: expected one of {', '.join(ROLES)}, found {m.get('role')!r}")
        first_system = i == 0 and m["role"] in ("system", "developer")
        _check_content(m.get("content"), m["role"] if first_system else "user", i)
    out = ["<bos>"]
    rest = list(messages)
    has_system = bool(rest) and rest[0]["role"] in ("system", "developer")
    if thinking or has_system:
        out.append(f"{TURN_OPEN}system\n" + (THINK if thinking else "")
                   + (rest.pop(0)["content"].strip() if has_system else "") + f"{TURN_CLOSE}\n")
    for m in rest:
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"{TURN_OPEN}{role}\n{_render_content(m['content'], role == 'model')}{TURN_CLOSE}\n")
    if add_generation_prompt:
        out.append(f"{TURN_OPEN}model\n")
    return "".join(out)
