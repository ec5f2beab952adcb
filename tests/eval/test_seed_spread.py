"""fusion/eval/seed_spread.py against hand-computed values and the normal distribution."""

from __future__ import annotations

from statistics import NormalDist

import pytest

from fusion.eval.seed_spread import gap, pass_probability, pooled_sd


def test_gap_and_its_standard_error():
    difference, error = gap([0.60, 0.64], [0.70, 0.62, 0.66])
    assert difference == pytest.approx(0.62 - 0.66)
    assert error == pytest.approx((0.0008 / 2 + 0.0016 / 3) ** 0.5)
    assert gap([0.6], [0.7, 0.5]) == (pytest.approx(0.0), None)


def test_pooled_sd_weighs_groups_by_their_degrees_of_freedom():
    sd, df = pooled_sd([[0.70, 0.60], [0.40, 0.42, 0.44], [0.5]])
    assert df == 3
    assert sd == pytest.approx(((0.05**2 * 2 + 0.02**2 * 2) / 3) ** 0.5)
    assert pooled_sd([[0.5], []]) == (None, 0)


def test_one_check_passes_as_the_normal_distribution_says():
    """One kind on one split: the gap of two means of `seeds` runs each is normal with sd * sqrt(2 / seeds)."""
    for seeds, better in ((2, 0.0), (4, 2.0)):
        expected = 1 - NormalDist(better, 4.0 * (2 / seeds) ** 0.5).cdf(-1.0)
        assert pass_probability(4.0, seeds, 1, 1, better=better, sweeps=40_000) == pytest.approx(expected, abs=0.01)


def test_more_checks_pass_less_often_and_a_better_model_more_often():
    one = pass_probability(4.0, 2, 1, 1, sweeps=20_000)
    twelve = pass_probability(4.0, 2, 3, 4, sweeps=20_000)
    assert twelve < one**4  # twelve checks, even sharing the unimodal row within a split
    assert pass_probability(4.0, 2, 3, 4, better=30.0, sweeps=2_000) == 1.0
