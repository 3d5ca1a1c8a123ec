"""Run checkpoints save on their interval only: never at the first step (Orbax's
default), whose async copy would sit beside the next step in memory."""

import grain
import jax.numpy as jnp

from marco_jax.train.checkpoint import RunCheckpoints
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
