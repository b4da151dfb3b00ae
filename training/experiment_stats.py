"""Statistics of a conversion experiment, from per-variant counts only (numpy/scipy).

Inputs are what the analysis job aggregates in Spark: for each variant (or factorial cell) the
people enrolled and how many of them converted. Everything here is a pure function of those
counts, so it is tested on simulated counts in milliseconds.

* rates: Wilson score intervals (sane near 0 and for small groups, unlike the Wald interval);
* lift against control: relative lift with the log-ratio (Katz) interval, absolute difference
  with Newcombe's hybrid score interval;
* per-variant two-sided pooled two-proportion z-tests, Holm-adjusted across the variants
  (controls the family-wise error rate without assuming independence), plus the omnibus
  chi-square test of the variants × converted table;
* Bayesian P(variant beats control) from Beta(1 + conversions, 1 + non-conversions)
  posteriors, by seeded Monte Carlo;
* sample-ratio mismatch: chi-square goodness of fit of the people per variant against the
  configured weights; a tiny p-value means assignment or logging is broken and no other result
  should be trusted;
* multivariate (full factorial) tests: main effects and pairwise interactions as contrasts of
  the cell conversion rates (a linear-probability, ANOVA-style model: effects in percentage
  points, averaged over the other factors' levels), each level with a z-test and interval and
  each factor or pair of factors with a Wald chi-square test.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations, product

import numpy as np
from scipy import stats


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes, trials, confidence: float = 0.95):
    """Wilson score interval of a binomial proportion (arrays allowed); nan for 0 trials."""
    successes, trials = np.asarray(successes, float), np.asarray(trials, float)
    z = _z(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = successes / trials
        centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
        half = (z / (1 + z * z / trials)) * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials ** 2))
    return centre - half, centre + half


def difference_interval(c1, n1, c0, n0, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 - p0 (from the two Wilson intervals)."""
    p1, p0 = c1 / n1, c0 / n0
    l1, u1 = wilson_interval(c1, n1, confidence)
    l0, u0 = wilson_interval(c0, n0, confidence)
    d = p1 - p0
    return (float(d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)),
            float(d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)))


def lift_interval(c1, n1, c0, n0, confidence: float = 0.95) -> tuple[float, float, float]:
    """(relative lift p1/p0 - 1, low, high) by the log risk-ratio interval; nan without
    conversions on either side (the ratio is then undefined or unbounded)."""
    if c1 == 0 or c0 == 0:
        return (c1 / n1) / (c0 / n0) - 1 if c0 else math.nan, math.nan, math.nan
    ratio = (c1 / n1) / (c0 / n0)
    se = math.sqrt(1 / c1 - 1 / n1 + 1 / c0 - 1 / n0)
    z = _z(confidence)
    return ratio - 1, ratio * math.exp(-z * se) - 1, ratio * math.exp(z * se) - 1


