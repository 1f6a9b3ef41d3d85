"""Closed-form checks of the Gaussian bridges, posteriors, preconditioning and schedules."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibmd_jax.bridges import Bridge, i2sb_tables, space_indices

CONTINUOUS = [dict(kind="vp"), dict(kind="ve", sigma_max=2.0), dict(kind="brownian", brownian_sigma=1.5)]
ALL = CONTINUOUS + [dict(kind="i2sb", beta_max=0.3), dict(kind="i2sb", beta_max=1.0)]


def _t(b, *vals):
  return jnp.asarray(vals, jnp.float32)


@pytest.mark.parametrize("cfg", CONTINUOUS)
def test_continuous_endpoints(cfg):
  b = Bridge(**cfg)
  a, bb, c = b.coeffs(_t(b, 0.0, b.T))
  np.testing.assert_allclose(a, [0.0, 1.0], atol=1e-6)  # t = 0 gives x0, t = T gives xT
  np.testing.assert_allclose(bb, [1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(c, [0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("beta_max", [0.3, 1.0])
def test_i2sb_endpoints_and_schedule_closed_form(beta_max):
  b = Bridge(kind="i2sb", beta_max=beta_max)
  tab = i2sb_tables(1000, beta_max)
  # betas = linspace(sqrt(1e-4), sqrt(beta_max/1000), 1000)², first half mirrored: the total
  # variance is twice a sum of squares of an arithmetic progression.
  s0, s1, m = 1e-2, math.sqrt(beta_max / 1000), 500
  d = (s1 - s0) / 999
  half = m * s0**2 + s0 * d * m * (m - 1) + d**2 * (m - 1) * m * (2 * m - 1) / 6
  np.testing.assert_allclose(tab["std_fwd"][-1] ** 2, 2 * half, rtol=1e-12)
  np.testing.assert_allclose(tab["std_fwd"][499] ** 2, half, rtol=1e-12)
  np.testing.assert_allclose(tab["betas"][0], 1e-4, rtol=1e-12)
  np.testing.assert_allclose(tab["betas"], tab["betas"][::-1], rtol=1e-12)  # symmetric
  np.testing.assert_allclose(tab["std_bwd"], tab["std_fwd"][::-1], rtol=1e-12)
  np.testing.assert_allclose(tab["mu_x0"] + tab["mu_x1"], 1.0, rtol=1e-12)
  np.testing.assert_allclose(tab["noise_levels"][[0, 999]], [0.1, 1000.0], rtol=1e-12)
  # endpoints: x_0 ≈ x0 and x_999 ≈ xT up to one β step of the discretisation
  a, bb, c = b.coeffs(_t(b, 0, 999))
  eps_end = 1e-4 / (2 * half + 1e-4)
  np.testing.assert_allclose(a, [eps_end, 1 - eps_end], rtol=1e-4)
  np.testing.assert_allclose(c, [math.sqrt(1e-4 * 2 * half / (2 * half + 1e-4))] * 2, rtol=1e-4)
  a, bb, c = Bridge(kind="i2sb", ot_ode=True).coeffs(_t(b, 10, 500))
  np.testing.assert_array_equal(c, [0.0, 0.0])


def test_space_indices_match_i2sb():
  assert space_indices(1000, 2) == [0, 999]
  assert space_indices(1000, 5) == [0, 250, 500, 749, 999]
  assert Bridge(kind="i2sb").time_grid(4).tolist() == [999, 749, 500, 250, 0]


def test_vp_prior_matches_its_sde():
  """σ_t² and α_t of the VP prior satisfy g²(t) = dσ²/dt − 2 (d log α/dt) σ² = β_min + β_d t."""
  b = Bridge(kind="vp")
  ts = jnp.linspace(0.05, 1.0, 7)
  sig2 = lambda t: b.alpha_sigma(t)[1] ** 2
  loga = lambda t: jnp.log(b.alpha_sigma(t)[0])
  for t in ts:
    g2 = jax.grad(sig2)(t) - 2 * jax.grad(loga)(t) * sig2(t)
    np.testing.assert_allclose(g2, 0.1 + 2.0 * t, rtol=2e-4)


@pytest.mark.parametrize("cfg", ALL)
def test_marginal_moments_monte_carlo(cfg):
  b = Bridge(**cfg)
  n = 200_000
  x0, xT = jnp.array([0.7, -1.2]), jnp.array([-0.3, 2.0])
  for frac in (0.2, 0.5, 0.8):
    t = jnp.full((n,), round(frac * b.T) if b.discrete else frac * b.T)
    eps = jax.random.normal(jax.random.key(0), (n, 2))
    xt = b.sample_xt(jnp.broadcast_to(x0, (n, 2)), jnp.broadcast_to(xT, (n, 2)), t, eps)
    a, bb, c = (float(u[0]) for u in b.coeffs(t[:1]))
    np.testing.assert_allclose(xt.mean(0), a * xT + bb * x0, atol=4 * c / math.sqrt(n) + 1e-6)
    np.testing.assert_allclose(xt.var(0), c**2, rtol=0.02)


@pytest.mark.parametrize("cfg", ALL)
@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
def test_posterior_keeps_the_bridge_marginal(cfg, eta):
  """x_t from the bridge, then x_s from the DBIM/posterior step given the true x0, has the bridge
  marginal at s. Exact for continuous bridges; I2SB's discrete coefficients differ from the
  linear-prior formulas by O(β_n / σ_T²) ≈ 1e-3, hence its looser tolerance."""
  b = Bridge(**cfg)
  n = 200_000
  x0 = jnp.broadcast_to(jnp.array([0.7, -1.2]), (n, 2))
  xT = jnp.broadcast_to(jnp.array([-0.3, 2.0]), (n, 2))
  t_val, s_val = (700.0, 300.0) if b.discrete else (0.7 * b.T, 0.3 * b.T)
  t, s = jnp.full((n,), t_val), jnp.full((n,), s_val)
  k1, k2 = jax.random.split(jax.random.key(1))
  xt = b.sample_xt(x0, xT, t, jax.random.normal(k1, (n, 2)))
  xs = b.posterior(xt, x0, t, s, jax.random.normal(k2, (n, 2)), eta=eta, xT=xT)
  a, bb, c = (float(u[0]) for u in b.coeffs(s[:1]))
  tol = 3e-3 if b.discrete else 1e-6
  np.testing.assert_allclose(xs.mean(0), a * xT[0] + bb * x0[0], atol=4 * c / math.sqrt(n) + tol)
  np.testing.assert_allclose(xs.std(0), c, rtol=0.01 + tol)


@pytest.mark.parametrize("cfg", CONTINUOUS + [dict(kind="i2sb")])
def test_dbim_eta1_is_the_markov_posterior(cfg):
  """The DBIM update with η = 1, written out with xT, equals the xT-free Markov posterior."""
  b = Bridge(**cfg)
  key = jax.random.key(3)
  xt, x0, xT, eps = jax.random.normal(key, (4, 5, 3))
  t_val, s_val = (600.0, 200.0) if b.discrete else (0.6 * b.T, 0.2 * b.T)
  t, s = jnp.full((5,), t_val), jnp.full((5,), s_val)
  a_t, b_t, c_t = (u[:, None] for u in b.coeffs(t))
  a_s, b_s, c_s = (u[:, None] for u in b.coeffs(s))
  (al_t, sg_t), (al_s, sg_s) = b.alpha_sigma(t), b.alpha_sigma(s)
  omega = (sg_s * jnp.sqrt(1 - (al_t / sg_t) ** 2 / (al_s / sg_s) ** 2))[:, None]
  dbim = b_s * x0 + a_s * xT + jnp.sqrt(c_s**2 - omega**2) / c_t * (xt - a_t * xT - b_t * x0) + omega * eps
  ours = b.posterior(xt, x0, t, s, eps, eta=1.0)
  tol = 5e-3 if b.discrete else 1e-5
  np.testing.assert_allclose(ours, dbim, atol=tol, rtol=tol)


@pytest.mark.parametrize("cfg", [dict(kind="vp", precond="edm"), dict(kind="ve", precond="edm", sigma_max=2.0)])
def test_edm_preconditioning_identities(cfg):
  """With x0, xT ~ N(0, σ_d²): the network input c_in·x_t and target (x0 − c_skip x_t)/c_out have
  unit variance, and λ = 1/c_out² makes the x0-loss the network-output MSE."""
  b = Bridge(**cfg)
  sd = b.sigma_data
  t = jnp.linspace(0.05, 0.95, 5) * b.T
  a, bb, c = b.coeffs(t)
  c_in, c_skip, c_out = b.precond_coeffs(t)
  big_a = (a**2 + bb**2) * sd**2 + c**2
  np.testing.assert_allclose(c_in**2 * big_a, 1.0, rtol=1e-5)
  var_target = (sd**2 - 2 * c_skip * bb * sd**2 + c_skip**2 * big_a) / c_out**2
  np.testing.assert_allclose(var_target, 1.0, rtol=1e-4)
  f, f_star = jax.random.normal(jax.random.key(0), (2, 5))
  xt = jnp.ones(5)
  x0 = c_skip * xt + c_out * f_star
  x0_hat = c_skip * xt + c_out * f
  np.testing.assert_allclose(b.loss_weight(t) * (x0_hat - x0) ** 2, (f - f_star) ** 2, rtol=1e-4)


def test_eps_preconditioning_is_i2sb():
  """I2SB: x̂0 = x_t − σ_t·F and λ = 1/σ_t², so λ‖x̂0 − x0‖² = ‖F − (x_t − x0)/σ_t‖² (its MSE)."""
  b = Bridge(kind="i2sb")
  t = jnp.array([3.0, 250.0, 998.0])
  c_in, c_skip, c_out = b.precond_coeffs(t)
  sigma = jnp.asarray(i2sb_tables()["std_fwd"][[3, 250, 998]], jnp.float32)
  np.testing.assert_allclose(c_out, -sigma, rtol=1e-6)
  np.testing.assert_array_equal(c_in, 1.0)
  np.testing.assert_array_equal(c_skip, 1.0)
  x0, xt, f = jax.random.normal(jax.random.key(2), (3, 3))
  label = (xt - x0) / sigma
  x0_hat = xt - sigma * f
  np.testing.assert_allclose(b.loss_weight(t) * (x0_hat - x0) ** 2, (f - label) ** 2, rtol=1e-4)
  np.testing.assert_allclose(b.c_noise(t), (1e-4 + t * (1 - 1e-4) / 999) * 1000, rtol=1e-5)


def test_bad_bridge_config_names_the_key():
  with pytest.raises(ValueError, match="beta_mx"):
    Bridge.from_config({"kind": "i2sb", "beta_mx": 1.0})
  with pytest.raises(ValueError, match="kind"):
    Bridge(kind="vpp")
