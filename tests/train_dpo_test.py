"""DPO on the tiny model: the loss against hand computations, shared-prefix masking,
precomputed vs live reference, sharding, accumulation, resume and bad pair files."""

import json
import math
import shutil

import jax
import numpy as np
import pytest

from cli_test import assert_one_line_error, run_script
from marco_jax.model_config import preset
from marco_jax.errors import MarcoError
from marco_jax.tokenizer import builtin_tokenizer
from marco_jax.train import reference as reference_lib
from marco_jax.train import trainer
from marco_jax.train.config import load_train_config
from marco_jax.train.layout import init_params, layout_of
from marco_jax.train.objectives import DPO, LayerRun, masked_logprob_sums, pair_terms
from marco_jax.train.pairs import interleave, pair_examples, pair_rows, tokenize_pair
from marco_jax.train.step import batch_gradients
from train_run_test import kill_after_checkpoint

STEPS = 8


def pair_records(n=24):
    """Right and wrong sums sharing the start of their reasoning."""
    return [{"id": f"p{i}", "prompt": f"What is {i} + {i + 3}?",
             "chosen": f"<Thought>{i} + {i + 3} = {2 * i + 3}</Thought><Output>{2 * i + 3}</Output>",
             "rejected": f"<Thought>{i} + {i + 3} = {2 * i + 4}</Thought><Output>{2 * i + 4}</Output>"}
            for i in range(n)]


def write_pairs(path, records=None):
    path.write_text("".join(json.dumps(r) + "\n" for r in records or pair_records()))
    return path


def settings(tmp_path, out, *extra):
    return [f"output_dir={tmp_path / out}", f"data.path={tmp_path / 'pairs.jsonl'}",
            f"train.steps={STEPS}", "checkpoint.every=2", *extra]


def test_pair_terms_equal_a_hand_computation():
    logp = np.array([[-10.0, -12.0], [-5.0, -4.0]])
    ref = np.array([[-11.0, -11.0], [-5.0, -5.0]])
    tokens = np.array([[4.0, 6.0], [2.0, 3.0]])
    log_sigmoid = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    # margins: (1 - -1) = 2 and (0 - 1) = -1; beta 0.5 -> 1.0 and -0.5
    sigmoid = DPO(beta=0.5, label_smoothing=0.1, sft_weight=0.3)
    terms = jax.device_get(pair_terms(logp, ref, tokens, sigmoid))
    expected_pref = [-0.9 * log_sigmoid(1.0) - 0.1 * log_sigmoid(-1.0),
                     -0.9 * log_sigmoid(-0.5) - 0.1 * log_sigmoid(0.5)]
    np.testing.assert_allclose(terms["preference_loss"], expected_pref, rtol=1e-6)
    np.testing.assert_allclose(terms["sft_loss"], [10 / 4, 5 / 2], rtol=1e-6)
    np.testing.assert_allclose(terms["loss"], np.add(expected_pref, 0.3 * 2.5), rtol=1e-6)
    np.testing.assert_allclose(terms["reward_chosen"], [0.5, 0.0])
    np.testing.assert_allclose(terms["reward_rejected"], [-0.5, 0.5])
    np.testing.assert_allclose(terms["reward_margin"], [1.0, -0.5])
    np.testing.assert_array_equal(terms["preference_accuracy"], [1.0, 0.0])
    ipo = jax.device_get(pair_terms(logp, ref, tokens, DPO(beta=0.5, loss="ipo")))
    np.testing.assert_allclose(ipo["loss"], [(2 - 1) ** 2, (-1 - 1) ** 2], rtol=1e-6)


def test_shared_mask_is_the_common_prefix_of_the_two_completions():
    tokenizer = builtin_tokenizer()
    record = pair_records()[5]
    pair = tokenize_pair(record, tokenizer, None)
    rows = pair_rows(pair, 128, "truncate")
    shared = rows["shared_mask"].astype(bool)
    assert shared.sum(axis=1).tolist() == [pair.shared, pair.shared] and pair.shared > 5
    np.testing.assert_array_equal(rows["targets"][0][shared[0]], rows["targets"][1][shared[1]])
    first_after = np.flatnonzero(rows["loss_mask"][0] * (1 - rows["shared_mask"][0]))[0]
    assert rows["targets"][0, first_after] != rows["targets"][1, first_after]
    assert tokenizer.decode(rows["targets"][0][rows["loss_mask"][0] > 0]) == \
        record["chosen"] + "<|im_end|>"


