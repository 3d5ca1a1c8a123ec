"""The inference engine: continuous batching over the paged KV cache.

Each ``step()`` admits waiting requests into free decode slots, writes their uncached
context in fixed-shape prefill calls, runs one decode call of up to ``decode_steps``
tokens for every running slot and retires the requests that finished. A decode call
runs the smallest bucket of rows (``decode_buckets``) that holds the running slots, and
one step only when it is a new request's first, so its first token streams at once.
Shapes never depend on the requests, so each device program compiles once (``warmup()``
builds them all). A request's sample depends only on its own tokens, settings and seed,
never on its slot (and its values, to the last bit, on the row counts of its calls'
programs: CPU matmuls sum in an order that depends on the row count).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from marco_jax.engine import device_programs, stops
from marco_jax.engine.blocks import BlockManager
from marco_jax.engine.device_programs import FINISH_REASONS, IDLE, RUNNING, SlotState
from marco_jax.engine.kv_pages import Placement, blocks_for_budget, make_pages
from marco_jax.engine.scheduler import Request, Scheduler
from marco_jax.errors import MarcoError, require
from marco_jax.model import Qwen2
from marco_jax.run_config import choice_checks
from marco_jax.sharding import ShardingRules, shard_state

FILTER_WIDTH = 256  # candidates for top-k / top-p thresholds (see sampling.py)
MIN_TABLE_WIDTH = 8  # blocks: the narrowest decode program


KV_DTYPES = ("auto", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    slots: int = 64  # decode slots: requests decoded together
    decode_steps: int = 16  # tokens per slot per decode call
    block_size: int = 16  # tokens per KV block
    max_model_len: int = 2048  # prompt + new tokens of one request
    # Pool size; None: every slot at max_model_len, within kv_memory_fraction of free memory.
    kv_cache_gb: float | None = None
    kv_memory_fraction: float = 0.5
    # Prefill shapes (rows, chunk): many requests arriving at once, a few as slots
    # free up (a search's steady state), one long admission; a call pads least.
    prefill_shapes: tuple[tuple[int, int], ...] = ((16, 32), (4, 32), (1, 128), (1, 512))
    top_logprobs: int = 5
    policy: str = "fcfs"  # or "longest_first" (offline batches: fewer idle slots at the end)
    use_kernel: bool = True  # the TPU paged-attention kernel for decode, where it applies
    kv_dtype: str = "auto"  # the KV pool's: "auto" (the model's compute dtype) or a dtype
    # Row counts of the decode programs (None: see decode_buckets()); (slots,): one program
    # of every slot per table width, as before buckets.
    decode_buckets: tuple[int, ...] | None = None
    # A decode call that feeds a newly admitted request runs 1 step, not decode_steps,
    # so its first token is out after its prefill and one step.
    first_token_step: bool = True

    def __post_init__(self):
        shapes = self.prefill_shapes
        require([
            (self.slots >= 1, f"slots must be >= 1, got {self.slots}"),
            (self.decode_steps >= 1, f"decode_steps must be >= 1, got {self.decode_steps}"),
            (self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}"),
            (self.max_model_len >= 2, f"max_model_len must be >= 2, got {self.max_model_len}"),
            (bool(shapes) and len(set(shapes)) == len(shapes)
             and all(len(s) == 2 and min(s) >= 1 for s in shapes),
             f"prefill_shapes {shapes} must be distinct (rows, chunk) pairs >= 1"),
            (self.decode_buckets is None
             or (all(1 <= b <= self.slots for b in self.decode_buckets)
                 and self.slots in self.decode_buckets),
             f"decode_buckets {self.decode_buckets} must lie in [1, slots] and hold slots "
             f"({self.slots})"),
            *choice_checks(self, {"kv_dtype": KV_DTYPES}),
        ], "engine config: ")


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
    slot_steps: int = 0  # rows run (the bucket's) x decode steps run
    kept_tokens: int = 0  # slot-steps that produced a kept token
    prefilled_tokens: int = 0  # context tokens written by prefill
    # decode calls by the program's rows (its bucket)
    bucket_calls: dict[int, int] = dataclasses.field(default_factory=dict)
    cached_tokens: int = 0  # context tokens found in the prefix cache
    compile_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def utilisation(self) -> float:
        return self.kept_tokens / self.slot_steps if self.slot_steps else 0.0


def decode_buckets(slots: int, shards: int = 1) -> list[int]:
    """The row counts a decode program is compiled for: ``shards`` (the slots' split over
    the mesh's batch axes, so every device holds rows) times the powers of two, up to and
    with ``slots``. A call runs the smallest that holds its running slots.

    Why every power of two: a step's time grows with its rows where compute, not the
    weights' reads, bounds it (the demo model, 0.5B float32, on a 2-core CPU: one
    client's 64 tokens took 34.6 s in the 32-row program and 7.4 s in a 1-row one,
    BENCHMARKS.md issues 17 and 35), so a call should run at most twice the rows it
    needs. The programs stay few: log2(slots) + 1 per table width (32 slots, 3 widths:
    18 decode programs beside 12 prefill; serve_load run 5 warmed two such engines, the
    second from the compilation cache, and a one-slot one in 189 s). A finer grid would
    compile more to save less than 2x a call."""
    return sorted({min(slots, shards << i) for i in range(slots.bit_length() + 1)})


def _per_row(value: Any, rows: int, name: str) -> list:
    if np.ndim(value) == 0:
        return [value] * rows
    if len(value) != rows:
        raise MarcoError(f"{name} must be one value or one per prompt ({rows}), got {len(value)}")
    return list(value)


class Engine:
    """Continuous batching of generation requests over one model and KV pool. With
    ``mesh``, parameters are placed by ``rules``, slots split over the data axes and
    the pool's KV heads over ``tensor``."""

    def __init__(self, model: Qwen2, eos_ids: Sequence[int], config: EngineConfig = EngineConfig(),
                 *, stop_table: stops.StopTable | None = None, mesh: Mesh | None = None,
                 rules: ShardingRules = ShardingRules()):
        cfg = model.cfg
        table = stop_table or stops.StopTable.empty(cfg.vocab_size)
        require([
            (bool(eos_ids), "the engine needs at least one EOS token id"),
            (1 <= config.top_logprobs <= cfg.vocab_size,
             f"top_logprobs must be in [1, {cfg.vocab_size}]"),
            (config.max_model_len <= cfg.max_position_embeddings,
             f"max_model_len {config.max_model_len} exceeds the model's "
             f"max_position_embeddings {cfg.max_position_embeddings}"),
            (table.table_sjv.shape[-1] == cfg.vocab_size,
             f"stop table covers {table.table_sjv.shape[-1]} tokens, the model has "
             f"{cfg.vocab_size}"),
        ])
        self.cfg, self.config, self.stop_table = cfg, config, table
        self.placement = Placement(mesh, rules)
        self.graphdef, self.params = nnx.split(model)
        if mesh is not None:
            self.params = shard_state(self.params, mesh, rules)
        self.max_blocks = math.ceil(config.max_model_len / config.block_size)
        kv_dtype = cfg.compute_dtype if config.kv_dtype == "auto" else config.kv_dtype
        num_blocks = blocks_for_budget(cfg, config.block_size, config.kv_cache_gb,
                                       config.kv_memory_fraction, kv_dtype)
        if config.kv_cache_gb is None:  # no larger than every slot at full length needs
            num_blocks = min(num_blocks, config.slots * self.max_blocks + 1)
        self.pages = make_pages(cfg, num_blocks, config.block_size, self.placement, kv_dtype)
        self.blocks = BlockManager(num_blocks, config.block_size)
        self.scheduler = Scheduler(config.slots, self.blocks, self.max_blocks, config.policy)
        rows = self.placement.sharding(("batch",), (config.slots,))
        local = config.slots if rows is None else rows.shard_shape((config.slots,))[0]
        self.buckets = sorted(config.decode_buckets
                              or decode_buckets(config.slots, config.slots // local))
        self.eos_ids = jnp.asarray(eos_ids, jnp.int32)
        self._stop_arrays = (jnp.asarray(table.table_sjv), jnp.asarray(table.lengths_s))
        self.state = self._idle_state()
        self.stats = EngineStats()
        self._programs: dict[tuple, Any] = {}
        self._next_id = 0
        self._in_flight: dict[int, Request] = {}  # submitted, not finished or cancelled

    # ---- requests -------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0, priority: int = 0,
               stops: Sequence[str] | None = None) -> int:
        """Queue a request; returns its id. Invalid settings are refused here (the message
        names the setting, not the internal id: the caller knows which request it was).
        Waiting requests are admitted by ``priority`` (lower first), then in order.
        ``stops``: which of the engine's stop strings end this request (None: all)."""
        vocab, limit, rid = self.cfg.vocab_size, self.config.max_model_len, self._next_id
        prompt = [int(t) for t in prompt]
        unknown = sorted(set(stops or ()) - set(self.stop_table.strings))
        require([
            (bool(prompt), "the prompt is empty (it needs at least one token)"),
            (all(0 <= t < vocab for t in prompt), f"the prompt has token ids outside [0, {vocab})"),
            (max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {max_new_tokens}"),
            (len(prompt) + max_new_tokens <= limit, f"{len(prompt)} prompt tokens + "
             f"max_new_tokens {max_new_tokens} exceed max_model_len {limit}"),
            (np.isfinite(temperature) and temperature >= 0,
             f"temperature must be finite and >= 0, got {temperature}"),
            (0 <= top_k <= FILTER_WIDTH, f"top_k must be in [0, {FILTER_WIDTH}] (0: off), "
             f"got {top_k}"),
            (0 < top_p <= 1, f"top_p must be in (0, 1] (1: off), got {top_p}"),
            (0 <= seed < 2 ** 31, f"seed must be in [0, 2**31), got {seed}"),
            (not unknown, f"stop strings {unknown} are not in the engine's stop table "
             f"{list(self.stop_table.strings)}"),
        ])
        request = Request(rid, prompt, int(max_new_tokens), float(temperature), int(top_k),
                          float(top_p), int(seed), int(priority), self._stop_mask(stops))
        self.scheduler.add(request)
        self._in_flight[rid] = request
        self._next_id += 1
        return rid

    def _stop_mask(self, strings: Sequence[str] | None) -> np.ndarray:
        """Which automata end the request (None: all; the no-strings dummy never accepts)."""
        known = self.stop_table.strings
        mask = np.ones(self._stop_arrays[1].shape[0], bool)
        if strings is not None:
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
        else:
            self._free_slot(request)
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
        ids = []
        for i, (p, (n, t, k, q, s)) in enumerate(zip(prompts, settings), 1):
            try:
                ids.append(self.submit(p, n, temperature=t, top_k=k, top_p=q, seed=s))
            except MarcoError as error:  # which prompt, counted from 1 as input lines are
                raise MarcoError(f"prompt {i} of {rows}: {error}") from None
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
        self._run_prefills([r for r in admitted if r.prefilled < r.context_end])
        return self._run_decode() if any(self.scheduler.running) else []

    def _start_slot(self, request: Request) -> None:
        """Load an admitted request's settings into its slot."""
        values = dict(token_s=request.prompt[-1], position_s=len(request.prompt) - 1, count_s=0,
                      max_new_s=request.max_new_tokens, reason_s=RUNNING, stop_sj=0,
                      stop_on_sj=request.stop_on_j, temperature_s=request.temperature,
                      top_k_s=request.top_k, top_p_s=request.top_p, seed_s=request.seed)
        for name, value in values.items():
            getattr(self.state, name)[request.slot] = value
        self.stats.cached_tokens += request.cached_tokens

    def _idle_state(self) -> SlotState:
        s, j = self.config.slots, self.stop_table.table_sjv.shape[0]
        return SlotState(token_s=np.zeros(s, np.int32), position_s=np.zeros(s, np.int32),
                         count_s=np.zeros(s, np.int32), max_new_s=np.ones(s, np.int32),
                         reason_s=np.full(s, IDLE, np.int32), stop_sj=np.zeros((s, j), np.int32),
                         stop_on_sj=np.zeros((s, j), bool), temperature_s=np.zeros(s, np.float32),
                         top_k_s=np.zeros(s, np.int32), top_p_s=np.ones(s, np.float32),
                         seed_s=np.zeros(s, np.int32))

    def _run_prefills(self, queue: list[Request]) -> None:
        """Write these requests' uncached context, one chunk per request per call."""
        while queue:
            rows, chunk = shape = self._prefill_shape(queue)
            batch = queue[:rows]
            ends = [min(r.prefilled + chunk, r.context_end) for r in batch]
            width = self._table_width(max(ends))
            program, args = self._prefill_program(*self._prefill_rows(shape, width, batch, ends))
            start = time.perf_counter()
            self.pages = program(*args)
            jax.block_until_ready(self.pages)
            self.stats.prefill_s += time.perf_counter() - start
            self.stats.prefill_calls += 1
            for request, end in zip(batch, ends):
                self.stats.prefilled_tokens += end - request.prefilled
                request.prefilled = end
                if end == request.context_end:  # later requests may share its blocks
                    self.blocks.name(request.prompt, request.blocks, end // self.config.block_size)
            queue = [r for r in queue if r.prefilled < r.context_end]

    def _prefill_shape(self, queue: list[Request]) -> tuple[int, int]:
        """The prefill shape that pads least for ``queue`` now (then: covers most)."""
        def covered(shape: tuple[int, int]) -> int:
            rows, chunk = shape
            return sum(min(chunk, r.context_end - r.prefilled) for r in queue[:rows])

        return max(self.config.prefill_shapes,
                   key=lambda s: (covered(s) / (s[0] * s[1]), covered(s)))

    def _prefill_rows(self, shape: tuple[int, int], width: int, batch: Sequence[Request] = (),
                      ends: Sequence[int] = ()) -> tuple[np.ndarray, ...]:
        """(tokens, positions, valid, table) of a prefill call: each request's context
        from what is written up to its end, the other rows padding."""
        rows, chunk = shape
        tokens, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        valid, table = np.zeros(shape, bool), np.zeros((rows, width), np.int32)
        for i, (request, end) in enumerate(zip(batch, ends)):
            start = request.prefilled
            tokens[i, :end - start] = request.prompt[start:end]
            positions[i] = start + np.arange(chunk)
            valid[i, :end - start] = True
            table[i] = self.scheduler.table_sm[request.slot, :width]
        return tokens, positions, valid, table

    def _table_width(self, positions: int) -> int:
        """The smallest power-of-two block-table width (MIN_TABLE_WIDTH to max_blocks) that
        covers ``positions``, so attention reads no more blocks than it needs."""
        need = math.ceil(positions / self.config.block_size)
        return min(self.max_blocks, max(MIN_TABLE_WIDTH, 1 << max(need - 1, 0).bit_length()))

    def _decode_rows(self, live: Sequence[int]) -> np.ndarray:
        """The slots a decode call runs, in slot order: the ``live`` ones, with idle slots
        up to the smallest bucket that holds them (idle rows compute nothing kept)."""
        rows = next(b for b in self.buckets if b >= len(live))
        chosen = set(live)
        idle = (s for s in range(self.config.slots) if s not in chosen)
        chosen.update(next(idle) for _ in range(rows - len(live)))
        return np.array(sorted(chosen), np.int32)

    def _run_decode(self) -> list[Completion]:
        running = [r for r in self.scheduler.running if r is not None]
        steps = self.config.decode_steps
        if self.config.first_token_step and any(not r.tokens for r in running):
            steps = 1  # a request admitted since the last call: its first token now
        # Positions this call can reach: each slot's next position plus the steps.
        reach = max(int(self.state.position_s[r.slot]) for r in running)
        rows_b = self._decode_rows([r.slot for r in running])
        program, args = self._decode_program(self._table_width(reach + steps), rows_b, steps)
        start = time.perf_counter()
        self.pages, state, out = program(*args)
        state, out = jax.device_get((state, out))
        self.stats.decode_s += time.perf_counter() - start
        self.stats.decode_calls += 1
        self.stats.bucket_calls[len(rows_b)] = self.stats.bucket_calls.get(len(rows_b), 0) + 1
        for field in dataclasses.fields(SlotState):  # the rows back to their slots
            getattr(self.state, field.name)[rows_b] = getattr(state, field.name)
        self.stats.slot_steps += len(rows_b) * int(out.produced.any(0).sum())
        self.stats.kept_tokens += int(out.produced.sum())
        row_of = {int(s): b for b, s in enumerate(rows_b)}
        finished = []
        for request in running:
            s, b = request.slot, row_of[request.slot]
            for name in ("tokens", "logprobs", "top_ids", "top_logprobs", "confidences"):
                getattr(request, name).extend(getattr(out, name)[b][out.produced[b]].tolist())
            reason = int(self.state.reason_s[s])
            if reason != RUNNING:
                finished.append(self._finish(request, FINISH_REASONS[reason]))
        return finished

    def _free_slot(self, request: Request) -> None:
        self.scheduler.retire(request)
        self.state.reason_s[request.slot] = IDLE

    def _finish(self, request: Request, reason: str) -> Completion:
        del self._in_flight[request.id]
        self._free_slot(request)
        k = self.config.top_logprobs
        return Completion(request.id, request.prompt, request.tokens,
                          np.asarray(request.logprobs, np.float32),
                          np.asarray(request.top_ids, np.int32).reshape(-1, k),
                          np.asarray(request.top_logprobs, np.float32).reshape(-1, k),
                          np.asarray(request.confidences, np.float32), reason,
                          request.cached_tokens)

    # ---- device programs --------------------------------------------------------------

    @property
    def num_programs(self) -> int:
        return len(self._programs)

    def _program(self, fn, args: tuple, **statics):
        """The compiled ``fn`` for these argument shapes (the pool is donated); ``statics``
        are the engine's own, so they are not part of the key."""
        key = (fn.__name__, *((a.shape, a.dtype) for a in jax.tree.leaves(args)))
        if key not in self._programs:
            start = time.perf_counter()
            jitted = jax.jit(functools.partial(fn, **statics, placement=self.placement),
                             static_argnums=0, donate_argnames=("pages",))
            self._programs[key] = jitted.lower(self.graphdef, *args).compile()
            self.stats.compile_s += time.perf_counter() - start
        return self._programs[key]

    def _decode_program(self, width: int, rows_b: np.ndarray, steps: int):
        """The decode program for a ``width``-block table over the slots ``rows_b`` (a
        bucket's worth), and its arguments now: those slots' state and table rows, and
        ``steps`` for this call."""
        state = jax.tree.map(lambda x: self.placement.put_rows(x[rows_b]), self.state)
        table = self.placement.put_rows(self.scheduler.table_sm[rows_b, :width])
        args = (self.params, self.pages, state, table, self.eos_ids, *self._stop_arrays,
                jnp.asarray(steps, jnp.int32))
        return self._program(device_programs.decode_steps, args, steps=self.config.decode_steps,
                             top_logprobs=self.config.top_logprobs, width=FILTER_WIDTH,
                             use_kernel=self.config.use_kernel), args

    def _prefill_program(self, *rows: np.ndarray):
        """The prefill program for these (tokens, positions, valid, table), and its arguments."""
        args = (self.params, self.pages, *map(self.placement.put_rows, rows))
        return self._program(device_programs.prefill_chunk, args), args

    def warmup(self, on_program: Callable[[int, int], None] | None = None) -> int:
        """Compile every device program this engine can run (decode at each table width
        for each bucket of rows, prefill at each shape and width), so no request compiles
        later, and run each once while no slot is busy; returns the count.
        ``on_program(done, total)`` is called after each program (compiled or found
        compiled), e.g. to show progress: compiling takes minutes on a large model."""
        widths = sorted({self._table_width(self.config.block_size << i)
                         for i in range(self.max_blocks.bit_length() + 1)})
        programs = [(width, shape) for width in widths  # shape an int: decode of that many rows
                    for shape in (*self.buckets, *self.config.prefill_shapes)]
        # With every slot idle, each program also runs once: decode stops at once and
        # prefill writes padding to scratch, so a program's one-time costs of its first run
        # are paid here, not in the first request's time (or the server's event loop's).
        idle = all(r is None for r in self.scheduler.running)
        for done, (width, shape) in enumerate(programs, 1):
            if isinstance(shape, int):
                program, args = self._decode_program(width, np.arange(shape, dtype=np.int32),
                                                     self.config.decode_steps)
                if idle:
                    self.pages = program(*args)[0]
            else:
                program, args = self._prefill_program(*self._prefill_rows(shape, width))
                if idle:
                    self.pages = program(*args)
            if on_program is not None:
                on_program(done, len(programs))
        # The runs above are dispatched, not done: the first request's prefill would queue
        # behind them (seconds on a CPU) if warm-up returned before they finish.
        jax.block_until_ready(self.pages)
        return self.num_programs
