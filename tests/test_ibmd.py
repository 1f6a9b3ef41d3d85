"""IBMD invariants: gradient identity, initialisation, frozen parameters, multi-step variants."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax import steps
from ibmd_jax import toy
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser, widen_like
from ibmd_jax.models.mlp import MLP
from ibmd_jax.optim import make_optimizer

D, B = 3, 16


def _nets(bridge, conditional=True, z_channels=2):
  net = NetDenoiser(bridge, MLP(width=32, depth=2, time_scale=1 / 250), conditional=conditional)
  teacher = net.init(jax.random.key(0), jnp.zeros((2, D)))
  critic = net.init(jax.random.key(1), jnp.zeros((2, D)))  # a critic different from the teacher
  gen = widen_like(teacher, net.init(jax.random.key(2), jnp.zeros((2, D)), z_channels=z_channels))
  return net, teacher, critic, gen


class _FixedXt(ibmd_lib.IBMD):
  """x_t drawn from the bridge but held constant in the derivative (the identity's assumption)."""

  def _bridge_point(self, x0, xT, key):
    t, xt = super()._bridge_point(x0, xT, key)
    return t, jax.lax.stop_gradient(xt)


@pytest.mark.parametrize("cfg", [dict(kind="vp", precond="edm"), dict(kind="i2sb")])
def test_generator_gradient_is_fake_minus_real(cfg):
  """With x_t fixed, ∂L_θ/∂x0 = 2λ(t)(x̂0^φ − x̂0*), per element, averaged over B·D."""
  bridge = Bridge(**cfg)
  net, teacher, critic, _ = _nets(bridge)
  ident = lambda p, x, t, xT, z=None, label=None: jnp.broadcast_to(p["x0"], x.shape)
  ib = _FixedXt(bridge=bridge, teacher=net, critic=net, generator=ident)
  xT = jax.random.normal(jax.random.key(3), (B, D))
  x0 = jax.random.normal(jax.random.key(4), (B, D))
  key = jax.random.key(5)
  grad = jax.grad(lambda p: ib.generator_loss(p, critic, teacher, {"xT": xT}, key)[0])({"x0": x0})
  k_gen, k_pt = jax.random.split(key)
  t, xt = ib._bridge_point(x0, xT, k_pt)
  lam = bridge.loss_weight(t)[:, None]
  expected = 2 * lam * (net(critic, xt, t, xT) - net(teacher, xt, t, xT)) / (B * D)
  np.testing.assert_allclose(grad["x0"], expected, rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(expected).max()) > 1e-4  # a real, non-zero direction


def test_generator_and_critic_start_as_the_teacher():
  bridge = Bridge(kind="vp", precond="edm")
  net, teacher, _, gen = _nets(bridge)
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=2)
  xT = jax.random.normal(jax.random.key(3), (B, D))
  t_top = jnp.full((B,), bridge.time_grid(1)[0])
  one_step_teacher = net(teacher, xT, t_top, xT)
  for seed in range(3):  # any z: the noise weights are zero
    np.testing.assert_allclose(ib.generate(gen, xT, jax.random.key(seed)), one_step_teacher, atol=1e-6)
  state = steps.ibmd_state(gen, teacher, make_optimizer({}), make_optimizer({}))
  chex_equal = jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), state.critic, teacher)
  del chex_equal
  zero_rows = gen["in_proj"]["kernel"][2 * D:]
  assert zero_rows.shape == (2, 32) and not np.any(zero_rows)


def test_steps_freeze_what_they_must():
  # the setting of the unrolled-critic test below: its scanned round is this round's program (one
  # compile for both, ~8 CPU-s)
  bridge = Bridge(kind="vp", precond="edm")
  net, teacher, critic, gen = _nets(bridge)
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=2)
  tx = make_optimizer(dict(lr=1e-2))
  state = steps.ibmd_state(gen, critic, tx, tx)
  # (the round's critic steps as a loop: one body to compile; the unrolled CPU form is checked
  # against it below)
  critic_step, generator_step, round_step = steps.make_ibmd_steps(ib, tx, tx, critic_unroll=False)
  batch = {"xT": jax.random.normal(jax.random.key(0), (B, D))}
  s1, m1 = jax.jit(critic_step)(state, batch, jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, s1.gen, state.gen)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(s1.critic), jax.tree.leaves(state.critic)))
  s2, m2 = jax.jit(generator_step)(state, teacher, batch, jax.random.key(2))
  jax.tree.map(np.testing.assert_array_equal, s2.critic, state.critic)
  # (the teacher is an argument, not part of the state: a jitted step cannot change it, so there
  # is nothing to assert about it here; tests/test_method.py checks the gradient itself)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(s2.gen), jax.tree.leaves(state.gen)))
  assert int(s2.step) == 1 and int(s1.step) == 0
  batches = {"xT": jax.random.normal(jax.random.key(3), (3, B, D))}  # L = 2 critic steps
  s3, m3 = jax.jit(round_step)(state, teacher, batches, jax.random.key(4))
  assert int(s3.step) == 1
  assert set(m3) >= {"critic_loss", "gen_loss", "teacher_term", "critic_term", "objective_gap"}
  np.testing.assert_allclose(m3["gen_loss"], m3["teacher_term"] - m3["critic_term"], rtol=1e-5)


