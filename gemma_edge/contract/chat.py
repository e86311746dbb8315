"""Gemma 4's chat format and special tokens: the one statement of it that every host is checked against.

Gemma 4 chat format, text-only, as the E2B/E4B chat template renders it (tests/golden/: llama.cpp's
copy of Gemma 4's template, and its E2B/E4B form; tests/test_loop_golden.py checks this function against
transformers' `apply_chat_template` over the latter, and the Java core's Chat.java against the same ids):

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
"""
from __future__ import annotations

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


def render_gemma4_chat(messages: list[dict], *, thinking: bool = False, add_generation_prompt: bool = True) -> str:
    """The Gemma 4 text-only chat prompt, as its chat template renders it; starts with <bos>."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ChatError(f"chat message {i} role: expected one of {', '.join(ROLES)}, found {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise ChatError(f"chat message {i} content: expected text, found {type(m.get('content')).__name__}")
    out = ["<bos>"]
    rest = list(messages)
    has_system = bool(rest) and rest[0]["role"] in ("system", "developer")
    if thinking or has_system:
        out.append(f"{TURN_OPEN}system\n" + (THINK if thinking else "")
                   + (rest.pop(0)["content"].strip() if has_system else "") + f"{TURN_CLOSE}\n")
    for m in rest:
        role = "model" if m["role"] == "assistant" else m["role"]
        text = strip_thinking(m["content"]) if role == "model" else m["content"].strip()
        out.append(f"{TURN_OPEN}{role}\n{text}{TURN_CLOSE}\n")
    if add_generation_prompt:
        out.append(f"{TURN_OPEN}model\n")
    return "".join(out)
