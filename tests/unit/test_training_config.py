"""The training section is checked before Spark starts."""
import pytest

from jobs.config import ConfigError, load_config
from jobs.train_recommender import check_training_config


def test_default_training_config_is_valid():
    check_training_config(load_config(environ={}).training)


@pytest.mark.parametrize("override, message", [
    ("training.model=wide_and_deep", "unknown recommender"),
    ("training.params.ease.lambda=3", "unexpected keyword"),
    ("training.baselines=[popularity, magic]", "magic"),
])
def test_unknown_models_and_parameters_are_refused(override, message):
    config = load_config(None, [override], environ={})
    with pytest.raises(ConfigError, match=message):
        check_training_config(config.training)


def test_tuning_needs_a_space_for_every_tuned_model():
    config = load_config(None, ["training.tuning.models=[als, popularity]", "training.tuning.enabled=true"],
                         environ={})
    with pytest.raises(ConfigError, match="no search space for model 'popularity'"):
        check_training_config(config.training)


def test_without_tuned_models_the_configured_model_is_tuned():
    config = load_config(None, ["training.model=popularity", "training.tuning.models=[]"], environ={})
    with pytest.raises(ConfigError, match="no search space for model 'popularity'"):
        check_training_config(config.training)


def test_default_search_covers_iterations_and_every_weighting():
    """Issue 6: tuning searches factors, regularization, alpha, iterations and weighting."""
    tuning = load_config(environ={}).training.tuning
    assert {"factors", "regularization", "alpha", "iterations"} <= set(tuning.space["als"])
    assert {w.weighting for w in tuning.weightings} == {"none", "bm25", "tfidf"}
    assert {w.binarize for w in tuning.weightings} == {False, True}
