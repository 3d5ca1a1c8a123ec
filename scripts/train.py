"""Full-parameter SFT of a Qwen2 model, sharded over a (data, fsdp, tensor) mesh.

    python scripts/train.py --config qwen2_7b_sft [--set train.learning_rate=1e-5 ...] [--resume]
    python scripts/train.py --config qwen2_7b_sft --dry-run --simulate-devices 8 --mesh fsdp=8

Configs live in marco_jax/configs/train/ (qwen2_7b_sft, qwen2_05b_sft, tiny_sft) or
are given as a path; ``--set section.key=value`` overrides any field. Checkpoints
(train state + data position) go to <output_dir>/checkpoints every
checkpoint.every steps; ``--resume`` continues from the latest one. The trained
weights are exported to <output_dir>/final (``scripts/convert.py orbax-to-hf``
turns them into safetensors). Metrics: console, <output_dir>/metrics.jsonl and
<output_dir>/tensorboard.

``--dry-run`` compiles the real step from abstract arrays (nothing allocated)
and prints per-device parameter, optimizer, activation and total bytes, and the
host memory this process will need (``host_bytes``: loading, offloaded optimizer
state, async checkpoint copy; on a CPU run the devices' memory too); with
``--simulate-devices N`` on N simulated CPU devices standing for accelerators.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from marco_jax.cli import run
from marco_jax.engine.options import parse_mesh
from marco_jax.errors import MarcoError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() (multi-host TPU VMs)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args()


def mesh_overrides(text: str | None) -> list[str]:
    if text is None:
        return []
    return [f"mesh.{axis}={size}" for axis, size in parse_mesh(text).items()]


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    args = parse_args()
    if args.simulate_devices:  # must be set before JAX initialises its backends
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count="
                                   f"{args.simulate_devices}")
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    from marco_jax.train import memory, trainer
    from marco_jax.train.config import load_train_config

    if args.distributed:
        jax.distributed.initialize()
    cfg = load_train_config(args.config, [*args.set, *mesh_overrides(args.mesh)])
    if args.simulate_devices and not args.dry_run:
        raise MarcoError("--simulate-devices is only for --dry-run")
    if args.dry_run:
        plan = memory.memory_plan(cfg, jax.devices(), simulated=bool(args.simulate_devices))
        print(json.dumps(plan, indent=1))
        where = " (offloaded to the host)" if plan["optimizer_offloaded"] else ""
        print(f"per device: params {gib(plan['param_bytes'])}, optimizer "
              f"{gib(plan['optimizer_bytes'])}{where}, activations+temp "
              f"{gib(plan['activation_and_temp_bytes'])}, total {gib(plan['total_bytes'])}; "
              f"host, this process: peak {gib(plan['host_bytes']['peak'])}", file=sys.stderr)
        return
    trainer.train(cfg, resume=args.resume, peak_tflops=args.peak_tflops,
                  progress=not args.no_progress)


if __name__ == "__main__":
    run(main)
