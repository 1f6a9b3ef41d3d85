"""Bridge samplers: I2SB's ancestral posterior sampler and the DBIM sampler, compiled once.

Both run the same loop over a decreasing grid t_N > … > t_0 (``Bridge.time_grid``) as one
``lax.scan``: at each step x̂0 = predict(x_{t_n}, t_n) and x_{t_{n−1}} is drawn from the bridge's
DBIM step with parameter η (η = 1: the Markov posterior, which is I2SB's p_posterior). NFE = N.
The last step adds no noise (as I2SB at n' = 0). The same loop runs multi-step IBMD generators
(``z_channels`` > 0 feeds fresh noise to the generator at each step).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax.bridges import Bridge, bcast


def known_pixels_at(bridge: Bridge, xT, s, key):
  """The bridge state of pixels known in xT (x0 = xT there): (a_s + b_s)·xT + c_s·ε."""
  a, b, c = bridge.coeffs(s)
  return bcast(a + b, xT) * xT + bcast(c, xT) * jax.random.normal(key, xT.shape, xT.dtype)


def _draw(noises, name, i, key, shape, dtype):
  """Standard normal noise for step i: fresh from key, or replayed from noises[name][i]."""
  if noises is not None and name in noises:
    return jnp.asarray(noises[name], dtype)[i]
  return jax.random.normal(key, shape, dtype)


def sample(predict: Callable, params, bridge: Bridge, xT, key, nfe: int, *, eta: float = 1.0,
           label=None, mask=None, z_channels: int = 0, output: str = "auto",
           grid: Optional[jax.Array] = None, noises: Optional[dict] = None):
  """Runs the sampler from xT with nfe network evaluations; returns x at t_0 or the last x̂0.

  output: 'state' returns x_{t_0} (I2SB's convention), 'x0hat' the last prediction; 'auto' picks
  'state' for discrete (I2SB) bridges and 'x0hat' for continuous ones. With a mask (1 = unknown),
  known pixels are re-imposed after every step and in the output. On an I2SB bridge with η = 1
  this is I2SB's ``ddpm_sampling`` (OT-ODE when ``bridge.ot_ode``) step for step.
  noises: optional recorded noise {'eps', 'boot', 'known', 'z'}, each [nfe, *shape], replacing
  the draws from key (parity tests replay the original code's torch.randn draws).
  """
  if grid is None:
    grid = jnp.asarray(bridge.time_grid(nfe))
  if output == "auto":
    output = "state" if bridge.discrete else "x0hat"
  batch = xT.shape[0]
  steps = jnp.arange(nfe)

  def body(carry, i):
    x, _ = carry
    t, s = grid[i], grid[i + 1]
    k = jax.random.fold_in(key, i)
    k_eps, k_boot, k_z, k_known = jax.random.split(k, 4)
    t_b = jnp.full((batch,), t)
    s_b = jnp.full((batch,), s)
    z = None
    if z_channels:
      z = _draw(noises, "z", i, k_z, x.shape[:-1] + (z_channels,), x.dtype)
    x0_hat = predict(params, x, t_b, xT, z=z, label=label)
    if mask is not None:
      x0_hat = (1.0 - mask) * xT + mask * x0_hat
    eps = _draw(noises, "eps", i, k_eps, x.shape, x.dtype) * (i < nfe - 1)
    boot = _draw(noises, "boot", i, k_boot, x.shape, x.dtype)
    x_next = bridge.posterior(x, x0_hat, t_b, s_b, eps, eta=eta, xT=xT, first=i == 0,
                              boot_eps=boot)
    if mask is not None:
      a, b, c = bridge.coeffs(s_b)
      known = (bcast(a + b, xT) * xT
               + bcast(c, xT) * _draw(noises, "known", i, k_known, xT.shape, xT.dtype))
      x_next = (1.0 - mask) * known + mask * x_next
    return (x_next, x0_hat), None

  (x, x0_hat), _ = jax.lax.scan(body, (xT, jnp.zeros_like(xT)), steps)
  out = x if output == "state" else x0_hat
  if mask is not None:
    out = (1.0 - mask) * xT + mask * out
  return out


def make_sampler(predict: Callable, bridge: Bridge, nfe: int, *, eta: float = 1.0,
                 z_channels: int = 0, output: str = "auto"):
  """A jitted sampler fn(params, xT, key, label=None, mask=None), compiled once per shape."""
  fn = functools.partial(sample, predict, bridge=bridge, nfe=nfe, eta=eta, z_channels=z_channels,
                         output=output)

  @jax.jit
  def run(params, xT, key, label=None, mask=None):
    return fn(params, xT=xT, key=key, label=label, mask=mask)

  return run


# ------------------------------------------------------------------ the original DDBM / DBIM samplers
def dbim_grid(bridge: Bridge, nfe: int) -> np.ndarray:
  """DBIM's evaluation times for nfe network calls: T, then nfe points of linspace(T − 1e-3, t_min)
  (``get_sigmas_uniform(steps = nfe − 1)``); the sampler ends in the state at the last one."""
  if nfe < 1:
    raise ValueError(f"nfe must be >= 1, got {nfe}")
  if bridge.discrete:
    raise ValueError("sample_dbim runs on continuous bridges (vp, ve, brownian); for I2SB use sample")
  rest = np.linspace(bridge.T - bridge.t_start_offset, bridge.t_min, nfe, dtype=np.float32)
  return np.concatenate([np.float32([bridge.T]), rest])


def sample_dbim(predict: Callable, params, bridge: Bridge, xT, key, nfe: int, *, eta: float = 0.0,
                label=None, mask=None, clip: bool = True, noises: Optional[dict] = None):
  """DBIM's sampler (thu-ml/DiffusionBridge ``sample_dbim``) with nfe network calls.

  x̂0 at T from x_T; "booting": x = a xT + b x̂0 + c ε at the first grid point (the bridge marginal,
  one noise); then nfe − 1 DBIM steps with parameter η (the last adds no noise). With a mask
  (1 = unknown) x̂0 is pasted with xT's known pixels, as the original (the state is not).
  clip: x̂0 and the output clamped to [-1, 1] (the original's clip_denoised, on by default there).
  Returns the final state. noises: optional {'boot': [B, ...], 'eps': [nfe − 1, B, ...]}.
  """
  grid = jnp.asarray(dbim_grid(bridge, nfe))
  batch = xT.shape[0]
  k_boot, k_eps = jax.random.split(key)

  def denoise(x, t):
    x0 = predict(params, x, jnp.full((batch,), t), xT, label=label)
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
    if mask is not None:
      x0 = (1.0 - mask) * xT + mask * x0
    return x0

  x0 = denoise(xT, grid[0])
  boot = noises["boot"] if noises is not None and "boot" in noises else jax.random.normal(
      k_boot, xT.shape, xT.dtype)
  x = bridge.sample_xt(x0, xT, jnp.full((batch,), grid[1]), jnp.asarray(boot, xT.dtype))

  def body(x, i):
    t, s = grid[i + 1], grid[i + 2]
    x0 = denoise(x, t)
    eps = _draw(noises, "eps", i, jax.random.fold_in(k_eps, i), x.shape, x.dtype)
    eps = eps * (i < nfe - 2)
    t_b, s_b = jnp.full((batch,), t), jnp.full((batch,), s)
    # η = 1 is the Markov posterior; Bridge.posterior computes it without xT, which is the same
    # step (x_s ⟂ xT | x_t): we keep DBIM's xT form here so that the arithmetic is the original's.
    return bridge.posterior(x, x0, t_b, s_b, eps, eta=eta if eta != 1.0 else 1.0 - 1e-7,
                            xT=xT), None

  if nfe > 1:
    x, _ = jax.lax.scan(body, x, jnp.arange(nfe - 1))
  return jnp.clip(x, -1.0, 1.0) if clip else x


def karras_grid(bridge: Bridge, steps: int, rho: float = 7.0) -> np.ndarray:
  """DDBM's Heun grid: Karras' ρ-spacing from T − 1e-4 down to t_min, then 0 (float32, as torch)."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  ramp = np.linspace(0.0, 1.0, steps, dtype=np.float32)
  lo, hi = bridge.t_min ** (1.0 / rho), (bridge.T - 1e-4) ** (1.0 / rho)
  grid = (np.float32(hi) + ramp * np.float32(lo - hi)) ** np.float32(rho)
  return np.concatenate([grid.astype(np.float32), np.float32([0.0])])


def _bridge_drift(bridge: Bridge, x, x0, xT, t, stochastic: bool):
  """DDBM's probability-flow (stochastic=False) or reverse-SDE drift dx/dt of the bridge.

  With f = d log α/dt, g² = α² dρ²/dt (ρ = σ/α), ∇ log p(x_t | x0) = −(x − α x̂0)/σ² and
  h = ∇ log p(xT | x_t) = −r (x − (α/α_T) xT)/(σ²(1 − r)), r = ρ²/ρ_T²:
  ODE: f x − ½ g² (∇ log p(x_t | x̂0) − h);  SDE: f x − g² ∇ log p(x_t | x̂0) (DDBM's guidance w = 1;
  this is DDBM's get_d_vp / to_d for VP and VE, rewritten through the prior's score).
  """
  alpha_fn = lambda u: bridge.alpha_sigma(u)[0]
  (alpha, sigma) = bridge.alpha_sigma(t)
  _, dalpha = jax.jvp(alpha_fn, (t,), (jnp.ones_like(t),))
  rho2, drho2 = jax.jvp(bridge._rho2, (t,), (jnp.ones_like(t),))
  alpha_T, sigma_T = bridge.alpha_sigma(jnp.full_like(t, bridge.T))
  r = rho2 / (sigma_T / alpha_T) ** 2
  f, g2 = dalpha / alpha, alpha**2 * drho2
  b = lambda c: bcast(c, x)
  score = -(x - b(alpha) * x0) / b(sigma**2)
  if stochastic:
    return b(f) * x - b(g2) * score, g2
  h = -b(r) * (x - b(alpha / alpha_T) * xT) / b(sigma**2 * (1.0 - r))
  return b(f) * x - 0.5 * b(g2) * (score - h)


def sample_heun(predict: Callable, params, bridge: Bridge, xT, key, steps: int, *,
                churn_step_ratio: float = 0.0, rho: float = 7.0, label=None, clip: bool = True,
                noises: Optional[dict] = None):
  """DDBM's Heun sampler (``karras_sample(sampler='heun')`` / ``sample_heun``) on its Karras grid.

  Each of the `steps` steps t_i → t_{i+1}: with churn_step_ratio > 0 first an Euler–Maruyama step
  of the reverse SDE to t̂ = t_i + ratio·(t_{i+1} − t_i), then a Heun step of the probability-flow
  ODE from t̂ (Euler only into t = 0). NFE = steps·(2 + [churn > 0]) − 1. clip: x̂0 and the output
  clamped to [-1, 1] (the original's clip_denoised). noises: optional {'churn': [steps, B, ...]}.
  Returns the final state.
  """
  if not 0.0 <= churn_step_ratio < 1.0:
    raise ValueError(f"churn_step_ratio must be in [0, 1), got {churn_step_ratio}")
  if bridge.discrete:
    raise ValueError("sample_heun runs on continuous bridges (vp, ve, brownian)")
  grid = karras_grid(bridge, steps, rho)
  batch = xT.shape[0]

  def denoise(x, t):
    x0 = predict(params, x, t, xT, label=label)
    return jnp.clip(x0, -1.0, 1.0) if clip else x0

  x = xT
  for i in range(steps):  # steps is small and static: unrolled, each step traced once.
    t_i, t_next = float(grid[i]), float(grid[i + 1])
    if churn_step_ratio > 0:
      t_hat = np.float32(t_i + (t_next - t_i) * churn_step_ratio)
      tb = jnp.full((batch,), t_i)
      d, g2 = _bridge_drift(bridge, x, denoise(x, tb), xT, tb, stochastic=True)
      dt = float(t_hat) - t_i
      eps = _draw(noises, "churn", i, jax.random.fold_in(key, i), x.shape, x.dtype)
      x = x + d * dt + eps * (abs(dt) ** 0.5) * bcast(jnp.sqrt(g2), x)
    else:
      t_hat = t_i
    tb = jnp.full((batch,), float(t_hat))
    d = _bridge_drift(bridge, x, denoise(x, tb), xT, tb, stochastic=False)
    dt = t_next - float(t_hat)
    if t_next == 0.0:
      x = x + d * dt
    else:
      x2 = x + d * dt
      tn = jnp.full((batch,), t_next)
      d2 = _bridge_drift(bridge, x2, denoise(x2, tn), xT, tn, stochastic=False)
      x = x + 0.5 * (d + d2) * dt
  return jnp.clip(x, -1.0, 1.0) if clip else x
