"""bench/sampler_convergence.py: every sampler with an exact toy teacher converges to the true
p(x0 | xT) as NFE grows (moved from tests/test_samplers.py with the bench script it runs)."""
import jax
import numpy as np
import pytest

from bench import sampler_convergence
from ibmd_jax import toy

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
