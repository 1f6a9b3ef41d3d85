"""Orbax run-state checkpoints with automatic resume, and what a checkpoint vouches for (tree
signature, checksums, finite values, the config's fingerprint); a save that does not fit on its
disk is one DiskFullError. (A teacher's checkpoint and its fit to a config: ibmd_jax.teacher_io.)

Layout of a workdir:
  <workdir>/checkpoints/<step>/  run states saved by CheckpointManager, three items:
      state  the training state (Orbax StandardSave, restored straight into its shardings)
      meta   JSON: the step
      data   the data pipeline's position (grain's own Orbax handler, one file per process)
A checkpoint that fails to restore (truncated, corrupt) is skipped with a warning and the previous
one is used; nothing is ever deleted because a save or a restore failed.
"""
from __future__ import annotations

import json
import logging as logging_std
import os
import shutil
import sys
import time
from typing import Any, Optional

import grain
import grain.checkpoint
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from absl import logging

from ibmd_jax import paths
from ibmd_jax.errors import (DISK_ERRNOS, CheckpointMismatch, DiskFullError,
                             NoRestorableCheckpoint, NonFiniteError)

def _plain(v):
  if isinstance(v, (list, tuple)):
    return [_plain(a) for a in v]
  return v


def _handlers() -> dict:
  return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
          "data": grain.checkpoint.CheckpointHandler()}


# ---------------------------------------------------------------- what a checkpoint vouches for
def tree_signature(tree: Any) -> dict:
  """{leaf path: [shape, dtype]} of a state (arrays or ShapeDtypeStructs)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p, simple=True, separator="/"): [list(x.shape), str(x.dtype)]
          for p, x in flat}


def _leaf_digest(x) -> tuple[int, bool]:
  """(sum of the raw bits' words mod 2^32, all finite) of this process's share of a leaf: the
  replica-0 copy of each of its addressable shards (so every element counts once over the run's
  processes). On the host, from the shards' buffers: no program to compile."""
  shards = [s.data for s in x.addressable_shards if s.replica_id == 0] if isinstance(
      x, jax.Array) else [x]
  total, finite = 0, True
  for data in shards:
    if jax.dtypes.issubdtype(data.dtype, jax.dtypes.prng_key):
      data = jax.random.key_data(data)
    a = np.ascontiguousarray(np.asarray(data)).reshape(-1)
    size = a.dtype.itemsize
    words = a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[size])
    total = (total + int(words.sum(dtype=np.uint64))) % (1 << 32)
    if jnp.issubdtype(a.dtype, jnp.inexact):
      finite = finite and bool(np.isfinite(a.astype(np.float32) if size < 4 else a).all())
  return total, finite


def state_digest(state: Any) -> tuple[list, list]:
  """(per-leaf checksums of the raw bits, leaf paths that are not finite). The sums are exact
  (integer, order-free), so a state restored on another mesh has the same checksum."""
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  parts = [_leaf_digest(x) for _, x in flat]
  sums = np.array([p[0] for p in parts], np.int64)
  finite = np.array([p[1] for p in parts], bool)
  if jax.process_count() > 1:  # every process holds a share: add them up
    sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0) % (1 << 32)
    finite = np.asarray(multihost_utils.process_allgather(finite)).all(0)
  bad = [jax.tree_util.keystr(p, simple=True, separator="/")
         for (p, _), ok in zip(flat, finite) if not ok]
  return [int(v) for v in sums], bad


def flat_config(config) -> dict:
  """A config (ConfigDict / dict) as {'a.b': JSON value}: the fingerprint kept in checkpoints."""
  out = {}

  def walk(node, prefix):
    items = node.items() if hasattr(node, "items") else ()
    for k, v in items:
      if hasattr(v, "items"):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = _plain(v)
  walk(config.to_dict() if hasattr(config, "to_dict") else dict(config), "")
  return json.loads(json.dumps(out, default=str))


def _differences(saved: dict, current: dict, limit: int = 10) -> list[str]:
  out = []
  for k in sorted(set(saved) | set(current)):
    a, b = saved.get(k, "(absent)"), current.get(k, "(absent)")
    if a != b:
      out.append(f"{k}: {a} -> {b}")
  return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


_DISK_TEXTS = ("No space left", "Disk quota exceeded", "File too large")


