"""Marco-o1 v2's tagged search, driven by a scripted policy that writes exact text."""

import dataclasses

import numpy as np
import pytest

from marco_jax.engine.engine import Completion, EngineConfig
from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.search.config import load_job_config
from marco_jax.search.results import Problem
from marco_jax.search.searcher import Searcher
from marco_jax.search.tagged import TaggedMCTS
from marco_jax.search.tree import ANSWER, CUT


@pytest.fixture(scope="module")
def tok():
    return load("builtin:tiny").tokenizer


class TextEngine:
    """Answers each request with ``write(context text)``, ending at the closing tag."""

    def __init__(self, tok, write, max_model_len=100_000):
        self.tok, self.write, self.queue, self.next_id = tok, write, [], 0
        self.config = EngineConfig(slots=8, max_model_len=max_model_len)
        self.contexts = []

    @property
    def has_work(self):
        return bool(self.queue)

    def submit(self, prompt, max_new_tokens, **_):
        assert max_new_tokens >= 1
        self.queue.append((self.next_id, list(prompt), max_new_tokens))
        self.next_id += 1
        return self.next_id - 1

    def step(self):
        done, self.queue = self.queue, []
        out = []
        for rid, prompt, budget in done:
            context = self.tok.decode(prompt)
            self.contexts.append(context)
            tokens = self.tok.encode(self.write(context), add_special_tokens=False)[:budget]
            n = len(tokens)
            out.append(Completion(rid, prompt, tokens, np.zeros(n), np.zeros((n, 5), int),
                                  np.zeros((n, 5)), np.full(n, 0.5), "stop", 0))
        return out


def open_tag(context):
    return context[context.rindex("<"):]


def writer(answer):
    """A policy that writes a line per node type and answers ``answer(context)``."""
    def write(context):
        tag = open_tag(context)
        if tag.startswith("<answer>"):
            return f" \\boxed{{{answer(context)}}}</answer>"
        return f" step of {tag.split('>')[0][1:]}</{tag.split('>')[0][1:]}>"
    return write


def job(**search):
    return load_job_config("v2-letters", **{"iterations": 12, "max_tokens": 100_000, **search})


def tagged(engines, tok, cfg, plan) -> Searcher:
    """v2's tagged search over ``engines``."""
    max_model_len = min(e.config.max_model_len for e in engines.values())
    return Searcher(TaggedMCTS(tok, cfg, plan, max_model_len), engines)


def run(tok, engine, cfg_job, gold="3", key="p"):
    search = tagged({"policy": engine}, tok, cfg_job.search, cfg_job.action_tree)
    prompt = tok.encode("Q: count the r in strawberry", add_special_tokens=False)
    [(k, result)] = list(search.stream([Problem(key, prompt, 7, gold)]))
    return result


def test_node_types_follow_the_action_tree(tok):
    result = run(tok, TextEngine(tok, writer(lambda c: 3)), job(iterations=1))
    tree = result.tree
    kinds = lambda node: [tree.kind(c) for c in tree.children(node)]
    assert kinds(0) == ["sub_task", "sub_task"]
    sub = tree.children(0)[0]
    assert kinds(sub) == ["thinking", "thinking"]
    thinking = tree.children(sub)[0]
    assert kinds(thinking) == ["double_check"] * 2 + ["thinking"] * 2
    check = tree.children(thinking)[0]
    assert kinds(check) == ["answer"]
    answer = tree.children(check)[0]
    assert result.best_path == [0, sub, thinking, check, answer]
    text = tok.decode(tree.tokens[answer])
    assert text == "<answer>The answer is: \\boxed{3}</answer>\n"
    assert tree.finish_n[answer] == ANSWER and tree.correct_n[answer] == 1
    prefill = tok.decode(tree.tokens[sub])
    assert prefill.startswith("<sub-task>") and prefill.endswith(" step of sub-task</sub-task>\n")
    # one prefill per expansion call: the two sub-tasks share it
    assert tree.tokens[tree.children(0)[1]] == tree.tokens[sub]


def test_a_wrong_answer_grows_reflection_under_its_nearest_double_check_only(tok):
    result = run(tok, TextEngine(tok, writer(lambda c: 4)), job(iterations=1))
    tree = result.tree
    [answer] = [n for n in range(tree.size) if tree.kind(n) == "answer"]
    check = int(tree.parent_n[answer])
    reflections = [n for n in range(tree.size) if tree.kind(n) == "reflection"]
    assert reflections and all(tree.parent_n[r] == check for r in reflections)
    assert tree.correct_n[answer] == 0 and result.correct == 0
    text = tok.decode(tree.tokens[reflections[0]])
    assert text in ("<reflection>Wait! something is wrong, let's think again.\n</reflection>\n",
                    "<reflection>Halt! I made a fatal mistake that made me rethink\n</reflection>\n")
    # more rollouts: every reflection sits beside the wrong answer that caused it
    result = run(tok, TextEngine(tok, writer(lambda c: 4)), job(iterations=40))
    tree = result.tree
    reflections = [n for n in range(tree.size) if tree.kind(n) == "reflection"]
    answers = [n for n in range(tree.size) if tree.kind(n) == "answer"]
    assert sorted(int(tree.parent_n[r]) for r in reflections) == \
        sorted(int(tree.parent_n[a]) for a in answers)
    grown = [r for r in reflections if len(tree.children(r))]
    assert grown and all([tree.kind(c) for c in tree.children(r)] == ["thinking_from_scratch"] * 2
                         for r in grown)


