"""Generate continuations with the inference engine: text, per-token log-probabilities, timing.

    python scripts/generate.py --model PATH (--prompt TEXT | --prompts-file F) [--chat | --marco] \
        --max-new-tokens 256 --temperature 0.7 --top-p 0.95 --top-logprobs 5 \
        --slots 64 --seed 0 [--stop "</Output>"] [--mesh data=4,tensor=2] --json

PATH is an HF checkpoint directory, a marco-jax Orbax checkpoint, a GGUF file, or
``builtin:tiny`` (a random tiny model, to try the pipeline; the default). A prompts
file holds one prompt per line, or one JSON object with a string "prompt" field per
line (.jsonl); blank lines are skipped, and errors name the file's line (from 1).
The i-th prompt of the whole run (from 0) uses seed ``--seed + i``, so any prompt's
sample is reproducible whatever else runs beside it. All prompts go to the
engine at once; its slots are refilled as generations finish.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import TYPE_CHECKING

from marco_jax import prompts as prompt_lib
from marco_jax.cli import MODEL_HELP, run, summary
from marco_jax.engine.options import add_engine_args, build_engine, engine_setup, model_dtype
from marco_jax.errors import MarcoError
from marco_jax.files import lines

if TYPE_CHECKING:  # JAX is imported by main, so that --help comes at once
    from marco_jax.engine.engine import Completion


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--model", default="builtin:tiny",
                        help=MODEL_HELP)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="one prompt, given inline")
    source.add_argument("--prompts-file", type=pathlib.Path,
                        help="one prompt per line, or .jsonl with a 'prompt' field")
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--chat", action="store_true",
                          help="wrap each prompt as a user turn in ChatML")
    template.add_argument("--marco", action="store_true",
                          help="ChatML with Marco-o1's system prompt (<Thought>/<Output>)")
    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="tokens generated per prompt, at most (default %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="sample from the most likely tokens that hold this much "
                             "probability (1: off, the default)")
    parser.add_argument("--top-k", type=int, default=0,
                        help="sample from the K most likely tokens (0: off, the default)")
    parser.add_argument("--top-logprobs", type=int, default=5,
                        help="most likely alternatives kept per token, shown with --json "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the first prompt's sampling seed; each next prompt uses the next "
                             "one (default %(default)s)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop a row once its text contains TEXT (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON with per-token log-probs")
    add_engine_args(parser, slots=8)
    return parser.parse_args()


def read_prompts(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(where, prompt)`` pairs: where names the prompt in errors (``--prompt``, or
    ``FILE:LINE`` with the file's own line number, blank lines counted)."""
    if args.prompts_file is None:
        return [("--prompt", args.prompt if args.prompt is not None
                 else "Marco-o1 thinks step by step:")]
    path = args.prompts_file
    if not path.is_file():
        raise MarcoError(f"{path}: no such file")
    try:
        numbered = [(f"{path}:{number}", line) for number, line
                    in enumerate(lines(path.read_text(encoding="utf-8")), 1) if line.strip()]
    except UnicodeDecodeError:
        raise MarcoError(f"{path}: not UTF-8 text") from None
    if path.suffix != ".jsonl":
        return numbered
    out = []
    for where, line in numbered:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "prompt" not in record:
            raise MarcoError(f"{where}: expected a JSON object with a 'prompt' field")
        if not isinstance(record["prompt"], str):
            raise MarcoError(f"{where}: the 'prompt' field must be a string, got "
                             f"{json.dumps(record['prompt'], ensure_ascii=False)[:40]}")
        out.append((where, record["prompt"]))
    return out


def token_record(tokenizer, token: int, logprob: float, top_ids, top_lps) -> dict:
    return {"id": int(token), "text": tokenizer.decode([int(token)]), "logprob": float(logprob),
            "top_logprobs": [{"id": int(t), "text": tokenizer.decode([int(t)]),
                              "logprob": float(lp)} for t, lp in zip(top_ids, top_lps)]}


def records(completions: list[Completion], texts: list[str], tokenizer,
            eos_ids: tuple[int, ...], with_tokens: bool) -> list[dict]:
    out = []
    for text, done in zip(texts, completions):
        tokens = done.tokens
        shown = tokens[:-1] if done.finish_reason == "eos" and tokens[-1] in eos_ids else tokens
        record = {"prompt": text, "completion": tokenizer.decode(shown),
                  "finish_reason": done.finish_reason, "num_tokens": len(tokens),
                  "cached_prompt_tokens": done.cached_tokens, "confidence": done.confidence}
        if with_tokens:
            record["tokens"] = [token_record(tokenizer, t, done.logprobs[j], done.top_ids[j],
                                             done.top_logprobs[j]) for j, t in enumerate(tokens)]
        out.append(record)
    return out


def check_lengths(ids: list[list[int]], where: list[str], max_new_tokens: int,
                  limit: int) -> None:
    """Name the first prompt the engine would refuse, by its input line, in tokens."""
    for row, name in zip(ids, where):
        if not row:
            raise MarcoError(f"{name}: the prompt is empty (it needs at least one token)")
        if len(row) + max_new_tokens > limit:
            raise MarcoError(f"{name}: the prompt has {len(row)} tokens and --max-new-tokens "
                             f"asks for {max_new_tokens} more; the context (--max-model-len) "
                             f"is {limit} tokens")


def main() -> None:
    args = parse_args()
    prompts = read_prompts(args)
    if not prompts:
        raise MarcoError(f"{args.prompts_file}: no prompts")
    where, texts = [w for w, _ in prompts], [t for _, t in prompts]
    from marco_jax.loading import load  # JAX and the model code: after the input is checked

    start = time.perf_counter()
    dtype = model_dtype(args)
    loaded = load(args.model, param_dtype=dtype, compute_dtype=dtype)
    tokenizer = loaded.tokenizer
    engine = build_engine(loaded, *engine_setup(args, top_logprobs=args.top_logprobs), args.stop)
    load_s = time.perf_counter() - start
    template = "marco" if args.marco else "chat" if args.chat else "none"
    ids = [tokenizer.encode(prompt_lib.render(template, t), add_special_tokens=False)
           for t in texts]
    check_lengths(ids, where, args.max_new_tokens, args.max_model_len)

    start = time.perf_counter()
    completions = engine.generate(ids, args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    results = records(completions, texts, tokenizer, loaded.eos_ids, args.json)
    stats = engine.stats
    timing = {"load_s": load_s, "compile_s": stats.compile_s, "prefill_s": stats.prefill_s,
              "decode_s": stats.decode_s, "wall_s": time.perf_counter() - start,
              "generated_tokens": stats.kept_tokens,
              "decode_tokens_per_s": stats.kept_tokens / max(stats.decode_s, 1e-9),
              "slot_utilisation": stats.utilisation, "programs": engine.num_programs}

    if args.json:
        json.dump({"model": str(args.model), "generations": results, "timing": timing},
                  sys.stdout, ensure_ascii=False, indent=1)
        print()
        return
    for i, record in enumerate(results):
        print(f"=== {i + 1}: {record['finish_reason']}, {record['num_tokens']} tokens, "
              f"confidence {record['confidence']:.3f}")
        print(record["completion"])
    print(f"load {timing['load_s']:.1f}s  compile {timing['compile_s']:.1f}s  "
          f"prefill {timing['prefill_s']:.2f}s  decode {timing['decode_s']:.2f}s  "
          f"({timing['decode_tokens_per_s']:.1f} tokens/s)", file=sys.stderr)


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
