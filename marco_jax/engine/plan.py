"""The engine compiled ahead of time for a TPU topology, on any host (issue 33): every
decode program (one per block-table width) and every prefill program (one per shape and
width), compiled by libtpu for compile-only devices from abstract parameters, so a 7B
plan allocates nothing.

Per device it reports HBM (weights, the KV pool, the largest program's peak, against
the chip's limit) and, per decode program, a step time from the TPU compiler's cost
model, the decode tokens/s it implies and the fraction of the HBM roofline it reaches.

- What ``cost_analysis()`` gives on TPU: ``flops``, ``bytes accessed`` (the traffic of
  every memory space: a weight prefetched into VMEM is counted as it is read from HBM
  and again as the matmul reads it from VMEM) and ``optimal_seconds``, the cost model's
  time, less one second for each op it does not price. The only unpriced ops seen in
  the engine's programs are ``ConcatBitcast`` custom calls (views that join a weight's
  prefetched slices: no work), so they are counted and the seconds given back.
- Step time: that cost-model time. It counts a loop body once, so a decode call's time
  is its fixed work (a layout change of the pool on entry and exit, if any) plus one
  step; two calls compiled back to back take one step more, and a call of ``steps``
  steps is the one call plus ``steps - 1`` such differences. The Pallas paged-attention
  kernel is opaque to the cost model (its reads of the pool are not priced), so the
  live KV it reads is added at HBM bandwidth. Collectives are priced by the model.
  Where ops stay unpriced, the step falls back to a roofline over the counts (FLOPs at
  peak, bytes at HBM bandwidth).
- HBM roofline: the bytes a step must read, the weights it multiplies by (all but an
  untied input embedding, of which it reads one row per slot) plus the live KV (every
  slot's context at the table's full width), at HBM bandwidth. Its fraction is that
  time over the step time: 1.0 reads every byte once at the chip's full bandwidth.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from marco_jax.engine import device_programs
from marco_jax.engine.device_programs import SlotState
from marco_jax.engine.engine import FILTER_WIDTH, MIN_TABLE_WIDTH, EngineConfig
from marco_jax.engine.kv_pages import (PAGE_AXES, KVPages, Placement, blocks_for_budget,
                                       make_pages)
from marco_jax.engine.stops import StopTable
from marco_jax.errors import MarcoError
from marco_jax.model import abstract_model
from marco_jax.model_config import Qwen2Config
from marco_jax.sharding import make_mesh, state_shardings
from marco_jax.topology import Chip, chip_of


@dataclasses.dataclass(frozen=True)
class ProgramPlan:
    """One compiled program, per device: the compiler's memory plan and counts."""

    kind: str  # "decode", "decode x2" (two calls, for the step's counts) or "prefill"
    rows: int  # slots (decode) or prefill rows
    chunk: int  # tokens per row: 1 (decode) or the prefill chunk
    width: int  # block-table width (blocks per row)
    peak_bytes: int
    temp_bytes: int
    flops: float
    bytes_accessed: float
    optimal_seconds: float
    unpriced_views: int  # ConcatBitcast custom calls: -1 s each in optimal_seconds
    kernel: bool  # a Pallas (Mosaic) kernel is in the compiled program
    compile_seconds: float

    @property
    def cost_model_seconds(self) -> float | None:
        """The cost model's time, or None where ops other than views stay unpriced."""
        seconds = self.optimal_seconds + self.unpriced_views
        return seconds if seconds >= 0 else None


@dataclasses.dataclass(frozen=True)
class DecodeEstimate:
    """A decode call of ``steps`` steps at one table width, per device."""

    slots: int
    width: int
    context: int  # tokens per slot the width covers
    step_flops: float
    step_bytes: float  # bytes accessed by one step, as counted (every memory space)
    kernel_kv_bytes: float  # per step, read by the opaque kernel (0 without it)
    counted_step_seconds: float  # roofline over the counts, a call's time over its steps
    cost_model_step_seconds: float | None  # the cost model's, likewise
    step_seconds: float  # the cost model's where it priced every op, else the counted
    tokens_per_second: float
    must_read_bytes: float  # per step: weights multiplied by + live KV
    roofline_fraction: float


