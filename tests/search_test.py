"""MCTS as an engine client: rewards, streaming, reproducibility, and the review bugs
(each driven through ``Searcher.run``)."""

import dataclasses

import numpy as np
import pytest

from marco_jax.engine.engine import Completion, Engine, EngineConfig
from marco_jax.errors import MarcoError
from marco_jax.search.config import JobConfig, SearchConfig
from marco_jax.search.environment import ReasoningEnv
from marco_jax.search.job_files import choose
from marco_jax.search.driver import row_seed
from marco_jax.search.mcts import MCTS
from marco_jax.search.results import Problem
from marco_jax.search.searcher import Searcher
from marco_jax.search.tree import ANSWER, CUT
from marco_jax.sharding import make_mesh

REFLECTION = SearchConfig.reflection_text  # v1's text, the default
CFG = SearchConfig(action="mini_step", mini_step_tokens=3, children=2, iterations=3,
                   call_tokens=8, max_tokens=20, temperature=1.0, top_p=0.95)
ENGINE = EngineConfig(slots=8, decode_steps=4, block_size=8, max_model_len=2048,
                      kv_cache_gb=0.02, prefill_shapes=((4, 16), (1, 64)))


def search(engine, tokenizer, cfg, max_trees=None) -> Searcher:
    """v1's MCTS over one engine."""
    return Searcher(MCTS(tokenizer, cfg, engine.config.max_model_len), {"policy": engine},
                    max_trees)


def engine(tiny, **kw):
    return Engine(tiny.model, tiny.eos_ids, dataclasses.replace(ENGINE, **kw))


def prompts(tokenizer, n):
    return [tokenizer.encode(f"question {i}: 2+{i}=", add_special_tokens=False) for i in range(n)]


def test_reward_is_mean_confidence_of_the_rollout(tiny):
    cfg = dataclasses.replace(CFG, iterations=1)
    [result] = search(engine(tiny), tiny.tokenizer, cfg).run(prompts(tiny.tokenizer, 1))
    tree = result.tree
    prompt = tree.tokens[0]
    reference = engine(tiny)
    for k, child in enumerate(tree.children(0)):
        # The same request alone: same seed, so the same tokens and log-probabilities.
        [out] = reference.generate([prompt], 8, temperature=1.0, top_p=0.95,
                                   seed=row_seed(CFG.seed, 0, 0, k))
        c = np.exp(out.logprobs) / np.exp(out.top_logprobs).sum(-1)  # by hand, from the top-5
        assert tree.tokens[child] + tree.rollouts[child] == out.tokens
        action = len(tree.tokens[child])
        expected = c[action:].mean() if len(out.tokens) > action else c.mean()
        assert tree.rollout_value_n[child] == pytest.approx(expected, rel=1e-5)
        assert tree.visits_n[child] == 1
    assert tree.visits_n[0] == 2


def test_action_nodes_keep_the_models_scores_of_their_tokens(tiny):
    """What the tree page shows for each token of a node: the confidence and top-5 the
    engine computed when it sampled the token (a reflection, written by the search, has none)."""
    cfg = dataclasses.replace(CFG, iterations=1)
    [result] = search(engine(tiny), tiny.tokenizer, cfg).run(prompts(tiny.tokenizer, 1))
    tree = result.tree
    reference = engine(tiny)
    assert tree.action_scores[0] is None
    for k, child in enumerate(tree.children(0)):
        [out] = reference.generate([tree.tokens[0]], 8, temperature=1.0, top_p=0.95,
                                   seed=row_seed(CFG.seed, 0, 0, k))
        n = len(tree.tokens[child])
        kept = tree.action_scores[child]
        assert len(kept.confidence) == n
        np.testing.assert_allclose(kept.confidence, out.confidences[:n], rtol=1e-6)
        np.testing.assert_array_equal(kept.top_ids, out.top_ids[:n])
        np.testing.assert_allclose(kept.top_logprobs, out.top_logprobs[:n], rtol=1e-6)


