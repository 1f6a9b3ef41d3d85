"""The FID Inception-v3 in Flax, its weights from a local file, FID / IS, and cached reference stats.

The network is the one pytorch-fid uses (the TF "2015-12-05" Inception graph ported to PyTorch as
``pt_inception-2015-12-05-6726825d.pth``): torchvision's Inception3 stem and Mixed_6a / Mixed_7a,
with pytorch-fid's FIDInceptionA (Mixed_5b-d), FIDInceptionC (Mixed_6b-e), FIDInceptionE_1
(Mixed_7b) and FIDInceptionE_2 (Mixed_7c) blocks. Those differ from torchvision's in the pooling
branch: 3x3 average pooling with count_include_pad=False (A, C, E_1) and 3x3 max pooling in the
last E block. Every convolution is conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU. Outputs:
the 2048-d global-average-pooled features (FID, KID) and the 1008-class fc logits (IS).

Flax module names mirror the state-dict keys (``Mixed_5b.branch_pool.conv.weight`` ->
``params/Mixed_5b/branch_pool/conv/kernel``), so `ibmd_jax.eval.weights.state_dict_to_flax` converts
mechanically. Weights are never downloaded: `load_inception(path)` reads a local ``.pth``/``.pt``
(torch) or ``.npz`` file.

Preprocessing (`preprocess`) matches pytorch-fid with resize_input and normalize_input: bilinear
resize to 299x299 (align_corners=False, no antialiasing) and values in [-1, 1] (pytorch-fid maps
[0, 1] by 2x - 1; our images already are in [-1, 1], and the affine map commutes with the resize).
"""
from __future__ import annotations

import functools
import os
import tempfile
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax.eval import metrics
from ibmd_jax.eval.weights import read_state_dict, state_dict_to_flax

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
MISSING_HINT = (f"The FID Inception weights are usually obtained as '{INCEPTION_FILE}' from the "
                "pytorch-fid GitHub releases (github.com/mseitzer/pytorch-fid/releases, tag "
                "fid_weights); download it once, place it locally and name its path in the config "
                "(a .npz with the same state-dict keys works too and needs no torch).")
