"""Attention through block tables: the XLA gather path against plain causal
attention on contiguous keys, and the TPU kernel against the XLA path."""

import jax
import numpy as np

import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from marco_jax.engine.forward import gather_attention, kernel_applies, kernel_attention
from marco_jax.engine.kv_pages import Placement
from marco_jax.sharding import make_mesh
from marco_jax.topology import tpu_devices


def scattered_pool(rng, keys_bskh, table_bm, block_size, total_blocks):
    """Write each row's contiguous keys into the blocks its table lists, in a
    pool (kv, blocks, block_size, h) whose other blocks hold noise."""
    b, _, kv, h = keys_bskh.shape
    pool_kpzh = rng.normal(size=(kv, total_blocks, block_size, h)).astype(np.float32)
    for row in range(b):
        for j, block in enumerate(table_bm[row]):
            chunk = keys_bskh[row, j * block_size:(j + 1) * block_size]  # (z, kv, h)
            pool_kpzh[:, block] = chunk.transpose(1, 0, 2)
    return pool_kpzh


def dense_causal(q_btnh, k_bskh, v_bskh, positions_bt):
    """Reference: every query head attends to its KV group's keys at positions <= its own."""
    b, t, n, h = q_btnh.shape
    kv = k_bskh.shape[2]
    group = n // kv
    out = np.zeros_like(q_btnh)
    for row in range(b):
        for i in range(t):
            p = positions_bt[row, i]
            for head in range(n):
                k = k_bskh[row, :p + 1, head // group]
                v = v_bskh[row, :p + 1, head // group]
                scores = k @ q_btnh[row, i, head] / np.sqrt(h)
                weights = np.exp(scores - scores.max())
                out[row, i, head] = weights @ v / weights.sum()
    return out


def random_case(head_dim, block_size=4, blocks_per_row=6, t=3, seed=0, b=3):
    rng = np.random.default_rng(seed)
    n, kv = 4, 2
    s = block_size * blocks_per_row
    k_bskh = rng.normal(size=(b, s, kv, head_dim)).astype(np.float32)
    v_bskh = rng.normal(size=(b, s, kv, head_dim)).astype(np.float32)
    q_btnh = rng.normal(size=(b, t, n, head_dim)).astype(np.float32)
    total = b * blocks_per_row + 5
    shuffled = rng.permutation(np.arange(1, total))[:b * blocks_per_row]  # block 0: scratch
    table_bm = shuffled.reshape(b, blocks_per_row)
    k_pool = scattered_pool(rng, k_bskh, table_bm, block_size, total)
    v_pool = scattered_pool(rng, v_bskh, table_bm, block_size, total)
    # rows end at different places; the last query of row 0 sits at the very end
    ends = np.array([s - 1, s // 2, block_size + 1, s - block_size][:b])
    positions_bt = ends[:, None] - np.arange(t)[::-1][None, :]
    return q_btnh, k_bskh, v_bskh, k_pool, v_pool, table_bm, positions_bt


def test_gather_path_equals_causal_attention_over_contiguous_keys():
    q, k, v, k_pool, v_pool, table, positions = random_case(head_dim=8)
    got = gather_attention(q, k_pool, v_pool, table, positions)
    np.testing.assert_allclose(np.asarray(got), dense_causal(q, k, v, positions),
                               rtol=1e-5, atol=1e-5)


def bf16_decode_case(b=3):
    q, _, _, k_pool, v_pool, table, positions = random_case(head_dim=128, block_size=16,
                                                           blocks_per_row=8, t=1, b=b)
    return q, k_pool.astype(jnp.bfloat16), v_pool.astype(jnp.bfloat16), table, positions


def test_the_kernel_serves_bfloat16_pools_only():
    q, k_pool, v_pool, _, _ = bf16_decode_case()
    assert kernel_applies(q, k_pool)
    assert not kernel_applies(q, k_pool.astype(jnp.float32))  # it would compute in bf16
    assert not kernel_applies(np.concatenate([q, q], axis=1), k_pool)  # prefill: gather


def test_tpu_kernel_equals_the_gather_path_in_interpret_mode():
    q, k_pool, v_pool, table, positions = bf16_decode_case()
    with pltpu.force_tpu_interpret_mode():
        kernel = kernel_attention(q, k_pool, v_pool, table, positions)
    xla = gather_attention(q, k_pool, v_pool, table, positions)
    np.testing.assert_allclose(np.asarray(kernel), np.asarray(xla), rtol=2e-2, atol=2e-2)


def test_tpu_kernel_under_a_mesh_equals_one_device_in_interpret_mode():
    """Rows over data, KV heads over tensor (shard_map): the same numbers as unsharded."""
    q, k_pool, v_pool, table, positions = bf16_decode_case(b=4)
    placement = Placement(make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4]))
    with pltpu.force_tpu_interpret_mode():
        sharded = kernel_attention(q, k_pool, v_pool, table, positions, placement)
        single = kernel_attention(q, k_pool, v_pool, table, positions)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-6, atol=1e-6)


def test_tpu_kernel_compiles_under_a_tpu_mesh():
    """libtpu compiles the kernel under shard_map for v5e-8 (data 4 x tensor 2) and
    for v5p (two TensorCores a chip: megacore)."""
    q, k_pool, v_pool, table, positions = bf16_decode_case(b=4)
    for name, sizes in (("v5e:2x4", dict(data=4, tensor=2)), ("v5p:2x2x1", dict(data=2, tensor=2))):
        placement = Placement(make_mesh(**sizes, fsdp=1, devices=tpu_devices(name)))
        args = [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in
                (q, k_pool, v_pool, table, positions)]
        compiled = jax.jit(lambda *a: kernel_attention(*a, placement)).lower(*args).compile()
        assert "tpu_custom_call" in compiled.as_text(), name
