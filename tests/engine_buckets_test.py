"""Decode calls over buckets of live slots, and the 1-step call that gives a new request
its first token (issue 35): the same tokens as one program over every slot with a fixed
step count (the engine before them, which ``ALL_SLOTS`` still gives)."""

import dataclasses

import jax
import numpy as np
import pytest

from marco_jax.engine.engine import Engine, EngineConfig, decode_buckets
from marco_jax.errors import MarcoError
from marco_jax.sharding import make_mesh
from model_test import random_tokens

SMALL = EngineConfig(slots=8, decode_steps=4, block_size=8, max_model_len=256, kv_cache_gb=0.01,
                     prefill_shapes=((4, 16), (1, 64)))
# Before issue 35: every call runs all 8 slots for decode_steps steps.
ALL_SLOTS = dataclasses.replace(SMALL, decode_buckets=(8,), first_token_step=False)


def staggered(engine: Engine, prompts, budgets, **settings) -> dict:
    """Requests arriving one step apart while others run; their completions by index."""
    ids, done = [], {}
    for i, (prompt, budget) in enumerate(zip(prompts, budgets)):
        ids.append(engine.submit(prompt, budget, seed=i, **settings))
        done.update((c.request_id, c) for c in engine.step())
    while engine.has_work:
        done.update((c.request_id, c) for c in engine.step())
    return {i: done[rid] for i, rid in enumerate(ids)}


def test_buckets_are_powers_of_two_up_to_the_slots():
    assert decode_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert decode_buckets(24) == [1, 2, 4, 8, 16, 24]
    assert decode_buckets(1) == [1]
    assert decode_buckets(8, shards=4) == [4, 8]  # every device holds rows
    with pytest.raises(MarcoError, match=r"decode_buckets \(1, 2\) must .* hold slots \(8\)"):
        EngineConfig(slots=8, decode_buckets=(1, 2))


@pytest.mark.parametrize("settings", [{}, dict(temperature=1.0, top_p=0.9, top_k=50)],
                         ids=["greedy", "sampled"])
def test_bucketed_calls_equal_every_slot_calls(tiny, settings):
    """The same tokens, and log-probabilities to float32 rounding: a CPU matmul's sum
    order depends on its row count, as a request's values already depended on its
    company through the table width (tests/engine_test.py: alone vs among 40)."""
    prompts = [random_tokens((3 + 11 * i % 40,), seed=i).tolist() for i in range(20)]
    budgets = [2 + (13 * i) % 37 for i in range(20)]
    bucketed = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    before = Engine(tiny.model, eos_ids=(258,), config=ALL_SLOTS)
    new, old = (staggered(e, prompts, budgets, **settings) for e in (bucketed, before))
    assert len(bucketed.stats.bucket_calls) > 2 and list(before.stats.bucket_calls) == [8]
    for i in range(20):
        assert new[i].tokens == old[i].tokens and new[i].finish_reason == old[i].finish_reason
        np.testing.assert_array_equal(new[i].top_ids, old[i].top_ids)
        for name in ("logprobs", "top_logprobs", "confidences"):
            np.testing.assert_allclose(getattr(new[i], name), getattr(old[i], name),
                                       rtol=0, atol=2e-6)


def test_a_lone_request_runs_in_a_one_row_program(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    [out] = engine.generate([random_tokens((9,), seed=1).tolist()], 13)
    assert len(out.tokens) == 13 and engine.stats.bucket_calls == {1: 4}  # 1 + 4 + 4 + 4
    assert engine.stats.utilisation == 1.0  # every row the device ran kept its token


def test_a_new_request_gets_its_first_token_from_a_one_step_call(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    count = engine.warmup()
    first = engine.submit(random_tokens((7,), seed=1).tolist(), 30)
    engine.step()
    assert len(engine.in_flight(first).tokens) == 1  # prefill + one step: the first token
    engine.step()
    assert len(engine.in_flight(first).tokens) == 1 + 4
    second = engine.submit(random_tokens((20,), seed=2).tolist(), 30)
    engine.step()  # the call the second joins is one step for both
    assert len(engine.in_flight(first).tokens) == 6 and len(engine.in_flight(second).tokens) == 1
    engine.step()
    assert len(engine.in_flight(first).tokens) == 10 and len(engine.in_flight(second).tokens) == 5
    assert engine.stats.decode_calls == 4 and engine.num_programs == count
    off = Engine(tiny.model, eos_ids=(258,),
                 config=dataclasses.replace(SMALL, first_token_step=False))
    rid = off.submit(random_tokens((7,), seed=1).tolist(), 30)
    off.step()
    assert len(off.in_flight(rid).tokens) == 4


def test_buckets_on_a_mesh_split_over_the_data_axis(tiny):
    prompts = [random_tokens((n,), seed=n).tolist() for n in (3, 18, 5, 12, 27)]
    budgets = [8, 20, 5, 12, 9]
    plain = staggered(Engine(tiny.model, (258,), ALL_SLOTS), prompts, budgets, temperature=1.0)
    engine = Engine(tiny.model, (258,), SMALL, mesh=make_mesh(data=4, fsdp=1, tensor=2))
    assert engine.buckets == [4, 8]
    sharded = staggered(engine, prompts, budgets, temperature=1.0)
    assert sorted(engine.stats.bucket_calls) == [4, 8]
    for i in range(len(prompts)):
        assert plain[i].tokens == sharded[i].tokens
        np.testing.assert_allclose(plain[i].top_logprobs, sharded[i].top_logprobs, atol=1e-5)


def test_warm_up_returns_once_its_runs_are_done(tiny):
    """Warm-up's program runs are dispatched asynchronously; if it returned before they
    finished, the first request's prefill would wait behind them (seconds on the demo
    model: its time to first token was 2x the target)."""
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    engine.warmup()
    assert all(page.is_ready() for page in jax.tree.leaves(engine.pages))
