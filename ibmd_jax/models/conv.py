"""A convolution whose weight gradient is a sum of matmuls (for XLA:CPU).

XLA's CPU backend computes the weight gradient of a convolution (the "backward filter"
convolution) about ten times slower than the forward pass: measured on the 2-core development
machine for a 3x3, 64 -> 64 channel convolution over a 32 x 32 x 32 batch, forward 40 ms
(60 GFLOP/s), input gradient 48 ms, weight gradient 505 ms (4.8 GFLOP/s). Written as k*k
matmuls of shifted inputs against the output gradient, the same weight gradient takes about 80
ms, and a UNet training step about a third of the time (bench/conv_grad.py). GPUs and TPUs have
fast backward-filter convolutions: keep ``conv_grad='xla'`` there.

`conv_general_dilated` is a drop-in for ``flax.linen.Conv(conv_general_dilated=...)``: plain
NHWC / HWIO convolutions (stride 1, no dilation, one group, explicit padding) take the matmul
weight gradient, everything else falls through to ``jax.lax.conv_general_dilated``. The forward
pass and the input gradient are XLA's own.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

CONV_GRADS = ("xla", "matmul")
_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, padding, precision):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_mm(x, w, padding, precision):
  return _conv(x, w, padding, precision)


def _fwd(x, w, padding, precision):
  return _conv(x, w, padding, precision), (x, w)


def _bwd(padding, precision, res, g):
  x, w = res
  _, vjp_x = jax.vjp(lambda x_: _conv(x_, w, padding, precision), x)
  (dx,) = vjp_x(g)
  kh, kw = w.shape[:2]
  h, wd = g.shape[1:3]
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  g2 = g.reshape(-1, g.shape[-1])
  rows = []
  for i in range(kh):
    cols = []
    for j in range(kw):
      xs = xp[:, i:i + h, j:j + wd].reshape(-1, x.shape[-1])
      cols.append(jnp.matmul(xs.T, g2, precision=precision, preferred_element_type=jnp.float32))
    rows.append(jnp.stack(cols))
  return dx, jnp.stack(rows).astype(w.dtype)


_conv_mm.defvjp(_fwd, _bwd)


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
  if dimension_numbers is None:
    return False
  want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
  return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == want


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """lax.conv_general_dilated, with the matmul weight gradient where it applies (module doc)."""
  plain = (lhs.ndim == 4 and tuple(window_strides) == (1, 1)
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type is None and not isinstance(padding, str)
           and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision=precision,
                                    preferred_element_type=preferred_element_type)
  pad = tuple((int(a), int(b)) for a, b in padding)
  return _conv_mm(lhs, rhs, pad, precision)


def conv_fn(conv_grad: str):
  """The flax Conv `conv_general_dilated` for a UNet's conv_grad option."""
  if conv_grad == "xla":
    return lax.conv_general_dilated
  if conv_grad == "matmul":
    return conv_general_dilated
  raise ValueError(f"conv_grad must be one of {CONV_GRADS}, got {conv_grad!r}")
