"""The digits benchmark's judge: a small classifier trained once on the training digits, and the
paper's metrics computed from it (docs/results.md, digits section; bench/digits.py).

- classifier accuracy (CA): the classifier's top-1 accuracy on the restorations against the
  true labels of the held-out digits (the paper's CA, with a digit classifier for ResNet-50);
- FD: Fréchet distance between the classifier's penultimate features (128-d) of the restorations
  and of the clean held-out digits (the FID analogue);
- PSNR / SSIM against the clean digit;
- diversity: per input, the standard deviation over K restorations made with different noise
  (z and sampler noise), averaged over pixels; a collapsed generator scores ≈ 0.

`DigitScores` adds CA and diversity to ibmd_jax.eval.bootstrap.Bootstrap (which gives PSNR,
SSIM, FD on the classifier's features, KID, SWD): every metric gets replicates on the same paired
draws of the held-out digits, so differences between two sets have paired 95 % intervals.

The classifier sees only the training split (ibmd_jax.data.digits); it is trained once per run root
and cached there as classifier.npz (parameters and its held-out accuracy on the clean digits).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from ibmd_jax.eval import bootstrap

SIGN = dict(bootstrap.SIGN, ca=+1, diversity=+1)


class DigitClassifier(nn.Module):
  """Two 3x3 conv layers (16, 32) with average pooling, a 128-unit feature layer, 10 logits."""

  features: int = 128

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    f = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(f), f


def train_classifier(x: np.ndarray, y: np.ndarray, steps: int = 500, batch: int = 64,
                     lr: float = 1e-3, seed: int = 0, shift: int = 2):
  """Parameters trained with Adam on (x [N, S, S, 1] in [-1, 1], y [N]); random shifts of up to
  `shift` pixels as augmentation."""
  model = DigitClassifier()
  params = model.init(jax.random.key(seed), jnp.zeros((1,) + x.shape[1:], jnp.float32))["params"]
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xb, yb):
    def loss(p):
      logits, _ = model.apply({"params": p}, xb)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    g = jax.grad(loss)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x), batch)
    xb = x[idx]
    if shift:
      dy, dx = rng.integers(-shift, shift + 1, 2)
      xb = np.roll(xb, (int(dy), int(dx)), axis=(1, 2))
    params, opt = step(params, opt, jnp.asarray(xb), jnp.asarray(y[idx]))
  return params


def _apply_fn():
  model = DigitClassifier()
  return jax.jit(lambda p, x: model.apply({"params": p}, x))


def predict(params, x: np.ndarray, batch: int = 250) -> tuple[np.ndarray, np.ndarray]:
  """(logits [N, 10], features [N, 128]) as numpy."""
  fn = _apply_fn()
  out = [jax.device_get(fn(params, jnp.asarray(x[i:i + batch], jnp.float32)))
         for i in range(0, len(x), batch)]
  return (np.concatenate([o[0] for o in out]).astype(np.float64),
          np.concatenate([o[1] for o in out]).astype(np.float64))


def load_or_train(path: str, image_size: int, steps: int = 500) -> tuple[dict, dict]:
  """(params, meta) from `path` (classifier.npz), or trained on the training digits and saved
  there. meta: image_size, steps, test_accuracy (on the clean held-out digits)."""
  from ibmd_jax.data import digits  # pylint: disable=g-import-not-at-top
  if os.path.exists(path):
    with np.load(path) as z:
      meta = json.loads(str(z["__meta__"]))
      if meta["image_size"] == image_size and meta["steps"] == steps:
        flat = {tuple(k.split("/")): jnp.asarray(z[k]) for k in z.files if k != "__meta__"}
        return traverse_util.unflatten_dict(flat), meta
  train = digits.arrays("train", image_size)
  params = train_classifier(digits.as_float(train["x0"]), train["label"], steps=steps)
  test = digits.arrays("test", image_size)
  logits, _ = predict(params, digits.as_float(test["x0"]))
  meta = {"image_size": image_size, "steps": steps,
          "test_accuracy": float(np.mean(logits.argmax(1) == test["label"]))}
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, __meta__=json.dumps(meta), **flat)
  os.replace(tmp, path)
  return params, meta


def diversity(samples: np.ndarray) -> np.ndarray:
  """Per input: the std over K restorations [K, N, H, W, C], averaged over pixels -> [N]."""
  s = np.asarray(samples, np.float64)
  return s.std(axis=0, ddof=1).reshape(s.shape[1], -1).mean(axis=1)


class DigitScores(bootstrap.Bootstrap):
  """bootstrap.Bootstrap on the classifier's features, plus CA and diversity replicates."""

  def __init__(self, reference: np.ndarray, labels: np.ndarray, params, reps: int = 200,
               seed: int = 0):
    self.params = params
    self.labels = np.asarray(labels)
    fn = _apply_fn()
    super().__init__(reference, features=lambda x: fn(params, jnp.asarray(x, jnp.float32))[1],
                     reps=reps, seed=seed, min_resolution=14)

  def add(self, name: str, images: np.ndarray, psnr=None, ssim=None,
          samples: Optional[np.ndarray] = None) -> dict:
    super().add(name, images, psnr, ssim)
    logits, _ = predict(self.params, np.asarray(images, np.float32))
    correct = (logits.argmax(1) == self.labels).astype(np.float64)
    self.reps_of[name]["ca"] = self.c @ correct / self.n
    if samples is not None and len(samples) >= 2:
      # diversity is measured on the first M inputs (M = samples.shape[1]): their counts
      d = diversity(samples)
      c = self.c[:, :len(d)]
      self.reps_of[name]["diversity"] = (c @ d) / np.maximum(c.sum(1), 1.0)
    return bootstrap.summary(self.reps_of[name])

  def better(self, a: str, b: str, metric: str, scale_b: float = 1.0, offset: float = 0.0
             ) -> tuple[bool, dict]:
    """Whether metric(a) is better than scale_b · metric(b) + offset beyond the paired 95 %
    interval (a higher-is-better metric: the interval lies above 0), and the interval."""
    d = bootstrap.summary({metric: self.reps_of[a][metric] - scale_b * self.reps_of[b][metric]
                           - offset})[metric]
    return (d["lo"] > 0 if SIGN[metric] > 0 else d["hi"] < 0), d
