"""Image degradations x0 -> xT, implemented once for the data pipelines and evaluation.

Images are float32 numpy arrays in [-1, 1], NHWC or HWC. Every degradation is deterministic given
its seed (most ignore it; only inpainting draws noise):

- ``sr4_bicubic``: antialiased bicubic downsampling (Keys kernel, a = -0.5, stretched by the factor
  as in PIL / MATLAB ``imresize``), then nearest upsampling back to full size, as I2SB feeds its
  network a full-size input. Output clipped to [-1, 1].
- ``sr4_pool``: average pooling, then nearest upsampling (I2SB's "sr4x-pool").
- ``jpeg``: a real JPEG codec round trip through PIL (4:2:0 chroma subsampling, PIL's default), on
  the image quantised to uint8.
- ``inpaint_center``: I2SB's centre mask; a square hole, filled with standard Gaussian noise (data
  scale, not clipped: I2SB's ``x * (1 - mask) + mask * randn``). Returns the mask too, 1 = unknown.
- ``edges``: Canny edges of the luminance, drawn black (-1) on white (+1) in every channel, the
  sketch input of sketch -> image tasks (edges2handbags style).
- ``none``: xT = x0 (unconditional generation / sanity runs).

``make_degradation(name, **options)`` gives ``f(x0_NHWC, seed) -> {"xT": ..., ["mask": ...]}``.
"""
from __future__ import annotations

import functools
import io
import math
from typing import Callable, Optional

import numpy as np

# ---------------------------------------------------------------------- helpers


def _as_batch(x) -> tuple[np.ndarray, bool]:
  """NHWC float32 view of x, and whether x was a single HWC image."""
  x = np.asarray(x, np.float32)
  if x.ndim == 3:
    return x[None], True
  if x.ndim == 4:
    return x, False
  raise ValueError(f"expected an HWC or NHWC image array, got shape {x.shape}")


