"""The sampler: greedy, or seeded temperature / top-k / top-p sampling — the one specification of it.

Java's Sampler.java and the native runner's sampler.cpp implement this algorithm draw for draw; the
golden suite (tests/golden/loop.json, and the Java core's draws) is recorded from this class. For float32
logits l[0..V) (a NaN logit is an error; so is an infinite largest logit when sampling, which would make
every weight NaN):

1. Greedy when temperature <= 0 or top_k == 1: the index of the largest logit, the lowest index on
   ties. No random draw is consumed.
2. Otherwise order all indices by (logit descending, index ascending) (-0.0 and 0.0 compare equal).
   If top_k > 0 keep the first min(top_k, V) of them (top_k <= 0: no top-k).
3. In float64: m = l[first kept]; w_j = exp((l_j - m) / temperature) for the kept j, in that order.
4. If 0 < top_p < 1: total = w_0 + w_1 + ... summed left to right; keep the shortest prefix whose
   running sum (left to right) is >= top_p * total (at least one).
5. S = sum of the kept w, left to right. One uniform draw u in [0, 1); r = u * S; the pick is the first
   kept j whose running sum is > r; if rounding leaves none, the last kept j.

temperature and top_p are float32 values widened exactly to float64 where used (as Java's floats are).
Generator: SplitMix64 with state = seed mod 2^64; one draw per sampled (non-greedy) token;
u = (z >>> 11) * 2^-53 — exactly `java.util.SplittableRandom(seed).nextDouble()`.

Running sums use `np.cumsum` (sequential, left to right — unlike `np.sum`, which is pairwise). exp is
numpy's (glibc); Java uses fdlibm's StrictMath.exp. Both are within an ulp of the true value; a
one-ulp difference in a weight changes the pick only when r lands within that ulp of a boundary.
"""
from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class SplitMix64:
    """Java's SplittableRandom(seed).nextDouble() sequence."""

    def __init__(self, seed: int):
        self.state = int(seed) & _MASK

    def next_double(self) -> float:
        self.state = (self.state + _GOLDEN) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        return (z >> 11) * 2.0**-53


def argmax(logits: np.ndarray) -> int:
    """Index of the largest logit, lowest index on ties; NaN is refused."""
    if np.isnan(logits).any():
        i = int(np.flatnonzero(np.isnan(logits))[0])
        raise ValueError(f"logits[{i}]: expected a number, found NaN")
    return int(np.argmax(logits))   # numpy returns the first occurrence of the maximum


def top_indices(logits: np.ndarray, k: int) -> np.ndarray:
    """The first k indices in (logit descending, index ascending) order."""
    v = logits.shape[0]
    neg = -(logits.astype(np.float32) + np.float32(0.0))   # + 0.0 folds -0.0 into 0.0
    if k < v:
        # Only candidates at or above the k-th largest value can be kept; ties at the threshold keep
        # their lowest indices after the sort below.
        thr = np.partition(neg, k - 1)[k - 1]
        cand = np.flatnonzero(neg <= thr)
    else:
        cand = np.arange(v)
    order = cand[np.lexsort((cand, neg[cand]))]
    return order[:k]


class Sampler:
    """Picks the next token from last-position logits [V]; state = one SplitMix64 stream."""

    def __init__(self, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0):
        temperature, top_p = float(np.float32(temperature)), float(np.float32(top_p))
        if np.isnan(temperature):
            raise ValueError("sampler temperature: expected a number, found NaN")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"sampler top_p: expected 0 < top_p <= 1, found {top_p}")
        self.temperature, self.top_k, self.top_p, self.seed = temperature, int(top_k), top_p, int(seed)
        self.rng = SplitMix64(seed)

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    def __call__(self, logits) -> int:
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        if logits.shape[0] == 0:
            raise ValueError("logits: expected V > 0 values, found 0")
        if self.is_greedy:
            return argmax(logits)
        if np.isnan(logits).any():
            argmax(logits)   # raises, naming the first NaN
        k = min(self.top_k, logits.shape[0]) if self.top_k > 0 else logits.shape[0]
        order = top_indices(logits, k)
        kept = logits[order].astype(np.float64)
        if np.isinf(kept[0]):
            # every weight would be NaN and the pick would fall to the last kept index, which no logit chose
            raise ValueError(f"logits[{int(order[0])}]: expected a finite largest logit to sample from, "
                             f"found {kept[0]}")
        w = np.exp((kept - kept[0]) / self.temperature)                 # float64, in order
        run = np.cumsum(w)                                              # left-to-right running sums
        n = len(w)
        if self.top_p < 1.0:
            hit = np.flatnonzero(run >= self.top_p * run[-1])
            n = int(hit[0]) + 1 if len(hit) else n
        r = self.rng.next_double() * run[n - 1]
        above = np.flatnonzero(run[:n] > r)
        return int(order[above[0]] if len(above) else order[n - 1])
