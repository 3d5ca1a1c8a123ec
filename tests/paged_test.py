"""The paged prefix cache gives what a full prefill gives, and stores blocks for reuse."""

import numpy as np

from marco_jax.loading import load
from marco_jax.paged import KVPool, PagedRow, generate_paged
from marco_jax.sampler import Sampler
from model_test import random_tokens


def test_paged_continuation_equals_full_prefill():
    loaded = load("builtin:tiny")
    sampler = Sampler(loaded.model, eos_ids=(511,))
    pool = KVPool(sampler, num_blocks=32, block=8)
    prompts = [random_tokens((n,), seed=n).tolist() for n in (19, 12)]

    # 1. Uncached roots: the whole prompt is the suffix; store it and the first 10 new tokens.
    roots = [pool.alloc(len(p)) for p in prompts]
    actions = [pool.alloc(10) for _ in prompts]
    rows = [PagedRow([], [], p, len(p), r, a) for p, r, a in zip(prompts, roots, actions)]
    first = generate_paged(sampler, pool, rows, [14, 14])
    plain = sampler.generate(prompts, 14)
    np.testing.assert_array_equal(first.tokens, plain.tokens)
    np.testing.assert_allclose(first.top_logprobs, plain.top_logprobs, atol=1e-5)

    # 2. Continue each row after its 10-token action, reading both nodes from blocks;
    # only the action's last block is prefilled again.
    rows = []
    for p, r, a, i in zip(prompts, roots, actions, range(2)):
        action = first.row_tokens(i)[:10]
        fills = [min(8, len(p) - 8 * j) for j in range(len(r))]
        rows.append(PagedRow(r + a[:-1], fills + [8], action[8:], len(p) + 10, [a[-1]], []))
    second = generate_paged(sampler, pool, rows, [6, 6], temperature=1.0, seed=[3, 4])
    full = sampler.generate([p + first.row_tokens(i)[:10] for i, p in enumerate(prompts)], 6,
                            temperature=1.0, seed=[3, 4])
    np.testing.assert_array_equal(second.tokens, full.tokens)
    np.testing.assert_allclose(second.logprobs, full.logprobs, atol=1e-5)
    assert second.timing.prompt_tokens == 4  # two tokens per row prefilled, not 31 and 22
