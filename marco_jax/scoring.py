"""Teacher-forced scoring: each token's log-probability and the top-k at each position.

Token ``i`` is scored by the distribution at position ``i - 1``; the first
token has no context and gets no score (as in vLLM's prompt log-probabilities).
Sequences are padded to a power-of-two length so that scoring texts of many
lengths compiles only a few times.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from marco_jax.engine.sampling import token_and_top_logprobs
from marco_jax.errors import MarcoError
from marco_jax.model import Qwen2

MIN_BUCKET = 16


@dataclasses.dataclass
class TokenScores:
    """Scores of one sequence; arrays have one row per scored token (len(ids) - 1)."""

    ids: np.ndarray  # (t,) every token, including the unscored first one
    logprobs: np.ndarray  # (t - 1,)
    top_ids: np.ndarray  # (t - 1, k)
    top_logprobs: np.ndarray  # (t - 1, k)

    @property
    def total(self) -> float:
        return float(self.logprobs.sum(dtype=np.float64))

    @property
    def perplexity(self) -> float:
        return float(np.exp(-self.total / max(len(self.logprobs), 1)))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _score_padded(graphdef: nnx.GraphDef, state: nnx.State, tokens_bt: jax.Array,
                  mask_bt: jax.Array, top_k: int):
    """(token log-probs, top-k log-probs, top-k ids) of every token after the first."""
    model = nnx.merge(graphdef, state)
    positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    logits_btv = model(tokens_bt, positions_bt, mask_bt)
    return token_and_top_logprobs(logits_btv[:, :-1], tokens_bt[:, 1:], top_k)


def bucket_length(n: int, max_length: int) -> int:
    if n > max_length:
        raise MarcoError(f"text is {n} tokens, longer than the model's "
                         f"max_position_embeddings={max_length}")
    return min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), max_length)


def score(model: Qwen2, token_ids: list[int], top_k: int = 5) -> TokenScores:
    """Score one token sequence (at least two tokens)."""
    if len(token_ids) < 2:
        raise MarcoError("need at least two tokens to score (the first has no context)")
    if not 1 <= top_k <= model.cfg.vocab_size:
        raise MarcoError(f"--top-logprobs must be in [1, {model.cfg.vocab_size}], got {top_k}")
    n = len(token_ids)
    length = bucket_length(n, model.cfg.max_position_embeddings)
    tokens = np.zeros((1, length), np.int32)
    tokens[0, :n] = token_ids
    mask = np.arange(length)[None] < n
    graphdef, state = nnx.split(model)
    token_lp, top_lp, top_ids = jax.device_get(
        _score_padded(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), top_k))
    return TokenScores(ids=np.asarray(token_ids), logprobs=token_lp[0, :n - 1],
                       top_ids=top_ids[0, :n - 1], top_logprobs=top_lp[0, :n - 1])
