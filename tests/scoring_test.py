"""Teacher-forced scoring against HF's log_softmax(logits).topk(k)."""

import numpy as np
import pytest
import torch

from marco_jax.errors import MarcoError
from marco_jax.loading import load
from marco_jax.scoring import bucket_length, score
from model_test import random_tokens


def test_scores_match_hf_top5(hf_checkpoint):
    hf_model, path = hf_checkpoint
    ids = random_tokens((21,), seed=11).tolist()
    scores = score(load(path).model, ids, top_k=5)
    with torch.no_grad():
        logprobs = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, :-1], -1)
    top_lp, top_ids = logprobs.topk(5)
    token_lp = logprobs[torch.arange(20), torch.tensor(ids[1:])]
    np.testing.assert_allclose(scores.logprobs, token_lp.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores.top_logprobs, top_lp.numpy(), atol=1e-4)
    np.testing.assert_array_equal(scores.top_ids, top_ids.numpy())
    assert scores.total == pytest.approx(float(token_lp.sum()), abs=1e-3)
    assert scores.perplexity == pytest.approx(float(torch.exp(-token_lp.mean())), rel=1e-4)


def test_bucket_lengths():
    assert bucket_length(2, 2048) == 16
    assert bucket_length(17, 2048) == 32
    assert bucket_length(1500, 2048) == 2048
    with pytest.raises(MarcoError, match="longer than"):
        bucket_length(3000, 2048)


def test_rejects_too_few_tokens_and_bad_top_k():
    model = load("builtin:tiny").model
    with pytest.raises(MarcoError, match="at least two"):
        score(model, [5])
    with pytest.raises(MarcoError, match="top-logprobs"):
        score(model, [5, 6], top_k=0)
