"""An estimate of a training step's time and MFU on TPUs this host does not have,
from the TPU compiler's cost analysis of the real step
(``scripts/train.py --dry-run --topology ...`` prints it).

1. Compiled work. ``cost_analysis()`` counts a loop body once however often it runs
   (rolled 7B step: 1.2e13 FLOPs per device where 6·N·D gives 1.5e15), so the step
   and the optimizer update alone are compiled unrolled (:func:`marco_jax.loops.unrolled`,
   no windowed einsum; any loop left is refused) for 1 and 2 layers with one
   micro-batch of the run's size. FLOPs and HBM bytes are linear in the layers: the
   step is ``M x (micro(1) + (L - 1) x layer)`` with ``micro = step - update``. The
   elementwise update's time is the state it reads and writes and the gradient it
   reads at HBM bandwidth (its cost-analysis bytes vary with fusion).
2. Work the compiler cannot see: splash attention (Pallas) is opaque, so its FLOPs
   come from the formula, 4·t²·h per head and row for the causal forward, 3.5 times
   that for the backward (dq and dkv recompute the scores), once more under remat.
3. Collectives, by formula, per micro-step: fsdp gathers every weight in the compute
   dtype once per forward (twice under remat) and once for the backward and
   reduce-scatters the gradient; tensor parallelism all-reduces the (rows, t, d)
   activations twice per layer per pass; data parallelism all-reduces the gradient.
4. Roofline: each phase takes the longest of its FLOPs at peak, HBM bytes at HBM
   bandwidth and collective bytes at ICI bandwidth, as if they overlapped perfectly.

So the step time is a lower bound and the MFU an upper bound, not a measurement;
DCN traffic between slices is not modelled. MFU counts model FLOPs (6 per matmul
parameter per token plus causal attention; no remat), as MaxText does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from tqdm import tqdm

from marco_jax import loops
from marco_jax.errors import MarcoError
from marco_jax.topology import chip_of, slice_count
from marco_jax.train.config import TrainConfig
from marco_jax.train.memory import abstract_step_inputs, per_device_bytes
from marco_jax.train.metrics import flops_per_token
from marco_jax.train.trainer import Setup, set_up

SPLASH_BACKWARD = 3.5  # backward FLOPs of the splash kernels per forward FLOP
# libtpu options of the counted variants: no windowed einsum (a loop per gathered matmul)
COUNTING_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


@dataclasses.dataclass(frozen=True)
class Work:
    """FLOPs and HBM bytes per device."""

    flops: float
    bytes: float

    def __add__(self, other: "Work") -> "Work":
        return Work(self.flops + other.flops, self.bytes + other.bytes)

    def __sub__(self, other: "Work") -> "Work":
        return Work(self.flops - other.flops, self.bytes - other.bytes)

    def __mul__(self, k: float) -> "Work":
        return Work(self.flops * k, self.bytes * k)


def _counted(compiled) -> Work:
    """The compiler's FLOP and HBM byte counts of ``compiled``."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return Work(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))


def _micro_work(cfg: TrainConfig, devices: list, layers: int) -> Work:
    """The work of one micro-step (the whole step less the optimizer update) of an
    unrolled ``layers``-layer variant with one micro-batch of the run's size."""
    per_micro = cfg.train.global_batch // cfg.train.micro_batches
    one = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, micro_batches=1, global_batch=per_micro))
    setup = set_up(one, devices, layers=layers)
    state, batch = abstract_step_inputs(one, setup)
    program = setup.program
    grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(
        p.shape, jnp.dtype(cfg.train.accumulate_dtype), sharding=p.sharding), state.params)
    weight = jax.ShapeDtypeStruct((), jnp.float32)
    with loops.unrolled():
        step = program.step.lower(state, batch).compile(compiler_options=COUNTING_OPTIONS)
        update = jax.jit(program.update, in_shardings=(program.state_shardings, None, None),
                         out_shardings=(program.state_shardings, None), donate_argnums=(0,),
                         ).lower(state, grads, weight).compile(compiler_options=COUNTING_OPTIONS)
    for compiled in (step, update):
        left = compiled.as_text().count(" while(")
        if left:
            raise MarcoError(f"estimate: the compiled {layers}-layer step keeps {left} loops, "
                             "whose bodies its cost analysis would count once")
    return _counted(step) - _counted(update)


