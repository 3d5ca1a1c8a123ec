"""The continuous-batching engine against HF, against itself alone, and its pool bookkeeping."""

import argparse
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from marco_jax.engine import stops
from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.engine.options import model_dtype
from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.scoring import score
from marco_jax.sharding import make_mesh
from model_test import random_tokens

SMALL = EngineConfig(slots=8, decode_steps=4, block_size=8, max_model_len=256, kv_cache_gb=0.01,
                     prefill_shapes=((4, 16), (1, 64)))


def hf_greedy(hf_model, prompt, new_tokens):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=None, pad_token_id=0, output_scores=True,
                                return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].numpy()
    return tokens, torch.log_softmax(torch.stack(out.scores)[:, 0], -1)


def test_greedy_matches_hf_with_top5(hf_checkpoint):
    hf_model, path = hf_checkpoint
    engine = Engine(load(path).model, eos_ids=(511,), config=SMALL)  # 511: keep going
    prompt = random_tokens((21,), seed=1).tolist()  # spans blocks, ends mid-block
    expected, logprobs = hf_greedy(hf_model, prompt, 12)
    if 511 in expected:
        pytest.skip("random model emitted the stand-in EOS")
    [out] = engine.generate([prompt], max_new_tokens=12)
    np.testing.assert_array_equal(out.tokens, expected)
    top_lp, top_ids = logprobs.topk(5)
    np.testing.assert_allclose(out.top_logprobs, top_lp.numpy(), atol=1e-4)
    np.testing.assert_array_equal(out.top_ids, top_ids.numpy())
    np.testing.assert_allclose(out.logprobs, top_lp[:, 0].numpy(), atol=1e-4)
    assert out.confidence == pytest.approx(
        (np.exp(out.logprobs) / np.exp(out.top_logprobs).sum(-1)).mean(), rel=1e-5)
    assert out.finish_reason == "length"


