"""The jitted sampler against HF transformers' greedy generate (tiny random models)."""

import numpy as np
import pytest
import torch

from marco_jax import stops
from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.model import init_model
from marco_jax.sampler import Sampler
from marco_jax.sharding import make_mesh
from model_test import random_tokens

EOS = 2


def hf_greedy(hf_model, prompt, new_tokens):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=None, pad_token_id=0, output_scores=True,
                                return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].numpy()
    logprobs = torch.log_softmax(torch.stack(out.scores)[:, 0], -1)
    return tokens, logprobs


def test_greedy_matches_hf_with_top5(hf_checkpoint):
    hf_model, path = hf_checkpoint
    sampler = Sampler(load(path).model, eos_ids=(511,))  # 511: keep going for the comparison
    prompt = random_tokens((9,), seed=1).tolist()
    expected, logprobs = hf_greedy(hf_model, prompt, 12)
    if 511 in expected:
        pytest.skip("random model emitted the stand-in EOS")
    gen = sampler.generate([prompt], max_new_tokens=12)
    np.testing.assert_array_equal(gen.tokens[0], expected)
    top_lp, top_ids = logprobs.topk(5)
    np.testing.assert_allclose(gen.top_logprobs[0], top_lp.numpy(), atol=1e-4)
    np.testing.assert_array_equal(gen.top_ids[0], top_ids.numpy())
    np.testing.assert_allclose(gen.logprobs[0], top_lp[:, 0].numpy(), atol=1e-4)
    confidence = np.exp(gen.logprobs[0]) / np.exp(gen.top_logprobs[0]).sum(-1)
    assert gen.confidence_sum[0] == pytest.approx(confidence.sum(), rel=1e-5)
    assert gen.lengths[0] == 12


def test_padded_batch_equals_single_rows_and_reuses_compilation(hf_checkpoint):
    _, path = hf_checkpoint
    sampler = Sampler(load(path).model, eos_ids=(511,))
    prompts = [random_tokens((n,), seed=n).tolist() for n in (3, 11, 7)]
    batch = sampler.generate(prompts, max_new_tokens=8)
    sampler.generate(prompts[:1], max_new_tokens=8)
    compiled = sampler.num_compilations  # both buckets (batch 4 and batch 1) now built
    for i, prompt in enumerate(prompts):
        single = sampler.generate([prompt], max_new_tokens=8)
        np.testing.assert_array_equal(single.tokens[0], batch.tokens[i])
        np.testing.assert_allclose(single.top_logprobs[0], batch.top_logprobs[i], atol=1e-4)
    sampler.generate(prompts[::-1], max_new_tokens=6)  # same buckets
    assert sampler.num_compilations == compiled


def test_eos_and_max_new_tokens_end_rows(hf_checkpoint):
    _, path = hf_checkpoint
    model = load(path).model
    prompt = random_tokens((5,), seed=4).tolist()
    free = Sampler(model, eos_ids=(511,)).generate([prompt], max_new_tokens=10)
    eos = int(free.tokens[0, 3])  # make the 4th generated token an EOS
    gen = Sampler(model, eos_ids=(eos,)).generate([prompt, prompt], max_new_tokens=10)
    first = int(np.argmax(free.tokens[0] == eos)) + 1
    assert gen.lengths.tolist() == [first, first] and gen.finish_reasons == ["eos", "eos"]
    short = Sampler(model, eos_ids=(511,)).generate([prompt], max_new_tokens=3)
    assert short.lengths.tolist() == [3] and short.finish_reasons == ["length"]


