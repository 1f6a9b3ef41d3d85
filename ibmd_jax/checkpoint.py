"""Orbax checkpoints: teacher checkpoints and a run-state manager with automatic resume.

Layout of a workdir:
  <workdir>/teacher/           a teacher: Orbax params + teacher.json (model, bridge, provenance)
  <workdir>/checkpoints/<step>/  run states saved by CheckpointManager (state + meta items)
A checkpoint that fails to restore (truncated, corrupt) is skipped with a warning and the previous
one is used; nothing is ever deleted because a save or a restore failed.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging

TEACHER_META = "teacher.json"


def save_teacher(directory: str, params: Any, meta: dict) -> None:
  """Writes params (Orbax) and meta (JSON: model config, bridge, source) to directory."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  json.dumps(meta)  # fail before writing anything if meta is not JSON-serialisable
  params_dir = os.path.join(directory, "params")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(params_dir, jax.device_get(params), force=True)
  with open(os.path.join(directory, TEACHER_META + ".tmp"), "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(os.path.join(directory, TEACHER_META + ".tmp"), os.path.join(directory, TEACHER_META))


def load_teacher(directory: str, target: Optional[Any] = None) -> tuple[Any, dict]:
  """Reads a teacher written by save_teacher (or launch.convert); clear errors when absent."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, TEACHER_META)
  params_dir = os.path.join(directory, "params")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"teacher checkpoint directory {directory} does not exist: train one with "
        "--config.mode=teacher, or convert a PyTorch checkpoint with `python -m launch.convert`")
  if not os.path.exists(meta_path) or not os.path.isdir(params_dir):
    raise FileNotFoundError(
        f"{directory} is not a teacher checkpoint: expected {TEACHER_META} and params/ inside")
  with open(meta_path) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as ckptr:
    try:
      params = ckptr.restore(params_dir, target) if target is not None else ckptr.restore(params_dir)
    except Exception as e:  # noqa: BLE001 - re-raised with the path and a hint
      raise ValueError(f"could not read the teacher parameters in {params_dir}: {e}") from e
  return params, meta


class RunCheckpointer:
  """CheckpointManager wrapper: periodic async saves, keep-last-K plus the best, resume with fallback.

  With ``best_metric`` set, a second manager in ``<directory>_best`` keeps the single checkpoint with
  the best value of that metric (``best_mode`` 'min' or 'max') among the periodic saves; the last-K
  rotation never deletes it.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every: int = 1000,
               async_save: bool = True, best_metric: str = "", best_mode: str = "min"):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_every, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))
    self.save_every = save_every
    self.best_metric = best_metric
    self.best = None
    if best_metric:
      if best_mode not in ("min", "max"):
        raise ValueError(f"checkpoint.best_mode must be 'min' or 'max', got {best_mode!r}")
      best_options = ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True, best_fn=lambda m: float(m[best_metric]), best_mode=best_mode,
          keep_checkpoints_without_metrics=False, enable_async_checkpointing=async_save)
      self.best = ocp.CheckpointManager(self.directory + "_best", options=best_options,
                                        item_names=("state", "meta"))

  def save(self, step: int, state: Any, meta: dict, force: bool = False,
           metrics: Optional[dict] = None) -> bool:
    """Saves at save_every multiples (or when forced); metrics feed the keep-best manager."""
    if step == self.manager.latest_step():  # already saved (periodic save at the last step)
      return False
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    if saved and self.best is not None and metrics and self.best_metric in metrics:
      value = float(metrics[self.best_metric])
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({**meta, "metrics": {
              self.best_metric: value}})), metrics={self.best_metric: value}, force=True)
    return saved

  def best_step(self) -> Optional[int]:
    """The step of the kept best checkpoint (None without best_metric or before any save)."""
    if self.best is None:
      return None
    self.best.wait_until_finished()
    return self.best.best_step()

  def restore_latest(self, abstract_state: Any) -> tuple[Optional[int], Any, Optional[dict]]:
    """(step, state, meta) of the newest checkpoint that restores, else (None, None, None)."""
    self.manager.reload()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return step, out["state"], out["meta"]
      except Exception as e:  # noqa: BLE001 - a broken checkpoint must not stop a resume
        logging.warning("checkpoint at step %d in %s could not be restored (%s: %s); "
                        "falling back to the previous one", step, self.directory,
                        type(e).__name__, str(e).splitlines()[0][:200])
    return None, None, None

  def wait(self):
    self.manager.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self):
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None
    if self.best is not None:
      self.best.wait_until_finished()
      self.best.close()
      self.best = None