def _unbatch(x: np.ndarray, single: bool) -> np.ndarray:
  return x[0] if single else x


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] (rounded, clipped)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(u) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return np.asarray(u, np.float32) / 127.5 - 1.0


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
  """The Keys cubic convolution kernel (a = -0.5 is PIL's and MATLAB's bicubic)."""
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def resize_matrix(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
  """[n_out, n_in] bicubic resampling matrix, built the way PIL builds its coefficients.

  Output pixel i is centred at (i + 0.5) * scale in input coordinates, scale = n_in / n_out. For
  downscaling the kernel is stretched by the scale (antialiasing); the window is truncated at the
  borders and the weights renormalised to sum to one.
  """
  if n_in < 1 or n_out < 1:
    raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
  scale = n_in / n_out
  stretch = max(scale, 1.0)
  support = 2.0 * stretch
  mat = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    center = (i + 0.5) * scale
    lo = max(int(math.floor(center - support + 0.5)), 0)
    hi = min(int(math.floor(center + support + 0.5)), n_in)
    j = np.arange(lo, hi)
    w = _keys_cubic((j - center + 0.5) / stretch, a)
    mat[i, lo:hi] = w / w.sum()
  return mat


@functools.lru_cache(maxsize=64)
def _resize_matrix_f32(n_in: int, n_out: int) -> np.ndarray:
  m = resize_matrix(n_in, n_out).astype(np.float32)
  m.setflags(write=False)
  return m


def resize_bicubic(x, height: int, width: int) -> np.ndarray:
  """Separable antialiased bicubic resize of HWC / NHWC float images (no clipping)."""
  xb, single = _as_batch(x)
  mh = _resize_matrix_f32(xb.shape[1], int(height))
  mw = _resize_matrix_f32(xb.shape[2], int(width))
  y = np.tensordot(mh, xb, axes=([1], [1]))  # [height, N, W, C] (BLAS, unlike plain einsum)
  y = np.tensordot(mw, y, axes=([1], [2]))  # [width, height, N, C]
  return _unbatch(np.ascontiguousarray(y.transpose(2, 1, 0, 3)), single)


def _check_divisible(xb: np.ndarray, factor: int) -> None:
  if factor < 1 or xb.shape[1] % factor or xb.shape[2] % factor:
    raise ValueError(f"image size {xb.shape[1]}x{xb.shape[2]} is not divisible by factor {factor}")


def _nearest_up(xb: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(xb, factor, axis=1), factor, axis=2)


# ---------------------------------------------------------------------- degradations


@functools.lru_cache(maxsize=16)
def i2sb_bicubic_matrix(n: int, factor: int = 4) -> np.ndarray:
  """[n // factor, n] float32: I2SB's bicubic SR operator along one axis (its corruption/
  superresolution.py, from DDRM's SRConv), rebuilt from its definition.

  A 4·factor-tap Keys kernel (a = −0.5) sampled at offsets (m − 2·factor + ½)/factor and normalised
  to sum 1; output pixel i centred between input pixels factor·i + factor/2 − 1 and + factor/2;
  taps beyond the border mirrored (symmetric padding, not renormalised as PIL does); and, as the
  original applies it through its SVD, singular values below 3e-2 set to zero.
  """
  if n % factor:
    raise ValueError(f"image side {n} is not divisible by the SR factor {factor}")
  taps = 4 * factor
  k = _keys_cubic((np.arange(taps) - taps // 2 + 0.5) / factor)
  k = k / k.sum()
  mat = np.zeros((n // factor, n), np.float64)
  for c in range(factor // 2, n + factor // 2, factor):
    for j in range(c - taps // 2, c + taps // 2):
      jj = -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)
      mat[c // factor, jj] += k[j - c + taps // 2]
  u, sv, vt = np.linalg.svd(mat, full_matrices=False)
  sv = np.where(sv < 3e-2, 0.0, sv)
  out = ((u * sv) @ vt).astype(np.float32)
  out.setflags(write=False)
  return out


def sr4_bicubic(x, factor: int = 4) -> np.ndarray:
  """I2SB's bicubic 4x SR corruption: its bicubic operator (`i2sb_bicubic_matrix`) along both axes,
  nearest upsampling back; no clipping (the original does not clip). Within 2/255 of PIL's
  antialiased bicubic away from the borders; at the borders the original mirrors its taps."""
  xb, single = _as_batch(x)
  _check_divisible(xb, factor)
  mh = i2sb_bicubic_matrix(xb.shape[1], factor)
  mw = i2sb_bicubic_matrix(xb.shape[2], factor)
  low = np.einsum("ih,nhwc->niwc", mh, xb.astype(np.float32), optimize=True)
  low = np.einsum("jw,niwc->nijc", mw, low, optimize=True)
  return _unbatch(_nearest_up(low.astype(np.float32), factor), single)


def sr4_pool(x, factor: int = 4) -> np.ndarray:
  """Average pooling over ``factor`` x ``factor`` blocks, nearest upsampling back."""
  xb, single = _as_batch(x)
  _check_divisible(xb, factor)
  n, h, w, c = xb.shape
  low = xb.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
  return _unbatch(_nearest_up(low, factor).astype(np.float32), single)


def jpeg(x, quality: int, seed: Optional[int] = None) -> np.ndarray:
  """JPEG encode / decode at ``quality`` (1..95) with PIL. Deterministic; ``seed`` is unused."""
  del seed
  from PIL import Image

  if not 1 <= int(quality) <= 100:
    raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
  xb, single = _as_batch(x)
  if xb.shape[-1] not in (1, 3):
    raise ValueError(f"JPEG needs 1 or 3 channels, got {xb.shape[-1]}")
  out = np.empty_like(xb)
  for i, img in enumerate(to_uint8(xb)):
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    dec = np.asarray(Image.open(buf).convert(pil.mode))
    out[i] = from_uint8(dec.reshape(img.shape))
  return _unbatch(out, single)


def center_mask(height: int, width: int, hole: int) -> np.ndarray:
  """[H, W, 1] float32 mask, 1 inside a centred ``hole`` x ``hole`` square (the unknown region)."""
  if not 0 < hole <= min(height, width):
    raise ValueError(f"hole size {hole} must be in (0, {min(height, width)}] for {height}x{width}")
  top, left = (height - hole) // 2, (width - hole) // 2
  mask = np.zeros((height, width, 1), np.float32)
  mask[top:top + hole, left:left + hole] = 1.0
  return mask


def center_inpaint(x, hole: Optional[int] = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """I2SB centre inpainting: ``xT = x * (1 - mask) + mask * N(0, 1)``; returns ``(xT, mask)``.

  ``hole`` defaults to half the image side (I2SB's 128 at 256x256). The noise comes from
  ``np.random.default_rng(seed)``; the mask has shape [..., H, W, 1] with 1 in the hole.
  """
  xb, single = _as_batch(x)
  n, h, w, c = xb.shape
  hole = min(h, w) // 2 if hole is None else int(hole)
  mask = center_mask(h, w, hole)
  noise = np.random.default_rng(seed).standard_normal(xb.shape, dtype=np.float32)
  xt = xb * (1.0 - mask) + mask * noise
  masks = np.broadcast_to(mask, (n, h, w, 1)).copy()
  return _unbatch(xt.astype(np.float32), single), _unbatch(masks, single)


def edges(x, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
  """Canny edges of the luminance as a black-on-white sketch in [-1, 1] (same channels as x).

  ``sigma`` is the Gaussian smoothing of Canny; ``low`` / ``high`` are its hysteresis thresholds on
  the gradient magnitude of the [0, 1] luminance. Deterministic.
  """
  from skimage.feature import canny

  xb, single = _as_batch(x)
  c = xb.shape[-1]
  img01 = (np.clip(xb, -1.0, 1.0) + 1.0) / 2.0
  if c == 3:
    lum = img01 @ np.asarray([0.299, 0.587, 0.114], np.float32)
  elif c == 1:
    lum = img01[..., 0]
  else:
    raise ValueError(f"edges needs 1 or 3 channels, got {c}")
  out = np.empty_like(xb)
  for i in range(len(xb)):
    e = canny(lum[i].astype(np.float64), sigma=sigma, low_threshold=low, high_threshold=high)
    out[i] = np.where(e, -1.0, 1.0)[..., None]
  return _unbatch(out, single)


# ---------------------------------------------------------------------- registry

DegradeFn = Callable[[np.ndarray, int], dict]

# The registry's functions are module-level functions bound with functools.partial, so they pickle
# into grain worker processes.


def _apply_sr_bicubic(x, seed, factor=4):
  del seed
  return {"xT": sr4_bicubic(x, factor)}


def _apply_sr_pool(x, seed, factor=4):
  del seed
  return {"xT": sr4_pool(x, factor)}


def _apply_jpeg(x, seed, quality=10):
  return {"xT": jpeg(x, quality, seed)}


def _apply_inpaint(x, seed, hole=None):
  xt, mask = center_inpaint(x, hole, seed)
  return {"xT": xt, "mask": mask}


def _apply_edges(x, seed, sigma=1.0, low=0.1, high=0.2):
  del seed
  return {"xT": edges(x, sigma, low, high)}


def _apply_none(x, seed):
  del seed
  return {"xT": np.array(x, np.float32, copy=True)}


# name -> (builder, the keyword options it accepts)
DEGRADATIONS: dict[str, tuple[DegradeFn, tuple[str, ...]]] = {
    "sr4_bicubic": (_apply_sr_bicubic, ("factor",)),
    "sr4_pool": (_apply_sr_pool, ("factor",)),
    "jpeg5": (functools.partial(_apply_jpeg, quality=5), ()),
    "jpeg10": (functools.partial(_apply_jpeg, quality=10), ()),
    "jpeg": (_apply_jpeg, ("quality",)),
    "inpaint_center": (_apply_inpaint, ("hole",)),
    "edges": (_apply_edges, ("sigma", "low", "high")),
    "none": (_apply_none, ()),
}


def degradation_options(name: str) -> tuple[str, ...]:
  """The keyword options ``make_degradation(name, ...)`` accepts."""
  _check_name(name)
  return DEGRADATIONS[name][1]


def _check_name(name: str) -> None:
  if name not in DEGRADATIONS:
    raise ValueError(f"unknown degradation {name!r}; valid names: {sorted(DEGRADATIONS)}")


def make_degradation(name: str, **options) -> DegradeFn:
  """``f(x0, seed) -> {"xT": ..., ["mask": ...]}`` for a registered degradation name.

  x0 is float32 [-1, 1], NHWC or HWC; outputs keep its layout. Options a degradation does not
  accept raise ValueError (a typo should not silently fall back to a default).
  """
  _check_name(name)
  fn, allowed = DEGRADATIONS[name]
  unknown = set(options) - set(allowed)
  if unknown:
    raise ValueError(f"degradation {name!r} accepts options {list(allowed)}, got {sorted(unknown)}")
  return functools.partial(fn, **options)
