"""The optimizer of a run: global-norm clipping, then AdamW (8 bytes of moments per
parameter, 4 with ``moments_dtype=bfloat16``) or Adafactor (a row and a column vector
per matrix), with one learning-rate schedule."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from marco_jax.train.config import TrainSection

Params = dict[str, Any]
_NO_DECAY = re.compile(r"bias|scale")  # biases and RMSNorm scales


def decay_mask(params: Params) -> Any:
    """True where weight decay applies: matrices and embeddings only."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not _NO_DECAY.search(jax.tree_util.keystr(path)), params)


def learning_rate_schedule(cfg: TrainSection) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to ``min_learning_rate`` at the last step."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1),
        cfg.min_learning_rate)


class AdamMomentsState(NamedTuple):
    count: jax.Array  # int32 scalar
    mu: Params
    nu: Params


def scale_by_adam_in(dtype: jnp.dtype, b1: float, b2: float,
                     eps: float) -> optax.GradientTransformation:
    """Adam's bias-corrected direction with both moments *stored* in ``dtype``
    (optax's ``mu_dtype`` covers only the first); the arithmetic is float32."""

    def init(params: Params) -> AdamMomentsState:
        zeros = lambda p: jnp.zeros(p.shape, dtype)  # noqa: E731
        return AdamMomentsState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params),
                                jax.tree.map(zeros, params))

    def update(grads: Params, state: AdamMomentsState, params: Params | None = None):
        del params
        count = optax.safe_increment(state.count)
        f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
        mu = jax.tree.map(lambda m, g: b1 * f32(m) + (1 - b1) * f32(g), state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * f32(v) + (1 - b2) * jnp.square(f32(g)),
                          state.nu, grads)
        scale_mu, scale_nu = 1 - b1 ** count, 1 - b2 ** count
        direction = jax.tree.map(
            lambda m, v, g: (m / scale_mu / (jnp.sqrt(v / scale_nu) + eps)).astype(g.dtype),
            mu, nu, grads)
        cast = lambda a: a.astype(dtype)  # noqa: E731
        return direction, AdamMomentsState(count, jax.tree.map(cast, mu), jax.tree.map(cast, nu))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainSection) -> optax.GradientTransformation:
    """Clip by global norm, then the configured update rule with the schedule."""
    schedule = learning_rate_schedule(cfg)
    if cfg.optimizer == "adafactor":
        rule = optax.adafactor(
            schedule, multiply_by_parameter_scale=False, eps=1e-30,
            weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask)
    elif cfg.moments_dtype == "float32":
        rule = optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay,
                           mask=decay_mask)
    else:
        rule = optax.chain(
            scale_by_adam_in(jnp.dtype(cfg.moments_dtype), cfg.b1, cfg.b2, cfg.eps),
            optax.add_decayed_weights(cfg.weight_decay, decay_mask),
            optax.scale_by_learning_rate(schedule))
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), rule)
