"""Weighted bridge-matching regression, shared by teacher training, the critic and the generator."""
from __future__ import annotations

import jax.numpy as jnp

from ibmd_jax.bridges import bcast


def per_sample_sq(pred, target, mask=None):
  """‖pred − target‖² per sample, as a mean over elements (the MSE that I2SB/DDBM optimise).

  With an inpainting mask (1 = unknown pixels) only the hole counts, exactly as I2SB masks both
  prediction and label before its MSE.
  """
  diff = pred - target
  if mask is not None:
    diff = diff * mask
  return jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=-1)


def weighted_mse(pred, target, lam, mask=None):
  """E_b λ(t_b) ‖pred_b − target_b‖²."""
  return jnp.mean(lam * per_sample_sq(pred, target, mask))


def paste_known(x, xT, mask):
  """Known pixels (mask = 0) are copied from xT; identity without a mask."""
  if mask is None:
    return x
  return (1.0 - mask) * xT + mask * x


__all__ = ["per_sample_sq", "weighted_mse", "paste_known", "bcast"]
