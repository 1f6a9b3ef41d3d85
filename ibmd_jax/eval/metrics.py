"""Image-quality metrics that need no pretrained weights.

Images are float NHWC in [-1, 1] (jax or numpy arrays).

* Paired, per image: `psnr`, `ssim` (Gaussian-window SSIM of Wang et al. 2004, equal to
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=2, channel_axis=-1)``), both jit-able jax.numpy.
* Unpaired, between two sets: `swd` (sliced Wasserstein distance between multi-scale patch
  descriptors, the Progressive-GAN metric), and on features: `frechet_distance` of
  `feature_stats`, `kid` (unbiased polynomial-kernel MMD^2) and `inception_score` of class logits.
* `pixel_features`: a fixed-seed, weight-free feature extractor (pooled random-filter responses
  at several scales plus colour statistics) so that FD/KID run with nothing downloaded. The
  distribution metrics take any callable (e.g. the Inception of ``ibmd_jax.eval.inception``) or
  precomputed features instead (`distribution_metrics`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Features = Union[np.ndarray, Callable[[Any], Any]]


# ------------------------------------------------------------------------------ paired metrics


def psnr(pred, ref, data_range: float = 2.0):
  """Peak signal-to-noise ratio in dB per image: [N, H, W, C] x2 -> [N] (inf where equal)."""
  pred = jnp.asarray(pred, jnp.float32)
  ref = jnp.asarray(ref, jnp.float32)
  mse = jnp.mean(jnp.square(pred - ref), axis=tuple(range(1, pred.ndim)))
  return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_taps(sigma: float, truncate: float) -> np.ndarray:
  """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1."""
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (t / sigma) ** 2)
  return w / w.sum()


def _filter_valid(x, taps: np.ndarray):
  """Separable 'valid' filtering over H and W of [N, H, W, C] by shifted sums.

  Shifted sums are exact float32 arithmetic (no accelerator matmul precision to worry about).
  The scikit-image reference filters with reflected borders and then drops `radius` pixels on each
  side, i.e. keeps exactly the pixels whose window lies inside the image, which is this.
  """
  k = len(taps)
  h = x.shape[1] - k + 1
  y = sum(float(taps[i]) * x[:, i:i + h] for i in range(k))
  w = x.shape[2] - k + 1
  return sum(float(taps[i]) * y[:, :, i:i + w] for i in range(k))


@functools.partial(jax.jit, static_argnames=("data_range", "sigma", "k1", "k2"))
def ssim(pred, ref, data_range: float = 2.0, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03):
  """Mean SSIM per image, [N, H, W, C] x2 -> [N]; Gaussian window (sigma 1.5, 11 taps).

  Averaged over channels and over the pixels whose 11x11 window lies inside the image (H, W >= 11).
  """
  taps = _gaussian_taps(sigma, truncate=3.5)
  if pred.shape[1] < len(taps) or pred.shape[2] < len(taps):
    raise ValueError(f"SSIM needs images of at least {len(taps)}x{len(taps)}, got {pred.shape}")
  x = jnp.asarray(pred, jnp.float32)
  y = jnp.asarray(ref, jnp.float32)
  # one filtering pass over the five local moments, stacked on channels
  c = x.shape[-1]
  moments = _filter_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), taps)
  ux, uy, uxx, uyy, uxy = (moments[..., i * c:(i + 1) * c] for i in range(5))
  vx = uxx - ux * ux
  vy = uyy - uy * uy
  vxy = uxy - ux * uy
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))


# ------------------------------------------------------------------------------ SWD


_BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


def _blur5(x, xp=np):
  """Separable 5-tap binomial blur of [N, H, W, C] with mirrored borders (edge not repeated);
  xp: the array module (numpy, or jax.numpy inside jitted features)."""
  h, w = x.shape[1:3]
  p = xp.pad(x, ((0, 0), (2, 2), (0, 0), (0, 0)), mode="reflect")
  x = sum(_BINOMIAL5[i] * p[:, i:i + h] for i in range(5))
  p = xp.pad(x, ((0, 0), (0, 0), (2, 2), (0, 0)), mode="reflect")
  return sum(_BINOMIAL5[i] * p[:, :, i:i + w] for i in range(5))


def _pyr_down(x, xp=np):
  return _blur5(x, xp)[:, ::2, ::2]


def _pyr_up(x, shape: Sequence[int], xp=np):
  """Zero-insertion x2 upsampling to `shape`, then the blur scaled by 4 (keeps the mean)."""
  n, h, w, c = x.shape
  up = xp.stack([x, xp.zeros_like(x)], axis=2).reshape(n, 2 * h, w, c)[:, :shape[1]]
  up = xp.stack([up, xp.zeros_like(up)], axis=3).reshape(n, shape[1], 2 * w, c)[:, :, :shape[2]]
  return 4.0 * _blur5(up, xp)


def num_levels(size: int, min_resolution: int) -> int:
  """Pyramid levels from `size` halving down to `min_resolution` (the last is the low-pass)."""
  levels = 1
  while size // 2 >= min_resolution:
    size //= 2
    levels += 1
  return levels


def laplacian_pyramid(x, count: int, xp=np) -> list:
  """Finest first: count - 1 band-pass levels, then the low-pass residual."""
  levels = []
  cur = xp.asarray(x, xp.float32)
  for _ in range(count - 1):
    down = _pyr_down(cur, xp)
    levels.append(cur - _pyr_up(down, cur.shape, xp))
    cur = down
  levels.append(cur)
  return levels


def _patch_descriptors(level: np.ndarray, patch: int, per_image: int,
                       rng: np.random.Generator) -> np.ndarray:
  """`per_image` random patch x patch windows per image, normalised per channel over the set."""
  n, h, w, c = level.shape
  ys = rng.integers(0, h - patch + 1, size=(n, per_image))
  xs = rng.integers(0, w - patch + 1, size=(n, per_image))
  off = np.arange(patch)
  rows = (ys[..., None, None] + off[:, None])        # [n, P, patch, 1]
  cols = (xs[..., None, None] + off[None, :])        # [n, P, 1, patch]
  idx = np.arange(n)[:, None, None, None]
  d = level[idx, rows, cols]                          # [n, P, patch, patch, C]
  d = d.reshape(n * per_image, patch, patch, c)
  d = d - d.mean(axis=(0, 1, 2), keepdims=True)
  d = d / (d.std(axis=(0, 1, 2), keepdims=True) + 1e-8)
  return d.reshape(n * per_image, -1)


def _sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
  """Mean over unit directions of the 1-D W1 distance between the projected point sets."""
  pa = np.sort(np.ascontiguousarray((a @ directions).T), axis=1)  # sort along contiguous rows
  pb = np.sort(np.ascontiguousarray((b @ directions).T), axis=1)
  return float(np.mean(np.abs(pa - pb)))


def swd(x, y, patch: int = 7, patches_per_image: int = 128, min_resolution: int = 16,
        num_repeats: int = 4, dirs_per_repeat: int = 128, seed: int = 0) -> dict[str, float]:
  """Sliced Wasserstein distance between the multi-scale patch statistics of two image sets.

  As in Progressive GAN (Karras et al. 2018, appendix D): both sets are decomposed into Laplacian
  pyramids down to `min_resolution`; at each level `patches_per_image` random 7x7 neighbourhoods
  per image form descriptors, normalised per colour channel over their own set; the distance
  between the two descriptor sets is the sliced W1 over `num_repeats` x `dirs_per_repeat` random
  unit directions. Positions and directions come from fixed seeds, so equal inputs give equal
  numbers. Returns ``{"<res>px": swd, ..., "mean": average over levels}`` (unscaled; Progressive GAN
  tables show these x 1e3). Sets may differ in size (the larger is subsampled).
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.float32)
  if x.shape[1:] != y.shape[1:]:
    raise ValueError(f"image shapes differ: {x.shape[1:]} vs {y.shape[1:]}")
  levels = num_levels(min(x.shape[1], x.shape[2]), min_resolution)
  if min(x.shape[1], x.shape[2]) < patch:
    raise ValueError(f"images smaller than the {patch}x{patch} patch: {x.shape}")
  px = laplacian_pyramid(x, levels)
  py = laplacian_pyramid(y, levels)
  rng_dirs = np.random.default_rng(seed)
  out: dict[str, float] = {}
  for lvl, (lx, ly) in enumerate(zip(px, py)):
    da = _patch_descriptors(lx, patch, patches_per_image, np.random.default_rng([seed, lvl, 0]))
    db = _patch_descriptors(ly, patch, patches_per_image, np.random.default_rng([seed, lvl, 1]))
    m = min(len(da), len(db))
    if len(da) > m:
      da = da[np.random.default_rng([seed, lvl, 2]).choice(len(da), m, replace=False)]
    if len(db) > m:
      db = db[np.random.default_rng([seed, lvl, 3]).choice(len(db), m, replace=False)]
    dists = []
    for _ in range(num_repeats):
      dirs = rng_dirs.standard_normal((da.shape[1], dirs_per_repeat)).astype(np.float32)
      dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
      dists.append(_sliced_wasserstein(da, db, dirs))
    out[f"{lx.shape[1]}px"] = float(np.mean(dists))
  out["mean"] = float(np.mean(list(out.values())))
  return out


