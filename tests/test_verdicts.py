"""The statistics behind a study's verdicts (pipeline/verdicts.py), on numbers worked by hand.

Closed forms used for the p-values: Student's t with 2 degrees of freedom has two-sided
p = 1 - t / sqrt(2 + t^2); with 4, p = 1 - 1.5 u + 0.5 u^3 where u = t / sqrt(4 + t^2). Quantiles
with 2 degrees of freedom: t_q = (2q - 1) / sqrt(2 q (1 - q)); with 4, the table's t_0.975 = 2.776445
and t_0.8 = 0.940965.
"""

from __future__ import annotations

import math

import pytest

from pipeline import verdicts as V


def seeds(values: list[float], chain: int = 0) -> dict[str, float]:
    return {f"c{chain}-s{i}": v for i, v in enumerate(values)}


def test_welch_where_the_two_standard_error_rule_and_the_t_test_disagree():
    """Three seeds a side, sd 0.02 each, means 0.04 apart: 2.45 standard errors. The old rule called
    it reproduced; Welch's t on 4 degrees of freedom gives p = 0.0705, not below 0.05."""
    better = seeds([0.70, 0.72, 0.74], chain=0)
    worse = seeds([0.66, 0.68, 0.70], chain=1)  # other seeds: not paired
    c = V.compare(better, worse)
    assert c.test == "Welch t" and c.n == (3, 3)
    se = math.sqrt(2 * 0.02**2 / 3)  # 0.0163299
    assert c.diff == pytest.approx(0.04) and c.se == pytest.approx(se) and c.df == pytest.approx(4)
    assert c.t == pytest.approx(math.sqrt(6))
    u = math.sqrt(0.6)  # t / sqrt(4 + t^2) with t^2 = 6
    assert c.p == pytest.approx(1 - 1.5 * u + 0.5 * u**3) and c.p == pytest.approx(0.070484, abs=1e-6)
    assert c.ci == pytest.approx((0.04 - 2.776445 * se, 0.04 + 2.776445 * se), abs=1e-6)
    assert c.detectable == pytest.approx((2.776445 + 0.940965) * se, abs=1e-6)  # 0.0607: more than 0.04
    assert c.d == pytest.approx(2.0)  # 0.04 / 0.02
    assert V.two_se_rule(c) == "reproduced"
    assert V.verdict(c) == "not distinguishable"
    assert V.verdict(c, alpha=0.1) == "reproduced"  # the level decides, and is stated
    assert V.verdict(V.compare(worse, better)) == "not distinguishable"
    assert V.verdict(V.compare(worse, better), alpha=0.1) == "opposite"


def test_welch_with_unequal_spreads_and_counts_uses_the_satterthwaite_degrees_of_freedom():
    c = V.welch(0.2, 0.1, 3, 0.5, math.sqrt(0.02), 5)
    va, vb = 0.01 / 3, 0.02 / 5
    assert c.se == pytest.approx(math.sqrt(va + vb))
    assert c.df == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 4)) and c.df == pytest.approx(5.62791, abs=1e-5)
    assert c.diff == pytest.approx(-0.3) and c.p < 0.05 and V.verdict(c) == "opposite"


def test_runs_with_the_same_seeds_are_paired():
    """Differences 0.03, 0.05, 0.04 (mean 0.04, sd 0.01): t = 4 sqrt(3) on 2 degrees of freedom,
    p = 1 - sqrt(48 / 50) = 0.0202."""
    better = seeds([0.73, 0.75, 0.74])
    worse = seeds([0.70, 0.70, 0.70])
    c = V.compare(better, worse)
    assert c.test == "paired t" and c.n == (3, 3) and c.df == 2
    assert c.t == pytest.approx(4 * math.sqrt(3))
    assert c.p == pytest.approx(1 - math.sqrt(0.96)) and c.p == pytest.approx(0.020204, abs=1e-6)
    se = 0.01 / math.sqrt(3)
    t_q = [(2 * q - 1) / math.sqrt(2 * q * (1 - q)) for q in (0.975, 0.8)]  # 4.302653, 1.060660
    assert c.ci == pytest.approx((0.04 - t_q[0] * se, 0.04 + t_q[0] * se))
    assert c.detectable == pytest.approx(sum(t_q) * se) and c.detectable == pytest.approx(0.030965, abs=1e-6)
    assert c.d == pytest.approx(4.0)  # 0.04 / 0.01
    assert V.verdict(c) == "reproduced"
    # the pairs are matched by seed, not by order
    shuffled = {"c0-s2": 0.74, "c0-s0": 0.73, "c0-s1": 0.75}
    assert V.compare(shuffled, worse).p == pytest.approx(c.p)


