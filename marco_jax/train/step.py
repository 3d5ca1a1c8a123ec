"""One optimizer step of full-parameter training, as a pure function jitted over a mesh.

The train state is a pytree of plain arrays, so Orbax saves it and ``jax.jit`` shards
it by the model's logical axis names. The objective gives a loss sum and a weight per
micro-batch; accumulation sums both and divides once, so M micro-batches of B rows
give the update of one batch of M*B rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from marco_jax import loops
from marco_jax.errors import MarcoError
from marco_jax.sharding import ShardingRules
from marco_jax.train.config import TrainSection
from marco_jax.train.layout import Params, TrainLayout
from marco_jax.train.objectives import LayerRun, Objective, Sums
from marco_jax.train.optimizers import learning_rate_schedule, make_optimizer


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Params
    opt_state: optax.OptState


def batch_gradients(layout: TrainLayout, objective: Objective, params: Params,
                    batch_mbt: dict[str, jax.Array], run: LayerRun,
                    accumulate_dtype: str = "float32",
                    grad_shardings: Params | None = None,
                    ) -> tuple[Sums, Params]:
    """((loss sum, weight, metric sums), summed gradients) over the leading micro-batch
    axis. More than one micro-batch scans into an accumulator in ``accumulate_dtype``
    (bfloat16 halves it), sharded as ``grad_shardings``."""
    def sums_and_grads(batch_bt: dict[str, jax.Array]) -> tuple[Sums, Params]:
        def loss(p: Params) -> tuple[jax.Array, tuple]:
            loss_sum, weight, metric_sums = objective.sums(layout, p, batch_bt, run)
            return loss_sum, (weight, metric_sums)

        (loss_sum, (weight, metric_sums)), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return (loss_sum, weight, metric_sums), grads

    first = jax.tree.map(lambda a: a[0], batch_mbt)
    if batch_mbt["inputs"].shape[0] == 1:
        return sums_and_grads(first)
    acc_dtype = jnp.dtype(accumulate_dtype)
    pin = (lambda g: g) if grad_shardings is None else (
        lambda g: jax.lax.with_sharding_constraint(g, grad_shardings))

    def micro(carry, batch_bt):
        grads, sums = carry
        micro_sums, g = sums_and_grads(batch_bt)
        grads = jax.tree.map(lambda acc, gi: acc + gi.astype(acc_dtype), grads, g)
        return (pin(grads), jax.tree.map(jnp.add, sums, micro_sums)), None

    zero_grads = pin(jax.tree.map(lambda p: jnp.zeros(p.shape, acc_dtype), params))
    zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                             jax.eval_shape(lambda: sums_and_grads(first)[0]))
    (grads, sums), _ = loops.scan(micro, (zero_grads, zero_sums), batch_mbt)
    return sums, grads


def apply_update(state: TrainState, grads: Params, weight: jax.Array, *,
                 optimizer: optax.GradientTransformation, opt_on_device: Any = None,
                 ) -> tuple[TrainState, jax.Array]:
    """One optimizer update from summed gradients over ``weight``; returns the new
    state and the gradient norm. ``opt_on_device`` (shardings) brings an offloaded
    optimizer state into device memory for the update (``jit`` returns it to the host)."""
    grads = jax.tree.map(lambda g, p: (g.astype(jnp.float32) / weight).astype(p.dtype),
                         grads, state.params)
    opt_state = (state.opt_state if opt_on_device is None
                 else jax.device_put(state.opt_state, opt_on_device))
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state), optax.global_norm(grads)


def train_step(state: TrainState, batch_mbt: dict[str, jax.Array], *, layout: TrainLayout,
               objective: Objective, update: Callable, schedule: optax.Schedule,
               run: LayerRun, accumulate_dtype: str = "float32",
               grad_shardings: Params | None = None,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """:func:`batch_gradients`, then ``update`` (:func:`apply_update` with its settings
    bound); returns the new state and the step's metrics."""
    (loss_sum, weight, metric_sums), grads = batch_gradients(
        layout, objective, state.params, batch_mbt, run, accumulate_dtype, grad_shardings)
    weight = jnp.maximum(weight, 1.0)
    new_state, grad_norm = update(state, grads, weight)
    metrics = {"loss": loss_sum / weight, "grad_norm": grad_norm,
               "learning_rate": schedule(state.step),
               **{name: value / weight for name, value in metric_sums.items()}}
    return new_state, metrics


