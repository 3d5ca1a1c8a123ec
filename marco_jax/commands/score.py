"""Teacher-forced scoring of a text: per-token log-probabilities, top-k and the total.

    python scripts/score.py --model PATH --text-file F [--chat] --top-logprobs 5 --json

PATH is an HF checkpoint directory, a marco-jax Orbax checkpoint, a GGUF file, or
``builtin:tiny`` (a random tiny model, to try the pipeline). Use the total for
perplexity or to compare candidate texts.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from marco_jax import prompts
from marco_jax.cli import MODEL_HELP, run, summary
from marco_jax.errors import MarcoError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--model", default="builtin:tiny",
                        help=MODEL_HELP)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text-file", type=pathlib.Path, help="text to score ('-': stdin)")
    source.add_argument("--text", help="text to score, given inline")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the text as a user turn in the ChatML chat template")
    parser.add_argument("--top-logprobs", type=int, default=5,
                        help="most likely alternatives shown at each position (default "
                             "%(default)s)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="parameter and compute dtype (default float32)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args()


def read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    if args.text_file is None:
        return "Marco-o1 searches its own reasoning with Monte Carlo Tree Search."
    if str(args.text_file) == "-":
        return sys.stdin.read()
    if not args.text_file.is_file():
        raise MarcoError(f"{args.text_file}: no such file")
    try:
        return args.text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MarcoError(f"{args.text_file}: not UTF-8 text") from None


def main() -> None:
    args = parse_args()
    text = read_text(args)
    from marco_jax.loading import load  # JAX and the model code: after the input is checked
    from marco_jax.scoring import score

    loaded = load(args.model, param_dtype=args.dtype, compute_dtype=args.dtype)
    if args.chat:
        text = prompts.chat_prompt(text)
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    scores = score(loaded.model, ids, args.top_logprobs)
    tokens = [loaded.tokenizer.decode([i]) for i in ids]
    if args.json:
        json.dump({
            "model": str(args.model),
            "num_tokens": len(ids),
            "total_logprob": scores.total,
            "perplexity": scores.perplexity,
            "tokens": [
                {"id": int(ids[i]), "text": tokens[i],
                 "logprob": None if i == 0 else float(scores.logprobs[i - 1]),
                 "top_logprobs": [] if i == 0 else [
                     {"id": int(t), "text": loaded.tokenizer.decode([int(t)]), "logprob": float(lp)}
                     for t, lp in zip(scores.top_ids[i - 1], scores.top_logprobs[i - 1])]}
                for i in range(len(ids))],
        }, sys.stdout, ensure_ascii=False, indent=1)
        print()
        return
    for i in range(1, len(ids)):
        print(f"{ids[i]:>8d} {scores.logprobs[i - 1]:>10.4f}  {tokens[i]!r}")
    print(f"tokens scored: {len(ids) - 1}  total logprob: {scores.total:.4f}  "
          f"perplexity: {scores.perplexity:.3f}")


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