def test_a_variant_with_more_chains_is_compared_on_the_seeds_both_ran():
    """`better` ran chains 0 and 1, `worse` chain 0 only: the test pairs the three chain-0 seeds
    (differences 0.1, 0.15, 0.05: mean 0.1, sd 0.05, t = 2 sqrt(3) on 2 degrees of freedom,
    p = 1 - sqrt(12 / 14) = 0.0742); chain 1's low scores, which `worse` has no text run to match,
    do not enter it. Welch over all runs would compare chain 0 and 1 against chain 0 alone."""
    better = {**seeds([0.5, 0.6, 0.7]), **seeds([0.1, 0.2, 0.3], chain=1)}
    worse = seeds([0.4, 0.45, 0.65])
    assert V.shared_seeds(better, worse) == ["c0-s0", "c0-s1", "c0-s2"]
    c = V.compare(better, worse)
    assert c.test == "paired t" and c.n == (3, 3) and c.df == 2
    assert c.diff == pytest.approx(0.1) and c.t == pytest.approx(2 * math.sqrt(3))
    assert c.p == pytest.approx(1 - math.sqrt(12 / 14)) and c.p == pytest.approx(0.074180, abs=1e-6)
    assert V.compare(better, seeds([0.4, 0.45, 0.65], chain=2)).test == "Welch t"  # no seed in common


def test_over_whole_chains_the_pairs_of_one_text_run_count_once():
    """Differences 1, 3 | 2, 2 | 5, 3 in chains 0, 1, 2: paired over the 6 runs t = 4.78 on 5 df
    (p = 0.005); over the chain means 2, 2, 4 (mean 8/3, sd 2 / sqrt 3, SE 2/3) t = 4 on
    2 df, p = 1 - 4 / sqrt(18) = 0.0572: the run-level test says reproduced, the chain-level not."""
    better = {**seeds([1, 3]), **seeds([2, 2], chain=1), **seeds([5, 3], chain=2)}
    worse = {k: 0.0 for k in better}
    runs, chains = V.compare(better, worse), V.by_chain(better, worse)
    assert runs.df == 5 and runs.p == pytest.approx(0.005, abs=5e-4) and V.verdict(runs) == "reproduced"
    assert chains.n == (3, 3) and chains.df == 2 and chains.diff == pytest.approx(8 / 3)
    assert chains.t == pytest.approx(4) and chains.p == pytest.approx(1 - 4 / math.sqrt(18))
    assert V.verdict(chains) == "not distinguishable"
    assert V.by_chain(seeds([1, 3]), seeds([0, 0])) is None  # one chain: nothing to test across
    assert V.by_chain(better, seeds([0, 0])) is None  # the chains both ran: chain 0 only


def test_runs_that_do_not_vary_and_runs_without_a_second_seed():
    same = V.compare(seeds([0.5, 0.5]), seeds([0.5, 0.5]))
    assert same.p == 1.0 and V.verdict(same) == "not distinguishable"
    certain = V.compare(seeds([0.6, 0.6]), seeds([0.5, 0.5]))  # paired: every difference 0.1
    assert certain.p == 0.0 and certain.t == math.inf and V.verdict(certain) == "reproduced"
    one = V.compare(seeds([0.9]), seeds([0.5, 0.6]))
    assert one.test == "none" and one.diff == pytest.approx(0.35)
    assert V.verdict(one) == "not distinguishable (one seed: no noise estimate)"


def test_the_spread_splits_into_study_seeds_and_chain_seeds():
    """Chain 0: 1, 3 (mean 2); chain 1: 5, 7 (mean 6). Within chains: (1 + 1 + 1 + 1) / 2 = 2.
    Chain means' variance 8, less within / 2 seeds per chain: 7."""
    out = V.spread({(0, 0): 1.0, (0, 1): 3.0, (1, 0): 5.0, (1, 1): 7.0})
    assert out["chains"] == 2
    assert out["study_seed_sd"] == pytest.approx(math.sqrt(2)) and out["chain_sd"] == pytest.approx(math.sqrt(7))
    one_chain = V.spread({(0, 0): 1.0, (0, 1): 3.0})
    assert one_chain["study_seed_sd"] == pytest.approx(math.sqrt(2)) and math.isnan(one_chain["chain_sd"])
    # chains no further apart than their own seeds make them: no chain component
    assert V.spread({(0, 0): 1.0, (0, 1): 3.0, (1, 0): 1.0, (1, 1): 3.0})["chain_sd"] == 0.0
