"""Audio in a prompt: reading a clip, the encoders a Session runs it through, and how its placeholders become spans.

`load_audio` reads a WAV file (PCM 8/16/24/32-bit or float, any rate and channel count) with scipy, downmixes it to
mono (the channels' mean) and resamples it to 16 kHz with scipy's polyphase filter; `prepare_audio` turns samples
into `PreparedClip`s — audio longer than 30 s is cut into consecutive 30 s clips (contract.audio.split_samples), as
many as transformers' feature extractor would need to see all of it (it would truncate), each its own span.

An encoder turns one PreparedClip into its soft tokens [n, H] float32: `EagerAudioEncoder` (our PyTorch tower, from
the checkpoint) or `ProgramAudioEncoder` (a bundle's audio program, one dynamic method). Both load on the first clip
and let go of their weights after encoding (`release`), so a text-only session never pays for the tower.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gemma_edge.contract import audio as contract
from gemma_edge.contract import bundle_format as bf
from gemma_edge.contract.audio import AudioError, AudioTokens


class AudioPromptError(ValueError):
    """An audio prompt that cannot be run: says what was expected and what was found."""


@dataclass(frozen=True)
class PreparedClip:
    """One clip on the audio program's grid: rows [program_frames, 160] f32 and valid [program_frames] f32 (1.0 for
    its frames), and the soft tokens it becomes (the first of the program's outputs)."""

    rows: np.ndarray
    valid: np.ndarray
    soft_tokens: int
    samples: int


# ---------------------------------------------------------------------------------------------------- reading
def load_audio(path: str | Path) -> np.ndarray:
    """A WAV file as 16 kHz mono float32 samples in [-1, 1]. Integer PCM is scaled by its full range (8-bit is
    unsigned, centred at 128); float WAV is taken as it is. Anything else is an AudioError naming the file."""
    import warnings

    from scipy.io import wavfile

    path = Path(path)
    try:
        with warnings.catch_warnings():  # scipy warns on chunks it skips (LIST, cue): they carry no samples
            warnings.simplefilter("ignore", wavfile.WavFileWarning)
            rate, data = wavfile.read(path, mmap=False)
    except FileNotFoundError:
        raise AudioError(f"{path}: no such audio file") from None
    except (ValueError, EOFError, OSError) as e:
        raise AudioError(f"{path}: expected a WAV file (RIFF/WAVE, PCM 8/16/24/32-bit or float): {e}") from None
    if data.size == 0:
        raise AudioError(f"{path}: expected audio samples, found none")
    return to_mono_16k(data, rate, str(path))


def to_mono_16k(data: np.ndarray, rate: int, where: str = "audio") -> np.ndarray:
    """Samples [n] or [n, channels] (int PCM or float) at `rate` Hz -> 16 kHz mono float32."""
    from math import gcd

    from scipy.signal import resample_poly

    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
        raise AudioError(f"{where}: sample rate: expected a positive number of Hz, found {rate!r}")
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        x = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    elif data.dtype.kind == "f":
        x = data.astype(np.float32)
    else:
        raise AudioError(f"{where}: samples: expected integer PCM or float, found {data.dtype}")
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float64).astype(np.float32)
    elif x.ndim != 1:
        raise AudioError(f"{where}: samples: expected [n] or [n, channels], found shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise AudioError(f"{where}: samples: expected finite values, found NaN or infinity")
    rate = int(rate)
    if rate != contract.SAMPLE_RATE:
        g = gcd(rate, contract.SAMPLE_RATE)
        x = resample_poly(x.astype(np.float64), contract.SAMPLE_RATE // g, rate // g).astype(np.float32)
    return x


def prepare_audio(samples: np.ndarray) -> list[PreparedClip]:
    """16 kHz mono samples -> the clips they are encoded as (one per 30 s, a tail too short for a token dropped)."""
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.dtype.kind != "f":
        raise AudioError(f"audio samples: expected 16 kHz mono float samples [n], found {samples.dtype} "
                         f"{list(samples.shape)}")
    if not np.isfinite(samples).all():
        raise AudioError("audio samples: expected finite values, found NaN or infinity")
    pieces = contract.split_samples(len(samples))
    if not pieces:
        raise AudioError(f"audio: {len(samples)} samples make no soft token (expected at least "
                         f"{contract.MIN_SAMPLES}, {contract.MIN_SAMPLES / contract.SAMPLE_RATE * 1000:.0f} ms at "
                         f"{contract.SAMPLE_RATE} Hz)")
    clips = []
    for a, b in pieces:
        n = b - a
        frames, total = contract.mel_frames(n), contract.program_frames(n)
        rows = np.zeros((total, contract.HOP), np.float32)
        rows[:frames] = samples[a:a + frames * contract.HOP].reshape(frames, contract.HOP)
        valid = np.zeros(total, np.float32)
        valid[:frames] = 1.0
        clips.append(PreparedClip(rows, valid, contract.audio_soft_tokens(n), n))
    return clips


def read_clips(item) -> list[PreparedClip]:
    """One audio item of a prompt — a WAV path, 16 kHz mono float samples, a PreparedClip, or a list of them (an
    item already cut into clips) — as its clips."""
    if isinstance(item, PreparedClip):
        return [item]
    if isinstance(item, (list, tuple)) and item and all(isinstance(c, PreparedClip) for c in item):
        return list(item)
    if isinstance(item, (str, Path)):
        return prepare_audio(load_audio(item))
    return prepare_audio(item)


# ---------------------------------------------------------------------------------------------------- prompts
def check_placeholders(ids: list[int], n_items: int, tokens: AudioTokens) -> None:
    """Refuse a prompt the expansion cannot take: frame ids in it, or placeholders but not one per audio item."""
    if any(t in (tokens.boa, tokens.eoa) for t in ids):
        raise AudioPromptError(f"audio: the prompt holds audio frame ids ({tokens.boa} / {tokens.eoa}); expected "
                               f"one placeholder {tokens.audio} per audio item, which the session expands")
    marks = sum(t == tokens.audio for t in ids)
    if marks and marks != n_items:
        raise AudioPromptError(f"audio: the prompt has {marks} audio placeholder(s) ({tokens.audio}) for "
                               f"{n_items} audio item(s); expected one per item, or none (audio first)")


def expand_prompt(ids: list[int], counts: list[list[int]], tokens: AudioTokens, after: int) -> list[int]:
    """`ids` with one `tokens.audio` per audio item (or none: the items go at index `after`) -> the prompt with
    each item's spans, one per clip (counts[i]: the soft tokens of item i's clips)."""
    check_placeholders(ids, len(counts), tokens)
    spans = [[t for n in clips for t in tokens.span(n)] for clips in counts]
    marks = [i for i, t in enumerate(ids) if t == tokens.audio]
    if not marks:
        return ids[:after] + [t for span in spans for t in span] + ids[after:]
    out, prev = [], 0
    for at, span in zip(marks, spans):
        out += ids[prev:at] + span
        prev = at + 1
    return out + ids[prev:]


# ---------------------------------------------------------------------------------------------------- encoders
class EagerAudioEncoder:
    """The checkpoint's tower in our PyTorch, fp32, loaded on first use."""

    name = "eager"

    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self._tower = None

    def encode(self, clip: PreparedClip) -> np.ndarray:
        import torch

        from gemma_edge.export.audio import load_audio_tower

        if self._tower is None:
            self._tower = load_audio_tower(self.checkpoint_dir, dtype=torch.float32)
        with torch.no_grad():
            soft = self._tower.encode_rows(torch.from_numpy(clip.rows)[None], torch.from_numpy(clip.valid)[None])
        return soft[0, :clip.soft_tokens].numpy()

    def release(self) -> None:
        self._tower = None


class ProgramAudioEncoder:
    """A bundle's audio program (`audio.pte`, one dynamic method), loaded on the first clip — its SHA-256 checked
    against the manifest first, as a text-only session never reads the file — and let go of by `release`."""

    name = "pte"

    def __init__(self, bundle_dir: str | Path, manifest: dict):
        self.path = bf.bundle_file(bundle_dir, manifest, "audio")
        self.sha256 = manifest["files"]["audio"]["sha256"]
        a = manifest["audio"]
        self.method_name, self.hidden, self.max_tokens = a["method"], a["hidden_size"], a["max_tokens"]
        self._program = None
        self._method = None

    def _load(self):
        from .backends import executorch_call, load_tower_program

        if self._method is None:
            self._program = load_tower_program(self.path, self.sha256, "audio", [self.method_name], "audio.method")
            self._method = executorch_call(f"{self.path}: method {self.method_name}: ExecuTorch cannot load it",
                                           self._program.load_method, self.method_name)
        return self._method

    def encode(self, clip: PreparedClip) -> np.ndarray:
        import torch

        from .backends import ProgramError, executorch_call

        if clip.soft_tokens > self.max_tokens:
            raise AudioPromptError(f"audio: a clip of {clip.soft_tokens} soft tokens, expected ≤ {self.max_tokens} "
                                   "(manifest audio.max_tokens)")
        method = self._load()
        inputs = [torch.from_numpy(clip.rows)[None], torch.from_numpy(clip.valid)[None]]
        out = executorch_call(f"{self.path}: method {self.method_name}", method.execute, inputs)
        soft = out[0][0].numpy()
        positions = contract.BLOCK * (len(clip.rows) + 3) // contract.BLOCK_ROWS   # 12 per block of 48 rows
        if soft.shape != (positions, self.hidden):
            raise ProgramError(f"{self.path}: method {self.method_name}: expected [1, {positions}, {self.hidden}] "
                               f"(the clip's {clip.soft_tokens} soft tokens first), found {list(out[0].shape)}")
        return np.ascontiguousarray(soft[:clip.soft_tokens], dtype=np.float32)

    def release(self) -> None:
        """Drop the method and the program (its packed weights go with them)."""
        self._method = None
        self._program = None
