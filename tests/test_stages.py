"""Resumable stages: stop_after_s saves and exits with 75, teacher training resumes exactly.

A run on a time-limited machine (the GPU tool's 10-minute calls, Colab, preemptible hosts) is cut
into stages by re-running one command; each call must continue where the last one stopped and
produce the same numbers as an uninterrupted run.
"""
import json
import os

import pytest

from ibmd_jax import run as runner
from ibmd_jax import train
from ibmd_jax.errors import ConfigError
from tests import toyrun
from tests.test_image_tasks import load_config


def _tiny(mode, kind="image", **over):
  if kind == "toy":
    c = toyrun.config()  # the suite's shared tiny toy: its programs compile once per session
    c.log_every = 1
  else:
    c = load_config("bench64", "sr4,tiny")
    # one resolution level with its attention block: resuming is what is tested, not the network
    c.model.update(channel_mult=(1,), attention_resolutions=(1,), num_res_blocks=1)
  c.mode = mode
  c.teacher.steps = 3
  c.teacher.save_every = 2
  c.distill.rounds = 2
  c.checkpoint.every = 1000
  if kind == "image":
    c.eval.grid_nfes = (1,)
  for k, v in over.items():
    c[k] = v
  return c


def _rows(workdir, mode):
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r["mode"] == mode:
        out[r["step"]] = r  # a step re-run after a restart overwrites the earlier row
  return out


def _steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


# The toy runs in the default suite (the same loop, checkpoints and stop/resume code); the image
# run (slow: 190 s of the suite) adds the grain data position of an image task (checked at the data
# level in the default suite too: tests/test_data.py's worker-process resume test).
@pytest.mark.parametrize("kind", ["toy", pytest.param("image", marks=pytest.mark.slow)])
def test_stop_after_s_cuts_teacher_and_distillation_into_resumable_calls(tmp_path, capsys, kind):
  ref = str(tmp_path / "ref")
  runner.run(_tiny("teacher", kind), ref)
  runner.run(_tiny("distill", kind), ref)  # the uninterrupted distillation from that teacher

  run = str(tmp_path / "run")
  calls = 0
  for mode in ("teacher", "distill"):
    while True:  # what bench/bench64.py does: the same command until it stops returning 75
      calls += 1
      assert calls < 20
      try:
        runner.run(_tiny(mode, kind, stop_after_s=1e-6), run)  # every call: one step, then stop
        break
      except SystemExit as e:
        assert e.code == train.EXIT_RESUME
      if kind == "toy" and mode == "teacher" and calls == 2:
        # (was test_teacher_checkpoint_beyond_the_configured_steps_is_refused) a teacher checkpoint
        # beyond teacher.steps is refused in one line, and nothing saved is lost
        c = _tiny("teacher", kind)
        c.teacher.steps = 1  # the saved step 2 is beyond it
        with pytest.raises(ConfigError, match=r"holds step 2 but --config.teacher.steps=1: pass "
                                              r"teacher.steps >= 2"):
          runner.run(c, run)
        assert _steps(os.path.join(run, "teacher_checkpoints")) == [1, 2]
  out = capsys.readouterr().out
  # 3 teacher steps and 2 rounds, one per call (the last step of a stage finishes it).
  assert calls == 3 + 2, out
  assert out.count("[teacher] resumed from step") == 2 and out.count("[distill] resumed") == 1
  assert "[teacher] resumed from step 2" in out and "[distill] resumed from step 1" in out
  assert "[teacher] stop_after_s reached: saved step 1 in" in out
  assert "[distill] stop_after_s reached: saved step 1 in" in out
  assert os.path.exists(os.path.join(run, "teacher", "teacher.json"))
  assert _steps(os.path.join(run, "checkpoints")) == [1, 2]
  # stop saves + save_every, and the final state (a longer teacher.steps continues from it)
  assert _steps(os.path.join(run, "teacher_checkpoints")) == [1, 2, 3]
  assert sorted(_rows(run, "distill")) == [1, 2]

  # The teacher trained in three calls is the uninterrupted one: same loss at every step (data
  # position, optimiser, EMA and step restored), and so is the image distillation cut after its
  # first round: its second round sees the batches an uninterrupted run sees (the grain position
  # is an Orbax item of the checkpoint) from the same state.
  a, b = _rows(ref, "teacher"), _rows(run, "teacher")
  assert sorted(b) == [1, 2, 3]
  for step in (1, 2, 3):
    assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-7), step
    assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-5), step
  a, b = _rows(ref, "distill"), _rows(run, "distill")
  for step in (1, 2):
    for k in ("gen_loss", "critic_loss", "gen_grad_norm"):
      assert b[step][k] == pytest.approx(a[step][k], rel=1e-4, abs=1e-7), (step, k)
  if kind == "image":  # the grain iterator's position, an Orbax item of the checkpoint
    assert os.path.isdir(os.path.join(run, "checkpoints", "1", "data"))
