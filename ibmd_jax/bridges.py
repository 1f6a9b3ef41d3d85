"""Gaussian diffusion bridges q(x_t | x0, xT) = N(a_t xT + b_t x0, c_t² I).

One small abstraction covers every teacher in the paper (digest §1.3–1.5):

- ``i2sb``: I2SB's discrete symmetric-β schedule (1000 steps, ``beta_max``), time = step index n as a
  float; ``ot_ode`` sets c_t = 0 (deterministic bridge, used for I2SB inpainting).
- ``vp``: DDBM's VP bridge, α_t = exp(−½β_min t − ¼β_d t²), t ∈ [t_min, 1].
- ``ve``: DDBM's VE bridge, α_t = 1, σ_t = t, t ∈ [t_min, sigma_max].
- ``brownian``: Brownian bridge, α_t = 1, σ_t² = s² t, t ∈ [t_min, 1].

All continuous bridges share the linear-drift formulas
  a_t = (α_t/α_T)·ρ_t²/ρ_T²,  b_t = α_t(1 − ρ_t²/ρ_T²),  c_t² = σ_t²(1 − ρ_t²/ρ_T²),  ρ = σ/α,
while I2SB uses its own discrete coefficients (μ1, μ0, std_sb) so that we reproduce it exactly.

Everything here is jnp arithmetic on per-sample times ``t`` of shape [B]; helpers broadcast the
coefficients to the data's shape. The class is a frozen dataclass: hashable, so it can be a static
argument of jitted functions.
"""
from __future__ import annotations

import dataclasses
import math
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("i2sb", "vp", "ve", "brownian")
PRECONDS = ("eps", "edm")


def space_indices(num_steps: int, count: int) -> list[int]:
  """I2SB's evenly spaced step indices (Python rounding, as in the reference code)."""
  if count > num_steps:
    raise ValueError(f"cannot take {count} indices out of {num_steps} steps")
  stride = 1.0 if count <= 1 else (num_steps - 1) / (count - 1)
  return [int(round(i * stride)) for i in range(count)]


def i2sb_tables(n_steps: int = 1000, beta_max: float = 0.3, linear_start: float = 1e-4) -> dict:
  """The I2SB schedule tables in float64 numpy (runner.py's make_beta_schedule + symmetric flip)."""
  half = n_steps // 2
  betas = np.linspace(math.sqrt(linear_start), math.sqrt(beta_max / n_steps), n_steps,
                      dtype=np.float64) ** 2
  betas = np.concatenate([betas[:half], np.flip(betas[:half])])
  std_fwd = np.sqrt(np.cumsum(betas))
  std_bwd = np.sqrt(np.flip(np.cumsum(np.flip(betas))))
  denom = std_fwd**2 + std_bwd**2
  return dict(
      betas=betas,
      std_fwd=std_fwd,
      std_bwd=std_bwd,
      mu_x0=std_bwd**2 / denom,
      mu_x1=std_fwd**2 / denom,
      std_sb=np.sqrt(std_fwd**2 * std_bwd**2 / denom),
      # DBIM's get_abc on this schedule (α = 1, ρ = std_fwd, ρ̄ = std_bwd, ρ_T = std_fwd[-1]).
      dbim_a=std_fwd**2 / std_fwd[-1]**2,
      dbim_b=std_bwd**2 / std_fwd[-1]**2,
      dbim_c=std_fwd * std_bwd / std_fwd[-1],
      # I2SB's network time input: noise_levels = linspace(1e-4, 1, n) * n.
      noise_levels=np.linspace(linear_start, 1.0, n_steps) * n_steps,
  )


def bcast(c: jax.Array, x: jax.Array) -> jax.Array:
  """Reshape per-sample coefficients [B] so they broadcast against x [B, ...]."""
  c = jnp.asarray(c)
  return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


