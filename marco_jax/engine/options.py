"""How every inference tool builds its engine: the command-line options for the
engine's size and the device mesh it runs on, and :func:`build_engine`.

JAX and the engine are imported when an engine is set up, not with this module, so
that a tool's ``--help`` comes at once; the choices and defaults the options show are
therefore written out here (``engine_options_test`` checks them against the engine's)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Sequence

from marco_jax.errors import MarcoError

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from marco_jax.engine.engine import Engine, EngineConfig
    from marco_jax.loading import LoadedModel

KV_DTYPES = ("auto", "float32", "bfloat16")  # marco_jax.engine.engine.KV_DTYPES
POLICIES = ("fcfs", "longest_first")  # marco_jax.engine.scheduler.POLICIES
# EngineConfig's defaults for the options below.
DEFAULTS = {"decode_steps": 16, "block_size": 16, "max_model_len": 2048}


def parse_mesh(text: str, flag: str = "--mesh") -> dict[str, int]:
    """``data=2,tensor=4`` -> sizes of every mesh axis (unnamed axes: 1)."""
    from marco_jax.sharding import MESH_AXES

    sizes = dict.fromkeys(MESH_AXES, 1)
    for item in text.split(","):
        axis, eq, size = item.partition("=")
        if axis not in sizes or not eq or not size.lstrip("-").isdigit():
            raise MarcoError(f"{flag} {text!r}: expected AXIS=N items with AXIS in "
                             f"{sorted(sizes)}")
        sizes[axis] = int(size)
    return sizes


def add_engine_args(parser: argparse.ArgumentParser, slots: int = 64) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--mesh", metavar="data=D,tensor=T",
                       help="run one engine over a device mesh (default: one device)")
    group.add_argument("--slots", type=int, default=slots,
                       help="requests decoded together (default %(default)s)")
    group.add_argument("--decode-steps", type=int, default=DEFAULTS["decode_steps"],
                       help="tokens per slot per device call (default %(default)s)")
    group.add_argument("--block-size", type=int, default=DEFAULTS["block_size"],
                       help="tokens per KV cache block (default %(default)s)")
    group.add_argument("--max-model-len", type=int, default=DEFAULTS["max_model_len"],
                       help="the most tokens of one request: prompt + new tokens "
                            "(default %(default)s)")
    group.add_argument("--kv-cache-gb", type=float,
                       help="KV pool size (default: every slot at --max-model-len, at most half "
                            "of free device memory)")
    group.add_argument("--policy", choices=POLICIES, default="fcfs",
                       help="which waiting request starts next: fcfs (in arrival order, the "
                            "default) or longest_first (the most new tokens first: fewer idle "
                            "slots at the end of an offline batch)")
    group.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                       help="parameters and compute (auto: bfloat16 on TPU and GPU, float32 "
                            "on CPU)")
    group.add_argument("--kv-dtype", choices=KV_DTYPES, default="auto",
                       help="the KV pool's dtype (auto: the model's, --dtype)")


def model_dtype(args: argparse.Namespace) -> str:
    """``--dtype``, with auto resolved for the backend: accelerators run bfloat16
    (half the bytes a decode step reads), the CPU float32 (its results stay exact)."""
    if args.dtype != "auto":
        return args.dtype
    import jax

    return "bfloat16" if jax.default_backend() in ("tpu", "gpu") else "float32"


def engine_setup(args: argparse.Namespace,
                 top_logprobs: int = 5) -> tuple[EngineConfig, Mesh | None]:
    """The engine config and mesh that ``add_engine_args``' options describe. The mesh
    holds this process's devices only: each host of a multi-host job runs its own engine."""
    import jax

    from marco_jax.engine.engine import EngineConfig
    from marco_jax.sharding import make_mesh

    config = EngineConfig(slots=args.slots, decode_steps=args.decode_steps,
                          block_size=args.block_size, max_model_len=args.max_model_len,
                          kv_cache_gb=args.kv_cache_gb, policy=args.policy,
                          top_logprobs=top_logprobs, kv_dtype=args.kv_dtype)
    mesh = None if args.mesh is None else make_mesh(**parse_mesh(args.mesh),
                                                    devices=jax.local_devices())
    return config, mesh


def build_engine(loaded: LoadedModel, config: EngineConfig, mesh: Mesh | None = None,
                 stop_strings: Sequence[str] = ()) -> Engine:
    """An engine over a loaded model, its stop strings compiled for the model's
    tokenizer (stops found on device)."""
    from marco_jax.engine.engine import Engine
    from marco_jax.engine.stops import build_stop_table

    table = build_stop_table(loaded.tokenizer, list(stop_strings), loaded.cfg.vocab_size)
    return Engine(loaded.model, loaded.eos_ids, config, stop_table=table, mesh=mesh)
