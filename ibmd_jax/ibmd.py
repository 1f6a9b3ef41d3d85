"""Inverse Bridge Matching Distillation: generator, critic, their losses and a fused training round.

Notation (digest §2–3): teacher x̂0*, critic (auxiliary bridge model) x̂0^φ, generator G_θ.
- Critic loss  L_φ = E λ(t)‖x̂0^φ(x_t, t[, xT]) − x0‖², x0 = G_θ(xT, z) held constant.
- Generator loss L_θ = E λ(t)[‖x̂0*(x_t, t[, xT]) − x0‖² − ‖x̂0^φ(x_t, t[, xT]) − x0‖²],
  x0 = G_θ(xT, z), x_t = a_t xT + b_t x0 + c_t ε: gradients flow through x0 (both places) and x_t
  into both networks; only θ is differentiated, so teacher and critic parameters stay frozen.
  Holding x_t fixed, ∂L_θ/∂x0 = 2λ(t)(x̂0^φ − x̂0*) (per sample, per element, over B·D).

Multi-step generators (N steps on the teacher's grid t_N > … > t_1):
- 'full_chain' (the paper's I2SB variant): x0 is the output of the whole N-step chain, with
  gradients through every step;
- 'dmd2' (the DDBM variant, DMD2's backward simulation): each call draws a step k, the chain is
  simulated to t_k without gradients (k frozen generator calls), and x0 = G_θ(x_{t_k}, z, t_k) is
  trained. The state at t_k comes from the bridge q(x_{t_k} | x̂0, xT) of the previous prediction
  ('marginal', paper §3.5) or from the inference posterior ('posterior'). Its loss constrains only
  the MIXTURE over steps of the outputs (one critic for all steps): on a multi-modal conditional
  the steps can split the modes between them (toy: 2-step ED 0.86 against 0.014 for full_chain,
  docs/toy_results.md); prefer full_chain there (docs/image_tasks.md).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from ibmd_jax.bridges import Bridge, bcast
from ibmd_jax.denoiser import Predictor
from ibmd_jax.losses import paste_known, per_sample_sq, weighted_mse
from ibmd_jax.samplers import sample


@dataclasses.dataclass(frozen=True, eq=False)
class IBMD:
  """Everything static about a distillation: the bridge, the three predictors and the variant."""

  bridge: Bridge
  teacher: Predictor  # x̂0*
  critic: Predictor  # x̂0^φ
  generator: Predictor  # G_θ, takes z
  z_channels: int = 0  # 0: no noise input (the paper's I2SB inpainting setup)
  n_steps: int = 1
  multistep: str = "full_chain"  # or 'dmd2'
  intermediate: str = "marginal"  # 'marginal' | 'posterior' (dmd2 only)
  # The DBIM η of the multi-step generator's steps between its calls (1: the Markov posterior,
  # I2SB's DDPM step; 0: DBIM's deterministic step, booted with fresh noise out of x_T).
  eta: float = 1.0
  # λ(t) of both distillation losses: a Bridge.weighting name ('default', 'uniform', 'snr'), or
  # None for the bridge's own (the teacher's loss weighting, bridge.weighting).
  weighting: Optional[str] = None
  # The weight of the critic term in L_θ: 1 is IBMD; 0 drops it (an ablation: the generator then
  # only regresses onto the teacher's x̂0 at its own noised samples, and collapses).
  critic_weight: float = 1.0

  def __post_init__(self):
    if self.multistep not in ("full_chain", "dmd2"):
      raise ValueError(f"multistep must be 'full_chain' or 'dmd2', got {self.multistep!r}")
    if self.intermediate not in ("marginal", "posterior"):
      raise ValueError(f"intermediate must be 'marginal' or 'posterior', got {self.intermediate!r}")
    if self.n_steps < 1:
      raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
    if self.weighting not in (None, "default", "uniform", "snr"):
      raise ValueError(f"distill.weighting must be '' (the bridge's), 'default', 'uniform' or "
                       f"'snr', got {self.weighting!r}")

  @property
  def loss_bridge(self) -> Bridge:
    """The bridge whose loss_weight weights L_φ and L_θ (distill.weighting)."""
    if self.weighting is None or self.weighting == self.bridge.weighting:
      return self.bridge
    return dataclasses.replace(self.bridge, weighting=self.weighting)

  @property
  def grid(self) -> jax.Array:
    return jnp.asarray(self.bridge.time_grid(self.n_steps))

  def _z(self, key, x):
    if not self.z_channels:
      return None
    return jax.random.normal(key, x.shape[:-1] + (self.z_channels,), x.dtype)

  # ------------------------------------------------------------------ generation
  def generate(self, gen_params, xT, key, label=None, mask=None, n_steps: Optional[int] = None):
    """Inference: N generator calls alternating with posterior samples; returns the last x̂0."""
    n = n_steps or self.n_steps
    if n == 1:
      t = jnp.full((xT.shape[0],), self.bridge.time_grid(1)[0])
      x0 = self.generator(gen_params, xT, t, xT, z=self._z(key, xT), label=label)
      return paste_known(x0, xT, mask)
    return sample(self.generator, gen_params, self.bridge, xT, key, n, eta=self.eta, label=label,
                  mask=mask, z_channels=self.z_channels, output="x0hat")

  def generate_for_training(self, gen_params, xT, key, label=None, mask=None):
    """The x0 that enters L_φ and L_θ, differentiable in θ (see the module docstring)."""
    if self.n_steps == 1 or self.multistep == "full_chain":
      return self.generate(gen_params, xT, key, label, mask)
    grid = self.grid
    n, b = self.n_steps, xT.shape[0]
    k_step, k_chain, k_marg, k_z = jax.random.split(key, 4)
    # One step index per call (per critic / generator step), as DMD2's backward simulation: the
    # frozen chain then runs exactly k generator calls (a while loop), none when k = 0. (Drawing k
    # per sample ran all n − 1 frozen calls for every sample in every step.)
    k = jax.random.randint(k_step, (), 0, n)  # index into grid[:n]: 0 is t_N = T.
    frozen = jax.lax.stop_gradient(gen_params)

    # Simulate the chain without gradients up to t_k, keeping the last state and prediction.
    def body(i, carry):
      x, _ = carry
      ki = jax.random.fold_in(k_chain, i)
      t_b, s_b = jnp.full((b,), grid[i]), jnp.full((b,), grid[i + 1])
      x0_hat = paste_known(self.generator(frozen, x, t_b, xT, z=self._z(ki, x), label=label),
                           xT, mask)
      eps = jax.random.normal(jax.random.fold_in(ki, 1), x.shape, x.dtype)
      boot = jax.random.normal(jax.random.fold_in(ki, 2), x.shape, x.dtype)
      # As in the sampler: the first step out of x_T (c_T ≈ 0) takes booting noise as its
      # direction, so η < 1 never divides by c_T.
      x_next = self.bridge.posterior(x, x0_hat, t_b, s_b, eps, eta=self.eta, xT=xT, first=i == 0,
                                     boot_eps=boot)
      return x_next, x0_hat

    state_k, prev_k = jax.lax.fori_loop(0, k, body, (xT, jnp.zeros_like(xT)))
    t_k = jnp.full((b,), grid[k])
    if self.intermediate == "marginal":  # q(x_{t_k} | x̂0 made at t_{k-1}, xT)
      eps = jax.random.normal(k_marg, xT.shape, xT.dtype)
      x_k = jnp.where(k == 0, xT, self.bridge.sample_xt(prev_k, xT, t_k, eps))
    else:
      x_k = state_k
    x_k = jax.lax.stop_gradient(x_k)
    x0 = self.generator(gen_params, x_k, t_k, xT, z=self._z(k_z, xT), label=label)
    return paste_known(x0, xT, mask)

  # ------------------------------------------------------------------ losses
  def _bridge_point(self, x0, xT, key):
    k_t, k_eps = jax.random.split(key)
    t = self.bridge.sample_t(k_t, x0.shape[0])
    eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
    return t, self.bridge.sample_xt(x0, xT, t, eps)

  def critic_loss(self, critic_params, gen_params, batch, key):
    xT, label, mask = batch["xT"], batch.get("label"), batch.get("mask")
    k_gen, k_pt = jax.random.split(key)
    x0 = jax.lax.stop_gradient(self.generate_for_training(gen_params, xT, k_gen, label, mask))
    t, x_t = self._bridge_point(x0, xT, k_pt)
    pred = self.critic(critic_params, x_t, t, xT, label=label)
    return weighted_mse(pred, x0, self.loss_bridge.loss_weight(t), mask)

  def generator_loss(self, gen_params, critic_params, teacher_params, batch, key):
    """Returns (L_θ, aux); differentiate in gen_params only."""
    xT, label, mask = batch["xT"], batch.get("label"), batch.get("mask")
    k_gen, k_pt = jax.random.split(key)
    x0 = self.generate_for_training(gen_params, xT, k_gen, label, mask)
    t, x_t = self._bridge_point(x0, xT, k_pt)
    lam = self.loss_bridge.loss_weight(t)
    real = self.teacher(teacher_params, x_t, t, xT, label=label)
    fake = self.critic(critic_params, x_t, t, xT, label=label)
    teacher_term = jnp.mean(lam * per_sample_sq(real, x0, mask))
    critic_term = jnp.mean(lam * per_sample_sq(fake, x0, mask))
    return teacher_term - self.critic_weight * critic_term, {"teacher_term": teacher_term, "critic_term": critic_term}