def test_unrolled_critic_steps_are_the_scanned_ones():
  """The CPU round unrolls its critic scan (steps.critic_unroll_for: XLA:CPU's fast convolutions
  only run outside loops); both forms give the same round: metrics and parameters."""
  assert steps.critic_unroll_for("cpu") and not steps.critic_unroll_for("gpu")
  assert not steps.critic_unroll_for("tpu")
  bridge = Bridge(kind="vp", precond="edm")
  net, teacher, critic, gen = _nets(bridge)
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=2)
  tx = make_optimizer(dict(lr=1e-2))
  state = steps.ibmd_state(gen, critic, tx, tx)
  batches = {"xT": jax.random.normal(jax.random.key(3), (3, B, D))}  # L = 2 critic steps
  out, loops = {}, {}
  for unroll in (False, True):
    _, _, round_step = steps.make_ibmd_steps(ib, tx, tx, critic_unroll=unroll)
    lowered = jax.jit(round_step).lower(state, teacher, batches, jax.random.key(4))  # traced once
    loops[unroll] = lowered.as_text().count("stablehlo.while")
    out[unroll] = lowered.compile()(state, teacher, batches, jax.random.key(4))
  assert loops[True] == loops[False] - 1, loops  # the critic loop, and only it, is gone
  (s0, m0), (s1, m1) = out[False], out[True]
  assert set(m0) == set(m1)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-7, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), s1, s0)
  # the critic moved in both steps: a round that skipped one would differ
  assert float(optax_norm(jax.tree.map(lambda a, b: a - b, s1.critic, critic))) > 1e-3


def test_critic_equal_to_teacher_gives_zero_generator_gradient():
  bridge = Bridge(kind="vp", precond="edm")
  net, teacher, _, gen = _nets(bridge)
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=2)
  batch = {"xT": jax.random.normal(jax.random.key(0), (B, D))}
  loss, grads = jax.value_and_grad(lambda g: ib.generator_loss(g, teacher, teacher, batch,
                                                               jax.random.key(1))[0])(gen)
  assert float(loss) == 0.0
  # The two terms cancel up to float rounding: compare with the gradient of one term alone.
  one_term = jax.grad(lambda g: ib.generator_loss(g, teacher, teacher, batch,
                                                  jax.random.key(1))[1]["teacher_term"])(gen)
  assert float(optax_norm(grads)) < 1e-5 * float(optax_norm(one_term)), (
      float(optax_norm(grads)), float(optax_norm(one_term)))


@pytest.mark.parametrize("multistep,intermediate", [("full_chain", "marginal"), ("dmd2", "marginal"),
                                                    ("dmd2", "posterior")])
