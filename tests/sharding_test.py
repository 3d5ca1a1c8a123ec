"""Logical -> physical axis rules and mesh construction."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from marco_jax.errors import MarcoError
from marco_jax.sharding import ShardingRules, make_mesh, state_shardings

RULES = ShardingRules()


def test_mesh_shape_and_inferred_axis():
    mesh = make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(MarcoError, match="needs 6 devices"):
        make_mesh(data=3, fsdp=1, tensor=2)
    with pytest.raises(MarcoError, match="at most one"):
        make_mesh(data=-1, fsdp=-1)


def test_spec_maps_logical_axes():
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    assert RULES.spec(("embed", "q_heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", "tensor", None)
    assert RULES.spec(("batch", None), (8, 3), mesh) == P(("data", "fsdp"), None)


def test_indivisible_dimension_stays_replicated():
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    # 7 heads do not split over tensor=2; 6 rows do not split over fsdp=4.
    assert RULES.spec(("embed", "q_heads", "head_dim"), (6, 7, 16), mesh) == P(None, None, None)


def test_unknown_logical_axis_is_named():
    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    with pytest.raises(MarcoError, match="'experts'"):
        RULES.spec(("experts",), (8,), mesh)


def test_stacked_layer_state_gets_a_leading_layers_axis():
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    layer = nnx.State({"w": nnx.Param(jnp.zeros((8, 6)), logical_axes=("embed", "mlp"))})
    stacked = state_shardings(layer, mesh, RULES, stacked_layers=3)
    assert stacked["w"].get_value().spec == P(None, "fsdp", "tensor")
    assert state_shardings(layer, mesh, RULES)["w"].get_value().spec == P("fsdp", "tensor")


def test_eight_simulated_devices():
    assert len(jax.devices()) == 8