def _disk_reason(e: Optional[BaseException]) -> Optional[str]:
  """Why e (or an exception it was raised from) is a write that did not fit on its disk, or None
  when it is not one. Orbax's TensorStore writes report it as text, Python's as an OSError."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
      return os.strerror(e.errno)
    text = next((t for t in _DISK_TEXTS if t in str(e)), None)
    if text:
      return text
    e = e.__cause__ or e.__context__
  return None


class _QuietDiskErrors(logging_std.Filter):
  """Drops Orbax's own logged tracebacks of a write that did not fit (RunCheckpointer reports it
  in one line instead); every other record passes."""

  def filter(self, record) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return _disk_reason(exc) is None and not any(t in record.getMessage() for t in _DISK_TEXTS)


_QUIET = _QuietDiskErrors()


_ONE_WRITER = False


def one_writer_per_array():
  """Orbax splits each replicated array between its replicas so that several hosts write parts of
  it. In one process that is pure overhead: every part goes through an eagerly dispatched slice
  (on 8 CPU devices, thousands of them per save of a small UNet: 2x the save time). Arrays are
  then written whole from their first replica; several processes keep Orbax's default."""
  global _ONE_WRITER
  if jax.process_count() == 1 and not _ONE_WRITER:  # once: Orbax logs every override
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    _ONE_WRITER = True


def _orphan_callback(args) -> bool:
  """Whether an unraisable error is a TensorStore write's completion callback that found Orbax's
  event loop already closed: when one write of a save fails (full disk), Orbax's save coroutine
  ends and closes its loop while the save's other writes are still running; each of them, on
  finishing, raises 'Event loop is closed' in TensorStore's thread, which hands it to
  sys.unraisablehook (a bare traceback on stderr). RunCheckpointer reports the failure itself in
  one line; these say nothing more."""
  exc, tb = args.exc_value, args.exc_traceback
  if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
    return False
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def _quiet_unraisable(previous):
  def hook(args):
    if not _orphan_callback(args):
      previous(args)
  hook.ibmd_quiet = True
  return hook


def _quiet_disk_errors():
  if _QUIET not in logging_std.getLogger("absl").filters:
    logging_std.getLogger("absl").addFilter(_QUIET)
  if not getattr(sys.unraisablehook, "ibmd_quiet", False):
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def by_process_0(fn, name: str):
  """fn() on process 0 only (the directory is shared), the others wait for it."""
  if jax.process_index() == 0:
    fn()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"ibmd_jax_{name}")


def _nbytes(state) -> int:
  """Bytes this process writes for a state (its share of every global array)."""
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(state)) // max(jax.process_count(), 1)


