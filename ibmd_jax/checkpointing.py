"""Orbax checkpoints: teacher checkpoints and a run-state manager with automatic resume.

Layout of a workdir:
  <workdir>/teacher/             a teacher: Orbax params + teacher.json (model, bridge, provenance)
  <workdir>/checkpoints/<step>/  run states saved by CheckpointManager, three items:
      state  the training state (Orbax StandardSave, restored straight into its shardings)
      meta   JSON: the step
      data   the data pipeline's position (grain's own Orbax handler, one file per process)
A checkpoint that fails to restore (truncated, corrupt) is skipped with a warning and the previous
one is used; nothing is ever deleted because a save or a restore failed.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import grain
import grain.checkpoint
import jax
import orbax.checkpoint as ocp
from absl import logging

from ibmd_jax.bridges import Bridge
from ibmd_jax.models import model_defaults, resolve_model_config

TEACHER_META = "teacher.json"


def save_teacher(directory: str, params: Any, meta: dict) -> None:
  """Writes params (Orbax) and meta (JSON: model config, bridge, source) to directory."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  json.dumps(meta)  # fail before writing anything if meta is not JSON-serialisable
  params_dir = os.path.join(directory, "params")
  with ocp.StandardCheckpointer() as ckptr:  # sharded arrays are written shard by shard
    ckptr.save(params_dir, params, force=True)
  with open(os.path.join(directory, TEACHER_META + ".tmp"), "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(os.path.join(directory, TEACHER_META + ".tmp"), os.path.join(directory, TEACHER_META))


def read_teacher_meta(directory: str) -> dict:
  """teacher.json of a teacher checkpoint; clear errors when it is absent."""
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, TEACHER_META)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"teacher checkpoint directory {directory} does not exist: train one with "
        "--config.mode=teacher, or convert a PyTorch checkpoint with `python -m launch.convert`")
  if not os.path.exists(meta_path) or not os.path.isdir(os.path.join(directory, "params")):
    raise FileNotFoundError(
        f"{directory} is not a teacher checkpoint: expected {TEACHER_META} and params/ inside")
  with open(meta_path) as f:
    return json.load(f)


def load_teacher(directory: str, target: Optional[Any] = None) -> tuple[Any, dict]:
  """Reads a teacher written by save_teacher (or launch.convert): (params, meta). target:
  ShapeDtypeStructs (with shardings) to restore into; clear errors when absent."""
  meta = read_teacher_meta(directory)
  params_dir = os.path.join(os.path.abspath(directory), "params")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      params = ckptr.restore(params_dir, target) if target is not None else ckptr.restore(params_dir)
    except Exception as e:  # noqa: BLE001 - re-raised with the path and a hint
      raise ValueError(f"could not read the teacher parameters in {params_dir}: {e}") from e
  return params, meta


# Model options that change how a network computes, not its weights: a teacher saved with one
# value runs with another (e.g. a float32 converted checkpoint distilled in bfloat16 with remat).
COMPUTE_ONLY_MODEL_KEYS = ("dtype", "remat", "attention_impl")

# The time input a converted network was trained on (launch.convert's teacher.json 'c_noise') and
# the Bridge.c_noise kind that produces it.
_C_NOISE_KINDS = {"i2sb_noise_levels": "i2sb", "ddbm_250logt": "log250"}


def _plain(v):
  if isinstance(v, (list, tuple)):
    return [_plain(a) for a in v]
  return v


def teacher_mismatch(meta: dict, config) -> Optional[str]:
  """Why a saved / converted teacher cannot serve a config, or None when it can.

  Compares the network architecture (every model option but COMPUTE_ONLY_MODEL_KEYS; lists and
  tuples alike, absent options at their defaults), the input width (x, plus xT when the config is
  conditional) and, for converted checkpoints, the time input its network was trained on against
  the one the config's bridge feeds.
  """
  model = resolve_model_config(config.model, Bridge.from_config(config.bridge))
  saved = meta.get("model")
  if saved:
    saved = dict(saved)
    if saved.get("name") != model.get("name"):
      return f"it is a {saved.get('name')!r} network but config.model.name is {model.get('name')!r}"
    defaults = model_defaults(model.get("name"))
    keys = (set(saved) | set(model)) - set(COMPUTE_ONLY_MODEL_KEYS) - {"name"}
    missing = object()
    diff = []
    for k in sorted(keys):
      a, b = saved.get(k, defaults.get(k, missing)), model.get(k, defaults.get(k, missing))
      if _plain(a) != _plain(b):
        diff.append(f"model.{k}: teacher {_plain(a) if a is not missing else '(absent)'}, "
                    f"config {_plain(b) if b is not missing else '(absent)'}")
    if diff:
      return "its network differs from config.model (" + "; ".join(diff) + ")"
  conditional = bool(config.conditional)
  if "conditional" in meta and bool(meta["conditional"]) != conditional:
    return (f"it was trained with conditional={bool(meta['conditional'])} but the config has "
            f"conditional={conditional}")
  if "in_channels" in meta:
    channels = int(config.data.channels)
    want = channels * (2 if conditional else 1)
    if int(meta["in_channels"]) != want:
      return (f"its first convolution takes {meta['in_channels']} input channels, but the config "
              f"feeds {want} ({channels} image channels"
              f"{', plus xT: conditional=True' if conditional else ', conditional=False'}); a "
              f"{meta.get('family', '?')} checkpoint needs that family's config")
  if meta.get("c_noise") in _C_NOISE_KINDS:
    bridge = Bridge.from_config(config.bridge)
    kind = bridge.c_noise_kind
    if kind == "default":
      kind = "i2sb" if bridge.kind == "i2sb" else "log250"
    if kind != _C_NOISE_KINDS[meta["c_noise"]]:
      return (f"its network was trained on {meta['c_noise']} time inputs ({meta.get('family')} "
              f"convention), but bridge kind={bridge.kind!r}, c_noise_kind="
              f"{bridge.c_noise_kind!r} feeds {kind!r}")
  return None


