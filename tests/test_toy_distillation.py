"""A short toy distillation must move the one-step student clearly away from its start (the
teacher network's one-step output, ED ≈ 1.6 to the true p(x0 | xT)) towards the truth, and the same
check must fail when the method is broken: the generator loss's sign flipped, its critic term
dropped, or the gradient through x_t stopped (the mutation runs are slow-marked; measured results
in docs/toy_results.md, "Mutation checks")."""
import json
import os

import jax
import pytest

from configs import toy_cond
from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax import run as runner

# The student must end below this fraction of the one-step teacher's energy distance. Measured
# (2026-12, this config): 0.07-0.10 for the real method; >= 0.5 for each mutation.
IMPROVEMENT = 0.3


def _config():
  c = toy_cond.get_config()
  c.model.width = 64
  c.teacher.steps, c.teacher.batch_size = 400, 256
  c.distill.rounds, c.distill.batch_size = 150, 256
  c.log_every = 50
  c.checkpoint.every = 10**6
  c.eval.teacher_nfes = (1,)
  c.eval.teachers = ("network",)
  c.eval.student_steps = (1,)
  c.eval.num_conditions, c.eval.samples_per_condition = 16, 200
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


def _no_xt_gradient(self, x0, xT, key):
  return _ORIGINAL_POINT(self, jax.lax.stop_gradient(x0), xT, key)


_ORIGINAL = ibmd_lib.IBMD.generator_loss
_ORIGINAL_POINT = ibmd_lib.IBMD._bridge_point


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flipped_sign", "no_critic_term", "no_xt_gradient"])
def test_the_check_fails_for_a_broken_method(tmp_path, monkeypatch, name):
  if name == "flipped_sign":
    monkeypatch.setattr(ibmd_lib.IBMD, "generator_loss", _flipped)
  elif name == "no_critic_term":
    monkeypatch.setattr(ibmd_lib.IBMD, "generator_loss", _no_critic)
  else:
    monkeypatch.setattr(ibmd_lib.IBMD, "_bridge_point", _no_xt_gradient)
  try:
    r = _distil(tmp_path / "run")
  except FloatingPointError:  # the broken method diverged: the check fails all the more
    return
  print(name, r)
  assert not improves(r), r