def test_trees_do_not_depend_on_their_companions_or_the_mesh(tiny):
    ps = prompts(tiny.tokenizer, 5)
    first = search(engine(tiny), tiny.tokenizer, CFG).run(ps)
    alone = search(engine(tiny), tiny.tokenizer, CFG).run(ps[2:3], problem_seeds=[2])
    few_slots = search(engine(tiny, slots=2), tiny.tokenizer, CFG, max_trees=1).run(ps)
    mesh = make_mesh(data=4, fsdp=1, tensor=2)
    sharded = search(Engine(tiny.model, tiny.eos_ids, ENGINE, mesh=mesh), tiny.tokenizer,
                     CFG).run(ps)
    pairs = [(first[2], alone[0])] + list(zip(first, few_slots)) + list(zip(first, sharded))
    for a, b in pairs:
        assert a.tree.tokens == b.tree.tokens and a.best_tokens == b.best_tokens
        np.testing.assert_array_equal(a.tree.visits_n, b.tree.visits_n)
        np.testing.assert_allclose(a.tree.value_sum_n, b.tree.value_sum_n, rtol=1e-5)
    assert first[0].tree.tokens != first[1].tree.tokens
    assert first[0].tree.visits_n[0] == CFG.iterations * CFG.children


def test_problems_stream_and_paths_reuse_cached_blocks(tiny):
    long_prompts = [p * 5 for p in prompts(tiny.tokenizer, 6)]  # several blocks each
    cfg = dataclasses.replace(CFG, mini_step_tokens=20, call_tokens=40, max_tokens=200,
                              iterations=4)
    served = engine(tiny, slots=4)
    searcher = search(served, tiny.tokenizer, cfg, max_trees=2)
    started, finished = [], []
    for key, result in searcher.stream((Problem(i, p, i) for i, p in enumerate(long_prompts)),
                                     on_start=started.append):
        finished.append(key)
        assert len(started) - len(finished) <= 1  # a new tree starts only as one finishes
        assert max(result.tree.depth_n) >= 2  # continued from its own earlier actions
    assert sorted(finished) == list(range(6))
    stats = served.stats
    assert stats.cached_tokens > stats.prefilled_tokens  # paths came from the prefix cache
    assert served.blocks.held == 0


# ---- review bugs, through Search.run with a scripted engine ----------------------------

class ScriptedEngine:
    """Answers every request with ``script(prompt, max_new_tokens)`` -> (tokens, reason)."""

    def __init__(self, script, slots=8):
        self.script, self.queue, self.next_id = script, [], 0
        self.config = EngineConfig(slots=slots)
        self.asked = []

    def submit(self, prompt, max_new_tokens, **_):
        if max_new_tokens < 1:
            raise MarcoError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.asked.append((list(prompt), max_new_tokens))
        self.queue.append((self.next_id, list(prompt), max_new_tokens))
        self.next_id += 1
        return self.next_id - 1

    @property
    def has_work(self):
        return bool(self.queue)

    def step(self):
        done, self.queue = self.queue, []
        out = []
        for rid, prompt, budget in done:
            tokens, reason = self.script(prompt, budget)
            n = len(tokens)
            out.append(Completion(rid, prompt, tokens, np.zeros(n), np.zeros((n, 5), int),
                                  np.zeros((n, 5)), np.full(n, 0.5), reason, 0))
        return out


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_several_children_closing_the_thought_each_get_a_reflection(tiny):
    tok = tiny.tokenizer
    closing = ids(tok, "x=2</Thought>\n\n")
    cfg = SearchConfig(action="step", step_delimiter="\n\n", children=3, iterations=2,
                       reflection=True, call_tokens=32, max_tokens=64)
    fake = ScriptedEngine(lambda prompt, budget: (closing + ids(tok, "<Output>2"), "stop"))
    [result] = search(fake, tok, cfg).run([ids(tok, "q")])
    kinds = [result.tree.kind_n[c] for c in result.tree.children(0)]
    assert kinds.count(2) == 3 and kinds.count(1) == 3  # every closing child has its sibling
    reflection = next(c for c in result.tree.children(0) if result.tree.kind_n[c] == 2)
    assert REFLECTION in tok.decode(result.tree.tokens[reflection])
    assert result.tree.action_scores[reflection] is None  # the search wrote it, not the model


