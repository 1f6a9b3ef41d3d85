"""PyTorch state dicts (torchvision layout) -> Flax variables, for the evaluation networks.

The evaluation networks name their Flax modules after the PyTorch attribute names, with numeric
indices folded into the preceding name (``layer1.0.downsample.1.running_var`` ->
``batch_stats/layer1_0/downsample_1/var``), so the conversion is a mechanical renaming plus layout
transposes:

  conv weight  [O, I, kh, kw] -> kernel [kh, kw, I, O]
  linear weight [O, I]        -> kernel [I, O]
  BatchNorm weight/bias       -> params scale/bias; running_mean/var -> batch_stats mean/var

The mapping is strict: every Flax leaf must be filled exactly once with the right shape, and every
state-dict key must be used (apart from the ignored ones), or a ValueError names the key.

Weights are read from local files only (``.pth``/``.pt`` through torch, optional; or ``.npz`` whose
keys are the state-dict names, which needs no torch).
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import flax
from flax import traverse_util

# Keys with no counterpart in an inference-only network.
_ALWAYS_IGNORED = (r".*num_batches_tracked$",)
_WRAPPER_PREFIXES = ("module.",)


def read_state_dict(path: str, missing_hint: str = "") -> dict[str, np.ndarray]:
  """Reads a state dict from a local ``.pth``/``.pt`` (torch) or ``.npz`` file as float32 numpy.

  A missing file raises FileNotFoundError naming the path, followed by `missing_hint` (where such
  a file usually comes from). Nothing is ever downloaded.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    msg = f"weights file not found: {path!r}."
    raise FileNotFoundError(f"{msg} {missing_hint}".strip())
  if path.endswith(".npz"):
    with np.load(path) as f:
      sd = {k: np.asarray(f[k]) for k in f.files}
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading {path!r} needs PyTorch; install torch or convert the file to "
                        ".npz (ibmd_jax.eval.weights.save_npz) on a machine that has it") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
      obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
      raise ValueError(f"{path!r} does not hold a state dict (got {type(obj).__name__})")
    sd = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
  out = {}
  for k, v in sd.items():
    for p in _WRAPPER_PREFIXES:
      if k.startswith(p):
        k = k[len(p):]
    out[k] = v
  return out


def save_npz(state_dict: Mapping[str, Any], path: str) -> None:
  """Writes a state dict (torch tensors or arrays) as ``.npz`` so later runs need no torch."""
  arrays = {}
  for k, v in state_dict.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().numpy()
    arrays[k] = np.asarray(v)
  np.savez(path, **arrays)


def _flax_path(key: str) -> tuple[tuple[str, ...], str]:
  """'layer1.0.downsample.1.weight' -> (('layer1_0', 'downsample_1'), 'weight')."""
  parts = key.split(".")
  modules: list[str] = []
  for p in parts[:-1]:
    if p.isdigit() and modules:
      modules[-1] = f"{modules[-1]}_{p}"
    else:
      modules.append(p)
  return tuple(modules), parts[-1]


def _target(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  """Flax (collection, *path) and the value in Flax layout for one state-dict entry."""
  modules, attr = _flax_path(key)
  if attr == "weight":
    if value.ndim == 4:
      return ("params", *modules, "kernel"), np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
      return ("params", *modules, "kernel"), np.transpose(value, (1, 0))
    if value.ndim == 1:
      return ("params", *modules, "scale"), value
  elif attr == "bias":
    return ("params", *modules, "bias"), value
  elif attr == "running_mean":
    return ("batch_stats", *modules, "mean"), value
  elif attr == "running_var":
    return ("batch_stats", *modules, "var"), value
  raise ValueError(f"no Flax counterpart for state-dict key {key!r} with shape {value.shape}")


def state_dict_to_flax(state_dict: Mapping[str, np.ndarray], abstract_variables: Any,
                       ignore: Iterable[str] = ()) -> dict:
  """Fills Flax variables shaped like `abstract_variables` (e.g. from jax.eval_shape(model.init))
  from a PyTorch state dict. `ignore` is a list of regexes for keys with no counterpart."""
  patterns = [re.compile(p) for p in (*_ALWAYS_IGNORED, *ignore)]
  flat_abstract = traverse_util.flatten_dict(flax.core.unfreeze(abstract_variables))
  filled: dict[tuple[str, ...], np.ndarray] = {}
  for key in sorted(state_dict):
    if any(p.fullmatch(key) for p in patterns):
      continue
    value = np.asarray(state_dict[key])
    path, v = _target(key, value)
    if path not in flat_abstract:
      raise ValueError(f"state-dict key {key!r} (shape {value.shape}) maps to {'/'.join(path)}, "
                       "which the Flax network does not have")
    want = tuple(flat_abstract[path].shape)
    if tuple(v.shape) != want:
      raise ValueError(f"state-dict key {key!r}: shape {value.shape} -> {v.shape} in Flax layout, "
                       f"but {'/'.join(path)} has shape {want}")
    if path in filled:
      raise ValueError(f"state-dict key {key!r} fills {'/'.join(path)} a second time")
    filled[path] = np.ascontiguousarray(v, dtype=np.float32)
  missing = sorted("/".join(p) for p in flat_abstract if p not in filled)
  if missing:
    raise ValueError(f"{len(missing)} Flax variables have no state-dict entry, e.g. {missing[:5]}")
  return traverse_util.unflatten_dict({k: jax.numpy.asarray(v) for k, v in filled.items()})
