"""SFT data: record validation, assistant-only loss masks, packed batches, resumable iterators."""

import collections
import json

import grain
import numpy as np
import pytest

from marco_jax import prompts
from marco_jax.errors import MarcoError
from marco_jax.tokenizer import IM_END, builtin_tokenizer
from marco_jax.train.data import Counts, make_dataset, read_records, tokenize_record

COT = {"instruction": "2+2?", "response": "<Thought>4</Thought><Output>4</Output>"}
CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "Hi.\n"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": ""},
]}


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- read_records ---------------------------------------------------------------------

def test_reads_json_array_and_jsonl(tmp_path):
    array = tmp_path / "data.json"
    array.write_text(json.dumps([COT, CHAT], ensure_ascii=False, indent=2), encoding="utf-8")
    assert read_records(array) == ([COT, CHAT], 0)
    jsonl = write_jsonl(tmp_path / "data.jsonl", [json.dumps(COT), "", "  ", json.dumps(CHAT)])
    assert read_records(jsonl) == ([COT, CHAT], 0)


@pytest.mark.parametrize("lines, message", [
    ([json.dumps(COT), json.dumps(COT), "{oops"], "data.jsonl:3: not JSON"),
    ([json.dumps(COT), json.dumps({"instruction": "x"})],
     'data.jsonl:2: needs "instruction" and "response"'),
    ([json.dumps({"instruction": "x", "response": 4})], "data.jsonl:1: needs"),
    ([json.dumps({"messages": [{"role": "user", "content": "x"}]})],
     "data.jsonl:1: \"messages\" has no assistant turn"),
    ([json.dumps({"messages": [{"role": "bot", "content": "x"}]})],
     'data.jsonl:1: "messages" must be a list'),
    (['"just text"'], "data.jsonl:1: not a JSON object"),
])
def test_bad_jsonl_line_is_named(tmp_path, lines, message):
    with pytest.raises(MarcoError, match=message.replace("+", r"\+")):
        read_records(write_jsonl(tmp_path / "data.jsonl", lines))


def test_bad_array_record_is_named(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([COT, {"response": "x"}]))
    with pytest.raises(MarcoError, match=r"data\.json: record 1: needs"):
        read_records(path)
    path.write_text("[" + json.dumps(COT))
    with pytest.raises(MarcoError, match=r"data\.json: not JSON"):
        read_records(path)


@pytest.mark.parametrize("text", ["", "\n  \n", "[]"])
def test_empty_file_is_an_error(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    for on_bad_record in ("error", "skip"):
        with pytest.raises(MarcoError, match=r"data\.jsonl: no usable records"):
            read_records(path, on_bad_record)


def test_skip_counts_and_warns_per_bad_record(tmp_path, capsys):
    path = write_jsonl(tmp_path / "data.jsonl",
                       ["not json", json.dumps(COT), json.dumps({"a": 1}), json.dumps(CHAT)])
    assert read_records(path, on_bad_record="skip") == ([COT, CHAT], 2)
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2
    assert "data.jsonl:1: not JSON" in warnings[0] and "data.jsonl:3: needs" in warnings[1]


def test_skip_with_nothing_left_and_bad_mode_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ["{", "{}"])
    with pytest.raises(MarcoError, match=r"no usable records \(2 bad\)"):
        read_records(path, on_bad_record="skip")
    with pytest.raises(MarcoError, match="on_bad_record"):
        read_records(path, on_bad_record="ignore")


# --- tokenize_record ------------------------------------------------------------------

