"""Gemma 4's audio input — sample rate, framing, the clip limit, the audio tokens: the statement every host is checked
against.

A clip is 16 kHz mono float samples (transformers' `Gemma4AudioFeatureExtractor`). The front end pads 160 zeros in
front ("semicausal") and cuts frames of 320 samples every 160; a frame counts when the sample just past its window is
real audio, so a clip of n samples has `mel_frames(n)` frames. Two stride-2 convolutions make one soft token of every
four frames (40 ms): `audio_soft_tokens(n)` = the count transformers' processor puts in the prompt, as
`<|audio>` + n × `<|audio|>` + `<audio|>`. A clip holds at most 30 s (MAX_SAMPLES, 750 tokens); longer audio is cut
into consecutive 30 s clips (`split_samples`), each its own span — transformers' feature extractor would truncate it.

The front end's arithmetic runs inside the audio program (export/audio.py), so every host gets the same log-mel
features from the same kernels; a host's part is decoding, downmixing, resampling to 16 kHz and cutting the clip
into `program_frames` rows of HOP samples with their validity mask.
"""
from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16_000          # Hz, what the tower was trained on
HOP = 160                     # samples between frames (10 ms)
FRAME = 320                   # samples per frame (20 ms), periodic-Hann windowed
FFT = 512                     # rfft length: frames are zero-padded to it
N_MELS = 128                  # HTK mel bins, 0..8000 Hz, no normalisation
MEL_FLOOR = 1e-3              # features are log(mel + MEL_FLOOR)
MAX_SAMPLES = 30 * SAMPLE_RATE  # the processor's max_length: 30 s, 750 soft tokens
FRAMES_PER_TOKEN = 4          # two stride-2 convolutions
MIN_SAMPLES = FRAME // 2 + 1  # 161: the fewest samples that give one frame

BOA, AUDIO, EOA = "<|audio>", "<|audio|>", "<audio|>"
BOA_ID, AUDIO_ID, EOA_ID = 256000, 258881, 258883  # Gemma 4's vocabulary (Gemma4Config defaults)


class AudioError(ValueError):
    """Audio the front end cannot take: says what was expected and what was found."""


def _check_samples(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise AudioError(f"audio samples: expected a count ≥ 0, found {n!r}")
    return n


def mel_frames(n_samples: int) -> int:
    """Valid frames of a clip of n samples at 16 kHz: frame i needs sample 160·i + 160 (0 below 161 samples)."""
    n = min(_check_samples(n_samples), MAX_SAMPLES)
    return 0 if n < MIN_SAMPLES else (n - MIN_SAMPLES) // HOP + 1


def audio_soft_tokens(n_samples: int) -> int:
    """Soft tokens of a clip of n samples (≤ 30 s): one per FRAMES_PER_TOKEN frames, rounded up — the number of
    valid positions transformers' processor counts after its two stride-2 convolutions (25 per second)."""
    f = mel_frames(n_samples)
    return 0 if f == 0 else (f - 1) // FRAMES_PER_TOKEN + 1


def frame_samples(n_samples: int) -> int:
    """Samples of the clip the front end reads: the first HOP · mel_frames(n) (the rest of the last frame's window
    is the front padding's shift; a tail shorter than a hop adds no frame)."""
    return HOP * mel_frames(n_samples)


BLOCK = 12                    # soft tokens per attention block of the tower (its attention_chunk_size)
BLOCK_ROWS = FRAMES_PER_TOKEN * BLOCK  # 48 rows of HOP samples per block of soft tokens


def program_blocks(n_samples: int) -> int:
    """Blocks of BLOCK soft tokens the audio program computes for a clip: enough rows (BLOCK_ROWS · m − 3) for all
    its frames."""
    return -(-(mel_frames(n_samples) + 3) // BLOCK_ROWS)


def program_frames(n_samples: int) -> int:
    """Rows of HOP samples the audio program takes for a clip: BLOCK_ROWS · m − 3 (m = program_blocks), the clip's
    frames then zero rows that its mask marks invalid. On that grid both stride-2 convolutions divide exactly and the
    tower's positions are whole attention blocks (BLOCK · m of them), so the exported method's one dynamic size m
    needs no guard torch.export cannot prove; the first audio_soft_tokens(n) of its outputs are the clip's."""
    return BLOCK_ROWS * program_blocks(n_samples) - 3


def split_samples(n_samples: int) -> list[tuple[int, int]]:
    """[start, stop) of each clip long audio is cut into: consecutive MAX_SAMPLES pieces, the last one shorter; a
    last piece too short for one soft token is dropped (it would be an empty span)."""
    n = _check_samples(n_samples)
    pieces = [(s, min(s + MAX_SAMPLES, n)) for s in range(0, n, MAX_SAMPLES)]
    return [(a, b) for a, b in pieces if audio_soft_tokens(b - a) > 0]


@dataclass(frozen=True)
class AudioTokens:
    """The ids that frame a clip in a prompt: `boa`, one `audio` placeholder per soft token, `eoa`. Gemma 4's own by
    default; a checkpoint's config.json (Gemma4Config: boa_token_id, audio_token_id, eoa_token_index — transformers'
    name for the last one) may name others (tiny test models do)."""

    boa: int = BOA_ID
    audio: int = AUDIO_ID
    eoa: int = EOA_ID

    @classmethod
    def from_config(cls, d: dict, vocab_size: int, where: str = "config.json") -> "AudioTokens":
        """The ids a multimodal config names (defaults for the keys it leaves out), each checked to be a token of
        the vocabulary and the three distinct."""
        found = {}
        for name, key in (("boa", "boa_token_id"), ("audio", "audio_token_id"), ("eoa", "eoa_token_index")):
            v = d.get(key, getattr(cls, name))
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size:
                raise AudioError(f"{where}: {key}: expected a token id in [0, {vocab_size}), found {v!r}")
            found[name] = v
        if len(set(found.values())) != 3:
            raise AudioError(f"{where}: boa_token_id, audio_token_id, eoa_token_index: expected three different ids, "
                             f"found {list(found.values())}")
        return cls(**found)

    @classmethod
    def for_vocab(cls, vocab_size: int) -> "AudioTokens":
        """Gemma 4's ids where the vocabulary holds them, else the three ids before the image tokens'
        (`ImageTokens.for_vocab`: the last three) — small random test models."""
        if vocab_size > max(BOA_ID, AUDIO_ID, EOA_ID):
            return cls()
        return cls(vocab_size - 6, vocab_size - 5, vocab_size - 4)

    def to_dict(self) -> dict[str, int]:
        return {"boa_token_id": self.boa, "audio_token_id": self.audio, "eoa_token_index": self.eoa}

    def manifest_dict(self) -> dict[str, int]:
        """The bundle manifest's `audio.audio_tokens`."""
        return {"boa": self.boa, "audio": self.audio, "eoa": self.eoa}

    def span(self, n_soft_tokens: int) -> list[int]:
        """The prompt ids of one clip of n soft tokens: boa, n × audio, eoa."""
        most = audio_soft_tokens(MAX_SAMPLES)
        if isinstance(n_soft_tokens, bool) or not isinstance(n_soft_tokens, int) or not 1 <= n_soft_tokens <= most:
            raise AudioError(f"audio soft tokens: expected 1..{most}, found {n_soft_tokens!r}")
        return [self.boa] + [self.audio] * n_soft_tokens + [self.eoa]
