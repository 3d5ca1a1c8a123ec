"""Training data from search trees: verified chains for SFT, pairs of a correct
and a wrong (or unfinished) chain of the same problem for DPO (Marco-o1 v2's
recipe; its code for this step was never released).

A *chain* is everything a tree generated on the way to one complete answer, or
until the token budget cut it off: the texts of the nodes on its path (plus,
for a v1 tree, its rollout). Chains are re-verified here against the gold
answer, whatever the search recorded, so a changed verifier or a hand-edited
tree cannot leak a wrong chain into the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
from typing import Callable, Iterable, Sequence

from marco_jax.grading import final_answer
from marco_jax.errors import MarcoError
from marco_jax.prompts import OUTPUT_CLOSE, OUTPUT_OPEN, THOUGHT_CLOSE, THOUGHT_OPEN
from marco_jax.search.problems import read_problems
from marco_jax.search.record import TreeRecord

SELECTIONS = ("shortest", "median", "longest", "all")
FORMATS = ("marco", "tags")
EVAL_HASHES = pathlib.Path(__file__).resolve().parent.parent / "data" / "mgsm_questions.sha256"
_TAG = re.compile(r"<(/?)([a-z_\-]+)>")


# --rejected: which chains may be the rejected side, by whether they finished
REJECTED_FINISHED = {"wrong": (True,), "unfinished": (False,), "both": (False, True)}
REJECTED = tuple(REJECTED_FINISHED)


@dataclasses.dataclass(frozen=True)
class Chain:
    node: int
    text: str  # generated text after the prompt
    correct: bool  # a finished chain whose answer the verifier accepts
    finished: bool = True  # False: the token budget cut it off before an answer
    search: int = 0  # which of a problem's trees (searches) it comes from

    @property
    def label(self) -> str:
        """The chain's name within its problem: the node id, prefixed by the tree's
        index when the problem's chains come from several searches."""
        return f"{self.node}" if self.search == 0 else f"{self.search}.{self.node}"


def question_key(question: str) -> str:
    """A question's identity for leak checks: case and spacing do not matter."""
    return hashlib.sha256(" ".join(question.casefold().split()).encode()).hexdigest()


def eval_question_keys(extra: Sequence[pathlib.Path] = ()) -> set[str]:
    """Keys of every evaluation question we must never train on: MGSM (shipped
    as hashes) and the questions of any ``extra`` problem files."""
    keys = set(EVAL_HASHES.read_text().split())
    for path in extra:
        keys |= {question_key(p["question"]) for p in read_problems(path, "error")}
    return keys


def chains(tree: TreeRecord, verify: Callable[[str, str], bool], search: int = 0) -> list[Chain]:
    """Every chain of a tree (``scripts/search.py --trees``) that ended: the
    finished ones verified against the tree's gold answer, and those the token
    budget cut off (``finished=False``, never correct), which make the rejected
    side of pairs against running out of budget (looping, rambling)."""
    nodes = {n.id: n for n in tree.nodes}
    out = []
    for node in tree.nodes:
        v2_answer = node.finish == "answer" and not node.rollout_text
        v1_rollout = node.kind == "action" and node.rollout_finished
        cut = node.finish == "cut" or (node.kind == "action" and node.rollout_text
                                       and not node.rollout_finished)
        if not (v2_answer or v1_rollout or cut):
            continue
        path, n = [], node
        while n.parent >= 0:
            path.append(n.text)
            n = nodes[n.parent]
        text = "".join(reversed(path)) + node.rollout_text
        finished = not cut
        out.append(Chain(node.id, text, finished and verify(text, tree.answer), finished,
                         search))
    return out


