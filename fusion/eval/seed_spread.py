"""How far runs over a few seeds can tell two models apart: gaps with their standard errors, the seed-to-seed
spread pooled over groups of runs, and the chance that a set of "at most `line` under" checks passes."""

from __future__ import annotations

import random
import statistics


def gap(fused: list[float], unimodal: list[float]) -> tuple[float, float | None]:
    """Difference of the seed means, fused - unimodal, and its standard error from the two rows' seed spreads
    (Welch: sqrt(s_f^2 / n_f + s_u^2 / n_u)); the error is None where a row has fewer than two seeds."""
    difference = statistics.fmean(fused) - statistics.fmean(unimodal)
    if min(len(fused), len(unimodal)) < 2:
        return difference, None
    return difference, (statistics.variance(fused) / len(fused) + statistics.variance(unimodal) / len(unimodal)) ** 0.5


def pooled_sd(groups: list[list[float]]) -> tuple[float | None, int]:
    """Standard deviation of one run across seeds, pooled over groups of repeated runs (e.g. the audio-only model of
    every split), and its degrees of freedom; (None, 0) without a group of two or more."""
    groups = [g for g in groups if len(g) > 1]
    df = sum(len(g) - 1 for g in groups)
    if not df:
        return None, 0
    return (sum((v - statistics.fmean(g)) ** 2 for g in groups for v in g) / df) ** 0.5, df


def pass_probability(sd: float, seeds: int, kinds: int, splits: int, line: float = 1.0, better: float = 0.0,
                     sweeps: int = 200_000, seed: int = 0) -> float:
    """Share of simulated sweeps in which every one of `kinds` fused models on every one of `splits` splits is at
    most `line` under the unimodal model of that split. Every row is a mean of `seeds` runs with seed-to-seed
    spread `sd`; the fused models are `better` higher on average; the unimodal row is shared within a split."""
    rng, spread = random.Random(seed), sd / seeds**0.5
    passed = 0
    for _ in range(sweeps):
        passed += all(rng.gauss(better, spread) - unimodal >= -line
                      for unimodal in (rng.gauss(0.0, spread) for _ in range(splits)) for _ in range(kinds))
    return passed / sweeps
