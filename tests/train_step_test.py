"""The SFT step on the tiny model: it learns, shards exactly, accumulates exactly
(or within bfloat16 rounding), and its memory options change no result."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from marco_jax.checkpoint.orbax_io import flatten
from marco_jax.model_config import preset
from marco_jax.model import REMAT_POLICIES, init_model
from marco_jax.sharding import make_mesh
from marco_jax.train.config import TrainSection
from marco_jax.train.layout import (init_params, layout_of, stack_layers,
                                    checkpoint_tensors)
from marco_jax.train.attention import packed_attention
from marco_jax.train.objectives import SFT, LayerRun
from marco_jax.train.optimizers import decay_mask
from marco_jax.train.step import batch_gradients, build_step

CFG = TrainSection(steps=10, learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)


def packed_batch(rows: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of two packed samples each, the last few slots padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 512, size=(rows, seq + 1)).astype(np.int32)
    cut, pad = seq // 2, seq - 3
    segment = np.where(np.arange(seq) < cut, 1, 2) * (np.arange(seq) < pad)
    positions = np.where(np.arange(seq) < cut, np.arange(seq), np.arange(seq) - cut)
    loss_mask = (segment > 0) & (np.arange(seq) != cut - 1) & (rng.random((rows, seq)) < 0.8)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_mask": loss_mask.astype(np.float32),
            "segment_ids": np.broadcast_to(segment, (rows, seq)).astype(np.int32),
            "positions": np.broadcast_to(positions, (rows, seq)).astype(np.int32)}


def micro(batch, micro_batches):
    return {k: v.reshape(micro_batches, -1, *v.shape[1:]) for k, v in batch.items()}


def setup(mesh, cfg=CFG):
    layout = layout_of(preset("tiny"))
    program = build_step(layout, cfg, mesh, remat="full", objective=SFT())
    return program, program.init(jax.device_put(init_params(layout, 1),
                                                program.state_shardings.params))


def run(program, state, batches):
    losses = []
    for batch in batches:
        state, metrics = program.step(state, jax.device_put(batch, program.batch_shardings))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_loss_on_a_fixed_batch_decreases():
    program, state = setup(make_mesh(fsdp=1, devices=jax.devices()[:1]))
    _, losses = run(program, state, [micro(packed_batch(4, 32), 1)] * 6)
    assert losses[-1] < losses[0] - 0.5, losses


def test_no_weight_decay_on_norms_and_biases():
    mask = decay_mask(init_params(layout_of(preset("tiny")), 0))
    assert mask["embed_vd"] and mask["layers"]["mlp"]["up_weight_df"]
    assert not mask["final_norm"]["scale_d"] and not mask["layers"]["attn"]["q_bias_nh"]


def test_sharded_step_equals_one_device():
    batches = [micro(packed_batch(8, 32, seed), 2) for seed in range(2)]
    results = []
    for mesh in (make_mesh(fsdp=1, devices=jax.devices()[:1]), make_mesh(fsdp=4, tensor=2)):
        program, state = setup(mesh)
        state, losses = run(program, state, batches)
        results.append((losses, jax.device_get(state.params)))
        assert mesh.size == 1 or any(
            not s.is_fully_replicated for s in jax.tree.leaves(
                jax.tree.map(lambda a: a.sharding, state.params)))
    (losses_1, params_1), (losses_8, params_8) = results
    np.testing.assert_allclose(losses_8, losses_1, atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_accumulating_four_micro_batches_equals_one_big_batch():
    batch = packed_batch(8, 32, seed=5)
    mesh = make_mesh(fsdp=1, devices=jax.devices()[:1])
    outs = []
    for m in (1, 4):
        program, state = setup(mesh, dataclasses.replace(CFG, micro_batches=m))
        state, losses = run(program, state, [micro(batch, m)])
        outs.append((losses, jax.device_get(state.params)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_stacked_layout_round_trips_and_runs_like_the_model():
    model = init_model(preset("tiny"), seed=2)
    params = nnx.to_pure_dict(nnx.state(model))
    stacked = stack_layers(params)
    assert stacked["layers"]["attn"]["q_weight_dnh"].shape[0] == 2
    exported = dict(checkpoint_tensors(stacked))
    assert exported.keys() == flatten(params).keys()
    for key, value in flatten(params).items():
        np.testing.assert_array_equal(exported[key], value)
    outer, layers = layout_of(preset("tiny")).model(stacked)
    tokens = jnp.asarray(packed_batch(2, 16)["inputs"])
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))
    expected = model(tokens, positions)
    causal = packed_attention("xla", jnp.ones((2, 16), jnp.int32))
    for remat in REMAT_POLICIES:
        got = outer.logits(outer.hidden_states(tokens, positions,
                                               lambda _, q, k, v: causal(q, k, v),
                                               scanned_layers=layers, remat=remat))
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_bfloat16_accumulator_equals_the_big_batch_within_rounding():
    """Four micro-batches summed in a bfloat16 accumulator against one float32 batch:
    every gradient leaf within 1% of its norm (bfloat16 keeps 8 significant bits;
    four additions); the float32 accumulator within 1e-5."""
    layout = layout_of(preset("tiny"))
    params = init_params(layout, 3)
    batch = packed_batch(8, 32, seed=7)
    (loss, count, _), big = jax.jit(lambda p: batch_gradients(
        layout, SFT(), p, micro(batch, 1), LayerRun("full")))(params)
    for dtype, tolerance in (("float32", 1e-5), ("bfloat16", 1e-2)):
        (loss_m, count_m, _), summed = jax.jit(lambda p: batch_gradients(
            layout, SFT(), p, micro(batch, 4), LayerRun("full"), dtype))(params)
        assert float(count_m) == float(count) and abs(float(loss_m) - float(loss)) < 1e-3
        assert jax.tree.leaves(summed)[0].dtype == jnp.dtype(dtype)
        for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(big)):
            error = np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b))
            assert error <= tolerance * np.linalg.norm(np.asarray(b)) + 1e-7, (dtype, error)


def test_remat_policies_give_the_same_gradients():
    layout = layout_of(preset("tiny"))
    params = init_params(layout, 4)
    batch = micro(packed_batch(4, 32, seed=8), 1)
    grads = {remat: jax.jit(lambda p, r=remat: batch_gradients(
        layout, SFT(), p, batch, LayerRun(r))[1])(params) for remat in REMAT_POLICIES}
    for remat in set(REMAT_POLICIES) - {"none"}:
        for a, b in zip(jax.tree.leaves(grads[remat]), jax.tree.leaves(grads["none"])):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_offloaded_optimizer_state_lives_on_the_host_and_trains_the_same():
    mesh = make_mesh(fsdp=1, devices=jax.devices()[:1])
    if "pinned_host" not in {m.kind for m in jax.devices()[0].addressable_memories()}:
        pytest.skip("this backend has no pinned_host memory")
    batches = [micro(packed_batch(4, 32, seed), 1) for seed in range(3)]
    runs = []
    for offload in (False, True):
        program, state = setup(mesh, dataclasses.replace(CFG, offload_optimizer=offload))
        state, losses = run(program, state, batches)
        kinds = {a.sharding.memory_kind for a in jax.tree.leaves(state.opt_state)
                 if a.ndim > 0}
        assert kinds == {"pinned_host" if offload else "device"}
        runs.append((losses, jax.device_get(state.params)))
    np.testing.assert_allclose(runs[1][0], runs[0][0], atol=1e-6, rtol=0)
    for a, b in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1])):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
