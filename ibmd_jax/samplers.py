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

from ibmd_jax.bridges import Bridge, bcast


def known_pixels_at(bridge: Bridge, xT, s, key):
  """The bridge state of pixels known in xT (x0 = xT there): (a_s + b_s)·xT + c_s·ε."""
  a, b, c = bridge.coeffs(s)
  return bcast(a + b, xT) * xT + bcast(c, xT) * jax.random.normal(key, xT.shape, xT.dtype)


def sample(predict: Callable, params, bridge: Bridge, xT, key, nfe: int, *, eta: float = 1.0,
           label=None, mask=None, z_channels: int = 0, output: str = "auto",
           grid: Optional[jax.Array] = None):
  """Runs the sampler from xT with nfe network evaluations; returns x at t_0 or the last x̂0.

  output: 'state' returns x_{t_0} (I2SB's convention), 'x0hat' the last prediction; 'auto' picks
  'state' for discrete (I2SB) bridges and 'x0hat' for continuous ones. With a mask (1 = unknown),
  known pixels are re-imposed after every step and in the output.
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
      z = jax.random.normal(k_z, x.shape[:-1] + (z_channels,), x.dtype)
    x0_hat = predict(params, x, t_b, xT, z=z, label=label)
    if mask is not None:
      x0_hat = (1.0 - mask) * xT + mask * x0_hat
    eps = jax.random.normal(k_eps, x.shape, x.dtype) * (i < nfe - 1)
    boot = jax.random.normal(k_boot, x.shape, x.dtype)
    x_next = bridge.posterior(x, x0_hat, t_b, s_b, eps, eta=eta, xT=xT, first=i == 0,
                              boot_eps=boot)
    if mask is not None:
      x_next = (1.0 - mask) * known_pixels_at(bridge, xT, s_b, k_known) + mask * x_next
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
