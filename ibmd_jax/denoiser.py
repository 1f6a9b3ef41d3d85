"""x̂0 predictors: the one predictor signature, and a network plus a bridge's preconditioning.

Every x̂0 predictor of the library (a network denoiser, an exact toy teacher, your own model) is a
`Predictor`; teachers, critics and generators are interchangeable in losses, samplers and IBMD.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from ibmd_jax.bridges import Bridge, bcast


class Predictor(Protocol):
  """predict(params, x_t, t, xT=None, z=None, label=None, rng=None) -> x̂0, shaped like x_t.

  params: any pytree (ignored by closed-form predictors); x_t: the bridge state [B, ...]; t: [B]
  times in the bridge's convention (I2SB step index, continuous t for DDBM bridges); xT: the
  corrupted input (conditional predictors use it; unconditional ones may ignore it); z: generator
  noise [..., z_channels] or None; label: int [B] class labels or None; rng: a dropout key (None =
  deterministic). Must be a pure JAX function of its arguments (it is traced under jit and grad).
  """

  def __call__(self, params: Any, x_t: jax.Array, t: jax.Array, xT: Optional[jax.Array] = None,
               z: Optional[jax.Array] = None, label: Optional[jax.Array] = None,
               rng: Optional[jax.Array] = None) -> jax.Array:
    ...


@dataclasses.dataclass(frozen=True, eq=False)
class NetDenoiser:
  """x̂0 = c_skip(t)·x_t + c_out(t)·F(c_in(t)·x_t, c_noise(t), [xT], [z], [label])."""

  bridge: Bridge
  module: nn.Module
  conditional: bool = False

  def __call__(self, params, x_t, t, xT=None, z=None, label=None, rng=None):
    c_in, c_skip, c_out = self.bridge.precond_coeffs(t)
    if self.conditional and xT is None:
      raise ValueError("a conditional (DDBM-style) network needs xT")
    out = self.module.apply(
        {"params": params}, bcast(c_in, x_t) * x_t, self.bridge.c_noise(t),
        cond=xT if self.conditional else None, z=z, label=label, train=rng is not None,
        rngs=None if rng is None else {"dropout": rng})
    return bcast(c_skip, x_t) * x_t + bcast(c_out, x_t) * out.astype(x_t.dtype)

  def init(self, key, x, *, z_channels: int = 0, label=None) -> Any:
    """Parameters for inputs shaped like x (adds z input channels when z_channels > 0)."""
    t = jnp.full((x.shape[0],), 1.0, jnp.float32)
    z = None if not z_channels else jnp.zeros(x.shape[:-1] + (z_channels,), x.dtype)
    cond = x if self.conditional else None
    return self.module.init(key, x, self.bridge.c_noise(t), cond=cond, z=z, label=label)["params"]


def widen_like(teacher_params, target_params, key=None, new_scale: float = 0.0):
  """Copies teacher parameters into a tree shaped like target_params, zero-padding widened inputs.

  Used to give a generator extra (noise) input channels whose weights start at zero, so that at
  initialisation it computes exactly what the teacher does. A leaf may differ from the teacher's
  only by being larger along one axis (the input-feature axis of the first layer); the new slice is
  zero (the paper's choice), or N(0, new_scale²) when new_scale > 0, which breaks the symmetry that
  otherwise leaves the noise weights with a zero expected gradient at the start. Any other mismatch
  is an error naming the parameter.
  """
  flat_t = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(teacher_params)}
  flat_g = jax.tree_util.tree_leaves_with_path(target_params)
  if set(flat_t) != {jax.tree_util.keystr(k) for k, _ in flat_g}:
    missing = sorted({jax.tree_util.keystr(k) for k, _ in flat_g} ^ set(flat_t))
    raise ValueError(f"teacher and target parameter trees differ at {missing[:5]}")
  out = []
  for path, g in flat_g:
    name = jax.tree_util.keystr(path)
    t = jnp.asarray(flat_t[name])
    if t.shape == g.shape:
      out.append(t.astype(g.dtype))
      continue
    diff = [i for i, (a, b) in enumerate(zip(t.shape, g.shape)) if a != b]
    if len(t.shape) != len(g.shape) or len(diff) != 1 or g.shape[diff[0]] < t.shape[diff[0]]:
      raise ValueError(f"cannot widen teacher parameter {name} of shape {t.shape} to {g.shape}")
    ax = diff[0]
    extra_shape = list(g.shape)
    extra_shape[ax] = g.shape[ax] - t.shape[ax]
    extra = jnp.zeros(extra_shape, g.dtype)
    if new_scale > 0:
      if key is None:
        raise ValueError("widen_like needs a key when new_scale > 0")
      extra = new_scale * jax.random.normal(jax.random.fold_in(key, len(out)), extra_shape, g.dtype)
    out.append(jnp.concatenate([t.astype(g.dtype), extra], axis=ax))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target_params), out)
