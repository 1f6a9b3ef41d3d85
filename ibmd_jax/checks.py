"""Checks before any work: config values, the workdir, and one run per workdir (a lock).

`check_config(config)` names every value that cannot work (sizes, steps, intervals, rates) with its
--config.<key>; `check_workdir(path)` says when the workdir is a file or cannot be written;
`WorkdirLock(path)` keeps a second run out of a workdir while the first is alive (its host and pid
are in <workdir>/.lock, refreshed by a heartbeat; a lock whose process is gone, or whose heartbeat
stopped `stale_s` seconds ago on a shared filesystem, is taken over with a warning).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Optional

from absl import logging

from ibmd_jax import paths
from ibmd_jax.errors import ConfigError, RunError, WorkdirLocked

MODES = ("teacher", "distill", "eval", "pipeline", "compile")  # run modes (ibmd_jax.run)
TEACHER_DTYPES = ("float32", "bfloat16")  # distill.teacher_dtype (ibmd_jax.api.frozen_teacher)


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def check_config(config) -> None:
  """Raises ConfigError naming every key whose value cannot work (all of them at once)."""
  problems = []

  def need(key: str, ok, what: str):
    try:
      value = _get(config, key)
    except (KeyError, AttributeError):
      return  # a config without this section (e.g. a hand-built one) is not checked for it
    try:
      good = ok(value)
    except TypeError:
      good = False
    if not good:
      problems.append(f"--config.{key}={value!r} {what}")

  positive = (lambda v: int(v) == v and v >= 1, "must be a whole number >= 1")
  for key in ("teacher.steps", "teacher.batch_size", "distill.rounds", "distill.batch_size",
              "distill.critic_steps", "distill.n_steps", "eval.batch_size", "checkpoint.every",
              "teacher.microbatches", "distill.microbatches",
              "checkpoint.keep", "log_every", "eval.num_conditions",
              "eval.samples_per_condition", "data.channels", "data.image_size", "data.dim"):
    need(key, *positive)
  for what in ("teacher", "distill"):
    need(f"{what}.batch_size",
         lambda v, w=what: int(v) % int(_get(config, f"{w}.microbatches")) == 0,
         f"must split into {what}.microbatches equal slices")
  need("teacher.save_every", lambda v: int(v) == v and v >= 0,
       "must be >= 0 (0: save the teacher's training state only at the end and on stops)")
  need("mode", lambda v: v in MODES, f"must be one of {MODES}")
  need("stop_after_s", lambda v: v >= 0, "must be >= 0 (0: no time limit)")
  for key in ("teacher.ema", "distill.ema"):
    need(key, lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
  for key in ("teacher.optimizer.lr", "distill.gen_optimizer.lr", "distill.critic_optimizer.lr"):
    need(key, lambda v: v > 0, "must be > 0")
  need("distill.teacher_dtype", lambda v: v in TEACHER_DTYPES, f"must be one of {TEACHER_DTYPES}")
  need("mesh.data", lambda v: v == -1 or v >= 1, "must be -1 (every device) or >= 1")
  need("mesh.fsdp", lambda v: v >= 1, "must be >= 1")
  need("guard.divergence_factor", lambda v: v == 0 or v > 1,
       "must be 0 (off) or > 1 (a multiple of the running median)")
  need("guard.window", lambda v: int(v) == v and v >= 3, "must be a whole number >= 3")
  need("lock_stale_s", lambda v: v > 0, "must be > 0 seconds")
  need("checkpoint.min_free_mb", lambda v: v >= 0, "must be >= 0")
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))


def check_workdir(workdir: str) -> str:
  """The workdir as the run names it (local: absolute; gs://: kept), created if needed, after a
  test write; one clear error when it cannot be used (ibmd_jax.paths.check_workdir)."""
  return paths.check_workdir(workdir)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


class WorkdirLock:
  """<workdir>/.lock: {host, pid, started}; taken atomically (O_EXCL) on a local disk, by
  write-and-read-back in a bucket (ibmd_jax.paths.create_exclusive), refreshed every heartbeat_s
  by a daemon thread, released on exit."""

  NAME = ".lock"

  def __init__(self, workdir: str, stale_s: float = 300.0, heartbeat_s: Optional[float] = None):
    self.path = paths.join(workdir, self.NAME)
    self.stale_s = float(stale_s)
    self.heartbeat_s = heartbeat_s or max(min(self.stale_s / 4, 30.0), 0.05)
    self.held = False
    self._stop = threading.Event()
    self._thread = None

  def _holder(self) -> tuple[dict, float]:
    try:
      info = json.loads(paths.read_text(self.path))
    except (OSError, ValueError):
      info = {}
    return info, paths.age_s(self.path)

  def _stale(self, info: dict, age: float) -> Optional[str]:
    """Why the holder is gone (None when it may be alive)."""
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
      if not _pid_alive(info["pid"]):
        return f"process {info['pid']} on this host is gone"
    if age > self.stale_s:
      return f"its heartbeat stopped {age:.0f} s ago (lock_stale_s={self.stale_s:g})"
    return None

  def acquire(self) -> "WorkdirLock":
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
      if not paths.create_exclusive(self.path, json.dumps(me)):
        info, age = self._holder()
        why = self._stale(info, age)
        if why is None:
          raise WorkdirLocked(
              f"workdir {paths.dirname(self.path)} is in use by the run of process "
              f"{info.get('pid', '?')} on host {info.get('host', '?')} (started "
              f"{info.get('started', '?')}; lock {self.path}): wait for it to finish, stop it, or "
              "pass another --workdir") from None
        # take over: locally one process wins the rename, the others retry and find the new lock;
        # in a bucket the stale lock is removed and the next create decides
        try:
          if paths.is_remote(self.path):
            paths.remove(self.path)
          else:
            aside = f"{self.path}.stale.{os.getpid()}"
            os.rename(self.path, aside)
            os.remove(aside)
          logging.warning("taking over the lock %s of process %s on %s: %s", self.path,
                          info.get("pid", "?"), info.get("host", "?"), why)
          print(f"warning: took over a stale workdir lock ({why})", flush=True)
        except FileNotFoundError:
          pass
        continue
      self.held = True
      self._thread = threading.Thread(target=self._beat, daemon=True)
      self._thread.start()
      return self
    raise WorkdirLocked(f"could not take the workdir lock {self.path}: another run keeps taking it")

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      try:
        paths.touch(self.path)
      except Exception:  # pylint: disable=broad-except  # a missed beat is retried
        pass

  def release(self):
    if not self.held:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    info, _ = self._holder()
    if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
      try:
        paths.remove(self.path)
      except OSError:
        pass
    self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def acquire_on_process_0(lock: WorkdirLock) -> None:
  """Process 0 takes the lock for the run's processes; all of them stop when it is held."""
  import jax  # here: the checks above run before JAX starts (the launcher's first lines)

  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirLocked as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    held = bool(multihost_utils.broadcast_one_to_all(np.asarray(error is not None)))
    if held and error is None:
      error = WorkdirLocked(f"workdir {paths.dirname(lock.path)} is in use by another run "
                            "(process 0 of this run found its lock)")
  if error is not None:
    raise error