@dataclasses.dataclass(frozen=True)
class EnginePlan:
    """Every program of one engine on one topology, with its HBM and decode estimates."""

    model: str
    topology: str
    chip: str
    devices: int
    mesh: dict[str, int]
    kv_dtype: str
    decode_steps: int
    block_size: int
    max_model_len: int
    num_blocks: int
    hbm_limit_bytes: int
    hbm_bandwidth: float
    weight_bytes: int
    kv_pool_bytes: int
    programs: list[ProgramPlan]
    decode: list[DecodeEstimate]

    def to_json(self) -> dict[str, Any]:
        """The plan with what the engine needs per device: its largest program's peak
        (programs run one at a time; a peak holds the pool and the weights it uses)."""
        engine = [p for p in self.programs if p.kind != "decode x2"]
        return {**dataclasses.asdict(self), "peak_bytes": max(p.peak_bytes for p in engine)}


def engine_mesh(cfg: Qwen2Config, devices: list, sizes: dict[str, int] | None = None,
                ) -> jax.sharding.Mesh:
    """``sizes``, or tensor parallelism as wide as the heads divide (each device then
    reads the fewest weight bytes a step) and data parallelism over the other devices."""
    if sizes is None:
        n = len(devices)
        tensor = max(t for t in range(1, n + 1) if n % t == 0 and cfg.num_heads % t == 0
                     and cfg.num_kv_heads % t == 0)
        sizes = {"data": n // tensor, "fsdp": 1, "tensor": tensor}
    return make_mesh(**sizes, devices=devices)


def table_widths(config: EngineConfig) -> list[int]:
    """Every block-table width the engine compiles (as ``Engine.warmup`` does)."""
    max_blocks = math.ceil(config.max_model_len / config.block_size)
    return sorted({min(max_blocks, max(MIN_TABLE_WIDTH, 1 << (n - 1).bit_length()))
                   for n in (1 << i for i in range(max_blocks.bit_length() + 1))})


def kv_dtype(cfg: Qwen2Config, config: EngineConfig) -> str:
    """The pool's dtype, as the engine resolves ``kv_dtype``."""
    return cfg.compute_dtype if config.kv_dtype == "auto" else config.kv_dtype


def pool_blocks(cfg: Qwen2Config, config: EngineConfig) -> int:
    """The pool's blocks: ``kv_cache_gb``'s worth, else every slot at full length (the
    engine's cap; on a chip it also stays within a fraction of free memory)."""
    if config.kv_cache_gb is not None:
        return blocks_for_budget(cfg, config.block_size, config.kv_cache_gb, 1.0,
                                 kv_dtype(cfg, config))
    return config.slots * math.ceil(config.max_model_len / config.block_size) + 1


def _shaped(tree: Any, placement: Placement, axes_of: Callable[[Any], tuple]) -> Any:
    """Shape-only leaves of ``tree`` (arrays or shapes) placed by ``axes_of(leaf)``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=placement.sharding(axes_of(x), x.shape)), tree)


def _rows(x: Any) -> tuple:
    return ("batch",) + (None,) * (len(x.shape) - 1)


def abstract_params(cfg: Qwen2Config, placement: Placement) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph and shape-only parameters with the engine's shardings."""
    graphdef, state = abstract_model(cfg)
    shardings = state_shardings(state, placement.mesh, placement.rules)
    return graphdef, jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def abstract_pages(cfg: Qwen2Config, config: EngineConfig, num_blocks: int,
                   placement: Placement) -> KVPages:
    """The KV pool as the engine makes it, shape-only and placed."""
    pages = jax.eval_shape(lambda: make_pages(cfg, num_blocks, config.block_size, placement,
                                              kv_dtype(cfg, config)))
    return _shaped(pages, placement, lambda x: PAGE_AXES)


def decode_args(cfg: Qwen2Config, slots: int, width: int, placement: Placement) -> tuple:
    """``decode_steps``' arguments after the parameters and pages, shape-only: the slot
    state and table over the batch axes, the EOS and stop tables (none) and the call's
    step count replicated."""
    stops = StopTable.empty(cfg.vocab_size)
    j = stops.table_sjv.shape[0]
    i32, f32 = np.int32, np.float32
    state = SlotState(*(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
        ((slots,), i32), ((slots,), i32), ((slots,), i32), ((slots,), i32), ((slots,), i32),
        ((slots, j), i32), ((slots, j), bool), ((slots,), f32), ((slots,), i32),
        ((slots,), f32), ((slots,), i32))))
    rows = _shaped((state, jax.ShapeDtypeStruct((slots, width), i32)), placement, _rows)
    tables = _shaped((np.zeros(1, i32), stops.table_sjv, stops.lengths_s, np.int32(0)),
                     placement, lambda x: (None,) * x.ndim)
    return (*rows, *tables)


