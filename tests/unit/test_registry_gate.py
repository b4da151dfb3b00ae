"""The champion gate and the rollback chain, as pure functions."""
import pytest

from training.registry import (CHALLENGER, CHAMPION, RegistryError, decide, rollback_target)


def test_first_model_becomes_champion():
    decision = decide(0.1, None)
    assert decision.alias == CHAMPION and decision.champion_version is None


def test_better_by_more_than_the_margin_wins():
    assert decide(0.42, 0.40, margin=0.01, champion_version="3").alias == CHAMPION


def test_worse_or_within_the_margin_is_a_challenger():
    assert decide(0.39, 0.40).alias == CHALLENGER
    assert decide(0.405, 0.40, margin=0.01).alias == CHALLENGER
    assert decide(0.41, 0.40, margin=0.01).alias == CHALLENGER  # exactly the margin: not more


def test_a_tie_keeps_the_incumbent():
    """Re-running the same recipe on the same data must not churn the champion."""
    assert decide(0.4, 0.4).alias == CHALLENGER


def test_negative_margin_is_refused():
    with pytest.raises(ValueError):
        decide(0.5, 0.4, margin=-0.1)


def test_decision_as_dict_names_both_scores():
    gate = decide(0.5, 0.4, champion_version="2").as_dict("ndcg_at_10")
    assert gate == {"decision": CHAMPION, "candidate_ndcg_at_10": 0.5,
                    "champion_ndcg_at_10": 0.4, "champion_version": "2",
                    "promotion_margin": 0.0}


def test_rollback_goes_to_the_recorded_previous_champion():
    assert rollback_target("5", "3") == "3"
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback_target("1", None)