INPUT_SIZE = 299
NUM_CLASSES = 1008
# The checkpoint of an Inception3 built with aux_logits=True has these; the FID network has none.
_IGNORED_KEYS = (r"AuxLogits\..*",)
_HIGHEST = jax.lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm(eps 1e-3, running statistics) -> ReLU."""

  features: int
  kernel: Sequence[int]
  strides: int = 1
  padding: Sequence[int] = (0, 0)
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, tuple(self.kernel), strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool3(x):
  """3x3, stride 1, pad 1 average over the valid pixels only (count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1 (`pool_features`)."""

  pool_features: int
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv2d, precision=self.precision)
    b1 = c(64, (1, 1), name="branch1x1")(x)
    b5 = c(48, (1, 1), name="branch5x5_1")(x)
    b5 = c(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = c(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = c(self.pool_features, (1, 1), name="branch_pool")(_avg_pool3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction): 3x3/2 | 1x1->3x3->3x3/2 | maxpool 3x3/2."""

  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv2d, precision=self.precision)
    b3 = c(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = c(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = c(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool3s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: factorised 7x7 convolutions with `channels_7x7` inner channels."""

  channels_7x7: int
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = c(192, (1, 1), name="branch1x1")(x)
    b7 = c(c7, (1, 1), name="branch7x7_1")(x)
    b7 = c(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = c(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = c(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = c(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = c(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = c(192, (1, 1), name="branch_pool")(_avg_pool3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool 3x3/2."""

  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv2d, precision=self.precision)
    b3 = c(192, (1, 1), name="branch3x3_1")(x)
    b3 = c(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = c(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = c(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool3s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c: expanded filter banks (1x3 and 3x1 side by side).

  max_pool=False is FIDInceptionE_1 (average pool without padded pixels), True is
  FIDInceptionE_2 (the TF graph max-pools in the last block).
  """

  max_pool: bool
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(BasicConv2d, precision=self.precision)
    b1 = c(320, (1, 1), name="branch1x1")(x)
    b3 = c(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          c(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = c(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([c(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          c(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool3(x)
    bp = c(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3 on preprocessed NHWC input in [-1, 1] (299x299; anything >= 75x75 runs).

  Returns {"pool": [N, 2048] pooled features, "logits": [N, 1008] fc outputs}.
  """

  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    c = functools.partial(BasicConv2d, precision=p)
    x = c(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = c(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = c(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool3s2(x)
    x = c(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = c(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool3s2(x)
    x = InceptionA(32, precision=p, name="Mixed_5b")(x)
    x = InceptionA(64, precision=p, name="Mixed_5c")(x)
    x = InceptionA(64, precision=p, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    x = InceptionC(128, precision=p, name="Mixed_6b")(x)
    x = InceptionC(160, precision=p, name="Mixed_6c")(x)
    x = InceptionC(160, precision=p, name="Mixed_6d")(x)
    x = InceptionC(192, precision=p, name="Mixed_6e")(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, precision=p, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=p, name="fc")(pool)
    return {"pool": pool, "logits": logits}


# ------------------------------------------------------------------------------ preprocessing


def preprocess(images, size: int = INPUT_SIZE, value_range: Sequence[float] = (-1.0, 1.0),
               quantize: bool = False):
  """[N, H, W, C] images in `value_range` -> [N, size, size, 3] float32 in [-1, 1].

  Clips to the range; quantize=True first rounds to 256 levels, as when samples are saved as
  8-bit images before pytorch-fid reads them. The resize is bilinear with half-pixel centres and
  no antialiasing (torch's F.interpolate(mode='bilinear', align_corners=False)); grayscale is
  repeated to 3 channels.
  """
  lo, hi = (float(v) for v in value_range)
  x = jnp.clip(jnp.asarray(images, jnp.float32), lo, hi)
  x = (x - lo) / (hi - lo)
  if quantize:
    x = jnp.round(x * 255.0) / 255.0
  x = 2.0 * x - 1.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "linear", antialias=False)
  return x


# ------------------------------------------------------------------------------ weights


@functools.lru_cache(maxsize=4)
def abstract_variables(input_size: int = INPUT_SIZE):
  """Shapes of the Flax variables (no computation, no random numbers)."""
  x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), x)


def convert_state_dict(state_dict) -> dict:
  """A pytorch-fid FID-Inception state dict (torchvision key layout) -> Flax variables
  {'params', 'batch_stats'}; strict both ways, see ibmd_jax.eval.weights."""
  return state_dict_to_flax(state_dict, abstract_variables(), ignore=_IGNORED_KEYS)


def load_inception(path: str) -> dict:
  """Flax variables of the FID Inception from a local .pth/.pt (torch) or .npz state dict."""
  return convert_state_dict(read_state_dict(path, MISSING_HINT))


@functools.partial(jax.jit, static_argnames=("resize",))
def _forward(variables, images, resize: bool = True):
  x = preprocess(images) if resize else jnp.asarray(images, jnp.float32)
  return InceptionV3().apply(variables, x)


def inception_outputs(variables, images, batch_size: int = 50, resize: bool = True
                      ) -> dict[str, np.ndarray]:
  """{"pool": [N, 2048], "logits": [N, 1008]} as numpy for images in [-1, 1], in batches.

  resize=False skips the resize (input already at the network's resolution) but not the range:
  the images must already be in [-1, 1].
  """
  images = np.asarray(images)
  outs = {"pool": [], "logits": []}
  for i in range(0, len(images), batch_size):
    batch = images[i:i + batch_size]
    k = len(batch)
    if k < batch_size and len(images) > batch_size:  # pad: one compiled shape
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - k, axis=0)])
    out = jax.device_get(_forward(variables, batch, resize=resize))
    for name in outs:
      outs[name].append(np.asarray(out[name], np.float64)[:k])
  return {name: np.concatenate(v, axis=0) for name, v in outs.items()}


def inception_feature_fn(variables, output: str = "pool") -> Callable[[Any], np.ndarray]:
  """A features callable for `metrics.distribution_metrics` / `reference_stats`."""
  if output not in ("pool", "logits"):
    raise ValueError(f"output must be 'pool' or 'logits', got {output!r}")

  def features(images):
    return inception_outputs(variables, images, batch_size=max(len(images), 1))[output]

  features.__name__ = f"inception_{output}"
  return features


# ------------------------------------------------------------------------------ FID


def fid_from_features(f1, f2) -> float:
  """Frechet distance between the Gaussians fitted to two feature sets [N, D]."""
  return metrics.frechet_distance(*metrics.feature_stats(f1), *metrics.feature_stats(f2))


def fid_from_stats(stats1: dict, stats2: dict) -> float:
  """Frechet distance between two {'mu', 'sigma'} dicts (e.g. from `reference_stats`)."""
  return metrics.frechet_distance(stats1["mu"], stats1["sigma"], stats2["mu"], stats2["sigma"])


def reference_stats(name: str, images_fn: Callable[[], Any], cache_dir: str,
                    features: Optional[Callable[[Any], Any]] = None,
                    tag: Optional[str] = None, batch_size: int = 50) -> dict[str, np.ndarray]:
  """{'mu', 'sigma', 'n'} of a reference set's features, computed once per dataset and cached.

  The cache file is ``<cache_dir>/<name>.<tag>.npz`` where tag names the feature extractor
  (default: its __name__, e.g. 'inception_pool' or 'pixel_features'), so stats of different
  extractors never mix. images_fn() is called only on a cache miss; it returns one [N, H, W, C]
  array in [-1, 1] or an iterable of such batches. features defaults to the weight-free
  `metrics.pixel_features`. The file is written atomically (rename), so concurrent evaluators see
  either nothing or a complete file.
  """
  features = metrics.pixel_features if features is None else features
  tag = tag or getattr(features, "__name__", None) or "features"
  path = os.path.join(cache_dir, f"{name}.{tag}.npz")
  if os.path.isfile(path):
    with np.load(path) as f:
      return {k: f[k] for k in ("mu", "sigma", "n")}
  images = images_fn()
  batches = [images] if hasattr(images, "shape") else images
  feats = np.concatenate([metrics.compute_features(b, features, batch_size) for b in batches])
  mu, sigma = metrics.feature_stats(feats)
  stats = {"mu": mu, "sigma": sigma, "n": np.asarray(len(feats))}
  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
  os.close(fd)
  with open(tmp, "wb") as f:
    np.savez(f, **stats)
  os.replace(tmp, path)
  return stats
