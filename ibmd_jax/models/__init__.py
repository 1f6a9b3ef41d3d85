"""Bridge networks.

Every network is a flax.linen Module used as a pure function over a parameter pytree:

    out = module.apply({"params": params}, x, c_noise, cond=None, z=None, label=None,
                       train=False, rngs=None)

- ``x``: the (pre-scaled) bridge state, channels last: [B, D] for toy MLPs, [B, H, W, C] for images.
- ``c_noise``: [B] float, the time input already mapped by the bridge (I2SB noise level, 250·log t, …).
- ``cond``: optional xT with the shape of ``x``; concatenated after ``x`` on the channel axis
  (DDBM ``condition_mode='concat'`` order).
- ``z``: optional generator noise, concatenated after ``cond``. Its input weights start at zero
  (see ``ibmd_jax.denoiser.widen_like``), so a generator initialised from a teacher equals it.
- ``label``: optional int32 [B] class labels.
- returns the raw network output F with the shape of ``x`` (out channels = x channels); the bridge's
  preconditioning (``ibmd_jax.denoiser``) turns it into x̂0.

Because the first layer infers its input width, the same module class serves teacher, critic and
generator; only the inputs differ.
"""


import dataclasses

import jax.numpy as jnp

from ibmd_jax.models.mlp import MLP
from ibmd_jax.models.unet import UNet

NETWORKS = {"mlp": MLP, "unet": UNet}


def resolve_model_config(cfg, bridge=None) -> dict:
  """The model config as a dict with the values derived from the bridge filled in (an MLP's
  time_scale None becomes 1 / bridge.c_noise_span): what a saved teacher records."""
  cfg = dict(cfg)
  if cfg.get("name") == "mlp" and cfg.get("time_scale", None) is None:
    if bridge is None:
      raise ValueError("model.time_scale is None (= from the bridge) but no bridge was given")
    cfg["time_scale"] = 1.0 / bridge.c_noise_span
  return cfg


def build_model(cfg, bridge=None):
  """Builds a network module from a config dict: {'name': 'mlp'|'unet', **module fields}.

  With a bridge, an MLP's time_scale left at None becomes 1 / bridge.c_noise_span, so its time
  embedding sees inputs of order one whichever bridge feeds it (I2SB noise levels 0..1000,
  250·log t for DDBM bridges). An unknown option is an error naming it.
  """
  cfg = resolve_model_config(cfg, bridge) if bridge is not None else dict(cfg)
  name = cfg.pop("name", None)
  if name not in NETWORKS:
    raise ValueError(f"model.name must be one of {sorted(NETWORKS)}, got {name!r}")
  cls = NETWORKS[name]
  if isinstance(cfg.get("dtype"), str):
    cfg["dtype"] = getattr(jnp, cfg["dtype"])
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(cfg) - fields)
  if unknown:
    raise ValueError(f"unknown {name} option(s) {unknown}; valid options: {sorted(fields)}")
  return cls(**cfg)


def model_defaults(name: str) -> dict:
  """The network's options with their defaults (absent options of a saved teacher are these)."""
  cls = NETWORKS.get(name)
  if cls is None:
    return {}
  return {f.name: f.default for f in dataclasses.fields(cls)
          if f.name not in ("parent", "name") and f.default is not dataclasses.MISSING}
