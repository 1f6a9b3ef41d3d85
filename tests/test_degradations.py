"""Degradations against independent references (PIL, plain numpy) and their documented geometry."""
import numpy as np
import pytest
import skimage.data
from PIL import Image

from ibmd_jax.data import degradations as D


def _photo(size=256, name="astronaut"):
  u = getattr(skimage.data, name)()[:size, :size]
  return u, D.from_uint8(u)


def _psnr(a, b):
  return 10 * np.log10(4.0 / np.mean((np.asarray(a, np.float64) - b) ** 2))


@pytest.mark.parametrize("out_hw", [(64, 64), (37, 300), (16, 100)])
def test_resize_bicubic_matches_pil_float(out_hw):
  # PIL's float ('F') mode resamples in double precision, no rounding: the two must agree to
  # float32 round-off. Covers downscaling (antialiased kernel), upscaling and a mixed aspect.
  _, x = _photo()
  x = x[:200]
  y = D.resize_bicubic(x, *out_hw)
  assert y.shape == (*out_hw, 3)
  for c in range(3):
    ref = np.asarray(Image.fromarray(x[..., c]).resize(out_hw[::-1], Image.BICUBIC))
    np.testing.assert_allclose(y[..., c], ref, atol=2e-6)


def test_sr4_bicubic_matches_pil_uint8_inside():
  # sr4_bicubic is I2SB's operator (exact parity with the original: tests/test_parity.py). Away
  # from the borders it is PIL's antialiased bicubic; at the borders the original mirrors its taps
  # where PIL renormalises a truncated window (up to 14/255 apart on this photo), and it does not
  # clip. PIL's uint8 path rounds (and clips) after each separable pass and uses fixed-point
  # weights, so compare the interior within 2/255 max and 0.25/255 mean.
  u, x = _photo()
  y = D.sr4_bicubic(x)
  assert y.shape == x.shape and y.dtype == np.float32
  low = y[::4, ::4]
  np.testing.assert_array_equal(y, np.repeat(np.repeat(low, 4, 0), 4, 1))  # nearest upsampling
  ref = np.asarray(Image.fromarray(u).resize((64, 64), Image.BICUBIC)).astype(int)
  diff = np.abs(D.to_uint8(low).astype(int) - ref)[2:-2, 2:-2]
  assert diff.max() <= 2, diff.max()
  assert diff.mean() < 0.25, diff.mean()


def test_sr4_pool_matches_reshape_mean():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32)
  y = D.sr4_pool(x)
  ref = np.zeros_like(x)
  for i in range(0, 16, 4):
    for j in range(0, 24, 4):
      ref[:, i:i + 4, j:j + 4] = x[:, i:i + 4, j:j + 4].mean(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(y, ref, atol=1e-6)
  with pytest.raises(ValueError, match="divisible"):
    D.sr4_pool(x[:, :15])


def test_jpeg_quality_ordering_on_photos():
  for name in ("astronaut", "coffee"):
    _, x = _photo(name=name)
    p = {q: _psnr(D.jpeg(x, q), x) for q in (5, 10, 90)}
    assert p[5] < p[10] < p[90], p
    assert p[5] < 30.0 and p[90] > 33.0, p  # a real codec: heavy loss at QF5, little at QF90
  np.testing.assert_array_equal(D.jpeg(x, 10), D.jpeg(x, 10))  # deterministic
  assert not np.allclose(D.jpeg(x, 10), x, atol=1 / 255)


def test_jpeg_greyscale_and_batch():
  _, x = _photo(64)
  grey = x[..., :1]
  y = D.jpeg(np.stack([grey, grey[::-1]]), 10)
  assert y.shape == (2, 64, 64, 1)
  np.testing.assert_array_equal(y[1], D.jpeg(grey[::-1], 10))


@pytest.mark.parametrize("size,hole", [(256, 128), (64, 32), (16, 8), (16, 6)])
def test_center_inpaint_mask_geometry(size, hole):
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  xt, mask = D.center_inpaint(x, hole, seed=3)
  assert mask.shape == (2, size, size, 1) and xt.shape == x.shape
  lo = (size - hole) // 2
  assert mask.sum() == 2 * hole * hole
  np.testing.assert_array_equal(mask[0, lo:lo + hole, lo:lo + hole], 1.0)
  assert mask[0, lo - 1, lo] == 0 and mask[0, lo, lo + hole] == 0
  keep = mask[..., 0] == 0
  np.testing.assert_array_equal(xt[keep], x[keep])  # known pixels unchanged
  noise = xt[~keep]
  assert abs(noise.mean()) < 0.2 and abs(noise.std() - 1.0) < 0.2  # N(0, 1) in the hole
  if size == 256:  # I2SB: the hole is [64, 192) at 256x256
    assert mask[0, 64, 64] == 1 and mask[0, 191, 191] == 1 and mask[0, 63, 64] == 0
    assert mask[0, 192, 100] == 0


def test_center_inpaint_determinism_and_default_hole():
  x = np.zeros((64, 64, 3), np.float32)
  a, m = D.center_inpaint(x, seed=7)
  b, _ = D.center_inpaint(x, seed=7)
  c, _ = D.center_inpaint(x, seed=8)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert m.shape == (64, 64, 1) and m.sum() == 32 * 32  # default hole = half the side
  with pytest.raises(ValueError, match="hole"):
    D.center_inpaint(x, 65, 0)


def test_edges_deterministic_black_on_white():
  _, x = _photo(128)
  e = D.edges(x)
  assert e.shape == x.shape
  assert set(np.unique(e)) == {-1.0, 1.0}
  frac = (e[..., 0] < 0).mean()
  assert 0.01 < frac < 0.3, frac  # a sparse sketch: mostly white, some lines
  np.testing.assert_array_equal(e, D.edges(x))
  np.testing.assert_array_equal(e[..., 0], e[..., 2])
  assert (D.edges(np.zeros_like(x)) == 1.0).all()  # a flat image has no edges


def test_registry():
  _, x = _photo(64)
  xb = x[None]
  for name in D.DEGRADATIONS:
    out = D.make_degradation(name)(xb, 0)
    assert out["xT"].shape == xb.shape and out["xT"].dtype == np.float32, name
    assert ("mask" in out) == (name == "inpaint_center"), name
  np.testing.assert_array_equal(D.make_degradation("jpeg5")(xb, 0)["xT"], D.jpeg(xb, 5))
  np.testing.assert_array_equal(D.make_degradation("jpeg", quality=30)(xb, 0)["xT"], D.jpeg(xb, 30))
  np.testing.assert_array_equal(D.make_degradation("none")(xb, 0)["xT"], xb)
  m = D.make_degradation("inpaint_center", hole=8)(xb, 0)["mask"]
  assert m.sum() == 64
  with pytest.raises(ValueError, match="valid names"):
    D.make_degradation("sr8_magic")
  with pytest.raises(ValueError, match="accepts options"):
    D.make_degradation("jpeg10", quality=5)
