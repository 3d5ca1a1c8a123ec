"""Training data from search trees: verified chains for SFT, correct-vs-wrong
pairs of the same tree for DPO (Marco-o1 v2's recipe; its code for this step
was never released).

A *chain* is everything a tree generated on the way to one complete answer: the
texts of the nodes on its path (plus, for a v1 tree, the rollout that finished
it). Chains are re-verified here against the gold answer, whatever the search
recorded, so a changed verifier or a hand-edited tree cannot leak a wrong
chain into the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from typing import Any, Callable, Iterable, Sequence

from marco_jax.answers import extract_answer
from marco_jax.errors import MarcoError
from marco_jax.prompts import OUTPUT_CLOSE, OUTPUT_OPEN, THOUGHT_CLOSE, THOUGHT_OPEN
from marco_jax.search.problems import read_problems

SELECTIONS = ("shortest", "median", "longest", "all")
FORMATS = ("marco", "tags")
EVAL_HASHES = pathlib.Path(__file__).resolve().parent.parent / "data" / "mgsm_questions.sha256"
_TAG = re.compile(r"<(/?)([a-z_\-]+)>")


@dataclasses.dataclass(frozen=True)
class Chain:
    node: int
    text: str  # generated text after the prompt
    correct: bool


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


def chains(tree: dict, verify: Callable[[str, str], bool]) -> list[Chain]:
    """Every finished chain of a tree JSON (``scripts/search.py --tree-dir``),
    verified against the tree's gold answer."""
    nodes = {n["id"]: n for n in tree["nodes"]}
    out = []
    for node in tree["nodes"]:
        v2_answer = node["finish"] == "answer" and not node.get("rollout_text")
        v1_rollout = node["kind"] == "action" and node.get("rollout_finished")
        if not (v2_answer or v1_rollout):
            continue
        path, n = [], node
        while n["parent"] >= 0:
            path.append(n["text"])
            n = nodes[n["parent"]]
        text = "".join(reversed(path)) + (node.get("rollout_text") or "")
        out.append(Chain(node["id"], text, verify(text, tree["answer"])))
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


def render(text: str, form: str) -> str:
    """A chain as the assistant turn: raw v2 tags (``tags``), or Marco-o1's
    ``<Thought>…</Thought>\\n<Output>…</Output>`` (``marco``): the tagged
    reasoning becomes the thought, the answer node the output. A plain chain
    (a v1 or sampling tree's) becomes the thought, and its own final answer,
    boxed, the output; one already in Marco-o1's format, or with no answer to
    state, is kept as it is."""
    if form not in FORMATS:
        raise MarcoError(f"format must be one of {', '.join(FORMATS)}, got {form!r}")
    if form == "tags" or THOUGHT_OPEN in text:
        return text
    if "<answer>" not in text:
        answer = extract_answer(text)
        if answer is None:
            return text
        return (f"{THOUGHT_OPEN}\n{text.strip()}\n{THOUGHT_CLOSE}\n{OUTPUT_OPEN}\n"
                f"The answer is: \\boxed{{{answer}}}\n{OUTPUT_CLOSE}")
    head, _, answer = text.rpartition("<answer>")
    answer = answer.split("</answer>", 1)[0].strip()
    thought = "\n\n".join(part.strip() for part in _TAG.split(head)[::3] if part.strip())
    return f"{THOUGHT_OPEN}\n{thought}\n{THOUGHT_CLOSE}\n{OUTPUT_OPEN}\n{answer}\n{OUTPUT_CLOSE}"


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pairs(tree: dict, found: list[Chain], encode: Callable[[str], list[int]],
          form: str, cap: int) -> list[dict]:
    """Up to ``cap`` (correct, wrong) pairs of one tree, each correct and each
    wrong chain used as evenly as possible; a correct chain is paired first with
    the wrong chain it shares the longest prefix with (a sibling branch: the
    pair differs where the mistake is)."""
    right = sorted({c.text: c for c in found if c.correct}.values(), key=lambda c: c.node)
    wrong = sorted({c.text: c for c in found if not c.correct}.values(), key=lambda c: c.node)
    if not right or not wrong:
        return []
    tokens = {c.node: encode(render(c.text, form)) for c in right + wrong}
    used: dict[int, int] = {}
    out = []
    for turn in range(cap):
        chosen = right[turn % len(right)]
        rejected = max(wrong, key=lambda w: (-used.get(w.node, 0),
                                             shared_prefix(tokens[chosen.node], tokens[w.node]),
                                             -w.node))
        if any(p["chosen_node"] == chosen.node and p["rejected_node"] == rejected.node
               for p in out):
            break  # every combination is used
        used[rejected.node] = used.get(rejected.node, 0) + 1
        out.append({"id": f"{tree['id']}:{chosen.node}-{rejected.node}", "tree": tree["id"],
                    "prompt": [{"role": "user", "content": tree["question"]}],
                    "chosen": render(chosen.text, form), "rejected": render(rejected.text, form),
                    "chosen_node": chosen.node, "rejected_node": rejected.node,
                    "shared_prefix_tokens": shared_prefix(tokens[chosen.node],
                                                          tokens[rejected.node]),
                    "answer": tree["answer"]})
    return out


def sft_records(tree: dict, found: list[Chain], how: str, form: str) -> list[dict]:
    return [{"id": f"{tree['id']}:{c.node}", "tree": tree["id"],
             "messages": [{"role": "user", "content": tree["question"]},
                          {"role": "assistant", "content": render(c.text, form)}]}
            for c in select([c for c in found if c.correct], how)]


def export(trees: Iterable[dict], verify: Callable[[str, str], bool],
           encode: Callable[[str], list[int]], how: str = "shortest", form: str = "marco",
           cap: int = 4, refused: set[str] = frozenset()) -> tuple[list[dict], list[dict], dict]:
    """SFT records, preference pairs and counts from trees; a tree whose question
    is an evaluation question (``refused`` keys) is refused with an error."""
    sft, prefs, seen = [], [], set()
    counts = {"trees": 0, "solved": 0, "chains": 0, "correct": 0}
    for tree in trees:
        if tree.get("answer") is None:
            raise MarcoError(f"tree {tree['id']!r} has no gold answer to verify against")
        if question_key(tree["question"]) in refused:
            raise MarcoError(f"tree {tree['id']!r}: its question is an evaluation (MGSM) "
                             "question; never train on it")
        found = chains(tree, verify)
        records = sft_records(tree, found, how, form)
        for record in records:  # the same question and answer text once, across trees too
            key = (question_key(tree["question"]), record["messages"][-1]["content"])
            if key not in seen:
                seen.add(key)
                sft.append(record)
        prefs += pairs(tree, found, encode, form, cap)
        counts["trees"] += 1
        counts["solved"] += bool(records)
        counts["chains"] += len(found)
        counts["correct"] += sum(c.correct for c in found)
    return sft, prefs, counts


def read_trees(directory: pathlib.Path) -> list[dict[str, Any]]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise MarcoError(f"{directory}: no tree files (*.json); write them with "
                         "scripts/search.py --tree-dir")
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]
