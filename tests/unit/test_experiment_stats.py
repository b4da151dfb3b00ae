"""Experiment statistics on simulated counts: known effects found, A/A tests not, SRM flagged.

Every simulation is seeded, so each assertion is about one fixed draw; the tolerances say why
that draw is not a lucky one.
"""
import math

import numpy as np
import pytest
from scipy import stats

from training.experiment_stats import (
    chi_square_independence, compare_variants, difference_interval, factorial_effects, holm,
    lift_interval, sample_ratio_mismatch, two_proportion_z_test, wilson_interval)


def simulate(rates, people, seed):
    """Converted counts for groups of `people` converting at `rates`."""
    return np.random.default_rng(seed).binomial(people, rates)


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), table I: 0/10 → (0, 0.2775); 5/10 → (0.2366, 0.7634).
    low, high = wilson_interval([0, 5], [10, 10])
    assert low == pytest.approx([0.0, 0.2366], abs=1e-4)
    assert high == pytest.approx([0.2775, 0.7634], abs=1e-4)


def test_newcombe_difference_and_log_ratio_lift():
    # Newcombe (1998), table II example (h): 56/70 vs 48/80 → difference 0.2, (0.0524, 0.3339).
    assert difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    lift, low, high = lift_interval(120, 1000, 100, 1000)
    assert lift == pytest.approx(0.2)
    assert low < 0.2 < high and math.log(1 + high) - math.log(1.2) == pytest.approx(
        math.log(1.2) - math.log(1 + low))  # symmetric on the log scale
    assert math.isnan(lift_interval(5, 100, 0, 100)[1])


def test_z_test_agrees_with_chi_square_and_holm_is_step_down():
    z, p = two_proportion_z_test(130, 1000, 100, 1000)
    statistic, dof, p_chi = chi_square_independence([130, 100], [1000, 1000])
    assert z > 0 and dof == 1 and statistic == pytest.approx(z * z) and p_chi == pytest.approx(p)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # monotone: never below an earlier one


def test_known_effect_is_detected_with_the_right_sign():
    people = [20_000, 20_000, 20_000]
    converted = simulate([0.10, 0.10, 0.12], people, seed=1)  # only "green" works: +20 %
    result = compare_variants(["control", "blue", "green"], people, converted,
                              [1 / 3] * 3, "control")
    control, blue, green = result["variants"]
    assert control["is_control"] and "p_value" not in control
    assert green["p_value_adjusted"] < 0.01 and green["significant"]
    assert green["lift"] > 0 and green["lift_low"] > 0 and green["difference_low"] > 0
    assert green["prob_beat_control"] > 0.99
    assert green["rate_low"] < 0.12 < green["rate_high"]
    assert not blue["significant"] and 0.01 < blue["prob_beat_control"] < 0.99
    assert result["chi_square"]["p_value"] < 0.01
    assert not result["srm"]["flagged"]


def test_a_worse_variant_gets_a_negative_lift():
    converted = simulate([0.10, 0.08], [20_000, 20_000], seed=2)
    _, worse = compare_variants(["a", "b"], [20_000, 20_000], converted, [0.5, 0.5], "a")["variants"]
    assert worse["significant"] and worse["lift_high"] < 0 and worse["prob_beat_control"] < 0.01


def test_an_a_a_test_is_not_detected():
    converted = simulate([0.1, 0.1], [20_000, 20_000], seed=3)
    _, same = compare_variants(["a", "b"], [20_000, 20_000], converted, [0.5, 0.5], "a")["variants"]
    assert not same["significant"] and same["lift_low"] < 0 < same["lift_high"]


def test_false_positive_rate_of_200_a_a_tests_is_nominal():
    """At alpha 0.05 the count of false positives in 200 independent A/A tests is
    Binomial(200, 0.05): mean 10, sd 3.1. Its 99.9 % central interval, 2..21, fails a correct
    test once in a thousand seeds, yet a test at triple the nominal rate (mean 30) lands
    inside it only ~4 % of the time, and one that never fires (an over-conservative test) not
    at all."""
    rng = np.random.default_rng(4)
    hits, omnibus_hits, family_hits = 0, 0, 0
    for _ in range(200):
        people = [5_000, 5_000]
        converted = rng.binomial(people, 0.05)
        result = compare_variants(["a", "b"], people, converted, [0.5, 0.5], "a", draws=1000)
        hits += result["variants"][1]["p_value"] < 0.05
        omnibus_hits += result["chi_square"]["p_value"] < 0.05
        four = rng.binomial([3_000] * 4, 0.05)
        family = compare_variants(list("abcd"), [3_000] * 4, four, [0.25] * 4, "a", draws=1000)
        family_hits += any(row.get("significant") for row in family["variants"])
    low, high = stats.binom.ppf([0.0005, 0.9995], 200, 0.05)
    assert low <= hits <= high
    assert low <= omnibus_hits <= high
    # Holm keeps the family-wise rate of a 4-arm A/A at most alpha (below it: tests correlate).
    assert family_hits <= high


