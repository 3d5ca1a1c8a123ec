"""SFT data: chat records -> token ids with an assistant-only loss mask -> packed batches.

Every batch is a dict of numpy arrays of shape (batch_size, seq_len):

- ``inputs``      int32    token t of an example
- ``targets``     int32    token t+1 of the same example (the next-token label)
- ``loss_mask``   float32  1.0 where ``targets`` is an assistant reply's token or its
  closing ``<|im_end|>``; 0.0 elsewhere (other turns, the reply's header, padding)
- ``segment_ids`` int32    1, 2, 3... numbering the examples packed into a row; 0 is padding
- ``positions``   int32    index of ``inputs`` within its own example (for RoPE)

An example of n tokens becomes n-1 (input, target) pairs *before* packing, so no
target crosses examples; attention stays within equal ``segment_ids``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np
from etils import epath
from transformers import PreTrainedTokenizerBase

from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.prompts import chatml
from marco_jax.train.config import ON_BAD_RECORD, OVERLONG

ROLES = ("system", "user", "assistant")
HF_DATASET_SUFFIXES = (".parquet", ".arrow")
# The packer adds identical "<name>_segment_ids" and "<name>_positions" for each of these.
_PACKED = ("inputs", "targets", "loss_mask")
Located = Iterator[tuple[str, Any, str | None]]  # (where, record, why it is unreadable or None)


def read_records(path: epath.Path, on_bad_record: str = "error",
                 problem: Callable[[Any], str | None] | None = None) -> tuple[list[dict], int]:
    """The records of a JSON array, JSONL file or Hugging Face dataset (``save_to_disk``
    directory, Parquet or Arrow file) that ``problem`` accepts (default: CoT or chat), and
    how many were skipped: one broken line in a large crawl need not cost the run."""
    if on_bad_record not in ON_BAD_RECORD:
        raise MarcoError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")
    problem = problem or _problem
    is_dataset = path.is_dir() or path.suffix in HF_DATASET_SUFFIXES
    records, skipped = [], 0
    for location, record, why in (_dataset_rows if is_dataset else _file_records)(path):
        why = why or problem(record)
        if why is None:
            records.append(record)
            continue
        if on_bad_record == "error":
            raise MarcoError(f"{location}: {why}")
        print(f"warning: skipping {location}: {why}", file=sys.stderr)
        skipped += 1
    if not records:
        raise MarcoError(f"{path}: no usable records" + (f" ({skipped} bad)" if skipped else ""))
    return records, skipped


def _dataset_rows(path: epath.Path) -> Located:
    """The rows of a ``datasets.save_to_disk`` directory (its train split) or a
    Parquet/Arrow file."""
    import datasets

    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
            if isinstance(table, datasets.DatasetDict):
                table = table["train"] if "train" in table else next(iter(table.values()))
        else:
            table = datasets.Dataset.from_parquet(str(path)) if path.suffix == ".parquet" \
                else datasets.Dataset.from_file(str(path))
    except (OSError, ValueError, FileNotFoundError) as error:
        raise MarcoError(f"{path}: cannot read as a Hugging Face dataset ({error})") from None
    for index, record in enumerate(table):
        yield f"{path}: row {index}", record, None


def _file_records(path: epath.Path) -> Located:
    """The records of a JSON array (``file: record i``, 0-based) or JSONL file
    (``file:line``, a line that is not JSON being unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MarcoError(f"{path}: cannot read ({error})") from None
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as error:
            raise MarcoError(f"{path}: not JSON ({error})") from None
        for index, record in enumerate(array):
            yield f"{path}: record {index}", record, None
        return
    for number, line in enumerate(lines(text), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line), None
        except json.JSONDecodeError as error:
            yield f"{path}:{number}", None, f"not JSON ({error.msg})"


def well_formed_messages(messages: Any) -> bool:
    """Whether ``messages`` is a list of {"role": system|user|assistant, "content": str}."""
    return isinstance(messages, list) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        for m in messages)


