"""Does one variant of a study beat another? The statistics behind a study report's verdicts.

A study runs every variant with the same seeds (pipeline/study.py): runs of two variants with the
same chain seed and study seed share the text run, the projector's initialisation and the data
order. Their scores are then compared paired by seed (a one-sample t-test of the per-seed
differences), which removes what the seed does to both; where one variant ran more chains than the
other, over the seeds both ran. Where no seeds match, Welch's t-test, which does not assume equal
variances. Both tests are two-sided at a stated level `alpha`:
a difference is *reproduced* or *opposite* only when p < alpha, whatever its size.

Power: the smallest difference the same test would find with probability `power` (80 %) at that
level, from the observed spread, (t[1 - alpha/2, df] + t[power, df]) x SE (the usual approximation
to the noncentral t). A "not distinguishable" with a detectable difference far above the effect
the paper reports says the study was too small to tell, not that the effect is absent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from scipy import stats

ALPHA = 0.05  # the level of every verdict unless `study.alpha` says otherwise
POWER = 0.8


@dataclass(frozen=True)
class Comparison:
    """`better` against `worse` on one metric."""

    test: str  # "paired t" | "Welch t" | "none" (fewer than two runs on a side: no noise estimate)
    n: tuple[int, int]  # runs of better, of worse (pairs: both the same)
    diff: float  # mean(better) - mean(worse)
    se: float  # standard error of diff
    df: float  # degrees of freedom (Welch-Satterthwaite for Welch)
    t: float
    p: float  # two-sided
    ci: tuple[float, float]  # the (1 - alpha) confidence interval of diff
    d: float  # standardised effect: diff / sd of the differences (paired), / root mean variance (Welch)
    detectable: float  # the smallest |diff| this test finds with probability POWER at level alpha

    def to_json(self) -> dict:
        return asdict(self)


def mean_var(xs: list[float]) -> tuple[float, float]:
    """The mean and the sample variance (ddof 1; NaN for one value)."""
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else math.nan)


def _t_test(test: str, n: tuple[int, int], diff: float, se: float, df: float, scale: float,
            alpha: float) -> Comparison:
    """The t statistic, p, interval and power of `diff` with standard error `se` on `df` degrees of
    freedom. All runs alike (se 0) make any nonzero difference certain and none detectable but 0."""
    if se == 0:
        t = math.copysign(math.inf, diff) if diff else 0.0
        p = 0.0 if diff else 1.0
    else:
        t = diff / se
        p = float(2 * stats.t.sf(abs(t), df))
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    half = critical * se
    detectable = (critical + float(stats.t.ppf(POWER, df))) * se
    d = diff / scale if scale else (math.copysign(math.inf, diff) if diff else 0.0)
    return Comparison(test, n, diff, se, df, t, p, (diff - half, diff + half), d, detectable)


def welch(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
          alpha: float = ALPHA) -> Comparison:
    """Welch's t-test of mean_a - mean_b from each side's mean, sample sd (ddof 1) and count."""
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite; with no spread on either side the pooled df is all there is
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1)) if va + vb else n_a + n_b - 2.0
    return _t_test("Welch t", (n_a, n_b), mean_a - mean_b, se, df, math.sqrt((sd_a**2 + sd_b**2) / 2), alpha)


def paired(diffs: list[float], alpha: float = ALPHA) -> Comparison:
    """The one-sample t-test of per-seed differences better - worse."""
    m, var = mean_var(diffs)
    n = len(diffs)
    return _t_test("paired t", (n, n), m, math.sqrt(var / n), n - 1.0, math.sqrt(var), alpha)


def shared_seeds(better: Mapping[str, float], worse: Mapping[str, float]) -> list[str]:
    """The seeds both sides ran, where they are two or more: the runs a comparison pairs. A variant
    that ran more chains than the other is compared on the chains both ran, like with like (its
    other text runs would otherwise enter one side's mean and spread only)."""
    shared = sorted(set(better) & set(worse))
    return shared if len(shared) >= 2 else []


def compare(better: Mapping[str, float], worse: Mapping[str, float], alpha: float = ALPHA) -> Comparison:
    """`better` and `worse`: {run seed (e.g. "c0-s1"): score}. Paired over the seeds both sides ran
    (`shared_seeds`), else Welch; "none" when a side has fewer than two runs."""
    a, b = list(better.values()), list(worse.values())
    if len(a) < 2 or len(b) < 2:
        nan = math.nan
        diff = (sum(a) / len(a) - sum(b) / len(b)) if a and b else nan
        return Comparison("none", (len(a), len(b)), diff, nan, nan, nan, nan, (nan, nan), nan, nan)
    if shared := shared_seeds(better, worse):
        return paired([better[k] - worse[k] for k in shared], alpha)
    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    return welch(ma, math.sqrt(va), len(a), mb, math.sqrt(vb), len(b), alpha)


def by_chain(better: Mapping[str, float], worse: Mapping[str, float], alpha: float = ALPHA) -> Comparison | None:
    """The paired test over whole chains: each chain's mean difference over the study seeds both
    sides ran in it, tested across the chains (df = chains - 1). Runs of one chain share a text run,
    so `compare`'s pairs are not independent when chains differ; this check does not assume they
    are. None where the two sides share fewer than two chains."""
    per_chain: dict[str, list[float]] = {}
    for key in shared_seeds(better, worse):
        per_chain.setdefault(key.split("-")[0], []).append(better[key] - worse[key])
    if len(per_chain) < 2:
        return None
    return paired([sum(d) / len(d) for d in per_chain.values()], alpha)


def verdict(c: Comparison, alpha: float = ALPHA) -> str:
    """reproduced (better is better, p < alpha), opposite (worse is better, p < alpha), or not."""
    if c.test == "none":
        return "not distinguishable (one seed: no noise estimate)"
    if c.p < alpha:
        return "reproduced" if c.diff > 0 else "opposite"
    return "not distinguishable"


def two_se_rule(c: Comparison) -> str:
    """The verdict of the rule these reports used before: means more than two standard errors of
    their difference apart. Kept to show where it and the t-test disagree (with 3 seeds a t-test
    needs about 2.8 SE at 5 %)."""
    if c.test == "none" or abs(c.diff) <= 2 * c.se:
        return "not distinguishable"
    return "reproduced" if c.diff > 0 else "opposite"


def spread(runs: Mapping[tuple[int, int], float]) -> dict:
    """The two sources of seed noise of one variant, from its runs {(chain seed, study seed): score}
    (a one-way random-effects analysis, chains as groups):

    - `study_seed_sd`: the spread between study seeds of the same text run (pooled within chains);
    - `chain_sd`: the spread that whole chains add on top: sqrt(var(chain means) - within / k), k the
      study seeds per chain (harmonic mean), floored at 0; NaN with fewer than two chains."""
    chains: dict[int, list[float]] = {}
    for (chain, _), value in sorted(runs.items()):
        chains.setdefault(chain, []).append(value)
    per_chain = [(len(xs), *mean_var(xs)) for xs in chains.values()]  # (n, mean, variance)
    within_df = sum(n - 1 for n, _, _ in per_chain)
    within = sum((n - 1) * var for n, _, var in per_chain if n > 1) / within_df if within_df else math.nan
    out = {"chains": len(chains), "study_seed_sd": math.sqrt(within), "chain_sd": math.nan}
    if len(chains) >= 2:
        between = mean_var([m for _, m, _ in per_chain])[1]
        k = len(per_chain) / sum(1 / n for n, _, _ in per_chain)
        out["chain_sd"] = math.sqrt(max(0.0, between - (within / k if within_df else 0.0)))
    return out