def test_reflection_only_after_a_wrong_answer(tok):
    result = run(tok, TextEngine(tok, writer(lambda c: 3)), job(iterations=3))
    assert not any(result.tree.kind(n) == "reflection" for n in range(result.tree.size))


def alternating():
    """Answers wrong, right, wrong, right, ... in the order they are written."""
    count = [0]

    def answer(context):
        count[0] += 1
        return 3 if count[0] % 2 == 0 else 4
    return writer(answer)


@pytest.mark.parametrize("rules, rollouts", [
    (dict(stop_at_correct=2), None),
    (dict(stop_after_rollouts=5, stop_min_correct=1), 5),
    (dict(stop_after_rollouts=3, stop_min_correct=50), 12),  # never enough correct: runs on
    ({}, 12),
])
def test_stopping_rules_stop_exactly_where_they_should(tok, rules, rollouts):
    result = run(tok, TextEngine(tok, alternating()), job(iterations=12, **rules))
    tree = result.tree
    answers = [n for n in range(tree.size) if tree.finish_n[n] == ANSWER]
    assert result.correct == sum(tree.correct_n[n] == 1 for n in answers)
    assert result.rollouts == tree.visits_n[0] and result.stopped_early == (result.rollouts < 12)
    if rollouts is not None:
        assert result.rollouts == rollouts
    if rules.get("stop_min_correct") == 1:
        assert result.correct >= 1
    if rules.get("stop_at_correct"):  # stopped at the rollout that found the 2nd correct answer
        assert result.correct == 2
        earlier = job(iterations=result.rollouts - 1, **rules)
        assert run(tok, TextEngine(tok, alternating()), earlier).correct == 1


def test_checker_types_go_to_the_second_engine(tok):
    plan = job().action_tree
    types = dict(plan.types)
    types["double_check"] = dataclasses.replace(types["double_check"], model="checker")
    plan = dataclasses.replace(plan, types=types)
    policy, checker = TextEngine(tok, writer(lambda c: 3)), TextEngine(tok, writer(lambda c: 3))
    search = tagged({"policy": policy, "checker": checker}, tok, job().search, plan)
    prompt = tok.encode("Q", add_special_tokens=False)
    list(search.stream([Problem("p", prompt, 0, "3")]))
    assert checker.contexts and all(open_tag(c).startswith("<double-check>")
                                    for c in checker.contexts)
    assert not any(open_tag(c).startswith("<double-check>") for c in policy.contexts)
    with pytest.raises(MarcoError, match="uses model\\(s\\) checker"):
        tagged({"policy": policy}, tok, job().search, plan)


def test_a_node_at_the_token_budget_ends_its_path(tok):
    engine = TextEngine(tok, writer(lambda c: 3))
    result = run(tok, engine, job(iterations=4, max_tokens=60))
    tree = result.tree
    assert result.rollouts == 4  # the engine refuses a budget < 1, so none was asked
    cut = [n for n in range(tree.size) if tree.finish_n[n] == CUT]
    assert cut and all(tree.rollout_value_n[n] == 0 for n in cut)
    assert all(tree.path_length(int(tree.parent_n[n])) - tree.path_length(0) < 60
               for n in range(1, tree.size))  # nodes start only inside the budget
    with pytest.raises(MarcoError, match="has no answer"):
        run(tok, engine, job(), gold=None)


def test_token_budget_stops_new_rollouts(tok):
    result = run(tok, TextEngine(tok, alternating()), job(iterations=50, token_budget=400))
    assert result.generated_tokens >= 400 and result.stopped_early
    shorter = run(tok, TextEngine(tok, alternating()),
                  job(iterations=result.rollouts - 1, token_budget=400))
    assert shorter.generated_tokens < 400  # the budget was crossed in the last rollout


def test_a_node_that_runs_into_another_tag_ends_before_it(tok):
    """The demo model writes ``<thinking>…<double-check>…`` without closing its
    node: the node ends before the first tag it writes, and the engine stops there."""
    def write(context):
        tag = open_tag(context).split(">")[0][1:]
        if tag == "answer":
            return " \\boxed{3}</answer>"
        return f" my {tag}<double-check> runaway</double-check><answer>9</answer>"
    result = run(tok, TextEngine(tok, write), job(iterations=1))
    tree = result.tree
    sub = tree.children(0)[0]
    assert tok.decode(tree.tokens[sub]).endswith(" my sub-task</sub-task>\n")
    assert all("runaway" not in tok.decode(tree.tokens[n]) for n in range(tree.size))
    assert result.correct == 1
    assert {"<double-check>", "</thinking>", "<answer>"} <= set(job().stops)
