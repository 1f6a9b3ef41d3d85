"""PyTorch ADM checkpoints (I2SB, DDBM, DBIM) -> Flax params of ``ibmd_jax.models.unet.UNet``.

The mapping is strict both ways: every source key is used exactly once and every Flax parameter is
filled, or a ValueError names the first offending key with both shapes. Shapes alone are enough to
plan it, so full-size key listings are checked without weights (`check_key_shapes`).

Layout changes:
  conv   [O, I, kh, kw] -> [kh, kw, I, O]      (OIHW -> HWIO)
  linear [O, I] -> [I, O]; the attention 1x1 convs [O, I, 1] / [O, I, 1, 1] become Dense alike
  qkv    output channels are permuted when the checkpoint's head layout differs from the config's
         ('legacy' = heads, then q/k/v; 'qkv_first' = q/k/v, then heads)
  GroupNorm weight -> scale, nn.Embedding weight -> embedding, biases unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax.models.unet import ATTENTION_LAYOUTS, UNet

# Per family: the time input its network was trained on (the bridge computes it) and the qkv
# channel order of its attention (guided-diffusion QKVAttentionLegacy vs DDBM flash attention).
# DBIM's ImageNet inpainting teacher runs the DDBM code with the I2SB schedule, whose
# preconditioning feeds I2SB's noise levels (linspace(1e-4, 1, 1000) * 1000 at step
# round(999 t)), not DDBM's 250 log t.
FAMILIES = {
    "i2sb": {"c_noise": "i2sb_noise_levels", "attention_layout": "legacy"},
    "ddbm": {"c_noise": "ddbm_250logt", "attention_layout": "qkv_first"},
    "dbim": {"c_noise": "i2sb_noise_levels", "attention_layout": "qkv_first"},
}

FIRST_CONV = "input_blocks.0.0.weight"
_WRAPPER_PREFIXES = ("module.", "diffusion_model.", "model.")


# ----------------------------------------------------------------------------- configs


def unet_kwargs(config: Union[UNet, Mapping[str, Any]]) -> dict:
  """UNet fields as a plain dict (accepts a UNet or its kwargs, with or without 'name': 'unet')."""
  if isinstance(config, UNet):
    fields = {f.name for f in dataclasses.fields(UNet)} - {"parent", "name"}
    return {k: getattr(config, k) for k in sorted(fields)}
  kw = dict(config)
  if kw.pop("name", "unet") != "unet":
    raise ValueError(f"the converter only knows the 'unet' model, got name={config['name']!r}")
  return kw


def config_from_adm_kwargs(kwargs: Mapping[str, Any]) -> dict:
  """UNet kwargs from guided-diffusion / DDBM UNetModel kwargs (as in the fixtures' 'kwargs').

  attention_resolutions are taken as they are (UNetModel already receives ds factors); the qkv
  layout follows DDBM's attention_type='flash' or guided-diffusion's use_new_attention_order.
  in_channels, condition_mode, use_fp16 and use_checkpoint have no field: the input width comes
  from the call, precision from dtype, checkpointing from remat.
  """
  if kwargs.get("learn_sigma"):
    raise ValueError("learn_sigma checkpoints are not supported: give out_channels explicitly")
  qkv_first = kwargs.get("attention_type") == "flash" or kwargs.get("use_new_attention_order")
  out = {k: kwargs[k] for k in ("model_channels", "out_channels", "num_res_blocks", "dropout",
                                "num_classes", "num_heads", "num_head_channels",
                                "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
                                "image_size") if k in kwargs}
  out["attention_resolutions"] = tuple(int(r) for r in kwargs["attention_resolutions"])
  out["channel_mult"] = tuple(int(m) for m in kwargs["channel_mult"])
  out["attention_layout"] = "qkv_first" if qkv_first else "legacy"
  return out


def _family(family: str) -> dict:
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
  return FAMILIES[family]


def abstract_params(config, in_channels: int) -> dict:
  """Shapes of the Flax params for a first conv of in_channels inputs (nothing materialised)."""
  kw = unet_kwargs(config)
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))
  return _abstract_params(frozen, in_channels)


@functools.lru_cache(maxsize=16)
def _abstract_params(frozen: tuple, in_channels: int) -> dict:
  # Cached: tracing a 550M-parameter init takes about a second, and plans repeat per config.
  model = UNet(**dict(frozen))
  s = 2 ** (len(model.channel_mult) - 1)  # the smallest size every level can halve
  x = jax.ShapeDtypeStruct((1, s, s, in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  label = jax.ShapeDtypeStruct((1,), jnp.int32) if model.num_classes is not None else None
  init = lambda x, t, label: model.init(jax.random.PRNGKey(0), x, t, label=label)["params"]
  return jax.eval_shape(init, x, t, label)


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = v
  return tree


# ----------------------------------------------------------------------------- key mapping


def torch_key_to_module(key: str) -> tuple[tuple, str]:
  """'input_blocks.4.1.qkv.weight' -> (('input_blocks_4_1', 'qkv'), 'weight').

  Numeric components are folded into the preceding name, which is how unet.py names modules.
  """
  *parts, leaf = key.split(".")
  path: list[str] = []
  for p in parts:
    if p.isdigit():
      if not path:
        raise ValueError(f"cannot map source key {key!r}: it starts with an index")
      path[-1] = f"{path[-1]}_{p}"
    else:
      path.append(p)
  return tuple(path), leaf


def _target_shape(kind: str, src_shape: tuple) -> tuple:
  if kind == "conv":
    o, i, kh, kw = src_shape
    return (kh, kw, i, o)
  if kind == "dense":
    return (src_shape[1], src_shape[0])
  return tuple(src_shape)


def _kind(target_leaf: str, target_shape: tuple, src_shape: tuple, key: str) -> str:
  """How a source tensor becomes the target leaf, decided by the target's rank.

  A Flax conv kernel (4-D) takes an OIHW conv; a Dense kernel (2-D) takes a linear weight or a
  1x1 conv ([O, I, 1] or [O, I, 1, 1], guided-diffusion / DDBM attention); the rest is copied.
  """
  if target_leaf != "kernel":
    return "copy"
  if len(target_shape) == 4 and len(src_shape) == 4:
    return "conv"
  if len(target_shape) == 2 and len(src_shape) >= 2 and all(s == 1 for s in src_shape[2:]):
    return "dense"
  raise ValueError(f"source key {key!r} with shape {list(src_shape)} cannot become the Flax "
                   f"kernel of shape {list(target_shape)}")


def plan(key_shapes: Mapping[str, tuple], config, family: str,
         source_layout: Optional[str] = None) -> dict:
  """Matches source keys to Flax params by shape; the report that `convert` then executes.

  key_shapes: torch key -> shape (already unwrapped, see `unwrap_state_dict`).
  Returns {'family', 'c_noise', 'in_channels', 'source_attention_layout', 'attention_layout',
  'n_params', 'n_source_keys', 'mapping': [{source, target, source_shape, target_shape,
  transform, qkv_permute}]}; qkv_permute is None or {from, to, heads}.
  """
  fam = _family(family)
  kw = unet_kwargs(config)
  model = UNet(**kw)
  src_layout = source_layout or fam["attention_layout"]
  dst_layout = model.attention_layout
  for name, lay in (("source_layout", src_layout), ("config attention_layout", dst_layout)):
    if lay not in ATTENTION_LAYOUTS:
      raise ValueError(f"{name} must be one of {ATTENTION_LAYOUTS}, got {lay!r}")
  key_shapes = {k: tuple(int(s) for s in v) for k, v in key_shapes.items()}
  if FIRST_CONV not in key_shapes or len(key_shapes[FIRST_CONV]) != 4:
    raise ValueError(f"source has no 4-D {FIRST_CONV!r}: not an ADM UNet state dict "
                     f"(first keys: {list(key_shapes)[:5]})")
  in_channels = key_shapes[FIRST_CONV][1]
  targets = {p: tuple(a.shape) for p, a in _flatten(abstract_params(kw, in_channels)).items()}

  mapping, used = [], set()
  for key, shape in key_shapes.items():
    module, leaf = torch_key_to_module(key)
    if leaf not in ("weight", "bias"):
      raise ValueError(f"source key {key!r}: unexpected parameter name {leaf!r} "
                       "(only weight/bias exist in an ADM UNet)")
    leaves = {p[-1]: p for p in targets if p[:-1] == module}
    if not leaves:
      raise ValueError(f"source key {key!r} (shape {list(shape)}) has no Flax module "
                       f"{'/'.join(module)} in this config: the config does not match the "
                       "checkpoint")
    if leaf == "bias":
      tleaf = "bias"
    else:
      named = [n for n in ("kernel", "scale", "embedding") if n in leaves]
      if len(named) != 1:
        raise ValueError(f"source key {key!r}: ambiguous Flax leaves {sorted(leaves)}")
      tleaf = named[0]
    if tleaf not in leaves:
      raise ValueError(f"source key {key!r}: Flax module {'/'.join(module)} has no {tleaf!r}")
    path = leaves[tleaf]
    kind = _kind(tleaf, targets[path], shape, key)
    want = _target_shape(kind, shape)
    if want != targets[path]:
      raise ValueError(f"shape mismatch at source key {key!r}: source {list(shape)} -> "
                       f"{list(want)} after {kind!r}, but Flax param {'/'.join(path)} is "
                       f"{list(targets[path])}")
    if path in used:
      raise ValueError(f"source key {key!r} maps onto {'/'.join(path)}, which another key "
                       "already filled")
    used.add(path)
    permute = None
    if module[-1] == "qkv" and src_layout != dst_layout:
      upsample = module[0].startswith("output_blocks")
      permute = {"from": src_layout, "to": dst_layout,
                 "heads": model.heads_for(shape[0] // 3, upsample)}
    mapping.append({"source": key, "target": "/".join(path), "source_shape": list(shape),
                    "target_shape": list(want), "transform": kind, "qkv_permute": permute})

  missing = [p for p in targets if p not in used]
  if missing:
    p = missing[0]
    raise ValueError(f"Flax param {'/'.join(p)} (shape {list(targets[p])}) is not filled by any "
                     f"source key ({len(missing)} unfilled in all): the checkpoint does not match "
                     "the config")
  return {
      "family": family,
      "c_noise": fam["c_noise"],
      "in_channels": in_channels,
      "source_attention_layout": src_layout,
      "attention_layout": dst_layout,
      "n_params": int(sum(math.prod(s) for s in targets.values())),
      "n_source_keys": len(key_shapes),
      "mapping": mapping,
  }


def check_key_shapes(key_shapes: Mapping[str, Any], config, family: str,
                     source_layout: Optional[str] = None) -> dict:
  """Checks a torch key -> shape listing (e.g. a *.keys.json) against a config; no weights."""
  return plan(unwrap_state_dict(dict(key_shapes))[0], config, family, source_layout)


# ----------------------------------------------------------------------------- conversion


def _permute_qkv(a: np.ndarray, heads: int, src: str, dst: str) -> np.ndarray:
  """Reorders the 3C output axis (axis 0 of a torch weight or bias) between the two layouts."""
  c3 = a.shape[0]
  d = c3 // (3 * heads)
  rest = a.shape[1:]
  if src == "legacy":  # (h, s, d) -> (s, h, d)
    a = a.reshape(heads, 3, d, *rest).swapaxes(0, 1)
  else:  # (s, h, d) -> (h, s, d)
    a = a.reshape(3, heads, d, *rest).swapaxes(0, 1)
  return a.reshape(c3, *rest)


def _transform(a: np.ndarray, entry: dict) -> np.ndarray:
  a = np.asarray(a, dtype=np.float32)
  if entry["qkv_permute"]:
    p = entry["qkv_permute"]
    a = _permute_qkv(a, p["heads"], p["from"], p["to"])
  if entry["transform"] == "conv":
    a = a.transpose(2, 3, 1, 0)
  elif entry["transform"] == "dense":
    a = a.reshape(a.shape[0], a.shape[1]).T
  return np.ascontiguousarray(a)


def convert(state_dict: Mapping[str, Any], config, family: str,
            source_layout: Optional[str] = None) -> tuple[dict, dict]:
  """(Flax params, report) from a PyTorch UNet state dict of numpy arrays.

  The report is `plan`'s plus 'ignored_keys' (wrapper entries dropped by `unwrap_state_dict`).
  """
  sd, ignored = unwrap_state_dict(state_dict)
  report = plan({k: np.shape(v) for k, v in sd.items()}, config, family, source_layout)
  flat = {}
  for entry in report["mapping"]:
    flat[tuple(entry["target"].split("/"))] = _transform(sd[entry["source"]], entry)
  report["ignored_keys"] = ignored
  return _unflatten(flat), report


def unwrap_state_dict(sd: Mapping[str, Any]) -> tuple[dict, list]:
  """Strips wrapper prefixes ('module.', I2SB's 'diffusion_model.') -> (UNet state dict, ignored).

  When some keys carry 'diffusion_model.' (I2SB's Image256Net), the others (e.g. its noise_levels
  buffer) are not UNet weights and are returned as ignored instead of failing the match.
  """
  sd = dict(sd)
  ignored: list = []
  for prefix in _WRAPPER_PREFIXES:
    inside = [k for k in sd if k.startswith(prefix)]
    if not inside:
      continue
    if prefix == "diffusion_model." or len(inside) == len(sd):
      ignored += [k for k in sd if not k.startswith(prefix)]
      sd = {k[len(prefix):]: sd[k] for k in inside}
  return sd, ignored


# ----------------------------------------------------------------------------- loading


def _to_numpy(v):
  if isinstance(v, np.ndarray):
    return v
  if type(v).__module__.startswith("torch") and hasattr(v, "detach"):
    import torch  # only reached for torch tensors

    v = v.detach().cpu()
    return (v.to(torch.float32) if v.is_floating_point() else v).numpy()
  return v


def _is_state_dict(obj) -> bool:
  return isinstance(obj, Mapping) and len(obj) > 0 and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def select_state_dict(obj: Any, use_ema: bool = True) -> tuple[dict, str]:
  """Finds the UNet weights in a loaded checkpoint -> (state dict, where they came from).

  Handles a bare state dict (DDBM/DBIM ema_*.pt, guided-diffusion), {'state_dict'|'model'|'ema':
  ...} wrappers, and I2SB's {'net': state dict, 'ema': {'shadow_params': [...]}} where the EMA
  tensors follow net.parameters() order (the 'diffusion_model.' keys).
  """
  if isinstance(obj, Mapping):
    obj = {k: _to_numpy(v) if not isinstance(v, (Mapping, list, tuple)) else v
           for k, v in obj.items()}
  if _is_state_dict(obj):
    return dict(obj), "state_dict"
  if not isinstance(obj, Mapping):
    raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
  if "net" in obj and isinstance(obj["net"], Mapping):
    net, where = select_state_dict(obj["net"], use_ema=False)
    ema = obj.get("ema")
    if use_ema and isinstance(ema, Mapping) and "shadow_params" in ema:
      shadow = [_to_numpy(v) for v in ema["shadow_params"]]
      keys = [k for k in net if k.startswith("diffusion_model.")] or list(net)
      if len(keys) != len(shadow):
        raise ValueError(f"I2SB checkpoint: ema has {len(shadow)} shadow params but net has "
                         f"{len(keys)} parameters; pass use_ema=False to convert 'net'")
      for k, v in zip(keys, shadow):
        if tuple(net[k].shape) != tuple(v.shape):
          raise ValueError(f"I2SB checkpoint: ema shadow param for {k!r} has shape "
                           f"{list(v.shape)}, net has {list(net[k].shape)}")
      return dict(zip(keys, shadow)), "ema.shadow_params"
    return net, "net"
  for name in (("ema", "state_dict", "model") if use_ema else ("state_dict", "model", "ema")):
    if name in obj and isinstance(obj[name], Mapping):
      sd, where = select_state_dict(obj[name], use_ema)
      return sd, f"{name}.{where}"
  raise ValueError(f"no state dict found in the checkpoint; top-level keys: {list(obj)[:10]}")


def load_state_dict(path: str, use_ema: bool = True) -> tuple[dict, str]:
  """Reads a .pt/.pth (torch, weights_only) or .npz ('param/<key>' or plain keys) checkpoint."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if path.endswith(".npz"):
    with np.load(path) as z:
      names = list(z.files)
      prefixed = [n for n in names if n.startswith("param/")]
      if prefixed:
        return {n[len("param/"):]: z[n] for n in prefixed}, "npz:param/"
      return {n: z[n] for n in names}, "npz"
  if re.search(r"\.(pt|pth|ckpt|bin)$", path):
    try:
      import torch
    except ImportError as e:
      raise ImportError("reading a .pt checkpoint needs PyTorch: pip install 'ibmd_jax[torch]', "
                        "or save the state dict as .npz") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return select_state_dict(obj, use_ema)
  raise ValueError(f"unknown checkpoint format {path!r}: expected .pt/.pth or .npz")
