"""The chat image turn: a content of text and image items, the runtime's chat prompt with images, the test
tokenizer's image specials, and what is refused (tests/test_loop_golden.py holds the rendering itself to
apply_chat_template over chat_cases.json)."""
from __future__ import annotations

from pathlib import Path

import pytest

from gemma_edge.contract.chat import ChatError, count_images, render_gemma4_chat
from gemma_edge.contract.image import BOI, EOI, IMAGE, ImageTokens

HERE = Path(__file__).parent
VOCAB = 512


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """tokenizer.json with the image specials at the tiny model's ids, and one without them."""
    from gemma_edge.export.random_tokenizer import build_test_tokenizer

    d = tmp_path_factory.mktemp("chat_images")
    with_images, without = d / "with.json", d / "without.json"
    build_test_tokenizer(VOCAB, ImageTokens.for_vocab(VOCAB)).save(str(with_images))
    build_test_tokenizer(VOCAB).save(str(without))
    return with_images, without


def test_test_tokenizer_puts_the_image_specials_at_the_model_s_ids():
    from gemma_edge.export.random_tokenizer import TokenizerError, build_test_tokenizer

    for vocab in (256, VOCAB, 3000):
        ids = ImageTokens.for_vocab(vocab)
        tok = build_test_tokenizer(vocab, ids)
        assert tok.get_vocab_size() == vocab
        assert [tok.token_to_id(t) for t in (BOI, IMAGE, EOI)] == [ids.boi, ids.image, ids.eoi]
        # special: matched whole in text, skipped when decoding
        assert tok.encode(f"a{IMAGE}b", add_special_tokens=False).ids.count(ids.image) == 1
        assert tok.decode([ids.boi, ids.image, ids.eoi], skip_special_tokens=True) == ""
    # ids anywhere a free id is, the rest of the vocabulary still its own
    tok = build_test_tokenizer(VOCAB, ImageTokens(50, 60, 70))
    assert [tok.token_to_id(t) for t in (BOI, IMAGE, EOI)] == [50, 60, 70] and tok.get_vocab_size() == VOCAB
    assert tok.token_to_id("<|turn>") == 105
    assert build_test_tokenizer(VOCAB).token_to_id(IMAGE) is None
    for bad in (ImageTokens(105, 60, 70), ImageTokens(50, 50, 70), ImageTokens(50, 60, VOCAB)):
        with pytest.raises(TokenizerError, match="image_tokens"):
            build_test_tokenizer(VOCAB, bad)


def test_render_refuses_content_the_template_cannot_take():
    cases = [
        ([{"role": "system", "content": [{"type": "image"}]}], "message 0 content: expected text"),
        ([{"role": "user", "content": [{"type": "video"}]}], r"content\[0\]: expected"),
        ([{"role": "user", "content": ["a picture"]}], r"content\[0\]: expected"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], r"content\[0\].text: expected text"),
        ([{"role": "user", "content": {"type": "image"}}], "content: expected text or a list"),
    ]
    for messages, match in cases:
        with pytest.raises(ChatError, match=match):
            render_gemma4_chat(messages)
    # a later system turn is an ordinary turn: items allowed there, as the template renders them
    text = render_gemma4_chat([{"role": "user", "content": "hi"}, {"role": "system", "content": [{"type": "image"}]}])
    assert text.endswith(f"<|turn>system\n\n\n{IMAGE}\n\n<turn|>\n<|turn>model\n")
    assert count_images([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"},
                                                       {"type": "image"}]}, {"role": "user", "content": "y"}]) == 2


def test_text_codec_chat_with_images_equals_apply_chat_template(tokenizers):
    from transformers import PreTrainedTokenizerFast

    from gemma_edge.runtime.tokenizer import TextCodec

    path, _ = tokenizers
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                 unk_token="<unk>")
    hf.chat_template = (HERE / "golden" / "gemma4_e_chat_template.jinja").read_text()
    codec = TextCodec(path, 2)
    image = ImageTokens.for_vocab(VOCAB).image
    for system, images in ((None, 1), ("Be brief.", 2)):
        content = [{"type": "image"}] * images + [{"type": "text", "text": "What is it?"}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        want = want if isinstance(want, list) else list(want["input_ids"])
        got = codec.encode_chat("What is it?", system, images=images)
        assert got == want and got.count(image) == images
    # the bundle's own template renders the same list content
    templated = TextCodec(path, 2, chat_template=hf.chat_template)
    assert templated.encode_chat("What is it?", images=1) == codec.encode_chat("What is it?", images=1)


def test_text_codec_chat_with_audio_equals_apply_chat_template(tmp_path):
    """Audio items (the template writes `<|audio|>` with no newlines), after image items: the ids transformers'
    apply_chat_template gives over Gemma 4's E template; a tokenizer without `<|audio|>` is refused."""
    from transformers import PreTrainedTokenizerFast

    from gemma_edge.contract.audio import AudioTokens
    from gemma_edge.export.random_tokenizer import build_test_tokenizer
    from gemma_edge.runtime.tokenizer import TextCodec, TokenizerError

    path = tmp_path / "tok.json"
    build_test_tokenizer(VOCAB, ImageTokens.for_vocab(VOCAB), AudioTokens.for_vocab(VOCAB)).save(str(path))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                 unk_token="<unk>")
    hf.chat_template = (HERE / "golden" / "gemma4_e_chat_template.jinja").read_text()
    codec = TextCodec(path, 2)
    audio = AudioTokens.for_vocab(VOCAB).audio
    for system, images, clips in ((None, 0, 1), ("Be brief.", 1, 2)):
        content = ([{"type": "image"}] * images + [{"type": "audio"}] * clips
                   + [{"type": "text", "text": "Transcribe this"}])
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        want = want if isinstance(want, list) else list(want["input_ids"])
        got = codec.encode_chat("Transcribe this", system, images=images, audio=clips)
        assert got == want and got.count(audio) == clips
    assert count_images([{"role": "user", "content": content}], "audio") == 2
    plain = tmp_path / "plain.json"
    build_test_tokenizer(VOCAB).save(str(plain))
    with pytest.raises(TokenizerError, match=r"a chat with an audio clip needs the Gemma 4 special token"):
        TextCodec(plain, 2).encode_chat("Transcribe this", audio=1)


def test_a_tokenizer_without_the_image_special_is_refused_for_an_image_chat(tokenizers):
    from gemma_edge.runtime.tokenizer import TextCodec, TokenizerError

    _, without = tokenizers
    codec = TextCodec(without, 2)
    with pytest.raises(TokenizerError, match=r"without.json: a chat with an image needs the Gemma 4 special token "
                                             r"'<\|image\|>'"):
        codec.encode_chat("What is it?", images=1)
    assert codec.encode_chat("What is it?")[:1] == [2]   # a text chat is still fine
