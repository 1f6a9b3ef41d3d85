"""Weight-free metrics: PSNR/SSIM against scikit-image, FD/KID/IS against closed forms, and
FD/KID/SWD growing with noise and blur on real photographs (scikit-image's bundled images)."""
import functools
import os

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ibmd_jax.eval import inception, metrics

SSIM_TOL = 1e-4   # absolute, float32 jax vs float64 scikit-image (measured ~2e-7)
PSNR_TOL = 1e-4   # dB


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
  """On a shared 2-core machine OpenBLAS threads spin against each other: the many small KID /
  SWD matmuls run ~30x slower than on one thread."""
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    yield
    return
  with threadpool_limits(1):
    yield


@functools.lru_cache(maxsize=None)
def _photos():
  return (data.astronaut(), data.chelsea(), data.coffee(), data.rocket(),
          data.immunohistochemistry())


def _crops(seed, per_image, size=64):
  """Random size x size crops of the photos, float32 in [-1, 1]."""
  rng = np.random.default_rng(seed)
  out = []
  for im in _photos():
    h, w, _ = im.shape
    for _ in range(per_image):
      y, x = rng.integers(0, h - size), rng.integers(0, w - size)
      out.append(im[y:y + size, x:x + size])
  return np.stack(out).astype(np.float32) / 127.5 - 1.0


def _pairs():
  rng = np.random.default_rng(0)
  a = _crops(3, 1, size=48)
  b = np.clip(a + 0.15 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
  c = np.stack([gaussian_filter(im, (1.5, 1.5, 0)) for im in a]).astype(np.float32)
  return np.concatenate([a, a, a]), np.concatenate([b, c, np.roll(a, 1, axis=0)])


def test_psnr_ssim_match_scikit_image():
  x, y = _pairs()
  got_ssim = np.asarray(metrics.ssim(x, y))
  got_psnr = np.asarray(metrics.psnr(x, y))
  want_ssim = [structural_similarity(x[i].astype(np.float64), y[i].astype(np.float64),
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=2, channel_axis=-1)
               for i in range(len(x))]
  want_psnr = [peak_signal_noise_ratio(y[i].astype(np.float64), x[i].astype(np.float64),
                                       data_range=2) for i in range(len(x))]
  assert got_ssim.shape == got_psnr.shape == (len(x),)
  np.testing.assert_allclose(got_ssim, want_ssim, atol=SSIM_TOL, rtol=0)
  np.testing.assert_allclose(got_psnr, want_psnr, atol=PSNR_TOL, rtol=0)
  # the pairs span the range: noisy, blurred, unrelated
  assert min(want_ssim) < 0.3 and max(want_ssim) > 0.6


def test_ssim_non_square_grayscale_and_identity():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 13, 29, 1)).astype(np.float32)
  y = np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
  want = [structural_similarity(x[i, ..., 0].astype(np.float64), y[i, ..., 0].astype(np.float64),
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=2) for i in range(2)]
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, y)), want, atol=SSIM_TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-6)
  assert np.all(np.isinf(np.asarray(metrics.psnr(x, x))))
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(x[:, :10], y[:, :10])


def test_frechet_distance_closed_form_and_self():
  rng = np.random.default_rng(0)
  d = 48
  a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  # diagonal Gaussians: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2, also after a common rotation
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  for method in ("eigh", "sqrtm"):
    got = metrics.frechet_distance(mu1, s1, mu2, s2, method=method)
    assert got == pytest.approx(want, rel=1e-9)

  # a set of correlated features against itself: ~0 relative to the trace
  feats = rng.standard_normal((400, 64)) @ rng.standard_normal((64, 64))
  mu, sigma = metrics.feature_stats(feats)
  self_fd = inception.fid_from_features(feats, feats)
  assert abs(self_fd) < 1e-6 * np.trace(sigma)
  # rank-deficient covariances (fewer samples than dimensions) stay finite and ~0
  few = feats[:20]
  assert abs(inception.fid_from_features(few, few)) < 1e-6 * np.trace(np.cov(few, rowvar=False))
  other = feats + 0.5
  assert inception.fid_from_features(feats, other) == pytest.approx(64 * 0.25, rel=1e-9)
  assert metrics.frechet_distance(mu, sigma, mu + 1.0, sigma) == pytest.approx(64.0, rel=1e-9)