@dataclasses.dataclass(frozen=True)
class Bridge:
  """A Gaussian bridge with its teacher conventions (loss weight, time law, preconditioning)."""

  kind: str = "vp"
  # I2SB
  n_steps: int = 1000
  beta_max: float = 0.3
  linear_start: float = 1e-4
  ot_ode: bool = False
  # The bridge coefficients on the I2SB schedule: 'i2sb' (I2SB's q_sample: μ_x0, μ_x1, std_sb from
  # std_fwd² + std_bwd²) or 'dbim' (DBIM's I2SBNoiseSchedule.get_abc: ρ_T = std_fwd[-1], ρ̄ =
  # std_bwd; its DBIM teachers were trained and sample with these; up to 9e-4 apart at β_max 1).
  i2sb_coeffs: str = "i2sb"
  # VP (DDBM defaults)
  vp_beta_min: float = 0.1
  vp_beta_d: float = 2.0
  # VE (DDBM VE: sigma_max = 80) and Brownian (sigma² per unit time)
  sigma_max: float = 80.0
  brownian_sigma: float = 1.0
  t_min: float = 1e-4
  # Continuous sampling grids start at T − t_start_offset (DBIM's uniform grid).
  t_start_offset: float = 1e-3
  # Network preconditioning: 'eps' (I2SB: x̂0 = x_t − σ_t·F) or 'edm' (DDBM's c_in/c_skip/c_out).
  precond: str = "eps"
  sigma_data: float = 0.5
  # DDBM's cov_xy (KarrasDenoiser / DDBMPreCond): the assumed covariance of x0 and xT in the 'edm'
  # preconditioning; 0 (DDBM's default, uncorrelated) or e.g. sigma_data²/2 (c_skip = 1/2 at T).
  cov_xy: float = 0.0
  # Time input of the network: 'default' = I2SB noise level for i2sb, 250·log t otherwise.
  c_noise_kind: str = "default"
  # λ(t): 'default' = 1/c_out(t)² (the teacher's own weighting: a plain MSE of the network output),
  # 'uniform' = 1 (plain MSE in x0 space), 'snr' = α_t²/σ_t².
  weighting: str = "default"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"bridge.kind must be one of {KINDS}, got {self.kind!r}")
    if self.precond not in PRECONDS:
      raise ValueError(f"bridge.precond must be one of {PRECONDS}, got {self.precond!r}")
    if self.i2sb_coeffs not in ("i2sb", "dbim"):
      raise ValueError(f"bridge.i2sb_coeffs must be 'i2sb' or 'dbim', got {self.i2sb_coeffs!r}")
    if self.kind == "i2sb" and self.n_steps % 2:
      raise ValueError(f"I2SB's symmetric schedule needs an even n_steps, got {self.n_steps}")
    if self.cov_xy and (self.precond != "edm" or abs(self.cov_xy) >= self.sigma_data**2):
      raise ValueError(f"bridge.cov_xy={self.cov_xy} needs precond='edm' and |cov_xy| < sigma_data² "
                       f"= {self.sigma_data**2}")
    if self.kind != "i2sb" and not 0.0 < self.t_min < self.T:
      raise ValueError(f"need 0 < t_min < T, got t_min={self.t_min}, T={self.T}")

  @classmethod
  def from_config(cls, cfg) -> "Bridge":
    """Builds a Bridge from a dict / ConfigDict, naming any unknown key."""
    cfg = dict(cfg)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
      raise ValueError(f"unknown bridge option(s) {unknown}; valid options: {sorted(fields)}")
    return cls(**cfg)

  # ---------------------------------------------------------------- schedule
  @property
  def discrete(self) -> bool:
    return self.kind == "i2sb"

  @property
  def T(self) -> float:
    if self.kind == "i2sb":
      return float(self.n_steps - 1)
    if self.kind == "ve":
      return float(self.sigma_max)
    return 1.0

  def _tables(self) -> dict:
    return {k: jnp.asarray(v, jnp.float32) for k, v in
            i2sb_tables(self.n_steps, self.beta_max, self.linear_start).items()}

  def _lookup(self, name: str, t: jax.Array) -> jax.Array:
    idx = jnp.clip(jnp.round(t).astype(jnp.int32), 0, self.n_steps - 1)
    return self._tables()[name][idx]

  def alpha_sigma(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The prior's q(x_t | x0) = N(α_t x0, σ_t² I)."""
    t = jnp.asarray(t, jnp.float32)
    if self.kind == "i2sb":
      return jnp.ones_like(t), self._lookup("std_fwd", t)
    if self.kind == "vp":
      log_alpha = -0.5 * self.vp_beta_min * t - 0.25 * self.vp_beta_d * t**2
      alpha = jnp.exp(log_alpha)
      rho2 = jnp.expm1(self.vp_beta_min * t + 0.5 * self.vp_beta_d * t**2)
      return alpha, alpha * jnp.sqrt(rho2)
    if self.kind == "ve":
      return jnp.ones_like(t), t
    return jnp.ones_like(t), self.brownian_sigma * jnp.sqrt(t)

  def _rho2(self, t):
    alpha, sigma = self.alpha_sigma(t)
    return (sigma / alpha) ** 2

  def coeffs(self, t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(a_t, b_t, c_t) with x_t = a_t xT + b_t x0 + c_t ε."""
    t = jnp.asarray(t, jnp.float32)
    if self.kind == "i2sb":
      names = ("mu_x1", "mu_x0", "std_sb") if self.i2sb_coeffs == "i2sb" else (
          "dbim_a", "dbim_b", "dbim_c")
      c = jnp.zeros_like(t) if self.ot_ode else self._lookup(names[2], t)
      return self._lookup(names[0], t), self._lookup(names[1], t), c
    alpha, sigma = self.alpha_sigma(t)
    alpha_T, _ = self.alpha_sigma(jnp.full_like(t, self.T))
    r = self._rho2(t) / self._rho2(jnp.full_like(t, self.T))
    r = jnp.clip(r, 0.0, 1.0)
    one_minus_r = jnp.clip(self._one_minus_r(t), 0.0, 1.0)
    a = alpha / alpha_T * r
    b = alpha * one_minus_r
    c = sigma * jnp.sqrt(one_minus_r)
    return a, b, c

  def _one_minus_r(self, t):
    """1 − ρ_t²/ρ_T² without cancellation near T (float32): the original DBIM computes this
    bridge's ρ̄_t = sqrt(ρ_T² − ρ_t²) in float64; 1 − r formed from r loses ~1e-4 of c_t there."""
    T = self.T
    if self.kind == "vp":
      g = lambda u: self.vp_beta_min * u + 0.5 * self.vp_beta_d * u**2
      d = T - t  # exact for float32 t near T
      g_gap = self.vp_beta_min * d + 0.5 * self.vp_beta_d * d * (T + t)
      return jnp.exp(g(t)) * jnp.expm1(g_gap) / math.expm1(g(T))
    if self.kind == "ve":
      return (T - t) * (T + t) / T**2
    return (T - t) / T

  def sample_xt(self, x0, xT, t, eps):
    """Reparameterised bridge sample; differentiable in x0 and xT."""
    a, b, c = self.coeffs(t)
    return bcast(a, x0) * xT + bcast(b, x0) * x0 + bcast(c, x0) * eps

  # ---------------------------------------------------------------- training conventions
  def sample_t(self, key: jax.Array, batch: int) -> jax.Array:
    """The teacher's time law: n ~ U{0..N−1} (I2SB) or t ~ U[t_min, T]."""
    if self.kind == "i2sb":
      return jax.random.randint(key, (batch,), 0, self.n_steps).astype(jnp.float32)
    return jax.random.uniform(key, (batch,), minval=self.t_min, maxval=self.T)

  def precond_coeffs(self, t: jax.Array):
    """(c_in, c_skip, c_out) with x̂0 = c_skip x_t + c_out F(c_in x_t, …)."""
    t = jnp.asarray(t, jnp.float32)
    if self.precond == "eps":
      _, sigma = self.alpha_sigma(t)
      return jnp.ones_like(t), jnp.ones_like(t), -sigma
    # DDBM's get_bridge_scalings (σ_data of x0 and of xT equal, as in the original): with
    # A = a²σ² + b²σ² + 2ab·cov_xy + c², c_in = A^-½, c_skip = (bσ² + a·cov_xy)/A,
    # c_out = sqrt(a²(σ⁴ − cov_xy²) + σ²c²)·c_in.
    a, b, c = self.coeffs(t)
    sd2, cov = self.sigma_data**2, self.cov_xy
    big_a = a**2 * sd2 + b**2 * sd2 + 2.0 * a * b * cov + c**2
    c_in = jax.lax.rsqrt(big_a)
    c_skip = (b * sd2 + a * cov) / big_a
    c_out = jnp.sqrt(a**2 * (sd2**2 - cov**2) + sd2 * c**2) * c_in
    return c_in, c_skip, c_out

  def c_noise(self, t: jax.Array) -> jax.Array:
    kind = self.c_noise_kind
    if kind == "default":
      kind = "i2sb" if self.kind == "i2sb" else "log250"
    t = jnp.asarray(t, jnp.float32)
    if kind == "i2sb":
      return self._lookup("noise_levels", t)
    if kind == "log250":
      return 250.0 * jnp.log(jnp.maximum(t, 1e-44))
    if kind == "t1000":
      return 1000.0 * t / self.T
    raise ValueError(f"unknown c_noise_kind {self.c_noise_kind!r}")

  @property
  def c_noise_span(self) -> float:
    """The size of the range c_noise takes over [t_min, T] (I2SB noise levels ≈ 1000, 250·log t
    ≈ 2300 for t ≥ 1e-4): a network's time embedding is taken of c_noise / span (MLP time_scale)."""
    kind = self.c_noise_kind
    if kind == "default":
      kind = "i2sb" if self.kind == "i2sb" else "log250"
    spans = {"i2sb": float(self.n_steps), "t1000": 1000.0, "log250": 250.0}
    if kind not in spans:
      raise ValueError(f"unknown c_noise_kind {self.c_noise_kind!r}; choose from {sorted(spans)}")
    return spans[kind]

  def loss_weight(self, t: jax.Array) -> jax.Array:
    """λ(t): the weight under which the teacher's loss is a plain MSE of the network output."""
    if self.weighting == "uniform":
      return jnp.ones_like(jnp.asarray(t, jnp.float32))
    if self.weighting == "snr":
      alpha, sigma = self.alpha_sigma(t)
      return (alpha / sigma) ** 2
    if self.weighting != "default":
      raise ValueError(f"bridge.weighting must be 'default', 'uniform' or 'snr', got {self.weighting!r}")
    _, _, c_out = self.precond_coeffs(t)
    return 1.0 / jnp.maximum(c_out**2, 1e-12)

  # ---------------------------------------------------------------- sampling
  def time_grid(self, nfe: int) -> np.ndarray:
    """Decreasing grid t_N > … > t_0 of length nfe + 1; the sampler evaluates the net at t_N..t_1."""
    if nfe < 1:
      raise ValueError(f"nfe must be >= 1, got {nfe}")
    if self.kind == "i2sb":
      if nfe >= self.n_steps:
        raise ValueError(f"nfe={nfe} is too many for the I2SB bridge's {self.n_steps}-step grid: "
                         f"at most {self.n_steps - 1} (I2SB's own default, interval - 1)")
      return np.asarray(space_indices(self.n_steps, nfe + 1)[::-1], np.float32)
    return np.linspace(self.T - self.t_start_offset, self.t_min, nfe + 1).astype(np.float32)

  def posterior(self, x_t, x0_hat, t, s, eps, eta: float = 1.0, xT=None, first: bool = False,
                boot_eps=None):
    """One step t → s < t of the DBIM family; eta = 1 is the Markov posterior q(x_s | x_t, x̂0).

    x_s = b_s x̂0 + a_s xT + sqrt(c_s² − ω²)·(x_t − a_t xT − b_t x̂0)/c_t + ω ε,
    ω = η σ_s sqrt(1 − SNR_t/SNR_s). With η = 1 this needs no xT: it is the prior's posterior
    N((α_{t|s}σ_s²/σ_t²) x_t + (α_s σ_{t|s}²/σ_t²) x̂0, σ_s²(1 − SNR_t/SNR_s)), computed directly
    (this is also I2SB's p_posterior). ``first`` replaces the deterministic direction by "booting"
    noise, for the first step out of x_T where c_t ≈ 0. On an OT-ODE bridge ω = 0.
    """
    alpha_t, sigma_t = self.alpha_sigma(t)
    alpha_s, sigma_s = self.alpha_sigma(s)
    snr_ratio = jnp.clip((alpha_t / sigma_t) ** 2 / (alpha_s / sigma_s) ** 2, 0.0, 1.0)
    omega = eta * sigma_s * jnp.sqrt(1.0 - snr_ratio)
    if self.ot_ode:  # I2SB's OT-ODE: the posterior mean, no noise.
      omega = jnp.zeros_like(omega)
    if eta == 1.0:
      alpha_ts = alpha_t / alpha_s
      var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
      mean = (bcast(alpha_ts * sigma_s**2 / sigma_t**2, x_t) * x_t
              + bcast(alpha_s * var_ts / sigma_t**2, x_t) * x0_hat)
      return mean + bcast(omega, x_t) * eps
    if xT is None:
      raise ValueError("the DBIM step with eta != 1 needs xT")
    a_t, b_t, c_t = self.coeffs(t)
    a_s, b_s, c_s = self.coeffs(s)
    base = bcast(b_s, x_t) * x0_hat + bcast(a_s, x_t) * xT
    direction = (x_t - bcast(a_t, x_t) * xT - bcast(b_t, x_t) * x0_hat) / bcast(
        jnp.maximum(c_t, 1e-12), x_t)
    if boot_eps is not None:  # `first` may be a traced bool inside a scan.
      direction = jnp.where(first, boot_eps, direction)
    keep = jnp.sqrt(jnp.maximum(c_s**2 - omega**2, 0.0))
    return base + bcast(keep, x_t) * direction + bcast(omega, x_t) * eps

