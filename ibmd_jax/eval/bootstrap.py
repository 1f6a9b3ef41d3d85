"""Bootstrap intervals for image metrics, paired over the evaluation images.

Every set of outputs (a sampler at an NFE, a student, the degraded input) was produced from the same
N evaluation images, in the same order, as the reference set. A bootstrap replicate draws N image
indices with replacement (multinomial counts c [N]) and recomputes every metric of every set, and
of the reference, on that same draw. So for one replicate, the metrics of two sets are computed on
the same images, and the interval of a *difference* (student minus teacher) is much narrower than
the two marginal intervals: `compare` gives it, and the benchmark's checks use it.

Metrics, as functions of the counts (replicate 0 is the full sample, c = 1):
  psnr, ssim  the count-weighted mean of the per-image values;
  fd          Fréchet distance between the weighted feature Gaussians (ddof 1);
  kid         the polynomial-kernel MMD² (features standardised by the reference's mean and
              standard deviation) over all N images (no subsets): each set
              against itself over pairs of distinct images, (cᵀKc − Σ c_i² K_ii) / (N² − Σ c_i²),
              the cross term over all pairs, cᵀK_xy c / N²;
  swd         sliced Wasserstein distance between multi-scale 7×7 patch descriptors (Laplacian
              pyramid levels down to 16 px, `patches` random patches per image, descriptors
              normalised per channel over their set), each direction's W1 = ∫|F_a − F_b| computed
              from one merged sort with the draw's counts as weights, averaged over `directions`.
              The normalisation is that of the full set (not redone per replicate).
Intervals: the replicates' 2.5 and 97.5 percentiles, shifted by (θ̂ − their median), over `reps`
replicates (default 200, 95 %). A draw repeats images (about 63 % distinct), which biases the
distribution metrics of a replicate upwards (FD, KID, SWD grow with fewer distinct samples); the
shift keeps the bootstrap's spread and removes that bias, so the interval is centred on the
full-sample value θ̂ where a plain percentile interval could lie entirely above it. For paired
differences (`compare`) the two sets' biases mostly cancel and the shift is small.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax.eval import metrics

METRICS = ("psnr", "ssim", "swd", "fd", "kid")
# +1: higher is better
SIGN = {"psnr": +1, "ssim": +1, "swd": -1, "fd": -1, "kid": -1}


def counts(n: int, reps: int, seed: int = 0) -> np.ndarray:
  """[reps + 1, n] multinomial draw counts; row 0 is the full sample (all ones)."""
  rng = np.random.default_rng(seed)
  c = rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)
  return np.concatenate([np.ones((1, n)), c], axis=0)


def _weighted_stats(f: np.ndarray, c: np.ndarray):
  """Means [R, D] and covariances [R, D, D] (ddof 1) of features f [N, D] under counts c [R, N]."""
  n = c.shape[1]
  mu = c @ f / n
  out = np.empty((len(c), f.shape[1], f.shape[1]))
  for r in range(len(c)):
    d = f - mu[r]
    out[r] = (d.T * c[r]) @ d / (n - 1)
  return mu, out


def _fd_many(mu_a, cov_a, mu_b, sqrt_b, tr_b):
  """FD per replicate given the reference's PSD square roots and covariance traces."""
  out = np.empty(len(mu_a))
  for r in range(len(mu_a)):
    m = sqrt_b[r] @ cov_a[r] @ sqrt_b[r]
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr = float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
    diff = mu_a[r] - mu_b[r]
    out[r] = diff @ diff + np.trace(cov_a[r]) + tr_b[r] - 2.0 * tr
  return out


def _kernel(a, b):
  return (a @ b.T / a.shape[1] + 1.0) ** 3


def _u_stat(k: np.ndarray, c: np.ndarray) -> np.ndarray:
  """Mean of k over pairs of distinct images of each draw, weighted by their counts."""
  d = np.diag(k)
  pairs = c.sum(1) ** 2 - (c * c).sum(1)
  return (np.einsum("ri,ij,rj->r", c, k, c) - (c * c) @ d) / pairs


# ------------------------------------------------------------------------------------------ SWD


def _descriptors(images: np.ndarray, patches: int, min_resolution: int, seed: int):
  """Per pyramid level: (descriptors [N * patches, 7*7*C] normalised over the set)."""
  x = np.asarray(images, np.float32)
  pyr = metrics.laplacian_pyramid(x, metrics.num_levels(min(x.shape[1:3]), min_resolution))
  return [metrics._patch_descriptors(lvl, 7, patches, np.random.default_rng([seed, i, 0]))
          for i, lvl in enumerate(pyr)]


