"""The training step compiled by libtpu's ahead-of-time compiler for TPU topologies,
on this CPU host: the tiny SFT and DPO steps (splash attention inside) for v5e,
a two-slice mesh, the step-time estimate, and the errors a user meets.

libtpu comes with the ``tpu`` extra, which the README's test command installs;
these tests fail, never skip, where it is missing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from marco_jax import topology
from marco_jax.errors import MarcoError
from marco_jax.sharding import make_mesh
from marco_jax.train.attention import packed_attention
from marco_jax.train.config import load_train_config
from marco_jax.train.estimate import step_estimate
from marco_jax.train.memory import memory_plan


@pytest.fixture(scope="module")
def v5e():
    return topology.tpu_devices("v5e:2x2")


@pytest.mark.parametrize("config", ["tiny_sft", "tiny_dpo"])
def test_tiny_steps_compile_for_v5e_with_splash_attention(v5e, config):
    plan = memory_plan(load_train_config(config, ["mesh.fsdp=2", "mesh.tensor=2"]), v5e,
                       simulated=True)
    assert plan["device_kind"] == "TPU v5 lite" and plan["chip"] == "v5e"
    assert plan["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    assert 0 < plan["total_bytes"] < 2**30 and plan["headroom_bytes"] > 15 * 2**30


def test_offloaded_layer_inputs_live_in_host_memory(v5e):
    plan = memory_plan(load_train_config("tiny_sft", ["model.remat=offload_layer_input"]), v5e,
                       simulated=True)
    assert plan["device_host_memory_bytes"] > 0


def test_splash_attention_gradient_compiles_for_v5e(v5e):
    mesh = make_mesh(1, 2, 2, v5e)
    spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor", None))
    q = jax.ShapeDtypeStruct((4, 1024, 28, 128), jnp.bfloat16, sharding=spec)
    kv = jax.ShapeDtypeStruct((4, 1024, 4, 128), jnp.bfloat16, sharding=spec)
    ids = jax.ShapeDtypeStruct((4, 1024), jnp.int32,
                               sharding=NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))

    def loss(q, k, v, ids):
        return jnp.sum(packed_attention("splash", ids, mesh)(q, k, v).astype(jnp.float32))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, ids).compile()
    assert "tpu_custom_call" in compiled.as_text()  # the Mosaic kernel, not an XLA fallback
    assert compiled.memory_analysis().peak_memory_in_bytes < 2**30


def test_two_slices_split_data_across_slices():
    devices = topology.tpu_devices("v5e:2x2", slices=2)
    assert topology.slice_count(devices) == 2
    mesh = make_mesh(data=1, fsdp=2, tensor=2, devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    for i in range(2):  # each data index is one slice: only data crosses the DCN
        assert {d.slice_index for d in mesh.devices[i].flat} == {i}
    plan = memory_plan(load_train_config("tiny_sft", ["mesh.fsdp=2", "mesh.tensor=2"]), devices,
                       simulated=True)
    assert plan["mesh"]["data"] == 2 and plan["devices"] == 8


def test_estimate_counts_every_layer_and_micro_batch(v5e):
    cfg = load_train_config("tiny_sft", ["mesh.fsdp=4"])
    estimate = step_estimate(cfg, v5e, progress=False)
    assert estimate["chip"] == "v5e" and estimate["attention"] == "splash"
    assert 0 < estimate["mfu"] < 1 and estimate["step_seconds"] > 0
    more = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, micro_batches=4, global_batch=2 * cfg.train.global_batch))
    doubled = step_estimate(more, v5e, progress=False)  # twice the micro-steps of the same size
    ratio = doubled["executed_flops_per_device"] / estimate["executed_flops_per_device"]
    assert 1.8 < ratio < 2.05, ratio
    assert doubled["tokens_per_second_per_chip"] == pytest.approx(
        estimate["tokens_per_second_per_chip"], rel=0.1)


def test_a_plan_that_does_not_fit_says_by_how_much(v5e):
    cfg = load_train_config("tiny_sft", ["data.seq_len=65536", "train.micro_batches=1",
                                         "model.remat=none", "model.attention=xla"])
    with pytest.raises(MarcoError, match=r"does not fit 4 x TPU v5 lite: the compiler needs "
                                         r"[\d.]+G per device, the chip has 15.75G"):
        memory_plan(cfg, v5e, simulated=True)


def test_bad_topology_and_missing_libtpu_are_one_clear_line(monkeypatch):
    with pytest.raises(MarcoError, match="'v5e:3x3'.*filling whole hosts"):
        topology.tpu_devices("v5e:3x3")
    from jax.experimental import topologies

    def missing(**kwargs):
        raise RuntimeError("JAX TPU support not installed; cannot generate TPU topology.")

    monkeypatch.setattr(topologies, "get_topology_desc", missing)
    with pytest.raises(MarcoError, match=r"needs libtpu.*pip install -e '\.\[tpu\]'"):
        topology.tpu_devices("v5e:2x2")


def test_chip_table_matches_what_the_compiler_allows(v5e):
    """The v5e entry's HBM is the compiler's own limit: a program just over it is refused."""
    chip = topology.chip_of(v5e[0].device_kind)
    mesh = make_mesh(1, 4, 1, v5e)
    over = jax.ShapeDtypeStruct((4, chip.hbm_bytes // 4 // 2 + 2**20), jnp.float32,
                                sharding=NamedSharding(mesh, PartitionSpec("fsdp")))
    with pytest.raises(jax.errors.JaxRuntimeError, match="15.75G"):
        jax.jit(lambda x: jnp.cumsum(x * 2, axis=1)).lower(over).compile()
    assert np.isclose(chip.hbm_bytes / 2**30, 15.75)
