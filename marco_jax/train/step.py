"""One optimizer step of full-parameter SFT, as a pure function jitted over a mesh.

The train state is a pytree of plain arrays (parameters as a nested dict, optax
state, step counter), so Orbax saves it and ``jax.jit`` shards it with explicit
in/out shardings derived from the model's logical axis names.

The loss is the mean cross-entropy over every loss-masked target token of the
whole global batch. Gradient accumulation scans over micro-batches summing
token losses and counts and divides once at the end, so M micro-batches of B
rows give the same update as one batch of M*B rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from marco_jax.errors import MarcoError
from marco_jax.sharding import ShardingRules
from marco_jax.train.config import TrainSection
from marco_jax.train.layout import TrainLayout
from marco_jax.train.optimizers import learning_rate_schedule, make_optimizer

Params = dict[str, Any]
BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
LOSS_CHUNK = 1024  # sequence positions per head + loss chunk


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Params
    opt_state: optax.OptState


def loss_sums(layout: TrainLayout, params: Params, batch: dict[str, jax.Array],
              remat: str, act_sharding: NamedSharding | None = None,
              ) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token cross-entropies, number of masked tokens) of a batch.

    The (b, t, vocab) logits are never materialised whole: the head and the loss
    run over LOSS_CHUNK positions at a time, and with ``remat`` each chunk is
    recomputed in the backward pass, so only one chunk's float32 logits (0.6 GB
    for Qwen2's 152k vocabulary at 1024 positions) are alive at once. ``remat``
    names the layers' policy (:data:`marco_jax.model.REMAT_POLICIES`); any
    policy but ``none`` also recomputes the chunks.
    """
    model, layers = layout.model(params)
    x_btd, _ = model.hidden_states(batch["inputs"], batch["positions"],
                                   batch["segment_ids"] > 0, segment_ids_bt=batch["segment_ids"],
                                   scanned_layers=layers, remat=remat, act_sharding=act_sharding)
    b, t, d = x_btd.shape
    chunk = LOSS_CHUNK if t % LOSS_CHUNK == 0 else t
    split = lambda a: jnp.swapaxes(a.reshape(b, t // chunk, chunk, *a.shape[2:]), 0, 1)  # noqa: E731
    mask_bt = batch["loss_mask"].astype(jnp.float32)

    def chunk_loss(total, chunk_inputs):
        x_bcd, targets_bc, mask_bc = chunk_inputs
        logits_bcv = model.logits(x_bcd)
        token_loss_bc = optax.softmax_cross_entropy_with_integer_labels(logits_bcv, targets_bc)
        return total + jnp.sum(token_loss_bc * mask_bc), None

    total, _ = jax.lax.scan(chunk_loss if remat == "none" else jax.checkpoint(chunk_loss),
                            jnp.zeros((), jnp.float32),
                            (split(x_btd), split(batch["targets"]), split(mask_bt)))
    return total, jnp.sum(mask_bt)


def batch_gradients(layout: TrainLayout, params: Params, batch_mbt: dict[str, jax.Array],
                    remat: str, accumulate_dtype: str = "float32",
                    act_sharding: NamedSharding | None = None,
                    grad_shardings: Params | None = None,
                    ) -> tuple[tuple[jax.Array, jax.Array], Params]:
    """((loss sum, token count), summed gradients) over the leading micro-batch axis.

    One micro-batch needs no accumulator; more scan into one held in
    ``accumulate_dtype`` (bfloat16 halves it) and sharded as ``grad_shardings``.
    """
    pin = (lambda g: g) if grad_shardings is None else (
        lambda g: jax.lax.with_sharding_constraint(g, grad_shardings))
    grad_fn = jax.value_and_grad(
        lambda p, b: loss_sums(layout, p, b, remat, act_sharding), has_aux=True)
    if batch_mbt["inputs"].shape[0] == 1:
        return grad_fn(params, jax.tree.map(lambda a: a[0], batch_mbt))
    acc_dtype = jnp.dtype(accumulate_dtype)

    def micro(carry, batch_bt):
        grads, loss_sum, count = carry
        (l, n), g = grad_fn(params, batch_bt)
        grads = jax.tree.map(lambda acc, gi: acc + gi.astype(acc_dtype), grads, g)
        return (pin(grads), loss_sum + l, count + n), None

    zeros = pin(jax.tree.map(lambda p: jnp.zeros(p.shape, acc_dtype), params))
    (grads, loss_sum, count), _ = jax.lax.scan(
        micro, (zeros, jnp.zeros(()), jnp.zeros(())), batch_mbt)
    return (loss_sum, count), grads


def train_step(state: TrainState, batch_mbt: dict[str, jax.Array], *, layout: TrainLayout,
               optimizer: optax.GradientTransformation, schedule: optax.Schedule,
               remat: str, accumulate_dtype: str = "float32",
               act_sharding: NamedSharding | None = None,
               grad_shardings: Params | None = None, opt_on_device: Any = None,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """Accumulate gradients over the leading micro-batch axis, then one optimizer update.

    ``grad_shardings`` keeps the accumulator (``accumulate_dtype``) sharded like
    the parameters; ``opt_on_device`` (shardings) brings an offloaded optimizer
    state into device memory for the update (``jit`` returns it to the host).
    """
    (loss_sum, count), grads = batch_gradients(
        layout, state.params, batch_mbt, remat, accumulate_dtype, act_sharding, grad_shardings)
    count = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g, p: (g.astype(jnp.float32) / count).astype(p.dtype),
                         grads, state.params)
    opt_state = state.opt_state
    if opt_on_device is not None:
        opt_state = jax.device_put(opt_state, opt_on_device)
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / count, "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step), "tokens": count}
    return TrainState(state.step + 1, params, opt_state), metrics


@dataclasses.dataclass(frozen=True)
class StepProgram:
    """The jitted init and step functions of one run, with their shardings."""

    init: Callable[[Params], TrainState]
    step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    state_shardings: TrainState
    batch_sharding: NamedSharding
    abstract_state: TrainState


def build_step(layout: TrainLayout, cfg: TrainSection, mesh: Mesh, remat: str,
               rules: ShardingRules = ShardingRules()) -> StepProgram:
    """Jit init (params -> state) and the step with explicit shardings on ``mesh``.

    Optimizer moments are sharded like the parameters they track (in pinned host
    memory with ``cfg.offload_optimizer``); the step counters are replicated.
    Batches are (micro_batches, rows, seq) with rows split over the batch mesh
    axes. Both functions donate their input, so a fine-tune never holds two
    copies of the parameters.
    """
    params_sharding = layout.shardings(mesh, rules)
    optimizer = make_optimizer(cfg)
    schedule = learning_rate_schedule(cfg)
    replicated = NamedSharding(mesh, PartitionSpec())

    def init(params: Params) -> TrainState:
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    abstract_state = jax.eval_shape(init, layout.abstract_params())
    opt_on_device = optax.tree_map_params(  # factored (Adafactor) statistics: replicated
        optimizer, lambda leaf, s, p: s if leaf.shape == p.shape else replicated,
        abstract_state.opt_state, params_sharding, abstract_state.params,
        transform_non_params=lambda _: replicated)
    opt_shardings = opt_on_device
    if cfg.offload_optimizer:
        opt_shardings = jax.tree.map(lambda s: s.with_memory_kind(offload_memory_kind(mesh)),
                                     opt_on_device)
    state_shardings = TrainState(replicated, params_sharding, opt_shardings)
    batch_axes = rules.mesh_axes("batch")
    batch_sharding = NamedSharding(mesh, PartitionSpec(None, batch_axes, None))
    act_sharding = NamedSharding(mesh, PartitionSpec(batch_axes, None, None))
    step = functools.partial(train_step, layout=layout, optimizer=optimizer,
                             schedule=schedule, remat=remat,
                             accumulate_dtype=cfg.accumulate_dtype, act_sharding=act_sharding,
                             grad_shardings=params_sharding,
                             opt_on_device=opt_on_device if cfg.offload_optimizer else None)
    return StepProgram(
        init=jax.jit(init, in_shardings=(params_sharding,), out_shardings=state_shardings,
                     donate_argnums=(0,)),
        step=jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,)),
        state_shardings=state_shardings, batch_sharding=batch_sharding,
        abstract_state=abstract_state)


def offload_memory_kind(mesh: Mesh) -> str:
    """The host memory an offloaded optimizer state lives in; an error naming the
    backend where its devices have none."""
    kinds = {m.kind for m in mesh.devices.flat[0].addressable_memories()}
    if "pinned_host" not in kinds:
        raise MarcoError(f"train.offload_optimizer: {mesh.devices.flat[0].platform} devices "
                         f"have no pinned_host memory (memories: {', '.join(sorted(kinds))}); "
                         "set train.offload_optimizer=false")
    return "pinned_host"