def test_bad_requests_are_errors():
    tiny = load("builtin:tiny")
    sampler = Sampler(tiny.model, eos_ids=(258,))
    with pytest.raises(MarcoError, match="prompt 0 is empty"):
        sampler.generate([[]], max_new_tokens=4)
    with pytest.raises(MarcoError, match="outside"):
        sampler.generate([[1, 600]], max_new_tokens=4)
    with pytest.raises(MarcoError, match="max_position_embeddings"):
        sampler.generate([[1] * 2040], max_new_tokens=16)
    for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=-2),
                dict(top_p=0.0), dict(top_p=1.5), dict(seed=-1), dict(seed=[1, 2, 3])):
        with pytest.raises(MarcoError, match=next(iter(bad))):
            sampler.generate([[1, 2], [3]], max_new_tokens=4, **bad)
    with pytest.raises(MarcoError, match="max_new_tokens"):
        sampler.generate([[1, 2]], max_new_tokens=0)
    with pytest.raises(MarcoError, match="batch size 65 exceeds the largest bucket"):
        sampler.generate([[1]] * 65, max_new_tokens=4)
    long_context = init_model(tiny.cfg.replace(max_position_embeddings=1 << 16))
    with pytest.raises(MarcoError, match="prompt length 5000 exceeds the largest bucket"):
        Sampler(long_context, eos_ids=(258,)).generate([[1] * 5000], max_new_tokens=4)


def test_row_seed_reproduces_its_sample_in_any_batch():
    sampler = Sampler(load("builtin:tiny").model, eos_ids=(258,))
    prompts = [random_tokens((n,), seed=n).tolist() for n in (4, 9, 6)]
    settings = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50)
    alone = sampler.generate(prompts[2:], seed=[7], **settings)
    mixed = sampler.generate(prompts, seed=[1, 2, 7], **settings)
    np.testing.assert_array_equal(alone.tokens[0], mixed.tokens[2])
    other = sampler.generate(prompts[2:], seed=[8], **settings)
    assert not np.array_equal(other.tokens[0], alone.tokens[0])


def test_stop_strings_end_rows_where_the_text_first_contains_them():
    model = load("builtin:tiny").model
    vocab = model.cfg.vocab_size
    pieces = [bytes([97 + i % 26]) * (1 + i % 3) for i in range(vocab)]  # "a", "bb", "ccc", ...
    free = Sampler(model, eos_ids=(vocab - 1,)).generate([[5, 6, 7]], max_new_tokens=16)
    tokens = free.row_tokens(0)
    stop = (pieces[tokens[4]][-1:] + pieces[tokens[5]]).decode()  # spans two tokens
    text, expected = b"", None
    for i, token in enumerate(tokens):
        text += pieces[token]
        if expected is None and stop.encode() in text:
            expected = i + 1
    table = stops.stop_table_from_bytes(pieces, [stop, "zzzzzzzz"])
    sampler = Sampler(model, eos_ids=(vocab - 1,), stop_table=table)
    gen = sampler.generate([[5, 6, 7], [5, 6, 7]], max_new_tokens=16)
    assert gen.lengths.tolist() == [expected, expected] and expected <= 6
    assert gen.finish_reasons == ["stop", "stop"]
    np.testing.assert_array_equal(gen.row_tokens(0), tokens[:expected])
    short = sampler.generate([[5, 6, 7]], max_new_tokens=expected - 1)
    assert short.finish_reasons == ["length"]


def test_sharded_sampler_matches_unsharded():
    model = load("builtin:tiny").model
    prompts = [random_tokens((n,), seed=n).tolist() for n in (3, 8, 5, 12, 7, 4, 9, 6)]
    settings = dict(max_new_tokens=8, temperature=[0.0, 1.0] * 4, top_p=0.95, seed=3)
    plain = Sampler(model, eos_ids=(258,)).generate(prompts, **settings)
    mesh = make_mesh(data=4, fsdp=1, tensor=2)
    sharded = Sampler(model, eos_ids=(258,), mesh=mesh).generate(prompts, **settings)
    np.testing.assert_array_equal(sharded.tokens, plain.tokens)
    np.testing.assert_allclose(sharded.top_logprobs, plain.top_logprobs, atol=1e-5)
    np.testing.assert_allclose(sharded.confidence_sum, plain.confidence_sum, rtol=1e-5)
