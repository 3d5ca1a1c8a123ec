"""Choosing the next token on device: greedy, temperature, top-k and top-p, per row.

A row's random number at step ``i`` comes from ``fold_in(key(seed), i)``, so a seed
reproduces its draw whatever else is in the batch. Sorting a 150k vocabulary cost
1.3 s per step at 32 rows on CPU, so nothing sorts: a draw inverts the CDF in two
levels, and top-k / top-p thresholds come from ``lax.top_k`` over ``width``
candidates; a row whose nucleus is wider (common for a weak model at temperature
0.7) retries with 16x the candidates, then bisects over the logits' bit patterns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CHUNK = 128  # tokens per chunk of the two-level CDF
WIDER = 16  # candidates of the second try, as a multiple of the first
GROUP = 8  # rows per pass of the wider tiers
_MASKED = -jnp.inf


def row_uniforms(seed_b: jax.Array, step: jax.Array) -> jax.Array:
    """One U[0, 1) number per row for decode step ``step`` (one for all rows, or
    one per row), from the row's seed alone."""
    def one(seed, step):
        return jax.random.uniform(jax.random.fold_in(jax.random.key(seed), step))
    return jax.vmap(one)(seed_b, jnp.broadcast_to(step, seed_b.shape))


def _top_values(x_bv: jax.Array, k: int) -> jax.Array:
    """The k largest values per row, descending, gathered by index: XLA (CPU)
    rewrites a values-only ``top_k`` into a full sort of the vocabulary, 70x slower."""
    _, ids_bk = jax.lax.top_k(x_bv, k)
    return jnp.take_along_axis(x_bv, ids_bk, axis=1)


def _thresholds(scaled_bv: jax.Array, top_k_b: jax.Array, top_p_b: jax.Array, width: int):
    """Lowest scaled logit each row keeps under top-k then top-p, and whether the
    ``width`` largest logits were enough to decide it."""
    top_bw = _top_values(scaled_bv, width)
    use_k_b = top_k_b > 0
    k_index_b = jnp.clip(top_k_b - 1, 0, width - 1)
    k_thresh_b = jnp.where(use_k_b, jnp.take_along_axis(top_bw, k_index_b[:, None], 1)[:, 0],
                           _MASKED)
    max_b = top_bw[:, 0]
    kept_mass_b = jnp.sum(jnp.where(scaled_bv >= k_thresh_b[:, None],
                                    jnp.exp(scaled_bv - max_b[:, None]), 0.0), axis=-1)
    in_k_bw = top_bw >= k_thresh_b[:, None]
    prob_bw = jnp.where(in_k_bw, jnp.exp(top_bw - max_b[:, None]), 0.0) / kept_mass_b[:, None]
    mass_before_bw = jnp.cumsum(prob_bw, axis=-1) - prob_bw
    # Nucleus: a token stays if the tokens more probable than it hold < top_p.
    keep_bw = in_k_bw & (mass_before_bw < top_p_b[:, None])
    last_b = jnp.maximum(jnp.sum(keep_bw, axis=-1) - 1, 0)
    p_thresh_b = jnp.take_along_axis(top_bw, last_b[:, None], 1)[:, 0]
    use_p_b = top_p_b < 1.0
    thresh_b = jnp.where(use_p_b, jnp.maximum(p_thresh_b, k_thresh_b), k_thresh_b)
    decided_b = ~use_p_b | use_k_b | (jnp.sum(prob_bw, axis=-1) >= top_p_b)
    return thresh_b, decided_b


def _nucleus_thresholds(scaled_bv: jax.Array, top_p_b: jax.Array) -> jax.Array:
    """Each row's top-p threshold without sorting: the largest logit ``v`` whose
    tokens ``>= v`` hold at least ``top_p`` of the mass, found by bisection over
    int32 keys in the logits' order (the mass above a key only falls as it grows)."""
    prob_bv = jnp.exp(scaled_bv - scaled_bv.max(-1, keepdims=True))
    prob_bv = prob_bv / prob_bv.sum(-1, keepdims=True)
    bits_bv = jax.lax.bitcast_convert_type(scaled_bv.astype(jnp.float32), jnp.int32)
    key_bv = jnp.where(bits_bv < 0, bits_bv ^ 0x7FFFFFFF, bits_bv)  # -inf lowest, -0 < +0

    def halve(_, bounds):  # invariant: the answer lies in [low, high], mass(>= low) >= p
        low_b, high_b = bounds
        # ceil((low + high) / 2) without int32 overflow
        mid_b = (low_b >> 1) + (high_b >> 1) + ((low_b & 1) + (high_b & 1) + 1) // 2
        enough_b = jnp.sum(jnp.where(key_bv >= mid_b[:, None], prob_bv, 0.0), -1) >= top_p_b
        return jnp.where(enough_b, mid_b, low_b), jnp.where(enough_b, high_b, mid_b - 1)

    bounds = (key_bv.min(-1), key_bv.max(-1))
    low_b, _ = jax.lax.fori_loop(0, 32, halve, bounds)
    # the largest logit whose key is <= the found key: that key itself
    return jnp.max(jnp.where(key_bv <= low_b[:, None], scaled_bv, _MASKED), -1)


