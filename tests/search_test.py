"""The lock-step MCTS on a tiny random model: rewards, device calls, reproducibility."""

import numpy as np
import pytest

from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.sampler import Sampler
from marco_jax.search.config import SearchConfig
from marco_jax.search.engine import REFLECTION, Search, _row_seed

CFG = SearchConfig(action="mini_step", mini_step_tokens=3, children=2, iterations=3,
                   call_tokens=8, max_tokens=20, temperature=1.0, top_p=0.95)


@pytest.fixture(scope="module")
def tiny():
    loaded = load("builtin:tiny")
    return loaded, Sampler(loaded.model, loaded.eos_ids)


def prompts(tokenizer, n):
    return [tokenizer.encode(f"question {i}: 2+{i}=", add_special_tokens=False) for i in range(n)]


def test_reward_is_mean_confidence_of_the_rollout(tiny):
    loaded, sampler = tiny
    search = Search(sampler, loaded.tokenizer, CFG.__class__(**{**CFG.__dict__, "iterations": 1}))
    [result] = search.run(prompts(loaded.tokenizer, 1))
    tree = result.tree
    prompt = tree.tokens[0]
    for k, child in enumerate(tree.children(0)):
        # Re-run the same row alone: same seed, so the same tokens and log-probs.
        gen = sampler.generate([prompt], 8, temperature=1.0, top_p=0.95,
                               seed=[_row_seed(CFG.seed, 0, 0, k)])
        n = gen.lengths[0]
        lp, top = gen.logprobs[0, :n], gen.top_logprobs[0, :n]
        c = np.exp(lp) / np.exp(top).sum(-1)  # by hand, from the top-5 log-probabilities
        assert tree.tokens[child] + tree.rollouts[child] == gen.row_tokens(0)
        action = len(tree.tokens[child])
        expected = c[action:].mean() if n > action else c.mean()
        assert tree.rollout_value_n[child] == pytest.approx(expected, rel=1e-5)
        assert tree.visits_n[child] == 1
    assert tree.visits_n[0] == 2


def test_device_calls_do_not_grow_with_problems(tiny):
    loaded, sampler = tiny
    calls = []
    for p in (1, 4):
        search = Search(sampler, loaded.tokenizer, CFG)
        search.run(prompts(loaded.tokenizer, p))
        calls.append(search.device_calls)
        assert max(search.rows_per_call) <= 2 * p
    assert calls == [CFG.iterations + 1] * 2  # + 1: the roots' prompts, prefilled once


def test_same_seed_same_search_and_independent_of_companions(tiny):
    loaded, sampler = tiny
    ps = prompts(loaded.tokenizer, 3)
    first = Search(sampler, loaded.tokenizer, CFG).run(ps)
    again = Search(sampler, loaded.tokenizer, CFG).run(ps)
    alone = Search(sampler, loaded.tokenizer, CFG).run(ps[2:], problem_seeds=[2])
    for a, b in ((first[0], again[0]), (first[2], again[2]), (first[2], alone[0])):
        assert a.tree.tokens == b.tree.tokens and a.best_tokens == b.best_tokens
        np.testing.assert_array_equal(a.tree.visits_n, b.tree.visits_n)
        np.testing.assert_allclose(a.tree.value_sum_n, b.tree.value_sum_n, rtol=1e-6)
    assert first[0].tree.tokens != first[1].tree.tokens
    assert first[0].tree.visits_n[0] == CFG.iterations * CFG.children


def test_reflection_and_step_actions(tiny):
    loaded, sampler = tiny
    tok = loaded.tokenizer
    cfg = SearchConfig(action="step", step_delimiter="\n\n", step_max_tokens=6, reflection=True)
    search = Search(sampler, tok, cfg)
    ids = tok.encode("a b\n\nc", add_special_tokens=False)
    assert search._action_length(ids) == len("a b\n\n")
    assert search._action_length(tok.encode("abcdefghij", add_special_tokens=False)) == 6
    thought = tok.encode("<Thought>x=2</Thought>", add_special_tokens=False)
    assert tok.decode(search._reflection_tokens(thought)) == f"<Thought>x=2\n\n{REFLECTION}\n\n"
    assert search._reflection_tokens(ids) is None
    with pytest.raises(MarcoError, match="action must be"):
        SearchConfig(action="leap")


def test_reusing_cached_blocks_gives_the_same_search(tiny):
    loaded, sampler = tiny
    long_prompts = [p * 5 for p in prompts(loaded.tokenizer, 2)]  # several 32-token blocks
    cfg = SearchConfig(action="mini_step", mini_step_tokens=40, children=2, iterations=4,
                       call_tokens=48, max_tokens=200, temperature=1.0, top_p=0.95)
    paged = Search(sampler, loaded.tokenizer, cfg)
    with_cache = paged.run(long_prompts)
    plain = Search(sampler, loaded.tokenizer, SearchConfig(**{**cfg.__dict__, "reuse_kv": False}))
    without = plain.run(long_prompts)
    for a, b in zip(with_cache, without):
        assert a.tree.tokens == b.tree.tokens
        np.testing.assert_allclose(a.tree.value_sum_n, b.tree.value_sum_n, rtol=1e-4)
        assert max(a.tree.depth_n) >= 2  # continued from cached actions, not only the root
    assert paged.generated_tokens == plain.generated_tokens
    assert paged.prefilled_tokens < plain.prefilled_tokens / 2
