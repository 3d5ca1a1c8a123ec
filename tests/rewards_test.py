"""Reward rules: confidence, verifier and their mix; stopping rules."""

import pytest

from marco_jax.errors import MarcoError
from marco_jax.search.config import SearchConfig
from marco_jax.search.rewards import Reward


def test_reward_rules():
    text = "<Output>The answer is 12</Output>"
    assert Reward(SearchConfig())(0.8, text, "12") == (0.8, True)
    assert Reward(SearchConfig())(0.8, text, None) == (0.8, None)
    assert Reward(SearchConfig(reward="verifier"))(0.8, text, "12") == (1.0, True)
    assert Reward(SearchConfig(reward="verifier"))(0.8, text, "13") == (0.0, False)
    assert Reward(SearchConfig(reward="verifier"))(0.8, None, "12") == (0.0, False)  # unfinished
    value, ok = Reward(SearchConfig(reward="mix", reward_weight=0.25))(0.8, text, "12")
    assert value == pytest.approx(0.25 + 0.75 * 0.8) and ok
    with pytest.raises(MarcoError, match="problem 'q7' has no answer"):
        Reward(SearchConfig(reward="mix")).check_gold("q7", None)
    Reward(SearchConfig()).check_gold("q7", None)  # confidence needs no gold


def test_stopping_rules():
    cfg = SearchConfig(stop_at_correct=8, stop_after_rollouts=32, stop_min_correct=4)
    assert cfg.stop_early(3, 8) and not cfg.stop_early(3, 7)
    assert cfg.stop_early(32, 4) and not cfg.stop_early(31, 4) and not cfg.stop_early(40, 3)
    assert not SearchConfig().stop_early(10_000, 10_000, 10_000)
    budget = SearchConfig(token_budget=500)
    assert budget.stop_early(1, 0, 500) and not budget.stop_early(1, 0, 499)
    with pytest.raises(MarcoError, match="reward must be one of"):
        SearchConfig(reward="votes")