def prefill_args(rows: int, chunk: int, width: int, placement: Placement) -> tuple:
    """``prefill_chunk``'s tokens, positions, valid mask and table, shape-only."""
    shapes = ((rows, chunk, np.int32), (rows, chunk, np.int32), (rows, chunk, bool),
              (rows, width, np.int32))
    return _shaped(tuple(jax.ShapeDtypeStruct((r, c), dt) for r, c, dt in shapes),
                   placement, _rows)


def two_decode_calls(decode: Callable, graphdef: nnx.GraphDef, params: nnx.State,
                     pages: KVPages, state: SlotState, *rest: jax.Array):
    """Two decode calls back to back: one loop body more than one call, to count a step."""
    pages, state, first = decode(graphdef, params, pages, state, *rest)
    pages, state, second = decode(graphdef, params, pages, state, *rest)
    return pages, state, (first, second)


def measure(fn: Callable, graphdef: nnx.GraphDef, args: tuple, kind: str, rows: int,
            chunk: int, width: int) -> ProgramPlan:
    """Compile ``fn`` as the engine does (the pool donated) and read the compiler's
    memory plan and counts."""
    start = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=0, donate_argnames=("pages",)).lower(
        graphdef, *args).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    text = compiled.as_text()
    return ProgramPlan(kind, rows, chunk, width, int(memory.peak_memory_in_bytes),
                       int(memory.temp_size_in_bytes), float(cost.get("flops", 0.0)),
                       float(cost.get("bytes accessed", 0.0)),
                       float(cost.get("optimal_seconds", 0.0)),
                       text.count('custom_call_target="ConcatBitcast"'),
                       'custom_call_target="tpu_custom_call"' in text, seconds)


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of ``tree`` (placed shape-only leaves)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def weights_read_bytes(cfg: Qwen2Config, params: nnx.State) -> int:
    """Per device, the weight bytes a decode step multiplies by: all of them but an
    untied input embedding (a step gathers one row of it per slot)."""
    untied_embedding = 0 if cfg.tie_word_embeddings else device_bytes(params["embed_vd"])
    return device_bytes(params) - untied_embedding


def live_kv_bytes(pages: KVPages, local_slots: int, context: int) -> float:
    """Per device, the keys and values of ``local_slots`` slots at ``context`` tokens."""
    positions = pages.blocks * pages.block_size  # a position holds every layer's K and V
    return local_slots * context * device_bytes(pages) / positions


def decode_estimate(one: ProgramPlan, two: ProgramPlan, chip: Chip, steps: int,
                    weights: int, pages: KVPages, local_slots: int) -> DecodeEstimate:
    """A decode step's time from one and two calls' counts (see the module docstring),
    the tokens/s of its slots, and the fraction of the HBM roofline it reaches."""
    step_flops, step_bytes = two.flops - one.flops, two.bytes_accessed - one.bytes_accessed
    context = one.width * pages.block_size
    kv = live_kv_bytes(pages, local_slots, context)
    kernel_s = (kv if one.kernel else 0.0) / chip.hbm_bandwidth
    counted = max((one.flops + (steps - 1) * step_flops) / chip.peak_flops,
                  (one.bytes_accessed + (steps - 1) * step_bytes) / chip.hbm_bandwidth)
    counted_step = counted / steps + kernel_s
    modelled = one.cost_model_seconds, two.cost_model_seconds
    model_step = None if None in modelled else (
        modelled[0] + (steps - 1) * (modelled[1] - modelled[0])) / steps + kernel_s
    step = counted_step if model_step is None else model_step
    must_read = weights + kv
    return DecodeEstimate(one.rows, one.width, context, step_flops, step_bytes,
                          kernel_s * chip.hbm_bandwidth, counted_step, model_step, step,
                          one.rows / step, must_read, must_read / chip.hbm_bandwidth / step)