def test_overlong_pairs_are_dropped_or_truncated_and_counted():
    tokenizer = builtin_tokenizer()
    records = pair_records(4)
    long = dict(records[1], chosen=records[1]["chosen"] + " and so on" * 40)
    records[1] = long
    seq_len = len(tokenize_pair(records[0], tokenizer, None).prompt) + 80
    assert tokenize_pair(long, tokenizer, None).overlong(seq_len)
    assert not tokenize_pair(records[0], tokenizer, None).overlong(seq_len)
    kept, counts = pair_examples(records, tokenizer, None, seq_len, "drop")
    assert [e["id"] for e in kept] == ["p0", "p2", "p3"]
    assert (counts.truncated, counts.dropped) == (0, 1)
    kept, counts = pair_examples(records, tokenizer, None, seq_len, "truncate")
    assert len(kept) == 4 and (counts.truncated, counts.dropped) == (1, 0)
    assert kept[1]["rows"]["loss_mask"][0].sum() < kept[1]["rows"]["loss_mask"][0].size


def tiny_batch(n_pairs=4):
    examples, _ = pair_examples(pair_records(n_pairs), builtin_tokenizer(), None, 96, "truncate")
    return interleave({k: np.stack([e["rows"][k] for e in examples])
                       for k in examples[0]["rows"]})


def test_masking_the_shared_prefix_keeps_the_preference_and_changes_the_sft_term():
    layout = layout_of(preset("tiny"))
    policy, reference = init_params(layout, 1), init_params(layout, 2)
    batch = tiny_batch()
    # Each row's log-prob sums over all completion tokens and over the shared ones.
    full, shared = np.asarray(masked_logprob_sums(
        layout, policy, batch, np.stack([batch["loss_mask"], batch["shared_mask"]]), LayerRun()))
    n_full, n_shared = batch["loss_mask"].sum(-1), batch["shared_mask"].sum(-1)
    expected_sft = {False: np.mean(-full[0::2] / n_full[0::2]),
                    True: np.mean(-(full - shared)[0::2] / (n_full - n_shared)[0::2])}
    results = {}
    for masked in (False, True):
        dpo = DPO(beta=0.5, sft_weight=1.0, mask_shared_prefix=masked)
        ref = dpo.logps(layout, reference, batch, LayerRun())
        _, weight, sums = dpo.sums(layout, policy, {**batch, "reference_logps": ref}, LayerRun())
        results[masked] = {k: float(v) / float(weight) for k, v in sums.items()}
        assert results[masked]["sft_loss"] == pytest.approx(expected_sft[masked], rel=1e-5)
    assert results[True]["preference_loss"] == pytest.approx(
        results[False]["preference_loss"], abs=1e-5)
    assert abs(expected_sft[True] - expected_sft[False]) > 1e-3


