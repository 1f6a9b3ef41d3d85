"""A short toy distillation must move the one-step student clearly away from its start (the
teacher network's one-step output, ED ≈ 1.6 to the true p(x0 | xT)) towards the truth, and the same
check must fail when the method is broken: the generator loss's sign flipped or its critic term
dropped (the mutation runs are slow-marked). Stopping the gradient through x_t does NOT fail it
here (the direct x0 path, 2λ(x̂0^φ − x̂0*), alone moves this toy student to the truth); that
mutation is caught by tests/test_method.py's finite-difference gradient test instead. The measured
distances of the method and of each mutation: docs/toy_results.md, "Mutation checks"."""
import json
import os

import pytest

from configs import toy_cond
from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax import run as runner

# The student must end below this fraction of the one-step teacher's energy distance (the method
# ends far below it, the mutations far above: docs/toy_results.md, "Mutation checks").
IMPROVEMENT = 0.3


def _config():
  c = toy_cond.get_config()
  c.model.width = 64
  c.teacher.steps, c.teacher.batch_size = 600, 256
  # x̂0* is the closed form: the target is the truth itself, so the student's distance measures
  # the method, not an undertrained teacher. Generator and critic start from the trained network.
  c.distill.teacher = "exact"
  c.distill.rounds, c.distill.batch_size = 300, 256
  c.log_every = 50
  c.checkpoint.every = 10**6
  c.eval.teacher_nfes = (1,)
  c.eval.teachers = ("network",)
  c.eval.student_steps = (1,)
  c.eval.num_conditions, c.eval.samples_per_condition = 16, 200
  c.mesh.data = 1  # one device: the suite's 8 fake CPU devices double a small run's time
  return c


def _distil(workdir) -> dict:
  runner.run(_config(), str(workdir))
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    ev = json.load(f)
  return {"student": ev["student"]["1"]["ed"], "start": ev["teacher"]["1"]["ed"]}


def improves(r: dict) -> bool:
  return r["student"] < IMPROVEMENT * r["start"]


def test_short_toy_distillation_improves_the_one_step_student(tmp_path):
  r = _distil(tmp_path / "run")
  assert r["start"] > 1.0, r  # the one-step teacher is far from the truth
  assert improves(r), r


def _flipped(self, gen_params, critic_params, teacher_params, batch, key):
  loss, aux = _ORIGINAL(self, gen_params, critic_params, teacher_params, batch, key)
  return -loss, aux


def _no_critic(self, gen_params, critic_params, teacher_params, batch, key):
  _, aux = _ORIGINAL(self, gen_params, critic_params, teacher_params, batch, key)
  return aux["teacher_term"], aux


_ORIGINAL = ibmd_lib.IBMD.generator_loss


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flipped_sign", "no_critic_term"])
def test_the_check_fails_for_a_broken_method(tmp_path, monkeypatch, name):
  monkeypatch.setattr(ibmd_lib.IBMD, "generator_loss",
                      _flipped if name == "flipped_sign" else _no_critic)
  try:
    r = _distil(tmp_path / "run")
  except FloatingPointError:  # the broken method diverged: the check fails all the more
    return
  print(name, r)
  assert not improves(r), r