def splash_flops(cfg: TrainConfig, setup: Setup) -> float:
    """Per device, per micro-step: the attention kernels' FLOPs over all layers."""
    model = setup.layout.cfg
    tensor = setup.mesh.shape["tensor"]
    heads = model.num_heads // tensor if model.num_heads % tensor == 0 else model.num_heads
    t = cfg.data.seq_len
    forward = 4 * t * t * model.head_dim / 2 * heads * setup.rows_per_device
    passes = 1 + SPLASH_BACKWARD + (cfg.model.remat not in ("none", "save_out_proj"))
    return forward * passes * model.num_layers


def collective_bytes(cfg: TrainConfig, setup: Setup) -> float:
    """Per device, per micro-step: bytes sent by fsdp, tensor and data collectives."""
    model = setup.layout.cfg
    fsdp, tensor, data = (setup.mesh.shape[axis] for axis in ("fsdp", "tensor", "data"))
    compute = jnp.dtype(model.compute_dtype).itemsize
    param = jnp.dtype(model.param_dtype).itemsize
    shard = model.num_params() / tensor
    gathers = 3 if cfg.model.remat != "none" else 2
    total = (gathers * compute + param) * shard * (fsdp - 1) / fsdp
    passes = 4 if cfg.model.remat != "none" else 3
    activation = setup.rows_per_device * cfg.data.seq_len * model.hidden_size * compute
    total += 2 * model.num_layers * passes * activation * 2 * (tensor - 1) / tensor
    total += 2 * param * shard / fsdp * (data - 1) / data
    return total


def update_traffic(setup: Setup, cfg: TrainConfig) -> float:
    """Per device: HBM bytes of the optimizer update (parameters and optimizer state read
    and written, the accumulated gradient read)."""
    state = setup.program.abstract_state
    params = per_device_bytes(state.params)
    gradient = params * jnp.dtype(cfg.train.accumulate_dtype).itemsize // jnp.dtype(
        setup.layout.cfg.param_dtype).itemsize
    return 2 * (params + per_device_bytes(state.opt_state)) + gradient


def step_estimate(cfg: TrainConfig, devices: list, progress: bool = True) -> dict[str, Any]:
    """The estimated step time, tokens/s per chip and MFU of ``cfg`` on ``devices``
    (compile-only TPU devices of a known chip); see the module docstring."""
    chip = chip_of(devices[0].device_kind)
    if chip is None:
        raise MarcoError(f"no published figures for {devices[0].device_kind!r}: the estimate "
                         "covers TPU v5e, v5p and v6e")
    setup = set_up(cfg, devices)
    micro = {n: _micro_work(cfg, devices, n)
             for n in tqdm((1, 2), desc="estimate: compiling unrolled 1- and 2-layer steps",
                           disable=not progress, leave=False)}
    m = cfg.train.micro_batches
    attention = setup.attention
    kernel_flops = splash_flops(cfg, setup) if attention == "splash" else 0.0
    micro_work = (micro[1] + (micro[2] - micro[1]) * (setup.layout.cfg.num_layers - 1)
                  + Work(kernel_flops, 0.0))
    comm = collective_bytes(cfg, setup)
    phases = {"compute": micro_work.flops / chip.peak_flops,
              "memory": micro_work.bytes / chip.hbm_bandwidth,
              "collectives": comm / chip.ici_bandwidth}
    bound = max(phases, key=phases.get)
    update_bytes = update_traffic(setup, cfg)
    update_s = update_bytes / chip.hbm_bandwidth
    step_s = m * phases[bound] + update_s
    tokens = m * setup.rows * cfg.data.seq_len
    model_flops = flops_per_token(setup.layout.cfg, cfg.data.seq_len) * tokens
    return {"method": "roofline over the TPU compiler's unrolled 1- and 2-layer counts "
                      "(marco_jax/train/estimate.py): a lower bound on step time",
            "chip": chip.name, "attention": attention,
            "step_seconds": step_s, "bound": bound,
            "micro_step_seconds": phases,
            "update_seconds": update_s,
            "tokens_per_second_per_chip": tokens / step_s / len(devices),
            "mfu": model_flops / (step_s * chip.peak_flops * len(devices)),
            "model_flops_per_step": model_flops,
            "executed_flops_per_device": m * micro_work.flops,
            "attention_kernel_flops_per_device": m * kernel_flops,
            "hbm_bytes_per_device": m * micro_work.bytes + update_bytes,
            "collective_bytes_per_device": m * comm,
            "layers_extrapolated_from": [1, 2], "micro_batches": m,
            "rows_per_device_per_micro_step": setup.rows_per_device,
            "peak_flops_per_chip": chip.peak_flops, "chips": len(devices),
            "slices": slice_count(devices)}