def _problem(record: Any) -> str | None:
    """Why the record cannot be trained on, or None if it can."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if "messages" in record:
        messages = record["messages"]
        if not well_formed_messages(messages):
            return '"messages" must be a list of {"role": system|user|assistant, "content": string}'
        if not any(m["role"] == "assistant" for m in messages):
            return '"messages" has no assistant turn to train on'
        return None
    if isinstance(record.get("instruction"), str) and isinstance(record.get("response"), str):
        return None
    return 'needs "instruction" and "response" (strings) or "messages"'


def chat_messages(record: dict, system: str | None) -> list[dict[str, str]]:
    """The record as chat turns, with ``system`` first unless it brings its own."""
    if "messages" in record:
        messages = record["messages"]
    else:
        messages = [{"role": "user", "content": record["instruction"]},
                    {"role": "assistant", "content": record["response"]}]
    if system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def tokenize_record(record: dict, tokenizer: PreTrainedTokenizerBase,
                    system: str | None) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids of the ChatML-rendered record and a bool mask of the tokens to learn:
    each assistant reply and its ``<|im_end|>`` (so the model learns to stop). Spans
    are tokenized apart so the mask falls on token boundaries."""
    spans: list[tuple[str, bool]] = []  # (text, learned)
    for message in chat_messages(record, system):
        turn = chatml([message], add_generation_prompt=False)
        if message["role"] != "assistant":
            spans.append((turn, False))
            continue
        start = turn.index("\n") + 1  # after "<|im_start|>assistant\n"
        end = turn.rindex("\n")  # before the newline that follows <|im_end|>
        spans += [(turn[:start], False), (turn[start:end], True), (turn[end:], False)]
    ids: list[int] = []
    learned: list[bool] = []
    for is_learned, group in itertools.groupby(spans, key=lambda span: span[1]):
        span_ids = tokenizer.encode("".join(text for text, _ in group), add_special_tokens=False)
        ids += span_ids
        learned += [is_learned] * len(span_ids)
    return np.asarray(ids, dtype=np.int32), np.asarray(learned, dtype=bool)


@dataclasses.dataclass(frozen=True)
class Counts:
    """What became of the examples (SFT records or DPO pairs), for the training log."""

    examples: int  # kept, truncated ones included
    truncated: int
    dropped: int  # over seq_len + 1 tokens with overlong="drop", or a pair left no completion


def process_stream(items: Sequence[Any], *, seed: int, num_epochs: int | None,
                   process_index: int, process_count: int) -> grain.IterDataset:
    """Each epoch shuffled anew from ``seed``; process p takes every ``process_count``-th
    item of that global order from p, so processes never share one."""
    if not 0 <= process_index < process_count:
        raise MarcoError(f"process index {process_index} is not in [0, {process_count})")
    shard = grain.MapDataset.source(items).shuffle(seed).repeat(num_epochs)
    return shard[process_index::process_count].to_iter_dataset(
        grain.ReadOptions(num_threads=0))  # in memory: threads only contend


def make_dataset(examples: Sequence[tuple[np.ndarray, np.ndarray]], *, seq_len: int,
                 batch_size: int, seed: int, num_epochs: int | None, process_index: int = 0,
                 process_count: int = 1, overlong: str = "truncate", pack: bool = True,
                 ) -> tuple[grain.IterDataset, Counts]:
    """This process's batches (layout in the module docstring) of ``tokenize_record``
    outputs, and what was cut (``overlong``: truncate or drop). With ``pack`` examples
    share rows (first fit over ``batch_size`` rows at a time). A finite stream drops its
    partial batch; batch counts differ between processes (packing density varies), so
    multi-host runs repeat forever and stop by step count. ``get_state``/``set_state``
    resume exactly."""
    if overlong not in OVERLONG:
        raise MarcoError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    if seq_len < 1 or batch_size < 1:
        raise MarcoError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    pairs, truncated, dropped = [], 0, 0
    for index, (ids, learned) in enumerate(examples):
        if len(ids) < 2:
            raise MarcoError(f"example {index} has {len(ids)} token(s): nothing to predict")
        if len(ids) > seq_len + 1:
            if overlong == "drop":
                dropped += 1
                continue
            ids, learned = ids[: seq_len + 1], learned[: seq_len + 1]
            truncated += 1
        pairs.append({"inputs": np.asarray(ids[:-1], np.int32),
                      "targets": np.asarray(ids[1:], np.int32),
                      "loss_mask": np.asarray(learned[1:], bool)})
    if not pairs:
        raise MarcoError(f"no examples to train on ({dropped} dropped as longer than "
                         f"seq_len + 1 = {seq_len + 1} tokens)")
    rows = grain.experimental.FirstFitPackIterDataset(
        process_stream(pairs, seed=seed, num_epochs=num_epochs, process_index=process_index,
                       process_count=process_count),
        length_struct={name: seq_len for name in _PACKED},
        num_packing_bins=batch_size,
        shuffle_bins=False,  # the bins of one packing round form one batch anyway
        max_sequences_per_bin=None if pack else 1,
    )
    batches = rows.batch(batch_size, drop_remainder=True).map(_batch_layout)
    return batches, Counts(len(pairs), truncated, dropped)


def _batch_layout(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One copy of the packer's (shared) segment ids and positions; a float loss mask."""
    return {"inputs": packed["inputs"], "targets": packed["targets"],
            "loss_mask": packed["loss_mask"].astype(np.float32),
            "segment_ids": packed["inputs_segment_ids"], "positions": packed["inputs_positions"]}
