"""Host-side scheduling: which request holds which decode slot and blocks.

An admitted request takes the cached blocks that begin its context and new
blocks for the rest of its context and its whole token budget, so it never
runs out of room. One that does not fit now waits; one that never can is
refused when submitted.
"""

from __future__ import annotations

import dataclasses
import heapq
import math

import numpy as np

from marco_jax.engine.blocks import BlockManager
from marco_jax.errors import MarcoError

POLICIES = ("fcfs", "longest_first")


@dataclasses.dataclass
class Request:
    """One generation request and what it has produced so far."""

    id: int
    prompt: list[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    priority: int = 0  # lower is admitted first; equal priorities in arrival order
    stop_on_j: np.ndarray | None = None  # bool: which of the engine's stop strings end it
    slot: int = -1
    blocks: list[int] = dataclasses.field(default_factory=list)
    cached_tokens: int = 0  # context tokens whose keys/values came from the prefix cache
    prefilled: int = 0  # context positions whose keys/values are written
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_ids: list[list[int]] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[float]] = dataclasses.field(default_factory=list)
    confidences: list[float] = dataclasses.field(default_factory=list)

    @property
    def context_end(self) -> int:
        """Positions that prefill writes: all but the last prompt token, which decode feeds."""
        return len(self.prompt) - 1


def blocks_needed(prompt_tokens: int, max_new_tokens: int, block_size: int) -> int:
    """Blocks for every position a request writes (the last new token is never fed)."""
    return math.ceil((prompt_tokens + max_new_tokens - 1) / block_size)


class Scheduler:
    """Waiting queue, slot assignment and block tables of ``slots`` decode slots."""

    def __init__(self, slots: int, blocks: BlockManager, max_blocks_per_request: int,
                 policy: str = "fcfs"):
        if policy not in POLICIES:
            raise MarcoError(f"scheduling policy must be one of {POLICIES}, got {policy!r}")
        self.blocks, self.policy = blocks, policy
        self._queue: list[tuple[tuple[int, int, int], Request]] = []  # a heap by admission order
        self.running: list[Request | None] = [None] * slots
        self.table_sm = np.zeros((slots, max_blocks_per_request), np.int32)

    @property
    def waiting(self) -> list[Request]:
        """Waiting requests in the order they will be admitted."""
        return [request for _, request in sorted(self._queue, key=lambda item: item[0])]

    @property
    def idle(self) -> bool:
        return not self._queue and not any(self.running)

    def add(self, request: Request) -> None:
        need = blocks_needed(len(request.prompt), request.max_new_tokens, self.blocks.block_size)
        if need > self.blocks.capacity:
            raise MarcoError(f"the request's {len(request.prompt)} prompt tokens + "
                             f"{request.max_new_tokens} new need {need} KV blocks, the pool has "
                             f"{self.blocks.capacity}; give the engine a larger KV cache")
        longest = -request.max_new_tokens if self.policy == "longest_first" else 0
        heapq.heappush(self._queue, ((request.priority, longest, request.id), request))

    def remove_waiting(self, request_id: int) -> None:
        """Take a waiting request out of the queue (if it is there)."""
        self._queue = [item for item in self._queue if item[1].id != request_id]
        heapq.heapify(self._queue)

    def admit(self) -> list[Request]:
        """Move waiting requests into free slots, in order (priority, then the
        policy's order, then arrival), while their blocks fit."""
        admitted = []
        free_slots = [s for s, r in enumerate(self.running) if r is None]
        size = self.blocks.block_size
        while self._queue and free_slots:
            request = self._queue[0][1]
            need = blocks_needed(len(request.prompt), request.max_new_tokens, size)
            cached = self.blocks.cached_prefix(request.prompt, request.context_end // size)
            if not self.blocks.can_allocate(need - len(cached), cached):
                break  # the head of the queue waits for room; nothing overtakes it
            heapq.heappop(self._queue)
            self.blocks.hold(cached)
            request.blocks = cached + self.blocks.allocate(need - len(cached))
            request.cached_tokens = request.prefilled = len(cached) * size
            request.slot = free_slots.pop(0)
            self.running[request.slot] = request
            self.table_sm[request.slot] = 0
            self.table_sm[request.slot, :len(request.blocks)] = request.blocks
            admitted.append(request)
        return admitted

    def retire(self, request: Request) -> None:
        """Free the request's slot; name its full written blocks, then release them."""
        written = len(request.prompt) + len(request.tokens) - 1
        self.blocks.name(request.prompt + request.tokens, request.blocks,
                         written // self.blocks.block_size)
        self.blocks.release(request.blocks)
        self.running[request.slot] = None
        self.table_sm[request.slot] = 0
        request.blocks = []
