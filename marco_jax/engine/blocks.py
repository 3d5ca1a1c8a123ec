"""Host-side bookkeeping of the KV pool's blocks: reference counts, the prefix
cache and reuse of cached blocks, least recently released first.

A full block is named by a digest of every token from the start of the
sequence to its end, so any request whose tokens begin the same way (a shared
prompt, a tree path that a finished request wrote) finds the same blocks; no
caller tracks which block holds what. A block is free once its last holder
releases it; if it holds a named prefix it stays findable until the space is
needed again.
"""

from __future__ import annotations

import collections
import hashlib
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
        self.num_blocks = num_blocks
        self.refs = np.zeros(num_blocks, np.int32)
        self.refs[SCRATCH] = 1  # never handed out
        self.free = collections.deque(range(1, num_blocks))  # hold no named prefix
        self.released = collections.OrderedDict()  # named, unheld: oldest release first
        self.by_digest: dict[bytes, int] = {}
        self.digest_of: dict[int, bytes] = {}

    @property
    def capacity(self) -> int:
        """Blocks a request may ever hold (all but scratch)."""
        return self.num_blocks - 1

    @property
    def available(self) -> int:
        return len(self.free) + len(self.released)

    @property
    def held(self) -> int:
        return int((self.refs[1:] > 0).sum())

    def cached_prefix(self, tokens: Sequence[int], max_blocks: int) -> list[int]:
        """The cached blocks that begin ``tokens`` (at most ``max_blocks``), not held."""
        found = []
        for digest in block_digests(tokens, self.block_size, max_blocks):
            block = self.by_digest.get(digest)
            if block is None:
                break
            found.append(block)
        return found

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
        """Record that ``blocks[:count]`` hold the first ``count`` full blocks of
        ``tokens``, so later requests starting the same way find them."""
        for digest, block in zip(block_digests(tokens, self.block_size, count), blocks):
            if block in self.digest_of or digest in self.by_digest:
                continue  # already named, or another block holds the same prefix
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
