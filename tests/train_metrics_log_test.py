"""The metrics log of a resumed run: what an earlier run logged after the checkpoint is
cut (JSONL lines, TensorBoard events purged), so that each step appears once."""

import json

from marco_jax.train import metrics as metrics_lib


def steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resumed_log_drops_the_steps_after_its_checkpoint(tmp_path, monkeypatch):
    writers = []
    monkeypatch.setattr(metrics_lib, "SummaryWriter", lambda where, **kw: writers.append(kw)
                        or type("Writer", (), {"add_scalar": lambda *a: None,
                                               "close": lambda self: None})())
    log = metrics_lib.MetricsLog(tmp_path, start=0)
    for step in range(1, 7):
        log.write(step, {"loss": 1.0 / step})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')  # torn by the kill
    log = metrics_lib.MetricsLog(tmp_path, start=4)
    assert steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4]
    log.write(5, {"loss": 0.0})
    log.close()
    assert steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert writers == [{"purge_step": 1}, {"purge_step": 5}]
    metrics_lib.MetricsLog(tmp_path, start=0).close()  # a new run in the directory
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
