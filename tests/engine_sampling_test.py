"""Token choice: the two-level CDF draw, top-k/top-p thresholds, per-row seeds."""

import jax.numpy as jnp
import numpy as np
import pytest

from marco_jax.engine import sampling


def reference_filter(scaled, top_k, top_p):
    """Sort-based top-k then top-p (nucleus: a token stays if the more probable
    tokens hold less than top_p), as in HF's warpers up to ties."""
    out = scaled.copy()
    if top_k:
        out[out < np.sort(out)[::-1][top_k - 1]] = -np.inf
    if top_p < 1:
        order = np.argsort(-out, kind="stable")
        probs = np.exp(out[order] - out[order[0]])
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        out[order[before >= top_p]] = -np.inf
    return out


@pytest.mark.parametrize("width", [8, 64])
def test_filter_equals_sorting_reference_including_wide_nuclei(width):
    rng = np.random.default_rng(width)
    vocab = 300
    # Row scales from peaked to flat: a flat row's nucleus is wider than ``width``
    # and must take the full-sort fallback.
    logits = rng.normal(size=(6, vocab)) * np.array([8, 4, 2, 1, 0.3, 0.05])[:, None]
    top_k = np.array([0, 5, 0, 3, 0, 8])
    top_p = np.array([0.9, 1.0, 0.5, 0.95, 0.99, 0.7])
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits, jnp.float32), jnp.asarray(top_k),
                                            jnp.asarray(top_p, jnp.float32), width))
    for i in range(len(logits)):
        expected = reference_filter(logits[i].astype(np.float32), top_k[i], top_p[i])
        np.testing.assert_array_equal(np.isfinite(got[i]), np.isfinite(expected), err_msg=str(i))


def test_wide_nuclei_of_real_scale_logits_need_no_sort():
    """The last tier bisects over the float bit patterns: logits of both signs,
    far apart, with masked (-inf) tokens and ties, as a real vocabulary has; more
    undecided rows than one group, between rows the first tier decides."""
    rng = np.random.default_rng(1)
    vocab, rows = 5000, 3 * sampling.GROUP + 3
    logits = rng.normal(size=(rows, vocab)) * rng.choice([0.2, 0.5, 1, 2], rows)[:, None]
    logits[:, :10] += 8.0  # a few large logits, the rest around 0: keys of both signs
    logits[:, 10:60] = -1e30
    logits[1, 100:400] = logits[1, 99]  # ties inside the nucleus
    logits[2, ::3] = -np.inf
    top_p = rng.choice([0.95, 0.99, 0.999, 0.9999], rows)
    top_p[::4] = 0.3  # decided by the first tier
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits, jnp.float32),
                                            jnp.zeros(rows, int),
                                            jnp.asarray(top_p, jnp.float32), 4))
    wide = 0
    for i in range(rows):
        row = logits[i].astype(np.float32)
        expected = reference_filter(row, 0, top_p[i])
        wide += np.isfinite(expected).sum() > 4 * sampling.WIDER  # reaches the bisection
        # Unordered float32 sums may place the boundary token differently from a
        # sorted cumulative sum: only where the mass before it is top_p within rounding.
        probs = np.exp(row.astype(np.float64) - row.max())
        probs /= probs.sum()
        for token in np.flatnonzero(np.isfinite(got[i]) != np.isfinite(expected)):
            before = probs[row > row[token]].sum()
            assert abs(before - top_p[i]) < 1e-5, (i, token, before)
    assert wide > 2 * sampling.GROUP


def test_inverse_cdf_follows_softmax_and_never_draws_masked_tokens():
    vocab = 300  # three chunks, the last one partial
    rng = np.random.default_rng(0)
    logits = rng.normal(size=vocab).astype(np.float32) * 2
    logits[::7] = -np.inf
    draws = 40_000
    uniforms = jnp.asarray(rng.random(draws), jnp.float32)
    tokens = np.asarray(sampling.inverse_cdf(jnp.broadcast_to(jnp.asarray(logits), (draws, vocab)),
                                             uniforms))
    assert np.isfinite(logits[tokens]).all()
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    counts = np.bincount(tokens, minlength=vocab)
    expected = probs * draws
    heavy = expected > 50
    chi2 = ((counts[heavy] - expected[heavy]) ** 2 / expected[heavy]).sum()
    assert chi2 < 2 * heavy.sum()  # mean of chi2(df) is df; 2*df is far in the tail
    # Exact inversion at chosen points: u just below a token's upper CDF edge picks it.
    cdf = np.cumsum(probs)
    for token in (0, 1, 150, 299):
        if probs[token] > 0:
            u = jnp.asarray([cdf[token] - probs[token] / 2], jnp.float32)
            assert int(sampling.inverse_cdf(jnp.asarray(logits)[None], u)[0]) == token


def test_next_tokens_greedy_and_seeded_per_row():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(4, 50)), jnp.float32)
    zeros, ones = jnp.zeros(4, jnp.int32), jnp.ones(4, jnp.float32)

    def draw(rows, temperature, seeds, step):
        return np.asarray(sampling.next_tokens(logits[rows], temperature[rows], zeros[rows],
                                               ones[rows], jnp.asarray(seeds), jnp.int32(step), 0))

    greedy = draw(slice(None), jnp.zeros(4), [0, 1, 2, 3], 0)
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), -1))
    hot = jnp.full(4, 1.0)
    batch = draw(slice(None), hot, [11, 12, 13, 14], 5)
    for i in range(4):  # a row's draw depends only on its seed and the step
        assert draw(slice(i, i + 1), hot, [11 + i], 5)[0] == batch[i]
    steps = [draw(slice(0, 1), hot, [11], s)[0] for s in range(20)]
    assert len(set(steps)) > 1


def test_row_uniforms_are_per_seed():
    u = np.asarray(sampling.row_uniforms(jnp.asarray([3, 3, 4]), jnp.int32(0)))
    assert u[0] == u[1] != u[2] and ((0 <= u) & (u < 1)).all()
    assert float(sampling.row_uniforms(jnp.asarray([3]), jnp.int32(1))[0]) != u[0]
