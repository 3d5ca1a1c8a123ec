"""The engine's decode and prefill programs compiled by libtpu for a v5e topology on this
CPU host (marco_jax/engine/plan.py): the plan's fields, and the Pallas paged-attention
kernel in the compiled decode program wherever the head dim allows it.

libtpu comes with the ``tpu`` extra, which the README's test command installs; these
tests fail, never skip, where it is missing."""

import json
import pathlib
import subprocess
import sys

import pytest

from marco_jax import topology
from marco_jax.engine import plan
from marco_jax.engine.engine import EngineConfig
from marco_jax.engine.kv_pages import Placement
from marco_jax.model_config import Qwen2Config, preset

ROOT = pathlib.Path(__file__).resolve().parents[1]
# max_model_len 128 in blocks of 16: one table width (8 blocks), so few programs
CONFIG = EngineConfig(slots=4, max_model_len=128, prefill_shapes=((4, 32), (1, 64)))
# head dim 128: the shape the TPU kernel serves (the tiny preset's is 16)
KERNEL_SHAPE = Qwen2Config(vocab_size=512, hidden_size=256, intermediate_size=512,
                           num_layers=2, num_heads=4, num_kv_heads=2, head_dim=128,
                           tie_word_embeddings=True)


def bf16(cfg: Qwen2Config) -> Qwen2Config:
    return cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16")


@pytest.fixture(scope="module")
def v5e():
    return topology.tpu_devices("v5e:2x2")


@pytest.fixture(scope="module")
def tiny_plan(v5e):
    cfg = bf16(preset("tiny"))
    placement = Placement(plan.engine_mesh(cfg, v5e))
    return plan.plan_engine(cfg, CONFIG, placement, (1, 4), ("tiny", "v5e:2x2"))


def test_every_program_compiles_with_a_sane_plan(tiny_plan):
    assert tiny_plan.chip == "v5e" and tiny_plan.mesh == {"data": 2, "fsdp": 1, "tensor": 2}
    kinds = sorted((p.kind, p.rows, p.chunk) for p in tiny_plan.programs)
    assert kinds == [("decode", 1, 1), ("decode", 4, 1), ("decode x2", 1, 1),
                     ("decode x2", 4, 1), ("prefill", 1, 64), ("prefill", 4, 32)]
    assert {p.width for p in tiny_plan.programs} == {8}
    assert tiny_plan.num_blocks == 4 * 8 + 1
    for p in tiny_plan.programs:
        assert tiny_plan.weight_bytes + tiny_plan.kv_pool_bytes <= p.peak_bytes < 2**30
        assert p.flops > 0 and p.bytes_accessed > 0 and not p.kernel  # head dim 16
    assert 0 < tiny_plan.to_json()["peak_bytes"] < tiny_plan.hbm_limit_bytes


def test_decode_estimates_follow_from_the_counts(tiny_plan):
    one, four = tiny_plan.decode
    for e in (one, four):
        assert e.context == 8 * 16 and e.kernel_kv_bytes == 0
        assert e.step_flops > 0 and e.step_bytes > 0 and e.step_seconds > 0
        assert e.tokens_per_second == pytest.approx(e.slots / e.step_seconds)
        assert 0 < e.roofline_fraction <= 1
    assert four.must_read_bytes > one.must_read_bytes  # more live KV
    assert four.step_bytes > one.step_bytes


def test_the_kernel_is_in_the_decode_program_where_head_dim_allows(v5e):
    cfg = bf16(KERNEL_SHAPE)
    config = EngineConfig(slots=2, max_model_len=128, prefill_shapes=((1, 32),))
    placement = Placement(plan.engine_mesh(cfg, v5e))
    result = plan.plan_engine(cfg, config, placement, (2,), ("kernel", "v5e:2x2"))
    kernels = {p.kind: p.kernel for p in result.programs}
    assert kernels == {"decode": True, "decode x2": True, "prefill": False}
    (estimate,) = result.decode
    # the kernel is opaque to the cost analysis: its reads of the pool come by formula
    assert estimate.kernel_kv_bytes == pytest.approx(
        plan.live_kv_bytes(plan.abstract_pages(cfg, config, result.num_blocks, placement),
                           1, 128))
    assert 0 < estimate.roofline_fraction <= 1


def test_a_decode_step_reads_no_more_for_a_larger_pool(v5e):
    """The layers read the pool in place: a decode step's traffic is its weights and live
    KV, whatever the pool holds (a per-layer copy of the pool would grow with it). Both
    pools are too large for the compiler to stage whole in VMEM, which small ones are."""
    cfg = bf16(KERNEL_SHAPE)
    placement = Placement(plan.engine_mesh(cfg, v5e))
    steps = []
    for slots in (128, 2048):
        config = EngineConfig(slots=slots, max_model_len=128, prefill_shapes=((1, 32),))
        result = plan.plan_engine(cfg, config, placement, (2,), ("kernel", "v5e:2x2"))
        steps.append((result.kv_pool_bytes, result.decode[0].step_bytes))
    (small_pool, small_step), (large_pool, large_step) = steps
    assert large_pool >= 15 * small_pool > 10 * large_step
    assert large_step <= 1.05 * small_step


def test_table_widths_are_the_engines():
    assert plan.table_widths(EngineConfig(max_model_len=2048)) == [8, 16, 32, 64, 128]
    assert plan.table_widths(EngineConfig(max_model_len=100)) == [7]


def test_the_script_prints_a_saved_plan_as_a_table(tiny_plan, tmp_path):
    saved = tmp_path / "plan.json"
    saved.write_text(json.dumps(tiny_plan.to_json()))
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "plan_engine.py"), "--table",
                            str(saved)], capture_output=True, text=True, check=True).stdout
    rows = [line for line in table.splitlines() if line.startswith("| tiny ")]
    assert len(rows) == 2 and "v5e:2x2 (4)" in rows[0] and "data 2 x tensor 2" in rows[0]
