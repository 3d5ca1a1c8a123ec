"""Training checkpoints: train state + data-iterator position, saved together by Orbax.

Orbax's CheckpointManager writes each step into a temporary directory and
renames it only once every host has finished, so a crash mid-save leaves a
temporary directory that ``latest_step`` never reports (and that the next run
cleans up): a checkpoint either restores completely or does not exist. Saving
the grain iterator state in the same step is what makes a resumed run see
exactly the batches an uninterrupted one would have.

Saves happen every ``every`` steps (and when forced, or on a preemption
notice), never at the first step as Orbax's default policy does: its async
save holds a host copy of the whole state while the next step runs (on a
4-layer model of the demo's shape, peak RSS 9.3 GiB instead of 5.6 with
``checkpoint.every`` = 1000). Compression (zstd, Orbax's default) keeps
buffers beside the state while it writes: on CPU, where they share memory with
the training state, the demo fine-tune's save lifted its peak RSS by 3 GiB, for
a 27% smaller checkpoint; so it too is off on CPU unless asked for.
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
            save_decision_policy=policy, cleanup_tmp_directories=True, create=True)
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
        """The state saved at ``step``, laid out as ``target`` says (its shapes and
        shardings: a run may resume on another mesh); ``data`` is moved in place to
        where it stood."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
            data=grain.checkpoint.CheckpointRestore(data)))
        return restored.state

    def close(self) -> None:
        """Wait for pending async saves, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_target(abstract_state: TrainState, shardings: TrainState) -> TrainState:
    """Shape/dtype/sharding leaves to restore into, without allocating anything."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)
