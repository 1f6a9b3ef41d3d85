"""Persistent XLA compilation cache: a restarted run loads its compiled programs from disk.

A full-size IBMD round takes minutes to compile and is compiled again at every start and every
preemption restart; with the cache the restart reads the executable back (and, on GPU, XLA's
autotuning results). Cache keys cover the program, the devices, the flags and the JAX/XLA
versions, so one directory can be shared by several runs and is never read stale.

  from ibmd_jax import compile_cache
  compile_cache.enable(compile_cache.resolve("workdir", workdir))

JAX reads the setting when it first compiles with the cache in view, so enable it before the first
jit of the process (the launcher does it right after parsing flags).
"""
from __future__ import annotations

import os
from typing import Optional

import jax

from ibmd_jax import paths

OFF = ("", "off", "none", "false", "0")


def resolve(setting: Optional[str], workdir: Optional[str] = None) -> Optional[str]:
  """The cache directory for a launcher setting.

  'workdir' -> <workdir>/jax_cache (survives restarts of this run); 'user' -> $IBMD_JAX_CACHE or
  ~/.cache/ibmd_jax/jax_cache (shared by every run of this user); 'off' (or '', 'none') -> None;
  anything else is a directory path (~ and $VARS expanded).
  """
  s = (setting or "").strip()
  if s.lower() in OFF:
    return None
  if s == "workdir":
    if not workdir:
      raise ValueError("compilation cache 'workdir' needs a workdir; pass a directory path, "
                       "'user' or 'off' instead")
    return paths.join(workdir, "jax_cache")  # a gs:// workdir's cache is in the bucket
  if s == "user":
    return os.environ.get("IBMD_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ibmd_jax", "jax_cache")
  return paths.resolve(os.path.expandvars(s))


def enable(cache_dir: Optional[str], min_compile_time_s: Optional[float] = None,
           min_entry_size_bytes: int = 0) -> Optional[str]:
  """Points JAX's persistent compilation cache at cache_dir (created); None leaves it off.

  Programs that compile in less than min_compile_time_s are not written (0 writes every one;
  None: JAX's own setting JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS if set, else 1 s).
  Returns the directory.
  """
  if not cache_dir:  # off, even where JAX_COMPILATION_CACHE_DIR names one
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  if min_compile_time_s is None:
    min_compile_time_s = float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0))
  if min_compile_time_s < 0:
    raise ValueError(f"min_compile_time_s must be >= 0, got {min_compile_time_s}")
  try:
    paths.makedirs(cache_dir)
  except OSError as e:
    raise ValueError(f"cannot create the compilation cache directory {cache_dir!r} ({e}); "
                     "choose another with --compilation_cache=<dir> or turn it off with "
                     "--compilation_cache=off") from e
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
  return cache_dir


class CacheEvents:
  """Counts persistent-cache hits and writes seen by JAX's monitoring while it is registered.

    with CacheEvents() as ev:
      jax.jit(f).lower(x).compile()
    ev.hits, ev.misses   # misses: programs compiled and written to the cache
  """

  HIT = "/jax/compilation_cache/cache_hits"
  MISS = "/jax/compilation_cache/cache_misses"
  REQUEST = "/jax/compilation_cache/compile_requests_use_cache"

  def __init__(self):
    self.hits = self.misses = self.requests = 0
    self._active = False

  def _listen(self, event: str, **kwargs):
    del kwargs
    if not self._active:
      return
    if event == self.HIT:
      self.hits += 1
    elif event == self.MISS:
      self.misses += 1
    elif event == self.REQUEST:
      self.requests += 1

  def __enter__(self):
    self._active = True
    jax.monitoring.register_event_listener(self._listen)
    return self

  def __exit__(self, *exc):
    self._active = False
    try:  # private API; where it is missing an inactive listener is harmless
      from jax._src import monitoring as _mon

      _mon.unregister_event_listener(self._listen)
    except Exception:  # noqa: BLE001
      pass
    return False
