"""Training run configuration: named JSON files in ``marco_jax/configs/train/`` plus
``--set section.key=value`` overrides, every key checked by :mod:`marco_jax.run_config`
(a silently ignored setting in a multi-day run is the most expensive kind of bug)."""

from __future__ import annotations

import dataclasses

from marco_jax.errors import require
from marco_jax.model import REMAT_POLICIES
from marco_jax.prompts import SYSTEM_PROMPTS
from marco_jax.run_config import apply_overrides, build, choice_checks, named_config

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
    seq_len: int = 512
    pack: bool = True  # SFT only: DPO rows hold one completion each
    overlong: str = "truncate"  # or "drop"
    on_bad_record: str = "error"  # or "skip"
    shuffle_seed: int = 0
    num_epochs: int | None = None  # None: repeat until train.steps


@dataclasses.dataclass(frozen=True)
class TrainSection:
    steps: int = 100
    global_batch: int = 8  # sequences per optimizer step, over all hosts
    micro_batches: int = 1  # gradient accumulation: global_batch is split into this many
    learning_rate: float = 1e-5
    warmup_steps: int = 10
    min_learning_rate: float = 0.0  # end of the cosine decay
    weight_decay: float = 0.0  # AdamW; never applied to norms and biases
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0
    optimizer: str = "adamw"  # or adafactor (factored second moment, no first moment)
    moments_dtype: str = "float32"  # AdamW's mu and nu: float32 or bfloat16
    accumulate_dtype: str = "float32"  # micro-batch gradient sum: float32 or bfloat16
    offload_optimizer: bool = False  # optimizer state in pinned host memory between steps
    seed: int = 0
    log_every: int = 1


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = -1  # -1: every remaining device
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 100  # steps between saves (and always the last step)
    keep: int = 3
    async_save: bool | None = None  # None: on unless the devices are CPUs (see checkpoint.py)
    compress: bool | None = None  # zstd; None: on unless the devices are CPUs (ditto)


@dataclasses.dataclass(frozen=True)
class DPOSection:
    """Preference training (``objective: dpo``); see :class:`marco_jax.train.objectives.DPO`."""

    beta: float = 0.1
    loss: str = "sigmoid"  # or ipo
    label_smoothing: float = 0.0  # cDPO's epsilon (sigmoid loss only)
    sft_weight: float = 0.0  # v2's joint term: NLL of the chosen completion, this weight
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
        require([
            *choice_checks(self, CHOICES),
            (self.data.seq_len >= 2, "data.seq_len must be >= 2"),
            (self.train.micro_batches >= 1 and self.train.global_batch % self.train.micro_batches
             == 0, "train.global_batch must be a multiple of train.micro_batches"),
            (self.train.steps >= 1, "train.steps must be >= 1"),
            (self.checkpoint.every >= 1 and self.checkpoint.keep >= 1,
             "checkpoint.every and checkpoint.keep must be >= 1"),
            (self.dpo.beta > 0, "dpo.beta must be > 0"),
            (0.0 <= self.dpo.label_smoothing < 0.5, "dpo.label_smoothing must be >= 0 and < 0.5"),
            (self.dpo.label_smoothing == 0.0 or self.dpo.loss == "sigmoid",
             "dpo.label_smoothing applies to the sigmoid loss only"),
            (self.dpo.sft_weight >= 0, "dpo.sft_weight must be >= 0"),
        ], f"config {self.name}: ")
        return self

def load_train_config(name_or_path: str, overrides: list[str] = ()) -> TrainConfig:
    """A config by name (``marco_jax/configs/train/NAME.json``) or path, then
    ``section.key=value`` overrides applied in order."""
    path, raw = named_config(name_or_path, "train", "training")
    raw.pop("description", None)
    apply_overrides(raw, overrides)
    return build(TrainConfig, raw, str(path), name=path.stem).validate()