@dataclasses.dataclass(frozen=True)
class StepProgram:
    """The jitted init and step functions of one run, with their shardings."""

    init: Callable[[Params], TrainState]
    step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    state_shardings: TrainState
    batch_shardings: dict[str, NamedSharding]  # per field of the objective's batch
    abstract_state: TrainState  # shapes with shardings: a restore target, a compile input
    # the optimizer's part of the step, unjitted: the step-time estimate compiles it alone
    update: Callable[[TrainState, Params, jax.Array], tuple[TrainState, jax.Array]]
    # (params, batch) -> (micro_batches, rows) completion log-probs: DPO's reference
    reference_logps: Callable[[Params, dict], jax.Array] | None = None


def build_step(layout: TrainLayout, cfg: TrainSection, mesh: Mesh, remat: str,
               objective: Objective, attention: str = "xla",
               rules: ShardingRules = ShardingRules()) -> StepProgram:
    """Jit init (params -> state) and the step with explicit shardings on ``mesh``: the
    optimizer moments like their parameters (in pinned host memory with
    ``cfg.offload_optimizer``), batch rows over the batch mesh axes. Both donate their
    input, so a fine-tune never holds two copies of the parameters."""
    optimizer = make_optimizer(cfg)
    schedule = learning_rate_schedule(cfg)
    host = offload_memory_kind(mesh) if cfg.offload_optimizer else None
    params_sharding = layout.shardings(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def init(params: Params) -> TrainState:
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))

    shapes = jax.eval_shape(init, layout.abstract_params())
    opt_on_device = optax.tree_map_params(  # factored (Adafactor) statistics: replicated
        optimizer, lambda leaf, s, p: s if leaf.shape == p.shape else replicated,
        shapes.opt_state, params_sharding, shapes.params,
        transform_non_params=lambda _: replicated)
    opt_shardings = opt_on_device if host is None else jax.tree.map(
        lambda s: s.with_memory_kind(host), opt_on_device)
    state_shardings = TrainState(replicated, params_sharding, opt_shardings)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, state_shardings)
    batch_axes = rules.mesh_axes("batch")
    batch_shardings = {
        field: NamedSharding(mesh, PartitionSpec(None, batch_axes, *(
            () if field in objective.row_fields else (None,)))) for field in objective.fields}
    run = LayerRun(remat, NamedSharding(mesh, PartitionSpec(batch_axes, None, None)), attention,
                   mesh, interpret=mesh.devices.flat[0].platform != "tpu")
    update = functools.partial(apply_update, optimizer=optimizer,
                               opt_on_device=opt_on_device if cfg.offload_optimizer else None)
    step = functools.partial(train_step, layout=layout, objective=objective, update=update,
                             schedule=schedule, run=run, accumulate_dtype=cfg.accumulate_dtype,
                             grad_shardings=params_sharding)
    reference = None
    if hasattr(objective, "logps"):
        def logps(params: Params, batch_mbt: dict[str, jax.Array]) -> jax.Array:
            return jax.lax.map(lambda b: objective.logps(
                layout, params, b, dataclasses.replace(run, remat="none")), batch_mbt)

        token_shardings = {k: v for k, v in batch_shardings.items()
                           if k not in objective.row_fields}
        reference = jax.jit(logps, in_shardings=(params_sharding, token_shardings),
                            out_shardings=batch_shardings["reference_logps"])
    return StepProgram(
        init=jax.jit(init, in_shardings=(params_sharding,), out_shardings=state_shardings,
                     donate_argnums=(0,)),
        step=jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                     out_shardings=(state_shardings, replicated), donate_argnums=(0,)),
        state_shardings=state_shardings, batch_shardings=batch_shardings,
        abstract_state=abstract_state, update=update, reference_logps=reference)


def offload_memory_kind(mesh: Mesh) -> str:
    """The host memory an offloaded optimizer state lives in; an error naming the
    backend where its devices have none."""
    kinds = {m.kind for m in mesh.devices.flat[0].addressable_memories()}
    if "pinned_host" not in kinds:
        raise MarcoError(f"train.offload_optimizer: {mesh.devices.flat[0].platform} devices "
                         f"have no pinned_host memory (memories: {', '.join(sorted(kinds))}); "
                         "set train.offload_optimizer=false")
    return "pinned_host"
