"""Gemma 4's chat format and special tokens: the one statement of it that every host is checked against.

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

TURN_OPEN, TURN_CLOSE, THINK = "<|turn>", "<turn|>", "<|think|>"
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")            # ids 0..3, as in Gemma
TURN_TOKENS = {105: TURN_OPEN, 106: TURN_CLOSE, 107: THINK, 108: "<|channel>", 109: "<channel|>"}
SPACE = "\u2581"                                          # "▁", Gemma's space marker


class ChatError(ValueError):
    """A chat request the format cannot express."""


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
            raise ChatError(f"chat message role: expected system, user or assistant/model, found {m['role']!r}")
        out.append(f"{TURN_OPEN}{role}\n{m['content'].strip()}{TURN_CLOSE}\n")
    out.append(f"{TURN_OPEN}model\n")
    return "".join(out)