def test_kid_unbiased_near_zero_for_one_distribution():
  rng = np.random.default_rng(0)
  d, n = 32, 4000
  x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
  same_mean, same_std = metrics.kid(x, y, num_subsets=20, subset_size=500, seed=0)
  # the biased (V-statistic) estimate of the same subsets keeps the diagonal: clearly positive
  m = 500
  kxx = (x[:m] @ x[:m].T / d + 1) ** 3
  kyy = (y[:m] @ y[:m].T / d + 1) ** 3
  kxy = (x[:m] @ y[:m].T / d + 1) ** 3
  biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
  assert biased > 0.02
  assert abs(same_mean) < 0.1 * biased
  assert abs(same_mean) < 3 * same_std / np.sqrt(20) + 1e-4
  shifted_mean, _ = metrics.kid(x, y + 0.3, num_subsets=20, subset_size=500, seed=0)
  assert shifted_mean > 20 * abs(same_mean) and shifted_mean > 0.05
  # deterministic for a seed
  assert metrics.kid(x, y, 5, 100, seed=3) == metrics.kid(x, y, 5, 100, seed=3)
  # subsets as large as both sets are all the same set: one value, no (fake) spread
  whole, spread = metrics.kid(x[:50], y[:50], num_subsets=100, subset_size=1000)
  assert np.isnan(spread) and whole == metrics.kid(x[:50], y[:50], 1, 50)[0]


def test_inception_score_extremes():
  k, n = 10, 200
  uniform = np.zeros((n, 1008))
  assert metrics.inception_score(uniform, splits=4)[0] == pytest.approx(1.0, abs=1e-9)
  confident = np.full((n, k), -50.0)
  confident[np.arange(n), np.arange(n) % k] = 50.0
  mean, std = metrics.inception_score(confident, splits=4)
  assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
  # every image the same class: no diversity, score 1
  one_class = np.full((n, k), -50.0)
  one_class[:, 3] = 50.0
  assert metrics.inception_score(one_class, splits=2)[0] == pytest.approx(1.0, abs=1e-6)


def test_laplacian_pyramid_reconstructs():
  x = _crops(0, 1, size=40)
  levels = metrics.laplacian_pyramid(x, 3)
  assert [lv.shape[1] for lv in levels] == [40, 20, 10]
  rec = levels[-1]
  for band in reversed(levels[:-1]):
    rec = band + metrics._pyr_up(rec, band.shape)
  np.testing.assert_allclose(rec, x, atol=1e-5)


def test_pixel_features_deterministic_and_custom_callable():
  x = _crops(0, 2)
  f1 = np.asarray(metrics.pixel_features(x))
  assert f1.shape == (10, 3 * (2 * 32 + 2 * 3)) and np.all(np.isfinite(f1))
  np.testing.assert_array_equal(f1, np.asarray(metrics.pixel_features(x)))
  assert not np.allclose(f1, np.asarray(metrics.pixel_features(x, seed=1)))
  # any callable, or precomputed features
  mean_color = lambda imgs: np.asarray(imgs).mean(axis=(1, 2))
  out = metrics.distribution_metrics(x, x + 0.2, features=mean_color, kid_subsets=3)
  assert out["fd"] == pytest.approx(3 * 0.04, rel=1e-4)  # float32 images
  pre = metrics.distribution_metrics(mean_color(x), mean_color(x + 0.2), features=None,
                                     kid_subsets=3)
  # 10 images: KID's subsets are the whole sets, so no spread (nan, which != nan)
  assert np.isnan(pre.pop("kid_std")) and np.isnan(out.pop("kid_std"))
  assert pre == out


