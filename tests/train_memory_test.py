"""The dry-run's host plan: which phase holds what, per process."""

import jax

from marco_jax.train.config import load_train_config
from marco_jax.train.memory import RUNTIME_BASELINE_BYTES, memory_plan


def test_cpu_run_counts_its_devices_as_host_memory_and_saves_synchronously():
    plan = memory_plan(load_train_config("tiny_sft"), jax.devices())
    state = plan["param_bytes"] + plan["optimizer_bytes"]
    assert plan["total_bytes"] > max(state, plan["activation_and_temp_bytes"])
    host = plan["host_bytes"]
    assert host["devices_in_host_memory"] == plan["total_bytes"] * len(jax.devices())
    assert host["async_checkpoint_copy"] == 0 and host["loading"] == 0
    assert host["peak"] == RUNTIME_BASELINE_BYTES + host["devices_in_host_memory"]


def test_simulated_accelerators_count_offload_async_copy_and_loading():
    cfg = load_train_config("tiny_sft", ["train.offload_optimizer=true",
                                         "checkpoint.async_save=true",
                                         "model.init_from=builtin:tiny"])
    devices = jax.devices()
    plan = memory_plan(cfg, devices, simulated=True)
    host, n = plan["host_bytes"], len(devices)
    assert plan["optimizer_offloaded"] and host["devices_in_host_memory"] == 0
    assert host["offloaded_optimizer"] == plan["optimizer_bytes"] * n
    state = plan["param_bytes"] + plan["optimizer_bytes"]
    assert state * n <= host["async_checkpoint_copy"] <= state * n + 64 * n  # + step counters
    assert host["loading"] == 2 * plan["param_bytes"] * n
    training = host["offloaded_optimizer"] + host["async_checkpoint_copy"]
    assert host["peak"] == RUNTIME_BASELINE_BYTES + max(host["loading"], training)