def test_a_planted_sample_ratio_mismatch_is_flagged():
    # 50/50 configured, 10,000 vs 10,600 seen: chi-square 17.5, p ≈ 3e-5.
    planted = sample_ratio_mismatch([10_000, 10_600], [0.5, 0.5])
    assert planted["flagged"] and planted["p_value"] < 0.001
    fair = np.random.default_rng(5).multinomial(30_000, [0.5, 0.25, 0.25])
    assert not sample_ratio_mismatch(fair, [0.5, 0.25, 0.25])["flagged"]
    result = compare_variants(["a", "b"], [10_000, 10_600], [1000, 1060], [0.5, 0.5], "a")
    assert result["srm"]["flagged"]


def test_empty_variant_and_zero_conversions_do_not_crash():
    result = compare_variants(["a", "b", "c"], [1000, 0, 1000], [0, 0, 0], [1 / 3] * 3, "a")
    _, empty, none = result["variants"]
    assert math.isnan(empty["rate"]) and math.isnan(empty["p_value"])
    assert none["p_value"] == 1.0 and not none["significant"]
    assert result["srm"]["flagged"]


def factorial_counts(effect_a, effect_b, interaction, people, seed, base=0.10):
    cells = [{"a": a, "b": b} for a in ("a0", "a1") for b in ("b0", "b1")]
    rates = [base + effect_a * (c["a"] == "a1") + effect_b * (c["b"] == "b1")
             + interaction * (c["a"] == "a1") * (c["b"] == "b1") for c in cells]
    return cells, simulate(rates, [people] * 4, seed)


def test_two_by_two_factorial_recovers_the_one_real_main_effect():
    cells, converted = factorial_counts(0.03, 0.0, 0.0, 5_000, seed=6)
    report = factorial_effects({"a": ["a0", "a1"], "b": ["b0", "b1"]}, cells, [5_000] * 4, converted)
    a = report["factors"]["a"]["levels"]["a1"]
    b = report["factors"]["b"]["levels"]["b1"]
    (interaction,) = report["interactions"][0]["contrasts"].values()
    assert a["p_value"] < 0.01 and a["low"] < 0.03 < a["high"] and a["estimate"] > 0
    assert report["factors"]["a"]["wald"]["p_value"] == pytest.approx(a["p_value"], rel=1e-6)
    assert b["p_value"] > 0.05 and b["low"] < 0 < b["high"]
    assert interaction["p_value"] > 0.05 and interaction["low"] < 0 < interaction["high"]


def test_factorial_contrasts_on_exact_rates_and_a_three_level_factor():
    # Exact rates (no noise): effects are read off the cell means.
    cells = [{"a": a, "b": b} for a in ("x", "y") for b in ("p", "q", "r")]
    rates = {("x", "p"): .10, ("x", "q"): .10, ("x", "r"): .16,
             ("y", "p"): .12, ("y", "q"): .12, ("y", "r"): .22}
    people = [100_000] * 6
    converted = [round(rates[(c["a"], c["b"])] * 100_000) for c in cells]
    report = factorial_effects({"a": ["x", "y"], "b": ["p", "q", "r"]}, cells, people, converted)
    assert report["factors"]["a"]["levels"]["y"]["estimate"] == pytest.approx((0.02 + 0.02 + 0.06) / 3)
    assert report["factors"]["b"]["levels"]["q"]["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert report["factors"]["b"]["levels"]["r"]["estimate"] == pytest.approx((0.06 + 0.10) / 2)
    contrasts = report["interactions"][0]["contrasts"]
    assert contrasts["y×q"]["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert contrasts["y×r"]["estimate"] == pytest.approx(0.04)
    assert report["interactions"][0]["wald"]["dof"] == 2
    assert report["interactions"][0]["wald"]["p_value"] < 1e-6


def test_factorial_with_an_empty_cell_is_not_estimable():
    cells = [{"a": "a0", "b": "b0"}, {"a": "a1", "b": "b0"}, {"a": "a0", "b": "b1"}]
    report = factorial_effects({"a": ["a0", "a1"], "b": ["b0", "b1"]}, cells, [10, 10, 10], [1, 2, 3])
    assert not report["estimable"]
