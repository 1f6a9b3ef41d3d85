"""Samplers with exact toy teachers converge to the true p(x0 | xT) as NFE grows (the conditional
convergence per bridge, through bench/sampler_convergence.py: tests/tools/test_sampler_convergence.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax import toy
from ibmd_jax.bridges import Bridge
from ibmd_jax.samplers import make_sampler


def test_unconditional_sampler_matches_data_marginal():
  g = toy.make_coupling("paired_blur")
  b = Bridge(kind="i2sb", beta_max=0.3)
  pred = toy.exact_predictor(g, b, conditional=False)
  x0, xT, _ = g.sample(jax.random.key(0), 3000)
  ref = g.sample(jax.random.key(1), 3000)[0]
  ed = {nfe: float(toy.energy_distance(make_sampler(pred, b, nfe)(None, xT, jax.random.key(nfe)), ref))
        for nfe in (1, 100)}
  floor = abs(float(toy.energy_distance(x0, ref)))
  assert ed[1] > 10 * max(floor, 1e-3), ed
  assert ed[100] < max(3 * floor, 0.01), (ed, floor)


def test_inpainting_mask_keeps_known_pixels():
  g = toy.make_coupling("cond_modes", dim=4)
  # (An exact teacher on an OT-ODE bridge would read x0 = xT back from x_T: use the stochastic one.)
  b = Bridge(kind="i2sb", beta_max=1.0)
  pred = toy.exact_predictor(g, b, conditional=True)
  xT = g.sample_xT(jax.random.key(0), 16)
  mask = jnp.broadcast_to(jnp.array([0.0, 1.0, 0.0, 1.0]), xT.shape)
  out = make_sampler(pred, b, 4)(None, xT, jax.random.key(1), mask=mask)
  np.testing.assert_array_equal(out[:, ::2], xT[:, ::2])
  assert float(jnp.abs(out[:, 1::2] - xT[:, 1::2]).mean()) > 0.1


def test_sampler_compiles_once():
  g = toy.make_coupling("cond_modes")
  b = Bridge(kind="vp", precond="edm")
  calls = []

  def pred(params, x_t, t, xT=None, z=None, label=None):
    calls.append(1)  # runs only while tracing
    return toy.exact_predictor(g, b, True)(params, x_t, t, xT)

  s = make_sampler(pred, b, 50)
  xT = g.sample_xT(jax.random.key(0), 32)
  for i in range(3):
    s(None, xT, jax.random.key(i)).block_until_ready()
  assert len(calls) == 1  # one trace of the scan body for 50 steps and 3 calls
