"""The path layer (ibmd_jax.paths): local paths and a mocked gs:// bucket."""
import json
import os

import pytest

from ibmd_jax import paths
from ibmd_jax.errors import ConfigError, RunError
from tests.mock_gcs import mock_bucket


def test_resolve_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("gs://b/run/") == "gs://b/run"
  assert paths.resolve("run") == str(tmp_path / "run")
  assert paths.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert paths.join("run", "x") == str(tmp_path / "run" / "x")
  assert paths.dirname("gs://b/run/.lock") == "gs://b/run"
  assert paths.scheme("gs://b") == "gs" and paths.scheme("/tmp/gs:/b") is None
  with pytest.raises(ConfigError, match="ftp:// scheme is not supported"):
    paths.resolve("ftp://host/run")


def test_gs_workdir_without_gcsfs_is_refused_before_any_work(monkeypatch):
  monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ConfigError, match=r"gs:// needs the gcsfs package .*\.\[gcs\]"):
    paths.check_workdir("gs://bucket/run")


def test_mocked_bucket_write_read_append_replace(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a path taken for a local one would land here, under 'gs:'
  with mock_bucket(str(tmp_path)):
    wd = paths.check_workdir("gs://bucket/run")
    assert wd == "gs://bucket/run"
    f = paths.join(wd, "metrics.jsonl")
    paths.append_text(f, '{"a": 1}\n')
    paths.append_text(f, '{"a": 2}\n')
    paths.write_text(paths.join(wd, "config.json"), json.dumps({"x": 1}))
    assert paths.exists(paths.join(wd, "config.json")) and paths.isdir(wd)
    assert paths.create_exclusive(paths.join(wd, ".lock"), "me")
    assert not paths.create_exclusive(paths.join(wd, ".lock"), "other")
    assert paths.age_s(paths.join(wd, ".lock")) < 60
    paths.remove(paths.join(wd, ".lock"))
    paths.remove(paths.join(wd, ".lock"))  # a missing file is not an error
  # every byte landed in the bucket (the temporary folder), none in a local 'gs:' folder
  assert (tmp_path / "bucket/run/metrics.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
  assert json.loads((tmp_path / "bucket/run/config.json").read_text()) == {"x": 1}
  assert not (tmp_path / "bucket/run/.lock").exists()
  assert not (tmp_path / "gs:").exists() and not [p for p in os.listdir(tmp_path / "bucket/run")
                                            if p.startswith(".write_test")]


def test_workdir_that_is_a_file_or_unwritable_is_refused(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(RunError, match="is a file, not a directory"):
    paths.check_workdir(str(tmp_path / "f"))
  with mock_bucket(str(tmp_path), deny=("theirs",)):
    with pytest.raises(RunError, match=r"gs://theirs/run is not writable \(Permission denied\)"
                       r".*gcloud storage ls gs://theirs/run"):
      paths.check_workdir("gs://theirs/run")


def test_staged_writes_land_in_the_bucket_and_local_ones_in_place(tmp_path):
  with mock_bucket(str(tmp_path / "gcs")):
    with paths.staged("gs://b/run/eval") as d:
      assert not d.startswith(str(tmp_path / "gcs"))  # a local folder, not the bucket
      os.makedirs(os.path.join(d, "grids"))
      open(os.path.join(d, "report.md"), "w").write("# r")
      open(os.path.join(d, "grids", "a.png"), "wb").write(b"\x89PNG")
    assert paths.local_dir("gs://b/run") is None
  assert (tmp_path / "gcs/b/run/eval/report.md").read_text() == "# r"
  assert (tmp_path / "gcs/b/run/eval/grids/a.png").read_bytes() == b"\x89PNG"
  with paths.staged(str(tmp_path / "local" / "eval")) as d:
    assert d == str(tmp_path / "local" / "eval") and os.path.isdir(d)
