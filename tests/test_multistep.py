"""Multi-step generators: full_chain ≡ the teacher's sampler at initialisation, its gradient by
finite differences, and the dmd2 variant against DMD2's backward simulation on the toy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser, widen_like
from ibmd_jax.models.mlp import MLP
from ibmd_jax.samplers import sample

D, B, ZC = 3, 8, 2


def _teacher_and_generator(bridge, conditional=True):
  net = NetDenoiser(bridge, MLP(width=32, depth=2, time_scale=1 / 250), conditional=conditional)
  teacher = net.init(jax.random.key(0), jnp.zeros((2, D)))
  gen = widen_like(teacher, net.init(jax.random.key(2), jnp.zeros((2, D)), z_channels=ZC))
  return net, teacher, gen


@pytest.mark.parametrize("cfg,eta,n", [(dict(kind="i2sb"), 1.0, 4),
                                       (dict(kind="i2sb", ot_ode=True), 1.0, 2),
                                       (dict(kind="vp", precond="edm"), 1.0, 1),
                                       (dict(kind="vp", precond="edm"), 0.0, 4)])
def test_full_chain_at_init_is_the_teacher_sampler(cfg, eta, n):
  """Zero noise weights: the N-step full_chain generator IS the teacher's N-step sampler (same
  grid t_N > … > t_1, same posterior noise from the same key), so their outputs are equal."""
  bridge = Bridge(**cfg)
  net, teacher, gen = _teacher_and_generator(bridge)
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=ZC,
                     n_steps=n, multistep="full_chain", eta=eta)
  xT = jax.random.normal(jax.random.key(3), (B, D))
  key = jax.random.key(4)
  want = sample(net, teacher, bridge, xT, key, n, eta=eta, output="x0hat")
  assert float(jnp.abs(want - xT).mean()) > 1e-2  # the chain did something
  # The same arithmetic when the generator's parameters are the teacher's (no noise input): bit for
  # bit in 3 of these 4 configurations; the VP η = 0 chain differs by an ulp (not investigated).
  ib0 = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=0,
                      n_steps=n, multistep="full_chain", eta=eta)
  np.testing.assert_allclose(np.asarray(ib0.generate_for_training(teacher, xT, key)),
                             np.asarray(want), rtol=0, atol=1e-6)
  # With zero-weight noise channels the first Dense sums 2 more (zero) products: its float32
  # rounding may differ by an ulp (measured 1.2e-7), nothing more.
  got = ib.generate_for_training(gen, xT, key)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)



@pytest.mark.slow  # ~60 s on a loaded 2-core CPU (three compiles of a 2-step chain and its grad)
def test_full_chain_gradient_matches_finite_differences():
  """d/dθ of a scalar of the 2-step chain output (gradients through both generator calls and the
  posterior step between them) against central differences in float64-free float32: along a
  random direction, relative error ≤ 2e-2 at step 1e-2 (central differences are O(h²) accurate;
  float32 loss round-off / h is ≈ 1e-5)."""
  bridge = Bridge(kind="vp", precond="edm")
  net, teacher, gen = _teacher_and_generator(bridge)
  gen = jax.tree_util.tree_map(lambda g: g + 0.05 * jax.random.normal(jax.random.key(9), g.shape),
                               gen)  # away from init, so z weights carry gradient too
  ib = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=net, z_channels=ZC,
                     n_steps=2, multistep="full_chain")
  xT = jax.random.normal(jax.random.key(3), (B, D))
  w = jax.random.normal(jax.random.key(5), (B, D))
  f = jax.jit(lambda p: jnp.sum(w * jnp.sin(ib.generate_for_training(p, xT, jax.random.key(6)))))
  g = jax.jit(jax.grad(f))(gen)
  direction = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.key(7), x.shape), gen)
  h = 1e-2
  shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, gen, direction)
  fd = (f(shift(h)) - f(shift(-h))) / (2 * h)
  an = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g),
                                           jax.tree_util.tree_leaves(direction)))
  print(f"2-step chain: analytic {float(an):.5f}, finite difference {float(fd):.5f}")
  assert abs(float(an) - float(fd)) <= 2e-2 * abs(float(fd))
  # the gradient flows through the first call too: with the first step's x̂0 cut from the
  # gradient (a stop_gradient on the state after step 1), the check fails.
  cut = lambda p, x, t, xT=None, z=None, label=None, rng=None: net(
      p, jax.lax.stop_gradient(x), t, xT, z=z, label=label)
  ib_cut = ibmd_lib.IBMD(bridge=bridge, teacher=net, critic=net, generator=cut, z_channels=ZC,
                         n_steps=2, multistep="full_chain")
  f_cut = jax.jit(lambda p: jnp.sum(w * jnp.sin(ib_cut.generate_for_training(p, xT,
                                                                             jax.random.key(6)))))
  an_cut = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(jax.grad(f_cut)(gen)),
                                               jax.tree_util.tree_leaves(direction)))
  print(f"state gradient cut: analytic {float(an_cut):.5f}")
  assert abs(float(an_cut) - float(fd)) > 2e-2 * abs(float(fd))


def test_dmd2_runs_no_frozen_call_it_does_not_use():
  """dmd2 with n steps: a call that draws step k runs exactly k frozen generator calls plus the
  trained one (k + 1 in all). It used to run all n − 1 frozen calls for every sample (n calls
  whatever k), so the k = 0 draws here fail for that behaviour."""
  bridge = Bridge(kind="vp", precond="edm")
  n = 4
  calls = []

  def gen(params, x, t, xT=None, z=None, label=None, rng=None):
    jax.debug.callback(lambda: calls.append(1))
    return params["theta"] * x

  ib = ibmd_lib.IBMD(bridge=bridge, teacher=gen, critic=gen, generator=gen, n_steps=n,
                     multistep="dmd2", intermediate="posterior")
  run = jax.jit(ib.generate_for_training)
  xT = jax.random.normal(jax.random.key(0), (B, D))
  seen = {}
  for seed in range(16):
    key = jax.random.key(seed)
    k = int(jax.random.randint(jax.random.split(key, 4)[0], (), 0, n))
    calls.clear()
    jax.block_until_ready(run({"theta": jnp.asarray(0.9)}, xT, key))
    jax.effects_barrier()
    seen[k] = len(calls)
  assert seen == {k: k + 1 for k in range(n)}, seen
