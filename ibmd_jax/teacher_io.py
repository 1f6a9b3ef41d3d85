"""The teacher's checkpoint: its I/O (Orbax params + teacher.json) and whether it fits a config.

  <workdir>/teacher/   params/ (Orbax) + teacher.json (model, bridge, data setup, provenance)

`save_teacher` / `load_teacher` / `read_teacher_meta` read and write it (launch.convert writes
converted PyTorch teachers the same way); `teacher_mismatch(meta, task_options)` says why a saved
teacher cannot serve a run (network, bridge, data setup, input width, time input), or None.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ibmd_jax import paths
from ibmd_jax.bridges import Bridge
from ibmd_jax.checkpointing import by_process_0, one_writer_per_array
from ibmd_jax.errors import MissingPath, UnreadableCheckpoint
from ibmd_jax.models import model_defaults, resolve_model_config

TEACHER_META = "teacher.json"


def save_teacher(directory: str, params: Any, meta: dict) -> None:
  """Writes params (Orbax) and meta (JSON: model config, bridge, source) to directory."""
  directory = paths.resolve(directory)
  paths.makedirs(directory)
  json.dumps(meta)  # fail before writing anything if meta is not JSON-serialisable
  params_dir = paths.for_orbax(paths.join(directory, "params"))  # Orbax writes gs:// itself
  one_writer_per_array()
  with ocp.StandardCheckpointer() as ckptr:  # sharded arrays are written shard by shard
    ckptr.save(params_dir, params, force=True)

  def write_meta():  # whole or not at all (written aside and renamed; a bucket: one upload)
    paths.write_text(paths.join(directory, TEACHER_META), json.dumps(meta, indent=2))

  # The directory is shared: every process writing the same .tmp and renaming it raced (one
  # process's rename found the file gone: FileNotFoundError, issue 37). Process 0 writes it.
  by_process_0(write_meta, "teacher_meta")


def read_teacher_meta(directory: str) -> dict:
  """teacher.json of a teacher checkpoint; clear errors when it is absent."""
  directory = paths.resolve(directory)
  meta_path = paths.join(directory, TEACHER_META)
  if not paths.isdir(directory):
    raise MissingPath(
        f"teacher checkpoint directory {directory} does not exist: train one with "
        "--config.mode=teacher, or convert a PyTorch checkpoint with `python -m launch.convert`")
  if not paths.exists(meta_path) or not paths.isdir(paths.join(directory, "params")):
    raise MissingPath(
        f"{directory} is not a teacher checkpoint: expected {TEACHER_META} and params/ inside")
  return json.loads(paths.read_text(meta_path))


def load_teacher(directory: str, target: Optional[Any] = None) -> tuple[Any, dict]:
  """Reads a teacher written by save_teacher (or launch.convert): (params, meta). target:
  ShapeDtypeStructs (with shardings) to restore into; clear errors when absent."""
  meta = read_teacher_meta(directory)
  params_dir = paths.for_orbax(paths.join(directory, "params"))
  with ocp.StandardCheckpointer() as ckptr:
    try:
      params = ckptr.restore(params_dir, target) if target is not None else ckptr.restore(params_dir)
    except Exception as e:  # noqa: BLE001 - re-raised with the path and a hint
      raise UnreadableCheckpoint(f"could not read the teacher parameters in {params_dir}: {e}") from e
  return params, meta


# Model options that change how a network computes, not its weights: a teacher saved with one
# value runs with another (e.g. a float32 converted checkpoint distilled in bfloat16 with remat).
COMPUTE_ONLY_MODEL_KEYS = ("dtype", "remat", "attention_impl", "conv_grad")

# The time input a converted network was trained on (launch.convert's teacher.json 'c_noise') and
# the Bridge.c_noise kind that produces it.
_C_NOISE_KINDS = {"i2sb_noise_levels": "i2sb", "ddbm_250logt": "log250"}


def _plain(v):
  if isinstance(v, (list, tuple)):
    return [_plain(a) for a in v]
  return v


def teacher_mismatch(meta: dict, task) -> Optional[str]:
  """Why a saved / converted teacher cannot serve a run (task: options.TaskOptions, or anything
  with its data, model, bridge and conditional), or None when it can.

  Compares the network architecture (every model option but COMPUTE_ONLY_MODEL_KEYS; lists and
  tuples alike, absent options at their defaults), the bridge (schedule, OT-ODE, sigma,
  preconditioning, time input: options that change them), the data setup (task, degradation or
  coupling, size), the input width (x, plus xT when the config is
  conditional) and, for converted checkpoints, the time input its network was trained on against
  the one the config's bridge feeds.
  """
  model = resolve_model_config(task.model, Bridge.from_config(task.bridge))
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
  for why in (_bridge_difference(meta.get("bridge"), task.bridge),
              _data_difference(meta.get("data"), task.data)):
    if why:
      return why
  conditional = bool(task.conditional)
  if "conditional" in meta and bool(meta["conditional"]) != conditional:
    return (f"it was trained with conditional={bool(meta['conditional'])} but the config has "
            f"conditional={conditional}")
  if "in_channels" in meta:
    channels = int(task.data["channels"])
    want = channels * (2 if conditional else 1)
    if int(meta["in_channels"]) != want:
      return (f"its first convolution takes {meta['in_channels']} input channels, but the config "
              f"feeds {want} ({channels} image channels"
              f"{', plus xT: conditional=True' if conditional else ', conditional=False'}); a "
              f"{meta.get('family', '?')} checkpoint needs that family's config")
  if meta.get("c_noise") in _C_NOISE_KINDS:
    bridge = Bridge.from_config(task.bridge)
    kind = bridge.c_noise_kind
    if kind == "default":
      kind = "i2sb" if bridge.kind == "i2sb" else "log250"
    if kind != _C_NOISE_KINDS[meta["c_noise"]]:
      return (f"its network was trained on {meta['c_noise']} time inputs ({meta.get('family')} "
              f"convention), but bridge kind={bridge.kind!r}, c_noise_kind="
              f"{bridge.c_noise_kind!r} feeds {kind!r}")
  return None


# Bridge options that do not change what the teacher's network predicts.
_TRAINING_ONLY_BRIDGE_KEYS = ("weighting", "t_start_offset")


def _bridge_behaviour(bridge: Bridge) -> np.ndarray:
  u = jnp.linspace(0.02, 0.98, 25)
  lo = 0.0 if bridge.discrete else bridge.t_min
  t = lo + u * (bridge.T - lo)
  parts = [jnp.full_like(t, bridge.T), *bridge.coeffs(t), *bridge.precond_coeffs(t),
           bridge.c_noise(t)]
  return np.asarray(jnp.stack(parts))


def _bridge_difference(saved, bridge_config: dict) -> Optional[str]:
  """Why a teacher trained on bridge `saved` (teacher.json) is not the config's bridge: the
  differing options, when they change the bridge's schedule, preconditioning or time input."""
  if not saved:
    return None
  known = {f for f in Bridge.__dataclass_fields__}
  saved = {k: v for k, v in dict(saved).items() if k in known}
  current = dict(bridge_config)
  diff = [k for k in sorted(known) if k not in _TRAINING_ONLY_BRIDGE_KEYS
          and k in saved and saved[k] != current.get(k)]
  if not diff:
    return None
  a, b = Bridge.from_config(saved), Bridge.from_config(current)
  behaviour_a, behaviour_b = _bridge_behaviour(a), _bridge_behaviour(b)
  if behaviour_a.shape == behaviour_b.shape and np.allclose(behaviour_a, behaviour_b, rtol=1e-6,
                                                              atol=1e-7):
    return None  # options the bridge's kind does not use
  return ("it was trained on another bridge (" + "; ".join(
      f"bridge.{k}: teacher {saved[k]!r}, config {current.get(k)!r}" for k in diff) + ")")


# The data setup a teacher was trained for: what its x0 / xT pairs are.
_TOY_DATA_KEYS = ("kind", "coupling", "dim")
_IMAGE_DATA_KEYS = ("kind", "degradation", "hole", "quality", "image_size", "channels",
                    "tfds_name")
_PAIRED_KINDS = ("ab_folder", "diode")  # pairs on disk: the degradation option is not used


def _data_difference(saved, data_config: dict) -> Optional[str]:
  if not saved:
    return None
  saved, current = dict(saved), dict(data_config)
  keys = _TOY_DATA_KEYS if current.get("kind") == "toy" else _IMAGE_DATA_KEYS
  if current.get("kind") in _PAIRED_KINDS:
    keys = tuple(k for k in keys if k not in ("degradation", "hole", "quality"))
  diff = [k for k in keys if k in saved and _plain(saved[k]) != _plain(current.get(k))]
  if not diff:
    return None
  return ("it was trained on other data (" + "; ".join(
      f"data.{k}: teacher {saved[k]!r}, config {current.get(k)!r}" for k in diff) + ")")