def masked_runs(ids, mask, tokenizer):
    """The decoded text of each maximal run of masked tokens."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [tokenizer.decode(ids[start:stop]) for start, stop in zip(edges[::2], edges[1::2])]


@pytest.mark.parametrize("system", [prompts.MARCO_SYSTEM_PROMPT, prompts.DEFAULT_SYSTEM, None])
def test_cot_record_masks_exactly_the_response(system):
    tokenizer = builtin_tokenizer()
    ids, mask = tokenize_record(COT, tokenizer, system)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
    turns = [{"role": "user", "content": COT["instruction"]},
             {"role": "assistant", "content": COT["response"]}]
    if system is not None:
        turns.insert(0, {"role": "system", "content": system})
    assert tokenizer.decode(ids) == prompts.chatml(turns, add_generation_prompt=False)
    assert masked_runs(ids, mask, tokenizer) == [COT["response"] + IM_END]


def test_chat_record_keeps_its_system_and_masks_every_reply():
    tokenizer = builtin_tokenizer()
    ids, mask = tokenize_record(CHAT, tokenizer, prompts.MARCO_SYSTEM_PROMPT)
    assert tokenizer.decode(ids) == prompts.chatml(CHAT["messages"], add_generation_prompt=False)
    assert masked_runs(ids, mask, tokenizer) == ["Hi.\n" + IM_END, IM_END]


# --- make_dataset ---------------------------------------------------------------------

def synthetic(lengths, seed=0):
    """Examples whose ids encode (example index, position): id = 1000 * (i + 1) + t."""
    rng = np.random.default_rng(seed)
    return [(1000 * (i + 1) + np.arange(n, dtype=np.int32), rng.random(n) < 0.5)
            for i, n in enumerate(lengths)]


def segments(batches):
    """(example index, inputs, targets, loss_mask) of every packed segment, checking layout."""
    found = []
    for batch in batches:
        assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
            "inputs": (np.int32, batch["inputs"].shape), "targets": (np.int32, batch["inputs"].shape),
            "loss_mask": (np.float32, batch["inputs"].shape),
            "segment_ids": (np.int32, batch["inputs"].shape),
            "positions": (np.int32, batch["inputs"].shape)}
        for row in range(len(batch["inputs"])):
            seg = batch["segment_ids"][row]
            padding = seg == 0
            assert not batch["loss_mask"][row][padding].any()
            assert not padding.any() or padding[np.argmax(padding):].all(), "padding at the end"
            ids = sorted(set(seg[~padding]))
            assert ids == list(range(1, len(ids) + 1))
            for s in ids:
                where = np.flatnonzero(seg == s)
                assert (np.diff(where) == 1).all(), "a segment must be contiguous"
                assert (batch["positions"][row][where] == np.arange(len(where))).all()
                inputs, targets = batch["inputs"][row][where], batch["targets"][row][where]
                owner = set(inputs // 1000) | set(targets // 1000)
                assert len(owner) == 1, "one segment, one example"
                assert (targets == inputs + 1).all(), "targets stay inside the example"
                found.append((owner.pop() - 1, inputs, targets, batch["loss_mask"][row][where]))
    return found


def pair_multiset(triples):
    return collections.Counter(
        (int(i), int(t), bool(m)) for inputs, targets, mask in triples
        for i, t, m in zip(inputs, targets, mask))


@pytest.mark.parametrize("pack", [True, False])
def test_one_epoch_keeps_every_pair(pack):
    examples = synthetic([3, 9, 5, 2, 7, 4, 8, 6])
    ds, counts = make_dataset(examples, seq_len=8, batch_size=1 if pack else 2, seed=1,
                              num_epochs=1, pack=pack)
    assert counts == Counts(examples=8, truncated=0, dropped=0)
    found = segments(ds)
    if pack:
        assert max(len(inputs) for _, inputs, _, _ in found) == 8
        assert len(found) > len(list(ds)), "several examples share a row"
    else:
        assert len(list(ds)) == 4
    expected = pair_multiset((ids[:-1], ids[1:], mask[1:]) for ids, mask in examples)
    assert pair_multiset((i, t, m) for _, i, t, m in found) == expected


def test_overlong_examples_are_truncated_or_dropped():
    examples = synthetic([3, 10, 20])
    ds, counts = make_dataset(examples, seq_len=8, batch_size=1, seed=0, num_epochs=1)
    assert counts == Counts(examples=3, truncated=2, dropped=0)
    longest = [inputs for index, inputs, _, _ in segments(ds) if index == 2]
    assert (longest[0] == examples[2][0][:8]).all()
    ds, counts = make_dataset(examples, seq_len=8, batch_size=1, seed=0, num_epochs=1,
                              overlong="drop")
    assert counts == Counts(examples=1, truncated=0, dropped=2)
    assert {index for index, *_ in segments(ds)} == {0}
    with pytest.raises(MarcoError, match="no examples"):
        make_dataset(examples[1:], seq_len=8, batch_size=1, seed=0, num_epochs=1, overlong="drop")
    with pytest.raises(MarcoError, match="overlong"):
        make_dataset(examples, seq_len=8, batch_size=1, seed=0, num_epochs=1, overlong="cut")


def test_processes_get_disjoint_shares_of_everything():
    examples = synthetic([4, 6, 3, 5, 7, 2, 6, 3, 5])
    shares = [
        {index for index, *_ in segments(make_dataset(
            examples, seq_len=8, batch_size=1, seed=3, num_epochs=1,
            process_index=p, process_count=2)[0])}
        for p in range(2)
    ]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(range(len(examples)))
    with pytest.raises(MarcoError, match="process index"):
        make_dataset(examples, seq_len=8, batch_size=1, seed=3, num_epochs=1,
                     process_index=2, process_count=2)


def order(seed, num_epochs, examples):
    ds, _ = make_dataset(examples, seq_len=8, batch_size=1, seed=seed,
                         num_epochs=num_epochs, pack=False)
    return [index for index, *_ in segments(ds)]


def test_shuffle_is_seeded_and_differs_per_epoch():
    examples = synthetic([3] * 12)
    two_epochs = order(5, 2, examples)
    first, second = two_epochs[:12], two_epochs[12:]
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != second
    assert order(5, 2, examples) == two_epochs
    assert order(6, 1, examples) != first


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def same_batches(left, right):
    return len(left) == len(right) and all(
        a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a) for a, b in zip(left, right))


def endless():
    ds, _ = make_dataset(synthetic([3, 9, 5, 2, 7, 4, 8, 6, 5]), seq_len=8, batch_size=2,
                         seed=0, num_epochs=None)
    return ds


def test_iterator_state_resumes_exactly():
    ds = endless()
    iterator = iter(ds)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 2)
    resumed = iter(endless())
    resumed.set_state(json.loads(json.dumps(state)))  # the state must survive JSON
    assert same_batches(take(resumed, 2), expected)
    assert not same_batches(take(iter(endless()), 2), expected), "restoring must matter"


def test_iterator_resumes_through_orbax(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    iterator = iter(endless())
    take(iterator, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
        expected = take(iterator, 2)
        resumed = iter(endless())
        manager.restore(3, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(resumed)))
    assert same_batches(take(resumed, 2), expected)


def test_hugging_face_dataset_files(tmp_path):
    import datasets

    rows = [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(3)]
    table = datasets.Dataset.from_list(rows)
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "data.parquet"))
    for path in (tmp_path / "saved", tmp_path / "data.parquet"):
        assert read_records(path) == (rows, 0)
    datasets.Dataset.from_list([{"instruction": "q"}]).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(MarcoError, match="bad.parquet: row 0"):
        read_records(tmp_path / "bad.parquet")