# ------------------------------------------------------------------------------ feature metrics


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and sample covariance [D, D] (ddof 1, as pytorch-fid) in float64."""
  f = np.asarray(feats, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"need [N>=2, D] features, got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eigh") -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, in float64.

  method='eigh' (default) uses tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2), where every
  matrix is symmetric PSD, so negative round-off eigenvalues are clipped instead of producing the
  complex parts that sqrtm of the non-symmetric S1 S2 can; a set against itself gives ~0.
  method='sqrtm' is pytorch-fid's scipy.linalg.sqrtm route (with its diagonal offset on failure).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  diff = mu1 - mu2
  if method == "eigh":
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
  elif method == "sqrtm":
    import scipy.linalg  # pylint: disable=g-import-not-at-top

    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
      offset = np.eye(s1.shape[0]) * 1e-6
      covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    tr_covmean = float(np.trace(np.real(covmean)))
  else:
    raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def kid(f1, f2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
        ) -> tuple[float, float]:
  """Kernel Inception Distance: mean and std over random subsets of the unbiased MMD^2 with the
  polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018). Expected value 0 for two
  samples of one distribution (it can come out slightly negative). subset_size is capped at the
  smaller set's size; when that takes both whole sets, every subset is the same: one is computed
  and the std is nan (no spread to report; ibmd_jax.eval.bootstrap gives intervals)."""
  a = np.asarray(f1, np.float64)
  b = np.asarray(f2, np.float64)
  d = a.shape[1]
  m = min(subset_size, len(a), len(b))
  if m < 2:
    raise ValueError("KID needs at least 2 samples per set")
  rng = np.random.default_rng(seed)
  if m == len(a) == len(b):
    num_subsets = 1
  vals = np.empty(num_subsets)
  for i in range(num_subsets):
    x = a[rng.choice(len(a), m, replace=False)]
    y = b[rng.choice(len(b), m, replace=False)]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    vals[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
               + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2.0 * kxy.mean())
  return float(vals.mean()), (float(vals.std()) if num_subsets > 1 else float("nan"))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` chunks (p(y) per chunk)."""
  z = np.asarray(logits, np.float64)
  logp = z - z.max(axis=1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(logp, splits):
    p = np.exp(part)
    log_py = np.log(p.mean(axis=0, keepdims=True))
    scores.append(np.exp(np.mean(np.sum(p * (part - log_py), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------ features


@functools.lru_cache(maxsize=8)
def _random_filters(seed: int, num_filters: int, kernel_size: int, channels: int) -> np.ndarray:
  """Zero-mean (per filter), unit-norm random filters [k, k, C, F] from a fixed numpy seed."""
  w = np.random.RandomState(seed).standard_normal(
      (kernel_size, kernel_size, channels, num_filters))
  w -= w.mean(axis=(0, 1, 2), keepdims=True)
  w /= np.linalg.norm(w.reshape(-1, num_filters), axis=0)
  return w.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("seed", "num_filters", "kernel_size", "scales"))
def pixel_features(x, seed: int = 0, num_filters: int = 32, kernel_size: int = 5,
                   scales: Sequence[int] = (1, 2, 4)):
  """Weight-free image features, [N, H, W, C] in [-1, 1] -> [N, len(scales) * (2F + 2C)].

  At each scale (average-pooled by 1, 2, 4): the spatial means of relu(r) and relu(-r) for the
  responses r of F fixed random zero-mean unit-norm filters (the energy and polarity of local
  structure along F random directions of patch space: noise raises it, blur lowers it), and each
  channel's mean and standard deviation (colour and contrast). Magnitudes go through a square root
  so that the faint fine-scale energies of smooth regions still move the features, while keeping
  them non-negative and O(0.1-1) like pooled Inception activations, the range the KID kernel
  (x.y/d + 1)^3 expects. Deterministic for a seed, so FD/KID on these features compare sets
  without any downloaded network; they are weaker than Inception features and only comparable
  with themselves (same seed, filters and scales).
  """
  x = jnp.asarray(x, jnp.float32)
  w = jnp.asarray(_random_filters(seed, num_filters, kernel_size, x.shape[-1]))
  feats = []
  for s in scales:
    xs = x if s == 1 else jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1),
                                                (1, s, s, 1), "VALID") / (s * s)
    if min(xs.shape[1], xs.shape[2]) < kernel_size:
      raise ValueError(f"images of {x.shape[1:3]} are too small for scale {s}")
    r = jax.lax.conv_general_dilated(xs, w, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    feats += [jnp.sqrt(jnp.mean(jax.nn.relu(r), axis=(1, 2))),
              jnp.sqrt(jnp.mean(jax.nn.relu(-r), axis=(1, 2))),
              jnp.mean(xs, axis=(1, 2)), jnp.sqrt(jnp.std(xs, axis=(1, 2)))]
  return jnp.concatenate(feats, axis=-1)


@functools.partial(jax.jit, static_argnames=("seed", "num_filters", "min_size"))
def band_features(x, seed: int = 0, num_filters: int = 16, min_size: int = 8):
  """Weight-free features that see sharpness, [N, H, W, C] in [-1, 1] -> [N, 2·F·L + 2C].

  The image's Laplacian pyramid (band-pass levels down to `min_size` pixels, L of them, then the
  low-pass residual); on each band, F fixed random zero-mean 3x3xC filters; per band and filter
  the log energy ½·log(mean r² + 1e-6) and the sparsity log(mean |r|) − ½·log(mean r²) (edges are
  sparse, noise is not); on the residual, each channel's mean and standard deviation. Logs make a
  blur (finer bands lose energy) or added noise (they gain it) a large, roughly scale-free shift:
  at 32x32, FD on these features puts a 5-tap binomial blur of the reference clearly farther away
  than the reference's 4x bicubic-down / nearest-up input (bench: docs/results.md), where the
  pooled random features of `pixel_features` barely separate them.
  """
  x = jnp.asarray(x, jnp.float32)
  levels = num_levels(min(x.shape[1:3]), min_size)
  if levels < 2:
    raise ValueError(f"band_features needs images of at least {2 * min_size}px, got {x.shape}")
  w = jnp.asarray(_random_filters(seed, num_filters, 3, x.shape[-1]))
  pyr = laplacian_pyramid(x, levels, xp=jnp)
  feats = []
  for band in pyr[:-1]:
    r = jax.lax.conv_general_dilated(band, w, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    e = 0.5 * jnp.log(jnp.mean(r * r, axis=(1, 2)) + 1e-6)
    feats += [e, jnp.log(jnp.mean(jnp.abs(r), axis=(1, 2)) + 1e-6) - e]
  low = pyr[-1]
  feats += [jnp.mean(low, axis=(1, 2)), jnp.std(low, axis=(1, 2))]
  return jnp.concatenate(feats, axis=-1)


def compute_features(images, features: Features = pixel_features, batch_size: int = 64
                     ) -> np.ndarray:
  """Features [N, D] as float64 numpy: `features` applied in fixed-size batches (the last one
  padded, so a jitted extractor compiles once), or returned as-is when it is already an array."""
  if not callable(features):
    return np.asarray(features, np.float64)
  images = np.asarray(images)
  n = len(images)
  out = []
  for i in range(0, n, batch_size):
    batch = images[i:i + batch_size]
    k = len(batch)
    if k < batch_size and n > batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - k, axis=0)])
    out.append(np.asarray(jax.device_get(features(batch)), np.float64)[:k])
  return np.concatenate(out, axis=0)


def distribution_metrics(x, y, features: Features = pixel_features, kid_subsets: int = 100,
                         kid_subset_size: int = 1000, seed: int = 0, batch_size: int = 64
                         ) -> dict[str, float]:
  """FD and KID between two image sets (or two feature arrays) under one feature extractor.

  `features` is any callable [N, H, W, C] -> [N, D] (pixel_features by default, or the FID
  Inception's pool features); when it is not callable, x and y are taken to be features already.
  """
  if callable(features):
    fx = compute_features(x, features, batch_size)
    fy = compute_features(y, features, batch_size)
  else:
    fx, fy = np.asarray(x, np.float64), np.asarray(y, np.float64)
  k_mean, k_std = kid(fx, fy, kid_subsets, kid_subset_size, seed)
  return {"fd": frechet_distance(*feature_stats(fx), *feature_stats(fy)),
          "kid": k_mean, "kid_std": k_std}