def test_accumulated_pairs_equal_the_big_batch():
    layout = layout_of(preset("tiny"))
    params = init_params(layout, 3)
    batch = tiny_batch()
    dpo = DPO(beta=0.3, label_smoothing=0.1, sft_weight=0.5)
    batch["reference_logps"] = np.asarray(dpo.logps(layout, init_params(layout, 4), batch, LayerRun()))
    micro = lambda m: {k: v.reshape(m, -1, *v.shape[1:]) for k, v in batch.items()}  # noqa: E731
    (loss, weight, sums), grads = jax.jit(lambda p: batch_gradients(
        layout, dpo, p, micro(1), LayerRun("full")))(params)
    (loss_2, weight_2, sums_2), grads_2 = jax.jit(lambda p: batch_gradients(
        layout, dpo, p, micro(2), LayerRun("full")))(params)
    assert float(weight) == float(weight_2) == 4
    assert float(loss_2) == pytest.approx(float(loss), abs=1e-5)
    for name in sums:
        assert float(sums_2[name]) == pytest.approx(float(sums[name]), abs=1e-5), name
    for a, b in zip(jax.tree.leaves(grads_2), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def finished_dpo(tmp_path_factory):
    """An uninterrupted tiny DPO run with precomputed reference log-probs."""
    tmp_path = tmp_path_factory.mktemp("dpo")
    write_pairs(tmp_path / "pairs.jsonl")
    cfg = load_train_config("tiny_dpo", settings(tmp_path, "a"))
    logged = trainer.train(cfg, progress=False)
    return tmp_path, {m["step"]: m for m in logged}


def test_dpo_learns_and_logs_its_metrics(finished_dpo):
    tmp_path, logged = finished_dpo
    assert sorted(logged) == list(range(1, STEPS + 1))
    first, last = logged[1], logged[STEPS]
    # The first step's policy is the reference: every reward is exactly 0.
    assert first["reward_chosen"] == first["reward_rejected"] == 0.0
    assert last["reward_margin"] > 0.05 and last["preference_accuracy"] > 0.5
    assert last["preference_loss"] < first["preference_loss"]
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert {"sft_loss", "reward_margin", "preference_accuracy"} <= set(json.loads(lines[0]))
    reference = (tmp_path / "a" / "reference_logps.jsonl").read_text().splitlines()
    assert json.loads(reference[0])["seq_len"] == 128 and len(reference) == 1 + 24
    assert (tmp_path / "a" / "final").is_dir()


def test_live_reference_equals_the_precomputed_one(finished_dpo):
    tmp_path, precomputed = finished_dpo
    cfg = load_train_config("tiny_dpo", settings(tmp_path, "live", "dpo.reference=live"))
    live = {m["step"]: m for m in trainer.train(cfg, progress=False)}
    assert not (tmp_path / "live" / "reference_logps.jsonl").exists()
    for step in precomputed:
        for name in ("loss", "reward_chosen", "reward_margin"):
            assert live[step][name] == pytest.approx(precomputed[step][name], abs=1e-5)


def test_sharded_dpo_step_equals_one_device(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl")
    losses = []
    for mesh, devices in (("mesh.fsdp=1", jax.devices()[:1]), ("mesh.fsdp=4", jax.devices())):
        cfg = load_train_config("tiny_dpo", settings(tmp_path, "s", mesh, "mesh.tensor=" + (
            "2" if len(devices) > 1 else "1")))
        setup = trainer.set_up(cfg, devices)
        params = trainer._initial_params(cfg, setup)
        batches, _ = trainer.dpo_batches(cfg, setup, builtin_tokenizer(), params, progress=False)
        (tmp_path / "s" / "reference_logps.jsonl").unlink()
        state, data, run = setup.program.init(params), iter(batches), []
        for _ in range(3):
            batch = trainer._global_batch(next(data), setup.program, cfg.train.micro_batches)
            state, metrics = setup.program.step(state, batch)
            run.append(float(metrics["loss"]))
        losses.append(run)
    np.testing.assert_allclose(losses[1], losses[0], atol=1e-5, rtol=0)


def test_killed_dpo_run_resumes_with_the_same_losses(finished_dpo):
    tmp_path, logged = finished_dpo
    last = kill_after_checkpoint("tiny_dpo", settings(tmp_path, "b"),
                                 tmp_path / "b" / "checkpoints", 4)
    assert last < STEPS
    cfg = load_train_config("tiny_dpo", settings(tmp_path, "b"))
    resumed = trainer.train(cfg, resume=True, progress=False)
    assert resumed[0]["step"] == last + 1
    assert {m["step"]: m["loss"] for m in resumed} == {
        s: m["loss"] for s, m in logged.items() if s > last}


def test_stale_reference_file_is_refused(finished_dpo, tmp_path):
    run_dir, _ = finished_dpo
    write_pairs(tmp_path / "pairs.jsonl", pair_records(20))
    cfg = load_train_config("tiny_dpo", settings(tmp_path, "c", "dpo.reference_logps=" + str(
        run_dir / "a" / "reference_logps.jsonl")))
    with pytest.raises(MarcoError, match="pairs_sha256"):
        trainer.train(cfg, progress=False)


def test_reference_file_of_other_weights_at_the_same_path_is_refused(
        finished_dpo, tmp_path, monkeypatch):
    """A model retrained in place keeps its path; the fingerprint of its values tells,
    and a re-save of the same values (new Orbax file names) still matches."""
    run_dir, _ = finished_dpo
    write_pairs(tmp_path / "pairs.jsonl")
    weights = tmp_path / "weights"
    shutil.copytree(run_dir / "a" / "final", weights)
    cfg = load_train_config("tiny_dpo", settings(tmp_path, "r", f"model.init_from={weights}"))
    setup, tokenizer = trainer.set_up(cfg), builtin_tokenizer()
    params = trainer._initial_params(cfg, setup)
    trainer.dpo_batches(cfg, setup, tokenizer, params, progress=False)

    def save(values):
        shutil.rmtree(weights)
        trainer.export(values, setup.layout.cfg, tokenizer, weights)
        return trainer._initial_params(cfg, setup)

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the stored reference log-probs should have been reused")
    with monkeypatch.context() as patch:
        patch.setattr(reference_lib, "compute_reference", no_second_pass)
        trainer.dpo_batches(cfg, setup, tokenizer, save(params), progress=False)
        trainer.dpo_batches(cfg, setup, tokenizer, None, progress=False)  # a resume
    retrained = save(jax.tree.map(lambda x: x * 1.01, params))
    with pytest.raises(MarcoError, match="reference_weights"):
        trainer.dpo_batches(cfg, setup, tokenizer, retrained, progress=False)


def test_weights_fingerprint_is_exact_and_independent_of_sharding():
    params = init_params(layout_of(preset("tiny")), 0)
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    spec = jax.sharding.PartitionSpec("a", "b")
    sharded = jax.tree.map(lambda x: jax.device_put(x, jax.sharding.NamedSharding(
        mesh, spec if x.ndim == 2 and x.shape[0] % 4 == 0 and x.shape[1] % 2 == 0
        else jax.sharding.PartitionSpec())), params)
    assert reference_lib.weights_fingerprint(sharded) == reference_lib.weights_fingerprint(params)
    embed = np.asarray(params["embed_vd"]).copy()
    embed.view(np.uint32 if embed.dtype.itemsize == 4 else np.uint16).reshape(-1)[0] ^= 1
    changed = {**params, "embed_vd": embed}  # one bit of one value
    assert reference_lib.weights_fingerprint(changed) != reference_lib.weights_fingerprint(params)


@pytest.mark.parametrize("change, fragment", [
    ({"rejected": None}, "pairs.jsonl:3: pair \"p2\": missing 'rejected'"),
    ({"chosen": "  "}, "pairs.jsonl:3: pair \"p2\": \"chosen\" is an empty completion"),
    ({"rejected": "<Thought>2 + 5 = 7</Thought><Output>7</Output>"},
     "pairs.jsonl:3: pair \"p2\": chosen and rejected are the same text"),
])
def test_bad_pair_records_are_one_line_errors(tmp_path, change, fragment):
    records = pair_records(4)
    bad = {**records[2], **change}
    records[2] = {k: v for k, v in bad.items() if v is not None}
    write_pairs(tmp_path / "pairs.jsonl", records)
    proc = run_script("train.py", "--config", "tiny_dpo", "--set",
                      f"data.path={tmp_path / 'pairs.jsonl'}", "--set",
                      f"output_dir={tmp_path / 'out'}")
    assert_one_line_error(proc, fragment)


def test_dry_run_plans_a_dpo_step():
    proc = run_script("train.py", "--config", "tiny_dpo", "--dry-run", "--simulate-devices", "4")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["rows_per_device"] == 2 * 8 // 2 // 4
