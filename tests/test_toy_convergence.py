"""IBMD convergence on the toys with the shipped configs (slow: ~10-30 min each on 2 CPU cores).

The conditional bounds are issue 3's acceptance (docs/toy_results.md records the measured values for
these exact commands); they also fail on a collapsed or non-learning student (ED ~1.6 at one step,
mode TV ~0.75).
"""
import json
import os

import numpy as np
import pytest

from configs import toy_cond, toy_uncond
from ibmd_jax import run as runner

pytestmark = pytest.mark.slow


def _eval(workdir):
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("toy_cond"))
  c = toy_cond.get_config()
  runner.run(c, workdir)
  return workdir


def test_one_step_conditional_student(cond_run):
  ev = _eval(cond_run)
  s1 = ev["student"]["1"]
  teacher100 = ev["teacher"]["100"]["ed"]  # the distilled (trained) teacher
  exact1, exact100 = ev["exact_teacher"]["1"], ev["exact_teacher"]["100"]
  # Issue 3's acceptance: within 2x of the teacher at 100 NFE, and at least 10x closer to the
  # truth than the teacher at one step (the measured values: docs/toy_results.md).
  assert s1["ed"] <= 2 * teacher100
  assert s1["ed"] * 10 < exact1["ed"]
  assert exact100["ed"] < 0.01  # the closed-form teacher converges (sanity)
  # Mode coverage: every mode within 0.04 of its true frequency, per-condition TV within 0.03 of
  # the noise floor of two true sample sets (measured: docs/toy_results.md).
  np.testing.assert_allclose(s1["mode_freq"], ev["noise_floor"]["true_mode_freq"], atol=0.04)
  assert s1["mode_tv"] < ev["noise_floor"]["mode_tv"] + 0.03


def test_two_step_conditional_student(cond_run, tmp_path):
  c = toy_cond.get_config()
  c.teacher.checkpoint = os.path.join(cond_run, "teacher")  # the same trained teacher
  c.distill.n_steps = 2
  c.eval.teachers = ("exact",)
  runner.run(c, str(tmp_path))
  ev = _eval(str(tmp_path))
  s2 = ev["student"]["2"]
  # Same seed, so the same held-out set and teacher samples as the one-step run's evaluation.
  teacher100 = _eval(cond_run)["teacher"]["100"]["ed"]
  assert s2["ed"] <= 2 * teacher100  # measured: docs/toy_results.md
  assert s2["ed"] < ev["exact_teacher"]["2"]["ed"]  # beats its own NFE
  assert s2["ed"] * 10 < ev["exact_teacher"]["1"]["ed"]
  np.testing.assert_allclose(s2["mode_freq"], ev["noise_floor"]["true_mode_freq"], atol=0.04)


def test_unconditional_student_matches_the_marginal(tmp_path):
  c = toy_uncond.get_config()
  runner.run(c, str(tmp_path))
  ev = _eval(str(tmp_path))
  student, teacher100 = ev["student"]["1"]["ed"], ev["teacher"]["100"]["ed"]
  assert student <= 2 * max(teacher100, 0.0) + 0.01
  assert student * 10 < ev["teacher"]["1"]["ed"]
