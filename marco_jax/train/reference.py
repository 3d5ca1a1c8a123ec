"""DPO's reference log-probabilities, computed once with the run's own jitted forward
(no second parameter copy during training) and kept in a JSONL file.

Its first line says what the numbers depend on (pairs, reference weights, settings); a
run reuses the file only when all of it matches, and a stale file is an error naming
what changed, not silently wrong rewards. Each further line holds one pair's summed
completion log-probs: ``{"id", "chosen", "rejected"}``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from marco_jax.errors import MarcoError
from marco_jax.train.pairs import interleave


def file_sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@jax.jit
def _leaf_digest(x: jax.Array) -> jax.Array:
    """Plain and position-weighted wrapping sums of the leaf's bit patterns: exact
    (integer sums), and independent of how the array is sharded or reduced."""
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32).reshape(-1)
    position = jnp.arange(1, bits.size + 1, dtype=jnp.uint32)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32),
                      jnp.sum(bits * position, dtype=jnp.uint32)])


def weights_fingerprint(params: Any) -> str:
    """A digest of the reference weights' values, so that a reference file made with
    other weights at the same path (a model retrained in place) is refused, while a
    re-save of the same weights (Orbax names its files anew) is not."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                             key=lambda item: jax.tree_util.keystr(item[0])):
        pair = np.asarray(multihost_utils.process_allgather(_leaf_digest(leaf))).reshape(-1)
        digest.update(f"{jax.tree_util.keystr(path)}:{pair[0]:08x}{pair[1]:08x};".encode())
    return digest.hexdigest()


def read_reference(path: epath.Path, header: dict[str, Any],
                   ids: Sequence[str]) -> np.ndarray | None:
    """(pairs, 2) reference log-probs from ``path``, None when there is no file yet."""
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    stored = json.loads(lines[0]) if lines else {}
    changed = [k for k in header if stored.get(k) != header[k]]
    if changed:
        raise MarcoError(
            f"{path} holds reference log-probs for other settings ({', '.join(changed)}: "
            f"{', '.join(f'{stored.get(k)!r} != {header[k]!r}' for k in changed)}); delete it "
            "or set dpo.reference_logps to another file")
    rows = [json.loads(line) for line in lines[1:]]
    if [r["id"] for r in rows] != list(ids):
        raise MarcoError(f"{path}: its pairs ({len(rows)}) are not the data's ({len(ids)}) in "
                         "order; delete it to recompute")
    return np.asarray([[r["chosen"], r["rejected"]] for r in rows], np.float32)


def write_reference(path: epath.Path, header: dict[str, Any], ids: Sequence[str],
                    logps_p2: np.ndarray) -> None:
    """Write aside and rename, so the file is complete whenever it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    with staging.open("w") as f:
        f.write(json.dumps(header) + "\n")
        for pair_id, (chosen, rejected) in zip(ids, logps_p2.tolist()):
            f.write(json.dumps({"id": pair_id, "chosen": chosen, "rejected": rejected}) + "\n")
    staging.rename(path)


def compute_reference(examples: Sequence[dict[str, Any]], pairs_per_call: int,
                      to_global: Callable[[dict], dict], score: Callable[[dict], jax.Array],
                      progress: bool = True) -> np.ndarray:
    """(pairs, 2) summed completion log-probs of every example, in order, one training
    micro-batch (``pairs_per_call`` pairs) per call, each process giving ``to_global``
    its rows; the last call is padded with copies of the final pair."""
    n, count, index = len(examples), jax.process_count(), jax.process_index()
    per_process = pairs_per_call // count
    out = []
    for start in tqdm(range(0, n, pairs_per_call), desc="reference log-probs", unit="batch",
                      disable=not progress or index != 0):
        chunk = [examples[min(start + i, n - 1)]["rows"] for i in range(pairs_per_call)]
        local = chunk[index * per_process:(index + 1) * per_process]
        rows = interleave({k: np.stack([r[k] for r in local]) for k in local[0]})
        logps = multihost_utils.process_allgather(score(to_global(rows)), tiled=True)
        out.append(np.asarray(logps, np.float32).reshape(-1, 2))
    return np.concatenate(out)[:n]
