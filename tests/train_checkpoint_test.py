"""Run checkpoints save on their interval only: never at the first step (Orbax's
default), whose async copy would sit beside the next step in memory; compression
and asynchronous saves are settings, off by default on CPU."""

import grain
import jax
import jax.numpy as jnp
import numpy as np

from marco_jax.train.checkpoint import RunCheckpoints, on_unless_cpu
from marco_jax.train.step import TrainState


def test_saves_only_on_the_interval_or_when_forced(tmp_path):
    checkpoints = RunCheckpoints(tmp_path / "checkpoints", every=3, keep=5)
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    state = TrainState(jnp.zeros((), jnp.int32), {"w": jnp.ones(4)}, ())
    saved = [step for step in range(1, 8)
             if checkpoints.save(step, state, data, force=step == 7)]
    checkpoints.close()
    assert saved == [3, 6, 7]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [3, 6, 7]


def test_compression_is_a_setting_and_restores_the_same_state(tmp_path):
    """A compressible state is smaller with compression; both restore exactly."""
    state = TrainState(jnp.zeros((), jnp.int32), {"w": jnp.zeros((256, 1024))}, ())
    sizes = {}
    for compress in (True, False):
        directory = tmp_path / str(compress)
        checkpoints = RunCheckpoints(directory, every=1, keep=1, compress=compress)
        data = iter(grain.MapDataset.range(10).to_iter_dataset())
        checkpoints.save(1, state, data)
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        restored = checkpoints.restore(1, target, data)
        checkpoints.close()
        np.testing.assert_array_equal(restored.params["w"], state.params["w"])
        sizes[compress] = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert sizes[True] < sizes[False] / 4, sizes


def test_unset_settings_are_off_on_cpu_only():
    assert [on_unless_cpu(None, cpu) for cpu in (True, False)] == [False, True]
    assert on_unless_cpu(True, True) and not on_unless_cpu(False, False)


def test_the_directory_appears_with_the_first_save(tmp_path):
    """A run that fails before its first save leaves no empty checkpoint folder."""
    checkpoints = RunCheckpoints(tmp_path / "run" / "checkpoints", every=2, keep=1)
    assert checkpoints.latest_step() is None and not (tmp_path / "run").exists()
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    checkpoints.save(2, TrainState(jnp.zeros((), jnp.int32), {"w": jnp.ones(4)}, ()), data)
    checkpoints.close()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["2"]
