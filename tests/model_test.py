"""Our Qwen2 against HF transformers' (fp32, tiny random weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from marco_jax.loading import load
from marco_jax.model import QUERY_CHUNK, _attend_block, attend
from marco_jax.sharding import ShardingRules, make_mesh

TOL = 1e-4


def hf_logits(hf_model, tokens, attention_mask=None, position_ids=None) -> np.ndarray:
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(tokens), attention_mask=attention_mask,
                       position_ids=position_ids)
    return out.logits.numpy()


def random_tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 512, size=shape).astype(np.int32)


def positions_from_mask(mask_bt):
    """RoPE positions for a left-padded batch: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(jnp.asarray(mask_bt, jnp.int32), axis=-1) - 1, 0)


def ours(model, tokens, mask=None):
    mask = np.ones(tokens.shape, bool) if mask is None else mask
    return np.asarray(model(jnp.asarray(tokens), positions_from_mask(mask), jnp.asarray(mask)))


def test_logits_match_hf(hf_checkpoint):
    hf_model, path = hf_checkpoint
    model = load(path).model
    tokens = random_tokens((2, 24))
    np.testing.assert_allclose(ours(model, tokens), hf_logits(hf_model, tokens), atol=TOL, rtol=0)


def test_left_padding_gives_unpadded_logits(hf_checkpoint):
    hf_model, path = hf_checkpoint
    model = load(path).model
    lengths = [24, 17, 9]
    rows = [random_tokens((n,), seed=n) for n in lengths]
    tokens = np.zeros((3, 24), np.int32)
    mask = np.zeros((3, 24), bool)
    for i, row in enumerate(rows):
        tokens[i, 24 - len(row):] = row
        mask[i, 24 - len(row):] = True
    padded = ours(model, tokens, mask)
    for i, row in enumerate(rows):
        expected = hf_logits(hf_model, row[None])[0]
        np.testing.assert_allclose(padded[i, 24 - len(row):], expected, atol=TOL, rtol=0)


def test_sharded_model_matches_unsharded(hf_checkpoint):
    _, path = hf_checkpoint
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    sharded = load(path, mesh=mesh).model
    q = sharded.layers[0].attn.q_weight_dnh[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    tokens = random_tokens((4, 16), seed=5)
    graphdef, state = nnx.split(sharded)

    @jax.jit
    def forward(state, tokens):
        return nnx.merge(graphdef, state)(tokens, positions_from_mask(tokens >= 0))

    batch_sharding = jax.sharding.NamedSharding(mesh, ShardingRules().spec(("batch", None), tokens.shape, mesh))
    logits = np.asarray(forward(state, jax.device_put(tokens, batch_sharding)))
    np.testing.assert_allclose(logits, ours(load(path).model, tokens), atol=TOL, rtol=0)


def test_bf16_compute_is_close_to_fp32(hf_checkpoint):
    hf_model, path = hf_checkpoint
    model = load(path, param_dtype="bfloat16", compute_dtype="bfloat16").model
    assert model.embed_vd[...].dtype == jnp.bfloat16
    tokens = random_tokens((1, 16), seed=7)
    np.testing.assert_allclose(ours(model, tokens), hf_logits(hf_model, tokens), atol=0.15)


def test_packed_segments_equal_separate_rows():
    from marco_jax.model_config import preset
    from marco_jax.model import init_model
    from marco_jax.train.attention import packed_attention

    model = init_model(preset("tiny"), seed=3)
    a, b = random_tokens((1, 9), seed=1), random_tokens((1, 7), seed=2)
    packed = jnp.asarray(np.concatenate([a, b], axis=1))
    segments = jnp.asarray([[1] * 9 + [2] * 7])
    positions = jnp.asarray([list(range(9)) + list(range(7))])
    attention = packed_attention("xla", segments)
    together = model.logits(model.hidden_states(packed, positions,
                                                lambda _, q, k, v: attention(q, k, v)))
    alone = [model(jnp.asarray(t), jnp.arange(t.shape[1])[None]) for t in (a, b)]
    np.testing.assert_allclose(together, np.concatenate(alone, axis=1), atol=1e-5, rtol=0)


def test_blocked_attention_equals_whole_attention_and_its_gradient():
    """Calls of 2+ query blocks attend block by block; values and gradients match
    the unblocked computation, with a packed (segment) mask."""
    b, t, n, k, h = 1, 2 * QUERY_CHUNK, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, n, h))
    kk = jax.random.normal(keys[1], (b, t, k, h))
    v = jax.random.normal(keys[2], (b, t, k, h))
    segment = (jnp.arange(t) >= 300).astype(jnp.int32) + 1
    allowed = ((jnp.arange(t)[:, None] >= jnp.arange(t)[None, :])
               & (segment[:, None] == segment[None, :]))[None]
    blocked = lambda q: jnp.sum(jnp.sin(attend(q, kk, v, allowed, "bskh")))  # noqa: E731
    whole = lambda q: jnp.sum(jnp.sin(_attend_block(q, kk, v, allowed, "bskh")))  # noqa: E731
    np.testing.assert_allclose(attend(q, kk, v, allowed, "bskh"),
                               _attend_block(q, kk, v, allowed, "bskh"), atol=1e-6, rtol=0)
    np.testing.assert_allclose(jax.grad(blocked)(q), jax.grad(whole)(q), atol=1e-6, rtol=0)
