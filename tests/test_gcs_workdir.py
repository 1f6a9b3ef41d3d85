"""A run whose workdir is gs://bucket/run (a mocked bucket: tests/mock_gcs.py) writes every file
into the bucket and resumes from it; an unusable workdir is refused before any work.

The bucket run is also the default suite's toy_cond pipeline run of tests/test_launch.py (its
checks of what a pipeline writes are here: one run, not two)."""
import json

import pytest

from ibmd_jax import checks
from ibmd_jax import run as runner
from ibmd_jax.errors import ConfigError
from tests.mock_gcs import mock_bucket
from tests.test_launch import _tiny


def test_a_gs_workdir_run_writes_into_the_bucket_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # where a gs:// path taken for a local one would land ('gs:/...')
  bucket = tmp_path / "bucket-root"
  c = _tiny(None, rounds=4)  # (constant learning rates: the programs of a 6-round run)
  with mock_bucket(str(bucket)):
    out = runner.run(c, "gs://b/run")  # pipeline: teacher, distillation to round 4, evaluation
    assert int(out["state"].step) == 4
    c2 = _tiny(None, rounds=6)
    c2.mode = "distill"  # the teacher from the bucket, distillation resumed at round 4
    out2 = runner.run(c2, "gs://b/run")
    assert int(out2["state"].step) == 6
  run = bucket / "b" / "run"
  for rel in ("config.json", "metrics.jsonl", "teacher/teacher.json", "teacher/params",
              "checkpoints", "eval/metrics.json", "eval/report.md"):
    assert (run / rel).exists(), rel
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 6
  rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if r["mode"] == "distill"]
  assert steps == [2, 4, 6]  # rounds 1-4 by the first run, 5-6 resumed: none twice
  assert json.loads((run / "config.json").read_text())["distill"]["rounds"] == 6
  assert not (run / ".lock").exists()  # released
  assert not (tmp_path / "gs:").exists()  # nothing scattered on the local disk
  # what a pipeline writes (tests/test_launch.py's test_pipeline_writes_everything, toy_cond)
  assert {r["mode"] for r in rows} == {"teacher", "distill", "eval"}
  ev = json.loads((run / "eval" / "metrics.json").read_text())
  assert set(ev["teacher"]) == {"1", "4"} == set(ev["exact_teacher"]) and set(ev["student"]) == {"1"}
  assert ev["exact_teacher"]["4"]["ed"] < ev["exact_teacher"]["1"]["ed"]


def test_an_unusable_gs_workdir_is_refused_before_any_work(tmp_path):
  # (without gcsfs the launcher says so in one line, exit 2, nothing written: the case "gs workdir
  # without gcsfs" of tests/test_cli_errors.py)
  with mock_bucket(str(tmp_path / "root"), deny=("theirs",)):
    with pytest.raises(Exception, match="gs://theirs/run is not writable"):
      checks.check_workdir("gs://theirs/run")
  with pytest.raises(ConfigError, match="ftp:// scheme is not supported"):
    checks.check_workdir("ftp://host/run")
