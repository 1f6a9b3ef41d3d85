"""A run whose workdir is gs://bucket/run (a mocked bucket: tests/mock_gcs.py) writes every file
into the bucket and resumes from it; an unusable workdir is refused before any work."""
import json
import os
import subprocess
import sys

import pytest

from ibmd_jax import checks
from ibmd_jax import run as runner
from ibmd_jax.errors import ConfigError
from tests.mock_gcs import mock_bucket
from tests.test_launch import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_an_unusable_gs_workdir_is_refused_before_any_work(tmp_path):
  # no gcsfs here: the launcher says so in one line, and nothing is written
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-m", "launch.main",
                      f"--config={os.path.join(REPO, 'configs', 'toy_cond.py')}",
                      "--workdir=gs://bucket/run"], cwd=str(tmp_path), env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  assert "gs:// needs the gcsfs package" in r.stderr and "Traceback" not in r.stderr
  assert not os.listdir(tmp_path)
  with mock_bucket(str(tmp_path / "root"), deny=("theirs",)):
    with pytest.raises(Exception, match="gs://theirs/run is not writable"):
      checks.check_workdir("gs://theirs/run")
  with pytest.raises(ConfigError, match="ftp:// scheme is not supported"):
    checks.check_workdir("ftp://host/run")