@jax.jit
def _w1_weighted(pa, pb, c):
  """W1 per replicate and direction: pa [M, K], pb [M, K] projections of the two sets' patches
  (patch m of image m // P), c [R, N] counts -> [R] mean over the K directions."""
  m = pa.shape[0]
  n = c.shape[1]
  per = m // n
  img = jnp.concatenate([jnp.arange(m) // per] * 2)
  side = jnp.concatenate([jnp.ones(m), -jnp.ones(m)]) / m

  def one(va, vb):
    v = jnp.concatenate([va, vb])
    o = jnp.argsort(v)
    vs = v[o]
    w = c[:, img[o]] * side[o][None]  # [R, 2M]
    cdf = jnp.cumsum(w, axis=1)[:, :-1]
    return jnp.sum(jnp.abs(cdf) * jnp.diff(vs)[None], axis=1)

  return jnp.mean(jax.lax.map(lambda ab: one(*ab), (pa.T, pb.T)), axis=0)


# ------------------------------------------------------------------------------------------ API


@dataclasses.dataclass
class Bootstrap:
  """Replicates [reps + 1] of every metric of every added set against one reference set."""

  reference: np.ndarray  # [N, H, W, C] in [-1, 1]
  features: Callable = metrics.band_features
  reps: int = 200
  seed: int = 0
  patches: int = 16
  directions: int = 128
  min_resolution: int = 16

  def __post_init__(self):
    ref = np.asarray(self.reference, np.float32)
    self.n = len(ref)
    self.c = counts(self.n, self.reps, self.seed)
    self.ref_feats = metrics.compute_features(ref, self.features)
    # KID's kernel sees features standardised by the reference's mean and spread, so that its
    # cubic kernel is O(1) whatever the features' units (FD uses them as they are)
    self.loc = self.ref_feats.mean(0)
    self.scale = self.ref_feats.std(0) + 1e-8
    mu, cov = _weighted_stats(self.ref_feats, self.c)
    self.ref_mu = mu
    self.ref_sqrt = np.stack([metrics._psd_sqrt(s) for s in cov])
    self.ref_tr = np.trace(cov, axis1=1, axis2=2)  # once, not once per added set
    self.ref_std = (self.ref_feats - self.loc) / self.scale
    self.k_yy = _u_stat(_kernel(self.ref_std, self.ref_std), self.c)
    self.ref_desc = _descriptors(ref, self.patches, self.min_resolution, self.seed)
    rng = np.random.default_rng([self.seed, 99])
    self.dirs = []
    for d in self.ref_desc:
      u = rng.standard_normal((d.shape[1], self.directions)).astype(np.float32)
      self.dirs.append(u / np.linalg.norm(u, axis=0, keepdims=True))
    self.ref_proj = [jnp.asarray(d @ u) for d, u in zip(self.ref_desc, self.dirs)]
    self.reps_of: dict[str, dict[str, np.ndarray]] = {}

  def add(self, name: str, images: np.ndarray, psnr: Optional[np.ndarray] = None,
          ssim: Optional[np.ndarray] = None) -> dict:
    """Replicates of a set of N outputs (paired with the reference, image i with image i)."""
    x = np.asarray(images, np.float32)
    if x.shape != np.shape(self.reference):
      raise ValueError(f"set {name!r} has shape {x.shape}, the reference {np.shape(self.reference)}")
    ref = np.asarray(self.reference, np.float32)
    out = {}
    psnr = np.asarray(metrics.psnr(x, ref)) if psnr is None else np.asarray(psnr, np.float64)
    if np.isfinite(psnr).all():
      out["psnr"] = self.c @ psnr / self.n
    ssim = np.asarray(metrics.ssim(x, ref)) if ssim is None else np.asarray(ssim, np.float64)
    out["ssim"] = self.c @ ssim / self.n
    f = metrics.compute_features(x, self.features)
    mu, cov = _weighted_stats(f, self.c)
    out["fd"] = _fd_many(mu, cov, self.ref_mu, self.ref_sqrt, self.ref_tr)
    fs = (f - self.loc) / self.scale
    out["kid"] = (_u_stat(_kernel(fs, fs), self.c) + self.k_yy
                  - 2.0 * np.einsum("ri,ij,rj->r", self.c, _kernel(fs, self.ref_std), self.c)
                  / self.n**2)
    desc = _descriptors(x, self.patches, self.min_resolution, self.seed)
    cj = jnp.asarray(self.c, jnp.float32)
    swd = [np.asarray(_w1_weighted(jnp.asarray(d @ u), rp, cj), np.float64)
           for d, u, rp in zip(desc, self.dirs, self.ref_proj)]
    out["swd"] = np.mean(swd, axis=0)
    self.reps_of[name] = out
    return summary(out)

  def compare(self, a: str, b: str, metric: str, scale_b: float = 1.0) -> dict:
    """Interval of metric(a) − scale_b · metric(b) on the same draws."""
    return summary({metric: self.reps_of[a][metric] - scale_b * self.reps_of[b][metric]})[metric]


def summary(reps: dict, level: float = 0.95) -> dict:
  """{metric: {'value': full-sample value, 'lo', 'hi': the recentred percentile interval}}."""
  q = (1.0 - level) / 2 * 100
  out = {}
  for m, v in reps.items():
    lo, med, hi = np.percentile(v[1:], [q, 50, 100 - q])
    out[m] = {"value": float(v[0]), "lo": float(v[0] + lo - med), "hi": float(v[0] + hi - med)}
  return out
