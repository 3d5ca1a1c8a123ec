"""Training metrics per log step, to a JSONL file and TensorBoard. MFU counts model
FLOPs (not remat's recomputation) over the devices' peak, as MaxText and PaLM do."""

from __future__ import annotations

import json
from typing import Any

import jax
from etils import epath
from tensorboardX import SummaryWriter

from marco_jax.model_config import Qwen2Config
from marco_jax.topology import chip_of


def flops_per_token(cfg: Qwen2Config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + causal attention scores."""
    matmul_params = cfg.num_params() - cfg.vocab_size * cfg.hidden_size * (
        not cfg.tie_word_embeddings)  # the input embedding is a gather, not a matmul
    # QK^T and PV, forward and backward, over the causal half
    attention = 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6 * matmul_params + attention


def peak_flops(override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of all devices: the override (per device), else the chip's table
    entry, else None (MFU is not reported on unknown hardware such as a CPU)."""
    chip = chip_of(jax.devices()[0].device_kind)
    per_device = override_tflops * 1e12 if override_tflops else (chip and chip.peak_flops)
    return None if per_device is None else per_device * jax.device_count()


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line torn by a kill
        return -1


def cut_after(path: epath.Path, step: int) -> list[str]:
    """Keep the lines of ``path`` up to ``step`` (a resumed run's checkpoint: the steps
    after it are logged again), written whole beside it and renamed over it, so a kill
    leaves the old file or the new one; returns them."""
    if not path.exists():
        return []
    kept = [line for line in path.read_text().splitlines() if 0 <= _step(line) <= step]
    fresh = path.parent / (path.name + ".cutting")
    fresh.write_text("".join(line + "\n" for line in kept))
    fresh.replace(path)
    return kept


class MetricsLog:
    """One JSON line and one TensorBoard point per log step (process 0 only); in a remote
    ``directory`` (``gs://...``, no appends) the whole JSONL file is rewritten each time.
    A run that starts at ``start`` (its checkpoint's step; 0 for a new run) drops what an
    earlier run logged after it: the JSONL lines, and TensorBoard's events through
    ``purge_step`` (TensorBoard hides the earlier events from that step on); without
    ``start`` the earlier lines are kept as they are."""

    def __init__(self, directory: epath.PathLike, enabled: bool = True,
                 start: int | None = None):
        self.enabled = enabled
        if enabled:
            directory = epath.Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            self.path = directory / "metrics.jsonl"
            self.remote = "://" in str(directory)
            if start is None:
                self.lines = self.path.read_text().splitlines() if (
                    self.remote and self.path.exists()) else []
                purge = {}
            else:
                self.lines = cut_after(self.path, start)
                purge = {"purge_step": start + 1}
            self.jsonl = None if self.remote else self.path.open("a")
            self.tensorboard = SummaryWriter(str(directory / "tensorboard"), **purge)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, **metrics})
        if self.remote:
            self.lines.append(line)
            self.path.write_text("\n".join(self.lines) + "\n")
        else:
            self.jsonl.write(line + "\n")
            self.jsonl.flush()
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            if self.jsonl is not None:
                self.jsonl.close()
            self.tensorboard.close()
