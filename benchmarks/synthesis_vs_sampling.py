"""Tree search with dynamic reflection against plain sampling at equal tokens, per problem.

    python benchmarks/synthesis_vs_sampling.py --tree synth/gsm8k-v2.jsonl \
        --sampling synth/gsm8k-sc.jsonl [--json-out results/synthesis_vs_sampling.json]

Both files are ``scripts/search.py`` outputs over the same problems (the tree
search with a ``v2-*`` config, sampling with ``sc`` and many samples). For each
problem the sampling side gets exactly the tokens the tree used on it: its
samples count in generation order while the tokens spent before them are
below the tree's, so neither side gets more. Reported per side: share of
problems with at least one verified-correct chain, distinct correct chains per
problem, generated tokens per correct chain.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from report import report

from marco_jax.files import lines


def read(path: pathlib.Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, lines(path.read_text(encoding="utf-8")))}


def within(record: dict, budget: int) -> tuple[int, int]:
    """(correct samples, tokens spent) over the samples that start below ``budget``."""
    spent = correct = 0
    for tokens, ok in zip(record["candidate_tokens"], record["candidate_correct"]):
        if spent >= budget:
            break
        spent += tokens
        correct += bool(ok)
    return correct, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, type=pathlib.Path)
    parser.add_argument("--sampling", required=True, type=pathlib.Path)
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    tree, sampling = read(args.tree), read(args.sampling)
    ids = sorted(set(tree) & set(sampling))
    if not ids:
        raise SystemExit("no problem is in both files")
    short = [i for i in ids if sum(sampling[i]["candidate_tokens"]) < tree[i]["generated_tokens"]]
    sides = {"tree": [(tree[i]["correct_answers"], tree[i]["generated_tokens"]) for i in ids],
             "sampling": [within(sampling[i], tree[i]["generated_tokens"]) for i in ids]}
    out: dict = {"problems": len(ids), "sampling_ran_out": len(short)}
    for side, rows in sides.items():
        correct = sum(c for c, _ in rows)
        tokens = sum(t for _, t in rows)
        out[side] = {"solved": sum(c > 0 for c, _ in rows) / len(ids),
                     "correct_per_problem": correct / len(ids),
                     "tokens": tokens, "tokens_per_correct": tokens / correct if correct else None}
    out["solved_ratio"] = (out["tree"]["solved"] / out["sampling"]["solved"]
                           if out["sampling"]["solved"] else None)
    report(out, args.json_out)


if __name__ == "__main__":
    main()
