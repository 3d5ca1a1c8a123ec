"""Training objectives as plug-ins of one step: SFT (token cross-entropy) and DPO
(preference pairs against a reference model).

An objective turns a micro-batch into ``(loss sum, weight, metric sums)``, which the
step sums over micro-batches and divides once; SFT's weight is the number of learned
tokens, DPO's the number of pairs. DPO rows are interleaved (2i chosen, 2i+1
rejected), so any even split keeps a pair in one micro-batch; its batch adds
``shared_mask`` and ``reference_logps`` (:mod:`marco_jax.train.pairs`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from marco_jax import loops
from marco_jax.train.attention import packed_attention
from marco_jax.train.layout import Params, TrainLayout

LOSS_CHUNK = 1024  # sequence positions per head + loss chunk
TOKEN_FIELDS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
FLOAT_FIELDS = ("loss_mask", "shared_mask", "reference_logps")
Sums = tuple[jax.Array, jax.Array, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LayerRun:
    """How the training forward runs the layers: remat policy, the activations' sharding
    between layers, the resolved attention kernel and its mesh; ``interpret`` runs a
    Pallas kernel in Pallas's interpreter (splash off TPU: slow, for checking numbers)."""

    remat: str = "none"
    act_sharding: NamedSharding | None = None
    attention: str = "xla"
    mesh: Mesh | None = None
    interpret: bool = False


def masked_logprob_sums(layout: TrainLayout, params: Params, batch: dict[str, jax.Array],
                        masks_kbt: jax.Array, run: LayerRun) -> jax.Array:
    """float32 (k, b): each row's summed target log-probabilities under each of k masks.

    The head runs over LOSS_CHUNK positions at a time, recomputed in the backward pass
    under any remat policy but ``none``, so only one chunk's float32 logits (0.6 GB for
    Qwen2's 152k vocabulary at 1024 positions) are ever alive, never all (b, t, vocab).
    """
    model, layers = layout.model(params)
    attention = packed_attention(run.attention, batch["segment_ids"], run.mesh,
                                 interpret=run.interpret)
    x_btd = model.hidden_states(batch["inputs"], batch["positions"],
                                lambda _, q, k, v: attention(q, k, v), scanned_layers=layers,
                                remat=run.remat, act_sharding=run.act_sharding)
    b, t, _ = x_btd.shape
    k = masks_kbt.shape[0]
    chunk = LOSS_CHUNK if t % LOSS_CHUNK == 0 else t
    n = t // chunk
    x_nbcd = jnp.swapaxes(x_btd.reshape(b, n, chunk, -1), 0, 1)
    targets_nbc = jnp.swapaxes(batch["targets"].reshape(b, n, chunk), 0, 1)
    masks_nkbc = jnp.moveaxis(masks_kbt.astype(jnp.float32).reshape(k, b, n, chunk), 2, 0)

    head_vd = model.head().astype(x_btd.dtype)  # cast once: fsdp gathers the 16-bit copy

    def chunk_sums(total_kb, chunk_inputs):
        x_bcd, targets_bc, masks_kbc = chunk_inputs
        logp_bc = -optax.softmax_cross_entropy_with_integer_labels(
            model.logits(x_bcd, head_vd), targets_bc)
        return total_kb + jnp.einsum("kbc,bc->kb", masks_kbc, logp_bc), None

    total_kb, _ = loops.scan(chunk_sums if run.remat == "none" else jax.checkpoint(chunk_sums),
                             jnp.zeros((k, b), jnp.float32), (x_nbcd, targets_nbc, masks_nkbc))
    return total_kb


class Objective(Protocol):
    """What the step needs of a training objective."""

    rows_per_example: ClassVar[int]  # batch rows per data-set example (a DPO pair is two)
    fields: ClassVar[tuple[str, ...]]  # batch fields: (rows, seq) unless in row_fields
    row_fields: ClassVar[tuple[str, ...]]  # one value per row: (rows,)

    def sums(self, layout: TrainLayout, params: Params, batch: dict[str, jax.Array],
             run: LayerRun) -> Sums:
        """(loss sum, weight, metric sums) of one micro-batch."""


