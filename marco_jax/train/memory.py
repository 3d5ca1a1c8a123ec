"""The compile-only memory plan of a run (``scripts/train.py --dry-run``): what each
device needs, from XLA's analysis of the real step, and what this process's host
memory needs beside it, so a user learns before launch whether a run fits.

Host memory, per process: a runtime baseline; while loading a fine-tune's
checkpoint, its weights in the layout they are read in plus the stacked copy
(before any optimizer state exists); while training, the optimizer state when
it is offloaded, a copy of the state while an asynchronous checkpoint is being
written, and, on CPU devices, the devices' own plans (their memory is this
process's memory). The peak is the baseline plus the larger of the two phases.
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
from marco_jax.train.checkpoint import abstract_target, on_unless_cpu
from marco_jax.train.config import TrainConfig
from marco_jax.train.objectives import FLOAT_FIELDS, objective_of
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
    """Host bytes of this process by phase (see the module docstring). ``simulated``
    CPU devices stand for accelerators: their memory is not counted as the host's."""
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
    program = setup.program
    state = abstract_target(program.abstract_state, program.state_shardings)
    m = cfg.train.micro_batches
    objective = objective_of(cfg)
    rows = cfg.train.global_batch * objective.rows_per_example // m
    batch = {k: jax.ShapeDtypeStruct(
        (m, rows) if k in objective.row_fields else (m, rows, cfg.data.seq_len),
        np.float32 if k in FLOAT_FIELDS else np.int32, sharding=sharding)
        for k, sharding in program.batch_shardings.items()}
    return state, batch


def memory_plan(cfg: TrainConfig, devices: list, simulated: bool = False) -> dict[str, Any]:
    """Compile the real step for ``devices`` from abstract arrays and report the
    per-device bytes XLA plans for it and this process's host bytes (nothing is
    allocated); ``simulated``: the devices stand for accelerators."""
    setup = set_up(cfg, devices)
    program = setup.program
    state, batch = abstract_step_inputs(cfg, setup)
    m = cfg.train.micro_batches
    rows = cfg.train.global_batch * objective_of(cfg).rows_per_example // m
    start = time.perf_counter()
    try:
        compiled = program.step.lower(state, batch).compile()
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
            "micro_batches": m, "rows_per_device": rows // (setup.mesh.shape["data"]
                                                            * setup.mesh.shape["fsdp"])}
    if memory.host_argument_size_in_bytes or memory.host_temp_size_in_bytes:
        plan["device_host_memory_bytes"] = (memory.host_argument_size_in_bytes
                                            + memory.host_temp_size_in_bytes)
    if chip is not None:
        plan["chip"] = chip.name
        plan["hbm_bytes"] = chip.hbm_bytes
        plan["headroom_bytes"] = chip.hbm_bytes - total
    return plan


def _out_of_memory(error: Exception, cfg: TrainConfig, devices: list) -> Exception:
    """The compiler's refusal of a plan that does not fit, as one line saying by how
    much and what to change; other compile errors unchanged."""
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
    """Per-device bytes a compiled program needs.

    The TPU compiler reports its own peak, the figure its out-of-memory check
    holds against HBM; its ``temp_size`` counts scheduled loop buffers that are
    never live together (the 7B step's peak is 15.1 GiB where arguments + temp
    give 19.6). Elsewhere (XLA:CPU's peak field holds only the arguments):
    arguments + outputs - aliased + temp, less an offloaded optimizer state,
    which XLA:CPU counts among the arguments of its single memory (``offloaded``).
    """
    if platform == "tpu":
        return memory.peak_memory_in_bytes
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes - offloaded)