class RunCheckpointer:
  """CheckpointManager wrapper: periodic async saves, keep-last-K plus the best, careful resume.

  Each checkpoint holds the state, a JSON meta and, when a data iterator is given, its position
  (grain's checkpoint handler). The meta keeps the step, the state's tree signature (leaf paths,
  shapes, dtypes), a checksum of every leaf's bits and the run's config (`fingerprint`). Only
  finite states are saved. On resume a checkpoint whose tree differs from the config's state stops
  the run (CheckpointMismatch, naming leaves and config keys); a corrupt one (unreadable, checksum
  differs, non-finite) is skipped with a warning for the previous one; when checkpoints exist and
  none restores the run stops (NoRestorableCheckpoint). `archive()` moves them aside (start over).

  With ``best_metric`` set, a second manager in ``<directory>_best`` keeps the single checkpoint
  with the best value of that metric (``best_mode`` 'min' or 'max') among the periodic saves.

  ``read_only=True`` opens it to read (an evaluation of a run's checkpoints while the run goes on):
  nothing is created or cleaned up. A writer's open removes the unfinished ``*-tmp`` directories
  it finds, which are a live run's checkpoint in the making when another process writes there.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every: int = 1000,
               async_save: bool = True, best_metric: str = "", best_mode: str = "min",
               fingerprint: Optional[dict] = None, min_free_mb: float = 16.0,
               read_only: bool = False):
    if max_to_keep < 1:
      raise ValueError(f"checkpoint.keep must be >= 1, got {max_to_keep}")
    if best_metric and best_mode not in ("min", "max"):
      raise ValueError(f"checkpoint.best_mode must be 'min' or 'max', got {best_mode!r}")
    # Orbax reads and writes gs:// itself; the rest goes through the path layer
    self.directory = paths.for_orbax(directory)
    self.save_every = save_every
    self.best_metric, self.best_mode = best_metric, best_mode
    self.fingerprint = fingerprint or {}
    self.async_save, self.max_to_keep = async_save, max_to_keep
    self.min_free = int(float(min_free_mb) * (1 << 20))
    self._last_saved = None  # the step of the save that may still be written in the background
    self.read_only = read_only
    _quiet_disk_errors()
    one_writer_per_array()
    self._open()

  def _open(self):
    writer = not self.read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.max_to_keep, save_interval_steps=self.save_every, create=writer,
        enable_async_checkpointing=self.async_save, cleanup_tmp_directories=writer,
        read_only=self.read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())
    self.best = None
    if self.best_metric and writer:
      metric = self.best_metric
      best_options = ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True, best_fn=lambda m: float(m[metric]), best_mode=self.best_mode,
          keep_checkpoints_without_metrics=False, enable_async_checkpointing=self.async_save,
          cleanup_tmp_directories=True)
      self.best = ocp.CheckpointManager(self.directory + "_best", options=best_options,
                                        item_handlers=_handlers())

  @staticmethod
  def _args(state, meta: dict, data):
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data is not None and hasattr(data, "get_state"):  # grain iterators; other sources: none
      items["data"] = grain.checkpoint.CheckpointSave(data)
    return ocp.args.Composite(**items)

  def save(self, step: int, state: Any, data: Any = None, *, force: bool = False,
           metrics: Optional[dict] = None, extra: Optional[dict] = None) -> bool:
    """Saves at save_every multiples (or when forced); metrics feed the keep-best manager.

    data: the training data iterator (a grain DatasetIterator), whose position is saved beside the
    state, or None. extra: more JSON for the meta. Raises NonFiniteError (nothing saved) for a
    state with a non-finite leaf and DiskFullError (the previous checkpoints intact, no temporary
    directory left) when it does not fit on its disk."""
    if step == self.manager.latest_step():  # already saved (periodic save at the last step)
      return False
    if not force and not self.manager.should_save(step):
      return False
    sums, bad = state_digest(state)
    if bad:
      raise NonFiniteError(
          f"the state of step {step} has non-finite values in {len(bad)} leaves ("
          f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); it was not saved and the "
          f"checkpoints in {self.directory} are kept. Lower the learning rate or enable gradient "
          "clipping (optimizer.grad_clip)")
    self._check_space(step, state)
    self._finish_previous()
    meta = {**(extra or {}), "step": int(step), "tree": tree_signature(state), "checksum": sums,
            "config": self.fingerprint}
    if data is not None:  # the data position is one file per process (restore_latest checks it)
      meta["processes"] = jax.process_count()
    try:
      saved = self.manager.save(step, args=self._args(state, meta, data), force=force)
      if saved and self.best is not None and metrics and self.best_metric in metrics:
        value = float(metrics[self.best_metric])
        self.best.save(step, args=self._args(
            state, {**meta, "metrics": {self.best_metric: value}}, data),
                       metrics={self.best_metric: value}, force=True)
    except Exception as e:  # noqa: BLE001 - disk errors become one line; others propagate
      self._raise_if_disk(e, step, state)
      raise
    if saved:
      self._last_saved = step
    return saved

  def _finish_previous(self):
    """Waits for the previous (background) save, so that its failure names its step."""
    if self._last_saved is None:
      return
    try:
      self.wait()
    finally:
      self._last_saved = None

  def _check_space(self, step: int, state: Any):
    need = _nbytes(state)
    if paths.is_remote(self.directory):  # a bucket has no free-space figure to check
      return
    free = shutil.disk_usage(self.directory).free
    if free < need + self.min_free:
      raise DiskFullError(
          f"no space for the checkpoint of step {step} in {self.directory}: it needs about "
          f"{(need + self.min_free) >> 20} MiB (checkpoint.min_free_mb={self.min_free >> 20} "
          f"included), {free >> 20} MiB are free. Free some space (or move the workdir) and run "
          f"the same command again; the checkpoints saved so far ({self.all_steps()}) are intact")

  def _raise_if_disk(self, e: BaseException, step: int, state: Any):
    reason = _disk_reason(e)
    if reason is None:
      return
    self._drain()
    self._remove_tmp()
    self._last_saved = None
    size = f"about {(_nbytes(state) >> 20) + 1} MiB: " if state else ""
    raise DiskFullError.with_cleanup(self._remove_tmp,
        f"the checkpoint of step {step} did not fit in {self.directory} ({size}"
        f"{reason}). "
        "Free some space and run the same command again; the checkpoints saved before "
        f"({self.all_steps(reload=False)}) are intact and the partial one was removed") from None

  def _drain(self):
    """Lets every background write of the failed save end (each fails on the full disk) and
    closes the managers, so that nothing writes into the directory after it is cleaned."""
    for manager in (self.manager, self.best):
      if manager is None:
        continue
      for _ in range(3):
        try:
          manager.wait_until_finished()
          break
        except Exception:  # noqa: BLE001 - the same disk error, reported once by the caller
          continue
      try:
        manager.close()
      except Exception:  # noqa: BLE001
        pass
    self.manager = self.best = None

  def _remove_tmp(self):
    for root in (self.directory, self.directory + "_best"):
      for name in paths.listdir(root):
        if "tmp" in name and not name.isdigit():
          try:
            paths.rmtree(paths.join(root, name))
          except OSError:
            pass

  def should_save(self, step: int) -> bool:
    """Whether `step` is a periodic save step (and not saved yet)."""
    return self.manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's preemption sync point (several processes) asks to save and stop at step."""
    return self.manager.reached_preemption(step)

  def best_step(self) -> Optional[int]:
    """The step of the kept best checkpoint (None without best_metric or before any save)."""
    if self.best is None:
      return None
    self.best.wait_until_finished()
    return self.best.best_step()

  def all_steps(self, reload: bool = True) -> list[int]:
    if self.manager is None:
      return sorted(int(n) for n in paths.listdir(self.directory) if n.isdigit())
    if reload:
      self.manager.reload()
    return sorted(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    self.manager.reload()
    return self.manager.latest_step()

  def _read_meta(self, step: int) -> dict:
    out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"] or {})

  def restore_latest(self, abstract_state: Any, data: Any = None, before: Optional[int] = None
                     ) -> tuple[Optional[int], Any, Optional[dict]]:
    """(step, state, meta) of the newest good checkpoint (below `before` if given), or
    (None, None, None) when there is none at all.

    abstract_state: ShapeDtypeStructs with shardings (the state is restored into them). data: the
    data iterator, set to the saved position in place. Raises CheckpointMismatch when a checkpoint
    was written for another state tree, NoRestorableCheckpoint when checkpoints exist and none
    restores. Checkpoints written before the data position became an Orbax item (it was JSON in
    meta['data']) and without a tree / checksum in their meta are read too."""
    steps = [s for s in self.all_steps()[::-1] if before is None or s < before]
    want = tree_signature(abstract_state)
    failures = []
    for step in steps:
      try:
        meta = self._read_meta(step)
      except Exception as e:  # noqa: BLE001 - unreadable: try the previous one
        failures.append(self._skip(step, "its meta is unreadable", e))
        continue
      if "tree" in meta and meta["tree"] != want:
        raise CheckpointMismatch(self._mismatch(step, meta, want))
      saved_by = meta.get("processes")
      if data is not None and saved_by is not None and int(saved_by) != jax.process_count():
        # Each process's data position was saved for its share of the stream: with another
        # process count the shares differ and the positions would replay or skip examples. The
        # state itself restores on any process count / mesh (restore without `data`).
        raise CheckpointMismatch(
            f"the checkpoint at step {step} in {self.directory} was written by a run of {saved_by} "
            f"processes and this run has {jax.process_count()}: its data positions are per "
            f"process, so continue it with {saved_by} processes (the device count per process may "
            "differ), or pass --config.checkpoint.start_over=True to move its checkpoints aside "
            "and start over")
      try:
        items = dict(state=ocp.args.StandardRestore(abstract_state))  # (meta: read above)
        has_data = paths.isdir(paths.join(self.directory, str(step), "data"))
        if data is not None and has_data and hasattr(data, "set_state"):
          items["data"] = grain.checkpoint.CheckpointRestore(data)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001 - a broken checkpoint must not stop a resume
        failures.append(self._skip(step, "it does not restore", e))
        continue
      sums, bad = state_digest(out["state"])
      if bad:
        failures.append(self._skip(step, f"non-finite values in {', '.join(bad[:3])}"))
        continue
      if "checksum" in meta and meta["checksum"] != sums:
        differ = [p for p, a, b in zip(want, meta["checksum"], sums) if a != b]
        failures.append(self._skip(step, f"its data differ from what was saved (checksum of "
                                         f"{', '.join(differ[:3])})"))
        continue
      if data is not None and not has_data and meta.get("data") and hasattr(data, "set_state"):
        _set_legacy_data_state(data, meta["data"])
      return step, out["state"], meta
    if failures:
      raise NoRestorableCheckpoint(
          f"none of the checkpoints in {self.directory} restores ({'; '.join(failures)}); they "
          "are kept. Remove the broken ones, or pass --config.checkpoint.start_over=True to move "
          "them aside and start from step 0")
    return None, None, None

  def _skip(self, step: int, why: str, e: Optional[BaseException] = None) -> str:
    detail = ""
    if e is not None:
      detail = f" ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    logging.warning("checkpoint at step %d in %s: %s%s; falling back to the previous one", step,
                    self.directory, why, detail)
    print(f"warning: checkpoint {step} in {self.directory} skipped: {why}", flush=True)
    return f"step {step}: {why}"

  def _mismatch(self, step: int, meta: dict, want: dict) -> str:
    saved = meta["tree"]
    leaves = [f"{k} (not in this config's state)" for k in saved if k not in want]
    leaves += [f"{k} (not in the checkpoint)" for k in want if k not in saved]
    leaves += [f"{k}: {saved[k][0]} {saved[k][1]} -> {want[k][0]} {want[k][1]}"
               for k in want if k in saved and saved[k] != want[k]]
    keys = _differences(meta.get("config") or {}, self.fingerprint) if meta.get("config") else []
    return (f"the checkpoint at step {step} in {self.directory} holds another state than this "
            f"config builds: {len(leaves)} leaves differ ({'; '.join(leaves[:6])}"
            f"{'; ...' if len(leaves) > 6 else ''})"
            + (f"; config keys changed since it was written: {'; '.join(keys)}" if keys else "")
            + ". Restore those config values to continue that run, use another workdir, or pass "
            "--config.checkpoint.start_over=True to move its checkpoints aside and start over")

  def set_aside(self, step: int) -> str:
    """Renames checkpoint `step` to suspect-<step>-<time> (kept, no longer resumed from)."""
    self.manager.wait_until_finished()
    dest = paths.join(self.directory, f"suspect-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    by_process_0(lambda: paths.isdir(paths.join(self.directory, str(step))) and paths.rename(
        paths.join(self.directory, str(step)), dest), f"set_aside_{step}")
    self.manager.reload()
    return dest

  def archive(self) -> str:
    """Moves the checkpoints (and the best one) to <directory>.replaced-<time>; returns it."""
    self.close()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = f"{self.directory}.replaced-{stamp}"

    def move():
      paths.rename(self.directory, dest)
      if paths.isdir(self.directory + "_best"):
        paths.rename(self.directory + "_best", f"{self.directory}_best.replaced-{stamp}")

    by_process_0(move, "archive")
    self._open()
    return dest

  def wait(self):
    try:
      self.manager.wait_until_finished()
      if self.best is not None:
        self.best.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._raise_if_disk(e, self._last_saved or 0, {})
      raise

  def close(self):
    if self.manager is None:  # closed (or drained after a failed save)
      return
    try:
      self.wait()
    finally:
      self.manager.close()
      self.manager = None
      if self.best is not None:
        self.best.close()
        self.best = None


def _set_legacy_data_state(iterator, saved: dict) -> None:
  """Older checkpoints kept {role: grain state as latin-1 text} in their JSON meta."""
  if len(saved) != 1:
    raise ValueError(f"the checkpoint's legacy data position has roles {sorted(saved)}; "
                     "expected one")
  state = next(iter(saved.values()))
  iterator.set_state(state.encode("latin-1") if isinstance(state, str) else state)
