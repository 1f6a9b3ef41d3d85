"""Samplers with exact toy teachers converge to the true p(x0 | xT) as NFE grows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import sampler_convergence
from ibmd_jax import toy
from ibmd_jax.bridges import Bridge
from ibmd_jax.samplers import make_sampler

C, N = 8, 400  # held-out xT values, samples per xT


def _truth():
  g = toy.make_coupling("cond_modes")
  xT = g.sample_xT(jax.random.key(1), C)
  truth, _ = g.sample_x0_given_xT(jax.random.key(2), xT, N)
  floors = [float(toy.conditional_energy_distance(
      g.sample_x0_given_xT(jax.random.key(10 + i), xT, N)[0], truth)) for i in range(4)]
  return g, xT, truth, float(np.std(floors) + np.mean(np.abs(floors)))


@pytest.mark.parametrize("cfg,eta", [
    (dict(kind="vp", precond="edm"), 1.0), (dict(kind="vp", precond="edm"), 0.0),
    (dict(kind="i2sb", beta_max=1.0), 1.0), (dict(kind="ve", sigma_max=2.0, precond="edm"), 1.0),
    (dict(kind="brownian"), 0.5)])
def test_sampler_converges_with_nfe(cfg, eta):
  g, xT, truth, floor = _truth()
  ed = sampler_convergence.sampler_eds(g, xT, truth, cfg, eta, nfes=(1, 2, 4, 16, 100))
  # 1 NFE returns the posterior mean E[x0 | xT]: all modes collapsed (ED ≈ 1.6 on this coupling).
  assert ed[1] > 1.0, ed
  assert ed[4] < ed[2] < ed[1], ed
  # The Monte-Carlo noise floor (|ED| + sd between true sample sets of this size) is ≈ 0.003;
  # 100 NFE must be within 3 floors of it (tolerance 0.006 at least).
  assert ed[100] < max(3 * floor, 0.006), (ed, floor)


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
