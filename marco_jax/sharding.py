"""Logical axis names (each parameter's, see ``model.py``) -> mesh axes (data, fsdp, tensor).

A dimension that its mesh axis does not divide stays replicated, so that one rule set
serves a 2-KV-head 0.5B model and a 4-KV-head 7B model alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from marco_jax.errors import MarcoError
from marco_jax.topology import slice_count

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Which mesh axes each logical axis is split over (None: replicated)."""

    batch: MeshAxes = ("data", "fsdp")
    vocab: MeshAxes = "tensor"
    embed: MeshAxes = "fsdp"
    q_heads: MeshAxes = "tensor"
    kv_heads: MeshAxes = "tensor"
    head_dim: MeshAxes = None
    mlp: MeshAxes = "tensor"
    norm: MeshAxes = None
    length: MeshAxes = None
    layers: MeshAxes = None

    def mesh_axes(self, logical: str | None) -> MeshAxes:
        if logical is None:
            return None
        if not hasattr(self, logical):
            raise MarcoError(f"no sharding rule for logical axis {logical!r}")
        return getattr(self, logical)

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int],
             mesh: Mesh) -> PartitionSpec:
        """PartitionSpec for an array; mesh axes that do not divide a dim are dropped."""
        used: set[str] = set()
        out = []
        for name, dim in zip(logical_axes, shape, strict=True):
            axes = self.mesh_axes(name)
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            axes = tuple(a for a in axes if a in mesh.shape and a not in used)
            if axes and dim % math.prod(mesh.shape[a] for a in axes):
                axes = ()
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else (axes or None))
        return PartitionSpec(*out)

    def sharding(self, logical_axes: Sequence[str | None], shape: Sequence[int],
                 mesh: Mesh) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical_axes, shape, mesh))


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh of one slice's sizes (one may be -1: the remaining
    devices), each axis on neighbouring chips of the torus. Several slices (TPU multislice)
    split ``data`` once more across slices, as MaxText's DCN data parallelism does: only
    the once-a-step gradient reduction crosses the data-centre network, not fsdp or tensor.
    """
    devices = list(jax.devices() if devices is None else devices)
    slices = slice_count(devices)
    per_slice = len(devices) // slices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MarcoError("at most one mesh axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    where = f" per slice ({slices} slices)" if slices > 1 else ""
    if -1 in sizes:
        if per_slice % known:
            raise MarcoError(f"{per_slice} devices{where} do not divide into mesh {sizes}")
        sizes[sizes.index(-1)] = per_slice // known
    if math.prod(sizes) != per_slice:
        raise MarcoError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                         f"{math.prod(sizes)} devices{where}, have {per_slice}")
    if slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(sizes, [slices, 1, 1], devices,
                                                    allow_split_physical_axes=True)
    else:
        grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES)


def state_shardings(state: nnx.State, mesh: Mesh, rules: ShardingRules = ShardingRules(),
                    stacked_layers: int | None = None) -> nnx.State:
    """A NamedSharding for every parameter, from its ``logical_axes`` metadata;
    ``stacked_layers``: the state is one layer's, and the arrays carry a leading
    ``layers`` axis of this size (the training layout)."""

    def one(var: nnx.Variable) -> nnx.Variable:
        shape = var.get_value().shape
        axes = var.get_metadata().get("logical_axes") or (None,) * len(shape)
        if stacked_layers is not None:
            axes, shape = ("layers", *axes), (stacked_layers, *shape)
        return var.replace(rules.sharding(axes, shape, mesh))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_state(state: nnx.State, mesh: Mesh,
                rules: ShardingRules = ShardingRules()) -> nnx.State:
    """Place every parameter on the mesh according to ``rules``."""
    return jax.device_put(state, state_shardings(state, mesh, rules))
