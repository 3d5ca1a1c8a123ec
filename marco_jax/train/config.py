"""Training run configuration: named JSON files in ``marco_jax/configs/train/`` plus
``--set section.key=value`` overrides, every key checked by :mod:`marco_jax.run_config`
(a silently ignored setting in a multi-day run is the most expensive kind of bug)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from marco_jax.errors import require
from marco_jax.model import REMAT_POLICIES
from marco_jax.prompts import SYSTEM_PROMPTS
from marco_jax.run_config import (apply_overrides, build, choice_checks, named_config,
                                  range_checks, ranged)

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")  # marco_jax.train.attention
ON_BAD_RECORD = ("error", "skip")
OVERLONG = ("truncate", "drop")
STORAGE_DTYPES = ("float32", "bfloat16")
# Each enumerated setting's allowed values: validate checks them and lists them in its error.
CHOICES = {
    "objective": ("sft", "dpo"), "data.overlong": OVERLONG, "data.on_bad_record": ON_BAD_RECORD,
    "data.system": tuple(SYSTEM_PROMPTS), "model.remat": tuple(REMAT_POLICIES),
    "model.attention": ATTENTION_IMPLEMENTATIONS, "train.optimizer": ("adamw", "adafactor"),
    "train.moments_dtype": STORAGE_DTYPES, "train.accumulate_dtype": STORAGE_DTYPES,
    "dpo.loss": ("sigmoid", "ipo"), "dpo.reference": ("precomputed", "live"),
}


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"  # marco_jax.config preset (architecture), used without init_from
    init_from: str | None = None  # a checkpoint (HF, Orbax or GGUF) to fine-tune
    param_dtype: str = "float32"  # master weights and Adam state
    compute_dtype: str = "bfloat16"
    remat: str = "full"  # what the backward pass recomputes: marco_jax.model.REMAT_POLICIES
    attention: str = "auto"  # splash on TPU, cudnn on GPU, xla elsewhere; or one of those


@dataclasses.dataclass(frozen=True)
class DataSection:
    path: str = ""
    tokenizer: str = "builtin"  # "builtin" (tests) or a directory with tokenizer files
    system: str = "marco"  # system prompt for records without one: marco, default, none
    seq_len: int = ranged(512, at_least=2)
    pack: bool = True  # SFT only: DPO rows hold one completion each
    overlong: str = "truncate"  # or "drop"
    on_bad_record: str = "error"  # or "skip"
    shuffle_seed: int = ranged(0, at_least=0)
    num_epochs: int | None = ranged(None, at_least=1)  # None: repeat until train.steps


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = ranged(100, at_least=1)
    global_batch: int = ranged(8, at_least=1)  # sequences per optimizer step, over all hosts
    # gradient accumulation: global_batch is split into this many
    micro_batches: int = ranged(1, at_least=1)
    learning_rate: float = ranged(1e-5, above=0)
    warmup_steps: int = ranged(10, at_least=0)
    min_learning_rate: float = ranged(0.0, at_least=0)  # end of the cosine decay
    weight_decay: float = ranged(0.0, at_least=0)  # AdamW; never applied to norms and biases
    b1: float = ranged(0.9, at_least=0, below=1)
    b2: float = ranged(0.95, at_least=0, below=1)
    eps: float = ranged(1e-8, above=0)
    clip_norm: float = ranged(1.0, above=0)  # global gradient norm cap
    optimizer: str = "adamw"  # or adafactor (factored second moment, no first moment)
    moments_dtype: str = "float32"  # AdamW's mu and nu: float32 or bfloat16
    accumulate_dtype: str = "float32"  # micro-batch gradient sum: float32 or bfloat16
    offload_optimizer: bool = False  # optimizer state in pinned host memory between steps
    seed: int = ranged(0, at_least=0)
    log_every: int = ranged(1, at_least=1)


@dataclasses.dataclass(frozen=True)
class MeshSection:
    # Axis sizes; one may be -1: every remaining device (0 is refused in validate).
    data: int = ranged(1, at_least=-1)
    fsdp: int = ranged(-1, at_least=-1)
    tensor: int = ranged(1, at_least=-1)


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = ranged(100, at_least=1)  # steps between saves (and always the last step)
    keep: int = ranged(3, at_least=1)
    async_save: bool | None = None  # None: on unless the devices are CPUs (see checkpoint.py)
    compress: bool | None = None  # zstd; None: on unless the devices are CPUs (ditto)


@dataclasses.dataclass(frozen=True)
class DPOSection:
    """Preference training (``objective: dpo``); see :class:`marco_jax.train.objectives.DPO`."""

    beta: float = ranged(0.1, above=0)
    loss: str = "sigmoid"  # or ipo
    # cDPO's epsilon (sigmoid loss only)
    label_smoothing: float = ranged(0.0, at_least=0, below=0.5)
    # v2's joint term: NLL of the chosen completion, this weight
    sft_weight: float = ranged(0.0, at_least=0)
    mask_shared_prefix: bool = False  # leave out the completions' common first tokens
    reference: str = "precomputed"  # once, before training; or "live": a frozen copy
    # of the initial weights beside the state, scored with every batch
    reference_logps: str = ""  # precomputed file; "" = <output_dir>/reference_logps.jsonl


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str
    output_dir: str = "results/train"
    objective: str = "sft"  # sft (data: chat records) or dpo (data: preference pairs)
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()
    dpo: DPOSection = DPOSection()

    def validate(self) -> "TrainConfig":
        """Every choice and range (for a config built in code), then the settings that
        depend on each other."""
        require([*choice_checks(self, CHOICES), *range_checks(self)], f"config {self.name}: ")
        require([
            (self.train.global_batch % self.train.micro_batches == 0,
             "train.global_batch must be a multiple of train.micro_batches"),
            (self.train.min_learning_rate <= self.train.learning_rate,
             f"train.min_learning_rate ({self.train.min_learning_rate}) must be <= "
             f"train.learning_rate ({self.train.learning_rate})"),
            *((size != 0, f"mesh.{axis} must be >= 1 or -1 (every remaining device), got 0")
              for axis, size in dataclasses.asdict(self.mesh).items()),
            (self.dpo.label_smoothing == 0.0 or self.dpo.loss == "sigmoid",
             "dpo.label_smoothing applies to the sigmoid loss only"),
        ], f"config {self.name}: ")
        return self


def beside(config_file: pathlib.Path, value: Any) -> Any:
    """A relative local path from a config file, made to name the file beside the config
    (so the config works from any directory); anything else (absolute, remote ``gs://``,
    empty, not a string) as it is."""
    if not isinstance(value, str) or not value or "://" in value or os.path.isabs(value):
        return value
    return str(config_file.absolute().parent / value)


def load_train_config(name_or_path: str, overrides: list[str] = ()) -> TrainConfig:
    """A config by name (``marco_jax/configs/train/NAME.json``) or path, then
    ``section.key=value`` overrides applied in order. A relative ``data.path`` in the
    file is relative to the file; one given as an override, to the working directory."""
    path, raw = named_config(name_or_path, "train", "training")
    raw.pop("description", None)
    if isinstance(data := raw.get("data"), dict) and "path" in data:
        data["path"] = beside(path, data["path"])
    origins = apply_overrides(raw, overrides)
    return build(TrainConfig, raw, str(path), origins=origins, name=path.stem).validate()
