"""Training data from search trees: SFT chains and DPO preference pairs.

    python scripts/export_data.py --trees synth/gsm8k-trees.jsonl [--trees more-trees.jsonl ...] \
        --sft data/gsm8k_sft.jsonl --pairs data/gsm8k_pairs.jsonl --model HF_DIR \
        [--verifier numeric] [--select shortest|median|longest|all] \
        [--format marco|tags] [--max-pairs-per-tree 4] \
        [--rejected wrong|unfinished|both] [--exclude more_eval.jsonl ...]

Reads the trees ``scripts/search.py --trees`` wrote. Every chain
is verified again against the tree's gold answer. SFT records are
``{"messages": [user, assistant]}`` (what ``scripts/train.py`` reads), one or
more correct chains per tree chosen by relative length. Pairs are a correct
and a rejected chain of the same problem (``--rejected``: a finished chain
with a wrong answer, one the token budget cut off, or either), with the
prompt, the length in tokens (``--model``'s tokenizer) of the prefix the two
share, and their node ids; at most ``--max-pairs-per-tree`` per problem. With
several ``--trees`` files, a problem's pairs draw on the chains of all
its trees (those of its n-th tree, in the files' order, are labelled
``n.node``), e.g. correct chains of the base model's search against a later
model's unfinished chains.
Identical records are written once. A tree whose question is an MGSM question
(or one of ``--exclude``'s) is refused.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from marco_jax.cli import run, summary
from marco_jax.errors import MarcoError
from marco_jax.loading import checkpoint_tokenizer
from marco_jax.search import export
from marco_jax.search.config import VERIFIERS
from marco_jax.search.record import read_trees
from marco_jax.grading import verifier


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--trees", required=True, type=pathlib.Path, action="append",
                        help="a search's trees (search.py --trees); repeat "
                             "to pair chains of several searches of the same problems")
    parser.add_argument("--sft", type=pathlib.Path, help="write SFT records here (JSONL)")
    parser.add_argument("--pairs", type=pathlib.Path, help="write preference pairs here (JSONL)")
    parser.add_argument("--model", default="builtin:tiny",
                        help="checkpoint whose tokenizer counts shared-prefix tokens")
    parser.add_argument("--verifier", choices=VERIFIERS, default="numeric",
                        help="how a chain's final answer is checked against the tree's gold "
                             "answer (default numeric)")
    parser.add_argument("--select", choices=export.SELECTIONS, default="shortest",
                        help="which correct chains of a tree become SFT records")
    parser.add_argument("--format", choices=export.FORMATS, default="marco",
                        help="marco: <Thought>/<Output>; tags: v2's raw tags")
    parser.add_argument("--max-pairs-per-tree", type=int, default=4,
                        help="pairs per problem at most")
    parser.add_argument("--rejected", choices=export.REJECTED, default="wrong",
                        help="the rejected side: wrong finished chains, chains the token "
                             "budget cut off (against looping), or both (unfinished first)")
    parser.add_argument("--exclude", type=pathlib.Path, action="append", default=[],
                        help="evaluation problems to refuse besides MGSM (any problem file)")
    return parser.parse_args()


def write(path: pathlib.Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")


def main() -> None:
    args = parse_args()
    if args.sft is None and args.pairs is None:
        raise MarcoError("nothing to write: give --sft and/or --pairs")
    tokenizer = checkpoint_tokenizer(args.model)
    sft, pairs, counts = export.export(
        [tree for path in args.trees for tree in read_trees(path)],
        verifier(args.verifier),
        lambda text: tokenizer.encode(text, add_special_tokens=False), args.select,
        args.format, args.max_pairs_per_tree, export.eval_question_keys(args.exclude),
        args.rejected)
    if args.sft:
        write(args.sft, sft)
    if args.pairs:
        write(args.pairs, pairs)
    print(json.dumps({**counts, "sft_records": len(sft), "pairs": len(pairs)}))


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