def _degrade(images, kind, level, seed=5):
  if level == 0:
    return images
  if kind == "noise":
    rng = np.random.default_rng(seed)
    return np.clip(images + level * rng.standard_normal(images.shape), -1, 1).astype(np.float32)
  return np.stack([gaussian_filter(im, (level, level, 0)) for im in images]).astype(np.float32)


@pytest.mark.parametrize("kind,levels", [("noise", (0.0, 0.1, 0.2, 0.4)),
                                         ("blur", (0.0, 1.0, 2.0, 3.0))])
def test_fd_kid_swd_grow_with_degradation(kind, levels):
  """Reference: 120 crops; compared set: 120 other crops of the same photos, degraded."""
  ref, other = _crops(0, 24), _crops(1, 24)
  f_ref = metrics.compute_features(ref)
  fd, kid, swd = [], [], []
  for level in levels:
    y = _degrade(other, kind, level)
    out = metrics.distribution_metrics(f_ref, metrics.compute_features(y), features=None,
                                       kid_subsets=50, kid_subset_size=100)
    fd.append(out["fd"])
    kid.append(out["kid"])
    swd.append(metrics.swd(ref, y, patches_per_image=32, dirs_per_repeat=64))
    if level == 0:  # same distribution: unbiased KID ~ 0 (within a subset std)
      assert abs(out["kid"]) < out["kid_std"]
  print(kind, "fd", np.round(fd, 4), "kid", np.round(kid, 5),
        "swd mean x1e3", np.round([s["mean"] * 1e3 for s in swd], 1),
        f"swd {next(iter(swd[0]))} x1e3", np.round([s["64px"] * 1e3 for s in swd], 1))
  assert set(swd[0]) == {"64px", "32px", "16px", "mean"}
  assert np.all(np.diff(fd) > 0), fd
  assert np.all(np.diff(kid) > 0), kid
  assert np.all(np.diff([s["mean"] for s in swd]) > 0), swd
  assert np.all(np.diff([s["64px"] for s in swd]) > 0), swd
  # the largest degradation is far outside the clean sets' sampling spread
  assert fd[-1] > 2 * fd[0] and kid[-1] > 5 * abs(kid[0]) + 1e-3


def test_swd_deterministic():
  x = _crops(0, 4, size=32)
  y = _degrade(x, "noise", 0.2)
  a = metrics.swd(x, y, patches_per_image=16, dirs_per_repeat=32)
  assert a == metrics.swd(x, y, patches_per_image=16, dirs_per_repeat=32)
  assert set(a) == {"32px", "16px", "mean"}
  assert a["mean"] == pytest.approx((a["32px"] + a["16px"]) / 2)


def test_reference_stats_cached_once(tmp_path):
  calls = []

  def images_fn():
    calls.append(1)
    return iter([_crops(0, 2), _crops(1, 2)])  # an iterable of batches

  s1 = inception.reference_stats("photos64", images_fn, str(tmp_path))
  s2 = inception.reference_stats("photos64", images_fn, str(tmp_path))
  assert len(calls) == 1
  assert os.listdir(tmp_path) == ["photos64.pixel_features.npz"]
  np.testing.assert_array_equal(s1["mu"], s2["mu"])
  np.testing.assert_array_equal(s1["sigma"], s2["sigma"])
  assert int(s2["n"]) == 20
  feats = metrics.compute_features(np.concatenate([_crops(0, 2), _crops(1, 2)]))
  np.testing.assert_allclose(s2["mu"], feats.mean(0), rtol=1e-6, atol=1e-9)
  assert inception.fid_from_stats(s2, {"mu": feats.mean(0),
                                       "sigma": np.cov(feats, rowvar=False)}) < 1e-9