@dataclasses.dataclass(frozen=True)
class SFT:
    """Mean cross-entropy over every learned token of the global batch."""

    rows_per_example: ClassVar[int] = 1
    fields: ClassVar[tuple[str, ...]] = TOKEN_FIELDS
    row_fields: ClassVar[tuple[str, ...]] = ()

    def sums(self, layout, params, batch, run: LayerRun) -> Sums:
        logp_b = masked_logprob_sums(layout, params, batch, batch["loss_mask"][None], run)[0]
        return -jnp.sum(logp_b), jnp.sum(batch["loss_mask"]), {}


@dataclasses.dataclass(frozen=True)
class DPO:
    """Direct preference optimisation (Rafailov et al. 2023) with Marco-o1 v2's options.

    ``loss``: "sigmoid", with cDPO's ``label_smoothing`` (the preference taken as
    flipped with that probability), or "ipo" (Azar et al. 2023: the squared distance
    of the log-ratio margin from 1/(2 beta)). ``sft_weight`` adds v2's joint term, the
    chosen completion's mean token NLL. ``mask_shared_prefix`` (v2's fine-grained
    masking) leaves out the completions' common first tokens: the preference terms
    keep their value (those tokens score alike in both rows), the SFT term counts only
    the tokens after the branch point.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    loss: str = "sigmoid"
    sft_weight: float = 0.0
    mask_shared_prefix: bool = False
    rows_per_example: ClassVar[int] = 2
    fields: ClassVar[tuple[str, ...]] = (*TOKEN_FIELDS, "shared_mask", "reference_logps")
    row_fields: ClassVar[tuple[str, ...]] = ("reference_logps",)

    def completion_mask(self, batch: dict[str, jax.Array]) -> jax.Array:
        mask = batch["loss_mask"]
        return mask * (1.0 - batch["shared_mask"]) if self.mask_shared_prefix else mask

    def logps(self, layout, params, batch, run: LayerRun) -> jax.Array:
        """Each row's summed completion log-probability, (rows,) float32."""
        return masked_logprob_sums(layout, params, batch, self.completion_mask(batch)[None],
                                   run)[0]

    def sums(self, layout, params, batch, run: LayerRun) -> Sums:
        logp_pc = self.logps(layout, params, batch, run).reshape(-1, 2)
        ref_pc = batch["reference_logps"].reshape(-1, 2)
        tokens_pc = jnp.sum(self.completion_mask(batch), axis=-1).reshape(-1, 2)
        terms = pair_terms(logp_pc, ref_pc, tokens_pc, self)
        return jnp.sum(terms["loss"]), jnp.asarray(logp_pc.shape[0], jnp.float32), {
            name: jnp.sum(value) for name, value in terms.items() if name != "loss"}


def pair_terms(logp_pc: jax.Array, ref_pc: jax.Array, tokens_pc: jax.Array,
               dpo: DPO) -> dict[str, jax.Array]:
    """Per-pair loss and metrics from (pairs, [chosen, rejected]) log-probabilities
    of the policy and the reference, and completion token counts."""
    ratio_pc = logp_pc - ref_pc
    margin_p = ratio_pc[:, 0] - ratio_pc[:, 1]
    if dpo.loss == "ipo":
        preference_p = (margin_p - 1.0 / (2.0 * dpo.beta)) ** 2
    else:
        eps = dpo.label_smoothing
        preference_p = (-(1.0 - eps) * jax.nn.log_sigmoid(dpo.beta * margin_p)
                        - eps * jax.nn.log_sigmoid(-dpo.beta * margin_p))
    sft_p = -logp_pc[:, 0] / jnp.maximum(tokens_pc[:, 0], 1.0)
    rewards_pc = dpo.beta * ratio_pc
    return {"loss": preference_p + dpo.sft_weight * sft_p,
            "preference_loss": preference_p, "sft_loss": sft_p,
            "reward_chosen": rewards_pc[:, 0], "reward_rejected": rewards_pc[:, 1],
            "reward_margin": rewards_pc[:, 0] - rewards_pc[:, 1],
            "preference_accuracy": (rewards_pc[:, 0] > rewards_pc[:, 1]).astype(jnp.float32)}


def objective_of(cfg) -> Objective:
    """The objective a :class:`marco_jax.train.config.TrainConfig` names."""
    if cfg.objective == "dpo":
        return DPO(**{f.name: getattr(cfg.dpo, f.name) for f in dataclasses.fields(DPO)})
    return SFT()
