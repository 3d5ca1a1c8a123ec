"""The compile-only memory plan of a run (``scripts/train.py --dry-run``), so a user
learns before launch whether it fits: each device's bytes from XLA's analysis of the
real step, and this process's host bytes: a runtime baseline plus the larger of two
phases, loading a checkpoint (its weights as read plus the stacked copy) and training
(an offloaded optimizer state, an async checkpoint's copy, CPU devices' own plans).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import jax
import numpy as np

from marco_jax.errors import MarcoError
from marco_jax.topology import chip_of
from marco_jax.train.checkpoint import on_unless_cpu
from marco_jax.train.config import TrainConfig
from marco_jax.train.objectives import FLOAT_FIELDS
from marco_jax.train.trainer import Setup, set_up

# RSS of a training process before its first array (Python, JAX, XLA, tokenizer
# and data): 0.56 GiB measured on the demo fine-tune; rounded up.
RUNTIME_BASELINE_BYTES = 2**30 * 6 // 10


def _shard_bytes(x: jax.ShapeDtypeStruct) -> int:
    return math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize


def _local_bytes(tree) -> int:
    """Bytes this process holds of ``tree``: every addressable shard, replicas included."""
    return sum(_shard_bytes(x) * len(x.sharding.addressable_devices)
               for x in jax.tree.leaves(tree))


def per_device_bytes(tree) -> int:
    """Bytes one device holds of ``tree`` (shape-only leaves with shardings)."""
    return sum(_shard_bytes(x) for x in jax.tree.leaves(tree))


def host_plan(cfg: TrainConfig, state, device_total: int, devices: list,
              simulated: bool = False) -> dict[str, int]:
    """Host bytes of this process by phase; ``simulated`` CPU devices stand for
    accelerators, so their memory is not the host's."""
    local_devices = [d for d in devices if d.process_index == jax.process_index()]
    on_cpu = local_devices[0].platform == "cpu" and not simulated
    async_save = on_unless_cpu(cfg.checkpoint.async_save, on_cpu)
    loading = 2 * _local_bytes(state.params) if cfg.model.init_from else 0
    training = {
        "devices_in_host_memory": device_total * len(local_devices) if on_cpu else 0,
        "offloaded_optimizer": (_local_bytes(state.opt_state)
                                if cfg.train.offload_optimizer else 0),
        "async_checkpoint_copy": _local_bytes(state) if async_save else 0,
    }
    return {"runtime_baseline": RUNTIME_BASELINE_BYTES, "loading": loading, **training,
            "peak": RUNTIME_BASELINE_BYTES + max(loading, sum(training.values()))}


def abstract_step_inputs(cfg: TrainConfig, setup: Setup) -> tuple[Any, dict]:
    """Shape-only train state and batch of one step, with their shardings."""
    rows_shape = (cfg.train.micro_batches, setup.rows)
    batch = {k: jax.ShapeDtypeStruct(
        rows_shape if k in setup.objective.row_fields else (*rows_shape, cfg.data.seq_len),
        np.float32 if k in FLOAT_FIELDS else np.int32, sharding=sharding)
        for k, sharding in setup.program.batch_shardings.items()}
    return setup.program.abstract_state, batch


def memory_plan(cfg: TrainConfig, devices: list, simulated: bool = False) -> dict[str, Any]:
    """The per-device bytes XLA plans for the real step on ``devices``, compiled from
    abstract arrays (nothing allocated), and this process's host bytes."""
    setup = set_up(cfg, devices)
    state, batch = abstract_step_inputs(cfg, setup)
    start = time.perf_counter()
    try:
        compiled = setup.program.step.lower(state, batch).compile()
    except jax.errors.JaxRuntimeError as e:
        raise _out_of_memory(e, cfg, devices) from e
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    offloaded = per_device_bytes(state.opt_state) if cfg.train.offload_optimizer else 0
    total = device_bytes(memory, devices[0].platform, offloaded)
    chip = chip_of(devices[0].device_kind)
    plan = {"devices": len(devices), "device_kind": devices[0].device_kind,
            "mesh": dict(setup.mesh.shape), "params": setup.layout.cfg.num_params(),
            "param_bytes": per_device_bytes(state.params),
            "optimizer_bytes": per_device_bytes(state.opt_state),
            "optimizer_offloaded": bool(cfg.train.offload_optimizer),
            "batch_bytes": per_device_bytes(batch),
            "activation_and_temp_bytes": memory.temp_size_in_bytes,
            "total_bytes": total, "compile_seconds": compile_s,
            "host_bytes": host_plan(cfg, state, total, devices, simulated),
            "tokens_per_step": cfg.train.global_batch * cfg.data.seq_len,
            "micro_batches": cfg.train.micro_batches, "rows_per_device": setup.rows_per_device}
    if memory.host_argument_size_in_bytes or memory.host_temp_size_in_bytes:
        plan["device_host_memory_bytes"] = (memory.host_argument_size_in_bytes
                                            + memory.host_temp_size_in_bytes)
    if chip is not None:
        plan.update(chip=chip.name, hbm_bytes=chip.hbm_bytes,
                    headroom_bytes=chip.hbm_bytes - total)
    return plan


def _out_of_memory(error: Exception, cfg: TrainConfig, devices: list) -> Exception:
    """The compiler's refusal of a plan that does not fit as one line saying by how much
    and what to change; other compile errors unchanged."""
    found = re.search(r"required for HLO temporaries \(([\d.]+\w)\) exceeds available HBM "
                      r"\(([\d.]+\w)\)", str(error))
    if not found:
        return error
    return MarcoError(
        f"config {cfg.name} does not fit {len(devices)} x {devices[0].device_kind}: the "
        f"compiler needs {found.group(1)} per device, the chip has {found.group(2)}. Levers: "
        "train.moments_dtype=bfloat16, train.accumulate_dtype=bfloat16, "
        "model.remat=offload_layer_input, more train.micro_batches, a mesh with tensor=2, "
        "train.offload_optimizer=true (see the *_v5e8 configs)")


def device_bytes(memory: Any, platform: str, offloaded: int = 0) -> int:
    """Per-device bytes a compiled program needs. On TPU, the compiler's own peak (what
    its out-of-memory check uses: ``temp_size`` counts loop buffers never live together,
    19.6 GiB against a 15.1 GiB peak for the 7B step). Elsewhere XLA's peak field holds
    only the arguments, so: arguments + outputs - aliased + temp, less an ``offloaded``
    optimizer state, which XLA:CPU counts among the arguments of its one memory."""
    if platform == "tpu":
        return memory.peak_memory_in_bytes
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes - offloaded)
