"""Remote paths (``gs://bucket/...``) through the training path layer: data,
metrics, the DPO reference file and the checkpoint directory go through
``etils.epath``, here with every epath backend mocked onto a local directory
(pathlib would turn ``gs://b/run`` into the local ``gs:/b/run``)."""

import json

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from marco_jax.train import metrics as metrics_lib
from marco_jax.train import reference as reference_lib
from marco_jax.train import checkpoint as checkpoint_lib
from marco_jax.train.checkpoint import RunCheckpoints
from marco_jax.train.data import read_records

RECORD = {"instruction": "2+2?", "response": "<Thought>4</Thought><Output>4</Output>"}


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """``gs://`` paths stored under tmp_path (mock_epath maps them to relative paths)."""
    monkeypatch.chdir(tmp_path)
    with epath_testing.mock_epath():
        yield epath.Path("gs://bucket")


def test_data_and_reference_file_on_a_remote_path(gcs):
    data = gcs / "data" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(RECORD) + "\n")
    assert read_records(epath.Path(str(data))) == ([RECORD], 0)
    assert len(reference_lib.file_sha256(data)) == 64

    path = gcs / "run" / "reference_logps.jsonl"
    header = {"pairs": str(data)}
    reference_lib.write_reference(path, header, ["a"], np.asarray([[-1.5, -2.5]]))
    assert str(path).startswith("gs://bucket/") and path.exists()
    np.testing.assert_array_equal(reference_lib.read_reference(path, header, ["a"]),
                                  [[-1.5, -2.5]])


def test_metrics_on_a_remote_path_are_rewritten_whole(gcs, monkeypatch):
    written = []
    monkeypatch.setattr(metrics_lib, "SummaryWriter", lambda where: written.append(where) or
                        type("Writer", (), {"add_scalar": lambda *a: None,
                                            "close": lambda self: None})())
    log = metrics_lib.MetricsLog(gcs / "run")
    log.write(1, {"loss": 2.0})
    log.write(2, {"loss": 1.0})
    log.close()
    lines = (gcs / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [2.0, 1.0]
    assert written == ["gs://bucket/run/tensorboard"]
    again = metrics_lib.MetricsLog(gcs / "run")  # a resumed run keeps the earlier lines
    again.write(3, {"loss": 0.5})
    assert len((gcs / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_checkpoint_directory_reaches_orbax_remote(gcs, monkeypatch):
    """Orbax gets ``gs://...`` itself (Orbax's GCS layer, which needs credentials,
    is faked)."""
    given = []
    monkeypatch.setattr(checkpoint_lib.ocp, "CheckpointManager",
                        lambda directory, **kwargs: given.append(str(directory)))
    RunCheckpoints(gcs / "run" / "checkpoints", every=2, keep=1)
    assert given == ["gs://bucket/run/checkpoints"]