def test_a_reflection_at_the_token_budget_is_cut_not_an_error(tiny):
    tok = tiny.tokenizer
    cfg = SearchConfig(action="step", step_delimiter="\n\n", step_max_tokens=64, children=1,
                       iterations=4, reflection=True, call_tokens=64, max_tokens=12)
    closing = ids(tok, "ab</Thought>\n\n")  # the reflection is longer than the budget left

    def script(prompt, budget):
        return (closing + ids(tok, "<Output>"))[:budget], "length"

    fake = ScriptedEngine(script)
    [result] = search(fake, tok, cfg).run([ids(tok, "q")])
    tree = result.tree
    reflections = [n for n in range(tree.size) if tree.kind_n[n] == 2]
    assert reflections and all(tree.finish_n[n] == CUT for n in reflections)
    assert all(budget >= 1 for _, budget in fake.asked)
    assert tree.visits_n[0] == cfg.iterations


def test_a_path_cut_by_the_budget_is_never_chosen_over_a_finished_one(tiny):
    tok = tiny.tokenizer
    finished = ids(tok, "The answer is 7.")
    cut = ids(tok, "Let me think about this more and more and")

    def script(prompt, budget):  # the first child of the root ends; the others run out
        script.calls += 1
        return (finished, "eos") if script.calls == 1 else (cut[:budget], "length")
    script.calls = 0
    cfg = SearchConfig(action="mini_step", mini_step_tokens=4, children=3, iterations=3,
                       call_tokens=12, max_tokens=12, temperature=1.0)
    [result] = search(ScriptedEngine(script), tok, cfg).run([ids(tok, "q")])
    tree = result.tree
    assert sum(c.finished for c in result.candidates) == 1
    best = next(c for c in result.candidates if c.finished)
    assert result.best_tokens == best.tokens == finished
    assert tree.finish_n[result.best_path[-1]] in (ANSWER, 0)
    for final in ("most_visited", "max_value", "vote"):
        job = JobConfig(name="t", search=cfg, final=final)
        text, _ = choose(result, final, tok.decode)
        assert text == tok.decode(finished), job.final


def test_prompts_longer_than_1024_tokens_search(tiny):
    tok = tiny.tokenizer
    long_prompt = (ids(tok, "a long question with many words ") * 200)[:1100]
    cfg = dataclasses.replace(CFG, iterations=2)
    [result] = search(engine(tiny), tok, cfg).run([long_prompt])
    assert result.tree.visits_n[0] == cfg.iterations * cfg.children


def test_step_actions_and_reflection_text(tiny):
    tok = tiny.tokenizer
    env = ReasoningEnv(tok, SearchConfig(action="step", step_delimiter="\n\n", step_max_tokens=6,
                                         reflection=True))
    a_b = ids(tok, "a b\n\nc")
    assert env.action_length(a_b) == len("a b\n\n")
    assert env.action_length(ids(tok, "abcdefghij")) == 6
    thought = ids(tok, "<Thought>x=2</Thought>")
    assert tok.decode(env.reflection(thought)) == f"<Thought>x=2\n\n{REFLECTION}\n\n"
    assert env.reflection(a_b) is None
    own = ReasoningEnv(tok, SearchConfig(action="step", reflection=True, reflection_text="Hm."))
    assert tok.decode(own.reflection(thought)) == "<Thought>x=2\n\nHm.\n\n"
    with pytest.raises(MarcoError, match="action must be"):
        SearchConfig(action="leap")


def test_verifier_reward_and_early_stop_in_the_v1_search(tiny):
    tok = tiny.tokenizer
    texts = [ids(tok, "so it is 7."), ids(tok, "so it is 8.")]

    def script(prompt, budget):  # children alternate right and wrong answers, each finished
        script.calls += 1
        return texts[script.calls % 2 == 0][:budget], "eos"
    script.calls = 0
    cfg = SearchConfig(action="mini_step", mini_step_tokens=4, children=2, iterations=6,
                       call_tokens=16, max_tokens=64, reward="verifier", stop_at_correct=2)
    [result] = search(ScriptedEngine(script), tok, cfg).run([ids(tok, "q")], golds=["7"])
    values = {c.value for c in result.candidates}
    assert values == {0.0, 1.0}
    assert all(c.correct == (c.value == 1.0) for c in result.candidates)
    assert result.correct == 2 and result.stopped_early  # 2 right answers after 2 iterations
    assert result.tree.visits_n[0] == 2 * cfg.children
    with pytest.raises(MarcoError, match="has no answer"):
        search(ScriptedEngine(script), tok, cfg).run([ids(tok, "q")])


