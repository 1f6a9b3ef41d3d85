"""ibmd_jax.eval.bootstrap: each replicate is the metric of the drawn images (checked against the
metric of the explicitly repeated images), replicate 0 is the full-sample metric, and paired
differences are decided the right way round."""
import numpy as np
import pytest

from ibmd_jax.eval import metrics
from ibmd_jax.eval import bootstrap


def _images(n=48, s=16, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((n, s // 4, s // 4, 3)).astype(np.float32)
  x = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)  # blocky structure
  x = metrics._blur5(x) + 0.05 * rng.standard_normal((n, s, s, 3)).astype(np.float32)
  return np.clip(x / 2, -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def boot():
  ref = _images()
  b = bootstrap.Bootstrap(ref, reps=30, seed=1, patches=8, directions=16)
  noisy = np.clip(ref + 0.1 * np.random.default_rng(5).standard_normal(ref.shape), -1, 1)
  b.add("noisy", noisy.astype(np.float32))
  b.add("blur", metrics._blur5(ref))
  b.add("blur2", metrics._blur5(metrics._blur5(ref)))
  return b, ref, noisy.astype(np.float32)


def test_counts():
  c = bootstrap.counts(10, 7, seed=3)
  assert c.shape == (8, 10) and np.all(c[0] == 1) and np.all(c.sum(1) == 10)
  assert len({tuple(r) for r in c[1:]}) > 1


def test_full_sample_is_the_plain_metric(boot):
  b, ref, noisy = boot
  r = b.reps_of["noisy"]
  assert r["psnr"][0] == pytest.approx(float(np.mean(metrics.psnr(noisy, ref))), rel=1e-6)
  assert r["ssim"][0] == pytest.approx(float(np.mean(metrics.ssim(noisy, ref))), rel=1e-6)
  f = metrics.compute_features(noisy, metrics.band_features)
  fd = metrics.frechet_distance(*metrics.feature_stats(f), *metrics.feature_stats(b.ref_feats))
  assert r["fd"][0] == pytest.approx(fd, rel=1e-6)
  fs = (f - b.loc) / b.scale
  kid, _ = metrics.kid(fs, b.ref_std, num_subsets=1, subset_size=len(f))
  assert r["kid"][0] == pytest.approx(kid, rel=1e-6)


def _swd_of(b, x, weights):
  """SWD from explicitly repeated descriptors: mean |sorted a − sorted b| per direction."""
  desc = bootstrap._descriptors(x, b.patches, b.min_resolution, b.seed)
  out = []
  for d, rd, u in zip(desc, b.ref_desc, b.dirs):
    rows = np.repeat(np.arange(len(x)), b.patches)
    keep = np.repeat(np.arange(len(rows)), weights[rows].astype(int))
    pa, pb = np.sort(d[keep] @ u, axis=0), np.sort(rd[keep] @ u, axis=0)
    out.append(np.mean(np.abs(pa - pb)))
  return float(np.mean(out))


def test_replicates_are_metrics_of_the_repeated_images(boot):
  b, ref, noisy = boot
  r = b.reps_of["noisy"]
  for k in (0, 4):
    c = b.c[k]
    idx = np.repeat(np.arange(len(ref)), c.astype(int))
    f = metrics.compute_features(noisy, metrics.band_features)
    fd = metrics.frechet_distance(*metrics.feature_stats(f[idx]),
                                  *metrics.feature_stats(b.ref_feats[idx]))
    assert r["fd"][k] == pytest.approx(fd, rel=1e-5)
    assert r["psnr"][k] == pytest.approx(float(np.mean(metrics.psnr(noisy[idx], ref[idx]))),
                                         rel=1e-6)
    assert r["swd"][k] == pytest.approx(_swd_of(b, noisy, c), rel=1e-4)
    # KID over pairs of distinct images (a repeated image is never paired with itself)
    fs, ys = (f - b.loc) / b.scale, b.ref_std
    kxx, kyy, kxy = (bootstrap._kernel(p, q) for p, q in ((fs, fs), (ys, ys), (fs, ys)))
    off = ~np.eye(len(c), dtype=bool)
    w = np.outer(c, c)
    want = ((w * kxx)[off].sum() / w[off].sum() + (w * kyy)[off].sum() / w[off].sum()
            - 2 * (w * kxy).sum() / len(c) ** 2)
    assert r["kid"][k] == pytest.approx(want, rel=1e-6)


def test_intervals_and_paired_differences(boot):
  b, _, _ = boot
  s = bootstrap.summary(b.reps_of["noisy"])
  for m, v in s.items():
    assert v["lo"] <= v["value"] <= v["hi"], (m, v)
    assert v["hi"] > v["lo"], (m, v)
  # blurring twice is farther from the reference than once, on every distribution metric, and
  # the paired difference says so beyond its interval; the same set against itself is exactly 0
  for m in ("fd", "swd", "kid"):
    d = b.compare("blur2", "blur", m)
    assert d["lo"] > 0, (m, d)
    assert b.compare("blur", "blur2", m)["hi"] < 0
  assert b.compare("blur", "blur2", "psnr")["lo"] > 0
  assert b.compare("noisy", "noisy", "fd") == {"value": 0.0, "lo": 0.0, "hi": 0.0}
  # scale: noisy − 2 × noisy = −noisy
  d2 = b.compare("noisy", "noisy", "swd", 2.0)
  assert d2["value"] == pytest.approx(-b.reps_of["noisy"]["swd"][0])


def test_band_features_see_blur_and_noise():
  """On 32x32 crops of the held-out photographs, FD on band_features puts a light blur and faint
  noise far beyond the distance between two halves of the set; pixel_features do not."""
  from ibmd_jax import data
  ds = data.map_dataset(dict(kind="skimage", image_size=32, degradation="sr4_bicubic"), "test", 0)
  idx = np.linspace(0, len(ds) - 1, 256).round().astype(int)
  ref = np.stack([ds[int(i)]["x0"] for i in idx])
  noisy = np.clip(ref + 0.05 * np.random.default_rng(0).standard_normal(ref.shape), -1, 1)
  out = {}
  for name, fn in (("band", metrics.band_features), ("pixel", metrics.pixel_features)):
    stats = lambda x: metrics.feature_stats(metrics.compute_features(x, fn))  # noqa: E731
    st = stats(ref)
    out[name] = dict(halves=metrics.frechet_distance(*stats(ref[::2]), *stats(ref[1::2])),
                     blur=metrics.frechet_distance(*stats(metrics._blur5(ref)), *st),
                     noisy=metrics.frechet_distance(*stats(noisy), *st))
  print(out)
  band, pixel = out["band"], out["pixel"]
  assert band["blur"] > 10 * band["halves"] and band["noisy"] > 10 * band["halves"], band
  assert pixel["blur"] < 2 * pixel["halves"], pixel


def test_shape_mismatch_is_an_error(boot):
  b, ref, _ = boot
  with pytest.raises(ValueError, match="has shape"):
    b.add("bad", ref[:-1])
