"""DPO data: preference pair records -> token rows -> batches of interleaved pairs.

A record (``scripts/export_data.py --pairs`` writes them, in TRL's layout) has
``prompt`` (a string, or chat ``messages`` before the reply), ``chosen`` and
``rejected`` (completion texts) and optionally ``id``. A pair becomes two rows of
``seq_len`` tokens, the ChatML prompt then the completion and ``<|im_end|>``, with
SFT's fields (one sequence per row) where ``loss_mask`` covers the completion and
``shared_mask`` the completion tokens both rows share from its start. Batches
interleave the rows (pair i's chosen at 2i, rejected at 2i+1) and carry
``reference_logps`` (rows,) when the reference model's log-probs are given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np
from transformers import PreTrainedTokenizerBase

from marco_jax.errors import MarcoError
from marco_jax.prompts import chatml
from marco_jax.train.data import Counts, chat_messages, process_stream, well_formed_messages

ROW_FIELDS = ("inputs", "targets", "loss_mask", "shared_mask", "segment_ids", "positions")


def pair_problem(record: Any) -> str | None:
    """Why a pair record cannot be trained on (naming it by ``id``), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    name = f'pair "{record["id"]}": ' if isinstance(record.get("id"), (str, int)) else ""
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
    if missing:
        return f"{name}missing {', '.join(repr(k) for k in missing)}"
    prompt = record["prompt"]
    if isinstance(prompt, list):
        if not prompt or not well_formed_messages(prompt):
            return (f'{name}"prompt" must be a string or a non-empty list of '
                    '{"role": system|user|assistant, "content": string}')
    elif not isinstance(prompt, str) or not prompt.strip():
        return f'{name}"prompt" is empty or not a string'
    for key in ("chosen", "rejected"):
        if not isinstance(record[key], str) or not record[key].strip():
            return f'{name}"{key}" is an empty completion or not a string'
    if record["chosen"] == record["rejected"]:
        return f"{name}chosen and rejected are the same text"
    return None


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
    prompt: np.ndarray  # int32 ids of the rendered prompt, assistant header included
    chosen: np.ndarray  # int32 ids of the chosen completion and <|im_end|>
    rejected: np.ndarray
    shared: int  # leading completion tokens chosen and rejected have in common

    def overlong(self, seq_len: int) -> bool:
        """Whether a row exceeds the ``seq_len + 1`` tokens of ``seq_len`` positions."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected)) > seq_len + 1


def tokenize_pair(record: dict, tokenizer: PreTrainedTokenizerBase,
                  system: str | None) -> TokenizedPair:
    """Token ids of a pair, prompt and completions tokenized apart (as the engine
    generates: a completion's tokens follow the prompt's)."""
    prompt = record["prompt"]
    messages = chat_messages({"messages": [{"role": "user", "content": prompt}]
                              if isinstance(prompt, str) else prompt}, system)
    encode = lambda text: np.asarray(  # noqa: E731
        tokenizer.encode(text, add_special_tokens=False), np.int32)
    chosen, rejected = (encode(record[k] + "<|im_end|>") for k in ("chosen", "rejected"))
    n = min(len(chosen), len(rejected))
    differ = np.flatnonzero(chosen[:n] != rejected[:n])
    return TokenizedPair(encode(chatml(messages)), chosen, rejected,
                         int(differ[0]) if len(differ) else n)


def pair_rows(pair: TokenizedPair, seq_len: int, overlong: str) -> dict[str, np.ndarray] | None:
    """The pair's two rows as (2, seq_len) arrays (layout in the module docstring),
    or None when ``overlong == "drop"`` and a row exceeds ``seq_len + 1`` tokens or
    when truncation would leave a completion without a token to learn."""
    if overlong == "drop" and pair.overlong(seq_len):
        return None
    rows = {k: np.zeros((2, seq_len), np.float32 if k.endswith("mask") else np.int32)
            for k in ROW_FIELDS}
    for r, completion in enumerate((pair.chosen, pair.rejected)):
        ids = np.concatenate([pair.prompt, completion])[: seq_len + 1]
        n = len(ids) - 1
        if n < len(pair.prompt):
            return None
        completion_at = np.arange(1, n + 1) - len(pair.prompt)  # target's index in the completion
        rows["inputs"][r, :n], rows["targets"][r, :n] = ids[:-1], ids[1:]
        rows["loss_mask"][r, :n] = completion_at >= 0
        rows["shared_mask"][r, :n] = (completion_at >= 0) & (completion_at < pair.shared)
        rows["segment_ids"][r, :n] = 1
        rows["positions"][r, :n] = np.arange(n)
    return rows


def pair_examples(records: Sequence[dict], tokenizer: PreTrainedTokenizerBase,
                  system: str | None, seq_len: int, overlong: str,
                  ) -> tuple[list[dict[str, Any]], Counts]:
    """Each usable record's rows (with its ``id``, or its index when it has none)."""
    examples, truncated, dropped = [], 0, 0
    for index, record in enumerate(records):
        pair = tokenize_pair(record, tokenizer, system)
        rows = pair_rows(pair, seq_len, overlong)
        if rows is None:
            dropped += 1
            continue
        truncated += pair.overlong(seq_len)
        examples.append({"id": str(record.get("id", index)), "rows": rows})
    if not examples:
        raise MarcoError(f"no pairs to train on ({dropped} dropped: longer than seq_len + 1 = "
                         f"{seq_len + 1} tokens, or no completion token within it)")
    return examples, Counts(len(examples), truncated, dropped)


def interleave(pairs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(pairs, 2, ...) -> (2 * pairs, ...): chosen at even rows, rejected at odd."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in pairs.items()}


def make_pair_dataset(examples: Sequence[dict[str, Any]], reference_logps: np.ndarray | None,
                      *, pairs_per_batch: int, seed: int, num_epochs: int | None,
                      process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """This process's batches of interleaved pairs (:func:`marco_jax.train.data.process_stream`;
    a finite stream's partial batch dropped), with ``reference_logps`` (pairs, 2) riding along."""
    items = [dict(e["rows"]) for e in examples]
    if reference_logps is not None:
        for item, ref in zip(items, np.asarray(reference_logps, np.float32)):
            item["reference_logps"] = ref
    stream = process_stream(items, seed=seed, num_epochs=num_epochs,
                            process_index=process_index, process_count=process_count)
    return stream.batch(pairs_per_batch, drop_remainder=True).map(interleave)