def test_a_wrong_answer_gets_a_reflection_sibling_that_continues_it(tiny):
    tok = tiny.tokenizer
    right, wrong = ids(tok, "so it is 7."), ids(tok, "so it is 8.")
    text = "Wait, that is wrong."

    def script(prompt, budget):  # the root's first child is wrong, its second right;
        script.calls += 1       # after a reflection the model gets it right
        if text in tok.decode(prompt):
            return right, "eos"
        return (wrong if script.calls % 2 else right) + [tiny.eos_ids[0]], "eos"
    script.calls = 0
    cfg = SearchConfig(action="step", step_delimiter="\n\n", children=2, iterations=2,
                       call_tokens=16, max_tokens=64, reward="verifier",
                       reflect_wrong="continue", reflection_text=text)
    [result] = search(ScriptedEngine(script), tok, cfg).run([ids(tok, "q")], golds=["7"])
    tree = result.tree
    first, reflection, second = tree.children(0)  # the reflection follows its chain
    assert [tree.kind(n) for n in (first, reflection, second)] == ["action", "reflection",
                                                                   "action"]
    assert (tree.correct_n[first], tree.correct_n[second]) == (0, 1)
    # It continues the wrong chain (its end-of-turn token dropped), and only that one.
    assert tok.decode(tree.tokens[reflection]) == f"so it is 8.\n\n{text}\n\n"
    # Unvisited, it is the next leaf UCT expands; both its children are right.
    assert [tree.correct_n[c] for c in tree.children(reflection)] == [1, 1]
    assert result.correct == 3 and tree.visits_n[0] == 4
    with pytest.raises(MarcoError, match="reflect_wrong needs a verifier"):
        SearchConfig(reflect_wrong="continue")
    with pytest.raises(MarcoError, match="reflect_wrong must be one of"):
        SearchConfig(reward="verifier", reflect_wrong="yes")
    with pytest.raises(MarcoError, match="a tagged search reflects through its action tree"):
        SearchConfig(action="tagged", reward="verifier", reflect_wrong="restart")


def test_restart_reflection_starts_over_from_the_root_naming_the_wrong_answer(tiny):
    tok = tiny.tokenizer
    text = "I got {answer}, which is wrong. Again:"

    def script(prompt, budget):  # wrong (8, then 9 after a restart) until told 9 is wrong
        told = tok.decode(prompt)
        if "I got 9" in told:
            return ids(tok, "so it is 7."), "eos"
        return ids(tok, "so it is 9." if "I got 8" in told else "so it is 8."), "eos"
    cfg = SearchConfig(action="step", step_delimiter="\n\n", children=2, iterations=3,
                       call_tokens=16, max_tokens=64, reward="verifier",
                       reflect_wrong="restart", reflection_text=text)
    [result] = search(ScriptedEngine(script), tok, cfg).run([ids(tok, "q")], golds=["7"])
    tree = result.tree
    root_kids = tree.children(0)
    reflections = [n for n in range(tree.size) if tree.kind(n) == "reflection"]
    # One reflection per distinct wrong answer, each a child of the root, never deeper.
    assert [tok.decode(tree.tokens[n]) for n in reflections] == [
        "I got 8, which is wrong. Again:\n\n", "I got 9, which is wrong. Again:\n\n"]
    assert all(n in root_kids for n in reflections)
    first, second = reflections
    assert [tree.correct_n[c] for c in tree.children(first)] == [0, 0]
    assert [tree.correct_n[c] for c in tree.children(second)] == [1, 1]
    assert result.correct == 2