def _handlers() -> dict:
  return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
          "data": grain.checkpoint.CheckpointHandler()}


class RunCheckpointer:
  """CheckpointManager wrapper: periodic async saves, keep-last-K plus the best, resume with fallback.

  Each checkpoint holds the state, a JSON meta (the step) and, when a data iterator is given, its
  position (grain's checkpoint handler). With ``best_metric`` set, a second manager in
  ``<directory>_best`` keeps the single checkpoint with the best value of that metric
  (``best_mode`` 'min' or 'max') among the periodic saves; the last-K rotation never deletes it.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every: int = 1000,
               async_save: bool = True, best_metric: str = "", best_mode: str = "min"):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_every, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())
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
                                        item_handlers=_handlers())

  @staticmethod
  def _args(state, meta: dict, data):
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data is not None and hasattr(data, "get_state"):  # grain iterators; other sources: none
      items["data"] = grain.checkpoint.CheckpointSave(data)
    return ocp.args.Composite(**items)

  def save(self, step: int, state: Any, data: Any = None, *, force: bool = False,
           metrics: Optional[dict] = None) -> bool:
    """Saves at save_every multiples (or when forced); metrics feed the keep-best manager.

    data: the training data iterator (a grain DatasetIterator), whose position is saved beside the
    state, or None."""
    if step == self.manager.latest_step():  # already saved (periodic save at the last step)
      return False
    if not force and not self.manager.should_save(step):
      return False
    meta = {"step": int(step)}
    saved = self.manager.save(step, args=self._args(state, meta, data), force=force)
    if saved and self.best is not None and metrics and self.best_metric in metrics:
      value = float(metrics[self.best_metric])
      self.best.save(step, args=self._args(state, {**meta, "metrics": {self.best_metric: value}},
                                           data),
                     metrics={self.best_metric: value}, force=True)
    return saved

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

  def latest_step(self) -> Optional[int]:
    self.manager.reload()
    return self.manager.latest_step()

  def restore_latest(self, abstract_state: Any, data: Any = None
                     ) -> tuple[Optional[int], Any, Optional[dict]]:
    """(step, state, meta) of the newest checkpoint that restores, else (None, None, None).

    abstract_state: ShapeDtypeStructs with shardings (the state is restored into them). data: the
    data iterator, set to the saved position in place. Checkpoints written before the data
    position became an Orbax item (it was JSON in meta['data']) are read too."""
    self.manager.reload()
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if data is not None and has_data and hasattr(data, "set_state"):
          items["data"] = grain.checkpoint.CheckpointRestore(data)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        meta = dict(out["meta"] or {})
        if data is not None and not has_data and meta.get("data") and hasattr(data, "set_state"):
          _set_legacy_data_state(data, meta["data"])
        return step, out["state"], meta
      except Exception as e:  # noqa: BLE001 - a broken checkpoint must not stop a resume
        logging.warning("checkpoint at step %d in %s could not be restored (%s: %s); "
                        "falling back to the previous one", step, self.directory,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
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


def _set_legacy_data_state(iterator, saved: dict) -> None:
  """Older checkpoints kept {role: grain state as latin-1 text} in their JSON meta."""
  if len(saved) != 1:
    raise ValueError(f"the checkpoint's legacy data position has roles {sorted(saved)}; "
                     "expected one")
  state = next(iter(saved.values()))
  iterator.set_state(state.encode("latin-1") if isinstance(state, str) else state)
