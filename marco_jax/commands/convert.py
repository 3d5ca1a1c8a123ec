"""Convert checkpoints between Hugging Face safetensors, GGUF and marco-jax's Orbax layout.

    python scripts/convert.py hf-to-orbax --src HF_DIR --dst CKPT
    python scripts/convert.py orbax-to-hf --src CKPT --dst HF_DIR
    python scripts/convert.py gguf-to-orbax --src MODEL.gguf --dst CKPT
"""

from __future__ import annotations

import argparse
import pathlib
import time

from marco_jax.checkpoint import convert
from marco_jax.cli import run, summary
from marco_jax.errors import MarcoError

COMMANDS = {
    "hf-to-orbax": convert.hf_to_orbax,
    "orbax-to-hf": convert.orbax_to_hf,
    "gguf-to-orbax": convert.gguf_to_orbax,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("command", choices=sorted(COMMANDS), help="the conversion: from-to")
    parser.add_argument("--src", required=True, type=pathlib.Path,
                        help="the checkpoint to read: an HF directory, a marco-jax Orbax "
                             "checkpoint or a .gguf file")
    parser.add_argument("--dst", required=True, type=pathlib.Path,
                        help="the new checkpoint's directory (absent or empty)")
    parser.add_argument("--max-shard-gb", type=float, default=2.0,
                        help="orbax-to-hf: largest safetensors shard (default 2 GB)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.src.exists():
        raise MarcoError(f"{args.src}: no such file or directory")
    if args.max_shard_gb <= 0:
        raise MarcoError(f"--max-shard-gb must be positive, got {args.max_shard_gb}")
    start = time.perf_counter()
    if args.command == "orbax-to-hf":
        convert.orbax_to_hf(args.src, args.dst, int(args.max_shard_gb * 1024**3))
    else:
        COMMANDS[args.command](args.src, args.dst)
    print(f"{args.command}: wrote {args.dst} in {time.perf_counter() - start:.1f}s")


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
