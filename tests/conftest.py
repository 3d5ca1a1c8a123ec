"""Shared fixtures: tiny random HF Qwen2 checkpoints built with torch in the test.

The simulated 8-device CPU mesh must be requested before JAX starts.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib
import shutil

import pytest

TINY_HF_CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, rope_theta=10_000.0, rms_norm_eps=1e-6)


def build_hf_model(tied: bool, seed: int = 0):
    """A tiny Qwen2ForCausalLM with every weight random (biases and norms too)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(**TINY_HF_CONFIG, tie_word_embeddings=tied, eos_token_id=2)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    return model


def save_hf(model, directory: pathlib.Path) -> pathlib.Path:
    from marco_jax.tokenizer import builtin_tokenizer

    model.save_pretrained(directory)
    builtin_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session", params=[True, False], ids=["tied", "untied"])
def hf_checkpoint(request, tmp_path_factory):
    """(torch model, checkpoint dir) for tied and untied heads."""
    model = build_hf_model(tied=request.param)
    return model, save_hf(model, tmp_path_factory.mktemp("hf"))


BROWSER_OPT_OUT = "MARCO_SKIP_BROWSER_TESTS"


def missing_browser() -> str | None:
    import importlib.util

    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return ("chromium and chromedriver are not on PATH "
                "(apt-get install chromium chromium-driver; .ci/run installs them)")
    return None


@pytest.fixture(scope="module")
def tiny():
    """The random tiny model (``builtin:tiny``), built once per test module."""
    from marco_jax.loading import load

    return load("builtin:tiny")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the page tests); missing, it fails them, not skips."""
    why = missing_browser()
    if why:
        if os.environ.get(BROWSER_OPT_OUT) == "1":
            pytest.skip(f"{why}; {BROWSER_OPT_OUT}=1")
        pytest.fail(f"{why}; set {BROWSER_OPT_OUT}=1 to skip the browser tests")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()
