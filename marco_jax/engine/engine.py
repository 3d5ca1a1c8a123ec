"""The inference engine: continuous batching over the paged KV cache.

``Engine`` keeps ``slots`` decode slots busy. Each ``step()`` retires the
requests that finished (EOS, a stop string, their token budget), admits
waiting ones into the free slots, writes their uncached context into their
blocks in fixed-shape prefill calls (the shape that pads least), and runs
one decode call of up to ``decode_steps`` tokens for every slot. Shapes never
depend on the requests: one decode program per block-table width bucket and
one prefill program per (rows, chunk) shape and width, compiled once each (``num_programs``; ``warmup()`` builds them all).

A request's sample depends only on its own tokens, settings and seed (the
random number of its i-th token comes from ``fold_in(key(seed), i)``), not on
its slot or what else is running. ``generate`` is the synchronous call;
``submit`` and ``step`` stream completions as they finish, ``in_flight``
shows a request's tokens so far and ``cancel`` drops it (a server whose
client went away).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from marco_jax.engine import stops
from marco_jax.engine import programs
from marco_jax.engine.blocks import BlockManager
from marco_jax.engine.kv_pages import blocks_for_budget, make_pages
from marco_jax.engine.scheduler import Request, Scheduler
from marco_jax.errors import MarcoError
from marco_jax.model import Qwen2
from marco_jax.sharding import ShardingRules, shard_state

FILTER_WIDTH = 256  # candidates for top-k / top-p thresholds (see sampling.py)
MIN_TABLE_WIDTH = 8  # blocks: the narrowest decode program


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    slots: int = 64  # decode slots: requests decoded together
    decode_steps: int = 16  # tokens per slot per decode call
    block_size: int = 16  # tokens per KV block
    max_model_len: int = 2048  # prompt + new tokens of one request
    # Pool size; None: room for every slot at max_model_len, at most
    # kv_memory_fraction of free device memory.
    kv_cache_gb: float | None = None
    kv_memory_fraction: float = 0.5
    # Prefill programs as (rows, chunk): many short pieces at once when many
    # requests arrive together, a few when slots free up one by one (a search's
    # steady state: short uncached suffixes), one longer piece for a lone long
    # admission, so a call pads as little as it can (each picks the shape that
    # wastes least).
    prefill_shapes: tuple[tuple[int, int], ...] = ((16, 32), (4, 32), (1, 128), (1, 512))
    top_logprobs: int = 5
    policy: str = "fcfs"  # or "longest_first" (offline batches: fewer idle slots at the end)
    use_kernel: bool = True  # the TPU paged-attention kernel for decode, where it applies

    def __post_init__(self):
        checks = [
            (self.slots >= 1, f"slots must be >= 1, got {self.slots}"),
            (self.decode_steps >= 1, f"decode_steps must be >= 1, got {self.decode_steps}"),
            (self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}"),
            (self.max_model_len >= 2, f"max_model_len must be >= 2, got {self.max_model_len}"),
            (bool(self.prefill_shapes) and len(set(self.prefill_shapes)) == len(self.prefill_shapes)
             and all(len(s) == 2 and min(s) >= 1 for s in self.prefill_shapes),
             f"prefill_shapes {self.prefill_shapes} must be distinct (rows, chunk) pairs >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise MarcoError(f"engine config: {message}")


@dataclasses.dataclass
class Completion:
    """A finished request: its new tokens and, per token, the chosen token's
    log-probability, the top-k of the untempered distribution and Marco-o1's
    confidence c_i = exp(p(t_i)) / sum_k exp(p(t_k))."""

    request_id: int
    prompt: list[int]
    tokens: list[int]
    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    confidences: np.ndarray
    finish_reason: str  # "eos", "stop" (a stop string) or "length"
    cached_tokens: int  # prompt tokens found in the prefix cache, not prefilled

    @property
    def confidence(self) -> float:
        """Marco-o1's rollout value v = mean_i c_i."""
        return float(self.confidences.mean()) if len(self.confidences) else 0.0


