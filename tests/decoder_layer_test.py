"""One decoder layer under every forward pass: the plain forward, the engine's pass
over the paged KV pool and the scanned training pass run the same ``DecoderLayer``,
so a change to one layer's weights changes all three alike."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.model_config import preset
from marco_jax.engine.forward import paged_hidden_states
from marco_jax.engine.kv_pages import make_pages
from marco_jax.model import init_model
from marco_jax.train.attention import packed_attention
from marco_jax.train.layout import layout_of, stack_layers

T = 24


def three_passes(model, tokens_bt):
    """Final hidden states of the plain, paged and scanned forwards."""
    b, t = tokens_bt.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    plain = model.hidden_states(tokens_bt, positions,
                                lambda _, q, k, v: packed_attention(
                                    "xla", jnp.ones((b, t), jnp.int32))(q, k, v))
    cfg = model.cfg
    block, blocks_per_row = 8, t // 8
    pages = make_pages(cfg, num_blocks=1 + b * blocks_per_row, block_size=block)
    table = 1 + jnp.arange(b * blocks_per_row).reshape(b, blocks_per_row)
    paged, _ = paged_hidden_states(model, pages, tokens_bt, positions, jnp.ones((b, t), bool),
                                   table)
    outer, layers = layout_of(cfg).model(stack_layers(nnx.to_pure_dict(nnx.state(model))))
    attention = packed_attention("xla", jnp.ones((b, t), jnp.int32))
    scanned = outer.hidden_states(tokens_bt, positions, lambda _, q, k, v: attention(q, k, v),
                                  scanned_layers=layers, remat="full")
    return [np.asarray(x) for x in (plain, paged, scanned)]


def test_a_layer_change_moves_every_forward_alike():
    model = init_model(preset("tiny"), seed=4)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, T)), jnp.int32)
    before = three_passes(model, tokens)
    for got in before[1:]:
        np.testing.assert_allclose(got, before[0], atol=1e-5, rtol=0)

    mlp = model.layers[1].mlp
    mlp.down_weight_fd[...] = mlp.down_weight_fd[...] * 1.5 + 0.01
    after = three_passes(model, tokens)
    change = after[0] - before[0]
    assert np.max(np.abs(change)) > 1e-3  # the change is visible...
    for got, old in zip(after[1:], before[1:]):
        np.testing.assert_allclose(got - old, change, atol=2e-5, rtol=0)  # ...and the same
