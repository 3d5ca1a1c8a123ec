"""Training checkpoints: train state + data-iterator position, saved together by Orbax
(a resumed run sees the batches an uninterrupted one would; a step's directory appears
only once every host has finished, so a checkpoint restores completely or not at all).

Saves come every ``every`` steps, when forced or on a preemption notice, never at the
first step as Orbax's default policy does: an async save holds a host copy of the state
while the next step runs (demo-shaped 4-layer model: peak RSS 9.3 GiB, not 5.6). On CPU,
where their buffers share memory with training, async saves and zstd compression are
off unless asked for (compression: 3 GiB of peak RSS for a 27% smaller checkpoint).
The directory is made by the first save, so that a run that fails to start leaves none.
"""

from __future__ import annotations

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from marco_jax.files import absolute
from marco_jax.train.step import TrainState


def on_unless_cpu(setting: bool | None, on_cpu: bool) -> bool:
    """``checkpoint.async_save`` or ``checkpoint.compress`` resolved: unset means on,
    except on CPU devices, whose memory the save's buffers share with training."""
    return (not on_cpu) if setting is None else setting


class RunCheckpoints:
    """Periodic, keep-last-K, optionally asynchronous checkpoints of one run."""

    def __init__(self, directory: epath.Path, every: int, keep: int,
                 async_save: bool | None = None, compress: bool | None = None):
        on_cpu = jax.devices()[0].platform == "cpu"
        async_save = on_unless_cpu(async_save, on_cpu)
        policy = checkpoint_managers.AnySavePolicy([
            checkpoint_managers.FixedIntervalPolicy(every),
            checkpoint_managers.PreemptionCheckpointingPolicy()])
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save,
            save_decision_policy=policy, cleanup_tmp_directories=True, create=False)
        state_handler = ocp.PyTreeCheckpointHandler(
            use_compression=on_unless_cpu(compress, on_cpu))
        self.manager = ocp.CheckpointManager(
            absolute(directory), options=options,
            item_handlers={"state": state_handler, "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data: grain.DatasetIterator,
             force: bool = False) -> bool:
        """Save if ``step`` is on the interval (or ``force``); returns whether it did."""
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), data=grain.checkpoint.CheckpointSave(data)),
            force=force)

    def restore(self, step: int, target: TrainState, data: grain.DatasetIterator) -> TrainState:
        """The state saved at ``step``, laid out as ``target`` (a run may resume on another
        mesh); ``data`` is moved in place to where it stood."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
            data=grain.checkpoint.CheckpointRestore(data)))
        return restored.state

    def close(self) -> None:
        """Wait for pending async saves, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