def select(correct: list[Chain], how: str) -> list[Chain]:
    """Distinct correct chains of one tree, picked by relative length (characters)."""
    if how not in SELECTIONS:
        raise MarcoError(f"selection must be one of {', '.join(SELECTIONS)}, got {how!r}")
    distinct = sorted({c.text: c for c in correct}.values(), key=lambda c: (len(c.text), c.node))
    if how == "all" or not distinct:
        return distinct
    index = {"shortest": 0, "median": (len(distinct) - 1) // 2, "longest": -1}[how]
    return [distinct[index]]


def render(text: str, form: str, finished: bool = True) -> str:
    """A chain as the assistant turn: raw v2 tags (``tags``), or Marco-o1's
    ``<Thought>…</Thought>\\n<Output>…</Output>`` (``marco``): the tagged
    reasoning becomes the thought, the answer node the output. A plain chain
    (a v1 or sampling tree's) becomes the thought, and its own final answer,
    boxed, the output; one already in Marco-o1's format, or with no answer to
    state, is kept as it is. An unfinished plain chain becomes a thought that
    never closes: the budget cut it before any output, so none is invented."""
    if form not in FORMATS:
        raise MarcoError(f"format must be one of {', '.join(FORMATS)}, got {form!r}")
    if form == "tags" or THOUGHT_OPEN in text:
        return text
    if not finished:
        parts = _TAG.split(text)[::3] if _TAG.match(text.lstrip()) else [text]
        return THOUGHT_OPEN + "\n" + "\n\n".join(p.strip() for p in parts if p.strip())
    if "<answer>" not in text:
        answer = final_answer(text)
        if answer is None:
            return text
        return (f"{THOUGHT_OPEN}\n{text.strip()}\n{THOUGHT_CLOSE}\n{OUTPUT_OPEN}\n"
                f"The answer is: \\boxed{{{answer}}}\n{OUTPUT_CLOSE}")
    head, _, answer = text.rpartition("<answer>")
    answer = answer.split("</answer>", 1)[0].strip()
    thought = "\n\n".join(part.strip() for part in _TAG.split(head)[::3] if part.strip())
    return f"{THOUGHT_OPEN}\n{thought}\n{THOUGHT_CLOSE}\n{OUTPUT_OPEN}\n{answer}\n{OUTPUT_CLOSE}"


def shared_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def pairs(tree: TreeRecord, found: list[Chain], encode: Callable[[str], list[int]],
          form: str, cap: int, rejected: str = "wrong") -> list[dict]:
    """Up to ``cap`` (correct, rejected) pairs of one problem, each correct and each
    rejected chain used as evenly as possible. Rejected chains are the wrong
    finished ones, the unfinished ones, or ``both`` (unfinished first). A correct
    chain is paired first with the rejected chain it shares the longest prefix
    with (a sibling branch: the pair differs where the mistake is)."""
    if rejected not in REJECTED:
        raise MarcoError(f"rejected must be one of {', '.join(REJECTED)}, got {rejected!r}")
    distinct = sorted({c.text: c for c in found}.values(), key=lambda c: (c.search, c.node))
    right = [c for c in distinct if c.correct]
    wrong = [c for c in distinct
             if not c.correct and c.finished in REJECTED_FINISHED[rejected]]
    if not right or not wrong:
        return []
    texts = {c: render(c.text, form, c.finished) for c in right + wrong}
    tokens = {c: encode(text) for c, text in texts.items()}
    used: dict[Chain, int] = {}
    out = []
    for turn in range(cap):
        chosen = right[turn % len(right)]
        rejected_chain = max(wrong, key=lambda w: (-used.get(w, 0), not w.finished,
                                                   shared_prefix(tokens[chosen], tokens[w]),
                                                   -w.search, -w.node))
        pair_id = f"{tree.id}:{chosen.label}-{rejected_chain.label}"
        if any(p["id"] == pair_id for p in out):
            break  # every combination is used
        used[rejected_chain] = used.get(rejected_chain, 0) + 1
        out.append({"id": pair_id, "tree": tree.id,
                    "prompt": [{"role": "user", "content": tree.question}],
                    "chosen": texts[chosen], "rejected": texts[rejected_chain],
                    "chosen_node": chosen.node, "rejected_node": rejected_chain.node,
                    "chosen_search": chosen.search, "rejected_search": rejected_chain.search,
                    "rejected_finished": rejected_chain.finished,
                    "shared_prefix_tokens": shared_prefix(tokens[chosen],
                                                          tokens[rejected_chain]),
                    "answer": tree.answer})
    return out


def sft_records(tree: TreeRecord, found: list[Chain], how: str, form: str) -> list[dict]:
    return [{"id": f"{tree.id}:{c.label}", "tree": tree.id,
             "messages": [{"role": "user", "content": tree.question},
                          {"role": "assistant", "content": render(c.text, form)}]}
            for c in select([c for c in found if c.correct], how)]


def export(trees: Iterable[TreeRecord], verify: Callable[[str, str], bool],
           encode: Callable[[str], list[int]], how: str = "shortest", form: str = "marco",
           cap: int = 4, refused: set[str] = frozenset(), rejected: str = "wrong",
           ) -> tuple[list[dict], list[dict], dict]:
    """SFT records, preference pairs and counts from trees. SFT chains are chosen
    per tree; pairs per problem, over the chains of every tree of that question
    (several searches of the same problems, e.g. the base model's trees for the
    correct side and a later model's unfinished chains for the rejected side).
    A tree whose question is an evaluation question (``refused`` keys) is refused
    with an error."""
    sft, seen = [], set()
    problems: dict[str, list[tuple[TreeRecord, list[Chain]]]] = {}
    counts = {"trees": 0, "solved": 0, "chains": 0, "correct": 0, "unfinished": 0}
    for tree in trees:
        if tree.answer is None:
            raise MarcoError(f"tree {tree.id!r} has no gold answer to verify against")
        key = question_key(tree.question)
        if key in refused:
            raise MarcoError(f"tree {tree.id!r}: its question is an evaluation (MGSM) "
                             "question; never train on it")
        group = problems.setdefault(key, [])
        if group and str(group[0][0].answer) != str(tree.answer):
            raise MarcoError(f"trees {group[0][0].id!r} and {tree.id!r} ask the same "
                             f"question with different gold answers ({group[0][0].answer!r}, "
                             f"{tree.answer!r})")
        found = chains(tree, verify, search=len(group))
        group.append((tree, found))
        records = sft_records(tree, found, how, form)
        for record in records:  # the same question and answer text once, across trees too
            answer = (key, record["messages"][-1]["content"])
            if answer not in seen:
                seen.add(answer)
                sft.append(record)
        counts["trees"] += 1
        counts["solved"] += bool(records)
        counts["chains"] += sum(c.finished for c in found)
        counts["correct"] += sum(c.correct for c in found)
        counts["unfinished"] += sum(not c.finished for c in found)
    prefs = [pair for group in problems.values()
             for pair in pairs(group[0][0], [c for _, found in group for c in found], encode,
                               form, cap, rejected)]
    return sft, prefs, counts
