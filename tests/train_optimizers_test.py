"""The optimizer choices: each trains the tiny model, and bfloat16 moments track
float32 AdamW closely."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from marco_jax.model_config import preset
from marco_jax.sharding import make_mesh
from marco_jax.train.config import TrainSection
from marco_jax.train.layout import init_params, layout_of
from marco_jax.train.objectives import SFT
from marco_jax.train.optimizers import make_optimizer, scale_by_adam_in
from marco_jax.train.step import build_step
from train_step_test import micro, packed_batch

CFG = TrainSection(steps=10, learning_rate=1e-2, warmup_steps=1, weight_decay=0.1)


def train(cfg: TrainSection, steps: int = 8) -> tuple[list[float], object]:
    layout = layout_of(preset("tiny"))
    program = build_step(layout, cfg, make_mesh(fsdp=1, devices=jax.devices()[:1]), "full", SFT())
    state = program.init(jax.device_put(init_params(layout, 1), program.state_shardings.params))
    batch = jax.device_put(micro(packed_batch(4, 32), 1), program.batch_shardings)
    losses = []
    for _ in range(steps):
        state, metrics = program.step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, state


@pytest.mark.parametrize("changes", [{"moments_dtype": "bfloat16"}, {"optimizer": "adafactor"}])
def test_memory_saving_optimizers_train_the_tiny_model(changes):
    losses, state = train(dataclasses.replace(CFG, **changes))
    assert losses[-1] < losses[0] - 0.5, losses
    if "moments_dtype" in changes:
        moments = [a for a in jax.tree.leaves(state.opt_state) if a.ndim > 0]
        assert moments and {a.dtype for a in moments} == {jnp.dtype(jnp.bfloat16)}


def test_bfloat16_moments_track_float32_adamw():
    reference, _ = train(CFG)
    low, _ = train(dataclasses.replace(CFG, moments_dtype="bfloat16"))
    np.testing.assert_allclose(low, reference, rtol=2e-2)


def test_adam_in_float32_equals_optax_adam():
    """Our moments-in-a-dtype Adam is optax's Adam when the dtype is float32."""
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    ours, theirs = scale_by_adam_in(jnp.float32, 0.9, 0.95, 1e-8), optax.scale_by_adam(0.9, 0.95)
    state_a, state_b = ours.init(params), theirs.init(params)
    for k in range(3):
        grads = {"w": jnp.cos(params["w"] * (k + 1))}
        out_a, state_a = ours.update(grads, state_a)
        out_b, state_b = theirs.update(grads, state_b)
        np.testing.assert_allclose(out_a["w"], out_b["w"], rtol=1e-6)


def test_adafactor_state_is_factored():
    """A matrix's second moment is a row and a column vector, not a full matrix."""
    params = {"w": jnp.zeros((256, 512))}
    state = make_optimizer(dataclasses.replace(CFG, optimizer="adafactor")).init(params)
    sizes = [a.size for a in jax.tree.leaves(state)]
    assert max(sizes) < 256 * 512 // 8, sizes
