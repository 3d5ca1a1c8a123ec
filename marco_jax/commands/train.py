"""Full-parameter SFT or DPO of a Qwen2 model, sharded over a (data, fsdp, tensor) mesh.

    python scripts/train.py --config qwen2_7b_sft [--set train.learning_rate=1e-5 ...] [--resume]
    python scripts/train.py --config qwen2_7b_sft --dry-run --simulate-devices 8 --mesh fsdp=8

Configs live in marco_jax/configs/train/ (qwen2_7b_sft, qwen2_05b_sft, tiny_sft) or
are given as a path; ``--set section.key=value`` overrides any field. Checkpoints
(train state + data position) go to <output_dir>/checkpoints every
checkpoint.every steps; ``--resume`` continues from the latest one. The trained
weights are exported to <output_dir>/final (``scripts/convert.py orbax-to-hf``
turns them into safetensors). Metrics: console, <output_dir>/metrics.jsonl and
<output_dir>/tensorboard (a resumed run drops what was logged after its checkpoint). One
run at a time uses an output_dir: a second stops (exit 2) naming the pid that holds
<output_dir>/run.lock.

``--dry-run`` compiles the real step from abstract arrays (nothing allocated)
and prints per-device parameter, optimizer, activation and total bytes, and the
host memory this process will need (``host_bytes``: loading, offloaded optimizer
state, async checkpoint copy; on a CPU run the devices' memory too); with
``--simulate-devices N`` on N simulated CPU devices standing for accelerators;
with ``--topology v5e:2x4`` (``--topology-slices S`` for several slices) on
compile-only TPU devices, by libtpu's compiler, on any host: the TPU compiler's
HBM plan, and an estimated step time and MFU (see marco_jax/train/estimate.py).

Multi-host: ``--distributed`` calls ``jax.distributed.initialize()``, which finds
its peers on TPU VMs (and SLURM, Kubernetes, MPI). Elsewhere, e.g. several CPU
processes on one machine, name them: ``--coordinator 127.0.0.1:12345
--num-processes 2 --process-id 0`` (1 in the second process); CPU processes then
exchange data through gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from marco_jax import distributed
from marco_jax.cli import run, summary
from marco_jax.engine.options import parse_mesh
from marco_jax.errors import MarcoError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--config", required=True,
                        help="name in marco_jax/configs/train/ or a path")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--mesh", default=None, metavar="AXIS=N[,AXIS=N]",
                        help="mesh shape, e.g. fsdp=8 or data=2,fsdp=4,tensor=2 "
                             "(axes not named are 1)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in <output_dir>/checkpoints")
    parser.add_argument("--dry-run", action="store_true",
                        help="compile the step and print the per-device memory plan")
    parser.add_argument("--simulate-devices", type=int, metavar="N",
                        help="run on N simulated CPU devices (with --dry-run)")
    parser.add_argument("--peak-tflops", type=float,
                        help="per-device peak for MFU where the chip is not known (e.g. CPU)")
    parser.add_argument("--topology", metavar="NAME",
                        help="with --dry-run: compile for this TPU topology (e.g. v5e:2x4, "
                             "v5p:4x4x4) with libtpu's compiler, on any host")
    parser.add_argument("--topology-slices", type=int, default=1, metavar="S",
                        help="with --topology: S slices joined by the data-centre network")
    parser.add_argument("--no-estimate", action="store_true",
                        help="with --topology: skip the step-time and MFU estimate")
    distributed.add_args(parser)
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (log lines only), e.g. under a job scheduler")
    return parser.parse_args()


def mesh_overrides(text: str | None) -> list[str]:
    if text is None:
        return []
    return [f"mesh.{axis}={size}" for axis, size in parse_mesh(text).items()]


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def plan_line(plan: dict) -> str:
    """The plan in one line: per device, then this process's host memory."""
    where = " (offloaded to the host)" if plan["optimizer_offloaded"] else ""
    text = (f"per device: params {gib(plan['param_bytes'])}, optimizer "
            f"{gib(plan['optimizer_bytes'])}{where}, activations+temp "
            f"{gib(plan['activation_and_temp_bytes'])}, total {gib(plan['total_bytes'])}")
    if "hbm_bytes" in plan:
        fits = "fits" if plan["headroom_bytes"] >= 0 else "does NOT fit"
        text += (f" of {gib(plan['hbm_bytes'])} HBM ({plan['chip']}: {fits}, "
                 f"headroom {gib(plan['headroom_bytes'])})")
    if "device_host_memory_bytes" in plan:
        text += f", in host memory {gib(plan['device_host_memory_bytes'])}"
    text += f"; host, this process: peak {gib(plan['host_bytes']['peak'])}"
    if "estimate" in plan:
        e = plan["estimate"]
        text += (f"; estimated step {e['step_seconds']:.2f} s, {e['tokens_per_second_per_chip']:.0f}"
                 f" tokens/s/chip, MFU {100 * e['mfu']:.1f}% ({e['bound']}-bound)")
    return text


def main() -> None:
    args = parse_args()
    if args.simulate_devices:  # must be set before JAX initialises its backends
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count="
                                   f"{args.simulate_devices}")
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if args.topology:  # compile-only devices: the attached chips (if any) stay untouched,
        jax.config.update("jax_platforms", "cpu")  # and executables for them are not cached
        jax.config.update("jax_enable_compilation_cache", False)
    from marco_jax import topology
    from marco_jax.train import estimate, memory, trainer
    from marco_jax.train.config import load_train_config

    distributed.join(args)
    cfg = load_train_config(args.config, [*args.set, *mesh_overrides(args.mesh)])
    if (args.simulate_devices or args.topology) and not args.dry_run:
        raise MarcoError("--simulate-devices and --topology are only for --dry-run")
    if args.dry_run:
        devices = (topology.tpu_devices(args.topology, args.topology_slices) if args.topology
                   else jax.devices())
        plan = memory.memory_plan(cfg, devices,
                                  simulated=bool(args.simulate_devices or args.topology))
        if args.topology and not args.no_estimate:
            plan["estimate"] = estimate.step_estimate(cfg, devices, progress=not args.no_progress)
        print(json.dumps(plan, indent=1))
        print(plan_line(plan), file=sys.stderr)
        return
    with distributed.failures_reported():
        trainer.train(cfg, resume=args.resume, peak_tflops=args.peak_tflops,
                      progress=not args.no_progress)


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
