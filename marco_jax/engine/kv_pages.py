"""The device side of the paged KV cache: every layer's keys and values in
fixed-size blocks, sized from a memory budget and sharded over the mesh.

Shape suffixes: l layers, k KV heads, p pool blocks, z positions in a block,
h head dim. The (k, p, z, h) layer layout is the one TPU paged-attention
kernels read. Block 0 is scratch: padding entries of block tables point at it
and writes that nothing keeps (idle slots, padding tokens) land there.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from marco_jax.config import Qwen2Config
from marco_jax.errors import MarcoError
from marco_jax.sharding import ShardingRules

SCRATCH = 0
PAGE_AXES = ("layers", "kv_heads", None, None, "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVPages:
    k_lkpzh: jax.Array
    v_lkpzh: jax.Array

    @property
    def num_blocks(self) -> int:
        return self.k_lkpzh.shape[2]

    @property
    def block_size(self) -> int:
        return self.k_lkpzh.shape[3]


def bytes_per_block(cfg: Qwen2Config, block_size: int) -> int:
    """Keys and values of one block over every layer."""
    itemsize = jnp.dtype(cfg.jnp_compute_dtype).itemsize
    return 2 * cfg.num_layers * cfg.num_kv_heads * block_size * cfg.head_dim * itemsize


def free_memory_bytes() -> int:
    """Free memory of the first device (its allocator's view), else of the host."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def blocks_for_budget(cfg: Qwen2Config, block_size: int, kv_cache_gb: float | None,
                      memory_fraction: float) -> int:
    """Blocks that fit ``kv_cache_gb`` GiB, or ``memory_fraction`` of free memory."""
    if kv_cache_gb is not None:
        if kv_cache_gb <= 0:
            raise MarcoError(f"kv_cache_gb must be > 0, got {kv_cache_gb}")
        budget = kv_cache_gb * 2 ** 30
    else:
        if not 0 < memory_fraction <= 1:
            raise MarcoError(f"kv memory fraction must be in (0, 1], got {memory_fraction}")
        budget = memory_fraction * free_memory_bytes()
    blocks = int(budget // bytes_per_block(cfg, block_size))
    if blocks < 2:
        raise MarcoError(f"a KV cache of {budget / 2 ** 30:.3f} GiB holds {blocks} blocks of "
                         f"{block_size} tokens; it needs at least 2")
    return blocks


def page_sharding(shape: tuple[int, ...], mesh: Mesh | None,
                  rules: ShardingRules) -> jax.sharding.Sharding | None:
    """KV heads over ``tensor``; replicated over ``data`` (every slot reads any block)."""
    return None if mesh is None else rules.sharding(PAGE_AXES, shape, mesh)


def make_pages(cfg: Qwen2Config, num_blocks: int, block_size: int, mesh: Mesh | None = None,
               rules: ShardingRules = ShardingRules()) -> KVPages:
    shape = (cfg.num_layers, cfg.num_kv_heads, num_blocks, block_size, cfg.head_dim)
    sharding = page_sharding(shape, mesh, rules)
    zeros = jax.jit(lambda: jnp.zeros(shape, cfg.jnp_compute_dtype), out_shardings=sharding)
    return KVPages(zeros(), zeros())


def constrain_pages(pages: KVPages, mesh: Mesh | None, rules: ShardingRules) -> KVPages:
    if mesh is None:
        return pages
    sharding = page_sharding(pages.k_lkpzh.shape, mesh, rules)
    return KVPages(jax.lax.with_sharding_constraint(pages.k_lkpzh, sharding),
                   jax.lax.with_sharding_constraint(pages.v_lkpzh, sharding))
