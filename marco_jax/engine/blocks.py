"""Host-side bookkeeping of the KV pool's blocks: reference counts and the prefix cache.

A full block is named by a digest of every token from the start of the sequence
to its end, so any request whose tokens begin the same way (a shared prompt, a
tree path) finds the same blocks without a caller tracking them. A released
named block stays findable until its space is needed, least recently released
reused first.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
from typing import Sequence

import numpy as np

from marco_jax.errors import MarcoError
from marco_jax.engine.kv_pages import SCRATCH


def block_digests(tokens: Sequence[int], block_size: int, count: int) -> list[bytes]:
    """Chained digests of the first ``count`` full blocks of ``tokens``."""
    digests, previous = [], b""
    array = np.asarray(tokens[:count * block_size], np.int64)
    for i in range(count):
        previous = hashlib.blake2b(previous + array[i * block_size:(i + 1) * block_size]
                                   .tobytes(), digest_size=16).digest()
        digests.append(previous)
    return digests


class BlockManager:
    """Which pool blocks are held, by how many requests, and which prefixes they hold."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 2:
            raise MarcoError(f"the KV pool needs at least 2 blocks, got {num_blocks}")
        self.block_size = block_size
        self.capacity = num_blocks - 1  # blocks a request may ever hold (all but scratch)
        self.refs = np.zeros(num_blocks, np.int32)
        self.refs[SCRATCH] = 1  # never handed out
        self.free = collections.deque(range(1, num_blocks))  # hold no named prefix
        self.released = collections.OrderedDict()  # named, unheld: oldest release first
        self.by_digest: dict[bytes, int] = {}
        self.digest_of: dict[int, bytes] = {}

    @property
    def available(self) -> int:
        return len(self.free) + len(self.released)

    @property
    def held(self) -> int:
        return int((self.refs[1:] > 0).sum())

    def cached_prefix(self, tokens: Sequence[int], max_blocks: int) -> list[int]:
        """The cached blocks that begin ``tokens`` (at most ``max_blocks``), not held."""
        blocks = (self.by_digest.get(d) for d in block_digests(tokens, self.block_size, max_blocks))
        return list(itertools.takewhile(lambda block: block is not None, blocks))

    def hold(self, blocks: Sequence[int]) -> None:
        """Add a holder to cached blocks (reviving released ones)."""
        for block in blocks:
            if self.refs[block] == 0:
                self.released.pop(block)
            self.refs[block] += 1

    def can_allocate(self, count: int, reviving: Sequence[int] = ()) -> bool:
        """Whether ``count`` new blocks fit once the released blocks among
        ``reviving`` are held again (they are no longer there to reuse)."""
        return count <= self.available - sum(block in self.released for block in reviving)

    def allocate(self, count: int) -> list[int]:
        if count > self.available:
            raise MarcoError(f"KV pool: {count} blocks wanted, {self.available} available")
        out = []
        for _ in range(count):
            if self.free:
                block = self.free.popleft()
            else:  # reuse the block released longest ago; its prefix is forgotten
                block, _ = self.released.popitem(last=False)
                del self.by_digest[self.digest_of.pop(block)]
            self.refs[block] = 1
            out.append(block)
        return out

    def name(self, tokens: Sequence[int], blocks: Sequence[int], count: int) -> None:
        """Record that ``blocks[:count]`` hold the first ``count`` full blocks of ``tokens``,
        so later requests starting the same way find them (a block keeps its first name
        and a prefix its first block)."""
        for digest, block in zip(block_digests(tokens, self.block_size, count), blocks):
            if block not in self.digest_of and digest not in self.by_digest:
                self.by_digest[digest] = block
                self.digest_of[block] = digest

    def release(self, blocks: Sequence[int]) -> None:
        for block in blocks:
            if self.refs[block] <= 0 or block == SCRATCH:
                raise MarcoError(f"KV pool: block {block} released but not held")
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.digest_of:
                    self.released[block] = None
                else:
                    self.free.append(block)