@dataclasses.dataclass
class EngineStats:
    decode_calls: int = 0
    prefill_calls: int = 0
    slot_steps: int = 0  # slots x decode steps run
    kept_tokens: int = 0  # slot-steps that produced a kept token
    prefilled_tokens: int = 0  # context tokens written by prefill
    cached_tokens: int = 0  # context tokens found in the prefix cache
    compile_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def utilisation(self) -> float:
        return self.kept_tokens / self.slot_steps if self.slot_steps else 0.0


def _per_row(value: Any, rows: int, name: str) -> list:
    if np.ndim(value) == 0:
        return [value] * rows
    if len(value) != rows:
        raise MarcoError(f"{name} must be one value or one per prompt ({rows}), got {len(value)}")
    return list(value)


class Engine:
    """Continuous batching of generation requests over one model and KV pool.

    With ``mesh``, parameters are placed by ``rules``, slots are split over the
    data axes and the pool's KV heads over ``tensor``.
    """

    def __init__(self, model: Qwen2, eos_ids: Sequence[int], config: EngineConfig = EngineConfig(),
                 *, stop_table: stops.StopTable | None = None, mesh: Mesh | None = None,
                 rules: ShardingRules = ShardingRules()):
        cfg = model.cfg
        self.cfg, self.config = cfg, config
        if not eos_ids:
            raise MarcoError("the engine needs at least one EOS token id")
        if not 1 <= config.top_logprobs <= cfg.vocab_size:
            raise MarcoError(f"top_logprobs must be in [1, {cfg.vocab_size}]")
        if config.max_model_len > cfg.max_position_embeddings:
            raise MarcoError(f"max_model_len {config.max_model_len} exceeds the model's "
                             f"max_position_embeddings {cfg.max_position_embeddings}")
        self.mesh, self.rules = mesh, rules
        self.graphdef, self.params = nnx.split(model)
        if mesh is not None:
            self.params = shard_state(self.params, mesh, rules)
        self.max_blocks = math.ceil(config.max_model_len / config.block_size)
        num_blocks = blocks_for_budget(cfg, config.block_size, config.kv_cache_gb,
                                       config.kv_memory_fraction)
        if config.kv_cache_gb is None:  # no larger than every slot at full length needs
            num_blocks = min(num_blocks, config.slots * self.max_blocks + 1)
        self.pages = make_pages(cfg, num_blocks, config.block_size, mesh, rules)
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(config.slots, self.blocks, self.max_blocks, config.policy)
        self.eos_ids = jnp.asarray(eos_ids, jnp.int32)
        table = stop_table or stops.StopTable.empty(cfg.vocab_size)
        if table.table_sjv.shape[-1] != cfg.vocab_size:
            raise MarcoError(f"stop table covers {table.table_sjv.shape[-1]} tokens, the model "
                             f"has {cfg.vocab_size}")
        self.stop_table = table
        self._stop_arrays = (jnp.asarray(table.table_sjv), jnp.asarray(table.lengths_s))
        self.state = self._idle_state()
        self.stats = EngineStats()
        self._programs: dict[tuple, Any] = {}
        self._next_id = 0
        self._prefill_queue: list[Request] = []
        self._in_flight: dict[int, Request] = {}  # submitted, not finished or cancelled

    # ---- requests -------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0, priority: int = 0,
               stops: Sequence[str] | None = None) -> int:
        """Queue a request; returns its id. Invalid settings are refused here.
        Waiting requests are admitted by ``priority`` (lower first), then in order.
        ``stops``: which of the engine's stop strings end this request (None: all)."""
        vocab = self.cfg.vocab_size
        rid = self._next_id
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise MarcoError(f"request {rid}: the prompt is empty (it needs at least one token)")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise MarcoError(f"request {rid}: prompt has token ids outside [0, {vocab})")
        if max_new_tokens < 1:
            raise MarcoError(f"request {rid}: max_new_tokens must be >= 1, got {max_new_tokens}")
        if len(prompt) + max_new_tokens > self.config.max_model_len:
            raise MarcoError(f"request {rid}: {len(prompt)} prompt tokens + max_new_tokens "
                             f"{max_new_tokens} exceed max_model_len {self.config.max_model_len}")
        if not (np.isfinite(temperature) and temperature >= 0):
            raise MarcoError(f"request {rid}: temperature must be finite and >= 0, "
                             f"got {temperature}")
        if not 0 <= top_k <= FILTER_WIDTH:
            raise MarcoError(f"request {rid}: top_k must be in [0, {FILTER_WIDTH}] (0: off), "
                             f"got {top_k}")
        if not 0 < top_p <= 1:
            raise MarcoError(f"request {rid}: top_p must be in (0, 1] (1: off), got {top_p}")
        if not 0 <= seed < 2 ** 31:
            raise MarcoError(f"request {rid}: seed must be in [0, 2**31), got {seed}")
        request = Request(rid, prompt, int(max_new_tokens), float(temperature), int(top_k),
                          float(top_p), int(seed), int(priority), self._stop_mask(rid, stops))
        self.scheduler.add(request)
        self._in_flight[rid] = request
        self._next_id += 1
        return rid

    def _stop_mask(self, rid: int, strings: Sequence[str] | None) -> np.ndarray:
        known = self.stop_table.strings
        mask = np.ones(self._stop_arrays[1].shape[0], bool)
        if strings is not None:
            unknown = sorted(set(strings) - set(known))
            if unknown:
                raise MarcoError(f"request {rid}: stop strings {unknown} are not in the engine's "
                                 f"stop table {list(known)}")
            mask[:len(known)] = [k in strings for k in known]
        return mask

    def in_flight(self, request_id: int) -> Request | None:
        """A waiting or running request, with what it has generated so far (None
        once it has finished or been cancelled); read it, do not change it."""
        return self._in_flight.get(request_id)

    def cancel(self, request_id: int) -> bool:
        """Drop a waiting or running request: its slot and blocks are free for the
        next step (the full blocks it wrote stay findable). False: not in flight."""
        request = self._in_flight.pop(request_id, None)
        if request is None:
            return False
        if request.slot < 0:
            self.scheduler.remove_waiting(request_id)
            return True
        self.scheduler.retire(request)
        self.state["reason_s"][request.slot] = programs.IDLE
        return True

    @property
    def has_work(self) -> bool:
        return not self.scheduler.idle

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int], *,
                 temperature: float | Sequence[float] = 0.0, top_k: int | Sequence[int] = 0,
                 top_p: float | Sequence[float] = 1.0,
                 seed: int | Sequence[int] = 0) -> list[Completion]:
        """Complete every prompt; settings are one value or one per prompt, and an
        int ``seed`` gives prompt ``i`` the seed ``seed + i``."""
        rows = len(prompts)
        if rows == 0:
            raise MarcoError("no prompts to generate from")
        seeds = [seed + i for i in range(rows)] if np.ndim(seed) == 0 else seed
        settings = zip(_per_row(max_new_tokens, rows, "max_new_tokens"),
                       _per_row(temperature, rows, "temperature"), _per_row(top_k, rows, "top_k"),
                       _per_row(top_p, rows, "top_p"), _per_row(seeds, rows, "seed"))
        ids = [self.submit(p, n, temperature=t, top_k=k, top_p=q, seed=s)
               for p, (n, t, k, q, s) in zip(prompts, settings)]
        done: dict[int, Completion] = {}
        while len(done) < rows:
            done.update((c.request_id, c) for c in self.step())
        return [done[i] for i in ids]

    # ---- one scheduler iteration ----------------------------------------------------

    def step(self) -> list[Completion]:
        """Admit, prefill, decode once, retire; returns the requests that finished."""
        admitted = self.scheduler.admit()
        for request in admitted:
            self._start_slot(request)
        self._prefill_queue += [r for r in admitted if r.prefilled < r.context_end]
        self._run_prefills()
        if not any(self.scheduler.running):
            return []
        return self._run_decode()

    def _start_slot(self, request: Request) -> None:
        s = request.slot
        state = self.state
        state["token_s"][s] = request.prompt[-1]
        state["position_s"][s] = len(request.prompt) - 1
        state["count_s"][s] = 0
        state["max_new_s"][s] = request.max_new_tokens
        state["reason_s"][s] = programs.RUNNING
        state["stop_sj"][s] = 0
        state["stop_on_sj"][s] = request.stop_on_j
        state["temperature_s"][s] = request.temperature
        state["top_k_s"][s] = request.top_k
        state["top_p_s"][s] = request.top_p
        state["seed_s"][s] = request.seed
        self.stats.cached_tokens += request.cached_tokens

    def _idle_state(self) -> dict[str, np.ndarray]:
        s, j = self.config.slots, self.stop_table.table_sjv.shape[0]
        return dict(token_s=np.zeros(s, np.int32), position_s=np.zeros(s, np.int32),
                    count_s=np.zeros(s, np.int32), max_new_s=np.ones(s, np.int32),
                    reason_s=np.full(s, programs.IDLE, np.int32),
                    stop_sj=np.zeros((s, j), np.int32), stop_on_sj=np.zeros((s, j), bool),
                    temperature_s=np.zeros(s, np.float32),
                    top_k_s=np.zeros(s, np.int32), top_p_s=np.ones(s, np.float32),
                    seed_s=np.zeros(s, np.int32))

    def _run_prefills(self) -> None:
        """Write every admitted request's uncached context, one chunk per request
        per call, in the shape that pads least this call (then: covers most)."""
        size = self.config.block_size

        def covered(shape: tuple[int, int]) -> int:
            rows, chunk = shape
            return sum(min(chunk, r.context_end - r.prefilled) for r in self._prefill_queue[:rows])

        while self._prefill_queue:
            rows, chunk = max(self.config.prefill_shapes,
                              key=lambda s: (covered(s) / (s[0] * s[1]), covered(s)))
            batch = self._prefill_queue[:rows]
            tokens = np.zeros((rows, chunk), np.int32)
            positions = np.zeros((rows, chunk), np.int32)
            valid = np.zeros((rows, chunk), bool)
            table = np.zeros((rows, self.max_blocks), np.int32)
            for i, request in enumerate(batch):
                start = request.prefilled
                end = min(start + chunk, request.context_end)
                tokens[i, :end - start] = request.prompt[start:end]
                positions[i] = start + np.arange(chunk)
                valid[i, :end - start] = True
                table[i, :len(request.blocks)] = request.blocks
                request.prefilled = end
                self.stats.prefilled_tokens += end - start
            width = self._table_width(max(r.prefilled for r in batch))
            program, args = self._prefill_program(tokens, positions, valid, table[:, :width])
            start_time = time.perf_counter()
            self.pages = program(*args)
            jax.block_until_ready(self.pages)
            self.stats.prefill_s += time.perf_counter() - start_time
            self.stats.prefill_calls += 1
            for request in batch:
                if request.prefilled == request.context_end:  # later requests may share it
                    self.blocks.name(request.prompt, request.blocks, request.context_end // size)
            self._prefill_queue = [r for r in self._prefill_queue if r.prefilled < r.context_end]

    def _table_width(self, positions: int) -> int:
        """Block-table width of a call whose rows reach ``positions`` positions: the
        smallest power of two (at least MIN_TABLE_WIDTH, at most the maximum) that
        covers them, so attention reads no more blocks than it needs."""
        need = math.ceil(positions / self.config.block_size)
        return min(self.max_blocks, max(MIN_TABLE_WIDTH, 1 << max(need - 1, 0).bit_length()))

    def _run_decode(self) -> list[Completion]:
        # Positions this call can reach: each slot's next position plus the steps.
        reach = max(int(self.state["position_s"][r.slot]) for r in self.scheduler.running if r)
        width = self._table_width(reach + self.config.decode_steps)
        program, args = self._decode_program(width)
        start = time.perf_counter()
        self.pages, state, out = program(*args)
        state, out = jax.device_get((state, out))
        self.stats.decode_s += time.perf_counter() - start
        self.stats.decode_calls += 1
        self.state = {k: np.array(v) for k, v in dataclasses.asdict(state).items()}
        produced = np.asarray(out.produced)
        self.stats.slot_steps += self.config.slots * int(produced.any(0).sum())
        self.stats.kept_tokens += int(produced.sum())
        finished = []
        for request in self.scheduler.running:
            if request is None:
                continue
            s = request.slot
            kept = produced[s]
            request.tokens += out.tokens[s][kept].tolist()
            request.logprobs += out.logprobs[s][kept].tolist()
            request.top_ids += list(out.top_ids[s][kept])
            request.top_logprobs += list(out.top_logprobs[s][kept])
            request.confidences += out.confidences[s][kept].tolist()
            reason = int(self.state["reason_s"][s])
            if reason != programs.RUNNING:
                finished.append(self._finish(request, programs.FINISH_REASONS[reason]))
        return finished

    def _finish(self, request: Request, reason: str) -> Completion:
        del self._in_flight[request.id]
        self.scheduler.retire(request)
        self.state["reason_s"][request.slot] = programs.IDLE
        k = self.config.top_logprobs
        return Completion(request.id, request.prompt, request.tokens,
                          np.asarray(request.logprobs, np.float32),
                          np.asarray(request.top_ids, np.int32).reshape(-1, k),
                          np.asarray(request.top_logprobs, np.float32).reshape(-1, k),
                          np.asarray(request.confidences, np.float32), reason,
                          request.cached_tokens)

    # ---- programs and placement -----------------------------------------------------

    @property
    def num_programs(self) -> int:
        return len(self._programs)

    @property
    def layout(self) -> programs.Layout:
        return (self.mesh, self.rules)

    def _put_rows(self, array: np.ndarray) -> jax.Array:
        """A per-row host array on the mesh, rows split over the batch axes."""
        if self.mesh is None:
            return jnp.asarray(array)
        axes = ("batch",) + (None,) * (array.ndim - 1)
        return jax.device_put(array, self.rules.sharding(axes, array.shape, self.mesh))

    def _program(self, name: str, fn, statics: dict, args: tuple):
        """The compiled ``fn`` for these argument shapes (the pool is donated)."""
        key = (name, tuple(sorted(statics.items())),
               tuple((a.shape, a.dtype) for a in jax.tree.leaves(args)))
        if key not in self._programs:
            start = time.perf_counter()
            jitted = jax.jit(functools.partial(fn, **statics, layout=self.layout),
                             static_argnums=0, donate_argnames=("pages",))
            self._programs[key] = jitted.lower(self.graphdef, *args).compile()
            self.stats.compile_s += time.perf_counter() - start
        return self._programs[key]

    def _decode_program(self, width: int):
        """The decode program for a ``width``-block table, and its arguments now."""
        state = programs.SlotState(**{k: self._put_rows(v) for k, v in self.state.items()})
        table = self._put_rows(self.scheduler.table_sm[:, :width])
        args = (self.params, self.pages, state, table, self.eos_ids, *self._stop_arrays)
        statics = dict(steps=self.config.decode_steps, top_logprobs=self.config.top_logprobs,
                       width=FILTER_WIDTH, use_kernel=self.config.use_kernel)
        return self._program("decode", programs.decode_steps, statics, args), args

    def _prefill_program(self, *rows: np.ndarray):
        """The prefill program for these (tokens, positions, valid, table) shapes,
        and its arguments."""
        args = (self.params, self.pages, *map(self._put_rows, rows))
        return self._program("prefill", programs.prefill_chunk, {}, args), args

    def warmup(self) -> int:
        """Compile every program this engine can run (decode at each table width,
        prefill at each shape and width), so that no request triggers a
        compile later; returns the count."""
        widths = sorted({min(self.max_blocks, max(MIN_TABLE_WIDTH, 1 << i))
                         for i in range(self.max_blocks.bit_length() + 1)})
        for width in widths:
            self._decode_program(width)
            for rows, chunk in self.config.prefill_shapes:
                self._prefill_program(np.zeros((rows, chunk), np.int32),
                                      np.zeros((rows, chunk), np.int32),
                                      np.zeros((rows, chunk), bool),
                                      np.zeros((rows, width), np.int32))
        return self.num_programs
