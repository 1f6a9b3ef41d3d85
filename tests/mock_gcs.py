"""A mocked gs:// for tests: etils.epath's backends replaced by one that keeps every
``gs://bucket/key`` as the local file <root>/bucket/key (etils.epath.testing.mock_epath), so code
that goes through ibmd_jax.paths reads and writes a bucket that is a temporary folder. Orbax's own
GCS I/O (TensorStore's GCS driver) is not mocked: ibmd_jax.paths.for_orbax hands it the bucket's
local folder instead."""
from __future__ import annotations

import contextlib
import os

from etils.epath import testing as epath_testing

from ibmd_jax import paths


@contextlib.contextmanager
def mock_bucket(root: str, deny=()):
  """Inside: gs://b/k is <root>/b/k for ibmd_jax.paths (and anything else using epath); writing
  into a bucket named in `deny` raises PermissionError (an account without access)."""

  def local(p):
    text = os.fspath(p)
    if text.startswith("gs://"):
      return os.path.join(root, text[len("gs://"):])
    if text.startswith("/gs/"):  # epath's internal spelling of gs:// paths
      return os.path.join(root, text[len("/gs/"):])
    return text

  def one(fn, p, *a, **k):
    return fn(local(p), *a, **k)

  def writing(fn, p, *a, **k):
    rel = os.path.relpath(local(p), root)
    if rel.split(os.sep)[0] in deny:
      raise PermissionError(13, "Permission denied")
    return one(fn, p, *a, **k)

  def opening(fn, p, mode="r", *a, **k):
    return (one if mode.startswith("r") else writing)(fn, p, mode, *a, **k)

  def two(fn, p, dst, *a, **k):
    return fn(local(p), local(dst), *a, **k)

  def walk(fn, p, *a, **k):
    for top, dirs, files in fn(local(p), *a, **k):
      yield top, dirs, files

  def glob(fn, p):  # answers in the spelling it was asked in
    found = fn(local(p))
    if local(p) == os.fspath(p):
      return found
    return ["gs://" + os.path.relpath(g, root) for g in found]

  keep = paths.missing_backend, paths.for_orbax
  paths.missing_backend = lambda path: None  # the mocked bucket needs no gcsfs
  # Orbax talks to GCS through its own clients, not epath: give it the bucket's local folder
  paths.for_orbax = lambda path: local(paths.resolve(path))
  try:
    with epath_testing.mock_epath(
        open=opening, exists=one, isdir=one, listdir=one, makedirs=writing, mkdir=writing, remove=one,
        rmtree=one, stat=one, rename=two, replace=two, copy=two, walk=walk, glob=glob):
      yield root
  finally:
    paths.missing_backend, paths.for_orbax = keep
