"""The jitted sampler against HF transformers' greedy generate (tiny random models)."""

import numpy as np
import pytest
import torch

from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.sampler import Sampler
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
    assert gen.lengths.tolist() == [first, first] and gen.finished_by_eos.all()
    short = Sampler(model, eos_ids=(511,)).generate([prompt], max_new_tokens=3)
    assert short.lengths.tolist() == [3] and not short.finished_by_eos[0]


def test_bad_requests_are_errors():
    sampler = Sampler(load("builtin:tiny").model, eos_ids=(258,))
    with pytest.raises(MarcoError, match="at least one token"):
        sampler.generate([[]], max_new_tokens=4)
    with pytest.raises(MarcoError, match="temperature"):
        sampler.generate([[1, 2]], max_new_tokens=4, temperature=-1.0)
    with pytest.raises(MarcoError, match="exceeds the largest bucket"):
        sampler.generate([[1] * 5000], max_new_tokens=4)
