"""Bridge networks.

Every network is a flax.linen Module used as a pure function over a parameter pytree:

    out = module.apply({"params": params}, x, c_noise, cond=None, z=None, label=None,
                       train=False, rngs=None)

- ``x``: the (pre-scaled) bridge state, channels last: [B, D] for toy MLPs, [B, H, W, C] for images.
- ``c_noise``: [B] float, the time input already mapped by the bridge (I2SB noise level, 250·log t, …).
- ``cond``: optional xT with the shape of ``x``; concatenated after ``x`` on the channel axis
  (DDBM ``condition_mode='concat'`` order).
- ``z``: optional generator noise, concatenated after ``cond``. Its input weights start at zero
  (see ``ibmd_jax.params.widen_like``), so a generator initialised from a teacher equals it.
- ``label``: optional int32 [B] class labels.
- returns the raw network output F with the shape of ``x`` (out channels = x channels); the bridge's
  preconditioning (``ibmd_jax.denoiser``) turns it into x̂0.

Because the first layer infers its input width, the same module class serves teacher, critic and
generator; only the inputs differ.
"""


def build_model(cfg):
  """Builds a network module from a config dict: {'name': 'mlp'|'unet', **module fields}."""
  import dataclasses as _dc

  import jax.numpy as _jnp

  cfg = dict(cfg)
  name = cfg.pop("name", None)
  if name == "mlp":
    from ibmd_jax.models.mlp import MLP as cls
  elif name == "unet":
    from ibmd_jax.models.unet import UNet as cls
  else:
    raise ValueError(f"model.name must be 'mlp' or 'unet', got {name!r}")
  if isinstance(cfg.get("dtype"), str):
    cfg["dtype"] = getattr(_jnp, cfg["dtype"])
  fields = {f.name for f in _dc.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(cfg) - fields)
  if unknown:
    raise ValueError(f"unknown {name} option(s) {unknown}; valid options: {sorted(fields)}")
  return cls(**cfg)