def two_proportion_z_test(c1, n1, c0, n0) -> tuple[float, float]:
    """Pooled two-proportion z statistic and its two-sided p-value (1.0 when undefined)."""
    pooled = (c1 + c0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se == 0:
        return 0.0, 1.0
    z = (c1 / n1 - c0 / n0) / se
    return z, float(2 * stats.norm.sf(abs(z)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def chi_square_independence(converted, people) -> tuple[float, int, float]:
    """Omnibus test that all variants convert alike: (statistic, dof, p) of variants × outcome."""
    converted, people = np.asarray(converted, float), np.asarray(people, float)
    table = np.column_stack([converted, people - converted])
    table = table[people > 0]
    if len(table) < 2 or (table.sum(axis=0) == 0).any():
        return 0.0, max(len(table) - 1, 0), 1.0
    statistic, p, dof, _ = stats.chi2_contingency(table, correction=False)
    return float(statistic), int(dof), float(p)


def prob_beat_control(c1, n1, c0, n0, draws: int, rng: np.random.Generator) -> float:
    """P(rate1 > rate0) under independent Beta(1 + c, 1 + n - c) posteriors (Monte Carlo)."""
    variant = rng.beta(1 + c1, 1 + n1 - c1, draws)
    control = rng.beta(1 + c0, 1 + n0 - c0, draws)
    return float(np.mean(variant > control))


def sample_ratio_mismatch(people: Sequence[int], weights: Sequence[float],
                          alpha: float = 0.001) -> dict:
    """Chi-square goodness of fit of people per variant against the configured weights."""
    observed = np.asarray(people, float)
    expected_share = np.asarray(weights, float) / np.sum(weights)
    if observed.sum() == 0:
        return {"statistic": 0.0, "p_value": 1.0, "flagged": False, "expected": [0.0] * len(observed)}
    expected = expected_share * observed.sum()
    statistic, p = stats.chisquare(observed, expected)
    return {"statistic": float(statistic), "p_value": float(p), "flagged": bool(p < alpha),
            "expected": expected.tolist()}


def compare_variants(variants: Sequence[str], people: Sequence[int], converted: Sequence[int],
                     weights: Sequence[float], control: str, *, confidence: float = 0.95,
                     alpha: float = 0.05, srm_alpha: float = 0.001, draws: int = 100_000,
                     seed: int = 42) -> dict:
    """The A/B/n analysis: one row per variant (control first) plus the omnibus and SRM tests."""
    people = np.asarray(people, int)
    converted = np.asarray(converted, int)
    index = {name: i for i, name in enumerate(variants)}
    if control not in index:
        raise ValueError(f"control {control!r} is not among the variants {list(variants)}")
    c0, n0 = converted[index[control]], people[index[control]]
    low, high = wilson_interval(converted, people, confidence)
    rng = np.random.default_rng(seed)
    rows, tested = [], []
    for i, name in enumerate(variants):
        n, c = int(people[i]), int(converted[i])
        row = {"variant": name, "is_control": name == control, "people": n, "converted": c,
               "rate": c / n if n else math.nan, "rate_low": float(low[i]), "rate_high": float(high[i])}
        if name != control:
            comparable = n > 0 and n0 > 0
            lift = lift_interval(c, n, c0, n0, confidence) if comparable else (math.nan,) * 3
            diff = difference_interval(c, n, c0, n0, confidence) if comparable else (math.nan,) * 2
            z, p = two_proportion_z_test(c, n, c0, n0) if comparable else (math.nan, math.nan)
            row.update({"lift": lift[0], "lift_low": lift[1], "lift_high": lift[2],
                        "difference": c / n - c0 / n0 if comparable else math.nan,
                        "difference_low": diff[0], "difference_high": diff[1],
                        "z": z, "p_value": p,
                        "prob_beat_control": prob_beat_control(c, n, c0, n0, draws, rng)})
            tested.append(row)
        rows.append(row)
    adjusted = holm([row["p_value"] if not math.isnan(row["p_value"]) else 1.0 for row in tested])
    for row, p_adjusted in zip(tested, adjusted):
        row["p_value_adjusted"] = float(p_adjusted)
        row["significant"] = bool(p_adjusted < alpha)
    statistic, dof, p_all = chi_square_independence(converted, people)
    return {"control": control, "variants": rows,
            "chi_square": {"statistic": statistic, "dof": dof, "p_value": p_all},
            "srm": sample_ratio_mismatch(people, weights, srm_alpha),
            "settings": {"confidence": confidence, "alpha": alpha, "srm_alpha": srm_alpha,
                         "correction": "holm", "bayes_draws": draws, "seed": seed}}


def _contrast(shape: tuple[int, ...], axes: Sequence[int], levels: Sequence[int]) -> np.ndarray:
    """Cell weights of a (main or interaction) effect: the product over `axes` of
    (level - first level) indicators, averaged over every other factor."""
    weights = np.ones(shape)
    for axis, level in zip(axes, levels):
        indicator = np.zeros(shape[axis])
        indicator[level], indicator[0] = 1.0, -1.0
        weights = weights * indicator.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    others = math.prod(size for a, size in enumerate(shape) if a not in axes)
    return (weights / others).ravel()


def _effect(weights: np.ndarray, rate: np.ndarray, variance: np.ndarray, z: float) -> dict:
    estimate = float(weights @ rate)
    se = float(math.sqrt(weights ** 2 @ variance))
    p = float(2 * stats.norm.sf(abs(estimate / se))) if se > 0 else 1.0
    return {"estimate": estimate, "low": estimate - z * se, "high": estimate + z * se,
            "se": se, "p_value": p}


def _wald(matrix: np.ndarray, rate: np.ndarray, variance: np.ndarray) -> dict:
    estimate = matrix @ rate
    covariance = (matrix * variance) @ matrix.T
    statistic = float(estimate @ np.linalg.pinv(covariance) @ estimate)
    dof = matrix.shape[0]
    return {"statistic": statistic, "dof": dof, "p_value": float(stats.chi2.sf(statistic, dof))}


def factorial_effects(factors: Mapping[str, Sequence[str]], cells: Sequence[Mapping[str, str]],
                      people: Sequence[int], converted: Sequence[int],
                      confidence: float = 0.95) -> dict:
    """Main effects of each factor and pairwise interactions in a full factorial.

    `factors`: factor → levels, the first level the reference. Effects are differences of
    conversion rates (percentage points / 100) averaged over the other factors' levels; a main
    effect is "level vs reference", an interaction of two factors is the difference of
    differences (for 2×2: p11 - p10 - p01 + p00). Cell variances use (c + 0.5) / (n + 1) so an
    all-zero cell does not make a test degenerate.
    """
    names = list(factors)
    shape = tuple(len(factors[name]) for name in names)
    position = {tuple(cell[name] for name in names): i for i, cell in enumerate(cells)}
    ordered = [position.get(levels) for levels in product(*[factors[name] for name in names])]
    n = np.array([people[i] if i is not None else 0 for i in ordered], float)
    c = np.array([converted[i] if i is not None else 0 for i in ordered], float)
    if (n == 0).any():
        return {"estimable": False, "reason": "a factorial cell has no people", "factors": {},
                "interactions": []}
    rate = c / n
    smoothed = (c + 0.5) / (n + 1)
    variance = smoothed * (1 - smoothed) / n
    z = _z(confidence)
    report = {"estimable": True, "scale": "difference in conversion rate", "factors": {},
              "interactions": []}
    for axis, name in enumerate(names):
        rows = [_contrast(shape, [axis], [level]) for level in range(1, shape[axis])]
        report["factors"][name] = {
            "reference": factors[name][0],
            "levels": {factors[name][level]: _effect(row, rate, variance, z)
                       for level, row in zip(range(1, shape[axis]), rows)},
            "wald": _wald(np.array(rows), rate, variance)}
    for (a, first), (b, second) in combinations(enumerate(names), 2):
        pairs = list(product(range(1, shape[a]), range(1, shape[b])))
        rows = [_contrast(shape, [a, b], list(pair)) for pair in pairs]
        report["interactions"].append({
            "factors": [first, second],
            "contrasts": {f"{factors[first][i]}×{factors[second][j]}": _effect(row, rate, variance, z)
                          for (i, j), row in zip(pairs, rows)},
            "wald": _wald(np.array(rows), rate, variance)})
    return report