def test_a_request_alone_equals_it_among_40_others(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    prompts = [random_tokens((3 + 7 * i % 50,), seed=i).tolist() for i in range(41)]
    budgets = [4 + (13 * i) % 40 for i in range(41)]
    settings = dict(temperature=1.0, top_p=0.9, top_k=50)
    crowd = engine.generate(prompts, budgets, seed=list(range(100, 141)), **settings)
    alone_engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    for i in (0, 17, 40):
        [alone] = alone_engine.generate([prompts[i]], budgets[i], seed=100 + i, **settings)
        assert alone.tokens == crowd[i].tokens
        np.testing.assert_allclose(alone.top_logprobs, crowd[i].top_logprobs, atol=1e-5)
    assert len({len(c.tokens) for c in crowd}) > 5  # the crowd really was mixed
    [other] = alone_engine.generate([prompts[17]], budgets[17], seed=5, **settings)
    assert other.tokens != crowd[17].tokens


def test_confidence_uses_the_untempered_distribution(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    prompt = random_tokens((6,), seed=2).tolist()
    [out] = engine.generate([prompt], 10, temperature=0.4, seed=1)
    scored = score(tiny.model, prompt + out.tokens)
    n = len(out.tokens)
    np.testing.assert_allclose(out.logprobs, scored.logprobs[-n:], atol=1e-4)
    np.testing.assert_allclose(out.top_logprobs, scored.top_logprobs[-n:], atol=1e-4)
    c = np.exp(scored.logprobs[-n:]) / np.exp(scored.top_logprobs[-n:]).sum(-1)
    np.testing.assert_allclose(out.confidences, c, rtol=1e-4)


def test_shared_prefix_blocks_are_freed_when_the_last_holder_finishes(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    shared = random_tokens((40,), seed=9).tolist()  # 5 full blocks of 8
    engine.generate([shared + [7]], 4)  # writes and names the shared blocks
    first = engine.blocks.cached_prefix(shared + [7], 5)
    assert len(first) == 5 and engine.blocks.held == 0
    short = engine.submit(shared + [3], 2)
    long = engine.submit(shared + [4, 5], 30)
    finished = []
    while engine.has_work:
        finished += [c.request_id for c in engine.step()]
        holders = sum(r is not None for r in engine.scheduler.running)
        assert (engine.blocks.refs[first] == holders).all()
    assert finished == [short, long]
    rng = np.random.default_rng(0)
    for _ in range(5):  # 200 requests of assorted lengths, some sharing prompts
        prompts = [shared[:rng.integers(1, 40)] + random_tokens((rng.integers(1, 30),),
                                                                 seed=int(rng.integers(1000))
                                                                 ).tolist() for _ in range(40)]
        engine.generate(prompts, rng.integers(1, 40, 40).tolist(), temperature=1.0, seed=3)
    assert engine.blocks.held == 0
    assert engine.blocks.available == engine.blocks.capacity
    assert engine.stats.cached_tokens > 0


def test_a_full_pool_makes_requests_wait_and_one_that_never_fits_is_refused(tiny):
    # 13 blocks of 8: room for two 40-token requests at a time, not eight.
    config = EngineConfig(**{**SMALL.__dict__, "kv_cache_gb": 14 * 8 * 2 * 2 * 2 * 16 * 4 / 2 ** 30})
    engine = Engine(tiny.model, eos_ids=(258,), config=config)
    assert engine.blocks.capacity == 13
    prompts = [random_tokens((10,), seed=i).tolist() for i in range(6)]
    ids = [engine.submit(p, 30) for p in prompts]
    waited, done = False, {}
    while engine.has_work:
        done.update((c.request_id, c) for c in engine.step())
        running = sum(r is not None for r in engine.scheduler.running)
        waited |= bool(engine.scheduler.waiting) and running < config.slots
    assert waited and sorted(done) == ids
    reference = Engine(tiny.model, eos_ids=(258,), config=SMALL).generate(prompts, 30)
    assert [done[i].tokens for i in ids] == [r.tokens for r in reference]
    with pytest.raises(MarcoError, match="^the request's 100 prompt tokens .* need 15 KV blocks, "
                                         "the pool has 13"):
        engine.submit(random_tokens((100,), seed=1).tolist(), 20)


def test_compiled_programs_are_fixed_after_warmup(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    progress = []  # (done, total) after each program, with the programs compiled by then
    count = engine.warmup(lambda done, total: progress.append((done, total, engine.num_programs)))
    # table widths 8, 16, 32 blocks: decode of 1, 2, 4 and 8 rows, prefill 4x16 and 1x64
    assert engine.buckets == [1, 2, 4, 8] and count == 3 * (4 + 2)
    assert progress == [(i, count, i) for i in range(1, count + 1)]
    for n, budget in ((1, 1), (60, 3), (17, 200), (200, 40)):
        engine.generate([random_tokens((n,), seed=n).tolist()] * 3, budget, temperature=0.7,
                        top_k=5, seed=1)
    # 1 to 8 requests at once, arriving while others run: every bucket, 1-step calls
    for rows in (1, 2, 3, 5, 8, 11):
        for i in range(rows):
            engine.submit(random_tokens((5 + 9 * i,), seed=i).tolist(), 3 + 7 * i)
            engine.step()
        while engine.has_work:
            engine.step()
    assert sorted(engine.stats.bucket_calls) == [1, 2, 4, 8]
    assert engine.num_programs == count


def test_bad_requests_are_errors(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    # Messages name the setting, not the engine's internal (0-based) request id.
    with pytest.raises(MarcoError, match="^the prompt is empty"):
        engine.submit([], 4)
    with pytest.raises(MarcoError, match=r"^prompt 2 of 3: the prompt is empty"):
        engine.generate([[1], [], [2]], 4)  # a prompt counted from 1, as input lines are
    assert engine.cancel(0)  # prompt 1 went in before prompt 2 was refused
    with pytest.raises(MarcoError, match="outside"):
        engine.submit([1, 600], 4)
    with pytest.raises(MarcoError, match="exceed max_model_len 256"):
        engine.submit([1] * 250, 16)
    for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=-2),
                dict(top_k=300), dict(top_p=0.0), dict(top_p=1.5), dict(seed=-1)):
        with pytest.raises(MarcoError, match=next(iter(bad))):
            engine.submit([1, 2], 4, **bad)
    with pytest.raises(MarcoError, match="max_new_tokens"):
        engine.submit([1, 2], 0)
    with pytest.raises(MarcoError, match="seed must be one value or one per prompt"):
        engine.generate([[1], [2]], 4, seed=[1, 2, 3])
    with pytest.raises(MarcoError, match="max_position_embeddings"):
        Engine(tiny.model, (258,), EngineConfig(max_model_len=4096, kv_cache_gb=0.01))
    with pytest.raises(MarcoError, match="slots must be >= 1"):
        EngineConfig(slots=0)
    assert not engine.has_work


def test_eos_and_stop_strings_end_requests(tiny):
    model = tiny.model
    vocab = model.cfg.vocab_size
    pieces = [bytes([97 + i % 26]) * (1 + i % 3) for i in range(vocab)]  # "a", "bb", "ccc", ...
    [free] = Engine(model, (vocab - 1,), SMALL).generate([[5, 6, 7]], 16)
    tokens = free.tokens
    stop = (pieces[tokens[4]][-1:] + pieces[tokens[5]]).decode()  # spans two tokens
    text, expected = b"", None
    for i, token in enumerate(tokens):
        text += pieces[token]
        if expected is None and stop.encode() in text:
            expected = i + 1
    table = stops.stop_table_from_bytes(pieces, [stop, "zzzzzzzz"])
    engine = Engine(model, (vocab - 1,), SMALL, stop_table=table)
    outs = engine.generate([[5, 6, 7], [5, 6, 7]], 16)
    assert [len(o.tokens) for o in outs] == [expected, expected] and expected <= 6
    assert [o.finish_reason for o in outs] == ["stop", "stop"]
    assert outs[0].tokens == tokens[:expected]
    eos = tokens[3]
    first = tokens.index(eos) + 1
    [ended] = Engine(model, (eos,), SMALL).generate([[5, 6, 7]], 16)
    assert len(ended.tokens) == first and ended.finish_reason == "eos"


def test_a_request_stops_only_on_the_strings_it_names(tiny):
    model = tiny.model
    vocab = model.cfg.vocab_size
    pieces = [bytes([97 + i % 26]) * (1 + i % 3) for i in range(vocab)]
    [free] = Engine(model, (vocab - 1,), SMALL).generate([[5, 6, 7]], 16)
    stop = pieces[free.tokens[2]].decode()
    table = stops.stop_table_from_bytes(pieces, ["zzzzzzzz", stop])
    engine = Engine(model, (vocab - 1,), SMALL, stop_table=table)
    ids = [engine.submit([5, 6, 7], 16, stops=names) for names in (None, [stop], [], ["zzzzzzzz"])]
    done = {}
    while engine.has_work:
        done.update((c.request_id, c) for c in engine.step())
    ended = [(done[i].finish_reason, len(done[i].tokens)) for i in ids]
    first = next(i for i, t in enumerate(free.tokens) if stop.encode() in pieces[t]) + 1
    assert ended == [("stop", first), ("stop", first), ("length", 16), ("length", 16)]
    with pytest.raises(MarcoError, match=r"stop strings \['nope'\] are not in the engine's"):
        engine.submit([5], 4, stops=["nope"])


def test_cancel_frees_the_slot_and_blocks_and_leaves_the_others_alone(tiny):
    engine = Engine(tiny.model, eos_ids=(258,), config=SMALL)  # 8 slots
    prompts = [random_tokens((5 + i,), seed=i).tolist() for i in range(10)]
    ids = [engine.submit(p, 40, temperature=1.0, seed=i) for i, p in enumerate(prompts)]
    engine.step()  # 8 running, 2 waiting
    running, waiting = ids[3], ids[9]
    so_far = list(engine.in_flight(running).tokens)
    assert so_far and engine.in_flight(waiting).tokens == []
    assert engine.cancel(running) and engine.cancel(waiting)
    assert engine.in_flight(running) is None and not engine.cancel(running)
    done = {}
    while engine.has_work:
        done.update((c.request_id, c) for c in engine.step())
    assert sorted(done) == [i for i in ids if i not in (running, waiting)]
    assert engine.blocks.held == 0 and engine.blocks.available == engine.blocks.capacity
    alone = Engine(tiny.model, eos_ids=(258,), config=SMALL)
    [eight] = alone.generate([prompts[8]], 40, temperature=1.0, seed=8)  # took the freed slot
    assert done[ids[8]].tokens == eight.tokens


def test_sharded_engine_matches_one_device(tiny):
    prompts = [random_tokens((n,), seed=n).tolist() for n in (3, 18, 5, 12, 27, 4, 9, 6, 30)]
    settings = dict(max_new_tokens=[8, 20, 5, 12] * 2 + [9], temperature=[0.0, 1.0] * 4 + [1.0],
                    top_p=0.95, seed=3)
    plain = Engine(tiny.model, (258,), SMALL).generate(prompts, **settings)
    mesh = make_mesh(data=4, fsdp=1, tensor=2)
    engine = Engine(tiny.model, (258,), SMALL, mesh=mesh)
    sharded = engine.generate(prompts, **settings)
    assert len(engine.pages.k_kpzh.sharding.device_set) == 8
    for a, b in zip(plain, sharded):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.top_logprobs, b.top_logprobs, atol=1e-5)


def test_the_kv_pool_has_a_dtype_of_its_own(tiny):
    """A float32 model over a bfloat16 pool (what an accelerator's default reads):
    half the bytes a block holds, and greedy decoding still matches the float32 pool
    on this short prompt; an unknown dtype is refused by name."""
    config = dataclasses.replace(SMALL, kv_dtype="bfloat16", kv_cache_gb=0.001)
    half = Engine(tiny.model, eos_ids=(258,), config=config)
    full = Engine(tiny.model, eos_ids=(258,), config=dataclasses.replace(config,
                                                                        kv_dtype="auto"))
    assert half.pages.k_kpzh.dtype == jnp.bfloat16 and full.pages.k_kpzh.dtype == jnp.float32
    assert half.blocks.capacity > full.blocks.capacity  # the same GiB holds twice the blocks
    prompt = random_tokens((12,), seed=3).tolist()
    [a], [b] = half.generate([prompt], 6), full.generate([prompt], 6)
    assert a.tokens == b.tokens
    with pytest.raises(MarcoError, match="kv_dtype must be one of auto, float32, bfloat16"):
        EngineConfig(kv_dtype="fp8")


def test_auto_dtype_is_float32_on_cpu():
    assert model_dtype(argparse.Namespace(dtype="auto")) == "float32"
    assert model_dtype(argparse.Namespace(dtype="bfloat16")) == "bfloat16"
