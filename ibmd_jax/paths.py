"""The run's files, on a local disk or a bucket (``gs://``), through one path layer.

Every file a run writes — config.json, metrics.jsonl, the workdir lock, the teacher, checkpoints,
evaluation outputs — is named and written through these functions, so that a workdir such as
``gs://bucket/run`` is one place shared by all the workers of a pod instead of a folder named
``gs:`` on each worker's local disk (what ``os.path.abspath("gs://b/r")`` makes).

Built on ``etils.epath`` (a TFDS and Orbax dependency): a local path is made absolute; a URI
(``gs://``, ``s3://``) is kept as it is and read and written through epath's fsspec backend, which
needs ``gcsfs`` for ``gs://`` (``pip install -e ".[gcs]"``; epath uses TensorFlow's gfile instead
where TensorFlow is installed). Tests mock the bucket with ``etils.epath.testing.mock_epath``.

What a bucket cannot do is done another way here, and said so:
- appending to an object: ``append_text`` rewrites the whole object (metrics.jsonl is small);
- creating a file only if it does not exist (the workdir lock): ``create_exclusive`` checks,
  writes, then reads back its own token (two runs starting within the same second may both see
  the other's token and both stop; neither can silently share the workdir).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import time
import uuid
from typing import Iterator, Optional, Union

from etils import epath

from ibmd_jax.errors import ConfigError, RunError

PathLike = Union[str, os.PathLike, epath.Path]
# URI schemes epath reads and writes through its fsspec backend, with the package each needs
# (or TensorFlow's gfile, which serves them all).
SCHEMES = {"gs": "gcsfs", "s3": "s3fs"}


def scheme(path: PathLike) -> Optional[str]:
  """'gs' for 'gs://b/x', None for a local path."""
  text = os.fspath(path) if not isinstance(path, str) else path
  head, sep, _ = text.partition("://")
  return head.lower() if sep and head.isalpha() else None


def is_remote(path: PathLike) -> bool:
  return scheme(path) is not None


def resolve(path: PathLike) -> str:
  """A path as the run names it: local paths absolute (and '~' expanded), URIs unchanged."""
  text = os.fspath(path)
  if not text:
    raise ConfigError("an empty path was given: pass the run directory with --workdir")
  s = scheme(text)
  if s is None:
    return os.path.abspath(os.path.expanduser(text))
  if s not in SCHEMES:
    raise ConfigError(f"{text}: the {s}:// scheme is not supported; use a local path or one of "
                      + ", ".join(f"{k}://" for k in SCHEMES))
  return text.rstrip("/")


def Path(path: PathLike) -> epath.Path:  # pylint: disable=invalid-name
  """The epath.Path of a run file (local: absolute)."""
  return epath.Path(resolve(path))


def join(base: PathLike, *parts: str) -> str:
  """base/part/...: '/' joins a URI, os.path.join a local path."""
  base = resolve(base)
  if is_remote(base):
    return "/".join([base] + [p.strip("/") for p in parts])
  return os.path.join(base, *parts)


def dirname(path: PathLike) -> str:
  text = resolve(path)
  return text.rsplit("/", 1)[0] if is_remote(text) else os.path.dirname(text)


def missing_backend(path: PathLike) -> Optional[str]:
  """The package a URI needs that is not installed (None: it can be read and written)."""
  s = scheme(path)
  if s is None or importlib.util.find_spec("tensorflow") is not None:
    return None
  need = SCHEMES.get(s)
  return need if need and importlib.util.find_spec(need) is None else None


def exists(path: PathLike) -> bool:
  return Path(path).exists()


def isdir(path: PathLike) -> bool:
  return Path(path).is_dir()


def makedirs(path: PathLike) -> str:
  p = Path(path)
  p.mkdir(parents=True, exist_ok=True)
  return os.fspath(p)


def read_text(path: PathLike) -> str:
  return Path(path).read_text()


def write_text(path: PathLike, text: str) -> None:
  """The file holds `text` whole or keeps what it held: a local file is written aside and renamed
  over it; an object in a bucket is replaced in one upload."""
  p = Path(path)
  if is_remote(p):
    p.write_text(text)
    return
  tmp = p.parent / f".{p.name}.{os.getpid()}.tmp"
  tmp.write_text(text)
  os.replace(os.fspath(tmp), os.fspath(p))


def append_text(path: PathLike, text: str) -> None:
  """Appends to a local file; rewrites a bucket's object with `text` added (objects cannot be
  appended to)."""
  p = Path(path)
  if is_remote(p):
    old = p.read_text() if p.exists() else ""
    p.write_text(old + text)
    return
  with p.open("a") as f:
    f.write(text)


def remove(path: PathLike) -> None:
  """Removes a file; a missing one is not an error."""
  p = Path(path)
  try:
    p.unlink()
  except FileNotFoundError:
    pass


def touch(path: PathLike) -> None:
  """Marks a file as fresh: a local file's mtime; a bucket's object is rewritten."""
  p = Path(path)
  if is_remote(p):
    p.write_text(p.read_text())
  else:
    os.utime(os.fspath(p))


def age_s(path: PathLike) -> float:
  """Seconds since the file was last written (0 where the store does not say). Local files: the
  float mtime (epath's stat rounds it to whole seconds)."""
  text = resolve(path)
  try:
    if not is_remote(text):
      return max(0.0, time.time() - os.path.getmtime(text))
    mtime = float(getattr(Path(text).stat(), "mtime", 0.0) or 0.0)
  except (OSError, NotImplementedError):
    return 0.0
  return max(0.0, time.time() - mtime) if mtime else 0.0


def create_exclusive(path: PathLike, text: str) -> bool:
  """Creates the file with `text` if it does not exist; False when it already does. Local: atomic
  (O_EXCL). A bucket: exists-check, write, read back (see the module docstring)."""
  p = Path(path)
  if not is_remote(p):
    try:
      fd = os.open(os.fspath(p), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True
  if p.exists():
    return False
  p.write_text(text)
  return p.read_text() == text


def check_workdir(workdir: PathLike) -> str:
  """The workdir as the run names it (local: absolute), created if needed, after a test write;
  one clear error when it cannot be used (no backend for its scheme, a file, not writable, no
  bucket or no access). Called before any work."""
  if not os.fspath(workdir):
    raise ConfigError("--workdir is empty: pass the run directory")
  path = resolve(workdir)
  need = missing_backend(path)
  if need:
    raise ConfigError(f"workdir {path}: reading and writing {scheme(path)}:// needs the {need} "
                      f"package on every worker: pip install -e \".[gcs]\" (or pip install {need})")
  p = epath.Path(path)
  probe = p / f".write_test.{uuid.uuid4().hex[:8]}"
  try:
    if p.exists() and not p.is_dir():
      raise RunError(f"workdir {path} is a file, not a directory: pass another --workdir")
    p.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    if probe.read_text() != "ok":
      raise OSError(f"{probe} did not read back what was written")
    probe.unlink()
  except RunError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # OSError, or a bucket client's error
    why = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200] or type(e).__name__
    hint = ("check that the bucket exists and that this machine's account may write to it "
            "(gcloud storage ls " + path + ")") if is_remote(path) else "fix its permissions"
    raise RunError(f"workdir {path} is not writable ({why}): {hint}, or pass another "
                   "--workdir") from None
  return path


def copy_tree(local_dir: str, dest: PathLike) -> int:
  """Copies a local folder's files into dest (created; files there replaced); returns how many."""
  n = 0
  for root, _, files in os.walk(local_dir):
    rel = os.path.relpath(root, local_dir)
    target = Path(dest) if rel == "." else Path(dest) / rel
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
      (target / name).write_bytes(open(os.path.join(root, name), "rb").read())
      n += 1
  return n


@contextlib.contextmanager
def staged(directory: PathLike) -> Iterator[str]:
  """A local folder to write `directory`'s files into, for writers that need a local path
  (matplotlib, PIL, numpy, TensorBoard): `directory` itself when it is local; a temporary folder
  otherwise, whose files are copied to the bucket when the block ends without an error."""
  if not is_remote(directory):
    yield makedirs(directory)
    return
  with tempfile.TemporaryDirectory(prefix="ibmd_stage_") as tmp:
    yield tmp
    copy_tree(tmp, directory)


def local_dir(path: PathLike) -> Optional[str]:
  """The local folder of a path, or None for a bucket (for what only a local disk has: free
  space, caches that must be read back in place)."""
  return None if is_remote(path) else resolve(path)


def for_orbax(path: PathLike) -> str:
  """The directory string handed to Orbax (checkpoints, the teacher's parameters): the run's path
  as it is — Orbax reads and writes gs:// itself (TensorStore's GCS driver, the GCS client). Tests
  that mock the bucket map it to the bucket's local folder here (tests/mock_gcs.py), since Orbax's
  GCS clients do not go through epath."""
  return resolve(path)


def rename(src: PathLike, dst: PathLike) -> None:
  """Moves a file or folder (a bucket: copied and deleted by the backend)."""
  Path(src).rename(Path(dst))


def rmtree(path: PathLike) -> None:
  """Removes a folder and what it holds; a missing one is not an error."""
  p = Path(path)
  if p.exists():
    p.rmtree()


def listdir(path: PathLike) -> list[str]:
  """Names in a folder ([] when it does not exist)."""
  p = Path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
