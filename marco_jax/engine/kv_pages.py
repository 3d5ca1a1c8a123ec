"""The device side of the paged KV cache: every layer's keys and values in
fixed-size blocks, sized from a memory budget and sharded over the mesh.

Shape suffixes: k KV heads, p pages, z positions in a page, h head dim; (k, p, z, h)
is what TPU paged-attention kernels read. The pages are layer-major: layer l's block i
is page ``l * blocks + i``, so a layer reads the whole pool through its own page
indices and no program copies out one layer's blocks. Each layer's block 0 is
scratch: padding table entries point at it and writes nothing keeps land there.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from marco_jax.model_config import Qwen2Config
from marco_jax.errors import MarcoError
from marco_jax.sharding import ShardingRules

SCRATCH = 0
PAGE_AXES = ("kv_heads", None, None, "head_dim")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the engine's arrays live: on one device (no mesh), or over ``mesh`` by ``rules``."""

    mesh: Mesh | None = None
    rules: ShardingRules = ShardingRules()

    def sharding(self, axes: tuple, shape: tuple[int, ...]) -> jax.sharding.Sharding | None:
        return None if self.mesh is None else self.rules.sharding(axes, shape, self.mesh)

    @property
    def platform(self) -> str:
        """The platform the programs are compiled for: the mesh's devices' (a TPU
        topology compiled on a CPU host is "tpu"), else the default backend's."""
        return jax.default_backend() if self.mesh is None else self.mesh.devices.flat[0].platform

    def put_rows(self, array: np.ndarray) -> jax.Array:
        """A per-row host array on the device(s), rows split over the batch axes."""
        axes = ("batch",) + (None,) * (array.ndim - 1)
        return jax.device_put(array, self.sharding(axes, array.shape))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVPages:
    k_kpzh: jax.Array
    v_kpzh: jax.Array
    layers: int = dataclasses.field(metadata=dict(static=True))

    @property
    def block_size(self) -> int:
        return self.k_kpzh.shape[2]

    @property
    def blocks(self) -> int:
        """Blocks per layer (the block tables' range)."""
        return self.k_kpzh.shape[1] // self.layers

    def first_page(self, layer: int) -> int:
        """Layer ``layer``'s block i is page ``first_page(layer) + i``."""
        return layer * self.blocks


def free_memory_bytes() -> int:
    """Free memory of the first device (its allocator's view), else of the host."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def blocks_for_budget(cfg: Qwen2Config, block_size: int, kv_cache_gb: float | None,
                      memory_fraction: float, dtype: str | None = None) -> int:
    """Blocks that fit ``kv_cache_gb`` GiB, or ``memory_fraction`` of free memory."""
    if kv_cache_gb is not None:
        if kv_cache_gb <= 0:
            raise MarcoError(f"kv_cache_gb must be > 0, got {kv_cache_gb}")
        budget = kv_cache_gb * 2 ** 30
    else:
        if not 0 < memory_fraction <= 1:
            raise MarcoError(f"kv memory fraction must be in (0, 1], got {memory_fraction}")
        budget = memory_fraction * free_memory_bytes()
    itemsize = jnp.dtype(dtype or cfg.compute_dtype).itemsize
    per_block = 2 * cfg.num_layers * cfg.num_kv_heads * block_size * cfg.head_dim * itemsize
    blocks = int(budget // per_block)  # keys and values of every layer
    if blocks < 2:
        raise MarcoError(f"a KV cache of {budget / 2 ** 30:.3f} GiB holds {blocks} blocks of "
                         f"{block_size} tokens; it needs at least 2")
    return blocks


def make_pages(cfg: Qwen2Config, num_blocks: int, block_size: int,
               placement: Placement = Placement(), dtype: str | None = None) -> KVPages:
    """An all-zero pool of ``dtype`` (default: the model's compute dtype), KV heads
    over ``tensor`` and replicated over ``data`` (every slot reads any block)."""
    shape = (cfg.num_kv_heads, cfg.num_layers * num_blocks, block_size, cfg.head_dim)
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype or cfg.compute_dtype),
                    out_shardings=placement.sharding(PAGE_AXES, shape))
    return KVPages(zeros(), zeros(), cfg.num_layers)


def constrain_pages(pages: KVPages, placement: Placement) -> KVPages:
    """Keep the pool where :func:`make_pages` put it inside a device program."""
    if placement.mesh is None:
        return pages
    sharding = placement.sharding(PAGE_AXES, pages.k_kpzh.shape)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), pages)
