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
