"""Training attention kernels against the XLA path, on CPU: splash attention in
Pallas's interpreter (values and gradients, causal within packed segments, one
device and an fsdp x tensor mesh, float32 and bfloat16), the cuDNN branch's
mask and layout through ``jax.nn.dot_product_attention``'s XLA implementation,
and a whole training step with splash attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marco_jax.model_config import preset
from marco_jax.errors import MarcoError
from marco_jax.sharding import make_mesh
from marco_jax.train import attention as attention_lib
from marco_jax.train.attention import packed_attention, resolve
from marco_jax.train.layout import init_params, layout_of
from marco_jax.train.objectives import SFT, LayerRun
from marco_jax.train.step import batch_gradients
from train_step_test import micro, packed_batch

B, T, N, K, H = 4, 128, 4, 2, 16


def inputs(dtype):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (B, T, N, H)).astype(dtype)
    k, v = (jax.random.normal(key, (B, T, K, H)).astype(dtype) for key in keys[1:])
    segments = np.zeros((B, T), np.int32)  # packed rows, padding (0) at the end
    segments[0, :50], segments[0, 50:100] = 1, 2
    segments[1, :] = 1
    segments[2, :70] = 1
    segments[3, :10], segments[3, 10:] = 1, 3
    return q, k, v, jnp.asarray(segments)


def loss_and_grads(implementation, q, k, v, segments, mesh=None):
    """A loss over real tokens only: padding positions may differ between kernels."""
    real = (segments > 0)[:, :, None, None]

    def loss(q, k, v):
        out = packed_attention(implementation, segments, mesh, interpret=True)(q, k, v)
        weights = jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
        return jnp.sum(jnp.where(real, out.astype(jnp.float32) * weights, 0.0))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("sharded", [False, True], ids=["one-device", "fsdp4-tensor2"])
def test_splash_matches_xla_values_and_gradients(dtype, tolerance, sharded):
    q, k, v, segments = inputs(dtype)
    mesh = make_mesh(data=1, fsdp=4, tensor=2) if sharded else None
    expected, expected_grads = loss_and_grads("xla", q, k, v, segments)
    got, grads = loss_and_grads("splash", q, k, v, segments, mesh)
    scale = float(jnp.abs(expected)) + 1.0
    assert abs(float(got) - float(expected)) <= tolerance * scale
    for a, b in zip(grads, expected_grads):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= tolerance * (np.max(np.abs(b)) + 1e-6)


def test_splash_never_lets_a_token_see_another_segment():
    q, k, v, segments = inputs(jnp.float32)
    out = packed_attention("splash", segments, interpret=True)(q, k, v)
    changed = v.at[0, 60].add(100.0)  # a key of row 0's second segment
    moved = packed_attention("splash", segments, interpret=True)(q, k, changed)
    np.testing.assert_array_equal(out[0, :50], moved[0, :50])  # the first segment is blind to it
    assert np.max(np.abs(out[0, 60:100] - moved[0, 60:100])) > 1e-3


def test_cudnn_branch_mask_and_layout(monkeypatch):
    """The cuDNN call, run by jax.nn.dot_product_attention's XLA implementation (no
    GPU here): same mask and head layout as ours."""
    original = jax.nn.dot_product_attention
    monkeypatch.setattr(attention_lib.jax.nn, "dot_product_attention",
                        lambda *a, **kw: original(*a, **{**kw, "implementation": "xla"}))
    q, k, v, segments = inputs(jnp.float32)
    expected, expected_grads = loss_and_grads("xla", q, k, v, segments)
    got, grads = loss_and_grads("cudnn", q, k, v, segments)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    for a, b in zip(grads, expected_grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_training_step_with_splash_equals_xla():
    layout = layout_of(preset("tiny"))
    params = init_params(layout, 5)
    batch = micro(packed_batch(4, 128, seed=3), 2)

    def step(attention):
        return jax.jit(lambda p: batch_gradients(layout, SFT(), p, batch, LayerRun(
            "full", attention=attention, interpret=True)))(params)

    (loss, _, _), grads = step("xla")
    (loss_splash, _, _), grads_splash = step("splash")
    assert float(loss_splash) == pytest.approx(float(loss), rel=1e-5)
    for a, b in zip(jax.tree.leaves(grads_splash), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


def test_resolve_picks_the_platform_kernel_and_names_bad_values():
    assert [resolve("auto", p) for p in ("tpu", "gpu", "cpu")] == ["splash", "cudnn", "xla"]
    assert resolve("auto", "gpu", "float32") == "xla" and resolve("xla", "tpu") == "xla"
    with pytest.raises(MarcoError, match="cudnn needs 16-bit compute"):
        resolve("cudnn", "gpu", "float32")
    with pytest.raises(MarcoError, match="model.attention='flash'"):
        resolve("flash", "tpu")
    with pytest.raises(MarcoError, match="multiple of 512"):
        packed_attention("splash", jnp.ones((1, 600), jnp.int32), interpret=True)(
            *(jnp.ones((1, 600, 2, 16)),) * 3)
