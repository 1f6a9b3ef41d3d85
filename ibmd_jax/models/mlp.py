"""A residual MLP bridge network for vector (toy) data, following the shared calling convention."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(c_noise: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of the raw time input, [B] -> [B, dim] (guided-diffusion's layout)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = c_noise.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class MLP(nn.Module):
  """x̂0 network for [B, D] data: input projection, time embedding, pre-norm residual blocks."""

  width: int = 256
  depth: int = 3
  time_dim: int = 64
  # c_noise of the bridges spans very different ranges (I2SB: 0..1000, DDBM: 250·log t ≈ −2300..0);
  # the embedding is taken of c_noise * time_scale; None = 1 / bridge.c_noise_span, set by
  # ibmd_jax.models.build_model from the bridge that feeds the network.
  time_scale: Optional[float] = None
  num_classes: Optional[int] = None
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c_noise, cond=None, z=None, label=None, train: bool = False):
    d = x.shape[-1]
    parts = [x] + [p for p in (cond, z) if p is not None]
    h = jnp.concatenate(parts, axis=-1).astype(self.dtype)
    h = nn.Dense(self.width, dtype=self.dtype, name="in_proj")(h)
    if self.time_scale is None:
      raise ValueError("MLP.time_scale is None: build the network with "
                       "ibmd_jax.models.build_model(cfg, bridge), which sets it from the bridge")
    temb = timestep_embedding(c_noise * self.time_scale, self.time_dim)
    temb = nn.Dense(self.width, dtype=self.dtype, name="time_1")(temb.astype(self.dtype))
    temb = nn.Dense(self.width, dtype=self.dtype, name="time_2")(nn.silu(temb))
    if self.num_classes is not None:
      if label is None:
        raise ValueError("this network is class-conditional: pass label")
      temb = temb + nn.Embed(self.num_classes, self.width, name="label_emb")(label).astype(self.dtype)
    for i in range(self.depth):
      y = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(h)
      y = nn.Dense(self.width, dtype=self.dtype, name=f"dense_{i}_a")(nn.silu(y) + temb)
      y = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(y))
      y = nn.Dense(self.width, dtype=self.dtype, name=f"dense_{i}_b")(y)
      h = h + y
    h = nn.silu(nn.LayerNorm(dtype=self.dtype, name="out_norm")(h))
    return nn.Dense(d, dtype=self.dtype, name="out")(h).astype(jnp.float32)