def test_multistep_training_and_inference(multistep, intermediate):
  bridge = Bridge(kind="vp", precond="edm")
  net, teacher, critic, gen = _nets(bridge)
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=2,
                     n_steps=4, multistep=multistep, intermediate=intermediate)
  xT = jax.random.normal(jax.random.key(0), (B, D))
  x0 = ib.generate_for_training(gen, xT, jax.random.key(1))
  assert x0.shape == xT.shape and bool(jnp.all(jnp.isfinite(x0)))
  g = jax.grad(lambda p: jnp.sum(ib.generate_for_training(p, xT, jax.random.key(1)) ** 2))(gen)
  assert float(optax_norm(g)) > 0
  for n in (4, 2, 1):  # trained at 4 steps, sampled at fewer
    out = ib.generate(gen, xT, jax.random.key(2), n_steps=n)
    assert out.shape == xT.shape and bool(jnp.all(jnp.isfinite(out)))


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_inpainting_generator_keeps_known_pixels():
  bridge = Bridge(kind="i2sb", beta_max=1.0, ot_ode=True)
  net, teacher, critic, _ = _nets(bridge, conditional=False, z_channels=0)
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=0, n_steps=4)
  xT = jax.random.normal(jax.random.key(0), (B, D))
  mask = jnp.broadcast_to(jnp.array([1.0, 0.0, 1.0]), (B, D))
  for fn in (lambda: ib.generate(teacher, xT, jax.random.key(1), mask=mask),
             lambda: ib.generate_for_training(teacher, xT, jax.random.key(1), mask=mask)):
    out = fn()
    np.testing.assert_array_equal(out[:, 1], xT[:, 1])
  loss = ib.critic_loss(critic, teacher, {"xT": xT, "mask": mask}, jax.random.key(2))
  assert np.isfinite(float(loss))

  # The generator loss's two terms count the hole only: λ‖(x̂0 − x0)·mask‖², recomputed here from
  # the same draws (known pixels of x0 are xT's, where the networks' x̂0 differ from xT).
  @jax.jit
  def terms(key):
    _, aux = ib.generator_loss(teacher, critic, teacher, {"xT": xT, "mask": mask}, key)
    k_gen, k_pt = jax.random.split(key)
    x0 = ib.generate_for_training(teacher, xT, k_gen, mask=mask)
    t, xt = ib._bridge_point(x0, xT, k_pt)
    lam = ib.loss_bridge.loss_weight(t)
    hand = lambda p: jnp.mean(lam * jnp.mean(((net(p, xt, t, xT) - x0) * mask) ** 2, axis=-1))
    return aux, {"teacher_term": hand(teacher), "critic_term": hand(critic)}

  aux, want = terms(jax.random.key(3))
  for k in ("teacher_term", "critic_term"):
    np.testing.assert_allclose(aux[k], want[k], rtol=1e-5, err_msg=k)
    assert float(want[k]) > 0


def test_bad_variant_names_fail_clearly():
  bridge = Bridge()
  with pytest.raises(ValueError, match="multistep"):
    ibmd_lib.IBMD(bridge, None, None, None, multistep="dmd3")


def test_a_bfloat16_frozen_teacher_halves_its_bytes_and_keeps_the_loss():
  """distill.teacher_dtype=bfloat16: the teacher copy in the generator loss holds half the bytes;
  the loss moves by bf16 rounding only (and does move: the copy really is bf16)."""
  from ibmd_jax import api
  bridge = Bridge(kind="vp", precond="edm")
  net, teacher, critic, gen = _nets(bridge)
  low = api.frozen_teacher(teacher, "bfloat16")
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  assert nbytes(low) * 2 == nbytes(teacher)
  assert {x.dtype for x in jax.tree.leaves(low)} == {jnp.dtype(jnp.bfloat16)}
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), teacher)
  assert jax.tree.leaves(api.frozen_teacher(shapes, "bfloat16"))[0].dtype == jnp.bfloat16
  assert api.frozen_teacher({"n": jnp.arange(3)}, "bfloat16")["n"].dtype == jnp.int32
  with pytest.raises(ValueError, match="teacher_dtype"):
    api.frozen_teacher(teacher, "float8")
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=2)
  xT = jax.random.normal(jax.random.key(3), (B, D))
  loss = lambda tp: ib.generator_loss(gen, critic, tp, {"xT": xT}, jax.random.key(5))[1]
  full, half = loss(teacher)["teacher_term"], loss(low)["teacher_term"]
  assert full != half and abs(float(half - full)) < 2e-2 * float(full)


def test_critic_unroll_is_a_setting_read_with_the_config():
  """distill.critic_unroll: 'auto' (unrolled on CPU meshes), 'on', 'off'; anything else is a
  config error before any work."""
  from configs import toy_cond
  from ibmd_jax import options
  from ibmd_jax.errors import ConfigError
  c = toy_cond.get_config()
  assert options.distill_options(c).critic_unroll == "auto"
  c.distill.critic_unroll = "off"
  assert options.distill_options(c).critic_unroll == "off"
  c.distill.critic_unroll = "sideways"
  with pytest.raises(ConfigError, match="critic_unroll must be 'auto', 'on' or 'off'"):
    options.distill_options(c)