def plan_engine(cfg: Qwen2Config, config: EngineConfig, placement: Placement,
                slot_counts: tuple[int, ...], names: tuple[str, str],
                on_program: Callable[[ProgramPlan], None] = lambda p: None,
                widths: list[int] | None = None) -> EnginePlan:
    """Compile every program of an engine over ``placement``'s mesh of compile-only TPU
    devices: prefill at each shape and width over a pool sized by ``config`` (its
    ``slots``), decode at each width for each of ``slot_counts`` slots over that pool.
    ``names``: the model's and topology's; ``on_program`` sees each plan as it is made;
    ``widths``: only these table widths (default: every one the engine compiles)."""
    devices = list(placement.mesh.devices.flat)
    chip = chip_of(devices[0].device_kind)
    if chip is None:
        raise MarcoError(f"no published figures for {devices[0].device_kind!r}: an engine "
                         "plan needs compile-only TPU devices of v5e, v5p or v6e")
    graphdef, params = abstract_params(cfg, placement)
    num_blocks = pool_blocks(cfg, config)
    pages = abstract_pages(cfg, config, num_blocks, placement)
    decode = functools.partial(device_programs.decode_steps, steps=config.decode_steps,
                               top_logprobs=config.top_logprobs, width=FILTER_WIDTH,
                               placement=placement, use_kernel=config.use_kernel)
    prefill = functools.partial(device_programs.prefill_chunk, placement=placement)
    weights = weights_read_bytes(cfg, params)
    programs, estimates = [], []

    def add(plan: ProgramPlan) -> ProgramPlan:
        programs.append(plan)
        on_program(plan)
        return plan

    for width in widths or table_widths(config):
        for rows, chunk in config.prefill_shapes:
            add(measure(prefill, graphdef, (params, pages, *prefill_args(
                rows, chunk, width, placement)), "prefill", rows, chunk, width))
        for slots in slot_counts:
            args = (params, pages, *decode_args(cfg, slots, width, placement))
            one = add(measure(decode, graphdef, args, "decode", slots, 1, width))
            two = add(measure(functools.partial(two_decode_calls, decode), graphdef, args,
                              "decode x2", slots, 1, width))
            local = args[2].token_s.sharding.shard_shape((slots,))[0]
            estimates.append(decode_estimate(one, two, chip, config.decode_steps, weights,
                                             pages, local))
    return EnginePlan(*names, chip.name, len(devices), dict(placement.mesh.shape),
                      kv_dtype(cfg, config), config.decode_steps, config.block_size,
                      config.max_model_len, num_blocks, chip.hbm_bytes, chip.hbm_bandwidth,
                      device_bytes(params), device_bytes(pages), programs, estimates)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def markdown_table(plans: list[dict[str, Any]]) -> str:
    """One row per plan (``EnginePlan.to_json()``) and slot count, at the widest table
    (every slot at ``max_model_len``)."""
    lines = ["| model | topology (chips) | mesh | slots | context | HBM GiB/device: weights "
             "+ KV pool + temp = peak / limit | est. ms/step | decode tokens/s | "
             "must read MiB/step | HBM roofline fraction | kernel |",
             "|" + "---|" * 11]
    for plan in plans:
        chosen = max(e["width"] for e in plan["decode"])
        for e in (e for e in plan["decode"] if e["width"] == chosen):
            own = [p for p in plan["programs"] if p["kind"] == "prefill"
                   or p["kind"] == "decode" and p["rows"] == e["slots"]]
            peak = max(p["peak_bytes"] for p in own)
            temp = peak - plan["weight_bytes"] - plan["kv_pool_bytes"]
            kernel = any(p["kernel"] for p in own if p["kind"] == "decode")
            mesh = " x ".join(f"{k} {v}" for k, v in plan["mesh"].items() if v > 1)
            lines.append(
                f"| {plan['model']} | {plan['topology']} ({plan['devices']}) | {mesh} | "
                f"{e['slots']} | {e['context']} | {_gib(plan['weight_bytes'])} + "
                f"{_gib(plan['kv_pool_bytes'])} + {_gib(temp)} = **{_gib(peak)}** / "
                f"{_gib(plan['hbm_limit_bytes'])} | {1e3 * e['step_seconds']:.2f} | "
                f"{e['tokens_per_second']:,.0f} | {e['must_read_bytes'] / 2**20:,.0f} | "
                f"**{e['roofline_fraction']:.2f}** | {'yes' if kernel else 'no'} |")
    return "\n".join(lines)
