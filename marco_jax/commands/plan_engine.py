"""Compile the inference engine for a TPU topology, on any host: every decode program
(one per block-table width, for each slot count) and every prefill program (one per
shape and width), by libtpu's ahead-of-time compiler, from abstract parameters.

    python scripts/plan_engine.py --preset qwen2-7b --topology v5e:2x4 --slots 1,8,64
    python scripts/plan_engine.py --table PLAN.json [PLAN.json ...]

It prints the plan as JSON (``--json-out`` also writes it): per device the HBM of the
weights, the KV pool and the largest program's peak against the chip's limit, and per
decode program the estimated step time, decode tokens/s and the fraction of the HBM
roofline (see marco_jax/engine/plan.py for how each is counted). ``--table`` prints
saved plans as the markdown table of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from marco_jax.cli import run, summary
from marco_jax.engine.engine import KV_DTYPES, EngineConfig
from marco_jax.engine.options import parse_mesh
from marco_jax.errors import MarcoError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--preset", default="qwen2-7b",
                        help="model shape: a preset of marco_jax/model_config.py")
    parser.add_argument("--topology", default="v5e:2x4", help="TPU topology, e.g. v5p:2x2x1")
    parser.add_argument("--mesh", metavar="data=D,tensor=T",
                        help="default: tensor parallelism as wide as the heads divide, data "
                             "parallelism over the other chips")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="parameters and compute")
    parser.add_argument("--slots", default="1,8,64",
                        help="slot counts to compile decode for; the pool holds the largest")
    parser.add_argument("--decode-steps", type=int, default=EngineConfig.decode_steps,
                        help="tokens per decode call, as the engine runs them")
    parser.add_argument("--block-size", type=int, default=EngineConfig.block_size,
                        help="tokens per KV block")
    parser.add_argument("--max-model-len", type=int, default=EngineConfig.max_model_len,
                        help="longest context a slot holds (tokens)")
    parser.add_argument("--kv-cache-gb", type=float,
                        help="KV pool size (default: every slot at --max-model-len)")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default="auto",
                        help="the KV pool's dtype (auto: the model's)")
    parser.add_argument("--widest-only", action="store_true",
                        help="compile only the widest block table (every slot at "
                             "--max-model-len: what the table reports), not every width")
    parser.add_argument("--json-out", type=pathlib.Path, help="also write the plan here")
    parser.add_argument("--table", type=pathlib.Path, nargs="+", metavar="PLAN.json",
                        help="print these saved plans as a markdown table and stop")
    return parser.parse_args()


def slot_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(s) for s in text.split(",")}))
    except ValueError:
        raise MarcoError(f"--slots {text!r}: expected counts like 1,8,64") from None
    if counts[0] < 1:
        raise MarcoError(f"--slots {text!r}: counts must be >= 1")
    return counts


def progress(plan) -> None:
    print(f"{plan.kind} rows={plan.rows} chunk={plan.chunk} width={plan.width}: peak "
          f"{plan.peak_bytes / 2**30:.2f} GiB, compiled in {plan.compile_seconds:.0f} s",
          file=sys.stderr, flush=True)


def main() -> None:
    args = parse_args()
    import jax

    # compile-only devices: the attached chips (if any) stay untouched
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_compilation_cache", False)
    from marco_jax import topology
    from marco_jax.engine import plan
    from marco_jax.engine.kv_pages import Placement
    from marco_jax.model_config import preset

    if args.table:
        print(plan.markdown_table([json.loads(p.read_text()) for p in args.table]))
        return
    counts = slot_counts(args.slots)
    cfg = preset(args.preset).replace(param_dtype=args.dtype, compute_dtype=args.dtype)
    config = EngineConfig(slots=counts[-1], decode_steps=args.decode_steps,
                          block_size=args.block_size, max_model_len=args.max_model_len,
                          kv_cache_gb=args.kv_cache_gb, kv_dtype=args.kv_dtype)
    devices = topology.tpu_devices(args.topology)
    mesh = plan.engine_mesh(cfg, devices, parse_mesh(args.mesh) if args.mesh else None)
    widths = plan.table_widths(config)[-1:] if args.widest_only else None
    result = plan.plan_engine(cfg, config, Placement(mesh), counts,
                              (args.preset, args.topology), progress, widths).to_json()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text)
    print(plan.markdown_table([result]), file=sys.stderr)


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
