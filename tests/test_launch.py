"""End-to-end runs of the launcher on tiny toy configs: files written, resume, bad input."""
import json
import os

import numpy as np
import pytest

from configs import toy_cond, toy_uncond
from ibmd_jax import run as runner
from tests import toyrun


def _tiny(cfg_module, rounds=6):
  # the suite's shared tiny toy (tests/toyrun.py: its programs compile once per session)
  return toyrun.config("pipeline", cfg_module or toy_cond, **{"distill.rounds": rounds,
                                                                "log_every": 2})


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.mark.parametrize("cfg_module,distill_teacher",
                         [# toy_cond: the same checks on the default suite's toy_cond pipeline run,
                          # tests/test_gcs_workdir.py's bucket run
                          pytest.param(toy_cond, "network", marks=pytest.mark.slow),
                          # the exact teacher's distillation is tested in test_toy_distillation
                          pytest.param(toy_cond, "exact", marks=pytest.mark.slow),
                          (toy_uncond, "network")])
def test_pipeline_writes_everything(tmp_path, cfg_module, distill_teacher):
  workdir = str(tmp_path / "run")
  c = _tiny(cfg_module)
  if cfg_module is toy_uncond:  # one hidden layer: the network is not what this checks (the exact
    c.model.depth = 1           # teacher's EDs are; every program of this config compiles anew)
  c.distill.teacher = distill_teacher  # the trained net (default) or the toy's closed form
  out = runner.run(c, workdir)
  for rel in ("config.json", "metrics.jsonl", "teacher/teacher.json", "eval/metrics.json",
              "eval/report.md"):
    assert os.path.exists(os.path.join(workdir, rel)), rel
  modes = {r["mode"] for r in _rows(workdir)}
  assert modes == {"teacher", "distill", "eval"}
  ev = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  assert set(ev["teacher"]) == {"1", "4"} == set(ev["exact_teacher"]) and set(ev["student"]) == {"1"}
  assert ev["exact_teacher"]["4"]["ed"] < ev["exact_teacher"]["1"]["ed"]
  assert int(out["state"].step) == 6


@pytest.mark.slow  # tests/test_sweep_signal.py checks the same through the launcher, killed with SIGKILL
def test_distillation_resumes_exactly(tmp_path):
  """Stopping after 4 rounds and restarting to 8 gives the losses of an uninterrupted 8-round run."""
  def tiny(rounds):  # the cosine schedules' lengths fixed, so that they do not follow `rounds`
    c = _tiny(None, rounds=rounds)
    c.distill.gen_optimizer.decay = c.distill.critic_optimizer.decay = "cosine"
    c.distill.gen_optimizer.decay_steps = 8
    c.distill.critic_optimizer.decay_steps = 8 * c.distill.critic_steps
    return c

  full = str(tmp_path / "full")
  runner.run(tiny(8), full)
  part = str(tmp_path / "part")
  runner.run(tiny(4), part)
  cfg = tiny(8)
  cfg.mode = "distill"  # teacher is reused from the workdir, distillation resumes at step 4
  runner.run(cfg, part)
  pick = lambda rows: {r["step"]: r["gen_loss"] for r in rows if r["mode"] == "distill"}
  a, b = pick(_rows(full)), pick(_rows(part))
  assert sorted(b) == [2, 4, 6, 8]
  np.testing.assert_allclose([b[6], b[8]], [a[6], a[8]], rtol=1e-6)


# An unknown config key or a value of the wrong type through the launcher (exit 2, one line naming
# the key and its closest key, no workdir created): tests/test_cli_errors.py ("unknown key", "bad
# type of another key").


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
  cfg = _tiny(None)
  cfg.mode = "distill"
  with pytest.raises(FileNotFoundError, match="mode=teacher"):
    runner.run(cfg, str(tmp_path / "nothing"))
  cfg.teacher.source = "checkpoint"
  cfg.teacher.checkpoint = str(tmp_path / "not_there")
  with pytest.raises(FileNotFoundError, match="not_there"):
    runner.run(cfg, str(tmp_path / "nothing2"))