def _wide_thresholds(scaled_bv: jax.Array, top_k_b: jax.Array, top_p_b: jax.Array,
                     width: int) -> jax.Array:
    """Thresholds from ``width`` candidates, then by bisection for the rows that
    even those leave undecided (they have top-p and no top-k)."""
    thresh_b, decided_b = _thresholds(scaled_bv, top_k_b, top_p_b, width)
    if width >= scaled_bv.shape[-1]:
        return thresh_b
    return jax.lax.cond(jnp.all(decided_b), lambda: thresh_b, lambda: jnp.where(
        decided_b, thresh_b, _nucleus_thresholds(scaled_bv, top_p_b)))


def filter_logits(scaled_bv: jax.Array, top_k_b: jax.Array, top_p_b: jax.Array,
                  width: int) -> jax.Array:
    """Mask (to -inf) the tokens outside each row's top-k, then outside its nucleus.

    ``width`` must be at least every row's ``top_k``; top_k 0 and top_p 1 mean off.
    The rows that ``width`` candidates leave undecided go through the wider tiers
    ``GROUP`` at a time, so they do not cost every row a wide pass.
    """
    b, vocab = scaled_bv.shape
    thresh_b, decided_b = _thresholds(scaled_bv, top_k_b, top_p_b, min(width, vocab))
    if width < vocab:
        group = min(GROUP, b)

        def next_group(carry):
            thresh_b, todo_b = carry
            rows_g = jnp.nonzero(todo_b, size=group, fill_value=b)[0]  # b: no row
            take = lambda x: jnp.take(x, rows_g, axis=0, mode="clip")
            thresh_g = _wide_thresholds(take(scaled_bv), take(top_k_b), take(top_p_b),
                                        min(WIDER * width, vocab))
            return (thresh_b.at[rows_g].set(thresh_g, mode="drop"),
                    todo_b.at[rows_g].set(False, mode="drop"))

        thresh_b, _ = jax.lax.while_loop(lambda carry: jnp.any(carry[1]), next_group,
                                         (thresh_b, ~decided_b))
    return jnp.where(scaled_bv >= thresh_b[:, None], scaled_bv, _MASKED)


def inverse_cdf(scaled_bv: jax.Array, uniform_b: jax.Array) -> jax.Array:
    """Draw from softmax(scaled_bv) by inverting its CDF at ``uniform_b``, in two
    levels to keep the cumulative sums short; a masked (-inf) token is never drawn."""
    b, vocab = scaled_bv.shape
    chunks = -(-vocab // CHUNK)
    padded_bv = jnp.pad(scaled_bv, ((0, 0), (0, chunks * CHUNK - vocab)),
                        constant_values=_MASKED)
    prob_bcw = jnp.exp(padded_bv - padded_bv.max(-1, keepdims=True)).reshape(b, chunks, CHUNK)
    cdf_bc = jnp.cumsum(prob_bcw.sum(-1), axis=-1)
    total_b = cdf_bc[:, -1]
    target_b = jnp.minimum(uniform_b * total_b, jnp.nextafter(total_b, 0.0))
    chunk_b = jnp.minimum(jnp.sum(cdf_bc <= target_b[:, None], axis=-1), chunks - 1)
    before_b = jnp.where(chunk_b > 0,
                         jnp.take_along_axis(cdf_bc, jnp.maximum(chunk_b - 1, 0)[:, None], 1)[:, 0],
                         0.0)
    cdf_bw = jnp.cumsum(jnp.take_along_axis(prob_bcw, chunk_b[:, None, None], 1)[:, 0], axis=-1)
    rest_b = jnp.clip(target_b - before_b, 0.0, jnp.nextafter(cdf_bw[:, -1], 0.0))
    within_b = jnp.sum(cdf_bw <= rest_b[:, None], axis=-1)
    return (chunk_b * CHUNK + within_b).astype(jnp.int32)


def next_tokens(logits_bv: jax.Array, temperature_b: jax.Array, top_k_b: jax.Array,
                top_p_b: jax.Array, seed_b: jax.Array, step: jax.Array, width: int) -> jax.Array:
    """The next token of every row: argmax where temperature is 0, else a draw from
    softmax(logits / temperature) restricted by top-k and top-p. Filtering runs only
    in steps where some row filters; ``width`` 0 leaves it out of the program."""
    scaled_bv = logits_bv / jnp.where(temperature_b > 0, temperature_b, 1.0)[:, None]
    if width:
        filtering_b = (temperature_b > 0) & ((top_k_b > 0) | (top_p_b < 1.0))
        scaled_bv = jax.lax.cond(jnp.any(filtering_b),
                                 lambda: filter_logits(scaled_bv, top_k_b, top_p_b, width),
                                 lambda: scaled_bv)
    drawn_b = inverse_cdf(scaled_bv, row_uniforms(seed_b, step))
    return jnp.where(temperature_b > 0, drawn_b, jnp.argmax(logits_bv, axis=-1).astype(jnp.int32))


def token_and_top_logprobs(logits_xv: jax.Array, tokens_x: jax.Array, top_k: int):
    """Log-probabilities of ``tokens_x`` under ``logits_xv`` and the top-k
    (log-probabilities, ids), over any leading shape ``x``."""
    logprobs_xv = jax.nn.log_softmax(logits_xv, axis=-1)
    token_lp_x = jnp.take_along_axis(logprobs_xv, tokens_x[..., None], axis=-1)[..., 0]
    top_lp_xk, top_ids_xk = jax.lax.top_k(logprobs_xv, top_k)
    return token_lp_x, top_lp_xk, top_ids_xk
